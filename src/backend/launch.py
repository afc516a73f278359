"""The rig's side of the launch gate: the plan for a unit, made from the rig, and the gate's
fallback when no plan made from the current rig file is there (see gate.py)."""
from __future__ import annotations

import logging
from pathlib import Path

from llamarig.backend.engines import engine_for, whisper_argv
from llamarig.backend.gate import EXIT_REFUSED, LaunchPlan, make_checks, run
from llamarig.backend.supervisor_conf import BLUE, GREEN, WHISPER_PROGRAM, verdict_key
from llamarig.shared.errors import LlamarigError
from llamarig.shared.gpus import open_inventory
from llamarig.shared.rig import Rig
from llamarig.shared.verify import Checks, Verdict, verify_gguf, verify_whisper

log = logging.getLogger(__name__)


def checks_for(rig: Rig, settle: bool = True) -> Checks:
    return make_checks(rig.timeouts.settle_s if settle else 0, _manifest(rig), rig.run_dir)


def _manifest(rig: Rig) -> str | None:
    return str(rig.resolve(rig.paths.manifest)) if rig.paths.manifest else None


def verify_unit(rig: Rig, unit: str, checks: Checks) -> Verdict:
    """Verdict for a model name or 'whisper'."""
    if unit == WHISPER_PROGRAM:
        return verify_whisper(rig.resolve(rig.whisper.model_dir), checks)
    return verify_gguf(rig.resolve(rig.models[unit].path), checks)


def server_argv(rig: Rig, unit: str, slot: str = BLUE, on_gpu: bool | None = None) -> list[str]:
    """on_gpu: whether the servers run on GPUs; None: ask the rig's GPU inventory (NVML)."""
    if unit == WHISPER_PROGRAM:
        gpu = int(slot.removeprefix("gpu")) if slot.startswith("gpu") else rig.whisper.gpu
        return whisper_argv(Path(rig.source).resolve(), rig.whisper.port_on(gpu))
    if on_gpu is None:
        on_gpu = not open_inventory(rig.gpus).simulated
    model = rig.models[unit]
    if slot == GREEN and model.swap_port is None:
        raise LlamarigError("no_swap_port", f"models.{unit}.swap_port is not set: there is no green slot")
    if slot.startswith("gpu"):  # a placement of an embeddings model
        return engine_for(model).argv(rig, model, on_gpu, model.port_on(int(slot.removeprefix("gpu"))))
    return engine_for(model).argv(rig, model, on_gpu, model.swap_port if slot == GREEN else model.port)


def plan_for(rig: Rig, unit: str, slot: str = BLUE, on_gpu: bool | None = None, pinned: bool = False) -> LaunchPlan:
    """What the gate does for `unit` in `slot`: which file to verify and which command to exec;
    pinned: even if the rig file has changed since (see gate.py)."""
    whisper = unit == WHISPER_PROGRAM
    try:
        argv, refusal = server_argv(rig, unit, slot, on_gpu), None
    except LlamarigError as e:
        argv, refusal = [], [e.code, e.reason]
    target = rig.resolve(rig.whisper.model_dir if whisper else rig.models[unit].path)
    return LaunchPlan(unit, slot, verdict_key(unit, slot), whisper, str(target), argv, refusal,
                      rig.timeouts.settle_s, rig.timeouts.model_wait_s, _manifest(rig), str(rig.run_dir),
                      rig.source_sha256, pinned)


def launch(rig: Rig, unit: str, slot: str = BLUE) -> int:
    """The gate without a plan: make it from the rig, then run it. Returns only on refusal."""
    if unit != WHISPER_PROGRAM and unit not in rig.models:
        log.error("unknown unit", extra={"model": unit, "known": sorted(rig.models)})
        return EXIT_REFUSED
    return run(plan_for(rig, unit, slot))
