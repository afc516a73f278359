"""The training-sample log (work.samples): one JSON line per llm task attempt with its messages,
response, model, tokens, duration and outcome, the secrets redacted before the line is written
(shared/redact.py), never a task marked `sensitive`. The current file rotates at a quarter of
max_mib; rotated files are removed oldest first while all of them pass max_mib. Written under a
lock: each process of the rig that runs llm tasks appends to the same file."""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import time
from pathlib import Path
from typing import IO, Iterator

from llamarig.shared.redact import Redactor

log = logging.getLogger("llamarig.work")
CURRENT = "samples.jsonl"
PARTS = 4  # the current file rotates at max_mib / PARTS


def folder_of(rig) -> Path:
    s = rig.work.samples
    return rig.resolve(s.dir) if s.dir else rig.run_dir / "work" / "samples"


class SampleLog:
    def __init__(self, folder: Path, max_bytes: int, redactor: Redactor):
        self.folder, self.max_bytes, self.redactor = folder, max_bytes, redactor
        self.lock = None

    @classmethod
    def of(cls, rig, secrets) -> SampleLog | None:
        """The rig's log, or None where work.samples is off."""
        s = rig.work.samples
        return cls(folder_of(rig), int(s.max_mib * 2**20), Redactor(secrets)) if s.enabled else None

    def write(self, record: dict) -> bool:
        """Redact and append one sample; False where it was not kept (too large, or the folder
        unwritable: logged; a task never fails for its sample)."""
        try:
            return self._write(record)
        except OSError as e:
            log.warning("a training sample was not kept: its folder is not writable", extra={
                "event_type": "sample_unwritten", "task_id": record.get("task_id"), "reason": str(e)})
            if self.lock is not None:
                self.lock.close()
                self.lock = None  # (opened again at the next sample: the folder may be back)
            return False

    def _write(self, record: dict) -> bool:
        now = time.time()
        kept = {"at": now, "ts": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat()} | record
        line = (json.dumps(self.redactor.tree(kept), ensure_ascii=False) + "\n").encode()
        if len(line) > self.max_bytes // PARTS:
            log.warning("a training sample was not kept: larger than a quarter of work.samples.max_mib", extra={
                "event_type": "sample_too_large", "task_id": record.get("task_id"), "bytes": len(line)})
            return False
        if self.lock is None:  # (kept open: opening it for each sample was a third of the cost)
            self.folder.mkdir(parents=True, exist_ok=True)
            self.lock = open(self.folder / ".lock", "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            current = self.folder / CURRENT
            size = current.stat().st_size if current.exists() else 0
            if size and size + len(line) > self.max_bytes // PARTS:
                self._rotate(current)
            with open(current, "ab") as f:
                f.write(line)
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        return True

    def _rotate(self, current: Path) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        current.rename(self.folder / f"samples-{stamp}.jsonl")
        rotated = sorted(self.folder.glob("samples-*.jsonl"))
        total = sum(p.stat().st_size for p in rotated)
        while rotated and total > self.max_bytes - self.max_bytes // PARTS:
            oldest = rotated.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink()
            log.info("training samples rotated out", extra={"event_type": "samples_removed", "path": str(oldest)})


def files(folder: Path) -> list[Path]:
    """The sample files, oldest first."""
    current = folder / CURRENT
    return sorted(folder.glob("samples-*.jsonl")) + ([current] if current.exists() else [])


def since(folder: Path, start: float) -> Iterator[str]:
    """The lines of the samples written at or after `start` (epoch seconds), oldest first."""
    for path in files(folder):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    at = json.loads(line).get("at", 0)
                except ValueError:
                    continue  # a line cut short by a crash mid-write
                if at >= start:
                    yield line


def export(folder: Path, start: float, out: IO[str]) -> int:
    count = 0
    for line in since(folder, start):
        out.write(line)
        count += 1
    return count


def parse_since(text: str) -> float:
    """A date (2026-12-01) or a date and time (2026-12-01T08:00, UTC unless it says) as epoch seconds."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: {text!r} is not a date (YYYY-MM-DD) or date and time (YYYY-MM-DDTHH:MM)") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def record(task: dict, ctx: dict, seen: dict, outcome: str, error: str | None, duration_ms: int) -> dict:
    """One attempt's sample: seen holds the model, the messages sent and (once it came) the answer."""
    answer = seen.get("answer") or {}
    return {"task_id": f"{ctx['plan_id']}/{task['name']}", "attempt": ctx["attempt"], "submitter": ctx.get("submitter"),
            "model": seen.get("model"), "messages": seen["messages"], "response": answer.get("text"),
            "tokens": {"prompt": answer.get("prompt_tokens"), "completion": answer.get("tokens")},
            "duration_ms": duration_ms, "outcome": outcome} | ({"error": error[-500:]} if error else {})
