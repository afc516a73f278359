"""Reload a model with its file and settings as they are now: blue-green when it can, drain-first
otherwise, and say which.

Blue-green: the model's other slot (its swap_port) starts beside the serving server; once it is
ready, routing switches to it, then the old server drains and stops. The old server serves until
the switch, so a reload that fails (a bad new file, a bad flag) leaves the model as it was. It needs
the new server's memory on top of the old one's. When the GPUs lack it, the model has no
swap_port, or the model is not serving, the reload drains first, then starts.

The record of the last reload of each model is kept on the manager (`swaps`) and served at
/admin/units/NAME.
"""
from __future__ import annotations

import asyncio
import logging
import time

from llamarig.backend.lifecycle.commands import Start, Stop
from llamarig.backend.lifecycle.states import ENDED, SERVING, SETTLED, State
from llamarig.backend.lifecycle.waves import shortfall
from llamarig.shared.errors import LlamarigError, RigError
from llamarig.shared.rig import load_rig

log = logging.getLogger("llamarig.swap")
MIB = 1024 * 1024
IN_PROGRESS = ("starting", "draining")
# A reload re-reads the rig file; these settings shape the supervisord programs or the routing
# table, so a change to them needs `llamarig render` and a restart instead.
FIXED = ("port", "swap_port", "gpus", "engine", "tensor_split")


async def reload_model(m, name: str) -> dict:
    current = m.actor(name)
    if m.swaps.get(name, {}).get("state") in IN_PROGRESS:
        raise LlamarigError("reload_in_progress", f"model {name!r} is already being reloaded "
                            f"({m.swaps[name]['state']}); see GET /admin/units/{name}")
    refresh_model(m, name)
    m.estimates.pop(name, None)
    why = await _blue_green_blocker(m, name, current)
    record = {"model": name, "requested_at": time.time(), "from": current.unit.program}
    if why:
        current.send(Stop("reload: drain first", operator=False))
        current.send(Start("reload", operator=True))
        record.update(how="drain-first", why=why, state="restarting", to=current.unit.program)
    else:
        new = _other_slot(m, name)
        record.update(how="blue-green", why="the new server fits beside the old one", state="starting",
                      to=new.unit.program)
        asyncio.ensure_future(_swap(m, name, current, new, record))
    m.swaps[name] = record
    log.info("reload", extra={k: v for k, v in record.items() if k != "model"} | {"model": name})
    return record


def refresh_model(m, name: str) -> None:
    """Take the model's settings from the rig file as it is now."""
    try:
        fresh = load_rig(m.rig.source)
    except RigError as e:
        raise LlamarigError("rig_invalid", f"nothing was reloaded: {e.reason}") from None
    if name not in fresh.models:
        raise LlamarigError("rig_changed", f"model {name!r} is no longer in {m.rig.source}: render and restart "
                            "the compute API to remove it")
    old, new = m.rig.models[name], fresh.models[name]
    changed = [f for f in FIXED if getattr(old, f) != getattr(new, f)]
    if changed:
        raise LlamarigError("rig_changed", f"models.{name}: {', '.join(changed)} changed; that needs "
                            "`llamarig render` and `supervisorctl restart compute-api`, not a reload")
    m.rig.models[name] = new


def _other_slot(m, name: str):
    slots = m.slots[name]
    return slots[1 - m.active[name]] if len(slots) == 2 else None


async def _blue_green_blocker(m, name: str, current) -> str | None:
    """Why the reload cannot be blue-green, or None when it can."""
    other = _other_slot(m, name)
    if other is None:
        return f"models.{name}.swap_port is not set"
    if current.state not in SERVING:
        return f"it is {current.state.value}, not serving: there is nothing to keep up"
    if other.state != State.STOPPED:
        return f"its other server {other.unit.program} is {other.state.value}"
    est = m.estimate(current.unit)
    if est is None:
        return None  # the file cannot be read: the new server's verifier refuses it, the old one serves
    short = shortfall(est.per_gpu, await m.settle(), m.rig.lifecycle.vram_margin_mib * MIB)
    return f"no room for two servers: {short}" if short else None


async def _swap(m, name: str, old, new, record: dict) -> None:
    t = m.rig.timeouts
    await new.ask(Start(f"reload: starting beside {old.unit.program}", operator=True))
    state = await new.wait_until(SETTLED, t.model_wait_s + t.start_s + 60)
    if state not in SERVING:
        reason = new.reason
        new.send(Stop("reload failed: the old server keeps serving", drain=False, operator=True))
        record.update(state="failed", reason=f"{new.unit.program} {state.value}: {reason}; "
                      f"{old.unit.program} keeps serving", done_at=time.time())
        log.error("reload failed", extra={"model": name, "reason": record["reason"]})
        return
    m.active[name] = m.slots[name].index(new)
    record.update(state="draining", switched_at=time.time())
    log.info("routing switched", extra={"model": name, "program": new.unit.program, "port": new.unit.port})
    old.send(Stop(f"reload: replaced by {new.unit.program}", drain=True, operator=True))
    final = await old.wait_until(ENDED, t.drain_s + t.stop_s + 30)
    record.update(state="done" if final == State.STOPPED else "old_not_stopped",
                  reason=f"{old.unit.program}: {old.reason}", done_at=time.time())
    log.info("reload done", extra={"model": name, "state": record["state"], "reason": record["reason"]})
