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

import time
from dataclasses import dataclass

from llamarig.backend.lifecycle import scale
from llamarig.backend.lifecycle.commands import Condition, MoveWaiters, Refuse, Start, Stop
from llamarig.backend.lifecycle.gpu_modes import Mode
from llamarig.backend.lifecycle.states import ENDED, LOADING, SERVING, SETTLED, State
from llamarig.backend.lifecycle.waves import shortfall

MIB = 1024 * 1024


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


def llms_on(m, gpu: int) -> list:
    """The LLMs pinned to `gpu` (the active slot of each model)."""
    return [a for a in m.actors.values() if a.unit.is_llm and gpu in a.unit.gpus]


def _script_on(m, gpu: int) -> list:
    """The placements of every script service on `gpu`."""
    return [a for slots in m.slots.values() for a in slots if a.unit.script and a.unit.gpus == (gpu,)]


def need_of(m, actor) -> dict[int, int]:
    est = m.estimate(actor.unit)
    return est.per_gpu if est else {}


async def place(m, unit) -> None:
    """Requests wait on `unit`, a placement of a script service: put the service on a GPU, or
    beside its live placements (scale.py)."""
    name, slots = unit.name, m.slots[unit.name]
    i = next(i for i, p in enumerate(slots) if p.unit is unit)
    if scale.scaling_out(m, unit):
        await _scale_out(m, name, i)
        return
    if m.active[name] != i and slots[i].waiters:  # routed there while another lived; none does now
        slots[m.active[name]].send(MoveWaiters(slots[i]))
        m.active[name] = i
    current = m.actors[name]
    if current.state != State.STOPPED or not current.waiters:
        return  # a skip only: the start carries its conditions
    margin = m.rig.lifecycle.vram_margin_mib * MIB
    free = await m.settle()
    roomy = [i for i, p in enumerate(slots) if m.modes.mode(p.unit.gpus[0]) != Mode.TO_LLM
             and p.unit.gpus[0] not in m.leases and not shortfall(need_of(m, p), free, margin)]
    if roomy:  # a GPU already in script mode first, then the order of preference
        i = min(roomy, key=lambda i: m.modes.mode(slots[i].unit.gpus[0]) != Mode.SCRIPT)
        await _start_placement(m, name, i, f"room on GPU {slots[i].unit.gpus[0]}")
        return
    choice = _switch_candidate(m, slots)
    if choice is None:
        current.send(Refuse(f"{name}: no placement has room and no GPU can be switched to it (its LLMs are "
                            "loading, or not switchable)", permanent=False))
        return
    await _switch_to_script(m, name, choice)


async def _scale_out(m, name: str, i: int) -> None:
    """Start placement i beside the live ones (scale.py's rule); when it cannot start now, its
    waiting requests go to the live placement with the least outstanding work."""
    placement = m.slots[name][i]
    if placement.state != State.STOPPED or not placement.waiters:
        return  # a skip only: the start carries Condition.WAITING
    rank, gpu = scale.rank(m, placement), placement.unit.gpus[0]
    if rank is not None:
        free = await m.settle()
        if not shortfall(need_of(m, placement), free, m.rig.lifecycle.vram_margin_mib * MIB):
            await _start_placement(m, name, i, f"scale-out: room on GPU {gpu}", route=False)
            return
        if rank == scale.IDLE_LLMS:
            if await clear_gpu(m, gpu, name, f"{name}: scale-out onto idle LLMs", need_of(m, placement)):
                await _start_placement(m, name, i, f"scale-out: GPU {gpu} switched from "
                                       f"{', '.join(m.switched[gpu]) or 'nothing'}", route=False)
                return
    running = [a for a in m.slots[name] if scale.live(a)]
    if running:
        placement.send(MoveWaiters(min(running, key=scale.outstanding)))
    else:
        placement.send(Refuse(f"{name}: GPU {gpu} cannot take it now and no placement serves", permanent=False))


def _switch_candidate(m, slots) -> int | None:
    """The placement to switch to: idle LLMs first, then serving ones; None when none may go."""
    serving = None
    for i, placement in enumerate(slots):
        gpu = placement.unit.gpus[0]
        llms = llms_on(m, gpu)
        if m.modes.mode(gpu) not in (Mode.LLM, Mode.IDLE) or not all(a.unit.switchable for a in llms):
            continue
        if any(a.state in LOADING for a in llms):
            continue
        if all(not a.inflight and not a.waiters for a in llms):
            return i
        serving = i if serving is None else serving
    return serving


async def _switch_to_script(m, name: str, i: int) -> None:
    placement = m.slots[name][i]
    gpu = placement.unit.gpus[0]
    if not await clear_gpu(m, gpu, name, f"{name}: requests wait and no placement has room", need_of(m, placement)):
        placement.send(Refuse(f"{name}: GPU {gpu} did not free its memory", permanent=False))
        return
    await _start_placement(m, name, i, f"GPU {gpu} switched from {', '.join(m.switched[gpu]) or 'nothing'}")


async def clear_gpu(m, gpu: int, holder: str, why: str, need: dict[int, int]) -> bool:
    """Stop `gpu`'s LLMs (drained) for `holder` and wait until `need` is free. False: the memory
    did not come back within the switch's time, and the GPU went back to its LLMs."""
    llms = llms_on(m, gpu)
    # Only those serving or loading come back: one unloaded on demand, failed or held by an operator stays so.
    m.switched[gpu] = [a.unit.name for a in llms if a.state not in ENDED]
    m.modes.set(gpu, Mode.TO_SCRIPT, holder, f"{why}; stopping {', '.join(m.switched[gpu]) or 'nothing'}")
    for a in llms:
        a.send(Stop(f"GPU {gpu} switched to {holder}", drain=True))
    for a in llms:
        await a.wait_until(ENDED, m.modes.time_left(gpu))
    if await _memory_back(m, gpu, need, m.rig.lifecycle.vram_margin_mib * MIB):
        return True
    await back_to_llm(m, gpu, f"the memory of GPU {gpu} did not come back within the switch's time")
    return False


async def _memory_back(m, gpu: int, need: dict[int, int], margin: int) -> bool:
    deadline = time.monotonic() + m.modes.time_left(gpu)
    while True:
        if not shortfall(need, await m.settle(), margin):
            return True
        if time.monotonic() >= deadline:
            return False


async def _start_placement(m, name: str, i: int, why: str, route: bool = True) -> None:
    """route: the service's requests wait here from now on (a first placement; a scale-out's
    keep theirs: scale.route spreads them)."""
    slots, gpu = m.slots[name], m.slots[name][i].unit.gpus[0]
    current = m.actors[name]
    if route and current is not slots[i]:
        current.send(MoveWaiters(slots[i]))  # handled whole: the requests wait there from now on
        m.active[name] = i
    placement = slots[i]
    if m.modes.mode(gpu) == Mode.IDLE:  # nothing to give back afterwards
        m.switched[gpu] = []
        m.modes.set(gpu, Mode.TO_SCRIPT, name, f"{name}: requests wait; GPU {gpu} is free")
    if not await placement.ask(Start(f"placed on GPU {gpu}: {why}", conditions=frozenset({Condition.WAITING}))):
        if gpu in m.switched:
            await back_to_llm(m, gpu, f"{name}: nobody waits for it any more")
        return
    state = await placement.wait_until(SETTLED, m.rig.timeouts.load_budget_s)
    if state in SERVING:
        if gpu in m.switched:
            m.modes.set(gpu, Mode.SCRIPT, name, f"{name} ready on GPU {gpu}")
        return
    reason = f"{name} on GPU {gpu} {state.value}: {placement.reason}"
    placement.send(Stop(f"placement failed: {reason}", drain=False))
    if gpu in m.switched:
        await back_to_llm(m, gpu, reason)


async def adopted(m, c: Adopted) -> None:
    name = c.placement.unit.name
    state = await c.placement.wait_until(SETTLED, m.rig.timeouts.load_budget_s)
    if state in SERVING:
        m.modes.set(c.gpu, Mode.SCRIPT, name, "adopted at the compute API's start")
        return
    reason = f"{name} on GPU {c.gpu} adopted at the compute API's start, then {state.value}: {c.placement.reason}"
    c.placement.send(Stop(f"placement failed: {reason}", drain=False))
    await back_to_llm(m, c.gpu, reason)


async def back_to_llm(m, gpu: int, reason: str) -> None:
    """Give the GPU back to the LLMs the switch stopped: once its script services have exited
    and the memory reading shows the LLMs' need free, start them and wait for them."""
    names = m.switched.get(gpu, [])
    m.modes.set(gpu, Mode.TO_LLM, ", ".join(names), reason)
    for placement in _script_on(m, gpu):
        await placement.wait_until(ENDED, m.modes.time_left(gpu))
    actors = [m.actors[n] for n in names]
    need: dict[int, int] = {}
    for a in actors:
        for g, n in need_of(m, a).items():
            need[g] = need.get(g, 0) + n
    await _memory_back(m, gpu, {gpu: need.get(gpu, 0)}, m.rig.lifecycle.vram_margin_mib * MIB)
    for a in actors:  # (an operator's stop since the switch holds: NOT_HELD)
        a.send(Start(f"GPU {gpu} given back: {reason}", conditions=frozenset({Condition.NOT_HELD})))
    for a in actors:
        await a.wait_until(SETTLED, m.modes.time_left(gpu))
    m.switched.pop(gpu, None)
    m.given_back_at[gpu] = time.monotonic()  # (scale.py: held by its LLMs for lifecycle.switch_hold_s)
    m.modes.set(gpu, Mode.LLM if names else Mode.IDLE, ", ".join(names), f"back from script work: {reason}")


async def restore(m, c: Restore) -> None:
    busy = [a for a in _script_on(m, c.gpu) if a.state in SERVING or a.state in LOADING]
    if c.gpu in m.switched and m.modes.mode(c.gpu) == Mode.SCRIPT and not busy:
        await back_to_llm(m, c.gpu, "its script work ended")


async def reclaim(m, unit) -> None:
    """Requests wait for an LLM whose GPU holds script work: end that work (at once when idle,
    else after llm_wait_max_s, drained) and give the GPU back."""
    gpu = next(g for g in unit.gpus if g in m.switched)
    if unit.name not in m.switched[gpu]:  # (unloaded when the GPU switched: wanted now)
        m.switched[gpu].append(unit.name)
    deadline = time.monotonic() + m.rig.lifecycle.llm_wait_max_s
    for placement in _script_on(m, gpu):
        await _end_script_work(m, placement, unit, deadline)
    if gpu in m.switched:
        await back_to_llm(m, gpu, f"requests wait for {unit.name}")


async def _end_script_work(m, placement, unit, deadline: float) -> None:
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
                                f"{m.rig.lifecycle.llm_wait_max_s:g} s (llm_wait_max_s)", drain=True))
            break
        await placement.wait_until(frozenset({State.READY, *ENDED}), left)
    await placement.wait_until(ENDED, m.rig.timeouts.stop_budget_s)
