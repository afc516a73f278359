"""The audit log: one JSON line per admin action (every route of the operator's group that is
not a read: plan submit, cancel and retry, reload, stop, start, reset, lease, down), refused
ones too, and per key made or revoked by the CLI. Fields: time (ISO 8601, UTC), key (its
name, never the key), route (method and path), target (what the path names), outcome (the
status code, and the error code when refused). An append-only file in the run folder,
audit.log, rotated at MAX_BYTES into audit.log.1 .. audit.log.KEEP. `llamarig audit` reads it."""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

FILE = "audit.log"
MAX_BYTES = 10 * 1024 * 1024
KEEP = 5


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def target_of(path: str) -> str:
    """What an admin path names: /admin/units/worker-1/stop -> worker-1; /admin/plans -> plans."""
    parts = [p for p in path.split("/") if p][1:]  # without "admin"
    if len(parts) >= 2:
        return parts[1]
    return parts[0] if parts else path


class AuditLog:
    def __init__(self, run_dir: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP):
        self.path = Path(run_dir) / FILE
        self.max_bytes, self.keep = max_bytes, keep

    def write(self, key: str, route: str, target: str, outcome: str, **more) -> None:
        line = json.dumps({"time": _now(), "key": key, "route": route, "target": target, "outcome": outcome, **more},
                          separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_if_full()
        # O_APPEND: a line from the CLI and one from the API never overwrite each other.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _rotate_if_full(self) -> None:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{FILE}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{FILE}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{FILE}.1"))

    def read(self, since: str | None = None) -> list[dict]:
        """Every line kept, oldest first, from `since` (an ISO date or time, UTC) on."""
        files = [self.path.with_name(f"{FILE}.{i}") for i in range(self.keep, 0, -1)] + [self.path]
        rows = []
        for f in files:
            if not f.exists():
                continue
            for line in f.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a full disk: the rest still reads
                if since is None or row.get("time", "") >= since:
                    rows.append(row)
        return rows
