"""Task durations learned on a rig (work/durations.py): what counts as the same task, how a new
run moves the learned time, what is kept, and a broken file."""
from __future__ import annotations

import json

from llamarig.work import durations


def _task(name: str, command: str, **kw) -> dict:
    return {"name": name, "cls": "cpu", "command": command, "depends_on": [], "priority": 5, "expected_s": None,
            "retries": None, "timeout_s": None, "inputs": {}, "untrusted": []} | kw


def _record(tasks: list[dict], seconds: dict[str, float], **states) -> dict:
    return {"spec": {"plan": {"tasks": tasks}},
            "tasks": {t["name"]: {"state": states.get(t["name"], "succeeded"),
                                  "result": {"duration_ms": seconds[t["name"]] * 1000}} for t in tasks}}


def test_the_same_task_is_what_it_runs_not_its_name_place_or_priority():
    a = _task("a", "python train.py")
    assert durations.key(a) == durations.key(_task("b", "python train.py", depends_on=["x"], priority=9, retries=1))
    assert durations.key(a) != durations.key(_task("a", "python train.py --fast"))
    assert durations.key(a) != durations.key(_task("a", "python train.py", inputs={"n": "3"}))


def test_a_run_teaches_succeeded_tasks_and_the_newer_run_weighs_half(tmp_path):
    slow, quick, broke = _task("slow", "sleep 3"), _task("quick", "true"), _task("broke", "false")
    assert durations.learn(tmp_path, _record([slow, quick, broke], {"slow": 3, "quick": 0.01, "broke": 1},
                                             broke="failed")) == 2
    again = [_task("s2", "sleep 3"), _task("q2", "true"), _task("given", "true", expected_s=7), _task("b2", "false")]
    assert durations.expected(tmp_path, again) == {"s2": 3, "q2": 0.01}  # not for given ones, nor what failed
    durations.learn(tmp_path, _record([slow], {"slow": 5}))
    assert durations.expected(tmp_path, [slow]) == {"slow": 4}


def test_reused_tasks_teach_nothing(tmp_path):
    t = _task("a", "sleep 1")
    record = _record([t], {"a": 1})
    record["tasks"]["a"]["reused_from"] = "p-1"
    assert durations.learn(tmp_path, record) == 0 and durations.expected(tmp_path, [t]) == {}


def test_only_the_newest_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(durations, "MAX_TASKS", 3)
    for i in range(5):
        durations.learn(tmp_path, _record([_task(f"t{i}", f"job {i}")], {f"t{i}": i + 1}))
    kept = json.loads(durations.path(tmp_path).read_text())
    assert len(kept) == 3
    assert durations.expected(tmp_path, [_task("x", "job 4"), _task("y", "job 0")]) == {"x": 5}


def test_a_broken_file_is_said_and_started_again(tmp_path, caplog):
    durations.path(tmp_path).parent.mkdir(parents=True)
    durations.path(tmp_path).write_text('{"abc": {"s": "slow"}}')
    t = _task("a", "sleep 2")
    assert durations.expected(tmp_path, [t]) == {}
    assert "learned task durations unreadable" in caplog.text
    assert durations.learn(tmp_path, _record([t], {"a": 2})) == 1
    assert durations.expected(tmp_path, [t]) == {"a": 2}
