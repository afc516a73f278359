"""Reload a model with its file and settings as they are now: blue-green when it can, drain-first
otherwise, and say which. The planner runs every step that decides something (`plan_reload`,
`hand_over`, `finish_restart`), one command at a time; the waits between steps run in tasks that
post the next step to the planner.

Blue-green: the model's other slot (its swap_port) starts beside the serving server; once it is
ready, the planner asks the old server to drain, on the condition that it still serves and no
operator stopped it, and only if it agrees switches routing to the new one. The old server serves
until then, so a reload that fails (a bad new file, a bad flag) leaves the model as it was. It
needs the new server's memory on top of the old one's. When the GPUs lack it, the model has no
swap_port, or the model is not serving, the reload drains first, then starts.

The new settings are the rig's only once the new server serves: until then they are the
reloading program's alone (`Manager.reloading`), so a failed reload's old server restarts with
the old ones. The record of the last reload of each model is on the manager (`swaps`) and served
at /admin/units/NAME.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from llamarig.backend.lifecycle.commands import Condition, Start, Stop
from llamarig.backend.lifecycle.states import ENDED, SERVING, SETTLED, State
from llamarig.backend.lifecycle.waves import shortfall
from llamarig.shared.errors import LlamarigError, RigError
from llamarig.shared.rig import Rig, load_rig

log = logging.getLogger("llamarig.swap")
MIB = 1024 * 1024
IN_PROGRESS = ("starting", "restarting", "draining")
# A reload re-reads the rig file; these settings shape the supervisord programs or the routing
# table, so a change to them needs `llamarig render` and a restart instead.
FIXED = ("port", "swap_port", "gpus", "engine", "tensor_split")


@dataclass
class Started:
    """A reload's new server settled (or failed): the planner's next step."""
    name: str
    old: object
    new: object
    ok: bool


def _refuse_if_in_progress(m, name: str) -> None:
    if m.swaps.get(name, {}).get("state") in IN_PROGRESS:
        raise LlamarigError("reload_in_progress", f"model {name!r} is already being reloaded "
                            f"({m.swaps[name]['state']}); see GET /admin/units/{name}")


async def plan_reload(m, name: str) -> dict:
    """The planner's reload decision. Nothing else runs on the planner meanwhile, so two reloads
    (or a reload and a load) never claim the same free memory."""
    current = m.actor(name)
    _refuse_if_in_progress(m, name)
    candidate = candidate_rig(m.rig, name)
    why = await _blue_green_blocker(m, name, current, candidate)
    record = {"model": name, "requested_at": time.time(), "from": current.unit.program}
    if why:
        m.reloading[current.unit.program] = candidate
        current.send(Stop("reload: drain first", operator=False))
        current.send(Start("reload", operator=True))
        record.update(how="drain-first", why=why, state="restarting", to=current.unit.program)
        asyncio.ensure_future(_watch_restart(m, name, current))
    else:
        new = _other_slot(m, name)
        m.reloading[new.unit.program] = candidate
        record.update(how="blue-green", why="the new server fits beside the old one", state="starting",
                      to=new.unit.program)
        asyncio.ensure_future(_start_beside(m, name, current, new))
    m.swaps[name] = record
    log.info("reload", extra={k: v for k, v in record.items() if k != "model"} | {"model": name})
    return record


def candidate_rig(rig: Rig, name: str) -> Rig:
    """The running rig with this model's settings as the file has them now. It carries the
    file's hash only when nothing else in the file changed, so that launch plans made from it
    claim to match the file only when they do."""
    try:
        fresh = load_rig(rig.source)
    except RigError as e:
        raise LlamarigError("rig_invalid", f"nothing was reloaded: {e.reason}") from None
    if name not in fresh.models:
        raise LlamarigError("rig_changed", f"model {name!r} is no longer in {rig.source}: render and restart "
                            "the compute API to remove it")
    changed = [f for f in FIXED if getattr(rig.models[name], f) != getattr(fresh.models[name], f)]
    if changed:
        raise LlamarigError("rig_changed", f"models.{name}: {', '.join(changed)} changed; that needs "
                            "`llamarig render` and `supervisorctl restart compute-api`, not a reload")
    candidate = rig.model_copy(update={"models": {**rig.models, name: fresh.models[name]}})
    same = candidate.model_dump() == fresh.model_dump()
    return candidate.model_copy(update={"source_sha256": fresh.source_sha256 if same else ""})


def _other_slot(m, name: str):
    slots = m.slots[name]
    return slots[1 - m.active[name]] if len(slots) == 2 else None


async def _blue_green_blocker(m, name: str, current, candidate: Rig) -> str | None:
    """Why the reload cannot be blue-green, or None when it can."""
    other = _other_slot(m, name)
    if other is None:
        return f"models.{name}.swap_port is not set"
    if current.state not in SERVING:
        return f"it is {current.state.value}, not serving: there is nothing to keep up"
    if other.state != State.STOPPED:
        return f"its other server {other.unit.program} is {other.state.value}"
    est = m.estimate(current.unit, candidate)
    if est is None:
        return None  # the file cannot be read: the new server's verifier refuses it, the old one serves
    short = shortfall(est.per_gpu, await m.settle(), m.rig.lifecycle.vram_margin_mib * MIB)
    return f"no room for two servers: {short}" if short else None


async def _start_beside(m, name: str, old, new) -> None:
    await new.ask(Start(f"reload: starting beside {old.unit.program}", operator=True))
    state = await new.wait_until(SETTLED, m.rig.timeouts.load_budget_s)
    m.post(Started(name, old, new, state in SERVING))


def hand_over(m, c: Started) -> None:
    """The planner's switch: the old server drains only if it still serves and no operator
    stopped it; routing moves in the same step, so no stop can fall between the two."""
    record, new, old = m.swaps[c.name], c.new, c.old
    if not c.ok:
        _abandon(m, new, f"{new.unit.program} {new.state.value}: {new.reason}; {old.unit.program} keeps serving",
                 "failed")
        return
    stop = Stop(f"reload: replaced by {new.unit.program}", drain=True, operator=True,
                conditions=frozenset({Condition.SERVING}))
    old.send(stop)  # handled whole before send returns: the reply is set
    if not stop.reply.result():
        _abandon(m, new, f"{old.unit.program} was stopped during the reload ({old.reason}): the new server "
                 "is stopped too", "cancelled")
        return
    m.active[c.name] = m.slots[c.name].index(new)
    m.commit_reload(new.unit)
    record.update(state="draining", switched_at=time.time())
    log.info("routing switched", extra={"model": c.name, "program": new.unit.program, "port": new.unit.port})
    asyncio.ensure_future(_watch_drain(m, c.name, old))


def _abandon(m, new, reason: str, state: str) -> None:
    new.send(Stop(f"reload {state}", drain=False, operator=True))
    m.keep_settings(new.unit)
    m.swaps[new.unit.name].update(state=state, reason=reason, done_at=time.time())
    log.error("reload " + state, extra={"model": new.unit.name, "reason": reason})


async def _watch_drain(m, name: str, old) -> None:
    final = await old.wait_until(ENDED, m.rig.timeouts.stop_budget_s)
    m.swaps[name].update(state="done" if final == State.STOPPED else "old_not_stopped",
                         reason=f"{old.unit.program}: {old.reason}", done_at=time.time())
    log.info("reload done", extra={"model": name, "state": m.swaps[name]["state"], "reason": m.swaps[name]["reason"]})


@dataclass
class Restarted:
    """A drain-first reload's restart settled: the planner commits or reverts its settings."""
    name: str
    actor: object
    ok: bool


async def _watch_restart(m, name: str, actor) -> None:
    await actor.wait_until(frozenset({State.VERIFYING, State.STARTING}), m.rig.timeouts.stop_budget_s)
    state = await actor.wait_until(SETTLED, m.rig.timeouts.load_budget_s)
    m.post(Restarted(name, actor, state in SERVING))


def finish_restart(m, c: Restarted) -> None:
    record = m.swaps[c.name]
    if c.ok:
        m.commit_reload(c.actor.unit)
        record.update(state="done", reason=c.actor.reason, done_at=time.time())
    else:
        m.keep_settings(c.actor.unit)  # its restarts use the settings that worked
        record.update(state="failed", reason=f"{c.actor.unit.program} {c.actor.state.value}: {c.actor.reason}; "
                      "the earlier settings are kept", done_at=time.time())
    log.info("reload " + record["state"], extra={"model": c.name, "reason": record["reason"]})
