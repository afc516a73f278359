"""How long tasks ran, learned on this rig, so that a task a plan does not give `expected_s`
still has one when the same task ran before (as Ninja orders a build by the last build's
times). A task is the same when what it runs is the same (work/reuse.py's definition, without
its name and dependencies). Each plan's record teaches it, once the plan ended: the mean of the
last runs' seconds, the newer weighing half, and the last run's GPU and VRAM peak (resources). One JSON file under the run folder, changed under a
lock (several worker processes record plans); MAX_TASKS newest kept."""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from pathlib import Path

from llamarig.work import reuse
from llamarig.work.store import replace_json

log = logging.getLogger("llamarig.work")
MAX_TASKS = 5000
NEWER_WEIGHT = 0.5  # the newest run's share of the learned time


def key(task: dict) -> str:
    what = {k: v for k, v in reuse.definition(task).items() if k not in ("name", "depends_on")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def expected(run_dir: Path, tasks: list[dict]) -> dict[str, float]:
    """name -> learned seconds, for the tasks without expected_s that ran here before."""
    known = _read(path(run_dir))
    found = {t["name"]: known.get(key(t), {}).get("s") for t in tasks if not t.get("expected_s")}
    return {name: s for name, s in found.items() if s}


def learn(run_dir: Path, record: dict) -> int:
    """Take the durations of a plan's tasks that succeeded here in this plan (not reused);
    returns how many."""
    results = {n: t["result"] for n, t in record.get("tasks", {}).items()
               if t.get("state") == "succeeded" and not t.get("reused_from")
               and (t.get("result") or {}).get("duration_ms") is not None}
    ran = {n: r["duration_ms"] / 1000 for n, r in results.items()}
    tasks = [t for t in record.get("spec", {}).get("plan", {}).get("tasks", []) if t["name"] in ran]
    if not tasks:
        return 0
    file = path(run_dir)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            replace_json(file, _merged(_read(file), tasks, ran, results), indent=None)
    except OSError as e:  # the plan's record is written: only the learning is lost
        log.warning("could not keep the plan's task durations", extra={
            "path": str(file), "reason": str(e), "event_type": "durations_unwritten"})
        return 0
    return len(tasks)


def _merged(known: dict, tasks: list[dict], ran: dict[str, float], results: dict[str, dict]) -> dict:
    now = time.time()
    for t in tasks:
        same = key(t)
        old, new = known.get(same, {}).get("s"), max(ran[t["name"]], 0.001)
        known[same] = {"s": round(new if old is None else NEWER_WEIGHT * new + (1 - NEWER_WEIGHT) * old, 3),
                       "at": now} | resources(results[t["name"]])
    return dict(sorted(known.items(), key=lambda kv: kv[1]["at"])[-MAX_TASKS:])


def resources(result: dict) -> dict:
    """What the last run used besides time: its GPU(s) and, where NVML measured it, VRAM peak."""
    used = {"gpu": result.get("gpu"), "vram_peak_mib": result.get("vram_peak_mib")}
    return {k: v for k, v in used.items() if v is not None}


def path(run_dir: Path) -> Path:
    return run_dir / "work" / "durations.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and all(_entry(v) for v in data.values()):
            return data
    except FileNotFoundError:
        return {}  # nothing learned yet
    except (OSError, ValueError) as e:
        data = e
    log.warning("learned task durations unreadable: starting them again", extra={
        "path": str(path), "reason": str(data)[:200], "event_type": "durations_unreadable"})
    return {}


def _entry(v) -> bool:
    return isinstance(v, dict) and all(isinstance(v.get(k), (int, float)) and v[k] > 0 for k in ("s", "at"))

