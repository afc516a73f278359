"""GPU switch time each way, against the same stop and load done by hand on the same files.

The switch: a bundle whose GPU 2 is too small for its worker and Whisper together; a
transcription switches it to Whisper, and after script_idle_s 0 it comes back. Each switch's
time is read from the GPU's mode history (its transitional mode's start to the new holder ready).
By hand: the same llama-server and Whisper commands run directly, without supervisord or the
compute API: SIGTERM the running one and wait for it to exit, start the other and poll its
/health. The target: the switch within 0.5 s of the by-hand sum.

    .venv/bin/python bench/run.py switch        (or bench/switch.py [--rounds N] on its own)
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from common import ON_GPU, PATH, model_entry, start_bundle, stop, timed_until, wait_for, write_rig
from helpers import free_ports_in_a_row  # the tests' harness, on the path common.py sets
from llamarig.backend.launch import plan_for
from llamarig.backend.models_make import make_gguf, make_whisper
from llamarig.shared.rig import load_rig


def _rig(folder: Path) -> Path:
    gguf, whisper = make_gguf(folder / "tiny.gguf"), make_whisper(folder / "whisper")
    rig = write_rig(folder, {"worker": model_entry(gguf, [2], context_size=4096)},
                    whisper={"model_dir": str(whisper), "gpus": [2], "port": free_ports_in_a_row(1)},
                    lifecycle={"vram_margin_mib": 10, "script_idle_s": 0, "vram_settle_s": 1})
    data = yaml.safe_load(rig.read_text())
    data["gpus"]["simulated"][2]["memory_mib"] = 50
    rig.write_text(yaml.safe_dump(data))
    return rig


def _switch_times(b, wav: Path, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"to_script": [], "to_llm": []}
    for _ in range(rounds):
        with wav.open("rb") as f:
            assert b.post("/v1/audio/transcriptions", files={"file": ("a.wav", f, "audio/wav")},
                          data={"model": "whisper-1"}, timeout=120).status_code == 200
        wait_for(lambda: b.get("/ready").json()["gpus"]["modes"]["2"] == "llm", 60, "GPU 2 back")
        history = next(g for g in b.get("/admin/units").json()["gpus"] if g["index"] == 2)["mode_history"]
        for began, ended in zip(history[-4::2], history[-3::2]):
            times[began["target"]].append(ended["at"] - began["at"])
    return times


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _by_hand(rig_path: Path, rounds: int) -> dict[str, list[float]]:
    rig = load_rig(rig_path)
    worker = plan_for(rig, "worker", on_gpu=False).argv
    whisper = plan_for(rig, "whisper", "gpu2").argv
    ports = {"worker": rig.models["worker"].port, "whisper": rig.whisper.port_on(2)}
    env = {"PATH": PATH, "CUDA_VISIBLE_DEVICES": "2"}
    running = subprocess.Popen(worker, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _ready(ports["worker"]), 60, "the worker by hand")
    times: dict[str, list[float]] = {"to_script": [], "to_llm": []}
    for direction, argv, port in [("to_script", whisper, ports["whisper"]), ("to_llm", worker, ports["worker"])] * rounds:
        began = time.perf_counter()
        running.send_signal(signal.SIGTERM)
        running.wait(timeout=60)
        running = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        timed_until(lambda: _ready(port), 60)
        times[direction].append(time.perf_counter() - began)
    running.send_signal(signal.SIGTERM)
    running.wait(timeout=60)
    return times


def _wav(folder: Path) -> Path:
    import wave

    import numpy as np

    path = folder / "tone.wav"
    t = np.arange(16000 * 3) / 16000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    return path


def run(smoke: bool) -> dict:
    if ON_GPU:
        return {"skipped": "the switch is measured on the simulated inventory (a GPU too small for both servers)"}
    return measure(2 if smoke else 10)


def measure(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rig = _rig(folder)
        by_hand = _by_hand(rig, rounds)
        b = start_bundle(folder, rig)
        try:
            b.wait_ready()
            switched = _switch_times(b, _wav(folder), rounds)
        finally:
            stop(b)
    median = {k: {"switch_s": round(statistics.median(switched[k]), 3), "by_hand_s": round(statistics.median(by_hand[k]), 3),
                  "over_by_hand_s": round(statistics.median(switched[k]) - statistics.median(by_hand[k]), 3)}
              for k in switched}
    return {"rounds": rounds, "median": median, "switch_s": switched, "by_hand_s": by_hand,
            "target": "switch within 0.5 s of the by-hand sum"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    result = measure(p.parse_args().rounds)
    print(json.dumps(result["median"], indent=2))
