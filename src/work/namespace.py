"""The embedded engine's namespace: one per run folder, so that a rig's workers, API and CLI
can never work against another rig's embedded server. Two rigs given the same port: whichever
server holds it answers the other rig with "no namespace" (its workers wait and say so) instead
of handing it its tasks. Chosen once, before anything starts (`up`, `run`, the `temporal`
program: whoever comes first), and written beside the engine's database; backup and restore
keep the two together. A database made before this file existed keeps the configured name: its
plans live there.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from llamarig.shared.errors import LlamarigError

FILE = "temporal.namespace"
DB = "temporal.db"
_VALID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")


def path(run_dir: Path) -> Path:
    return Path(run_dir) / FILE


def of_rig(rig) -> str:
    """The namespace the rig's plans live in: work.cluster.namespace on a cluster; the run
    folder's own (made now if none) with the embedded server."""
    if rig.work.temporal == "cluster":
        return rig.work.cluster.namespace
    return read(rig.run_dir) or _create(rig.run_dir, rig.work.embedded.namespace)


def read(run_dir: Path) -> str | None:
    try:
        name = path(run_dir).read_text().strip()
    except FileNotFoundError:
        return None
    if not _VALID.match(name):
        raise LlamarigError("namespace_file_invalid", f"{path(run_dir)} holds {name[:40]!r}, not a namespace name: "
                            "restore it from a backup, or delete it only if the engine's database is new")
    return name


def _create(run_dir: Path, configured: str) -> str:
    """Atomically: two programs starting at once agree on the first one written."""
    legacy = (Path(run_dir) / DB).exists()
    name = configured if legacy else f"{configured}-{secrets.token_hex(4)}"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    tmp = path(run_dir).with_suffix(f".{os.getpid()}-{secrets.token_hex(4)}.tmp")  # (one per caller, threads too)
    tmp.write_text(name + "\n")
    try:
        os.link(tmp, path(run_dir))  # fails where another program wrote it first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read(run_dir)
