"""A task's output travels by reference (Temporal's claim-check pattern): no output bytes go
into a Temporal payload or history, whatever their size. A task's result names its output: the
path on the rig that made it, where that rig's compute API serves it (ROUTE, operator key) and its
sha256, so a task adds the same few hundred bytes to its plan's history whether it wrote 1 KiB or
1 GiB. A dependent reads the file where it is when its rig has it (the same rig, or a folder every
rig mounts at the same path); else it downloads the served file into its own folder, checked
against the sha256, and reads it there. Results carrying the bytes (`output_data`, up to 256 KiB)
came from releases before this one: their plans still run, the bytes written where missing."""
from __future__ import annotations

import asyncio
import base64
import re
import socket
from pathlib import Path

from llamarig.shared.keys import is_loopback
from llamarig.shared.tls import api_url
from llamarig.shared.verify import hash_file
from llamarig.work.commands import DefinitionError

HASH_INLINE_BYTES = 64 * 1024  # hashed without a thread's hop (~0.1 ms): most outputs are small
ROUTE = "/admin/work/outputs"
SERVED_NAME = re.compile(r"^(output(\.[a-z0-9]{1,8})?|stdout)$")  # what an attempt's output may be called


def of_command(folder: Path) -> Path:
    """A command's output: its file `output`, else its one `output.EXT` (output.wav, output.srt),
    else its stdout. Several output.EXT files are a definition error: which one is meant?"""
    named = folder / "output"
    if named.exists():
        return named
    found = sorted(p.name for p in folder.glob("output.*") if SERVED_NAME.match(p.name))
    if len(found) > 1:
        raise DefinitionError(f"the command left {len(found)} outputs ({', '.join(found[:4])}): write one, or "
                              "name it output")
    return folder / (found[0] if found else "stdout")


def base_url(rig) -> str:
    """Where other rigs fetch this rig's outputs: work.outputs_url, else this host by name (or
    loopback while the API listens on loopback only) at api.port."""
    if rig.work.outputs_url:
        return rig.work.outputs_url.rstrip("/")
    return api_url(rig, "127.0.0.1" if is_loopback(rig.api.host) else socket.gethostname())


def key_origins(rig) -> list[str]:
    """Where a worker or the compute API may send this rig's operator key for outputs: this rig
    (as others reach it, and on loopback) and the rigs work.peers names; a rig without a work
    section, only itself on loopback."""
    here = [api_url(rig, "127.0.0.1"), api_url(rig, "localhost")]
    return here + ([base_url(rig), *rig.work.peers] if rig.work else [])


async def carry(output: str | None, folder: Path, served_from: str) -> dict:
    """What the result says so that dependents on another rig get the output: where this rig
    serves it ({"output_url", "output_sha256"}); a large file is hashed in a thread, so that
    gigabytes do not stall the worker's heartbeats."""
    if not output:
        return {}
    path = Path(output)
    try:
        if path.stat().st_size <= HASH_INLINE_BYTES:
            return served(path, folder, served_from)
        return await asyncio.to_thread(served, path, folder, served_from)
    except OSError:
        return {}


def served(path: Path, folder: Path, served_from: str) -> dict:
    """Where this rig's compute API serves an attempt's output, and its sha256 (hashed here: call
    it in a thread); {} for a file the route does not serve."""
    if path.parent != folder or not SERVED_NAME.match(path.name) or not folder.name.startswith("attempt-"):
        return {}
    return {"output_url": served_from + served_path(folder, path.name), "output_sha256": hash_file(path)}


def served_path(folder: Path, name: str) -> str:
    """ROUTE/PLAN/TASK/attempt-N/NAME for the attempt folder run/work/plans/PLAN/tasks/TASK/attempt-N."""
    return f"{ROUTE}/{folder.parent.parent.parent.name}/{folder.parent.name}/{folder.name}/{name}"


async def localize(ctx: dict, folder: Path, fetch) -> dict:
    """ctx with each dependency's output at a path this rig can read. fetch(url, dest, sha256)
    downloads a served output (api_client.ComputeApi.fetch_output)."""
    moved = {}
    for dep, path in ctx.get("outputs", {}).items():
        if Path(path).exists():
            continue
        local = folder / "inputs" / f"{dep}{Path(path).suffix}"
        local.parent.mkdir(exist_ok=True)
        if (data := ctx.get("carried", {}).get(dep)) is not None:
            local.write_bytes(base64.b64decode(data))
        elif (served := ctx.get("served", {}).get(dep)) is not None:
            await fetch(served["url"], local, served["sha256"])
        else:
            raise DefinitionError(f"the output of {dep!r} ({path}) is on another rig, which neither carried "
                                  "nor served it: give the rigs a shared folder")
        moved[path] = str(local)
    if not moved:
        return ctx
    return ctx | {"outputs": {d: moved.get(p, p) for d, p in ctx["outputs"].items()},
                  "inputs": {k: moved.get(v, v) for k, v in ctx["inputs"].items()}}
