"""The launch gate's plan and its run: verify the model, then exec the server.

The lifecycle manager writes a unit's plan (run/plans/<key>.json) before it asks supervisord to
start the program, so the gate, a fresh Python process per start, needs neither the rig's
pydantic models nor NVML: loading the rig was most of a gate's 0.2 s of CPU on the 2-core VM,
and 0.6 s per gate on the lent H100 host (bench/RESULTS.md). A plan is used only while the rig
file is byte for byte the one it was made from; otherwise the gate loads the rig and makes the
same plan itself (launch.plan_for), unless the plan is pinned: after a failed reload the manager
keeps the settings that worked, and the file holds the ones that did not. This module imports only the standard library and verify.

`exec` replaces the gate, so supervisord's signals reach the server itself. A refusal exits
with EXIT_REFUSED inside supervisord's startsecs, so the program ends FATAL instead of
flapping, and the verdict is left in run/verdicts/<key>.json for the lifecycle manager.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from llamarig.shared.verify import Checks, HashCache, Verdict, read_manifest, verify_gguf, verify_whisper, \
    wait_until_verified

log = logging.getLogger("llamarig.backend.launch")
EXIT_REFUSED = 78  # EX_CONFIG: the model (or its settings) cannot be served as they are


@dataclass(frozen=True)
class LaunchPlan:
    unit: str                   # model name, or "whisper"
    slot: str                   # "blue" or "green"
    key: str                    # verdict and plan file name: the unit, with "_green" for green
    whisper: bool               # target is a Whisper folder (else a GGUF file)
    target: str                 # absolute path of the model file or folder
    argv: list[str]             # the server command; empty when `refusal` is set
    refusal: list[str] | None   # [code, reason] if the server cannot be started as configured
    settle_s: float             # timeouts.settle_s
    model_wait_s: float         # timeouts.model_wait_s
    manifest: str | None        # absolute path of paths.manifest, or None
    run_dir: str                # absolute path of paths.run_dir
    rig_sha256: str             # sha256 of the rig file's bytes this plan was made from
    pinned: bool = False        # the manager keeps settings the file no longer has (a failed reload)

    def checks(self) -> Checks:
        return make_checks(self.settle_s, self.manifest, self.run_dir)


def make_checks(settle_s: float, manifest: str | Path | None, run_dir: str | Path) -> Checks:
    """What a verification checks beyond the file: its settle window, the manifest's sha256 (the
    hashes cached under run_dir)."""
    return Checks(settle_s, read_manifest(Path(manifest)) if manifest else None,
                  HashCache(Path(run_dir) / "cache" / "sha256"))


def file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def plan_path(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / "plans" / f"{key}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def write_plan(plan: LaunchPlan) -> None:
    _write_json(plan_path(plan.run_dir, plan.key), asdict(plan))


def read_plan(path: str | Path, rig_path: str | Path) -> LaunchPlan | None:
    """The plan at `path` if it was made from the rig file as it is now, or pinned; else None."""
    try:
        plan = LaunchPlan(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if plan.pinned:
        return plan
    return plan if plan.rig_sha256 and plan.rig_sha256 == file_sha256(rig_path) else None


def verdict_path(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / "verdicts" / f"{key}.json"


def write_verdict(run_dir: str | Path, key: str, verdict: Verdict) -> None:
    _write_json(verdict_path(run_dir, key), {**verdict.as_dict(), "pid": os.getpid()})


def read_verdict(run_dir: str | Path, key: str) -> dict | None:
    try:
        return json.loads(verdict_path(run_dir, key).read_text())
    except (OSError, ValueError):
        return None


def verify_target(plan: LaunchPlan, checks: Checks) -> Verdict:
    return (verify_whisper if plan.whisper else verify_gguf)(plan.target, checks)


def run(plan: LaunchPlan) -> int:
    """Verify (waiting for transient refusals), then exec the server. Returns only on refusal."""
    checks = plan.checks()
    verdict = wait_until_verified(lambda: verify_target(plan, checks), plan.model_wait_s)
    write_verdict(plan.run_dir, plan.key, verdict)
    if not verdict.ok:
        log.error("model refused", extra={"model": plan.unit, "code": verdict.code, "reason": verdict.reason})
        return EXIT_REFUSED
    if plan.refusal:
        code, reason = plan.refusal
        write_verdict(plan.run_dir, plan.key, Verdict(verdict.path, code, reason))
        log.error("engine refused", extra={"model": plan.unit, "code": code, "reason": reason})
        return EXIT_REFUSED
    log.info("model verified, starting server", extra={"model": plan.unit, "slot": plan.slot, "argv": plan.argv,
                                                       "reason": verdict.reason})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(plan.argv[0], plan.argv)
    return EXIT_REFUSED  # not reached
