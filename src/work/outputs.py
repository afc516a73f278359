"""A task's output file travels to its dependents on another rig: an output up to CARRY_BYTES
rides in the task's result (base64, kept out of the plan's state and record); a dependent
whose rig lacks the file writes those bytes into its own folder and reads them there. Larger
outputs need a folder every rig mounts at the same path (the README's "Several rigs")."""
from __future__ import annotations

import base64
from pathlib import Path

from llamarig.work.commands import DefinitionError

CARRY_BYTES = 256 * 1024  # a few pages of transcript; Temporal's payloads are limited to 2 MiB


def carry(output: str | None) -> dict:
    """{"output_data": ...} for an output small enough to travel, else {}."""
    if not output:
        return {}
    path = Path(output)
    try:
        if path.stat().st_size > CARRY_BYTES:
            return {}
        return {"output_data": base64.b64encode(path.read_bytes()).decode()}
    except OSError:
        return {}


def localize(ctx: dict, folder: Path) -> dict:
    """ctx with each dependency's output at a path this rig can read."""
    moved = {}
    for dep, path in ctx.get("outputs", {}).items():
        if Path(path).exists():
            continue
        data = ctx.get("carried", {}).get(dep)
        if data is None:
            raise DefinitionError(f"the output of {dep!r} ({path}) is on another rig and too large to carry "
                                  f"({CARRY_BYTES // 1024} KiB at most): give the rigs a shared folder")
        local = folder / "inputs" / f"{dep}{Path(path).suffix}"
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(base64.b64decode(data))
        moved[path] = str(local)
    if not moved:
        return ctx
    return ctx | {"outputs": {d: moved.get(p, p) for d, p in ctx["outputs"].items()},
                  "inputs": {k: moved.get(v, v) for k, v in ctx["inputs"].items()}}
