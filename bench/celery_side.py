"""The same chain and fan-out on Celery with Redis (run by bench/.venv-celery's Python; see
bench/setup-celery.sh): each task spawns `true` with stdout and stderr to files in a folder of
its own, as a llamarig cpu task does; times come from the tasks' own clocks (start and end).
Prints one JSON object. Celery has no dependency graph beyond chains and chords, so no DAG here.
The kill: a late-acked task's worker killed with kill -9 (its whole process group) and a new
worker started, with Redis' visibility timeout set to the heartbeat timeout llamarig's bench uses;
the time until the task starts again, from the task's own clock.
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
    """A free loopback port below the kernel's ephemeral range, as the tests take theirs (this
    runs in Celery's own venv, without tests/helpers.py): a port the kernel hands out could be
    taken by a client connection before Redis listens on it."""
    import random

    first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10000, max(first, 12000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


TASKS = '''
import os, subprocess, time
from pathlib import Path
from celery import Celery
app = Celery("bench", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True
app.conf.task_reject_on_worker_lost = True
app.conf.broker_transport_options = {"visibility_timeout": float(os.environ.get("VISIBILITY_S", 3600))}

@app.task
def run(_previous=None, folder="/tmp", name="t"):
    started = time.time()
    where = Path(folder) / name
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "stdout", "wb") as out, open(where / "stderr", "wb") as err:
        subprocess.run(["true"], stdout=out, stderr=err, start_new_session=True)
    return {"started": started, "ended": time.time()}

@app.task
def slow(starts):
    with open(starts, "a") as f:
        f.write(f"{time.time()}\\n")
    if len(Path(starts).read_text().split()) == 1:
        time.sleep(300)
'''
KILL_VISIBILITY_S = 5  # bench/work.py runs its kill with work.heartbeat_timeout_s 5


def main(chain_n: int, fan_n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "benchtasks.py").write_text(TASKS)
        port = free_port()
        broker = f"redis://127.0.0.1:{port}/0"
        env = {**os.environ, "BROKER": broker, "PYTHONPATH": str(folder)}
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        worker = _worker(folder, env)
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
            measured = {"chain": {"tasks": chain_n, "step_overhead_p50_ms": round(overhead[len(overhead) // 2] * 1000, 1)},
                        "fan_out": {"tasks": fan_n, "seconds": round(span, 2), "tasks_per_s": round(fan_n / span, 1)},
                        "concurrency": CONCURRENCY}
            worker.terminate()
            worker.wait(timeout=30)
            worker = _worker(folder, env | {"VISIBILITY_S": str(KILL_VISIBILITY_S)})
            worker, measured["kill"] = _kill(folder, env, worker, benchtasks)
            return measured
        finally:
            worker.kill()
            worker.wait(timeout=30)
            redis.terminate()


def _worker(folder: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "benchtasks", "worker", "-c", str(CONCURRENCY),
                             "--pool", "prefork", "-l", "warning"], cwd=folder, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(folder: Path, env: dict, worker, benchtasks) -> tuple[subprocess.Popen, dict]:
    """kill -9 of the worker running a late-acked task (its pool too), a new worker started at
    once (as supervisord would): seconds until the task starts again."""
    import signal

    starts = folder / "starts"
    benchtasks.slow.delay(str(starts))
    deadline = time.time() + 120
    while not (starts.exists() and starts.read_text().strip()):
        if time.time() > deadline:
            return worker, {"failed": "the task never started"}
        time.sleep(0.05)
    killed = time.time()
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    worker = _worker(folder, env | {"VISIBILITY_S": str(KILL_VISIBILITY_S)})
    deadline = killed + 120
    while len(starts.read_text().split()) < 2:
        if time.time() > deadline:
            return worker, {"failed": "not started again within 120 s", "visibility_timeout_s": KILL_VISIBILITY_S}
        time.sleep(0.05)
    again = float(starts.read_text().split()[1])
    return worker, {"rerun_after_s": round(again - killed, 2), "visibility_timeout_s": KILL_VISIBILITY_S}


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
