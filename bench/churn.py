"""Churn: load/unload cycles of one model through the compute API; the API's resident memory,
open file descriptors and the bundle's process count before and after."""
from __future__ import annotations

import tempfile
from pathlib import Path

import psutil

from common import model_entry, start_bundle, stop, write_rig
from models import model
from llamarig.backend.models_make import GgufSize


def run(smoke: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-bench-churn-"))
    b = start_bundle(folder, write_rig(folder, {"m": model_entry(model("tiny", GgufSize()), [0])}))
    cycles = 5 if smoke else 100
    try:
        b.wait_ready(120)
        api = psutil.Process(b.pid("compute-api"))

        def cycle():
            b.stop_start("m")

        for _ in range(3):  # warm pools and caches before the baseline
            cycle()
        before = (api.memory_info().rss, api.num_fds(), len(b.tree()))
        for _ in range(cycles):
            cycle()
        after = (api.memory_info().rss, api.num_fds(), len(b.tree()))
    finally:
        stop(b)
    return {"cycles": cycles, "api_rss_mib": [round(before[0] / 2**20, 1), round(after[0] / 2**20, 1)],
            "api_rss_growth_kib_per_cycle": round((after[0] - before[0]) / 1024 / cycles, 2),
            "api_open_fds": [before[1], after[1]], "bundle_processes": [before[2], after[2]]}
