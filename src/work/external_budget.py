"""The escalation tier's spend per UTC day (work.external.daily_budget), one JSON file under the
run folder changed under a lock: what was spent today, and what calls in flight hold. A call
holds its worst case before it is made and settles to what it cost once it ended, so calls made
at once cannot pass the budget together. A hold its worker never settled (it died) lapses."""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import secrets
import time
from pathlib import Path

from llamarig.work.store import replace_json


def path(run_dir: Path) -> Path:
    return run_dir / "work" / "external-budget.json"


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")


class Budget:
    def __init__(self, file: Path, daily: float, lapse_s: float):
        self.file, self.daily, self.lapse_s = file, daily, lapse_s

    def hold(self, amount: float) -> str | None:
        """A hold of `amount` if it fits what is left today (its id), else None."""
        def change(state: dict) -> str | None:
            if state["spent"] + sum(a for a, _ in state["held"].values()) + amount > self.daily:
                return None
            hold_id = secrets.token_hex(6)
            state["held"][hold_id] = [amount, time.time()]
            return hold_id
        return self._changed(change)

    def settle(self, hold_id: str, cost: float) -> float:
        """The hold replaced by what the call cost; returns what is spent today."""
        def change(state: dict) -> float:
            state["held"].pop(hold_id, None)
            state["spent"] = round(state["spent"] + cost, 9)
            return state["spent"]
        return self._changed(change)

    def left(self) -> tuple[float, float]:
        """(spent today, left today once the calls in flight are paid)."""
        state = self._changed(lambda s: dict(s), write=False)
        spent = state["spent"]
        return spent, max(0.0, self.daily - spent - sum(a for a, _ in state["held"].values()))

    def _changed(self, change, write: bool = True):
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            out = change(state)
            if write:
                replace_json(self.file, state, indent=None)
            return out

    def _read(self) -> dict:
        try:
            state = json.loads(self.file.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("day") != today() or not isinstance(state.get("held"), dict):
            state = {"day": today(), "spent": 0.0, "held": {}}  # a new day: nothing spent yet
        now = time.time()
        state["held"] = {k: v for k, v in state["held"].items() if now - v[1] < self.lapse_s}
        return state
