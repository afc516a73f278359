"""Reload a model with its file and settings as they are now: blue-green when it can, drain-first
otherwise, and say which. The planner runs every step that decides something (`plan_reload`,
`hand_over`, `finish_restart`), one command at a time; the waits between steps run in tasks that
post the next step to the planner.

Blue-green: the model's other slot (its swap_port) starts beside the serving server; once it is
ready, the planner asks the old server to drain, on the condition that it still serves and no
operator stopped it, and only if it agrees switches routing to the new one. The old server serves
until then, so a reload that fails (a bad new file, a bad flag) leaves the model as it was. It
needs the new server's memory on top of the old one's, reserved until it settles. When the GPUs
lack it, the model has no swap_port, or the model is loading, the reload drains first, then
starts, in one step (refused with no_room when its new settings do not fit even in the memory
its own server frees). A model that does not run takes the new settings for its next start
(settings-only): a reload never starts what an operator stopped or the planner unloaded.

The new settings are the rig's only once the new server serves: until then they are the
reloading program's alone (`Planner.reloading`), so a failed reload's old server restarts with
the old ones. The record of the last reload of each model is on the manager (`swaps`) and served
at /admin/units/NAME.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from llamarig.backend.lifecycle.commands import Condition, Start, Stop
from llamarig.backend.lifecycle.states import ENDED, SERVING, SETTLED, State
from llamarig.backend.lifecycle.waves import shortfall
from llamarig.shared.errors import LlamarigError, RigError
from llamarig.shared.rig import Rig, load_rig

log = logging.getLogger("llamarig.swap")
IN_PROGRESS = ("starting", "restarting", "draining")
# A reload re-reads the rig file; these settings shape the supervisord programs or the routing
# table, so a change to them needs `llamarig render` and a restart instead.
FIXED = ("port", "swap_port", "gpus", "engine", "tensor_split")


@dataclass
class PlanReload:
    name: str
    reply: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Started:
    """A reload's new server settled (or failed): the planner's next step."""
    name: str
    old: object
    new: object


def _refuse_if_in_progress(p, name: str) -> None:
    if p.swaps.get(name, {}).get("state") in IN_PROGRESS:
        raise LlamarigError("reload_in_progress", f"model {name!r} is already being reloaded "
                            f"({p.swaps[name]['state']}); see GET /admin/units/{name}")


async def plan_reload(p, c: PlanReload) -> None:
    """The planner's reload decision, taken after the memory reading's wait on the state as it
    is then, in one step. A model that does not run takes the settings for its next start; one
    that does starts a server with them, its memory reserved until it settles, so that no load
    planned meanwhile counts on it."""
    current = p.actor(c.name)
    free = await p.settle(besides=current.unit)
    current = p.actor(c.name)  # (as it is after the wait)
    _refuse_if_in_progress(p, c.name)
    candidate = candidate_rig(p.rig, c.name)
    record = {"model": c.name, "requested_at": time.time(), "from": current.unit.program}
    if current.state in ENDED and not current.claims_memory:
        _settings_only(p, current, candidate, record)
    else:
        _refuse_if_switched(p, current.unit)
        why = _blue_green_blocker(p, c.name, current, candidate, free)
        if why:
            _drain_first(p, current, candidate, free, why, record)
        else:
            _blue_green(p, current, candidate, record)
    p.swaps[c.name] = record
    log.info("reload", extra={k: v for k, v in record.items() if k != "model"} | {"model": c.name})
    c.reply.set_result(record)


def _settings_only(p, current, candidate: Rig, record: dict) -> None:
    """Not running (stopped, unloaded, or failed with no restart due): nothing to restart; its
    next start, planned like any other, verifies the file and uses the new settings."""
    p.reloading[current.unit.program] = candidate
    p.commit_reload(current.unit)
    record.update(how="settings-only", why=f"it is {current.state.value}: its next start uses them", state="done",
                  to=current.unit.program, reason=current.reason, done_at=time.time())


def _drain_first(p, current, candidate: Rig, free: dict[int, int], why: str, record: dict) -> None:
    """Stop and start again in one step (nothing comes between), its new need reserved: it must
    fit in what is free besides the memory its own server frees."""
    need = p.memory.need(current.unit, candidate)
    held = p.memory.actual(current.unit)
    short = shortfall(need, {g: f + held.get(g, 0) for g, f in free.items()}, p.margin())
    if short:
        raise LlamarigError("no_room", f"{current.unit.name} with its new settings does not fit even once its own "
                            f"server stops ({short}): stop another model on its GPUs, then reload")
    p.reloading[current.unit.program] = candidate
    p.memory.reserve(current.unit, need)
    current.send(Stop("reload: drain first", operator=False))
    current.send(Start("reload", operator=True))
    record.update(how="drain-first", why=why, state="restarting", to=current.unit.program)
    asyncio.ensure_future(_watch_restart(p, record["model"], current))


def _blue_green(p, current, candidate: Rig, record: dict) -> None:
    new = _other_slot(p, record["model"])
    p.reloading[new.unit.program] = candidate
    p.memory.reserve(new.unit, p.memory.need(new.unit, candidate))
    record.update(how="blue-green", why="the new server fits beside the old one", state="starting",
                  to=new.unit.program)
    asyncio.ensure_future(_start_beside(p, record["model"], current, new))


def _refuse_if_switched(p, unit) -> None:
    """A reload starts a server: not on a GPU lent to a script command or switched to script work."""
    for gpu in unit.gpus:
        if gpu in p.leases:
            raise LlamarigError("gpu_lent", f"GPU {gpu} is lent to {p.leases[gpu].holder} until that task ends: "
                                f"reload {unit.name} afterwards")
        if gpu in p.switched:
            raise LlamarigError("gpu_switched", f"GPU {gpu} holds script work ({p.modes.gpus[gpu].holder}): "
                                f"reload {unit.name} once it is back (a request for it brings it back)")


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


def _other_slot(p, name: str):
    slots = p.slots[name]
    return slots[1 - p.active[name]] if len(slots) == 2 else None


def _blue_green_blocker(p, name: str, current, candidate: Rig, free: dict[int, int]) -> str | None:
    """Why the reload cannot be blue-green, or None when it can."""
    other = _other_slot(p, name)
    if other is None:
        return f"models.{name}.swap_port is not set"
    if current.state not in SERVING:
        return f"it is {current.state.value}, not serving: there is nothing to keep up"
    if other.state != State.STOPPED:
        return f"its other server {other.unit.program} is {other.state.value}"
    est = p.estimate(current.unit, candidate)
    if est is None:
        return None  # the file cannot be read: the new server's verifier refuses it, the old one serves
    short = shortfall(est.per_gpu, free, p.margin())
    return f"no room for two servers: {short}" if short else None


async def _start_beside(p, name: str, old, new) -> None:
    await new.ask(Start(f"reload: starting beside {old.unit.program}", operator=True))
    await new.wait_until(SETTLED, p.rig.timeouts.load_budget_s)
    p.post(Started(name, old, new))


def hand_over(p, c: Started) -> None:
    """The planner's switch: the new server must serve now (not when its wait ended: it may
    have crashed since), the old one drains only if it still serves and no operator stopped
    it; routing moves in the same step, so no stop can fall between the two."""
    record, new, old = p.swaps[c.name], c.new, c.old
    p.memory.release(new.unit)  # it settled: the reading holds what it took
    if old.operator_held:  # (an operator's stop reaches both servers: the new one is stopped already)
        _abandon(p, new, f"{old.unit.program} was stopped during the reload ({old.reason}): the new server "
                 "is stopped too", "cancelled")
        return
    if new.state not in SERVING:
        _abandon(p, new, f"{new.unit.program} {new.state.value}: {new.reason}; {old.unit.program} keeps serving",
                 "failed")
        return
    stop = Stop(f"reload: replaced by {new.unit.program}", drain=True, operator=True,
                conditions=frozenset({Condition.SERVING}))
    old.send(stop)  # handled whole before send returns: the reply is set
    if not stop.reply.result():
        _abandon(p, new, f"{old.unit.program} was stopped during the reload ({old.reason}): the new server "
                 "is stopped too", "cancelled")
        return
    p.active[c.name] = p.slots[c.name].index(new)
    p.commit_reload(new.unit)
    record.update(state="draining", switched_at=time.time())
    log.info("routing switched", extra={"model": c.name, "program": new.unit.program, "port": new.unit.port})
    asyncio.ensure_future(_watch_drain(p, c.name, old))


def _abandon(p, new, reason: str, state: str) -> None:
    new.send(Stop(f"reload {state}", drain=False, operator=True))
    p.keep_settings(new.unit)
    p.swaps[new.unit.name].update(state=state, reason=reason, done_at=time.time())
    log.error("reload " + state, extra={"model": new.unit.name, "reason": reason})


async def _watch_drain(p, name: str, old) -> None:
    final = await old.wait_until(ENDED, p.rig.timeouts.stop_budget_s)
    p.swaps[name].update(state="done" if final == State.STOPPED else "old_not_stopped",
                         reason=f"{old.unit.program}: {old.reason}", done_at=time.time())
    log.info("reload done", extra={"model": name, "state": p.swaps[name]["state"], "reason": p.swaps[name]["reason"]})


@dataclass
class Restarted:
    """A drain-first reload's restart settled: the planner commits or reverts its settings."""
    name: str
    actor: object


async def _watch_restart(p, name: str, actor) -> None:
    await actor.wait_until(frozenset({State.VERIFYING, State.STARTING}), p.rig.timeouts.stop_budget_s)
    await actor.wait_until(SETTLED, p.rig.timeouts.load_budget_s)
    p.post(Restarted(name, actor))


def finish_restart(p, c: Restarted) -> None:
    record = p.swaps[c.name]
    p.memory.release(c.actor.unit)
    if c.actor.state in SERVING:  # as it is now, not when the wait ended
        p.commit_reload(c.actor.unit)
        record.update(state="done", reason=c.actor.reason, done_at=time.time())
    else:
        p.keep_settings(c.actor.unit)  # its restarts use the settings that worked
        record.update(state="failed", reason=f"{c.actor.unit.program} {c.actor.state.value}: {c.actor.reason}; "
                      "the earlier settings are kept", done_at=time.time())
    log.info("reload " + record["state"], extra={"model": c.name, "reason": record["reason"]})
