"""Old plans' files leave the run folder: `llamarig prune-plans --older-than-days N`, and
work.keep_plans_days in work-cpu. A plan's folder (its record, its tasks' folders and outputs)
goes once nothing in it changed for N days (its record is written when it ends; a plan whose
outputs a new one reuses on this rig counts as changed then), no running plan reuses its outputs
(a plan's memo names the plans it reuses: another rig may be reading them from here), and either
its record here says it ended or, without one (another rig recorded it, or its workflow was
ended from outside), the engine says its workflow does not run (closed, or gone past retention).
Only the engine knows what runs on other rigs: while it does not answer, nothing goes. The
learned durations stay; a pruned plan cannot be retried past the engine's retention."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

from llamarig.work import engine
from llamarig.work.store import SUMMARY, Store

DAY_S = 86400


async def prune(run_dir: Path, days: float, client, dry_run: bool = False, now: float | None = None) -> dict:
    """Remove (with dry_run: only name) the plans older than `days`. client: Temporal's, asked
    which plans still run or are reused; engine.WorkError (nothing removed) while it does not answer."""
    cutoff = (time.time() if now is None else now) - days * DAY_S
    root = Store(run_dir).plans
    old, asked, young = await asyncio.to_thread(_old_plans, root, cutoff)  # (off the worker's event loop)
    from temporalio.service import RPCError

    try:
        running = await _running(client, [plan_id for plan_id in old if plan_id in asked]) if old else set()
        reused = await _reused_by_running(client) if old else set()
    except RPCError as e:
        raise engine.failed_call(e, "which plans still run or are reused") from None
    chosen = {p: size for p, size in old.items() if p not in running | reused}
    gone = chosen if dry_run else await asyncio.to_thread(_remove, root, chosen, cutoff)
    return {"removed": sorted(gone), "bytes_freed": sum(gone.values()), "kept_running": sorted(running),
            "kept_reused": sorted(reused & set(old) - running), "kept_younger": young + len(chosen) - len(gone),
            "older_than_days": days, "dry_run": dry_run}


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


def _remove(root: Path, gone: dict[str, int], cutoff: float) -> dict[str, int]:
    """Remove each plan still unchanged since the cutoff (a reuse may have touched it while the
    engine was asked); the ones removed."""
    removed = {}
    for plan_id, size in gone.items():
        if _newest_and_size(root / plan_id)[0] < cutoff:
            shutil.rmtree(root / plan_id, ignore_errors=True)
            removed[plan_id] = size
    return removed


async def _running(client, plan_ids: list[str]) -> set[str]:
    """The plans among plan_ids whose workflow still runs (one gone past retention does not)."""
    from temporalio.service import RPCError, RPCStatusCode

    running = set()
    for plan_id in plan_ids:
        try:
            desc = await client.get_workflow_handle(plan_id).describe()
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            continue
        if desc.status is None or desc.status.name == "RUNNING":
            running.add(plan_id)
    return running


async def _reused_by_running(client) -> set[str]:
    """The plans whose outputs a running plan reuses (work/plans.py puts them in its memo)."""
    reused = set()
    query = f"WorkflowType = '{engine.PLAN_WORKFLOW}' AND ExecutionStatus = 'Running'"
    async for wf in client.list_workflows(query):
        reused.update(await wf.memo_value("reuses", []))
    return reused


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
