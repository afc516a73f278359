"""GPU switches, run by the planner: a GPU's LLM gives way to script work (Whisper placed on
whisper.gpus, an embeddings model on its placements) and gets its GPU back once that work is
idle, or once its own requests have waited lifecycle.llm_wait_max_s.

Placing the service: a GPU already in script mode with room first, then any placement whose GPU
has room (no switch); else a switchable GPU
whose LLMs are idle; else one whose LLMs serve (they drain, bounded by drain_s); never a GPU
whose LLM is loading, nor one of a model that is not switchable (the brain). The switch stops
the LLMs, waits until the memory reading shows the service's need free, routes the waiting
requests to the placement and starts it. A failed switch gives the GPU back to its LLMs with
the reason. Every mode change is in gpu_modes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from llamarig.backend.lifecycle import scale
from llamarig.backend.lifecycle.commands import Condition, MoveWaiters, Refuse, Start, Stop
from llamarig.backend.lifecycle.gpu_modes import TRANSITIONAL, Mode
from llamarig.backend.lifecycle.states import ENDED, LOADING, SERVING, SETTLED, State
from llamarig.backend.lifecycle.waves import shortfall

log = logging.getLogger("llamarig.planner")



@dataclass
class Restore:
    """A GPU's script work is ending (its placement drains, stops or failed): give the GPU back
    to its LLMs once none of its script services serves or loads."""
    gpu: int


@dataclass
class Adopted:
    """The compute API started while `placement` ran or loaded on `gpu` (cut mid-switch, or in
    script mode): script mode once it serves, the GPU back to its LLMs if it fails."""
    placement: object
    gpu: int


@dataclass
class Stuck:
    """`gpu` is mid-switch and no switch runs: one ended part-way (an error). Give it back."""
    gpu: int


def llms_on(p, gpu: int) -> list:
    """The LLMs pinned to `gpu` (the active slot of each model)."""
    return [a for a in p.actors.values() if a.unit.is_llm and gpu in a.unit.gpus]


def script_on(p, gpu: int) -> list:
    """The placements of every script service on `gpu`."""
    return [a for slots in p.slots.values() for a in slots if a.unit.script and a.unit.gpus == (gpu,)]


async def place(p, unit) -> None:
    """Requests wait on `unit`, a placement of a script service: put the service on a GPU, or
    beside its live placements (scale.py)."""
    name, slots = unit.name, p.slots[unit.name]
    i = next(i for i, a in enumerate(slots) if a.unit is unit)
    free = await p.settle()  # first: every decision below reads the state after this wait
    if scale.scaling_out(p, unit):
        await _scale_out(p, name, i, free)
        return
    if p.active[name] != i and slots[i].waiters:  # routed there while another lived; none does now
        slots[p.active[name]].send(MoveWaiters(slots[i]))
        p.active[name] = i
    current = p.actors[name]
    if current.state != State.STOPPED or not current.waiters:
        return  # a skip only: the start carries its conditions
    roomy = [i for i, a in enumerate(slots) if _may_place(p, a.unit.gpus[0])
             and not shortfall(p.memory.need(a.unit), free, p.margin())]
    if roomy:  # a GPU already in script mode first, then the order of preference, the cooler first
        i = min(roomy, key=lambda i: (p.modes.mode(slots[i].unit.gpus[0]) != Mode.SCRIPT,
                                      p.thermal.warmth(slots[i].unit.gpus[0])))
        await _start_placement(p, name, i, f"room on GPU {slots[i].unit.gpus[0]}")
        return
    choice = _switch_candidate(p, slots)
    if choice is None:
        hot = [a.unit.gpus[0] for a in slots if p.thermal.hot(a.unit.gpus[0])]
        warm = f"; GPUs {', '.join(map(str, hot))} are at or past thermal.target_c" if hot else ""
        current.send(Refuse(f"{name}: no placement has room and no GPU can be switched to it (its LLMs are "
                            f"loading, or not switchable){warm}", permanent=False))
        return
    await _switch_to_script(p, name, choice)


def _may_place(p, gpu: int) -> bool:
    """Not mid-switch (another job's), not lent, no load's memory reserved there, not hot."""
    return p.modes.mode(gpu) not in TRANSITIONAL and gpu not in p.leases and gpu not in p.memory.reserved_gpus() \
        and not p.thermal.hot(gpu)


async def _scale_out(p, name: str, i: int, free: dict[int, int]) -> None:
    """Start placement i beside the live ones (scale.py's rule); when it cannot start now, its
    waiting requests go to the live placement with the least outstanding work."""
    placement = p.slots[name][i]
    if placement.state != State.STOPPED or not placement.waiters:
        return  # a skip only: the start carries Condition.WAITING
    rank, gpu = scale.rank(p, placement), placement.unit.gpus[0]
    if rank is not None:
        if not shortfall(p.memory.need(placement.unit), free, p.margin()):
            await _start_placement(p, name, i, f"scale-out: room on GPU {gpu}", route=False)
            return
        if rank == scale.IDLE_LLMS:
            if await clear_gpu(p, gpu, name, f"{name}: scale-out onto idle LLMs", p.memory.need(placement.unit)):
                await _start_placement(p, name, i, f"scale-out: GPU {gpu} switched from "
                                       f"{', '.join(p.switched[gpu]) or 'nothing'}", route=False)
                return
    running = [a for a in p.slots[name] if scale.live(a)]
    if running:
        placement.send(MoveWaiters(min(running, key=scale.outstanding)))
    else:
        placement.send(Refuse(f"{name}: GPU {gpu} cannot take it now and no placement serves", permanent=False))


def _switch_candidate(p, slots) -> int | None:
    """The placement to switch to: idle LLMs first, then serving ones, the cooler GPU first; None
    when none may go."""
    serving = None
    for i in sorted(range(len(slots)), key=lambda i: p.thermal.warmth(slots[i].unit.gpus[0])):
        gpu = slots[i].unit.gpus[0]
        llms = llms_on(p, gpu)
        if p.modes.mode(gpu) not in (Mode.LLM, Mode.IDLE) or not all(a.unit.switchable for a in llms) \
                or gpu in p.leases or gpu in p.memory.reserved_gpus() or p.thermal.hot(gpu):
            continue
        if any(a.state in LOADING for a in llms):
            continue
        if all(not a.inflight and not a.waiters for a in llms):
            return i
        serving = i if serving is None else serving
    return serving


async def _switch_to_script(p, name: str, i: int) -> None:
    placement = p.slots[name][i]
    gpu = placement.unit.gpus[0]
    why = f"{name}: requests wait and no placement has room"
    if not await clear_gpu(p, gpu, name, why, p.memory.need(placement.unit)):
        placement.send(Refuse(f"{name}: GPU {gpu} did not free its memory", permanent=False))
        return
    await _start_placement(p, name, i, f"GPU {gpu} switched from {', '.join(p.switched[gpu]) or 'nothing'}")


async def clear_gpu(p, gpu: int, holder: str, why: str, need: dict[int, int]) -> bool:
    """Stop `gpu`'s LLMs (drained) for `holder` and wait until `need` is free. False: the memory
    did not come back within the switch's time, and the GPU went back to its LLMs."""
    llms = llms_on(p, gpu)
    # Only those serving or loading come back: one unloaded on demand, failed or held by an operator stays so.
    p.switched[gpu] = [a.unit.name for a in llms if a.state not in ENDED]
    p.modes.set(gpu, Mode.TO_SCRIPT, holder, f"{why}; stopping {', '.join(p.switched[gpu]) or 'nothing'}")
    for a in llms:
        a.send(Stop(f"GPU {gpu} switched to {holder}", drain=True))
    await p.wait(asyncio.gather(*(a.wait_until(ENDED, p.modes.time_left(gpu)) for a in llms)))
    if (await _memory_back(p, gpu, need, p.margin()))[0]:
        return True
    await back_to_llm(p, gpu, f"the memory of GPU {gpu} did not come back within the switch's time")
    return False


async def _memory_back(p, gpu: int, need: dict[int, int], margin: int) -> tuple[bool, dict[int, int]]:
    """(whether `need` is free within the switch's time, the planned free memory then)."""
    deadline = time.monotonic() + p.modes.time_left(gpu)
    while True:
        free = await p.settle()
        if not shortfall(need, free, margin):
            return True, free
        if time.monotonic() >= deadline:
            return False, free


async def _start_placement(p, name: str, i: int, why: str, route: bool = True) -> None:
    """route: the service's requests wait here from now on (a first placement; a scale-out's
    keep theirs: scale.route spreads them)."""
    slots, gpu = p.slots[name], p.slots[name][i].unit.gpus[0]
    current = p.actors[name]
    if p.thermal.hot(gpu):  # (planned while it was cool; it got hot during the switch's waits)
        slots[i].send(Refuse(f"{name}: GPU {gpu} passed thermal.target_c before the placement started",
                             permanent=False))
        if gpu in p.switched:
            await back_to_llm(p, gpu, f"GPU {gpu} got hot before {name} could start on it")
        return
    if route and current is not slots[i]:
        current.send(MoveWaiters(slots[i]))  # handled whole: the requests wait there from now on
        p.active[name] = i
    placement = slots[i]
    if p.modes.mode(gpu) == Mode.IDLE:  # nothing to give back afterwards
        p.switched[gpu] = []
        p.modes.set(gpu, Mode.TO_SCRIPT, name, f"{name}: requests wait; GPU {gpu} is free")
    start = Start(f"placed on GPU {gpu}: {why}", conditions=frozenset({Condition.WAITING, Condition.NOT_HELD}))
    if not await placement.ask(start):
        if gpu in p.switched:
            await back_to_llm(p, gpu, f"{name}: nobody waits for it any more")
        return
    state = await p.wait(placement.wait_until(SETTLED, p.rig.timeouts.load_budget_s))
    if state in SERVING:
        if gpu in p.switched:
            p.modes.set(gpu, Mode.SCRIPT, name, f"{name} ready on GPU {gpu}")
        return
    reason = f"{name} on GPU {gpu} {state.value}: {placement.reason}"
    placement.send(Stop(f"placement failed: {reason}", drain=False))
    if gpu in p.switched:
        await back_to_llm(p, gpu, reason)


async def adopted(p, c: Adopted) -> None:
    name = c.placement.unit.name
    state = await p.wait(c.placement.wait_until(SETTLED, p.rig.timeouts.load_budget_s))
    if state in SERVING:
        p.modes.set(c.gpu, Mode.SCRIPT, name, "adopted at the compute API's start")
        return
    reason = f"{name} on GPU {c.gpu} adopted at the compute API's start, then {state.value}: {c.placement.reason}"
    c.placement.send(Stop(f"placement failed: {reason}", drain=False))
    await back_to_llm(p, c.gpu, reason)


async def back_to_llm(p, gpu: int, reason: str) -> None:
    """Give the GPU back to the LLMs the switch stopped (and those asked for meanwhile): once its
    script services have exited and the memory reading shows the first one's need free, start
    each that fits, and wait for them."""
    names = p.switched.get(gpu, [])
    p.modes.set(gpu, Mode.TO_LLM, ", ".join(names), reason)
    for placement in script_on(p, gpu):  # (a failed one would restart itself onto the LLMs' memory)
        if placement.state != State.STOPPED:
            placement.send(Stop(f"GPU {gpu} goes back to its LLMs", drain=True))
    await p.wait(asyncio.gather(*(a.wait_until(frozenset({State.STOPPED}), p.modes.time_left(gpu))
                                  for a in script_on(p, gpu))))
    actors = [p.actors[n] for n in names]
    # The first LLM's memory is waited for (freed VRAM shows late); the others come back if they
    # fit beside it (one asked for while the GPU was switched may not).
    first = p.memory.need(actors[0].unit).get(gpu, 0) if actors else 0
    _, free = await _memory_back(p, gpu, {gpu: first}, p.margin())
    started = _start_those_that_fit(p, gpu, actors, free, reason)
    await p.wait(asyncio.gather(*(a.wait_until(SETTLED, p.modes.time_left(gpu)) for a in started)))
    p.switched.pop(gpu, None)
    p.given_back_at[gpu] = time.monotonic()  # (scale.py: held by its LLMs for lifecycle.switch_hold_s)
    p.modes.set(gpu, Mode.LLM if names else Mode.IDLE, ", ".join(names), f"back from script work: {reason}")


def _start_those_that_fit(p, gpu: int, actors: list, free: dict[int, int], reason: str) -> list:
    """Start the LLMs coming back, in order, each only where it fits in what is free now (a
    script service whose stop failed still holds its memory, say); the others stay stopped and
    their waiters are told why."""
    started = []
    for a in actors:
        need = p.memory.need(a.unit)
        short = shortfall(need, free, p.margin())
        if short:
            log.warning("not given back: no room", extra={"model": a.unit.name, "gpu": gpu, "short": short})
            a.send(Refuse(f"GPU {gpu} given back without room for {a.unit.name}: {short}", permanent=False))
            continue
        # (an operator's stop since the switch holds: NOT_HELD)
        a.send(Start(f"GPU {gpu} given back: {reason}", conditions=frozenset({Condition.NOT_HELD})))
        started.append(a)
        for g, n in need.items():
            free[g] = free.get(g, 0) - n
    return started


async def restore(p, c: Restore) -> None:
    busy = [a for a in script_on(p, c.gpu) if a.state in SERVING or a.state in LOADING]
    if c.gpu in p.switched and p.modes.mode(c.gpu) == Mode.SCRIPT and not busy:
        await back_to_llm(p, c.gpu, "its script work ended")


async def unstick(p, c: Stuck) -> None:
    p._unsticking.discard(c.gpu)
    if p.modes.mode(c.gpu) not in TRANSITIONAL:
        return  # (its switch went on after all: boot's adoption, say)
    for placement in script_on(p, c.gpu):
        placement.send(Stop(f"GPU {c.gpu}: its switch ended part-way", drain=True))
    if c.gpu in p.leases:  # (lent: the lease ends as if returned)
        del p.leases[c.gpu]
    await back_to_llm(p, c.gpu, "its switch ended part-way (see the planner's error before this)")


async def reclaim(p, unit) -> bool:
    """Requests wait for an LLM whose GPU holds script work: end that work (at once when idle,
    else after llm_wait_max_s, drained) and give the GPU back. False: the GPU is lent (a lease
    taken while this waited for its turn), and the unit's waiters are refused."""
    lent = [g for g in unit.gpus if g in p.leases]
    if lent:
        p.actors[unit.name].send(Refuse(f"GPU {lent[0]} is lent to {p.leases[lent[0]].holder} until that task ends",
                                        permanent=False))
        return False
    gpu = next((g for g in unit.gpus if g in p.switched), None)
    if gpu is None:
        return True  # given back meanwhile
    if unit.name not in p.switched[gpu]:  # (unloaded when the GPU switched: wanted now)
        p.switched[gpu].append(unit.name)
    deadline = time.monotonic() + p.rig.lifecycle.llm_wait_max_s
    for placement in script_on(p, gpu):
        await _end_script_work(p, placement, unit, deadline)
    if gpu in p.switched:
        await back_to_llm(p, gpu, f"requests wait for {unit.name}")
    return True


async def _end_script_work(p, placement, unit, deadline: float) -> None:
    """Stop a placement at once when idle; when busy, once idle or at the deadline (drained)."""
    gpu = placement.unit.gpus[0]
    while placement.state not in ENDED:
        idle = Stop(f"GPU {gpu} given back to {unit.name}: its requests wait", conditions=frozenset({Condition.IDLE}))
        placement.send(idle)
        if idle.reply.result():
            break
        left = deadline - time.monotonic()
        if left <= 0:
            placement.send(Stop(f"GPU {gpu} given back to {unit.name}: its requests waited "
                                f"{p.rig.lifecycle.llm_wait_max_s:g} s (llm_wait_max_s)", drain=True))
            break
        await p.wait(placement.wait_until(frozenset({State.READY, *ENDED}), left))
    await p.wait(placement.wait_until(ENDED, p.rig.timeouts.stop_budget_s))
