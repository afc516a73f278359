"""The training-sample log on its own: what redaction takes out (a table), rotation within
max_mib, export since a date, and the learned durations keeping a task's resources."""
from __future__ import annotations

import io
import json
import time

import pytest

from llamarig.shared.redact import Redactor
from llamarig.work import durations, samples

RIG_KEY = "client-key-of-this-rig-0123456789"
REDACT = Redactor([RIG_KEY, "operator-key-abcdefghijklmnop"])


@pytest.mark.parametrize("text, kept, gone", [
    (f"the key is {RIG_KEY}, use it", "the key is [REDACTED:rig-key], use it", RIG_KEY),
    ("curl -H 'Authorization: Bearer abc.DEF-123_xyz' host", "Authorization: Bearer [REDACTED:bearer]", "abc.DEF"),
    ("my named key lr-Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Ng", "[REDACTED:named-key]", "Zm9vYmFy"),
    ("OPENAI_API_KEY sk-proj-AbCdEfGhIjKlMnOpQrStUvWx", "[REDACTED:openai-key]", "AbCdEfGh"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ0123", "[REDACTED:github-token]", "ghp_0123"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "aws [REDACTED:aws-key] here", "IOSFODNN7"),
    ("slack xoxb-1234567890-abcdefghij", "[REDACTED:slack-token]", "xoxb-12"),
    ("maps AIzaSyA1234567890abcdefghijklmnopqrstuv", "[REDACTED:google-key]", "AIzaSy"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlMTIz", "[REDACTED:jwt]", "eyJzdWIi"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----", "[REDACTED:private-key]",
     "MIIEow"),
    ("db at postgres://app:s3cretPass@db:5432/x", "postgres://app:[REDACTED:url-password]@db", "s3cretPass"),
    ("password=hunter22; next", "password=[REDACTED:assignment]; next", "hunter22"),
    ('{"api_key": "abc123xyz"}', '{"api_key": "[REDACTED:assignment]"}', "abc123xyz"),
    ("Client_Secret: 9f8e7d6c", "Client_Secret: [REDACTED:assignment]", "9f8e7d6c"),
])
def test_redaction_takes_out_each_kind_of_secret(text, kept, gone):
    out = REDACT.text(text)
    assert kept in out and gone not in out, out


@pytest.mark.parametrize("text", [
    "The password policy asks for twelve characters.",  # the word alone is no secret
    "Bearer of bad news",  # too short to be a token
    "sk-short", "https://example.com/path", "a skeleton key",
])
def test_ordinary_text_is_left_alone(text):
    assert REDACT.text(text) == text


def test_a_tree_is_redacted_keys_and_values():
    tree = {"messages": [{"role": "user", "content": f"use {RIG_KEY}"}], f"k {RIG_KEY}": 1, "n": 3}
    assert json.dumps(REDACT.tree(tree)).count("[REDACTED:rig-key]") == 2


def _record(i: int, size: int = 0) -> dict:
    return {"task_id": f"p/t{i}", "messages": [{"role": "user", "content": "x" * size}], "response": f"r{i}",
            "outcome": "succeeded"}


def test_rotation_keeps_the_files_within_max_and_export_gives_the_newest_in_order(tmp_path):
    log = samples.SampleLog(tmp_path, 2**20, REDACT)
    for i in range(120):
        assert log.write(_record(i, 20_000))
    files = samples.files(tmp_path)
    assert len(files) >= 3 and files[-1].name == samples.CURRENT
    assert sum(f.stat().st_size for f in files) <= 2**20
    out = io.StringIO()
    count = samples.export(tmp_path, 0, out)
    ids = [json.loads(line)["task_id"] for line in out.getvalue().splitlines()]
    assert count == len(ids) and 30 < count < 120 and ids[-1] == "p/t119"
    assert ids == [f"p/t{i}" for i in range(120 - count, 120)]  # the oldest went, nothing in between


def test_a_sample_over_a_quarter_of_max_is_not_kept_and_logged(tmp_path, caplog):
    log = samples.SampleLog(tmp_path, 2**20, REDACT)
    assert not log.write(_record(1, 2**19))
    assert [r.event_type for r in caplog.records] == ["sample_too_large"] and not samples.files(tmp_path)


def test_a_folder_that_cannot_be_written_loses_the_sample_not_the_task(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    log = samples.SampleLog(tmp_path / "file" / "samples", 2**20, REDACT)  # (a folder under a file)
    assert not log.write(_record(1))
    assert [r.event_type for r in caplog.records] == ["sample_unwritten"]


def test_export_since_a_date_leaves_out_older_samples(tmp_path):
    log = samples.SampleLog(tmp_path, 2**20, REDACT)
    log.write(_record(1))
    lines = (tmp_path / samples.CURRENT).read_text().splitlines()
    old = json.loads(lines[0]) | {"at": samples.parse_since("2020-01-01T12:00"), "task_id": "p/old"}
    (tmp_path / samples.CURRENT).write_text(json.dumps(old) + "\n" + lines[0] + "\n")
    out = io.StringIO()
    assert samples.export(tmp_path, samples.parse_since("2021-01-01"), out) == 1
    assert json.loads(out.getvalue())["task_id"] == "p/t1"
    with pytest.raises(ValueError, match="--since"):
        samples.parse_since("yesterday")


def test_learned_durations_keep_the_gpu_and_vram_peak(tmp_path):
    task = {"name": "t", "class": "script", "command": "x", "depends_on": []}
    record = {"spec": {"plan": {"tasks": [task]}}, "tasks": {"t": {"state": "succeeded", "result": {
        "duration_ms": 1500, "gpu": 2, "vram_peak_mib": 812}}}}
    assert durations.learn(tmp_path, record) == 1
    entry = json.loads(durations.path(tmp_path).read_text())[durations.key(task)]
    assert (entry["s"], entry["gpu"], entry["vram_peak_mib"]) == (1.5, 2, 812) and entry["at"] <= time.time()


def test_a_leased_gpus_vram_peak_is_the_most_nvml_read_at_the_heartbeats():
    from types import SimpleNamespace

    from llamarig.shared.gpus import GpuReading
    from llamarig.work.activities import VramPeak

    class Nvml:  # NvmlInventory's shape: read(), and the module's error class under .nvml
        nvml = SimpleNamespace(NVMLError=OSError)
        used = iter([300, 900, 500])

        def read(self):
            return [GpuReading(0, "g", 10 * 2**30, 0), GpuReading(2, "g", 10 * 2**30, next(self.used) * 2**20)]

    peak = VramPeak(Nvml(), 2)
    peak.sample()
    peak.sample()
    assert peak.mib == 900
    assert VramPeak(None, 2).mib is None  # the simulated inventory: not measured, not made up
