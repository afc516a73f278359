"""Boot: a rig shaped like the default one (brain split over GPUs 0 and 3, three workers, one on
llama-cpp-python) from supervisord's start to /ready = 200, against each model's load time alone
(the same server command, started by hand, until it answers its ready path). All models have
one priority, so they fit in one wave; run with the rig's default settle_s (1 s) and with 0, the
slowest model alone, and (on the CPU) larger models read whole at load, so that loads take
seconds. The boot is `llamarig up`, as an operator types it, timed until /ready answers 200."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import ON_GPU, PATH, model_entry, wait_for, write_rig
from models import model, sparse_model
from llamarig.backend.engines import engine_for
from llamarig.backend.launch import server_argv
from llamarig.backend.models_make import GgufSize
from llamarig.shared.rig import load_rig

GPU_SIZE = GgufSize(layers=16, width=2048, heads=16, kv_heads=8)
SHAPE = {"brain": ([0, 3], "llama-server"), "worker-1": ([1], "llama-server"),
         "worker-2": ([2], "llama-server"), "worker-3": ([4], "llama-cpp-python")}


# The servers' flags to read the whole file into memory at load instead of mapping it: on the CPU
# a mapped file "loads" in a fraction of a second and is read later, by the first requests.
NO_MMAP = {"llama-server": ["--load-mode", "none"], "llama-cpp-python": ["--use_mmap", "false"]}


def rig_file(folder: Path, size: GgufSize, settle_s: float, names: tuple[str, ...] = tuple(SHAPE),
             no_mmap: bool = False, sparse: bool = False) -> Path:
    models = {}
    for i, (name, (gpus, engine)) in enumerate(SHAPE.items()):
        if name not in names:
            continue
        if ON_GPU:
            engine = "llama-server"  # no CUDA build of llama-cpp-python on the lent machine
        extra = {"tensor_split": [1, 1]} if len(gpus) == 2 else {}
        if no_mmap:
            extra["extra_args"] = NO_MMAP[engine]
        made = sparse_model if sparse else model
        models[name] = model_entry(made(f"boot-{i}-{size.layers}x{size.width}", size, seed=i), gpus, engine,
                                   context_size=512, priority=0, **extra)
    path = write_rig(folder, models, timeouts={"settle_s": settle_s, "model_wait_s": 30})
    return path


# One client for every poll: httpx.get makes a client (and an SSL context) per call, 28 ms of CPU
# (measured); polled every 10 ms, that took one of this VM's two cores from the boot it timed.
POLL = httpx.Client(timeout=2)


def _answers(url: str) -> bool:
    try:
        return POLL.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def load_by_hand(rig_path: Path, names: list[str]) -> float:
    """Seconds from starting these models' server commands at once (no llamarig) until every
    one answers its ready path."""
    rig = load_rig(rig_path)
    started = time.perf_counter()
    procs = {n: subprocess.Popen(server_argv(rig, n), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "PATH": PATH}) for n in names}
    waiting = set(names)

    def all_ready():
        for n in list(waiting):
            if procs[n].poll() is not None:
                raise RuntimeError(f"{n}: the server exited ({procs[n].returncode}) before it was ready")
            m = rig.models[n]
            if _answers(f"http://127.0.0.1:{m.port}{engine_for(m).ready_path}"):
                waiting.discard(n)
        return not waiting
    try:
        wait_for(all_ready, 300, f"{names} ready", 0.01)
        return time.perf_counter() - started
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(30)


def load_alone(rig_path: Path, name: str) -> float:
    return load_by_hand(rig_path, [name])


def boot_once(rig_path: Path) -> dict:
    """`llamarig up` (what an operator types) until /ready = 200, then `llamarig down`."""
    rig = load_rig(rig_path)
    cli = [sys.executable, "-m", "llamarig.cli", "--rig", str(rig_path)]
    env = {**os.environ, "PATH": PATH}
    started = time.perf_counter()
    up = subprocess.Popen([*cli, "up"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    api = f"http://127.0.0.1:{rig.api.port}"
    try:
        wait_for(lambda: _answers(api + "/ready") or up.poll() not in (None, 0), 300, "/ready = 200", 0.02)
        if up.returncode not in (None, 0):
            raise RuntimeError(f"llamarig up exited {up.returncode}: {up.stderr.read().decode()[-2000:]}")
        total = time.perf_counter() - started
        waves = POLL.get(api + "/admin/units", timeout=10).json()["boot_waves"]
        return {"seconds": round(total, 3), "waves": len(waves)}
    finally:
        up.wait(60)
        subprocess.run([*cli, "down"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=120)
        wait_for(lambda: not (rig.run_dir / "supervisord.pid").exists(), 60, "supervisord gone")


def variant(size: GgufSize, settle: float, names: tuple[str, ...], reps: int, no_mmap: bool = False,
            sparse: bool = False) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-bench-boot-"))
    rig_path = rig_file(folder, size, settle, names, no_mmap, sparse)
    alone = {n: [] for n in names}
    together, boots = [], []
    for _ in range(reps):  # interleaved: loads alone, all at once by hand, a boot; each repetition
        for name in names:
            alone[name].append(load_alone(rig_path, name))
        together.append(load_by_hand(rig_path, list(names)))
        boots.append(boot_once(rig_path))
    loads = {n: round(statistics.median(v), 3) for n, v in alone.items()}
    boot = round(statistics.median(b["seconds"] for b in boots), 3)
    both = round(statistics.median(together), 3)
    kind = ", read whole (no mmap)" if no_mmap else ", zero weights (sparse file)" if sparse else ""
    return {"model": f"{size.layers} layers x {size.width} wide, F32{kind}",
            "load_alone_s": loads, "loads_together_s": both, "boot_to_ready_s": boot, "waves": boots[0]["waves"],
            "slowest_load_s": max(loads.values()), "over_slowest_s": round(boot - max(loads.values()), 3),
            "over_together_s": round(boot - both, 3)}


def run(smoke: bool) -> dict:
    # On a GPU a model of 0.4 GB loads in half a second; 2.3 GB takes about as long as 0.4 GB on the CPU.
    size = GgufSize() if smoke else GPU_SIZE if ON_GPU else GgufSize(layers=8, width=1024)
    reps = 1 if smoke else 3
    out = {"variants": {}}
    for settle in (1.0, 0.0):
        out["variants"][f"settle_s={settle:g}"] = variant(size, settle, tuple(SHAPE), reps)
    # The slowest model alone: llamarig's own chain (CLI, supervisord, API, gate) without four
    # loads sharing the machine.
    out["variants"]["worker-3 alone, settle_s=1"] = variant(size, 1.0, ("worker-3",), reps)
    if ON_GPU and not smoke:
        # Loads of seconds on the GPU: 7.3 GB files. Their weights are a hole (zeros), so no
        # minutes go to writing random data; the load still reads 7.3 GB and copies it to the GPU.
        big = GgufSize(layers=12, width=4096, heads=16, kv_heads=8)
        out["variants"]["loads of seconds, settle_s=1"] = variant(big, 1.0, tuple(SHAPE), reps, sparse=True)
        out["variants"]["loads of seconds, worker-3 alone"] = variant(big, 1.0, ("worker-3",), reps, sparse=True)
    if not ON_GPU:
        # Loads of seconds on the CPU: larger files, read whole at load (1.2 GB each; a mapped file
        # is read later, by the first requests). The smoke run passes the same flags on a tiny model.
        big = GgufSize() if smoke else GgufSize(layers=8, width=2048, heads=16, kv_heads=8)
        out["variants"]["loads of seconds, settle_s=1"] = variant(big, 1.0, tuple(SHAPE), reps, no_mmap=True)
        out["variants"]["loads of seconds, worker-3 alone"] = variant(big, 1.0, ("worker-3",), reps, no_mmap=True)
    out["target"] = "boot_to_ready_s <= slowest_load_s + 1 s (one wave)"
    out["together"] = ("loads_together_s: every server command started at once by hand; the loads contend "
                       "for the CPU (or, on one GPU, for its bus), which the target's 'slowest single "
                       "load' does not see, so over_together_s is llamarig's own cost")
    return out
