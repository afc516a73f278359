"""The supervisord XML-RPC client, over its unix socket only.

Calls block, so the async wrappers run them in a thread. A fresh proxy per call: supervisor's
transport keeps one connection and is not safe to share between threads.
"""
from __future__ import annotations

import os
import re
import sys
import time
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import Faults, SupervisorTransport, UnixStreamHTTPConnection

from llamarig.shared.errors import SupervisorError

_FAULT_NAMES = {v: k.lower() for k, v in vars(Faults).items() if isinstance(v, int)}
# supervisord must stop a program in these before it can start it again.
RUNNING_STATES = {"STARTING", "RUNNING", "BACKOFF", "STOPPING"}
LOG_TAIL_BYTES = 16384  # of supervisord's own log, where it names each exit's cause
# A process exists in these. BACKOFF is not one: the process exited while starting, and
# supervisord only moves on to FATAL (startretries=0) at its next loop tick, up to 1 s later.
ALIVE_STATES = {"STARTING", "RUNNING", "STOPPING"}


class SupervisorClient:
    def __init__(self, socket: Path, timeout: float | None = None):
        """timeout: seconds a call may wait for its answer (the CLI's checks: a hung supervisord
        must not hang them); None for the planner's calls, which wait for a program's stop."""
        self.socket, self.timeout = Path(socket), timeout

    def _proxy(self):
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        if self.timeout is not None:
            transport._get_connection = lambda: _TimedConnection(str(self.socket), self.timeout)
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _call(self, method: str, *args):
        try:
            return getattr(self._proxy().supervisor, method)(*args)
        except xmlrpc.client.Fault as f:
            name = _FAULT_NAMES.get(f.faultCode, str(f.faultCode))
            raise SupervisorError(f"supervisor_{name}", f"{method}{args}: {f.faultString}") from None
        except OSError as e:
            raise SupervisorError("supervisor_unreachable",
                                  f"cannot reach supervisord at {self.socket}: {e}") from None

    def start(self, program: str) -> None:
        self._call("startProcess", program, False)

    def stop(self, program: str) -> None:
        """Stop and wait until supervisord reports it stopped (SIGKILL after stopwaitsecs)."""
        self._call("stopProcess", program, True)

    def signal(self, program: str, signal: str) -> None:
        self._call("signalProcess", program, signal)

    def info(self, program: str) -> dict:
        return self._call("getProcessInfo", program)

    def exit_cause(self, program: str) -> str | None:
        """What supervisord's log says of the program's last exit ("terminated by SIGKILL",
        "exit status 78"). Its process info keeps neither for an exit within startsecs: it says
        FATAL with exit status 0 whatever happened."""
        tail = self._call("readLog", -LOG_TAIL_BYTES, 0)
        causes = re.findall(rf"exited: {re.escape(program)} \(([^;)]+)", tail)
        return causes[-1] if causes else None

    def all_info(self) -> dict[str, dict]:
        return {p["name"]: p for p in self._call("getAllProcessInfo")}

    def state(self) -> str:
        return self._call("getState")["statename"]

    def shutdown(self) -> None:
        self._call("shutdown")

    async def run(self, method: str, *args):
        """Run one of the methods above in a thread."""
        import asyncio  # here: `llamarig up` imports this module before it starts supervisord

        return await asyncio.to_thread(getattr(self, method), *args)


class _TimedConnection(UnixStreamHTTPConnection):
    """supervisor's unix-socket connection, with a timeout on its socket (it sets none)."""

    def __init__(self, socketfile: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socketfile = socketfile

    def connect(self):
        super().connect()
        self.sock.settimeout(self.timeout)


# ---- the daemon itself ------------------------------------------------------------------------
def with_our_bin(path: str) -> str:
    """PATH with this environment's bin first: supervisord's programs call `llamarig` and
    `llama-server`, which live there when llamarig is installed in a virtual environment."""
    ours = str(Path(sys.executable).parent)
    return path if path.split(os.pathsep)[0] == ours else ours + os.pathsep + path


def is_running(socket: Path) -> bool:
    """Whether a supervisord answers on the socket and says RUNNING."""
    try:
        return SupervisorClient(socket).state() == "RUNNING"
    except SupervisorError:
        return False  # not listening (yet)


def wait_running(socket: Path, timeout: float = 10.0) -> bool:
    """Ask supervisord for its state as soon as its socket exists; True once it says RUNNING.
    It also saves a second at every start: supervisord spawns its autostart programs (the
    compute API) only after its first poll, which otherwise waits a whole second for an
    event, and a request is such an event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(socket):
            return True
        time.sleep(0.01)
    return False
