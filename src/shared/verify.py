"""Checks a model file (or Whisper folder) before anything loads it.

Each check returns a `Verdict` with a code and a one-line reason. Transient refusals (the file
is missing, empty, still growing or shorter than its header says) are worth waiting for: a
copy may be in progress. The others will not fix themselves. The sha256 of a file listed in
the manifest is cached by (device, inode, size, mtime), so an unchanged file is not re-read.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from llamarig.shared.gguf_header import GgufError, GgufHeader, read_header

TRANSIENT = {"missing", "dangling_link", "empty", "growing", "gguf_truncated", "whisper_incomplete"}
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json")
HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    path: str
    code: str
    reason: str
    size: int = 0
    header: GgufHeader | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "code": self.code, "reason": self.reason, "size": self.size}


class Refusal(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _stat_target(path: Path) -> os.stat_result:
    """stat() the path, naming missing files, dangling links and link loops apart."""
    try:
        link = path.lstat()
    except FileNotFoundError:
        raise Refusal("missing", f"{path} does not exist") from None
    except NotADirectoryError:
        raise Refusal("missing", f"{path}: a parent is not a folder") from None
    except PermissionError:
        raise Refusal("unreadable", f"{path}: a parent folder is not searchable by uid {os.getuid()}") from None
    try:
        return path.stat()
    except FileNotFoundError:
        target = os.readlink(path) if stat.S_ISLNK(link.st_mode) else "?"
        raise Refusal("dangling_link", f"{path} is a link to {target}, which does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refusal("link_loop", f"{path} is a symbolic link loop") from None
        raise Refusal("unreadable", f"{path}: {e.strerror}") from None


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except PermissionError:
        raise Refusal("unreadable", f"{path} is not readable by uid {os.getuid()}") from None
    except OSError as e:
        raise Refusal("unreadable", f"{path}: {e.strerror}") from None


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise Refusal("not_a_file", f"{path} is a folder, a GGUF file is expected")
    if not stat.S_ISREG(st.st_mode):
        raise Refusal("not_a_file", f"{path} is not a regular file")
    _check_readable(path)
    if st.st_size == 0:
        raise Refusal("empty", f"{path} is empty (0 bytes)")


def _check_settled(path: Path, before: os.stat_result, settle_s: float) -> os.stat_result:
    """Unchanged for settle_s seconds. Any write updates ctime, and ctime cannot be set back,
    so a file whose ctime (and mtime) is already settle_s old needs no wait."""
    if settle_s <= 0:
        return before
    age = time.time() - max(before.st_mtime, before.st_ctime)
    if age >= settle_s:
        return before
    time.sleep(settle_s - max(age, 0.0))
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise Refusal("growing", f"{path} changed within {settle_s:g} s "
                      f"({before.st_size} -> {after.st_size} bytes): still being written")
    return after


class HashCache:
    """sha256 per file, remembered by (device, inode, size, mtime_ns); one small file per key
    so that concurrent launch gates never overwrite each other's entries."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def sha256(self, path: Path, st: os.stat_result) -> str:
        key = f"{st.st_dev}-{st.st_ino}"
        ident = [st.st_size, st.st_mtime_ns]
        entry = self.folder / f"{key}.json" if self.folder else None
        if entry and entry.exists():
            saved = json.loads(entry.read_text())
            if saved.get("ident") == ident:
                return saved["sha256"]
        digest = hash_file(path)
        if entry:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"ident": ident, "sha256": digest, "path": str(path)}))
            os.replace(tmp, entry)
        return digest


def hash_file(path: Path) -> str:
    """The file's sha256 (hex), read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(manifest: Path) -> dict[Path, str]:
    """Parse a sha256sum-format file; paths are relative to the manifest's folder."""
    entries = {}
    for line in manifest.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        entries[(manifest.parent / name).resolve()] = digest.lower()
    return entries


def _check_sha256(path: Path, st: os.stat_result, manifest: dict[Path, str] | None, cache: HashCache) -> None:
    if manifest is None:
        return
    expected = manifest.get(path.resolve())
    if expected is None:
        raise Refusal("sha256_unlisted", f"{path} is not listed in the manifest; add its sha256 there")
    actual = cache.sha256(path, st)
    if actual != expected:
        raise Refusal("sha256_mismatch", f"{path} sha256 is {actual[:16]}…, the manifest says {expected[:16]}…")


@dataclass(frozen=True)
class Checks:
    """What to check beyond the file itself."""
    settle_s: float = 1.0
    manifest: dict[Path, str] | None = None
    cache: HashCache = HashCache(None)


def verify_gguf(path: str | Path, checks: Checks = Checks()) -> Verdict:
    path = Path(path)
    try:
        st = _stat_target(path)
        _check_regular(path, st)
        st = _check_settled(path, st, checks.settle_s)
        header = read_header(path)
        _check_sha256(path, st, checks.manifest, checks.cache)
    except Refusal as r:
        return Verdict(str(path), r.code, r.reason)
    except GgufError as e:
        return Verdict(str(path), e.code, f"{path}: {e.reason}")
    reason = f"GGUF v{header.version} {header.architecture}, {header.tensor_count} tensors, {st.st_size} bytes"
    return Verdict(str(path), "ok", reason, st.st_size, header)


def verify_whisper(folder: str | Path, checks: Checks = Checks()) -> Verdict:
    folder = Path(folder)
    try:
        st = _stat_target(folder)
        if not stat.S_ISDIR(st.st_mode):
            raise Refusal("not_a_folder", f"{folder} is a file, a Whisper model folder is expected")
        missing = [n for n in WHISPER_FILES if not (folder / n).exists()]
        if missing:
            raise Refusal("whisper_incomplete", f"{folder} lacks {', '.join(missing)}")
        size = 0
        for name in WHISPER_FILES:
            f = folder / name
            fst = _stat_target(f)
            _check_regular(f, fst)
            size += _check_settled(f, fst, checks.settle_s if name == "model.bin" else 0).st_size
    except Refusal as r:
        return Verdict(str(folder), r.code, r.reason)
    return Verdict(str(folder), "ok", f"Whisper model, {size} bytes", size)


def wait_until_verified(check, deadline_s: float, poll_s: float = 0.5) -> Verdict:
    """Repeat `check()` while its refusal is transient and time is left."""
    deadline = time.monotonic() + deadline_s
    while True:
        verdict = check()
        if verdict.ok or not verdict.transient or time.monotonic() >= deadline:
            return verdict
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
