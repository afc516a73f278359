"""An operator's start and reset (`llamarig start|reset`, POST /admin/units/NAME/start|reset)
go through the planner like every other decision on a GPU: refused while a GPU of the unit is
lent to a script command (it would load beside a command that holds the whole GPU); on a GPU
switched to script work, that work ends first (as a request for the LLM would end it) and then
the unit starts; a stopped unit starts only where its memory fits, idle models evicted for it as
for a load (409 no_room otherwise), its memory reserved while it loads. Stops need no check:
they only free GPUs."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from llamarig.backend.lifecycle import switch
from llamarig.backend.lifecycle.commands import Reset, Start
from llamarig.backend.lifecycle.states import ENDED, State
from llamarig.backend.lifecycle.waves import shortfall
from llamarig.shared.errors import LlamarigError

log = logging.getLogger("llamarig.planner")
REPLY_S = 10.0  # the planner answers before any long wait; past this it is stuck behind one


@dataclass
class OperatorStart:
    name: str
    reset: bool = False
    seen: tuple[object, int] | None = None  # (the actor, its operator stops) when asked: a later stop wins
    reply: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


async def start(p, c: OperatorStart) -> None:
    free = await p.settle(besides=p.actor(c.name).unit)  # first: what follows reads the state after it
    actor = p.actor(c.name)
    after = c.seen[1] if c.seen and c.seen[0] is actor else None  # (a reload swapped the active slot since)
    command = Reset(after) if c.reset else Start("operator start", operator=True, after_stops=after)
    lent = [g for g in actor.unit.gpus if g in p.leases]
    if lent:
        c.reply.set_exception(LlamarigError("gpu_lent", f"GPU {lent[0]} is lent to {p.leases[lent[0]].holder} "
                                            f"until that task ends: start {c.name} afterwards (or take the lease "
                                            "back: DELETE /admin/gpus/lease/ID)"))
        return
    if actor.unit.is_llm and any(g in p.switched for g in actor.unit.gpus):
        c.reply.set_result(True)
        async with p.switching():  # (its script work ends first, then the GPU comes back with its memory)
            if not await switch.reclaim(p, actor.unit):
                return  # (lent meanwhile: the operator starts it once the lease ends)
        if actor.state in ENDED and not actor.claims_memory:  # (the give-back started only what fit)
            await _start_in_room(p, c, actor, command, await p.settle(besides=actor.unit))
        else:
            actor.send(command)
        return
    if actor.state not in ENDED or actor.claims_memory or (c.reset and actor.state != State.FAILED):
        c.reply.set_result(True)
        actor.send(command)  # (running or starting already, or a reset that starts nothing: no memory to plan)
        return
    await _start_in_room(p, c, actor, command, free)


async def _start_in_room(p, c: OperatorStart, actor, command, free: dict[int, int]) -> None:
    """A stopped unit starts only where it fits, idle models evicted for it as for a load;
    else 409 no_room, saying what is short."""
    room = p.make_room(actor.unit, free)
    if room.short:
        refused = LlamarigError("no_room", f"{c.name} does not fit: {room.short}; every other model there is "
                                "busy, loading or warm: stop one first")
        if c.reply.done():  # (accepted already, before a give-back: said in the log instead)
            log.warning("operator start not done", extra={"model": c.name, "reason": refused.reason})
        else:
            c.reply.set_exception(refused)
        return
    if not c.reply.done():
        c.reply.set_result(True)
    if room.stopping is not None:
        await p.wait(room.stopping)
        short = shortfall(room.need, await p.settle(besides=actor.unit), p.margin())
        if short:  # (an eviction's stop failed, say: its memory is still held)
            p.memory.release(actor.unit)
            log.warning("operator start not done: the memory is still short after the evictions",
                        extra={"model": c.name, "short": short})
            return
    p.start_reserved(actor, room.need, command)


async def ask(p, name: str, reset: bool = False) -> None:
    """Post the command and wait for the planner's answer (LlamarigError when refused)."""
    actor = p.actor(name)
    command = OperatorStart(name, reset, (actor, actor.operator_stops))
    p.post(command)
    try:
        await asyncio.wait_for(asyncio.shield(command.reply), REPLY_S)
    except asyncio.TimeoutError:
        raise LlamarigError("planner_busy", f"the planner did not take the {('reset' if reset else 'start')} of "
                            f"{name} within {REPLY_S:g} s (a load or a switch holds it): try again") from None
