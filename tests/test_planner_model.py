"""The planner's promises, checked after every step of a Hypothesis state machine over the
real manager, planner and actors on in-process fakes (tests/planner_model.py). CI runs a fixed
budget; `bench/run.py planner` runs it long."""
from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from planner_model import PlannerMachine, rig_file


def test_the_planner_keeps_its_promises_step_after_step(tmp_path, models):
    PlannerMachine.rig_path = rig_file(tmp_path, models)
    run_state_machine_as_test(PlannerMachine, settings=settings(
        max_examples=12, stateful_step_count=30, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate]))
    # (no shrinking: the machine runs in real time, so a replay may differ; the steps print as drawn)
