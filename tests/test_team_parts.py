"""The team's parts on their own: the key store (only digests kept, names checked, revocation
read by the key ring), the ledger's limits under a clock the test moves, usage kept in SQLite,
and the audit log's rotation."""
from __future__ import annotations

import json
import os
import stat
import time

import pytest

from llamarig.api.compute.keyring import KeyRing
from llamarig.api.compute.ledger import Ledger, Limited
from llamarig.shared.audit import AuditLog, target_of
from llamarig.shared.errors import LlamarigError
from llamarig.shared.keys import Keys
from llamarig.shared.keystore import KeyStore, NamedKey, parse_expiry, parse_quota
from llamarig.shared.usage_store import UsageStore, render
from prometheus_client import CollectorRegistry, generate_latest


def test_the_store_keeps_digests_only_and_the_ring_reads_a_revocation(tmp_path):
    store = KeyStore(tmp_path)
    secret = store.add(NamedKey("alice", "client", ("a", "b"), rpm=10, quota=("day", 1000)))
    assert secret.startswith("lr-") and len(secret) > 40
    raw = (tmp_path / "keys.sqlite").read_bytes()
    assert secret.encode() not in raw and stat.S_IMODE((tmp_path / "keys.sqlite").stat().st_mode) == 0o600
    ring = KeyRing(Keys(), store)
    alice = ring.identify(secret.encode())
    assert alice.name == "alice" and alice.models == ("a", "b") and alice.quota == ("day", 1000)
    assert ring.refusal(alice, 0) is None
    version = store.version()
    store.revoke("alice")
    assert store.version() != version  # what KeyRing.watch polls
    ring.reload()
    assert ring.refusal(ring.identify(secret.encode()), 0) == "revoked"
    with pytest.raises(LlamarigError, match="revoked already"):
        store.revoke("alice")
    with pytest.raises(LlamarigError, match="exists"):
        store.add(NamedKey("alice", "client"))


def test_the_watch_reads_every_change_however_close_and_a_still_file_by_its_stat_alone(tmp_path):
    """The watch asks SQLite only when the file's stat changed or it changed in the last STILL_S
    (a second commit within the file system clock's tick leaves the stat as it was)."""
    watcher, writer = KeyStore(tmp_path), KeyStore(tmp_path)
    writer.add(NamedKey("a", "client"))
    seen = {watcher.version()}
    for name in ("b", "c", "d"):  # each right after the last, the watch asking between them
        writer.add(NamedKey(name, "client"))
        seen.add(watcher.version())
    assert len(seen) == 4
    path = tmp_path / "keys.sqlite"
    os.utime(path, (time.time() - 5, time.time() - 5))  # still for longer than STILL_S
    watcher.version()
    watcher._watch.close()  # a query now would fail: the stat alone must answer
    assert watcher.version() in seen


@pytest.mark.parametrize("key, code", [
    (NamedKey("operator", "client"), "bad_key_name"), (NamedKey("a b", "client"), "bad_key_name"),
    (NamedKey("x" * 65, "client"), "bad_key_name"), (NamedKey("bob", "admin"), "bad_scope"),
    (NamedKey("bob", "client", rpm=0), "bad_limit"), (NamedKey("bob", "client", expires_at=1.0), "bad_expiry"),
])
def test_bad_keys_are_refused_with_a_reason(tmp_path, key, code):
    with pytest.raises(LlamarigError) as e:
        KeyStore(tmp_path).add(key)
    assert e.value.code == code


def test_quota_and_expiry_parsing():
    assert parse_quota("month:5000") == ("month", 5000)
    for bad in ("week:5", "day:", "day:-1", "day:0"):
        with pytest.raises(LlamarigError):
            parse_quota(bad)
    assert parse_expiry("2027-01-01") == 1798761600.0
    with pytest.raises(LlamarigError):
        parse_expiry("next tuesday")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _ledger(tmp_path, clock):
    return Ledger(UsageStore(tmp_path), CollectorRegistry(), clock=clock, wall=lambda: 1796601600.0 + clock.now)


def _refused(ledger, key, model="m") -> Limited:
    with pytest.raises(Limited) as e:
        ledger.admit(key, model)
    return e.value


def test_requests_per_minute_refuse_with_the_wait_until_the_oldest_leaves(tmp_path):
    clock = Clock()
    ledger, key = _ledger(tmp_path, clock), NamedKey("k", "client", rpm=3)
    for _ in range(3):
        ledger.admit(key, "m")
        ledger.end(key, "m", 200)
        clock.now += 10
    e = _refused(ledger, key)
    assert (e.status, e.code, e.why) == (429, "rate_limit_exceeded", "rpm") and e.retry_after == pytest.approx(30)
    assert e.response().headers["retry-after"] == "30"
    clock.now += 30.5
    ledger.admit(key, "m")  # the first left the window


def test_tokens_per_minute_concurrency_models_and_quota(tmp_path):
    clock = Clock()
    ledger = _ledger(tmp_path, clock)
    tpm = NamedKey("t", "client", tpm=100)
    ledger.admit(tpm, "m")
    ledger.end(tpm, "m", 200, prompt=60, completion=50)
    assert _refused(ledger, tpm).why == "tpm"
    clock.now += 61
    ledger.admit(tpm, "m")
    ledger.end(tpm, "m", 200)

    two = NamedKey("c", "client", concurrent=2)
    ledger.admit(two, "m")
    ledger.admit(two, "m")
    assert _refused(ledger, two).why == "concurrent"
    ledger.end(two, "m", 200)
    ledger.admit(two, "m")

    only = NamedKey("o", "client", models=("a",))
    e = _refused(ledger, only, "m")
    assert (e.status, e.code) == (403, "model_not_allowed") and "may use a" in e.reason

    quota = NamedKey("q", "client", quota=("day", 50))
    ledger.admit(quota, "m")
    ledger.end(quota, "m", 200, prompt=30, completion=25)
    e = _refused(ledger, quota)
    body = json.loads(e.response().body)
    assert (e.status, body["error"]["code"], body["error"]["type"]) == (429, "insufficient_quota", "insufficient_quota")
    assert e.response().headers["x-should-retry"] == "false" and "retry-after" not in e.response().headers
    assert ledger.quota_used() == {"q": 1.1}
    text = generate_latest(ledger.registry).decode()
    assert 'llamarig_key_limited_total{key="q",why="quota"} 1.0' in text


async def test_usage_is_flushed_to_sqlite_and_a_quota_survives_a_restart(tmp_path):
    clock = Clock()
    ledger = _ledger(tmp_path, clock)
    key = NamedKey("q", "client", quota=("month", 100))
    ledger.admit(key, "m")
    ledger.end(key, "m", 200, prompt=40, completion=30, inputs=2)
    ledger.admit(key, "whisper")
    ledger.end(key, "whisper", 500, audio_s=1.5)
    await ledger.flush()
    rows = UsageStore(tmp_path).query(None, ("key", "model"))
    assert rows == [{"key": "q", "model": "m", "requests": 1, "errors": 0, "prompt_tokens": 40,
                     "completion_tokens": 30, "audio_seconds": 0.0, "embedding_inputs": 2, "task_seconds": 0.0,
                     "external_cost": 0.0},
                    {"key": "q", "model": "whisper", "requests": 1, "errors": 1, "prompt_tokens": 0,
                     "completion_tokens": 0, "audio_seconds": 1.5, "embedding_inputs": 0, "task_seconds": 0.0,
                     "external_cost": 0.0}]
    assert "q,m,1,0,40,30" in render(rows, "csv") and json.loads(render(rows, "json")) == rows
    again = _ledger(tmp_path, clock)  # a restart: the month's use is read back
    again.admit(key, "m")
    again.end(key, "m", 200, prompt=20, completion=10)
    assert _refused(again, key).why == "quota"
    with pytest.raises(LlamarigError):
        UsageStore(tmp_path).query(None, ("user",))


def test_the_apis_kept_writer_is_read_at_once_by_others_and_reopens_a_removed_file(tmp_path):
    """The compute API keeps one writer open (a connection made, checkpointed and closed every
    flush cost more than the write): the CLI reads each add as soon as it is made, a
    process killed now loses nothing committed (another process reads it back without a
    close), and a file removed under it is made again, not written to its unlinked inode."""
    kept = UsageStore(tmp_path, keep_open=True)
    kept.add({("2026-12-07", "k", "m"): [1, 0, 5, 6]})
    kept.add({("2026-12-07", "k", "m"): [1, 1, 1, 1]})
    assert UsageStore(tmp_path).query(None, ("key",))[0]["requests"] == 2  # no close in between
    for leftover in tmp_path.glob("usage.sqlite*"):
        leftover.unlink()
    kept.add({("2026-12-08", "k", "m"): [3]})
    assert [r["requests"] for r in UsageStore(tmp_path).query(None, ("day",))] == [3]
    kept.close()


def test_the_audit_log_rotates_and_reads_back_in_order(tmp_path):
    log = AuditLog(tmp_path, max_bytes=300, keep=2)
    for i in range(12):
        log.write("alice", "POST /admin/units/m/stop", "m", "200", n=i)
    rows = log.read()
    assert [r["n"] for r in rows] == list(range(12 - len(rows), 12)) and len(rows) < 12  # the oldest rotated out
    assert (tmp_path / "audit.log.1").exists() and not (tmp_path / "audit.log.3").exists()
    assert log.read(since="2999") == []
    assert target_of("/admin/units/worker-1/stop") == "worker-1" and target_of("/admin/down") == "down"
