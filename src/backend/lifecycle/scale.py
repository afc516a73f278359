"""A script service (Whisper on whisper.gpus, an embeddings model with placements) scales out
with its backlog and back in as it drains.

Routing: a request goes to the live placement (serving or loading) with the least outstanding
work (requests in flight plus waiting); one with none takes it at once. When every live
placement has work, the request waits on a placement not yet started that the planner could
start now, which places it (switch.place): while N requests are outstanding, up to
min(N, placements) GPUs serve. Each placement stops after lifecycle.script_idle_s without a
request, and its GPU goes back to its LLMs.

Which GPU a scale-out takes, in order: one in script mode or idle (nothing to stop), then one
whose switchable LLMs are all idle; of those, the cooler first, and never one at or past
thermal.target_c (thermal.py). Never one whose LLMs serve, load or are not switchable,
nor one given back to its LLMs less than lifecycle.switch_hold_s ago (the anti-ping-pong rule:
steady traffic on both sides keeps each side's GPUs). The first placement of a service, when
none is live, still follows switch.place's order, which may drain serving LLMs.

Reads only; the actor decides on the Acquire sent to the placement chosen, the planner on the
Load that follows (the Start carries Condition.WAITING)."""
from __future__ import annotations

import time

from llamarig.backend.lifecycle.gpu_modes import Mode
from llamarig.backend.lifecycle.states import LOADING, SERVING, State


def outstanding(actor) -> int:
    return len(actor.leases) + len(actor.waiters)


def live(actor) -> bool:
    return actor.state in SERVING or actor.state in LOADING


def route(p, name: str):
    """The placement a request for the script service `name` goes to."""
    slots = p.slots[name]
    running = [a for a in slots if live(a)]
    if not running:
        return p.actors[name]  # the active placement: the request waits there, the planner places it
    least = min(running, key=outstanding)
    if outstanding(least) == 0:
        return least
    return spare(p, slots) or least


def spare(p, slots: list):
    """The stopped placement a scale-out would start now, in the order of the module's rule."""
    ranked = [(r, p.thermal.warmth(a.unit.gpus[0]), i) for i, a in enumerate(slots) if (r := rank(p, a)) is not None]
    return slots[min(ranked)[2]] if ranked else None


NOTHING_TO_STOP, IDLE_LLMS = 0, 1


def rank(p, placement) -> int | None:
    """NOTHING_TO_STOP, IDLE_LLMS, or None: not for a scale-out now."""
    if placement.state != State.STOPPED or placement.operator_held or placement.refused:
        return None
    gpu = placement.unit.gpus[0]
    mode = p.modes.mode(gpu)
    if gpu in p.leases or mode in (Mode.TO_LLM, Mode.TO_SCRIPT) or gpu in p.memory.reserved_gpus() \
            or p.thermal.hot(gpu):
        return None
    if mode in (Mode.SCRIPT, Mode.IDLE):
        return NOTHING_TO_STOP
    held = time.monotonic() - p.given_back_at.get(gpu, float("-inf")) < p.rig.lifecycle.switch_hold_s
    llms = [a for a in p.all_actors() if a.unit.is_llm and gpu in a.unit.gpus]
    if held or not all(a.unit.switchable and a.state not in LOADING and not outstanding(a) for a in llms):
        return None
    return IDLE_LLMS


def scaling_out(p, unit) -> bool:
    """Whether a load asked for this placement adds it beside a live one of its service."""
    return any(live(a) for a in p.slots[unit.name] if a.unit is not unit)
