"""`llamarig backup` and `llamarig restore`: what a rig needs to come back with its plans.

Kept: the rig file, the manifest it names, the embedded engine's database (copied with SQLite's
online backup API: a consistent snapshot while the server writes, WAL included) with the name of
its namespace (work/namespace.py), and the plan
records and results under run/work/plans, and the task durations learned from them
(work/durations.py). Not kept: keys (secrets: keep them where they are
kept), model files (large, and verified against the manifest), logs. A cluster's database is
backed up with the cluster, not here.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

from llamarig.backend.supervisor_conf import socket_path
from llamarig.shared.errors import LlamarigError
from llamarig.shared.verify import hash_file
from llamarig.work import durations, namespace
from llamarig.work.namespace import DB
from llamarig.work.store import Store

LEARNED = "durations.json"


def backup(rig, dest: Path) -> Path:
    folder = dest / f"llamarig-backup-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    folder.mkdir(parents=True)
    shutil.copy2(rig.source, folder / "rig.yaml")
    if rig.paths.manifest:
        shutil.copy2(rig.resolve(rig.paths.manifest), folder / "manifest.sha256")
    db = rig.run_dir / DB
    if rig.work and rig.work.temporal == "embedded" and db.exists():
        _copy_db(db, folder / DB)
        if namespace.path(rig.run_dir).is_file():  # (none beside a database an older release made: restore knows)
            shutil.copy2(namespace.path(rig.run_dir), namespace.path(folder))
    plans = Store(rig.run_dir).plans
    if plans.is_dir():
        shutil.copytree(plans, folder / "plans", ignore=shutil.ignore_patterns("*.tmp"))
    learned = durations.path(rig.run_dir)
    if learned.is_file():  # (replaced whole when it changes: a copy is one version)
        shutil.copy2(learned, folder / LEARNED)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    (folder / "BACKUP.json").write_text(json.dumps({
        "made_at": time.time(), "rig": rig.source,
        "files": {str(p.relative_to(folder)): hash_file(p) for p in files}}, indent=1))
    return folder


def restore(rig, source: Path) -> list[str]:
    """Into a stopped bundle's run folder: the engine's database and the plans. Checks the
    backup's files against its BACKUP.json first; returns what it put back."""
    if socket_path(rig).exists() and _answers(socket_path(rig)):
        raise LlamarigError("bundle_running", "stop the bundle first (llamarig down): the engine's database "
                            "cannot be replaced under a running server")
    _check(source)
    done = []
    if (source / DB).exists():
        for stale in rig.run_dir.glob(DB + "*"):
            stale.unlink()
        rig.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / DB, rig.run_dir / DB)
        _restore_namespace(rig, source)
        done.append(str(rig.run_dir / DB))
    if (source / "plans").is_dir():
        target = Store(rig.run_dir).plans
        shutil.copytree(source / "plans", target, dirs_exist_ok=True)
        done.append(str(target))
    learned = durations.path(rig.run_dir)
    if (source / LEARNED).is_file():
        learned.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / LEARNED, learned)
        done.append(str(learned))
    return done


def _restore_namespace(rig, source: Path) -> None:
    """The database's namespace with it: a backup made before the namespace file existed holds
    its plans under the configured name."""
    target = namespace.path(rig.run_dir)
    if namespace.path(source).is_file():
        shutil.copy2(namespace.path(source), target)
    elif rig.work:
        target.write_text(rig.work.embedded.namespace + "\n")


def _copy_db(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # one step: a snapshot under one read transaction
    finally:
        dst.close()
        src.close()


def _check(source: Path) -> None:
    try:
        listed = json.loads((source / "BACKUP.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        raise LlamarigError("backup_invalid", f"{source}: no readable BACKUP.json (not a llamarig backup?)") from None
    bad = [name for name, digest in listed.items() if not (source / name).is_file() or hash_file(source / name) != digest]
    if bad:
        raise LlamarigError("backup_invalid", f"{source}: files missing or changed since the backup: {bad[:5]}")


def _answers(sock: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()
