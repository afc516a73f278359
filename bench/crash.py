"""Crash to ready: kill -9 a model's server while a client sends requests; time from the kill to
the first successful answer, against health interval + that model's load time alone (+ the
first restart delay, backoff_initial_s). And the hung case (SIGSTOP): time to detection."""
from __future__ import annotations

import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from boot import load_alone
from common import model_entry, start_bundle, stop, wait_for, write_rig
from models import model
from llamarig.backend.models_make import GgufSize
from llamarig.shared.rig import load_rig

BODY = {"model": "m", "prompt": "hi", "max_tokens": 1}


def kill_to_first_200(b) -> float:
    """A client sends requests back to back (each answer, 200 or 503, is quick); measure from
    the kill to the first 200."""
    client = httpx.Client(timeout=30)
    stop_at = threading.Event()
    first_ok: list[float] = []
    killed: list[float] = []

    def send():
        while not stop_at.is_set():
            sent = time.perf_counter()
            try:
                ok = client.post(b.api + "/v1/completions", json=BODY).status_code == 200
            except httpx.HTTPError:
                ok = False
            # Only a request sent after the kill counts: one in flight may still be answered.
            if ok and killed and sent > killed[0] and not first_ok:
                first_ok.append(time.perf_counter())
            if not ok:
                time.sleep(0.005)  # a 503 is instant; do not spin the CPU the restart needs

    thread = threading.Thread(target=send)
    thread.start()
    try:
        wait_for(lambda: b.unit("m")["state"] in ("ready", "busy"), 60, "ready before the kill")
        pid = b.pid("llama-m")
        killed.append(time.perf_counter())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: first_ok, 120, "a 200 after the kill", 0.01)
        return first_ok[0] - killed[0]
    finally:
        stop_at.set()
        thread.join(30)
        client.close()


def stop_to_detection(b) -> float:
    pid = b.pid("llama-m")
    started = time.perf_counter()
    os.kill(pid, signal.SIGSTOP)
    b.wait_state("m", {"failed"}, 120)
    detected = time.perf_counter() - started
    b.wait_state("m", {"ready"}, 120)
    return detected


def run(smoke: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-bench-crash-"))
    size = GgufSize() if smoke else GgufSize(layers=8, width=1024)
    entry = model_entry(model(f"boot-0-{size.layers}x{size.width}", size), [0], context_size=512)
    # The rig's defaults for the health loop and backoff; only the ports are the benchmark's.
    rig_path = write_rig(folder, {"m": entry}, lifecycle={"health_interval_s": 2.0, "probe_timeout_s": 5.0,
                                                          "failure_threshold": 3, "backoff_initial_s": 1.0})
    cfg = load_rig(rig_path).lifecycle
    reps = 1 if smoke else 3
    loads = [load_alone(rig_path, "m") for _ in range(reps)]
    b = start_bundle(folder, rig_path)
    try:
        b.wait_ready(120)
        crashes = []
        for _ in range(reps):
            crashes.append(kill_to_first_200(b))
            b.wait_state("m", {"ready"}, 60)
            b.post("/admin/units/m/reset")  # the next kill starts from the first backoff again
        hung = [stop_to_detection(b) for _ in range(reps)]
        b.post("/admin/units/m/reset")
    finally:
        stop(b)
    load = statistics.median(loads)
    bound = cfg.health_interval_s + load
    return {"load_alone_s": round(load, 3), "health_interval_s": cfg.health_interval_s,
            "backoff_initial_s": cfg.backoff_initial_s,
            "kill9_to_first_200_s": [round(c, 3) for c in crashes],
            "kill9_median_s": round(statistics.median(crashes), 3),
            "target_s": round(bound + 1, 3), "target": "within health interval + load time + 1 s",
            "sigstop_to_failed_s": [round(h, 3) for h in hung],
            "sigstop_expected_s": f"{cfg.failure_threshold} x {cfg.health_interval_s:g} s, + up to one probe "
                                  f"timeout ({cfg.probe_timeout_s:g} s) and one interval"}
