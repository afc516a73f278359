"""The planner's model-based harness (tests/planner_model.py) run long: random operator
commands, requests, crashes, leases, reloads and clock steps against the real manager, planner
and actors over in-process fakes, every promise checked after every step. Reports the steps
run and what failed (the first falsifying sequence, as drawn: the harness runs in real time,
so it is not shrunk).

    python bench/planner_long.py [STEPS [SECONDS]]
"""
from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the harness is the tests'

from llamarig.backend.models_make import make_gguf, make_whisper
from planner_model import PlannerMachine, rig_file  # noqa: E402

STEPS_PER_EXAMPLE = 50


class Counted(PlannerMachine):
    steps_total = 0
    examples = 0

    def __init__(self):
        super().__init__()
        Counted.examples += 1

    def teardown(self):
        Counted.steps_total += self.steps
        super().teardown()


def _broken(e: BaseException) -> BaseException:
    """The broken promise behind Hypothesis' own error (its replay in real time drew differently:
    FlakyStrategyDefinition, with the first failure as its context)."""
    seen = e
    while seen is not None and not isinstance(seen, AssertionError):
        seen = seen.__cause__ or seen.__context__
    return seen or e


def run(smoke: bool, steps: int = 100_000, max_s: float = float("inf")) -> dict:
    """Until `steps` steps or `max_s` seconds (checked between batches of 40 examples)."""
    target = 100 if smoke else steps
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        models = {"gguf": make_gguf(root / "tiny.gguf"), "whisper": make_whisper(root / "whisper")}
        Counted.rig_path = rig_file(root, models)
        Counted.steps_total = Counted.examples = 0
        started, failures = time.monotonic(), []
        while Counted.steps_total < target and not failures and time.monotonic() - started < max_s:
            examples = max(1, (target - Counted.steps_total) // STEPS_PER_EXAMPLE)
            try:
                run_state_machine_as_test(Counted, settings=settings(
                    max_examples=min(examples, 40), stateful_step_count=STEPS_PER_EXAMPLE, deadline=None,
                    suppress_health_check=list(HealthCheck), phases=[Phase.generate], database=None))
            except Exception as e:  # a broken promise: what it said, and the steps that led there
                inner = e.exceptions[0] if isinstance(e, BaseExceptionGroup) else _broken(e)  # (replay: flaky)
                said = "".join(traceback.format_exception_only(inner)) + "".join(traceback.format_exception_only(e))
                whole = Path(tempfile.gettempdir()) / f"planner-long-failure-{int(time.time())}.txt"
                whole.write_text(said)  # every step: the report below keeps the two ends
                failures.append((said if len(said) < 6000 else said[:2000] + "\n...\n" + said[-4000:]) +
                                f"\n(whole: {whole})")
        wall = time.monotonic() - started
    return {"steps": Counted.steps_total, "examples": Counted.examples, "seconds": round(wall, 1),
            "steps_per_s": round(Counted.steps_total / wall, 1), "failures": failures}


if __name__ == "__main__":
    import json

    print(json.dumps(run(False, int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
                         float(sys.argv[2]) if len(sys.argv) > 2 else float("inf")), indent=2))
