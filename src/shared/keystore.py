"""Named keys (`llamarig keys add|list|revoke`): a SQLite file in the run folder, keys.sqlite
(mode 0600), holding each key's name, scope, model list, limits, expiry and SHA-256, never the
key itself. The key is printed once, when it is made. The compute API reads the file again
within a quarter of a second of any change (KeyRing.watch), so a revocation needs no restart.
The API writes only the last-use times."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from llamarig.shared.errors import LlamarigError

FILE = "keys.sqlite"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # a metric label: bounded, and safe in a log line
RESERVED = frozenset({"legacy-client", "operator", "none"})  # the names of the keys from files and the environment
PREFIX = "lr-"
SCHEMA = """CREATE TABLE IF NOT EXISTS keys (
  name TEXT PRIMARY KEY, digest BLOB UNIQUE NOT NULL, scope TEXT NOT NULL, models TEXT,
  rpm INTEGER, tpm INTEGER, concurrent INTEGER, quota_period TEXT, quota_tokens INTEGER,
  expires_at REAL, created_at REAL NOT NULL, revoked_at REAL, last_used_at REAL)"""


try:  # CPython's own SHA-256: OpenSSL 3's fetches its digest at each call (10 µs a request cold, measured)
    from _sha256 import sha256 as _sha256
except ImportError:  # (Python 3.12 renamed the module)
    try:
        from _sha2 import sha256 as _sha256
    except ImportError:
        _sha256 = hashlib.sha256


def digest(key: bytes) -> bytes:
    return _sha256(key).digest()


@dataclass(frozen=True)
class NamedKey:
    name: str
    scope: str  # client | operator
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt and completion) per minute
    concurrent: int | None = None  # requests in progress at once
    quota: tuple[str, int] | None = None  # (day | month, tokens), UTC periods
    expires_at: float | None = None  # Unix time
    created_at: float = 0.0
    revoked_at: float | None = None
    last_used_at: float | None = None

    def row(self) -> dict:
        """What `keys list` shows: everything but the digest."""
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.quota:
            out["quota"] = f"{self.quota[0]}:{self.quota[1]}"
        return out


def parse_quota(text: str) -> tuple[str, int]:
    period, _, tokens = text.partition(":")
    if period not in ("day", "month") or not tokens.isdigit() or int(tokens) < 1:
        raise LlamarigError("bad_quota", f"--quota-tokens {text!r}: day:N or month:N, N a whole number of tokens "
                            "from 1 (prompt and completion together, per UTC day or month)")
    return period, int(tokens)


def parse_expiry(text: str) -> float:
    """A date (the key stops working at its start, UTC) or an ISO date and time (UTC unless it says)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise LlamarigError("bad_expiry", f"--expires {text!r}: a date (2027-01-31) or a date and time "
                            "(2027-01-31T18:00, UTC unless an offset is given)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


STILL_S = 1.0


class KeyStore:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / FILE
        self._watch: sqlite3.Connection | None = None
        self._seen: tuple[tuple, tuple] | None = None  # (the file's stat, the version read with it)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        if fresh:
            os.chmod(self.path, 0o600)  # digests only, but nobody else needs them
        db.execute(SCHEMA)
        return db

    def add(self, key: NamedKey) -> str:
        """Store `key` and return the new secret (shown once)."""
        if not NAME.fullmatch(key.name) or key.name in RESERVED:
            raise LlamarigError("bad_key_name", f"{key.name!r}: 1 to 64 of letters, digits and _.@- (not starting "
                                f"with one of _.@-), and none of {', '.join(sorted(RESERVED))}")
        if key.scope not in ("client", "operator"):
            raise LlamarigError("bad_scope", f"--scope {key.scope!r}: client or operator")
        for field in ("rpm", "tpm", "concurrent"):
            value = getattr(key, field)
            if value is not None and value < 1:
                raise LlamarigError("bad_limit", f"--{field} {value}: 1 or more (leave it out for no limit)")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise LlamarigError("bad_expiry", "--expires is in the past")
        secret = PREFIX + secrets.token_urlsafe(32)
        db = self._connect()
        try:
            db.execute("INSERT INTO keys (name, digest, scope, models, rpm, tpm, concurrent, quota_period, "
                       "quota_tokens, expires_at, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (key.name, digest(secret.encode()), key.scope, json.dumps(key.models) if key.models else None,
                        key.rpm, key.tpm, key.concurrent, key.quota[0] if key.quota else None,
                        key.quota[1] if key.quota else None, key.expires_at, time.time()))
        except sqlite3.IntegrityError:
            raise LlamarigError("key_exists", f"a key named {key.name!r} exists (revoked ones keep their name): "
                                "choose another name") from None
        finally:
            db.close()
        return secret

    def revoke(self, name: str) -> NamedKey:
        db = self._connect()
        try:
            done = db.execute("UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                              (time.time(), name)).rowcount
        finally:
            db.close()
        if not done:
            known = {k.name: k for k in self.all()}
            why = "it is revoked already" if name in known else f"known: {', '.join(sorted(known)) or 'none'}"
            raise LlamarigError("no_such_key", f"no key named {name!r} to revoke: {why}")
        return next(k for k in self.all() if k.name == name)

    def all(self) -> list[NamedKey]:
        return [k for k, _ in self.with_digests()]

    def with_digests(self) -> list[tuple[NamedKey, bytes]]:
        if not self.path.exists():
            return []
        db = self._connect()
        try:
            rows = db.execute("SELECT name, scope, models, rpm, tpm, concurrent, quota_period, quota_tokens, "
                              "expires_at, created_at, revoked_at, last_used_at, digest FROM keys ORDER BY name")
            return [(_key(row), row[-1]) for row in rows.fetchall()]
        finally:
            db.close()

    def touch(self, last_used: dict[str, float]) -> None:
        """The API's last-use times, written every few seconds (not per request), on the watching
        connection: its own writes do not change what version() reads."""
        if self._watch is None:
            self._watch = self._connect()
        self._watch.executemany("UPDATE keys SET last_used_at = ? WHERE name = ?",
                                [(t, n) for n, t in last_used.items()])

    def version(self) -> tuple:
        """Changes whenever another process changed the file (SQLite's data_version), or it appeared.
        A file untouched for STILL_S since it was last asked is not asked again: a stat says so
        (every commit rewrites the file in rollback-journal mode; the wait covers two commits
        within one tick of the file system's clock)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ()
        stat = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._seen is not None and self._seen[0] == stat and time.time() - st.st_mtime > STILL_S:
            return self._seen[1]
        if self._watch is None:
            self._watch = self._connect()
        version = (self._watch.execute("PRAGMA data_version").fetchone()[0], st.st_ino)
        self._seen = (stat, version)
        return version


def _key(row) -> NamedKey:
    (name, scope, models, rpm, tpm, concurrent, period, tokens, expires_at, created_at, revoked_at,
     last_used_at) = row[:12]
    return NamedKey(name, scope, tuple(json.loads(models)) if models else None, rpm, tpm, concurrent,
                    (period, tokens) if period else None, expires_at, created_at, revoked_at, last_used_at)
