"""What option (c) of the fan-out would give on this machine: the same 1000 tasks as local
activities run by the workflow's own worker (no activity task in Temporal; no per-task
heartbeat, no spread over rigs), 16 at a time, no-op and with a cpu task's command and files
(bench/temporal_floor.py's activities), on the same embedded server. Not part of `run.py`.

    .venv/bin/python bench/probe_local_activities.py
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from datetime import timedelta

from temporalio import workflow
from temporalio.worker import Worker

import temporal_floor
from common import free_port
from llamarig.shared.work_config import WorkConfig
from llamarig.work import engine
from llamarig.work.cli_cmds import temporal_bin

SLOTS, N = 16, 1000


@workflow.defn(sandboxed=False)
class LocalFanOut:
    @workflow.run
    async def run(self, kind: str, n: int) -> int:
        return await temporal_floor.windowed(n, SLOTS, lambda i: workflow.execute_local_activity(
            kind, f"f{i}", start_to_close_timeout=timedelta(seconds=60)))


async def _measure(port: int) -> dict:
    client = await temporal_floor.connected(port)
    async with Worker(client, task_queue="local", workflows=[LocalFanOut],
                      activities=[temporal_floor.noop, temporal_floor.command], max_concurrent_local_activities=SLOTS):
        await client.execute_workflow(LocalFanOut.run, args=["noop", 20], id="warm", task_queue="local")
        rates = {}
        for kind in ("noop", "command"):
            began = time.monotonic()
            await client.execute_workflow(LocalFanOut.run, args=[kind, N], id=kind, task_queue="local")
            rates[f"{kind}_tasks_per_s"] = round(N / (time.monotonic() - began), 1)
        return rates


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        temporal_floor.FOLDER[:] = [tmp]
        work = WorkConfig(embedded={"port": free_port()})
        server = subprocess.Popen(engine.embedded_command(work, temporal_bin(), f"{tmp}/temporal.db",
                                                            temporal_floor.NAMESPACE),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            print(asyncio.run(_measure(work.embedded.port)))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
    os._exit(0)
