"""Errors that carry a code and a reason a person can act on.

Codes are stable strings; the API maps them to HTTP statuses and OpenAI error bodies.
"""


class LlamarigError(Exception):
    """Base error: `code` is machine-readable, `reason` is one line for a person."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class RigError(LlamarigError):
    """The rig file is invalid; `problems` holds one 'field.path: message' line per fault."""

    def __init__(self, path: str, problems: list[str]):
        joined = "; ".join(problems)
        super().__init__("rig_invalid", f"{path}: {joined}")
        self.problems = problems


class SupervisorError(LlamarigError):
    """supervisord refused or could not be reached."""

    @property
    def shutting_down(self) -> bool:
        """supervisord refused because it is stopping every program (its SHUTDOWN_STATE fault)."""
        return self.code == "supervisor_shutdown_state"
