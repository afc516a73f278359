"""The planner's first job: adopt what already runs (the compute API restarted), then start
the warm units in waves that fit the memory reading, highest priority first."""
from __future__ import annotations

import asyncio
import logging
import time

from llamarig.backend.lifecycle import gpu_leases, switch
from llamarig.backend.lifecycle.commands import Refuse, Start
from llamarig.backend.lifecycle.gpu_modes import Mode
from llamarig.backend.lifecycle.health import supervisor_refused
from llamarig.backend.lifecycle.states import SETTLED
from llamarig.backend.lifecycle.waves import Candidate, next_wave
from llamarig.backend.supervisor import ALIVE_STATES
from llamarig.shared.errors import SupervisorError

log = logging.getLogger("llamarig.manager")


async def run(p) -> None:
    gpu_leases.adopt(p)
    try:
        await _adopt_active_slots(p)
    except SupervisorError as e:
        supervisor_refused("boot", e)
    pending = []
    states = p.memory.program_states
    for name, slots in p.slots.items():
        unit = slots[0].unit
        if not unit.warm or any(g in p.switched for g in unit.gpus):
            continue  # (its GPU holds script work: it comes back when that work ends)
        est = p.estimate(unit)
        # One already running (the compute API restarted) is adopted: its memory is in the reading.
        running = states.get(p.actors[name].unit.program) in ALIVE_STATES
        need = est.per_gpu if est and not running else {}
        pending.append(Candidate(name, unit.priority, need))
    try:
        while pending:
            pending = await _wave(p, pending)
    except SupervisorError as e:
        supervisor_refused("boot stopped", e)


def _units_alive(p) -> bool:
    """Whether a server of ours is running or stopping, as last read. Before the first wave
    with none, no memory of ours is being freed, so one reading needs no settling (memory
    still held by an exited process only makes the plan more cautious)."""
    return any(p.memory.program_states.get(a.unit.program) in ALIVE_STATES for a in p.all_actors())


async def _adopt_active_slots(p) -> None:
    """After a blue-green reload the green server serves, after a switch Whisper holds a GPU:
    when the compute API restarts, route to the slot that is running rather than load the
    model again beside it."""
    infos = await p.memory.refresh_pids()
    for name, slots in p.slots.items():
        running = [i for i, a in enumerate(slots)
                   if infos.get(a.unit.program, {}).get("statename") in ALIVE_STATES]
        if running and running[0] != p.active[name]:
            p.active[name] = running[0]
            log.info("adopting the running slot", extra={"model": name, "program": slots[running[0]].unit.program})
        if len(running) > 1:
            log.warning("both slots of a model are running; the second is not used",
                        extra={"model": name, "program": slots[running[1]].unit.program})
        if running and slots[running[0]].unit.script:
            _adopt_script(p, slots[running[0]], infos)


def _adopt_script(p, placement, infos: dict) -> None:
    """A placement found running holds its GPU: script mode, its stopped LLMs given back later."""
    gpu = placement.unit.gpus[0]
    stopped = [a.unit.name for a in switch.llms_on(p, gpu)
               if infos.get(a.unit.program, {}).get("statename") not in ALIVE_STATES]
    placement.send(Start(f"adopting the running {placement.unit.program}"))
    if not stopped or p.modes.mode(gpu) not in (Mode.LLM, Mode.IDLE):
        return  # it runs beside its GPU's LLMs
    p.switched[gpu] = stopped
    p.modes.set(gpu, Mode.TO_SCRIPT, placement.unit.name, f"{placement.unit.program} found running")
    p.post(switch.Adopted(placement, gpu))  # script mode once it serves: it may still be loading


async def _wave(p, pending: list[Candidate]) -> list[Candidate]:
    free = await p.memory.settle() if p.boot_waves or _units_alive(p) else p.free_bytes()
    wave = next_wave(pending, free, p.margin())
    record = {"wave": len(p.boot_waves) + 1, "start": wave.start, "refused": wave.refused,
              "started_at": time.time(), "done_at": None}
    p.boot_waves.append(record)
    log.info("wave planned", extra={k: v for k, v in record.items() if k != "done_at"})
    for name, reason in wave.refused.items():
        p.actors[name].send(Refuse(reason))
    await asyncio.gather(*(p.actors[n].ask(Start(f"boot wave {record['wave']}")) for n in wave.start))
    limit = p.rig.timeouts.load_budget_s
    await asyncio.gather(*(p.actors[n].wait_until(SETTLED, limit) for n in wave.start))
    record["done_at"] = time.time()
    done = set(wave.start) | set(wave.refused)
    return [c for c in pending if c.name not in done]
