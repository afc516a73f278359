"""The planner: every decision that spans units or memory, and the only writer of the state
those decisions keep.

Ownership (writer: who changes it; readers: who may look):

| state                         | writer                                   | readers                          |
|-------------------------------|------------------------------------------|----------------------------------|
| `active` (routing slot)       | Planner: boot adoption, switch, swap     | Manager.acquire, reports, scale  |
| `modes` (GPU modes)           | Planner: switch, gpu_leases, boot        | metrics, /ready, /admin/gpus     |
| `switched`, `given_back_at`   | Planner: switch, gpu_leases, boot        | scale, reports                   |
| `leases` (GPUs lent)          | Planner: gpu_leases (renew: deadline)    | reports, operator, scale         |
| `swaps`, `reloading`, `kept`  | Planner: swap                            | /admin/units, launch plans       |
| `thermal` (levels, readings)  | Planner: thermal.on_reading              | switch, scale, gpu_leases, metrics|
| `rig` (after reloads)         | Planner: commit_reload                   | everything                       |
| memory reservations           | Planner via Memory.reserve/release       | Memory.planned_free              |
| memory readings, pids         | Memory.refresh_pids                      | Planner, Health, metrics         |
| a unit's state, holds, waiters| its UnitActor                            | everyone; acted on only by       |
|                               |                                          | commands carrying conditions     |

Commands come from one queue and are dispatched by type (HANDLERS). Each runs as a job that
holds the planner only between its waits: a long wait (a load settling, a switch's stops, the
memory coming back) goes through `wait()`, which hands the planner to the next command and
queues the job's next step behind whatever was posted meanwhile. So a cold load of one model
never waits behind another's load: the first is a memory reservation (Memory.reserve) plus a
continuation that releases it once the unit settles. Every step re-reads what it acts on after
a wait and acts in the same step; the actors refuse a command whose condition no longer holds.
GPU switches (mode changes) run one at a time, under `switching()`; a load for a GPU mid-switch
waits for the switch to end and plans again; a GPU left mid-switch with no switch running (one
ended part-way by an error) is given back to its LLMs (switch.Stuck).
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from dataclasses import dataclass
from typing import Awaitable, NamedTuple

from llamarig.backend.lifecycle import boot, gpu_leases, operator, swap, switch, thermal
from llamarig.backend.lifecycle.actor import UnitActor
from llamarig.backend.lifecycle.commands import Condition, Refuse, Start, Stop
from llamarig.backend.lifecycle.gpu_modes import TRANSITIONAL, GpuModes, Mode
from llamarig.backend.lifecycle.health import log_not_done
from llamarig.backend.lifecycle.memory import Memory
from llamarig.backend.lifecycle.states import ENDED, SETTLED, State
from llamarig.backend.lifecycle.units import Unit
from llamarig.backend.lifecycle.waves import lru_victims, shortfall
from llamarig.shared.errors import LlamarigError
from llamarig.shared.rig import Rig
from llamarig.shared.vram import Estimate

log = logging.getLogger("llamarig.planner")
MIB = 1024 * 1024


class UnknownModel(LlamarigError):
    pass


class Room(NamedTuple):
    """make_room's answer: fits now (neither set), after the evictions in `stopping`, or not (`short`)."""
    need: dict[int, int]
    stopping: Awaitable | None
    short: str | None


@dataclass
class Load:
    """Requests wait for a stopped unit: make room and start it."""
    unit: Unit


@dataclass
class Continue:
    """A reservation's continuation: run `step` on the planner (a load settled)."""
    step: object


@dataclass
class _Resume:
    go: asyncio.Future  # set to the job's next step future when its turn comes


class _Job:
    def __init__(self, step: asyncio.Future):
        self.step = step  # done when the job hands the planner back
        self.task = asyncio.current_task()  # the only task that may hand it back (Planner.wait)


_job: contextvars.ContextVar[_Job | None] = contextvars.ContextVar("planner_job", default=None)


async def _continue(p, c: Continue) -> None:
    c.step()


HANDLERS = {  # command type -> its handler (planner, command); sync or async
    Load: lambda p, c: p.load(c.unit),
    Continue: _continue,
    switch.Restore: switch.restore,
    switch.Adopted: switch.adopted,
    switch.Stuck: switch.unstick,
    gpu_leases.TakeGpu: gpu_leases.take,
    gpu_leases.ReturnGpu: gpu_leases.give_back,
    gpu_leases.LeaseExpired: gpu_leases.expired,
    operator.OperatorStart: operator.start,
    swap.PlanReload: swap.plan_reload,
    swap.Started: swap.hand_over,
    swap.Restarted: swap.finish_restart,
    thermal.Reading: thermal.on_reading,
    thermal.CoolOff: thermal.cool_off,
}
SWITCHING = (switch.Restore, switch.Adopted, switch.Stuck, gpu_leases.TakeGpu, gpu_leases.ReturnGpu, gpu_leases.LeaseExpired,
             thermal.CoolOff)


class Planner:
    def __init__(self, rig: Rig, slots: dict[str, list[UnitActor]], memory: Memory, events):
        self.rig = rig
        self.slots = slots  # fixed: each model's server slots (blue/green, or a script service's placements)
        self.memory = memory
        self.events = events
        self.active = {name: 0 for name in slots}
        self.switched: dict[int, list[str]] = {}  # GPU -> the LLMs a switch stopped for script work
        self.given_back_at: dict[int, float] = {}  # GPU -> monotonic time it went back to its LLMs (scale.py)
        self.leases: dict[int, gpu_leases.GpuLease] = {}  # GPU -> the script command it is lent to
        self.thermal = thermal.Thermal(rig.thermal)  # each GPU's thermal level (thermal.Reading)
        self.swaps: dict[str, dict] = {}
        self.reloading: dict[str, Rig] = {}  # program -> the rig with its model's new settings, until committed
        self.kept: set[str] = set()  # models whose reload failed: their plans keep the settings that worked
        self.modes = GpuModes(self._initial_modes(), rig.timeouts.stop_budget_s + rig.timeouts.load_budget_s, events)
        self.boot_waves: list[dict] = []
        self.booted = asyncio.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loads_queued: set[str] = set()
        self._switching = asyncio.Lock()
        self._unsticking: set[int] = set()  # GPUs a Stuck command is posted for
        self._jobs: set[asyncio.Task] = set()

    # ---- what the handlers read ---------------------------------------------------------------
    @property
    def actors(self) -> dict[str, UnitActor]:
        """The actor of each model's active slot: the one requests are routed to."""
        return {name: slots[self.active[name]] for name, slots in self.slots.items()}

    def all_actors(self) -> list[UnitActor]:
        return [a for slots in self.slots.values() for a in slots]

    def actor(self, name: str) -> UnitActor:
        """The active slot's actor of model `name` (every request asks: no dict is built)."""
        slots = self.slots.get(name)
        if slots is None:
            raise UnknownModel("model_not_found", f"model {name!r} is not in this rig; known: "
                               f"{', '.join(sorted(self.slots))}")
        return slots[self.active[name]]

    def estimate(self, unit: Unit, rig: Rig | None = None) -> Estimate | None:
        return self.memory.estimate(unit, rig)

    def free_bytes(self) -> dict[int, int]:
        return self.memory.free_bytes()

    def margin(self) -> int:
        return self.rig.lifecycle.vram_margin_mib * MIB

    async def settle(self, besides: Unit | None = None) -> dict[int, int]:
        """Free memory once the reading settles, less what reservations (but `besides`'s) hold."""
        return self.memory.planned_free(await self.wait(self.memory.settle()), besides)

    def rig_for(self, unit: Unit | None) -> Rig:
        """The rig a unit's program starts with: a reload's new settings before they are the rig's."""
        return self.reloading.get(unit.program, self.rig) if unit is not None else self.rig

    def _initial_modes(self) -> dict[int, tuple[Mode, str]]:
        """LLM on a GPU a model is pinned to, IDLE on the others: the inventory's (NVML's devices,
        not the rig's declared simulated list, once NVML answers), and any a unit names."""
        units = [a.unit for a in self.all_actors()]
        gpus = {g.index for g in self.memory.inventory.read()} | {g for u in units for g in u.gpus}
        modes = {}
        for gpu in sorted(gpus):
            llms = [a.unit.name for a in self.actors.values() if a.unit.is_llm and gpu in a.unit.gpus]
            modes[gpu] = (Mode.LLM, ", ".join(llms)) if llms else (Mode.IDLE, "")
        return modes

    # ---- reloads' settings --------------------------------------------------------------------
    def commit_reload(self, unit: Unit) -> None:
        """A reload succeeded: its settings (and, when nothing else changed, the file's hash)
        become the rig's."""
        self.rig = self.reloading.pop(unit.program)
        self.kept.discard(unit.name)
        self.memory.estimates.clear()
        log.info("rig updated by a reload", extra={"model": unit.name, "program": unit.program,
                                                    "source_sha256": self.rig.source_sha256[:12]})

    def keep_settings(self, unit: Unit) -> None:
        """A reload failed: its settings are dropped, and the unit's plans are pinned to the
        ones that worked (the file holds the others)."""
        self.reloading.pop(unit.program, None)
        self.kept.add(unit.name)

    # ---- the queue and its jobs ---------------------------------------------------------------
    def post(self, command) -> None:
        self._queue.put_nowait(command)

    def request_load(self, unit: Unit) -> None:
        if unit.program not in self._loads_queued:  # one load per unit (placements: per GPU) at a time
            self._loads_queued.add(unit.program)
            self.post(Load(unit))

    async def run(self) -> None:
        """Boot in waves, then take commands: each one's step until it waits or ends."""
        try:
            await boot.run(self)
        finally:
            self.booted.set()
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            step = loop.create_future()
            if isinstance(item, _Resume):
                if item.go.done():
                    continue  # the job was cancelled while it waited for its turn
                item.go.set_result(step)
            else:
                task = loop.create_task(self._job(item, step), name=f"planner:{type(item).__name__}")
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
            await step

    async def close(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    async def _job(self, command, step: asyncio.Future) -> None:
        job = _Job(step)
        _job.set(job)
        try:
            if isinstance(command, SWITCHING):
                async with self.switching():
                    await self._handle(command)
            else:
                await self._handle(command)
        except Exception as e:  # one bad plan must not stop the later ones
            reply = getattr(command, "reply", None)
            log_not_done(command, e, answered=reply is not None)
            if reply is not None and not reply.done():
                reply.set_exception(e)
        finally:
            self._recover_stuck()
            if not job.step.done():
                job.step.set_result(None)

    async def _handle(self, command) -> None:
        result = HANDLERS[type(command)](self, command)
        if inspect.isawaitable(result):
            await result

    async def wait(self, awaitable):
        """Await something long without holding the planner: other commands run meanwhile, and
        this job goes on once its turn comes again (behind what was posted while it waited)."""
        job = _job.get()
        if job is None:  # boot: nothing else runs on the planner yet
            return await awaitable
        if job.task is not asyncio.current_task():  # a task the job spawned inherits its context, not its turn
            _drop(awaitable)
            raise RuntimeError("Planner.wait called from a task the job spawned: only the job's own task may "
                               "hand the planner back")
        if job.step.done():  # (the planner's loop was cancelled: it is closing, and no turn comes again)
            _drop(awaitable)
            raise asyncio.CancelledError("the planner is closing")
        job.step.set_result(None)
        try:
            result = await awaitable
        except asyncio.CancelledError:
            raise  # (closing: no turn to wait for)
        except BaseException:
            await self._turn(job)
            raise
        await self._turn(job)
        return result

    async def _turn(self, job: _Job) -> None:
        go = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Resume(go))
        job.step = await go

    @contextlib.asynccontextmanager
    async def switching(self):
        """GPU mode changes one at a time: a switch's waits hold the other switches, nothing else."""
        await self.wait(self._switching.acquire())
        try:
            yield
        finally:
            self._switching.release()

    def after(self, awaitable, step) -> None:
        """A continuation: run `step` on the planner once `awaitable` is done."""
        async def waiting():
            try:
                await awaitable
            finally:
                self.post(Continue(step))
        asyncio.ensure_future(waiting())

    def _recover_stuck(self) -> None:
        """Every mode change runs under `switching()`: a GPU left mid-switch while nothing holds
        it is one whose switch ended part-way (a supervisord error, say). Give it back."""
        if self._switching.locked():
            return
        for gpu, g in self.modes.gpus.items():
            if g.mode in TRANSITIONAL and gpu not in self._unsticking:
                self._unsticking.add(gpu)
                self.post(switch.Stuck(gpu))

    # ---- on-demand loads ----------------------------------------------------------------------
    async def load(self, unit: Unit) -> None:
        try:
            if unit.script:
                async with self.switching():
                    await switch.place(self, unit)
            else:
                await self._load_llm(unit)
        finally:
            self._loads_queued.discard(unit.program)

    async def _load_llm(self, unit: Unit) -> None:
        actor, evicted = self.actors[unit.name], False
        try:
            while True:
                free = await self.settle(besides=unit)
                lent = [g for g in unit.gpus if g in self.leases]
                if lent:
                    actor.send(Refuse(f"GPU {lent[0]} is lent to {self.leases[lent[0]].holder} until that task ends",
                                      permanent=False))
                    return
                if any(g in self.switched or self.modes.mode(g) in TRANSITIONAL for g in unit.gpus):
                    async with self.switching():  # (after the switches before this one, ended or dead)
                        if any(g in self.switched for g in unit.gpus):
                            await switch.reclaim(self, unit)
                            return
                    continue
                if actor.state != State.STOPPED or not actor.waiters:  # (read after the wait: as it is now)
                    log.info("load not started", extra={"model": unit.name, "state": actor.state.value,
                                                        "reason": "nobody waits for it any more" if not actor.waiters
                                                        else f"it is {actor.state.value}"})
                    return
                room = self.make_room(unit, free, may_evict=not evicted)
                if room.short:
                    actor.send(Refuse(f"cannot load: {room.short}; every other model there is busy, loading or "
                                      "warm", permanent=False))
                    return
                if room.stopping is None:
                    self._start_reserved(actor, room.need)
                    return
                await self.wait(room.stopping)
                evicted = True
        finally:
            if actor.state == State.STOPPED:  # (not started: nothing to hold memory for)
                self.memory.release(unit)

    def _start_reserved(self, actor: UnitActor, need: dict[int, int]) -> None:
        start = Start("on-demand load", conditions=frozenset({Condition.WAITING, Condition.NOT_HELD}))
        self.start_reserved(actor, need, start)

    def start_reserved(self, actor: UnitActor, need: dict[int, int], command) -> None:
        """Send a start with the unit's memory reserved until its load settles (a continuation
        releases it); released at once when no load began."""
        unit = actor.unit
        self.memory.reserve(unit, need)
        actor.send(command)
        if actor.claims_memory:
            self.after(actor.wait_until(SETTLED, self.rig.timeouts.load_budget_s), lambda: self.memory.release(unit))
        else:
            self.memory.release(unit)

    def make_room(self, unit: Unit, free: dict[int, int], may_evict: bool = True) -> Room:
        """Whether `unit` fits in `free` as it is, once idle models are evicted for it (their
        stops to wait for), or not at all (what is short): the decision of a load and of an
        operator's start."""
        need = self.memory.need(unit)
        short = shortfall(need, free, self.margin())
        stopping = self.evict_for(unit, need, free) if short and may_evict else None
        return Room(need, stopping, short if stopping is None else None)

    def evict_for(self, unit: Unit, need: dict[int, int], free: dict[int, int]):
        """Stop the least recently used idle models until `unit` fits, its memory reserved
        meanwhile: what to wait for until they have stopped; None when no choice of idle models
        makes room."""
        idle = [(n, a.last_used, self.memory.actuals.get(n) or self.memory.need(a.unit))
                for n, a in self.actors.items()
                if n != unit.name and not a.unit.warm and a.state == State.READY and not a.inflight]
        victims = lru_victims(need, free, self.margin(), idle)
        if not victims:
            return None
        stopped = []
        for name in victims:  # each only if still idle: a request may have come since the reading
            stop = Stop(f"evicted (least recently used) to load {unit.name}", conditions=frozenset({Condition.IDLE}))
            self.actors[name].send(stop)
            if stop.reply.result():
                log.info("evicting idle model", extra={"model": name, "for": unit.name})
                stopped.append(name)
        self.memory.reserve(unit, need)
        budget = self.rig.timeouts.stop_budget_s
        return asyncio.gather(*(self.actors[n].wait_until(ENDED, budget) for n in stopped))


def _drop(awaitable) -> None:
    """A coroutine that will never be awaited, closed (else Python warns when it is collected)."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()
