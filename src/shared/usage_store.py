"""Usage by key, kept across restarts: a SQLite file in the run folder, usage.sqlite, one row
per UTC day, key name and model, added to by the compute API every FLUSH_S seconds (a kill -9
loses at most that much; a clean stop flushes). The API keeps its writer open, in WAL mode with
synchronous=NORMAL: a commit outlives the process at once, and the operating system's crash or a
power cut can lose the commits since the last checkpoint (the rest of the file stays whole). A plan's tasks are rows too, their model
`tasks:CLASS` (requests: tasks ended, errors: those that failed, task_seconds), added by the
worker that records the plan's end, under the key that submitted it. Read by `llamarig usage`
and /admin/usage."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
from pathlib import Path

from llamarig.shared.errors import LlamarigError

FILE = "usage.sqlite"
FLUSH_S = 2.0
COUNTS = ("requests", "errors", "prompt_tokens", "completion_tokens", "audio_seconds", "embedding_inputs",
          "task_seconds", "external_cost")
EXTERNAL = "external:"  # the model of the escalation tier's rows (external:MODEL): calls, tokens, cost
GROUPS = ("key", "model", "day")
SCHEMA = """CREATE TABLE IF NOT EXISTS usage (
  day TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
  errors INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0, audio_seconds REAL NOT NULL DEFAULT 0,
  embedding_inputs INTEGER NOT NULL DEFAULT 0, task_seconds REAL NOT NULL DEFAULT 0,
  external_cost REAL NOT NULL DEFAULT 0, PRIMARY KEY (day, key, model))"""
ADDED = {"external_cost": "REAL NOT NULL DEFAULT 0"}  # columns a file of an older release lacks


class UsageStore:
    def __init__(self, run_dir: Path, keep_open: bool = False):
        """keep_open: one writer connection kept for every add (the API's flush every FLUSH_S;
        opening, checkpointing and closing one each time cost more than the write, measured)."""
        self.path = Path(run_dir) / FILE
        self.keep_open = keep_open
        self._writer: tuple[sqlite3.Connection, int] | None = None  # (connection, the file's inode)
        self._lock = threading.Lock()  # adds come from worker threads: one at a time

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")  # readers (the CLI) never wait for the API's writes
        db.execute(SCHEMA)
        have = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
        for column, kind in ADDED.items():
            if column not in have:
                db.execute(f"ALTER TABLE usage ADD COLUMN {column} {kind}")
        return db

    def add(self, deltas: dict[tuple[str, str, str], list[float]]) -> None:
        """deltas: (day, key, model) -> the COUNTS in order, added in one transaction."""
        if not deltas:
            return
        with self._lock:
            db = self._writer_now()
            try:
                self._add(db, deltas)
            except Exception:
                self._drop_writer()
                raise
            finally:
                if not self.keep_open:
                    db.close()

    def _writer_now(self) -> sqlite3.Connection:
        """The kept writer, opened again where the file was replaced or removed since."""
        if not self.keep_open:
            return self._connect()
        if self._writer is not None:
            db, inode = self._writer
            try:
                if self.path.stat().st_ino == inode:
                    return db
            except FileNotFoundError:
                pass
            self._drop_writer()
        db = self._connect()
        db.execute("PRAGMA synchronous=NORMAL")  # (WAL: durable across a kill -9, not a power cut)
        self._writer = (db, self.path.stat().st_ino)
        return db

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer[0].close()
            self._writer = None

    def close(self) -> None:
        with self._lock:
            self._drop_writer()

    @staticmethod
    def _add(db: sqlite3.Connection, deltas: dict) -> None:
        with db:
            db.execute("BEGIN")
            db.executemany(
                f"INSERT INTO usage (day, key, model, {', '.join(COUNTS)}) VALUES (?,?,?,{','.join('?' * len(COUNTS))}) "
                "ON CONFLICT (day, key, model) DO UPDATE SET " +
                ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTS),
                [(*where, *counts, *[0] * (len(COUNTS) - len(counts))) for where, counts in deltas.items()])

    def tokens_since(self, key: str, first_day: str) -> int:
        """Prompt and completion tokens of `key` from `first_day` (YYYY-MM-DD) on: a quota's use."""
        if not self.path.exists():
            return 0
        db = self._connect()
        try:
            row = db.execute("SELECT SUM(prompt_tokens + completion_tokens) FROM usage WHERE key = ? AND day >= ? "
                             "AND model NOT LIKE ?", (key, first_day, EXTERNAL + "%")).fetchone()
            return int(row[0] or 0)
        finally:
            db.close()

    def query(self, since: str | None = None, by: tuple[str, ...] = ("key",)) -> list[dict]:
        """Sums of COUNTS grouped by `by` (some of key, model, day), from day `since` on."""
        bad = [b for b in by if b not in GROUPS]
        if bad or not by:
            raise LlamarigError("bad_grouping", f"--by {','.join(by)}: one or more of {', '.join(GROUPS)}")
        if not self.path.exists():
            return []
        db = self._connect()
        try:
            cols = ", ".join(by)
            rows = db.execute(f"SELECT {cols}, {', '.join(f'SUM({c})' for c in COUNTS)} FROM usage "
                              f"WHERE day >= ? GROUP BY {cols} ORDER BY {cols}", (since or "",)).fetchall()
        finally:
            db.close()
        return [dict(zip(by + COUNTS, row)) for row in rows]


def render(rows: list[dict], fmt: str) -> str:
    """json, csv, or a table for a terminal."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if not rows:
        return "no usage recorded" if fmt == "table" else ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    cols = list(rows[0])
    cells = [[_cell(r[c], c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value, column: str) -> str:
    if column == "external_cost":
        return f"{value:.4f}"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
