"""The same chain and fan-out on Celery with Redis (run by bench/.venv-celery's Python; see
bench/setup-celery.sh): each task spawns `true` with stdout and stderr to files in a folder of
its own, as a llamarig cpu task does; times come from the tasks' own clocks (start and end).
Prints one JSON object. Celery has no dependency graph beyond chains and chords, so no DAG here.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONCURRENCY = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TASKS = '''
import os, subprocess, time
from pathlib import Path
from celery import Celery
app = Celery("bench", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True

@app.task
def run(_previous=None, folder="/tmp", name="t"):
    started = time.time()
    where = Path(folder) / name
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "stdout", "wb") as out, open(where / "stderr", "wb") as err:
        subprocess.run(["true"], stdout=out, stderr=err, start_new_session=True)
    return {"started": started, "ended": time.time()}
'''


def main(chain_n: int, fan_n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "benchtasks.py").write_text(TASKS)
        port = free_port()
        broker = f"redis://127.0.0.1:{port}/0"
        env = {**os.environ, "BROKER": broker, "PYTHONPATH": str(folder)}
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "benchtasks", "worker", "-c", str(CONCURRENCY),
                                   "--pool", "prefork", "-l", "warning"], cwd=folder, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sys.path.insert(0, str(folder))
            os.environ["BROKER"] = broker
            import benchtasks
            from celery import chain, group

            benchtasks.run.delay(folder=str(folder / "w"), name="warm").get(timeout=120)
            steps = chain(*(benchtasks.run.s(folder=str(folder / "c"), name=f"s{i}") if i == 0 else
                            benchtasks.run.s(folder=str(folder / "c"), name=f"s{i}") for i in range(chain_n)))
            done = _collect(steps.apply_async())
            overhead = sorted(b["started"] - a["ended"] for a, b in zip(done, done[1:]))
            began = time.time()
            results = group(benchtasks.run.s(folder=str(folder / "f"), name=f"f{i}") for i in range(fan_n)).apply_async()
            ends = [r["ended"] for r in results.get(timeout=600)]
            span = max(ends) - began
            return {"chain": {"tasks": chain_n, "step_overhead_p50_ms": round(overhead[len(overhead) // 2] * 1000, 1)},
                    "fan_out": {"tasks": fan_n, "seconds": round(span, 2), "tasks_per_s": round(fan_n / span, 1)},
                    "concurrency": CONCURRENCY}
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            redis.terminate()


def _collect(result) -> list[dict]:
    """A chain's results, first to last (each link's parent is the one before)."""
    result.get(timeout=600)
    links = []
    while result is not None:
        links.append(result.result)
        result = result.parent
    return links[::-1]


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
