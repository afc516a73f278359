"""Verification cost of a large model (a sparse GGUF): first time with and without sha256, and
unchanged (the sha256 cache hit). Bytes read are the process's own read() bytes (/proc/self/io
rchar), so they count what the verifier asked for, page cache or not."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from models import sparse_gguf
from llamarig.shared.verify import Checks, HashCache, verify_gguf

GIB = 1024 ** 3


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def measured(fn) -> dict:
    before, started = read_bytes(), time.perf_counter()
    verdict = fn()
    seconds, read = time.perf_counter() - started, read_bytes() - before
    assert verdict.ok, verdict
    return {"seconds": round(seconds, 4), "bytes_read": read}


def one_size(folder: Path, layers: int, width: int) -> dict:
    path = sparse_gguf(folder / f"big-{layers}-{width}.gguf", layers, width)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    manifest = {path.resolve(): digest.hexdigest()}
    cache = HashCache(folder / f"cache-{layers}-{width}")
    with_hash = Checks(0, manifest, cache)
    return {"file_gib": round(path.stat().st_size / GIB, 3),
            "first_no_sha256": measured(lambda: verify_gguf(path, Checks(0))),
            "first_sha256": measured(lambda: verify_gguf(path, with_hash)),
            "unchanged_sha256": measured(lambda: verify_gguf(path, with_hash))}


def run(smoke: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-bench-verify-"))
    try:
        # Same layer count, different widths: the header (tensor count, names) stays the same
        # size while the file grows 4x, so any growth in bytes read would be the file's.
        sizes = [(4, 256), (4, 512)] if smoke else [(24, 1024), (24, 2048)]
        rows = [one_size(folder, layers, width) for layers, width in sizes]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    unchanged = [r["unchanged_sha256"]["bytes_read"] for r in rows]
    # A few bytes differ: the cache entry holds the size in decimal digits.
    return {"sizes": rows, "unchanged_reads_within_1_kib_across_sizes": max(unchanged) - min(unchanged) < 1024,
            "target": "unchanged case reads O(1) bytes of the file"}
