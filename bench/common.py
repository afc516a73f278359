"""What the benchmarks share: statistics, generated models, real bundles (the test harness's)."""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the bundle harness the tests use: one way to start a rig

import helpers  # noqa: E402
from helpers import PATH, Bundle, free_port, model_entry, start_bundle, wait_for  # noqa: E402

__all__ = ["PATH", "Bundle", "free_port", "model_entry", "start_bundle", "wait_for", "write_rig", "pct", "ms", "stop",
           "ROOT", "timed_until"]


# LLAMARIG_BENCH_GPU=nvml: the rigs use NVML and the real GPU 0 (where one is lent), so the
# servers load onto it; unset, they use the simulated inventory and run on the CPU.
ON_GPU = os.environ.get("LLAMARIG_BENCH_GPU") == "nvml"


def write_rig(folder: Path, models: dict, **sections) -> Path:
    """The test harness's rig; on a GPU every model goes to GPU 0 (one GPU is what is lent)
    with the engine's default threads."""
    if ON_GPU:
        models = {n: {**{k: v for k, v in m.items() if k != "tensor_split"}, "gpus": [0]}
                  for n, m in models.items()}
        sections = {**sections, "gpus": {"source": "nvml"}, "engines": {"threads": 0}}
    return helpers.write_rig(folder, models, **sections)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank on sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summary_ms(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": ms(pct(values, 50)), "p90_ms": ms(pct(values, 90)),
            "p99_ms": ms(pct(values, 99)), "mean_ms": ms(statistics.fmean(values))}


def stop(bundle: Bundle) -> None:
    if bundle.proc.poll() is None:
        bundle.shutdown()


def timed_until(check, timeout: float, interval: float = 0.01) -> float:
    """Seconds until check() is truthy, polled every `interval`."""
    started = time.perf_counter()
    wait_for(check, timeout, "a benchmark condition", interval)
    return time.perf_counter() - started
