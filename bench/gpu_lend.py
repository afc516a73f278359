"""A script command given the real GPU (LLAMARIG_BENCH_GPU=nvml, else skipped): the planner
unloads GPU 0's model and lends the GPU to the task (CUDA_VISIBLE_DEVICES); the command runs
CUDA work with the machine's PyTorch, if this Python can import it, and holds the GPU until
released; then the GPU goes back to its model. Timed by polling /ready every 10 ms, the
GPU's memory read by NVML while the command holds it. (On the simulated inventory of the
tests' rig an idle GPU is lent instead.)"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from common import model_entry, start_bundle, stop, timed_until, wait_for, write_rig
from gpu import MIB, inventory_or_skip
from helpers import plan_ended, submit_plan, work_section
from llamarig.backend.models_make import make_gguf

CUDA_WORK = r"""
import json, os, sys, time
out = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
try:
    import torch
    t = time.perf_counter()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(50):
        b = a @ a
    torch.cuda.synchronize()
    out |= {"device": torch.cuda.get_device_name(0), "devices_seen": torch.cuda.device_count(),
            "matmul_s": round(time.perf_counter() - t, 3), "allocated_mib": torch.cuda.memory_allocated() >> 20}
except Exception as e:
    out["torch"] = repr(e)[:300]
open("output", "w").write(json.dumps(out))
open("holding", "w").close()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
"""


def _lent(b) -> str | None:
    """The GPU in script mode (GPU 0 on a one-GPU machine, its model unloaded), if any."""
    return next((g for g, mode in b.get("/ready").json()["gpus"]["modes"].items() if mode == "script"), None)


def _diagnosis(b, plan_id: str) -> dict:
    """What a failed run saw (the first run on a lent H200 timed out here with no more than that)."""
    logs = b.rig.run_dir / "logs"
    return {"ready": b.get("/ready").json(), "unit": b.unit("w0"), "plan": b.get(f"/admin/plans/{plan_id}").json(),
            "logs": {f.name: f.read_text()[-3000:] for f in sorted(logs.glob("*.log"))
                     if f.name.startswith(("work-gpu", "compute-api", "llama-w0"))}}


def run(smoke: bool) -> dict:
    inv, skipped = inventory_or_skip()
    if skipped:
        return skipped
    folder = Path(tempfile.mkdtemp(prefix="llamarig-bench-lend-"))
    release = folder / "release"
    rig = write_rig(folder, {"w0": model_entry(make_gguf(folder / "tiny.gguf"), [0])},
                    work=work_section(concurrency={"script": 1}))
    b = start_bundle(folder, rig)
    out: dict = {"gpu": inv.read()[0].name, "used_before_mib": inv.read()[0].used_bytes // MIB}
    try:
        b.wait_ready()
        b.wait_state("w0", {"ready"}, 120)
        started = time.perf_counter()
        plan_id = submit_plan(b, [{"name": "cuda", "class": "script", "command": [sys.executable, "-c", CUDA_WORK,
                                                                                 str(release)]}])
        try:
            out["submit_to_gpu_lent_s"] = round(timed_until(lambda: _lent(b), 120, 0.01), 3)
        except AssertionError as e:
            return out | {"failed": str(e), "seen": _diagnosis(b, plan_id)}
        out["gpu_lent"] = _lent(b)
        out["model_state_while_lent"] = b.unit("w0")["state"]
        holding = b.rig.run_dir / "work" / "plans" / plan_id / "tasks" / "cuda" / "attempt-1"
        wait_for(lambda: (holding / "holding").exists(), 300, "the command holding the GPU")
        out["submit_to_command_done_s"] = round(time.perf_counter() - started, 3)
        out["command"] = json.loads((holding / "output").read_text())
        out["used_while_held_mib"] = inv.read()[0].used_bytes // MIB
        out["processes_on_gpu_while_held"] = len(inv.pids_on(0))
        released = time.perf_counter()
        release.touch()
        view = plan_ended(b, plan_id, 120)
        out["task"] = {k: view["tasks"]["cuda"].get(k) for k in ("state", "attempt")} | {
            "gpu": view["tasks"]["cuda"].get("result", {}).get("gpu")}
        out["release_to_gpu_back_s"] = round(time.perf_counter() - released
                                             + timed_until(lambda: _lent(b) is None, 120, 0.01), 3)
        b.wait_state("w0", {"ready"}, 120)
        out["release_to_model_ready_s"] = round(time.perf_counter() - released, 3)
        out["mode_history"] = [{k: h[k] for k in ("source", "target", "reason")} for h in
                               next(g for g in b.get("/admin/units").json()["gpus"]
                                    if str(g["index"]) == out["gpu_lent"])["mode_history"]]
        out["used_after_mib"] = inv.read()[0].used_bytes // MIB
    finally:
        stop(b)
    return out
