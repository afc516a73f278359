"""Every refusal of the verifier, each with its own code and reason; the sha256 cache."""
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from llamarig.shared.gguf_header import read_header
from llamarig.shared.verify import Checks, HashCache, read_manifest, verify_gguf, verify_whisper, \
    wait_until_verified

FAST = Checks(settle_s=0)


def test_good_gguf(models):
    v = verify_gguf(models["gguf"], FAST)
    assert v.ok and v.code == "ok" and "GGUF v3 llama" in v.reason
    assert v.header.arch_value("block_count") == 2


@pytest.mark.parametrize("make, code, words", [
    (lambda p, g: None, "missing", "does not exist"),
    (lambda p, g: p.write_bytes(b""), "empty", "empty (0 bytes)"),
    (lambda p, g: p.mkdir(), "not_a_file", "is a folder"),
    (lambda p, g: p.symlink_to(p.parent / "nowhere.gguf"), "dangling_link", "which does not exist"),
    (lambda p, g: (p.symlink_to(p.parent / "loop2"), (p.parent / "loop2").symlink_to(p)), "link_loop", "loop"),
    (lambda p, g: p.write_bytes(g.read_bytes()[: len(g.read_bytes()) // 2]), "gguf_truncated", "needs"),
    (lambda p, g: p.write_bytes(b"GGML" + g.read_bytes()[4:]), "gguf_bad_magic", "magic"),
    (lambda p, g: p.write_bytes(g.read_bytes()[:4] + (9).to_bytes(4, "little") + g.read_bytes()[8:]),
     "gguf_bad_version", "version 9"),
    (lambda p, g: p.write_bytes(g.read_bytes()[:8] + (2**40).to_bytes(8, "little") + g.read_bytes()[16:]),
     "gguf_bad_header", "more than the limit"),
])
def test_refusals(tmp_path, models, make, code, words):
    path = tmp_path / "model.gguf"
    make(path, models["gguf"])
    v = verify_gguf(path, FAST)
    assert (v.ok, v.code) == (False, code)
    assert words in v.reason and str(path) in v.reason


def test_unreadable_as_an_unprivileged_user(models):
    import tempfile

    folder = tempfile.mkdtemp(prefix="llamarig-perm-")  # under /tmp, searchable by everyone
    os.chmod(folder, 0o755)
    path = __import__("pathlib").Path(folder) / "model.gguf"
    shutil.copy(models["gguf"], path)
    path.chmod(0)
    code = ("import sys; from llamarig.shared.verify import verify_gguf, Checks; "
            "v = verify_gguf(sys.argv[1], Checks(settle_s=0)); print(v.code, v.reason)")
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                          code, str(path)], capture_output=True, text=True, env={**os.environ, "HOME": "/tmp"})
    shutil.rmtree(folder)
    assert run.stdout.startswith("unreadable"), run.stderr
    assert "not readable by uid 65534" in run.stdout


def test_growing_file_is_waited_for_then_accepted(tmp_path, models):
    path = tmp_path / "model.gguf"
    data = models["gguf"].read_bytes()
    path.write_bytes(data[:100])
    done = threading.Event()

    def copy_slowly():
        with path.open("ab") as f:
            for i in range(100, len(data), len(data) // 8):
                time.sleep(0.1)
                f.write(data[i:i + len(data) // 8])
                f.flush()
        done.set()

    threading.Thread(target=copy_slowly).start()
    first = verify_gguf(path, Checks(settle_s=0.3))
    assert first.code in ("growing", "gguf_truncated") and first.transient
    final = wait_until_verified(lambda: verify_gguf(path, Checks(settle_s=0.3)), deadline_s=20)
    assert done.is_set() and final.ok, final.reason


def test_a_permanent_refusal_is_not_waited_for(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"NOPE" * 100)
    started = time.monotonic()
    v = wait_until_verified(lambda: verify_gguf(path, FAST), deadline_s=30)
    assert v.code == "gguf_bad_magic" and time.monotonic() - started < 5


def test_sha256_manifest_match_mismatch_unlisted_and_cache(tmp_path, models):
    path = tmp_path / "model.gguf"
    shutil.copy(models["gguf"], path)
    good = subprocess.run(["sha256sum", "model.gguf"], cwd=tmp_path, capture_output=True, text=True).stdout
    (tmp_path / "SHA256SUMS").write_text(good)
    cache = HashCache(tmp_path / "cache")
    checks = Checks(0, read_manifest(tmp_path / "SHA256SUMS"), cache)
    assert verify_gguf(path, checks).ok
    assert len(list((tmp_path / "cache").iterdir())) == 1

    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  model.gguf\n")
    v = verify_gguf(path, Checks(0, read_manifest(tmp_path / "SHA256SUMS"), cache))
    assert v.code == "sha256_mismatch" and "the manifest says 0000" in v.reason

    (tmp_path / "SHA256SUMS").write_text(good.replace("model.gguf", "other.gguf"))
    v = verify_gguf(path, Checks(0, read_manifest(tmp_path / "SHA256SUMS"), cache))
    assert v.code == "sha256_unlisted"


def test_unchanged_file_is_not_hashed_again(tmp_path, models, monkeypatch):
    path = tmp_path / "model.gguf"
    shutil.copy(models["gguf"], path)
    cache = HashCache(tmp_path / "cache")
    first = cache.sha256(path, path.stat())
    import llamarig.shared.verify as verify_module

    monkeypatch.setattr(verify_module, "hash_file", lambda p: pytest.fail("re-hashed an unchanged file"))
    assert cache.sha256(path, path.stat()) == first
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: must be hashed again
    monkeypatch.setattr(verify_module, "hash_file", lambda p: "new")
    assert cache.sha256(path, path.stat()) == "new"


def test_whisper_folder(tmp_path, models):
    assert verify_whisper(models["whisper"], FAST).ok
    folder = tmp_path / "w"
    shutil.copytree(models["whisper"], folder)
    (folder / "tokenizer.json").unlink()
    v = verify_whisper(folder, FAST)
    assert v.code == "whisper_incomplete" and "tokenizer.json" in v.reason
    assert verify_whisper(models["gguf"], FAST).code == "not_a_folder"


def test_header_bounds_and_sizes(models):
    h = read_header(models["gguf"])
    assert h.data_offset % 32 == 0
    assert h.data_offset + h.data_size == h.file_size
    assert {t.name for t in h.tensors} >= {"token_embd.weight", "blk.1.ffn_down.weight"}


def test_a_file_unchanged_for_longer_than_settle_is_not_waited_for(tmp_path, models, monkeypatch):
    import llamarig.shared.verify as verify

    path = tmp_path / "m.gguf"
    path.write_bytes(models["gguf"].read_bytes())
    slept = []
    monkeypatch.setattr(verify.time, "sleep", slept.append)
    assert verify_gguf(path, Checks(settle_s=5)).ok
    assert slept and 4 < slept[0] <= 5, "a fresh file must be watched for the rest of the window"
    slept.clear()
    now = verify.time.time()
    monkeypatch.setattr(verify.time, "time", lambda: now + 60)  # a minute later, no write since
    assert verify_gguf(path, Checks(settle_s=5)).ok
    assert not slept, "an old file must not be waited for"
