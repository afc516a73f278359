"""A batch as users run one, on one bundle, and its floor (issue 30, part 7):

- batch: N wav files made here (several seconds each) -> transcribe (Whisper placed on 3 GPUs)
  -> summarise (a worker LLM) -> embed -> one report: one plan, each step a for_each over the
  files (items_of, @TASK[{index}]). Beside it, the floor: the same calls made by a plain asyncio
  script straight to the compute API at the same concurrency (work.concurrency.script for
  transcriptions and embeddings, .llm for summaries), step after step as the plan's maps run.
  Reported: both makespans and their ratio (target <= 1.15); the Whisper placements serving,
  sampled, against the transcriptions outstanding (target: every placement busy while at least
  that many wait); GPU switches; history bytes per item; peak RSS of the compute API and the
  workers; cancel-to-SIGTERM.
- noop_map: one for_each of N no-op commands (`true`), 100,000 by default: wall time, items/s,
  peak RSS, the plan's and a slice's history, beside a hand-listed fan-out of 1000 on the same
  bundle (the dispatch floor of one item).

    .venv/bin/python bench/run.py batch        (LLAMARIG_BENCH_MAP_ITEMS=N for another map size)
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import os
import struct
import tempfile
import threading
import time
import wave
from pathlib import Path

import httpx
import psutil

from common import model_entry, start_bundle, stop, write_rig
from helpers import free_ports_in_a_row, plan_ended, plan_history, submit_plan, work_section
from llamarig.backend.models_make import make_gguf, make_whisper

MAP_ITEMS = int(os.environ.get("LLAMARIG_BENCH_MAP_ITEMS") or 100_000)
PROGRAMS = ("compute-api", "work-cpu", "work-gpu", "temporal")


def make_wavs(folder: Path, n: int, seconds: float = 4.0) -> list[Path]:
    """n distinct tones, 16 kHz mono."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"talk-{i:04d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            step = 2 * math.pi * (220 + 20 * i) / 16000
            w.writeframes(b"".join(struct.pack("<h", int(6000 * math.sin(k * step))) for k in range(int(16000 * seconds))))
        paths.append(path)
    return paths


class Peaks:
    """Peak RSS of the bundle's programs (their process trees), sampled every second."""

    def __init__(self, b):
        self.b, self.peak, self.done = b, {p: 0 for p in PROGRAMS}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.cpu_at_start = self._cpu()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        end = self._cpu()
        self.cpu_s = {p: round(end[p] - self.cpu_at_start[p], 2) for p in PROGRAMS}

    def _cpu(self) -> dict[str, float]:
        """CPU seconds (user and system) each program's process tree has used."""
        used = {}
        for name in PROGRAMS:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(self.b.pid(name))
                used[name] = sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])
        return used

    def _run(self) -> None:
        pids = {p: self.b.pid(p) for p in PROGRAMS}
        while not self.done.wait(1.0):
            for name, pid in pids.items():
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                    self.peak[name] = max(self.peak[name], rss)

    def mib(self) -> dict:
        return {name: round(v / 2**20, 1) for name, v in self.peak.items()}


class Placements:
    """Whisper's placements serving (ready or busy) and busy, against requests outstanding,
    sampled from /admin/units every 0.2 s."""

    def __init__(self, b):
        self.b, self.samples, self.done = b, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.wait(0.2):
            with contextlib.suppress(httpx.HTTPError, KeyError):
                places = self.b.get("/admin/units", timeout=5).json()["placements"]["whisper"]
                self.samples.append({"serving": sum(p["state"] in ("ready", "busy") for p in places),
                                     "busy": sum(p["state"] == "busy" for p in places),
                                     "outstanding": sum(p["inflight"] + p["waiting"] for p in places)})

    def summary(self, placements: int) -> dict:
        backlog = [s for s in self.samples if s["outstanding"] >= placements]
        return {"samples": len(self.samples), "max_serving": max((s["serving"] for s in self.samples), default=0),
                "samples_with_backlog": len(backlog),
                "all_busy_share_while_backlog": round(sum(s["busy"] == placements for s in backlog) / len(backlog), 3)
                if backlog else None}


def _history_bytes(rig, workflow_ids: list[str]) -> int:
    return sum(e.ByteSize() for wid in workflow_ids for e in plan_history(rig, wid))


@contextlib.contextmanager
def batch_bundle(folder: Path, script: int, llm: int):
    """Whisper on GPUs 1, 2, 3 (free), a worker LLM on GPU 0, an embeddings model on GPU 4."""
    entries = {"worker": model_entry(make_gguf(folder / "worker.gguf"), [0], context_size=4096, parallel=llm),
               "embed": model_entry(make_gguf(folder / "embed.gguf", seed=1), [4], embeddings=True)}
    whisper = {"model_dir": str(make_whisper(folder / "whisper")), "gpus": [1, 2, 3], "port": free_ports_in_a_row(3),
               "max_new_tokens": 16}
    rig = write_rig(folder, entries, whisper=whisper, lifecycle={"script_idle_s": 30},
                    work=work_section(concurrency={"cpu": 4, "script": script, "llm": llm}, heartbeat_timeout_s=10))
    b = start_bundle(folder, rig)
    try:
        b.wait_ready()
        yield b
    finally:
        stop(b)


def batch_plan(glob: str) -> list[dict]:
    return [
        {"name": "hear", "class": "script", "for_each": {"glob": glob}, "transcribe": {"audio": "{item}", "format": "text"}},
        {"name": "sum", "class": "llm", "depends_on": ["hear"], "for_each": {"items_of": "@hear"},
         "generate": {"prompt": "Summarise this talk in one line.", "executor": "worker", "max_tokens": 16},
         "inputs": {"talk": "@hear[{index}]"}, "untrusted": ["talk"]},
        {"name": "vec", "class": "script", "depends_on": ["sum"], "for_each": {"items_of": "@sum"},
         "embed": {"text": "@sum[{index}]"}},
        {"name": "report", "class": "cpu", "depends_on": ["vec"], "inputs": {"m": "@vec"},
         "command": 'grep -c "\\"succeeded\\"" "$INPUT_M" > output'},
    ]


async def floor_calls(api: str, wavs: list[Path], script: int, llm: int) -> dict:
    """The plan's calls straight to the compute API, step after step, at the same concurrency."""
    limits = {"script": asyncio.Semaphore(script), "llm": asyncio.Semaphore(llm)}
    async with httpx.AsyncClient(base_url=api, timeout=300) as http:
        took: list[float] = []

        async def hear(path: Path) -> str:
            async with limits["script"]:
                began = time.perf_counter()
                with path.open("rb") as f:
                    r = await http.post("/v1/audio/transcriptions", files={"file": (path.name, f.read(), "audio/wav")},
                                        data={"model": "whisper-1", "response_format": "text"})
                took.append(time.perf_counter() - began)
            r.raise_for_status()
            return r.text

        async def summarise(text: str) -> str:
            async with limits["llm"]:
                r = await http.post("/v1/chat/completions", json={"model": "worker", "max_tokens": 16, "temperature": 0,
                                                                  "messages": [{"role": "user", "content": text}]})
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]

        async def embed(text: str) -> None:
            async with limits["script"]:
                r = await http.post("/v1/embeddings", json={"model": "embed", "input": [text or " "]})
            r.raise_for_status()
        marks = [time.perf_counter()]
        texts = await asyncio.gather(*map(hear, wavs))
        marks.append(time.perf_counter())
        summaries = await asyncio.gather(*map(summarise, texts))
        marks.append(time.perf_counter())
        await asyncio.gather(*map(embed, summaries))
        marks.append(time.perf_counter())
        return {"makespan_s": marks[-1] - marks[0], "hear_call_s_mean": round(sum(took) / len(took), 3),
                "steps_s": {k: round(marks[i + 1] - marks[i], 2) for i, k in enumerate(("hear", "sum", "vec"))}}


PAIRS = 3  # floor then plan, alternated: this VM's speed drifts by half within minutes


def batch(smoke: bool) -> dict:
    import statistics

    import work

    n, script, llm = (4, 6, 4) if smoke else (48, 6, 4)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wavs = make_wavs(folder / "talks", n)
        with batch_bundle(folder, script, llm) as b:
            floor_warm = asyncio.run(floor_calls(b.api, wavs[:2], script, llm))["makespan_s"]  # loads every server
            pairs = [_pair(b, folder, wavs, script, llm) for _ in range(1 if smoke else PAIRS)]
            last = pairs[-1]
            cancels = work.cancel(b, 2 if smoke else 5)
    ratios = [p["plan_makespan_s"] / p["floor_makespan_s"] for p in pairs]
    return {"files": n, "seconds_per_file": 4.0, "concurrency": {"script": script, "llm": llm},
            "floor_warm_up_s": round(floor_warm, 2), "pairs": [{k: p[k] for k in PAIR_KEYS} for p in pairs],
            "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
            **{k: v for k, v in last.items() if k not in PAIR_KEYS}} | cancels


PAIR_KEYS = ("floor_makespan_s", "plan_makespan_s", "floor_steps_s", "plan_steps_s", "hear_seconds_mean")


def _pair(b, folder: Path, wavs: list[Path], script: int, llm: int) -> dict:
    """The floor's calls, then the plan, on the same warm bundle."""
    floor = asyncio.run(floor_calls(b.api, wavs, script, llm))
    switches_before = _switches(b)
    with Peaks(b) as peaks, Placements(b) as places:
        began = time.perf_counter()
        plan_id = submit_plan(b, batch_plan(str(folder / "talks" / "*.wav")), name="batch")
        view = plan_ended(b, plan_id, timeout=3600)
        plan_s = time.perf_counter() - began
    assert view["outcome"] == "succeeded", {k: t.get("error") for k, t in view["tasks"].items()}
    slices = [f"{plan_id}.{t}.{k}" for t in ("hear", "sum", "vec") for k in range(view["tasks"][t]["map"]["slices"])]
    history = _history_bytes(b.rig, [plan_id, *slices])
    return {"floor_makespan_s": round(floor["makespan_s"], 2), "plan_makespan_s": round(plan_s, 2),
            "floor_steps_s": floor["steps_s"], "plan_steps_s": _steps(view),
            "hear_seconds_mean": {"floor_call": floor["hear_call_s_mean"],
                                  "plan_item": _item_seconds(b, f"{plan_id}.hear.0")},
            "placements": places.summary(3), "gpu_switches": _switches(b) - switches_before,
            "history_bytes_per_item": round(history / (3 * len(wavs))), "peak_rss_mib": peaks.mib(),
            "orchestration_cpu_s": {k: v for k, v in peaks.cpu_s.items() if k != "compute-api"}}


def _item_seconds(b, slice_id: str) -> float:
    """The mean time an item's attempt ran (its activity, as its worker measured it) in a slice."""
    from llamarig.work import engine

    async def ask():
        client = await engine.connect(b.rig)
        return await client.get_workflow_handle(slice_id).query("state")
    tasks = asyncio.run(ask())["tasks"].values()
    ran = [t["result"]["duration_ms"] / 1000 for t in tasks if (t.get("result") or {}).get("duration_ms")]
    return round(sum(ran) / len(ran), 3) if ran else 0.0


def _steps(view: dict) -> dict:
    """Each step's time in the plan: from its task queued (its dependencies done) to its end."""
    tasks = view["tasks"]
    return {k: round(tasks[k]["ended_at"] - tasks[k]["queued_at"], 2) for k in ("hear", "sum", "vec", "report")}


def _switches(b) -> int:
    """GPUs given to script work so far (a placement started on a GPU in llm or idle mode)."""
    return sum(h["target"] == "to_script" for g in b.get("/admin/units").json()["gpus"] for h in g["mode_history"])


def noop_map(smoke: bool) -> dict:
    import work

    n = 500 if smoke else MAP_ITEMS
    with work._bundle(work.CONCURRENCY, work.CPU_PROCESSES) as b:
        fan = work.fan_out(b, 50 if smoke else 1000)
        tasks = [{"name": "list", "class": "cpu", "command": f"seq 0 {n - 1} > output"},
                 {"name": "each", "class": "cpu", "command": ["true", "{index}"], "depends_on": ["list"],
                  "for_each": {"lines": "@list"}}]
        with Peaks(b) as peaks:
            began = time.perf_counter()
            plan_id = submit_plan(b, tasks, name="noop")
            view = plan_ended(b, plan_id, timeout=6 * 3600)
            wall = time.perf_counter() - began
        each = view["tasks"]["each"]
        assert view["outcome"] == "succeeded", each
        parent = plan_history(b.rig, plan_id)
        one = plan_history(b.rig, f"{plan_id}.each.0")
        return {"items": n, "wall_s": round(wall, 1), "items_per_s": round(n / wall, 1),
                "fan_out_tasks_per_s": fan["tasks_per_s"], "slices": each["map"]["slices"],
                "plan_history": {"events": len(parent), "bytes": sum(e.ByteSize() for e in parent)},
                "slice_history": {"events": len(one), "bytes": sum(e.ByteSize() for e in one)},
                "manifest_mib": round(Path(each["result"]["output"]).stat().st_size / 2**20, 1),
                "peak_rss_mib": peaks.mib()}


def run(smoke: bool) -> dict:
    return {"batch": batch(smoke), "noop_map": noop_map(smoke)}
