"""The floor under llamarig's fan-out on this machine, now: the same embedded dev server (the
same command line and dynamic config), a plain Temporal SDK worker without llamarig, and a
workflow that keeps 64 activities in Temporal at once (work.plan_window's default) with the
options a plan's task has (heartbeat, schedule-to-start, priority key, one attempt each):

- noop: the activity returns at once (the issue's measurement: 388 tasks/s on a 2-core VM);
- command: the activity does what a cpu task must: two folders, stdout and stderr files, `true`
  spawned through `setpriv --pdeathsig KILL` in its own session, waited for.

- dag: bench/work.py's DAG of sleeping commands, each scheduled once its dependencies completed,
  with the priority key llamarig gives it (work/priority.py), nothing else: its makespan.

Times from the workflow's history, first scheduled to last completed, as bench/work.py's.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import Priority, RetryPolicy
from temporalio.worker import Worker

from common import free_port
from llamarig.shared.work_config import WorkConfig
from llamarig.work import engine

WINDOW, SLOTS = 64, 16
SETPRIV = shutil.which("setpriv")
NAMESPACE = "llamarig"  # the bench's own dev server


@activity.defn
async def noop(name: str) -> dict:
    return {"name": name}


@activity.defn
async def command(name: str, argv: tuple[str, ...] = ("true",)) -> dict:
    folder = Path(FOLDER[0]) / name / "attempt-1"
    folder.parent.mkdir()
    folder.mkdir()
    with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
        proc = await asyncio.create_subprocess_exec(SETPRIV, "--pdeathsig", "KILL", "--", *argv, cwd=folder,
                                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                                    start_new_session=True)
    return {"name": name, "exit_code": await proc.wait(), "folder": str(folder)}


FOLDER: list[str] = []


async def windowed(n: int, window: int, start) -> int:
    """In a workflow: start(i) for i in range(n), at most `window` of them pending at once."""
    pending, i = set(), 0
    while i < n or pending:
        while i < n and len(pending) < window:
            pending.add(asyncio.ensure_future(start(i)))
            i += 1
        _, left = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending = set(left)
    return n


@workflow.defn(sandboxed=False)
class FanOut:
    @workflow.run
    async def run(self, kind: str, n: int) -> int:
        return await windowed(n, WINDOW, lambda i: workflow.execute_activity(
            kind, f"f{i}", start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=5), schedule_to_start_timeout=timedelta(seconds=600),
            retry_policy=RetryPolicy(maximum_attempts=1), priority=Priority(priority_key=27)))


@workflow.defn(sandboxed=False)
class Dag:
    """Each task once its dependencies completed, with its priority key, at most WINDOW in Temporal."""

    @workflow.run
    async def run(self, tasks: list[dict]) -> int:
        done: set[str] = set()
        room = asyncio.Semaphore(WINDOW)

        async def one(t: dict) -> None:
            await workflow.wait_condition(lambda: all(d in done for d in t["deps"]))
            async with room:
                await workflow.execute_activity(
                    "command", args=[t["name"], ["sleep", str(t["seconds"])]], activity_id=t["name"],
                    start_to_close_timeout=timedelta(seconds=60), heartbeat_timeout=timedelta(seconds=5),
                    retry_policy=RetryPolicy(maximum_attempts=1), priority=Priority(priority_key=t["key"]))
            done.add(t["name"])
        await asyncio.gather(*(one(t) for t in tasks))
        return len(tasks)


async def _dag(client: Client, tasks: list[dict]) -> float:
    handle = await client.start_workflow(Dag.run, tasks, id="dag", task_queue="floor")
    await handle.result()
    times = [e.event_time.ToDatetime().timestamp() async for e in handle.fetch_history_events()
             if e.HasField("activity_task_scheduled_event_attributes")
             or e.HasField("activity_task_completed_event_attributes")]
    return round(max(times) - min(times), 2)


async def _fan_out(client: Client, kind: str, n: int) -> float:
    handle = await client.start_workflow(FanOut.run, args=[kind, n], id=f"{kind}-{n}", task_queue="floor")
    await handle.result()
    times = [e.event_time.ToDatetime().timestamp() async for e in handle.fetch_history_events()
             if e.HasField("activity_task_scheduled_event_attributes")
             or e.HasField("activity_task_completed_event_attributes")]
    return round(n / (max(times) - min(times)), 1)


async def _measure(port: int, n: int, dag: list[dict]) -> dict:
    client = await connected(port)
    async with Worker(client, task_queue="floor", workflows=[FanOut, Dag], activities=[noop, command],
                      max_concurrent_activities=SLOTS):
        await _fan_out(client, "noop", 20)  # warm
        return {"tasks": n, "noop_tasks_per_s": await _fan_out(client, "noop", n),
                "command_tasks_per_s": await _fan_out(client, "command", n),
                "dag_tasks": len(dag), "dag_makespan_s": await _dag(client, dag) if dag else None}


def measure(temporal_bin: str, n: int, dag: list[dict] | None = None) -> dict:
    """dag: [{name, deps, seconds, key}] in a topological order (bench/work.py's DAG), or none."""
    with tempfile.TemporaryDirectory() as tmp:
        FOLDER[:] = [tmp]
        work = WorkConfig(embedded={"port": free_port()})
        server = subprocess.Popen(engine.embedded_command(work, temporal_bin, f"{tmp}/temporal.db", NAMESPACE),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return asyncio.run(_measure(work.embedded.port, n, dag or []))
        finally:
            server.terminate()
            server.wait(30)


async def connected(port: int) -> Client:
    """A client once the server answers (it starts in a few seconds)."""
    for _ in range(150):
        try:
            return await Client.connect(f"127.0.0.1:{port}", namespace=NAMESPACE)
        except RuntimeError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no Temporal server on 127.0.0.1:{port} after 30 s")


if __name__ == "__main__":
    import json
    import sys

    from llamarig.work.cli_cmds import temporal_bin
    print(json.dumps(measure(temporal_bin(), int(sys.argv[1]) if len(sys.argv) > 1 else 1000)))
    os._exit(0)
