"""Where the work layer keeps files, under the rig's run folder (so they outlive the engine's
retention): each attempt's folder (stdout, stderr, output) and each plan's record."""
from __future__ import annotations

import json
import os
from pathlib import Path


class Store:
    def __init__(self, run_dir: Path):
        self.plans = run_dir / "work" / "plans"  # a folder per plan

    def attempt(self, plan_id: str, task: str, attempt: int) -> Path:
        return self.plans / plan_id / "tasks" / task / f"attempt-{attempt}"

    def new_attempt(self, plan_id: str, task: str, attempt: int) -> Path:
        """Made with two mkdir calls once the plan's folder exists (each parent made again cost
        about 0.3 ms on a slow disk: measured in bench/work.py's fan-out)."""
        folder = self.attempt(plan_id, task, attempt)
        for level in (folder.parent, folder):
            try:
                level.mkdir()
            except FileExistsError:
                pass
            except FileNotFoundError:
                level.mkdir(parents=True, exist_ok=True)
        return folder

    def record_path(self, plan_id: str) -> Path:
        return self.plans / plan_id / "plan.json"

    def write_record(self, plan_id: str, record: dict) -> Path:
        """Atomically (a reader never sees half a file), with its summary beside it: a plan's list
        reads only that (a record of thousands of tasks is megabytes)."""
        path = self.record_path(plan_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(path.with_name(SUMMARY), {k: record.get(k) for k in SUMMARY_FIELDS})
        replace_json(path, record)
        return path

    def read_record(self, plan_id: str) -> dict | None:
        return _read(self.record_path(plan_id))

    def read_summary(self, plan_id: str) -> dict | None:
        """plan_id, name, outcome, submitted_at, ended_at (from the record itself, if written by a
        release without summaries)."""
        return _read(self.record_path(plan_id).with_name(SUMMARY)) or self.read_record(plan_id)

    def touch(self, plan_id: str) -> None:
        """The plan counts as changed now (work/prune.py): a new plan reuses its outputs."""
        try:
            os.utime(self.plans / plan_id)
        except OSError:
            pass  # (no folder here: the plan ran on other rigs)

    def ask_stop(self, plan_id: str) -> None:
        """The plan is being cancelled: its commands running on this rig stop at once (each task
        looks for this marker every commands.STOP_POLL_S), not at their next heartbeat."""
        marker = self.plans / plan_id / CANCEL_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def stop_asked(self, plan_id: str) -> bool:
        return (self.plans / plan_id / CANCEL_MARKER).exists()

    def plan_ids(self) -> list[str]:
        return sorted(p.name for p in self.plans.iterdir()) if self.plans.is_dir() else []


SUMMARY = "plan.summary.json"
CANCEL_MARKER = "cancel-requested"
SUMMARY_FIELDS = ("plan_id", "name", "outcome", "submitted_at", "ended_at", "ended_by_engine")


def replace_json(path: Path, data: dict, indent: int | None = 1) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
