"""An operator's start and reset (`llamarig start|reset`, POST /admin/units/NAME/start|reset)
go through the planner like every other decision on a GPU: refused while a GPU of the unit is
lent to a script command (it would load beside a command that holds the whole GPU); on a GPU
switched to script work, that work ends first (as a request for the LLM would end it) and then
the unit starts. Stops need no check: they only free GPUs."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llamarig.backend.lifecycle import switch
from llamarig.backend.lifecycle.commands import Reset, Start
from llamarig.shared.errors import LlamarigError

REPLY_S = 10.0  # the planner answers before any long wait; past this it is stuck behind one


@dataclass
class OperatorStart:
    name: str
    reset: bool = False
    reply: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


async def start(p, c: OperatorStart) -> None:
    actor = p.actor(c.name)
    lent = [g for g in actor.unit.gpus if g in p.leases]
    if lent:
        c.reply.set_exception(LlamarigError("gpu_lent", f"GPU {lent[0]} is lent to {p.leases[lent[0]].holder} "
                                            f"until that task ends: start {c.name} afterwards (or take the lease "
                                            "back: DELETE /admin/gpus/lease/ID)"))
        return
    c.reply.set_result(True)
    if actor.unit.is_llm and any(g in p.switched for g in actor.unit.gpus):
        async with p.switching():  # (its script work ends first, then the GPU comes back)
            if not await switch.reclaim(p, actor.unit):
                return  # lent meanwhile: the operator starts it once the lease ends
    actor.send(Reset() if c.reset else Start("operator start", operator=True))


async def ask(p, name: str, reset: bool = False) -> None:
    """Post the command and wait for the planner's answer (LlamarigError when refused)."""
    command = OperatorStart(name, reset)
    p.post(command)
    try:
        await asyncio.wait_for(asyncio.shield(command.reply), REPLY_S)
    except asyncio.TimeoutError:
        raise LlamarigError("planner_busy", f"the planner did not take the {('reset' if reset else 'start')} of "
                            f"{name} within {REPLY_S:g} s (a load or a switch holds it): try again") from None
