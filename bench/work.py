"""The work layer on the embedded Temporal (one bundle, its workers), timed from the plan
workflow's own history (the engine's timestamps, not the client's):

- chain: N dependent no-op cpu tasks (`true`); overhead per dependent step = the next task's
  start minus the previous task's completion, p50 (target <= 35 ms).
- fan-out: N independent no-op cpu tasks; tasks/s from the first scheduled to the last
  completed (target >= 350 tasks/s).
- dag: a seeded random DAG of N sleeping tasks at the configured concurrency, each with its
  expected_s; makespan against its critical-path bound max(critical path, total work /
  concurrency) (target within 10 %), and against zero-overhead list schedules of the same DAG
  (llamarig's order, and plan order), which tell the order's share from the overhead's.
  dag_chains: the same DAG first, on a rig that knows nothing of its tasks (the chains of
  dependents order it); dag_learned: last, without expected_s, ordered by what the rig learned.
- dag_shipped: the DAG with expected_s at the concurrency.cpu runtime/rig.yaml ships (4), on a
  bundle of its own.
- kill: kill -9 of work-cpu mid-task; time until the task starts again, from the kill and from
  the killed attempt's start, against work.heartbeat_timeout_s.
- temporal_floor: the fan-out (no-op, and with the command and files a cpu task has) and the
  DAG on the same server with a plain SDK worker (bench/temporal_floor.py): what this machine
  allows now.

    .venv/bin/python bench/run.py work        (or bench/work.py [--smoke])
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path

from common import model_entry, start_bundle, stop, wait_for, write_rig
from helpers import plan_ended, plan_history, plan_view, submit_plan, work_section
from llamarig.backend.models_make import make_gguf
from llamarig.work import priority

CONCURRENCY = 16
# work.cpu_processes: one per 4 usable CPUs, 1 to 4 (one Python process bounds short tasks; 2 cores
# gain nothing from a second); LLAMARIG_BENCH_CPU_PROCESSES overrides it.
CPU_PROCESSES = int(os.environ.get("LLAMARIG_BENCH_CPU_PROCESSES") or max(1, min(4, len(os.sched_getaffinity(0)) // 4)))


def _times(events) -> dict[str, dict[str, float]]:
    """activity id -> {scheduled, started, completed}: seconds since the epoch, from the history."""
    ids, times = {}, {}
    for e in events:
        at = e.event_time.ToDatetime().timestamp()
        if e.HasField("activity_task_scheduled_event_attributes"):
            ids[e.event_id] = e.activity_task_scheduled_event_attributes.activity_id
            times[ids[e.event_id]] = {"scheduled": at}
        elif e.HasField("activity_task_started_event_attributes"):
            times[ids[e.activity_task_started_event_attributes.scheduled_event_id]]["started"] = at
        elif e.HasField("activity_task_completed_event_attributes"):
            times[ids[e.activity_task_completed_event_attributes.scheduled_event_id]]["completed"] = at
    return times


def _run_plan(b, tasks: list[dict], name: str, timeout: float = 600) -> tuple[dict, dict]:
    """The plan run to success: its view and its tasks' times (`_times`)."""
    plan_id = submit_plan(b, tasks, name=name)
    view = plan_ended(b, plan_id, timeout)
    assert view["outcome"] == "succeeded", {n: t.get("error") for n, t in view["tasks"].items() if t.get("error")}
    return view, _times(plan_history(b.rig, plan_id))


def chain(b, n: int) -> dict:
    tasks = [{"name": f"s{i}", "class": "cpu", "command": ["true"]} | ({"depends_on": [f"s{i - 1}"]} if i else {})
             for i in range(n)]
    _, times = _run_plan(b, tasks, "chain")
    steps = [times[f"s{i}#1"]["started"] - times[f"s{i - 1}#1"]["completed"] for i in range(1, n)]
    return {"tasks": n, "step_overhead_p50_ms": round(statistics.median(steps) * 1000, 1),
            "step_overhead_max_ms": round(max(steps) * 1000, 1), "target": "<= 35 ms p50"}


def fan_out(b, n: int) -> dict:
    _, times = _run_plan(b, [{"name": f"f{i}", "class": "cpu", "command": ["true"]} for i in range(n)], "fanout")
    span = max(t["completed"] for t in times.values()) - min(t["scheduled"] for t in times.values())
    return {"tasks": n, "seconds": round(span, 2), "tasks_per_s": round(n / span, 1), "target": ">= 350 tasks/s",
            "cpu_processes": CPU_PROCESSES}


def dag_spec(n: int, seed: int = 7) -> tuple[dict[str, float], dict[str, list[str]]]:
    """A seeded random DAG: seconds of each task, its dependencies (names in a topological order)."""
    rnd = random.Random(seed)
    work = {f"d{i}": round(rnd.uniform(0.05, 0.3), 3) for i in range(n)}
    deps = {f"d{i}": sorted({f"d{rnd.randrange(i)}" for _ in range(rnd.randint(0, 2))}) if i else [] for i in range(n)}
    return work, deps


def dag_order(work: dict[str, float], deps: dict[str, list[str]], expected: bool) -> dict[str, tuple]:
    """The order llamarig gives each task of the DAG (all at priority 5), with or without expected_s."""
    return priority.order([{"name": k, "depends_on": v, "priority": 5} | ({"expected_s": work[k]} if expected else {})
                           for k, v in deps.items()])


ORDERS = {"chains": "nothing known: the chains of dependents order it",
          "given": "each task's expected_s (its sleep)",
          "learned": "no expected_s: what the rig learned from the runs before"}


def dag(b, n: int, order: str, slots: int = CONCURRENCY) -> dict:
    """The DAG ordered by ORDERS[order] at `slots` (the bundle's concurrency.cpu); "chains" before
    any run of it on the rig (nothing learned)."""
    work, deps = dag_spec(n)
    tasks = [{"name": k, "class": "cpu", "command": ["sleep", str(v)], "depends_on": deps[k]}
             | ({"expected_s": v} if order == "given" else {}) for k, v in work.items()]
    view, times = _run_plan(b, tasks, "dag")
    sources = {t.get("expected_from") for t in view["tasks"].values()}
    assert sources == {"chains": {None}, "given": {"plan"}, "learned": {"learned"}}[order], sources
    finish: dict[str, float] = {}
    for k in work:  # names are in a topological order
        finish[k] = work[k] + max((finish[d] for d in deps[k]), default=0)
    bound = max(max(finish.values()), sum(work.values()) / slots)
    ours = _list_schedule(work, deps, slots, dag_order(work, deps, order != "chains").get)
    in_plan_order = _list_schedule(work, deps, slots, lambda k: 0)
    span = max(t["completed"] for t in times.values()) - min(t["scheduled"] for t in times.values())
    return {"tasks": n, "order": order, "ordered_by": ORDERS[order], "concurrency": slots,
            "makespan_s": round(span, 2), "bound_s": round(bound, 2), "critical_path_s": round(max(finish.values()), 2),
            "work_over_slots_s": round(sum(work.values()) / slots, 2),
            "over_bound_pct": round((span / bound - 1) * 100, 1), "target": "within 10 % of the bound",
            "list_schedule_s": {"llamarig_order": round(ours, 2), "plan_order": round(in_plan_order, 2)},
            "over_list_schedule_pct": round((span / ours - 1) * 100, 1)}


def _list_schedule(work: dict[str, float], deps: dict[str, list[str]], slots: int, rank) -> float:
    """The makespan of the same DAG at the same concurrency with free task starts: each task
    starts once its dependencies ended and a slot is free, the ready task of the lowest
    rank(task) first, then in plan order. No schedule beats the critical-path bound; this says
    how close a given order comes with no overhead at all."""
    import heapq

    ended: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    now, pending = 0.0, list(work)
    while pending or running:
        ready = sorted((k for k in pending if all(ended.get(d, now + 1) <= now for d in deps[k])), key=rank)
        while ready and len(running) < slots:
            k = ready.pop(0)
            pending.remove(k)
            heapq.heappush(running, (now + work[k], k))
        now, k = heapq.heappop(running)
        ended[k] = now
    return now


def kill(b) -> dict:
    command = "if [ $LLAMARIG_ATTEMPT = 1 ]; then sleep 300; fi"
    plan_id = submit_plan(b, [{"name": "k", "class": "cpu", "command": command}], name="kill")

    def running_on():  # the worker's identity ends with its pid (any of the cpu processes)
        t = plan_view(b, plan_id)["tasks"]["k"]
        return t["state"] == "running" and t.get("worker") and int(t["worker"].rsplit(":", 1)[1])
    pid = wait_for(running_on, 60, "the task running")
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    plan_ended(b, plan_id, 300)
    times = _times(plan_history(b.rig, plan_id))
    again = times["k#2"]["started"]
    # The engine counts the timeout from the attempt's start or its last heartbeat, not from the
    # kill (which came once a view, up to 1 s old, showed the task running): never under it.
    return {"rerun_after_s": round(again - killed, 2), "rerun_after_start_s": round(again - times["k#1"]["started"], 2),
            "heartbeat_timeout_s": b.rig.work.heartbeat_timeout_s}


def cancel(b, times: int) -> dict:
    """`llamarig cancel` (its route) to SIGTERM in the running command, each of `times` plans."""
    command = "trap 'date +%s.%N > termed; exit 0' TERM; while true; do sleep 0.05; done"
    took = []
    for _ in range(times):
        plan_id = submit_plan(b, [{"name": "c", "class": "cpu", "command": command}], name="cancel")
        wait_for(lambda: plan_view(b, plan_id)["tasks"]["c"]["state"] == "running", 60, "the task running")
        termed = b.rig.run_dir / "work" / "plans" / plan_id / "tasks" / "c" / "attempt-1" / "termed"
        asked = time.time()
        b.post(f"/admin/plans/{plan_id}/cancel")
        wait_for(lambda: termed.exists() and termed.read_text().strip(), 60, "SIGTERM to the command")
        took.append(float(termed.read_text()) - asked)
        plan_ended(b, plan_id)
    return {"cancel_to_sigterm_s_p50": round(statistics.median(took), 3), "cancel_to_sigterm_s_max": round(max(took), 3),
            "cancels": times}


@contextlib.contextmanager
def _bundle(slots: int, cpu_processes: int = 1):
    """A one-model bundle with work.concurrency.cpu `slots`, warmed by a first plan."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rig = write_rig(folder, {"m": model_entry(make_gguf(folder / "tiny.gguf"), [0])},
                        work=work_section(concurrency={"cpu": slots}, heartbeat_timeout_s=5,
                                          cpu_processes=cpu_processes))
        b = start_bundle(folder, rig)
        try:
            b.wait_ready()
            _run_plan(b, [{"name": "warm", "class": "cpu", "command": ["true"]}], "warm")
            yield b
        finally:
            stop(b)


def measure(smoke: bool) -> dict:
    sizes = {"chain": 5, "fan_out": 20, "dag": 20} if smoke else {"chain": 50, "fan_out": 1000, "dag": 200}
    with _bundle(CONCURRENCY, CPU_PROCESSES) as b:
        return {"chain": chain(b, sizes["chain"]), "fan_out": fan_out(b, sizes["fan_out"]),
                "dag_chains": dag(b, sizes["dag"], "chains"), "dag": dag(b, sizes["dag"], "given"),
                "dag_learned": dag(b, sizes["dag"], "learned"), "kill": kill(b), "cancel": cancel(b, 2 if smoke else 10)}


SHIPPED_RIG = Path(__file__).resolve().parent.parent / "runtime" / "rig.yaml"


def dag_at_shipped_concurrency(smoke: bool) -> dict:
    """The DAG with expected_s on a bundle of its own at the concurrency.cpu runtime/rig.yaml
    ships (4): on 2 cores, 16 slots add CPU contention to every task's time."""
    import yaml

    slots = yaml.safe_load(SHIPPED_RIG.read_text())["work"]["concurrency"]["cpu"]
    with _bundle(slots) as b:
        return dag(b, 20 if smoke else 200, "given", slots) | {"concurrency_from": "runtime/rig.yaml"}


CELERY = Path(__file__).resolve().parent / ".venv-celery" / "bin" / "python"


def celery(smoke: bool) -> dict:
    """The same chain and fan-out on Celery with Redis, where bench/setup-celery.sh installed it."""
    if not CELERY.exists():
        return {"skipped": "run bench/setup-celery.sh"}
    import subprocess

    sizes = ("5", "20") if smoke else ("50", "1000")
    out = subprocess.run([str(CELERY), str(Path(__file__).with_name("celery_side.py")), *sizes],
                         capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout) if out.returncode == 0 else {"failed": out.stderr[-300:]}


def floor(smoke: bool) -> dict:
    """The same fan-out and DAG on a plain SDK worker and the same server (bench/temporal_floor.py)."""
    import temporal_floor
    from llamarig.work.cli_cmds import temporal_bin

    work, deps = dag_spec(20 if smoke else 200)
    order = dag_order(work, deps, expected=True)
    return temporal_floor.measure(temporal_bin(), 20 if smoke else 1000, [
        {"name": k, "deps": deps[k], "seconds": v, "key": order[k][0]} for k, v in work.items()])


def run(smoke: bool) -> dict:
    return measure(smoke) | {"dag_shipped": dag_at_shipped_concurrency(smoke), "temporal_floor": floor(smoke),
                             "celery_redis": celery(smoke)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    print(json.dumps(measure(p.parse_args().smoke), indent=2))
