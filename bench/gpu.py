"""The CUDA paths on a real GPU, with LLAMARIG_BENCH_GPU=nvml (else skipped; and where NVML
finds no device, skipped with NVML's reason).

One model large enough to matter (about 2.4 GB of F32 weights) on GPU 0 through a real bundle
with `gpus.source: nvml`: boot to ready, the VRAM estimate against NVML's count for the
server's process, decode speed, a stop with its memory release timed by NVML, a second load,
and kill -9 under traffic to the first 200. Run with LLAMARIG_BENCH_GPU=nvml (bench/gpu-run.sh
does, on a lent GPU)."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx

from common import ON_GPU, model_entry, start_bundle, stop, timed_until, wait_for, write_rig
from boot import _answers
from crash import kill_to_first_200
from models import model
from llamarig.backend.models_make import GgufSize
from llamarig.shared.errors import LlamarigError
from llamarig.shared.gpus import open_inventory
from llamarig.shared.rig import GpusConfig

MIB = 2**20
SIZE = GgufSize(layers=16, width=2048, heads=16, kv_heads=8)


def inventory_or_skip():
    """(NVML's inventory, None), or (None, why this benchmark skips itself here)."""
    if not ON_GPU:
        return None, {"skipped": "runs with LLAMARIG_BENCH_GPU=nvml, on a machine with a GPU"}
    try:
        return open_inventory(GpusConfig(source="nvml", simulated=[])), None
    except LlamarigError as e:
        return None, {"skipped": e.reason}


def _metric(text: str, name: str, model_name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model_name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _decode(url: str) -> dict:
    body = {"prompt": "hello", "max_tokens": 128, "temperature": 0, "ignore_eos": True}
    r = httpx.post(url + "/completion", json={**body, "n_predict": 128}, timeout=120)
    t = r.json()["timings"]
    return {"predicted_tokens_per_s": round(t["predicted_per_second"], 1),
            "prompt_tokens_per_s": round(t["prompt_per_second"], 1)}


def _released(inv, pid: int, used_before: int) -> bool:
    gpu = inv.read()[0]
    return pid not in inv.pids_on(0) and gpu.used_bytes <= used_before + 64 * MIB


def run(smoke: bool) -> dict:
    inv, skipped = inventory_or_skip()
    if skipped:
        return skipped
    base = inv.read()[0]
    folder = Path(tempfile.mkdtemp(prefix="llamarig-bench-gpu-"))
    size = GgufSize() if smoke else SIZE
    path = model(f"gpu-{size.layers}x{size.width}", size)
    # -lv 4: llama-server then logs its buffer sizes (model, KV cache, compute).
    entry = model_entry(path, [0], context_size=4096, parallel=4, extra_args=["-lv", "4"])
    b = start_bundle(folder, write_rig(folder, {"m": entry}, timeouts={"start_s": 300}))
    out = {"gpu": base.name, "gpu_total_mib": base.total_bytes // MIB, "used_before_mib": base.used_bytes // MIB,
           "model_file_mib": path.stat().st_size // MIB}
    try:
        out["boot_to_ready_s"] = round(timed_until(lambda: _answers(b.api + "/ready"), 300, 0.01), 3)
        out["load_seconds"] = b.unit("m")["load_seconds"]
        # The actual is recorded once the memory reading settles after the load.
        wait_for(lambda: _metric(b.get("/metrics").text, "llamarig_vram_actual_bytes", "m") is not None, 60,
                 "the VRAM actual in /metrics")
        metrics = b.get("/metrics").text
        pid = b.pid("llama-m")
        out["vram_estimate_mib"] = _mib(_metric(metrics, "llamarig_vram_estimate_bytes", "m"))
        out["vram_actual_mib"] = _mib(_metric(metrics, "llamarig_vram_actual_bytes", "m"))
        out["nvml_process_mib"] = inv.process_bytes(0, {pid}) // MIB
        out["gpu_used_loaded_mib"] = inv.read()[0].used_bytes // MIB
        out["ready_reports_simulated"] = b.get("/ready").json().get("gpus", {}).get("simulated")
        out["decode"] = _decode(f"http://127.0.0.1:{entry['port']}")
        started = time.perf_counter()
        assert b.post("/admin/units/m/stop").status_code == 202
        b.wait_state("m", {"stopped"}, 120)
        out["stop_to_stopped_s"] = round(time.perf_counter() - started, 3)
        out["stop_verdict"] = b.unit("m").get("reason")
        out["stop_to_memory_released_s"] = round(
            time.perf_counter() - started + timed_until(lambda: _released(inv, pid, base.used_bytes), 60), 3)
        started = time.perf_counter()
        assert b.post("/admin/units/m/start").status_code == 202
        b.wait_state("m", {"ready"}, 300)
        out["second_load_s"] = round(time.perf_counter() - started, 3)
        out["kill9_to_first_200_s"] = round(kill_to_first_200(b), 3)
    finally:
        stop(b)
    out["used_after_shutdown_mib"] = inv.read()[0].used_bytes // MIB
    out["server_buffers"] = _buffers(folder / "run" / "logs" / "llama-m.log")
    out["env_cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return out


def _buffers(log: Path) -> list[str]:
    """llama-server's own account of what it allocated (model, KV cache, compute buffers), to
    set the estimate's fixed per-process part against."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return sorted({line.split(":", 1)[-1].strip() for line in lines if "buffer size" in line})


def _mib(value: float | None) -> int | None:
    return None if value is None else int(value // MIB)
