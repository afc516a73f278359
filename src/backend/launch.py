"""The launch gate every server program runs through: verify the model, then exec the server.

`exec` replaces this process, so supervisord's signals reach the server itself. A refusal
exits with EXIT_REFUSED inside supervisord's startsecs, so the program ends FATAL instead of
flapping, and the verdict is left in run/verdicts/<unit>.json for the lifecycle manager.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from llamarig.backend.engines import engine_for, whisper_argv
from llamarig.backend.supervisor_conf import BLUE, GREEN, WHISPER_PROGRAM
from llamarig.shared.errors import LlamarigError
from llamarig.shared.gpus import open_inventory
from llamarig.shared.rig import Rig
from llamarig.shared.verify import Checks, HashCache, Verdict, read_manifest, verify_gguf, verify_whisper, \
    wait_until_verified

log = logging.getLogger(__name__)
EXIT_REFUSED = 78  # EX_CONFIG: the model (or its settings) cannot be served as they are


def checks_for(rig: Rig, settle: bool = True) -> Checks:
    manifest = read_manifest(rig.resolve(rig.paths.manifest)) if rig.paths.manifest else None
    return Checks(rig.timeouts.settle_s if settle else 0, manifest, HashCache(rig.run_dir / "cache" / "sha256"))


def verify_unit(rig: Rig, unit: str, checks: Checks) -> Verdict:
    """Verdict for a model name or 'whisper'."""
    if unit == WHISPER_PROGRAM:
        return verify_whisper(rig.resolve(rig.whisper.model_dir), checks)
    return verify_gguf(rig.resolve(rig.models[unit].path), checks)


def verdict_key(unit: str, slot: str = BLUE) -> str:
    """Each server slot has its own verdict file: a green start must not read blue's."""
    return unit if slot == BLUE else f"{unit}_{slot}"


def verdict_path(rig: Rig, key: str) -> Path:
    return rig.run_dir / "verdicts" / f"{key}.json"


def write_verdict(rig: Rig, unit: str, verdict: Verdict) -> None:
    path = verdict_path(rig, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**verdict.as_dict(), "pid": os.getpid()}))
    os.replace(tmp, path)


def read_verdict(rig: Rig, unit: str) -> dict | None:
    try:
        return json.loads(verdict_path(rig, unit).read_text())
    except (OSError, ValueError):
        return None


def server_argv(rig: Rig, unit: str, slot: str = BLUE) -> list[str]:
    if unit == WHISPER_PROGRAM:
        return whisper_argv(Path(rig.source).resolve())
    on_gpu = not open_inventory(rig.gpus).simulated
    model = rig.models[unit]
    if slot == GREEN and model.swap_port is None:
        raise LlamarigError("no_swap_port", f"models.{unit}.swap_port is not set: there is no green slot")
    return engine_for(model).argv(rig, model, on_gpu, model.swap_port if slot == GREEN else model.port)


def launch(rig: Rig, unit: str, slot: str = BLUE) -> int:
    """Verify (waiting for transient refusals), then exec the server. Returns only on refusal."""
    if unit != WHISPER_PROGRAM and unit not in rig.models:
        log.error("unknown unit", extra={"model": unit, "known": sorted(rig.models)})
        return EXIT_REFUSED
    key = verdict_key(unit, slot)
    checks = checks_for(rig)
    verdict = wait_until_verified(lambda: verify_unit(rig, unit, checks), rig.timeouts.model_wait_s)
    write_verdict(rig, key, verdict)
    if not verdict.ok:
        log.error("model refused", extra={"model": unit, "code": verdict.code, "reason": verdict.reason})
        return EXIT_REFUSED
    try:
        argv = server_argv(rig, unit, slot)
    except LlamarigError as e:
        write_verdict(rig, key, Verdict(verdict.path, e.code, e.reason))
        log.error("engine refused", extra={"model": unit, "code": e.code, "reason": e.reason})
        return EXIT_REFUSED
    log.info("model verified, starting server", extra={"model": unit, "slot": slot, "argv": argv, "reason": verdict.reason})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)
    return EXIT_REFUSED  # not reached
