"""Work-layer pieces that need no engine: a class a rig runs none of is refused, retryably."""
from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from helpers import aged, model_entry, work_section, write_rig
from llamarig.shared.rig import load_rig
from llamarig.work.activities import Activities
from llamarig.work.api_client import ComputeApi
from llamarig.work.processes import WorkerProcess


def test_a_class_with_concurrency_0_is_refused_for_another_rig_to_take(tmp_path):
    rig = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])},
                             work=work_section(concurrency={"llm": 0})))
    acts = Activities(rig, WorkerProcess("gpu"), "work-gpu@here", ComputeApi("http://127.0.0.1:9", None, 5))
    with pytest.raises(ApplicationError) as e:
        acts._takes("llm")
    assert e.value.type == "NotHere" and not e.value.non_retryable and "work.concurrency.llm: 0" in e.value.message
    acts._takes("script")  # script: 1 here


def test_the_priority_key_puts_priority_first_then_the_chain_of_dependents_when_no_task_says_how_long():
    from llamarig.work import priority

    tasks = [{"name": "a", "depends_on": [], "priority": 5}, {"name": "b", "depends_on": ["a"], "priority": 5},
             {"name": "c", "depends_on": ["b"], "priority": 5}, {"name": "d", "depends_on": ["a"], "priority": 5},
             {"name": "e", "depends_on": [], "priority": 5}, {"name": "u", "depends_on": [], "priority": 6}]
    assert priority.remaining(tasks) == {"a": 3, "b": 2, "c": 1, "d": 1, "e": 1, "u": 1}
    order = priority.order(tasks)
    assert sorted(order, key=order.get) == ["u", "a", "b", "c", "d", "e"]  # c, d, e: one place, plan order
    keys = [priority.key(10, priority.RANK_LEVELS), priority.key(10, 1), priority.key(9, priority.RANK_LEVELS),
            priority.key(1, 1)]
    assert keys == sorted(keys) and len(set(keys)) == 4  # strictly: p10 most left, p10 least, p9 most, p1 least
    assert priority.STARVED < keys[0] and keys[-1] == priority.LEVELS


def test_within_a_priority_the_most_expected_work_left_goes_first():
    """`lone` (10 s) before `head` (1 s, then `tail` 1 s: 2 s left), though head has the longer
    chain; `guess` gives no expected_s and counts as the plan's mean (4 s); the keys in
    Temporal keep that order too."""
    from llamarig.work import priority

    tasks = [{"name": "head", "depends_on": [], "priority": 5, "expected_s": 1},
             {"name": "tail", "depends_on": ["head"], "priority": 5, "expected_s": 1},
             {"name": "lone", "depends_on": [], "priority": 5, "expected_s": 10},
             {"name": "guess", "depends_on": [], "priority": 5}]
    assert priority.remaining(tasks) == {"head": 2, "tail": 1, "lone": 10, "guess": 4}
    order = priority.order(tasks)
    assert sorted(order, key=order.get) == ["lone", "guess", "head", "tail"]
    assert order["lone"][0] < order["guess"][0] < order["head"][0] < order["tail"][0]


def test_plans_started_before_remaining_work_order_keep_their_keys():
    """Their history was recorded with these keys and this order; replay must meet the same."""
    from llamarig.work import priority

    tasks = [{"name": f"s{i}", "depends_on": [f"s{i - 1}"] if i else [], "priority": 5, "expected_s": 9 - i}
             for i in range(7)] + [{"name": "x", "depends_on": [], "priority": 10}]
    legacy = priority.legacy_order(tasks)
    assert [legacy[f"s{i}"][0] for i in range(7)] == [27, 27, 27, 28, 29, 30, 31]  # 2 + 5 * 5 + 5 - min(chain, 5)
    assert legacy["x"] == (6, 0, 7)


def test_remaining_work_needs_no_recursion_for_a_long_plan():
    from llamarig.work import priority

    n = 5000  # deeper than Python's recursion limit
    tasks = [{"name": f"s{i}", "depends_on": [f"s{i - 1}"] if i else [], "priority": 5} for i in range(n)]
    assert priority.remaining(tasks)["s0"] == n


def test_the_cluster_dynamic_config_says_what_the_embedded_server_is_started_with():
    """runtime/temporal-dynamic-config.yaml (docker-compose's Temporal) and EMBEDDED_DYNAMIC_CONFIG
    are one setting written twice: a drift would order or pace tasks differently past one rig."""
    from pathlib import Path

    import yaml

    from llamarig.work.engine import EMBEDDED_DYNAMIC_CONFIG

    cluster = yaml.safe_load((Path(__file__).resolve().parents[1] / "runtime" / "temporal-dynamic-config.yaml").read_text())
    assert {k: v[0]["value"] for k, v in cluster.items()} == {
        k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in EMBEDDED_DYNAMIC_CONFIG.items()}


def test_the_watchdog_counts_silence_from_the_last_alive_and_gives_a_start_its_time(tmp_path):
    import os

    from llamarig.work import watchdog

    rig = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])},
                             work=work_section(heartbeat_timeout_s=20)))
    path = watchdog.alive_path(rig, "cpu")
    path.parent.mkdir(parents=True)
    running = {"statename": "RUNNING", "start": 1000}
    assert watchdog.silent_for(rig, "cpu", running, 1000 + watchdog.STARTUP_S) is None  # nothing said yet: starting
    assert watchdog.silent_for(rig, "cpu", running, 1001 + watchdog.STARTUP_S) == watchdog.STARTUP_S + 1
    watchdog.say_alive(path)
    os.utime(path, (1005, 1005))
    assert watchdog.silent_for(rig, "cpu", running, 1025) is None and watchdog.silent_for(rig, "cpu", running, 1026) == 21
    assert watchdog.silent_for(rig, "cpu", running | {"statename": "STARTING"}, 5000) is None
    short = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])},
                               work=work_section(heartbeat_timeout_s=3)))
    watchdog.alive_path(short, "cpu").touch()
    os.utime(watchdog.alive_path(short, "cpu"), (1005, 1005))
    assert watchdog.silent_for(short, "cpu", running, 1005 + watchdog.SILENCE_FLOOR_S) is None  # the floor


def test_the_watchdog_checks_each_cpu_process_by_its_own_alive_file(tmp_path):
    """work.cpu_processes 2: the silent one is killed by its namespec, the others are left."""
    import time

    from llamarig.work import watchdog

    rig = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])},
                             work=work_section(cpu_processes=2)))
    started = time.time() - watchdog.STARTUP_S - 5
    for key in ("cpu-0", "gpu"):
        path = watchdog.alive_path(rig, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        watchdog.say_alive(path)

    class Supervisor:
        asked, signalled = [], []

        def info(self, name):
            self.asked.append(name)
            return {"statename": "RUNNING", "start": started}

        def signal(self, name, sig):
            self.signalled.append((name, sig))
    s = Supervisor()
    assert watchdog.check(rig, s) == ["work-cpu:work-cpu-1"]
    assert s.asked == ["work-cpu:work-cpu-0", "work-cpu:work-cpu-1", "work-gpu"]
    assert s.signalled == [("work-cpu:work-cpu-1", "KILL")]


def test_the_watchdog_speaks_supervisords_event_listener_protocol(tmp_path, monkeypatch):
    import io

    from llamarig.work import watchdog

    rig = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])}, work=work_section()))
    checked = []
    monkeypatch.setattr(watchdog, "check", lambda rig, supervisor: checked.append(1))
    payload = "when:1 "
    events = "".join(f"ver:3.0 server:supervisor serial:{i} pool:work-watchdog poolserial:{i} eventname:{name} "
                     f"len:{len(payload)}\n{payload}" for i, name in enumerate(["TICK_5", "PROCESS_LOG", "TICK_5"]))
    out = io.StringIO()
    assert watchdog.serve(rig, io.StringIO(events), out) == 0
    assert out.getvalue() == "READY\nRESULT 2\nOK" * 3 + "READY\n" and len(checked) == 2


def test_reuse_takes_what_succeeded_with_the_same_definition_and_reused_dependencies():
    from llamarig.work.reuse import reusable

    def task(name, command="true", deps=(), **more):
        return {"name": name, "cls": "cpu", "command": command, "depends_on": list(deps), "priority": 5,
                "retries": None, "timeout_s": None, "class_inferred": False, "inputs": {}, **more}
    old = [task("a"), task("b", deps=["a"]), task("c", deps=["b"]), task("x"), task("y", deps=["x"]), task("z")]
    ok = {"state": "succeeded", "result": {"output": "here"}}
    states = {"a": ok, "b": {"state": "failed"}, "c": {"state": "failed"}, "x": ok, "y": ok,
              "z": {"state": "succeeded", "result": {"output": "gone"}}}
    present = lambda result: result.get("output") == "here"
    assert reusable(old, old, states, present) == ["a", "x", "y"]  # z's output is gone: it runs again
    changed = [task("a", "echo new")] + old[1:]
    assert reusable(changed, old, states, present) == ["x", "y"]  # a changed, and b and c wait on it anyway
    when = old[:4] + [task("y", deps=["x"], priority=9, retries=0, timeout_s=5.0), task("z"), task("w")]
    assert reusable(when, old, states, present) == ["a", "x", "y"]  # how and when, not what; w is new
    input_changed = old[:4] + [task("y", deps=["x"], inputs={"k": "v"})]
    assert reusable(input_changed, old, states, present) == ["a", "x"]


def test_reuse_needs_no_recursion_for_a_long_plan():
    from llamarig.work.reuse import reusable

    n = 5000  # deeper than Python's recursion limit, listed dependents first
    tasks = [{"name": f"s{i}", "command": "true", "depends_on": [f"s{i - 1}"] if i else []} for i in reversed(range(n))]
    states = {t["name"]: {"state": "succeeded", "result": {}} for t in tasks}
    assert len(reusable(tasks, tasks, states, lambda r: True)) == n


def test_a_pending_attempt_read_before_the_state_does_not_mark_a_task_that_ended_since():
    """show reads the engine's pending activities, then the workflow's state: a task that ended in
    between keeps its own attempt and worker (seen in CI: ended tasks shown with a worker key)."""
    from types import SimpleNamespace

    from llamarig.work.plans import _merge_pending

    pending = [SimpleNamespace(activity_id=f"{n}#2", state=2, attempt=1, last_worker_identity="work-cpu@h:1:2",
                               HasField=lambda field: False) for n in ("done", "busy")]
    tasks = {"done": {"state": "succeeded", "attempt": 1}, "busy": {"state": "queued", "attempt": 1}}
    _merge_pending(tasks, pending)
    assert tasks["done"] == {"state": "succeeded", "attempt": 1}
    assert tasks["busy"] == {"state": "running", "attempt": 2, "worker": "work-cpu@h:1:2"}


def test_merged_metrics_keep_families_together_label_each_process_and_say_which_did_not_answer():
    from prometheus_client.parser import text_string_to_metric_families

    from llamarig.api.compute.metrics_merge import merge

    one = (b'# HELP t_total Tasks\n# TYPE t_total counter\nt_total{cls="cpu"} 3\nt_total{} 1\n'
           b'# HELP h Seconds\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_sum 1.5\nh_count 2\n')
    two = b'# HELP t_total Tasks\n# TYPE t_total counter\nt_total{cls="cpu"} 5\n'
    text = merge([one, None, two]).decode()
    assert text.count("# TYPE t_total counter") == 1 and 't_total{process="0"} 1' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [(s.labels, s.value) for s in families["t"].samples] == [
        ({"process": "0", "cls": "cpu"}, 3), ({"process": "0"}, 1), ({"process": "2", "cls": "cpu"}, 5)]
    assert [s.name for s in families["h"].samples] == ["h_bucket", "h_sum", "h_count"]
    assert {s.labels["process"]: s.value for s in families["llamarig_work_process_up"].samples} == {
        "0": 1, "1": 0, "2": 1}


def test_a_task_wakes_once_every_dependency_ended_and_reused_ones_count_as_ended():
    import asyncio

    from llamarig.work.readiness import Readiness

    tasks = [{"name": "old", "depends_on": []}, {"name": "a", "depends_on": []},
             {"name": "b", "depends_on": ["a", "old"]}, {"name": "c", "depends_on": ["a", "b"]}]

    async def scenario():
        r = Readiness(tasks, ended={"old"})
        woke = []

        async def waiter(name):
            await r.wait(name)
            woke.append(name)
        jobs = {n: asyncio.ensure_future(waiter(n)) for n in ("a", "b", "c")}
        await asyncio.wait_for(jobs["a"], 5)  # nothing to wait for (`old` was reused)
        assert not jobs["b"].done() and not jobs["c"].done()
        r.ended("a")
        r.ended("a")  # a second end of the same task counts once (else c would wake here too)
        await asyncio.wait_for(jobs["b"], 5)
        assert not jobs["c"].done()
        r.ended("b")
        await asyncio.wait_for(jobs["c"], 5)
        assert woke == ["a", "b", "c"]
    asyncio.run(scenario())


def test_a_chain_of_5000_wakes_in_order_each_end_touching_only_its_dependents():
    """(What it costs per step is measured in bench/RESULTS.md, not here.)"""
    import asyncio

    from llamarig.work.readiness import Readiness

    n = 5000
    tasks = [{"name": f"s{i}", "depends_on": [f"s{i - 1}"] if i else []} for i in range(n)]

    async def scenario():
        r = Readiness(tasks, ended=set())
        order = []

        async def step(i):
            await r.wait(f"s{i}")
            order.append(i)
            r.ended(f"s{i}")
        await asyncio.gather(*(step(i) for i in reversed(range(n))))
        return order
    assert asyncio.run(scenario()) == list(range(n))


def test_viewers_of_one_plan_share_a_fetch_while_it_is_young_and_a_failed_one_is_not_kept():
    import asyncio

    from llamarig.api.compute.plan_routes import Views

    async def scenario():
        fetched, gate, begun = [], asyncio.Event(), asyncio.Condition()

        async def fetch(answer):
            async with begun:
                fetched.append(answer)
                begun.notify_all()
            await gate.wait()
            if answer == "boom":
                raise RuntimeError("temporal gone")
            return answer

        views = Views(max_age_s=3600)
        first = [asyncio.ensure_future(views.get("p", lambda: fetch("one"))) for _ in range(5)]
        leaver = asyncio.ensure_future(views.get("p", lambda: fetch("two")))
        other = asyncio.ensure_future(views.get("q", lambda: fetch("boom")))
        await asyncio.wait_for(_until(begun, lambda: len(fetched) == 2), 5)
        leaver.cancel()  # a viewer who leaves does not cancel the fetch the others wait on
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*first), 5) == ["one"] * 5
        assert await views.get("p", lambda: fetch("three")) == "one"  # young: the same answer
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(other, 5)
        assert await views.get("q", lambda: fetch("again")) == "again"  # the failure was not kept
        assert fetched == ["one", "boom", "again"]
        old = Views(max_age_s=0)  # every view its own fetch, once the one before ended
        assert [await old.get("p", lambda: fetch(str(i))) for i in range(2)] == ["0", "1"]
        gate.clear()
        slow = [asyncio.ensure_future(old.get("p", lambda i=i: fetch(f"slow{i}"))) for i in range(3)]
        await asyncio.wait_for(_until(begun, lambda: fetched[-1] == "slow0"), 5)
        gate.set()  # viewers who came while a fetch ran, however old it was, share it
        assert await asyncio.wait_for(asyncio.gather(*slow), 5) == ["slow0"] * 3
    asyncio.run(scenario())


async def _until(condition, done) -> None:
    async with condition:
        await condition.wait_for(done)


def _plan_folder(run_dir, plan_id: str, outcome: str | None) -> None:
    import json

    folder = run_dir / "work" / "plans" / plan_id
    (folder / "tasks" / "t" / "attempt-1").mkdir(parents=True)
    (folder / "tasks" / "t" / "attempt-1" / "output.txt").write_text("x" * 1000)
    if outcome:
        (folder / "plan.summary.json").write_text(json.dumps({"plan_id": plan_id, "outcome": outcome}))


def test_prune_finds_plans_unchanged_for_days_and_those_the_engine_must_clear(tmp_path):
    """The run folder's side of a prune (the engine's is in test_work.py): a plan is old when
    nothing in it changed for the days given; one without an ended record is asked of the engine."""
    import time

    from llamarig.work.prune import DAY_S, _old_plans, _remove

    plans = tmp_path / "work" / "plans"
    cases = (("old-20261001-000000-aaaaaa", "succeeded", 40), ("new-20261128-000000-bbbbbb", "failed", 2),
             ("open-20261001-000000-cccccc", "running", 40), ("other-20261001-000000-dddddd", None, 40),
             ("touched-20261001-000000-eeeeee", "succeeded", 40))
    for plan_id, outcome, age in cases:
        _plan_folder(tmp_path, plan_id, outcome)
        aged(plans / plan_id, age)
    (plans / "touched-20261001-000000-eeeeee" / "tasks" / "t" / "attempt-1" / "output.txt").write_text("y")
    (plans / "stray-file").write_text("not a plan")
    old, asked, young = _old_plans(plans, time.time() - 30 * DAY_S)
    assert sorted(old) == ["old-20261001-000000-aaaaaa", "open-20261001-000000-cccccc", "other-20261001-000000-dddddd"]
    assert all(size >= 1000 for size in old.values()) and young == 2
    assert asked == {"open-20261001-000000-cccccc", "other-20261001-000000-dddddd"}
    assert _old_plans(tmp_path / "nothing-here", time.time()) == ({}, set(), 0)
    (plans / "open-20261001-000000-cccccc").touch()  # reused while the engine was asked: kept
    removed = _remove(plans, {p: old[p] for p in ("old-20261001-000000-aaaaaa", "open-20261001-000000-cccccc")},
                      time.time() - 30 * DAY_S)
    assert list(removed) == ["old-20261001-000000-aaaaaa"] and not (plans / "old-20261001-000000-aaaaaa").exists()
    assert (plans / "open-20261001-000000-cccccc").is_dir() and (plans / "stray-file").read_text() == "not a plan"




def test_gpu_task_capacity_counts_an_llm_that_loads_on_demand_but_not_one_an_operator_holds(tmp_path):
    from llamarig.work.slots import capacity

    rig = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])},
                             work=work_section(concurrency={"llm": 3, "script": 0})))
    ready = {"booted": True, "components": {"m": {"state": "stopped", "held": False}}}
    assert capacity(ready, rig) == 3  # on demand: an llm task loads it (before: 0, never taken)
    ready["components"]["m"]["held"] = True
    assert capacity(ready, rig) == 0
    ready["components"]["m"] = {"state": "busy", "held": False}
    assert capacity(ready, rig) == 3 and capacity({"booted": False}, rig) == 0


def test_a_task_waiting_for_its_class_place_heartbeats_and_a_cancelled_wait_keeps_no_place(tmp_path):
    import asyncio

    rig = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])},
                             work=work_section(concurrency={"script": 1})))
    acts = Activities(rig, WorkerProcess("gpu"), "work-gpu@here", ComputeApi("http://127.0.0.1:9", None, 5))
    acts.beat_every, beats = 0.01, []
    acts._beat = lambda: beats.append(1)

    async def run():
        async with acts._limited("script"):
            waiter = asyncio.ensure_future(acts._limited("script").__aenter__())
            await asyncio.wait_for(_polled(lambda: len(beats) >= 5), 5)
            assert not waiter.done()  # waited, heartbeating
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with acts._limited("script"):  # the cancelled wait took no place
            assert acts.limits["script"].locked()
    asyncio.run(run())


async def _polled(check) -> None:
    """Poll `check` on the running loop (the caller bounds it with wait_for)."""
    import asyncio

    while not check():
        await asyncio.sleep(0.01)
