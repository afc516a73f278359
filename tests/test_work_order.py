"""Priority orders tasks waiting on one queue (10 most urgent), and a task that has waited past
work.starvation_s goes ahead of more urgent ones that came later. One cpu slot, so the order in
which tasks start is the order the engine hands them out."""
from __future__ import annotations

import pytest

from helpers import model_entry, plan_ended, plan_view, submit_plan, wait_for, work_section, write_rig

pytestmark = pytest.mark.slow


def _serial_bundle(tmp_path, models, bundle_factory, **work):
    rig = write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])},
                    work=work_section(concurrency={"cpu": 1}, **work))
    b = bundle_factory(rig)
    b.wait_ready()
    return b


def _gate(release) -> dict:
    return {"name": "gate", "class": "cpu", "priority": 10, "command": f"while [ ! -f {release} ]; do sleep 0.05; done"}


def _marker(name: str, order, priority: int) -> dict:
    return {"name": name, "class": "cpu", "priority": priority, "command": f"echo {name} >> {order}"}


def _waiting(b, plan_id: str, names: list[str]) -> bool:
    tasks = plan_view(b, plan_id)["tasks"]
    return all(tasks[n]["state"] == "scheduled" for n in names)


def _states(b, plan_id: str, wanted: dict) -> dict | None:
    """The tasks' states when they are `wanted`, else None (printed, for a failure's log)."""
    states = {n: t["state"] for n, t in plan_view(b, plan_id)["tasks"].items()}
    print(states)
    return states if states == wanted else None


def test_priority_orders_the_tasks_waiting_on_a_queue(tmp_path, models, bundle_factory):
    b = _serial_bundle(tmp_path, models, bundle_factory)
    release, order = tmp_path / "release", tmp_path / "order"
    priorities = {"p2": 2, "p9": 9, "p5": 5, "p7": 7, "p1": 1, "p10": 10}
    gate = submit_plan(b, [_gate(release)], name="gate")  # takes the one slot, so the others wait
    wait_for(lambda: plan_view(b, gate)["tasks"]["gate"]["state"] == "running", 60, "the gate running")
    plan_id = submit_plan(b, [_marker(n, order, p) for n, p in priorities.items()])
    wait_for(lambda: _waiting(b, plan_id, list(priorities)), 30, "the others waiting on the queue")
    release.touch()
    assert plan_ended(b, plan_id)["outcome"] == "succeeded"
    assert order.read_text().split() == ["p10", "p9", "p7", "p5", "p2", "p1"]


def test_a_task_waiting_past_starvation_s_goes_ahead_of_later_urgent_ones(tmp_path, models, bundle_factory):
    b = _serial_bundle(tmp_path, models, bundle_factory, starvation_s=3)
    release, order = tmp_path / "release", tmp_path / "order"
    gate = submit_plan(b, [_gate(release)], name="gate")
    wait_for(lambda: plan_view(b, gate)["tasks"]["gate"]["state"] == "running", 60, "the gate running")
    first = submit_plan(b, [_marker("low", order, 1)], name="first")
    wait_for(lambda: plan_view(b, first)["tasks"]["low"].get("starved"), 30, "the low task resent as most urgent")
    urgent = ["u1", "u2", "u3"]
    later = submit_plan(b, [_marker(n, order, 9) for n in urgent], name="later")
    wait_for(lambda: _waiting(b, later, urgent), 30, "the urgent tasks waiting")
    release.touch()
    assert plan_ended(b, first)["outcome"] == plan_ended(b, later)["outcome"] == "succeeded"
    assert order.read_text().split()[0] == "low"  # without the bound it would run last


def test_within_a_priority_the_longer_chain_of_dependents_goes_first(tmp_path, models, bundle_factory):
    """Critical path first: `head` has a task waiting on it, so it goes before `lone` though
    `lone` comes first in the plan; a more urgent task still goes before both."""
    b = _serial_bundle(tmp_path, models, bundle_factory)
    release, order = tmp_path / "release", tmp_path / "order"
    gate = submit_plan(b, [_gate(release)], name="gate")
    wait_for(lambda: plan_view(b, gate)["tasks"]["gate"]["state"] == "running", 60, "the gate running")
    tasks = [_marker("lone", order, 5), _marker("head", order, 5), _marker("tail", order, 5) | {"depends_on": ["head"]},
             _marker("urgent", order, 6)]
    plan_id = submit_plan(b, tasks)
    wait_for(lambda: _waiting(b, plan_id, ["lone", "head", "urgent"]), 30, "the ready tasks waiting on the queue")
    release.touch()
    assert plan_ended(b, plan_id)["outcome"] == "succeeded"
    assert order.read_text().split() == ["urgent", "head", "lone", "tail"]


def test_within_a_priority_the_most_expected_work_left_goes_first(tmp_path, models, bundle_factory):
    """With expected_s: `lone` (expected 30 s) goes before `head` (1 s, then `tail` 1 s), though
    head has the longer chain; the markers run in no time, expected_s only orders them."""
    b = _serial_bundle(tmp_path, models, bundle_factory)
    release, order = tmp_path / "release", tmp_path / "order"
    gate = submit_plan(b, [_gate(release)], name="gate")
    wait_for(lambda: plan_view(b, gate)["tasks"]["gate"]["state"] == "running", 60, "the gate running")
    tasks = [_marker("head", order, 5) | {"expected_s": 1},
             _marker("tail", order, 5) | {"depends_on": ["head"], "expected_s": 1},
             _marker("lone", order, 5) | {"expected_s": 30}]
    plan_id = submit_plan(b, tasks)
    wait_for(lambda: _waiting(b, plan_id, ["head", "lone"]), 30, "the ready tasks waiting on the queue")
    release.touch()
    assert plan_ended(b, plan_id)["outcome"] == "succeeded"
    assert order.read_text().split() == ["lone", "head", "tail"]
    assert plan_view(b, plan_id)["tasks"]["lone"]["expected_s"] == 30  # the view shows what the order used


def test_a_plan_holds_what_exceeds_its_window_queued_and_lets_it_in_most_urgent_first(tmp_path, models,
                                                                                     bundle_factory):
    """work.plan_window 2, the one slot held by another plan: two tasks wait in Temporal
    (scheduled), the most urgent; the others wait in the plan (queued) and go in by priority."""
    b = _serial_bundle(tmp_path, models, bundle_factory, plan_window=2)
    release, order = tmp_path / "release", tmp_path / "order"
    gate = submit_plan(b, [_gate(release)], name="gate")
    wait_for(lambda: plan_view(b, gate)["tasks"]["gate"]["state"] == "running", 60, "the gate running")
    priorities = {"a": 1, "b": 9, "c": 5, "d": 7, "e": 3}
    plan_id = submit_plan(b, [_marker(n, order, p) for n, p in priorities.items()])
    wanted = {"a": "queued", "b": "scheduled", "c": "queued", "d": "scheduled", "e": "queued"}
    wait_for(lambda: _states(b, plan_id, wanted), 60, f"the states {wanted}")
    release.touch()
    assert plan_ended(b, plan_id)["outcome"] == "succeeded"
    assert order.read_text().split() == ["b", "d", "c", "e", "a"]


def test_a_place_freed_in_the_window_goes_to_the_most_urgent_task_its_end_made_ready(tmp_path, models,
                                                                                    bundle_factory):
    """work.plan_window 1: when `first` ends, `urgent` (its dependent) and `low` both wait for
    the one place; `urgent` gets it, though `low` was waiting before."""
    b = _serial_bundle(tmp_path, models, bundle_factory, plan_window=1)
    order = tmp_path / "order"
    tasks = [_marker("first", order, 5), _marker("low", order, 1),
             _marker("urgent", order, 10) | {"depends_on": ["first"]}]
    assert plan_ended(b, submit_plan(b, tasks))["outcome"] == "succeeded"
    assert order.read_text().split() == ["first", "urgent", "low"]
