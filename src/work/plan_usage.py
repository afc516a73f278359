"""A plan's tasks in the usage by key (shared/usage_store.py): when a plan ends, its tasks that
ran (not reused from an earlier plan) by class: how many ended, how many did not succeed, and
their seconds, under the key that submitted the plan (spec["submitter"]; `none` on a rig without
keys). Written once per plan by the worker that records its end."""
from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

from llamarig.shared.usage_store import UsageStore

log = logging.getLogger("llamarig.work")
ENDED = ("succeeded", "failed", "cancelled")  # (work/attempts.py's)


def by_class(record: dict) -> dict[str, list[float]]:
    """class -> [tasks ended, tasks failed, seconds]."""
    out: dict[str, list[float]] = {}
    for t in record.get("tasks", {}).values():
        if t.get("reused_from") or t.get("state") not in ENDED or not t.get("result"):
            continue  # reused, still going, or never ran (cancelled before it started)
        row = out.setdefault(t.get("class") or "cpu", [0, 0, 0.0])
        row[0] += 1
        row[1] += t["state"] != "succeeded"
        row[2] += ((t.get("result") or {}).get("duration_ms") or 0) / 1000
    return out


def record_usage(run_dir: Path, record: dict) -> None:
    submitter = record.get("spec", {}).get("submitter") or "none"
    ended = record.get("ended_at") or time.time()
    day = dt.datetime.fromtimestamp(ended, dt.timezone.utc).strftime("%Y-%m-%d")
    deltas = {(day, submitter, f"tasks:{cls}"): [n, failed, 0, 0, 0.0, 0, seconds]
              for cls, (n, failed, seconds) in by_class(record).items()}
    try:
        UsageStore(run_dir).add(deltas)
    except Exception as e:  # the plan's record is written: only its usage is lost, and said
        log.warning("plan usage not written", extra={"plan_id": record.get("plan_id"), "reason": str(e),
                                                      "event_type": "usage_unwritten"})
