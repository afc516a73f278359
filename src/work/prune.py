"""Old plans' files leave the run folder: `llamarig prune-plans --older-than-days N`, and
work.keep_plans_days in work-cpu. A plan's folder (its record, its tasks' folders and outputs)
goes once nothing in it changed for N days (its record is written when it ends; a plan whose
outputs a new one reuses counts as changed then) and either its record here says it ended or,
without one (another rig recorded it, or its workflow was ended from outside), the engine says
its workflow does not run (closed, or gone past retention). While the engine does not answer,
only plans with an ended record here go. The learned durations stay; a pruned plan cannot be
retried past the engine's retention."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

from llamarig.work.store import SUMMARY

DAY_S = 86400


async def prune(run_dir: Path, days: float, client=None, dry_run: bool = False, now: float | None = None) -> dict:
    """Remove (with dry_run: only name) the plans older than `days`. client: Temporal's, to ask
    about plans without an ended record here (None: keep those)."""
    cutoff = (time.time() if now is None else now) - days * DAY_S
    root = run_dir / "work" / "plans"
    old, asked, young = await asyncio.to_thread(_old_plans, root, cutoff)  # (off the worker's event loop)
    running = await _running(client, [plan_id for plan_id in old if plan_id in asked])
    gone = {p: size for p, size in old.items() if p not in running}
    if not dry_run:
        await asyncio.to_thread(lambda: [shutil.rmtree(root / plan_id, ignore_errors=True) for plan_id in gone])
    return {"removed": sorted(gone), "bytes_freed": sum(gone.values()), "kept_running": sorted(running),
            "kept_younger": young, "older_than_days": days, "dry_run": dry_run}


def _old_plans(root: Path, cutoff: float) -> tuple[dict[str, int], set[str], int]:
    """{plan id: bytes} of the folders older than cutoff, those of them the engine must clear,
    and how many are younger."""
    old, asked, young = {}, set(), 0
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_symlink() or not folder.is_dir():
            continue  # (not a plan's folder: left alone)
        newest, size = _newest_and_size(folder)
        if newest >= cutoff:
            young += 1
            continue
        old[folder.name] = size
        if not _ended(folder):
            asked.add(folder.name)
    return old, asked, young


async def _running(client, plan_ids: list[str]) -> set[str]:
    """The plans among plan_ids whose workflow still runs, or may (no client, or no answer)."""
    if client is None:
        return set(plan_ids)
    from temporalio.service import RPCError, RPCStatusCode

    running = set()
    for i, plan_id in enumerate(plan_ids):
        try:
            desc = await client.get_workflow_handle(plan_id).describe()
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:  # no answer: this and the rest kept until it answers
                return running | set(plan_ids[i:])
            continue
        if desc.status is None or desc.status.name == "RUNNING":
            running.add(plan_id)
    return running


def _ended(folder: Path) -> bool:
    """Whether the plan's summary here says it ended (its record is written at the end)."""
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("outcome") not in (None, "running")


def _newest_and_size(folder: Path) -> tuple[float, int]:
    """The last change to anything in the folder (seconds since the epoch), and its bytes."""
    newest, size = folder.lstat().st_mtime, 0
    for top, dirs, files in os.walk(folder):
        for name, is_file in [(d, False) for d in dirs] + [(f, True) for f in files]:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue  # (gone meanwhile)
            newest = max(newest, st.st_mtime)
            size += st.st_size if is_file else 0
    return newest, size
