"""The lifecycle manager: every unit's actor, wave loading at boot, the health loop, and the
planner.

It lives in the compute API process, where the drain can see in-flight requests. Decisions
that span units or memory (on-demand loads, evictions, reloads and their routing switch) are
taken by one planner task, one command at a time from one queue; boot waves run before it takes
any. Each unit's own state changes only inside its actor, and the commands the planner sends
carry the conditions it planned under.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

import psutil

from llamarig.backend.launch import checks_for, plan_for, verify_unit
from llamarig.backend.lifecycle.actor import Lease, NotAvailable, UnitActor
from llamarig.backend.lifecycle.commands import (Acquire, Condition, Exited, Probe, Refuse, Replaced, Start,
                                                 Stop)
from llamarig.backend.lifecycle.jobs import Deps, Events, HeldEvents, exit_cause, tree_pids
from llamarig.backend.lifecycle.states import ENDED, SERVING, SETTLED, State
from llamarig.backend.lifecycle import gpu_leases, operator, scale, swap, switch
from llamarig.backend.lifecycle.gpu_modes import GpuModes, Mode
from llamarig.backend.lifecycle.units import Unit, green_units, placement_units, units_from_rig
from llamarig.backend.lifecycle.waves import Candidate, lru_victims, next_wave, shortfall
from llamarig.backend.llama_http import ServerHttp
from llamarig.backend.supervisor import ALIVE_STATES, SupervisorClient
from llamarig.shared.errors import LlamarigError, SupervisorError
from llamarig.shared.gguf_header import GgufError, read_header
from llamarig.shared.gpus import GpuInventory, open_inventory
from llamarig.shared.rig import Rig
from llamarig.shared.verify import wait_until_verified
from llamarig.shared.vram import Estimate, estimate, estimate_folder

log = logging.getLogger("llamarig.manager")
MIB = 1024 * 1024
SCRIPT_ENDING = frozenset({State.DRAINING, State.STOPPING, State.STOPPED, State.FAILED})  # its GPU goes back


def supervisor_refused(what: str, e: SupervisorError) -> None:
    """While supervisord stops everything its refusals are expected (info); otherwise an error."""
    if e.shutting_down:
        log.info(f"{what}: supervisord is shutting down", extra={"reason": e.reason})
    else:
        word = "unreachable" if e.code == "supervisor_unreachable" else "refused"
        log.error(f"{what}: supervisord {word}", extra={"code": e.code, "reason": e.reason})


def _log_not_done(command, e: Exception, answered: bool) -> None:
    """A refusal with a code is an answer (info when whoever asked gets it, else a warning); an
    unexpected exception is a bug (error, with its traceback)."""
    name = type(command).__name__
    if isinstance(e, SupervisorError):
        supervisor_refused(f"planner: {name}", e)
    elif isinstance(e, LlamarigError):
        (log.info if answered else log.warning)("planner command refused",
                                                extra={"command": name, "code": e.code, "reason": e.reason})
    else:
        log.exception("planner command failed", extra={"command": name})


class UnknownModel(LlamarigError):
    pass


@dataclass
class Load:
    """Requests wait for a stopped unit: make room and start it."""
    unit: Unit


@dataclass
class PlanReload:
    name: str
    reply: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


PLANNER_MARGIN_S = 10.0  # over a switch's limit (stop and load budgets), the longest a planner step waits


class Manager(Events):
    def __init__(self, rig: Rig, supervisor: SupervisorClient, http: ServerHttp,
                 inventory: GpuInventory | None = None, hooks: Events | None = None):
        self.rig = rig
        self.supervisor = supervisor
        self.http = http
        self.hooks = hooks or Events()
        self.units = {u.name: u for u in units_from_rig(rig)}
        checks = checks_for(rig, settle=False)
        # Like the launch gate, wait while a refusal is transient (a copy in progress).
        deps = Deps(rig, supervisor, http, lambda unit: wait_until_verified(
            lambda: verify_unit(self.rig_for(unit), unit.name, checks), rig.timeouts.model_wait_s),
            lambda unit: plan_for(self.rig_for(unit), unit.name, unit.slot, on_gpu=not self.inventory.simulated,
                                  pinned=unit.name in self.kept), self)
        greens = green_units(rig)
        # Each model has one actor per server slot; routing goes to the active slot's actor.
        self.slots = {name: [UnitActor(unit, deps)] + ([UnitActor(greens[name], deps)] if name in greens else [])
                      for name, unit in self.units.items()}
        for name, placements in placement_units(rig).items():  # placed by the planner: a slot per GPU
            self.units[name] = placements[0]
            self.slots[name] = [UnitActor(u, deps) for u in placements]
        self.active = {name: 0 for name in self.slots}
        self.switched: dict[int, list[str]] = {}  # GPU -> the LLMs a switch stopped for script work
        self.given_back_at: dict[int, float] = {}  # GPU -> monotonic time it went back to its LLMs (scale.py)
        self.leases: dict[int, gpu_leases.GpuLease] = {}  # GPU -> the script command it is lent to
        self.swaps: dict[str, dict] = {}
        self.reloading: dict[str, Rig] = {}  # program -> the rig with its model's new settings, until committed
        self.kept: set[str] = set()  # models whose reload failed: their plans keep the settings that worked
        self.pids: dict[str, int] = {}  # (before the first reading: a simulated one sums their memory)
        self.pids_read_at = 0.0  # monotonic time `pids` was asked for
        self.inventory = inventory or open_inventory(rig.gpus, self._simulated_used)
        self.modes = GpuModes(self._initial_modes(), rig.timeouts.stop_budget_s + rig.timeouts.load_budget_s, self)
        self._causes: dict[str, tuple[int, str]] = {}  # program -> (its last exit's time, how it ended)
        self.program_states: dict[str, str] = {}
        self.estimates: dict[str, Estimate] = {}  # by program
        self.actuals: dict[str, dict[int, int]] = {}
        self.boot_waves: list[dict] = []
        self.booted = asyncio.Event()
        self._plans: asyncio.Queue = asyncio.Queue()  # the planner's commands, one at a time
        self._loads_queued: set[str] = set()
        self._probing: collections.Counter[str] = collections.Counter()  # probes in flight per program
        self._suspected: set[str] = set()
        self._deep_due: dict[str, float] = {}
        self._tasks: list[asyncio.Task] = []
        self.closing = False

    @property
    def actors(self) -> dict[str, UnitActor]:
        """The actor of each model's active slot: the one requests are routed to."""
        return {name: slots[self.active[name]] for name, slots in self.slots.items()}

    def all_actors(self) -> list[UnitActor]:
        return [a for slots in self.slots.values() for a in slots]

    def listen(self, hooks: Events) -> None:
        """Send unit events to `hooks` from now on, after what was held for them."""
        if isinstance(self.hooks, HeldEvents):
            self.hooks.hand_to(hooks)
        self.hooks = hooks

    # ---- running ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._health_loop(), name="health"),
                        loop.create_task(self._planner(), name="planner"),
                        loop.create_task(self.boot(), name="boot")]

    async def close(self) -> None:
        for a in self.all_actors():
            a.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _initial_modes(self) -> dict[int, tuple[Mode, str]]:
        """LLM on a GPU a model is pinned to, IDLE on the others: the inventory's (NVML's devices,
        not the rig's declared simulated list, once NVML answers), and any a unit names."""
        units = [a.unit for a in self.all_actors()]
        gpus = {g.index for g in self.inventory.read()} | {g for u in units for g in u.gpus}
        modes = {}
        for gpu in sorted(gpus):
            llms = [u.name for u in self.units.values() if u.is_llm and gpu in u.gpus]
            modes[gpu] = (Mode.LLM, ", ".join(llms)) if llms else (Mode.IDLE, "")
        return modes

    def on_switch(self, gpu, direction, seconds):
        self.hooks.on_switch(gpu, direction, seconds)

    # ---- estimates and readings ---------------------------------------------------------------
    def rig_for(self, unit: Unit) -> Rig:
        """The rig a unit's program starts with: a reload's new settings before they are the rig's."""
        return self.reloading.get(unit.program, self.rig)

    def commit_reload(self, unit: Unit) -> None:
        """A reload succeeded: its settings (and, when nothing else changed, the file's hash)
        become the rig's."""
        self.rig = self.reloading.pop(unit.program)
        self.kept.discard(unit.name)
        self.estimates.clear()
        log.info("rig updated by a reload", extra={"model": unit.name, "program": unit.program,
                                                    "source_sha256": self.rig.source_sha256[:12]})

    def keep_settings(self, unit: Unit) -> None:
        """A reload failed: its settings are dropped, and the unit's plans are pinned to the
        ones that worked (the file holds the others)."""
        self.reloading.pop(unit.program, None)
        self.kept.add(unit.name)

    def estimate(self, unit: Unit, rig: Rig | None = None) -> Estimate | None:
        """Memory a unit needs with the rig's settings (or `rig`'s, uncached: a reload's)."""
        if rig is None and unit.program in self.estimates:  # by program: Whisper's placements differ
            return self.estimates[unit.program]
        rig_ = rig or self.rig
        try:
            if unit.kind == "whisper":
                size = (rig_.resolve(rig_.whisper.model_dir) / "model.bin").stat().st_size
                est = estimate_folder(size, unit.gpus[0], self.inventory.simulated)
            else:
                m = rig_.models[unit.name]
                est = estimate(read_header(rig_.resolve(m.path)), unit.gpus, unit.split, m.context_size,
                               m.gpu_layers, self.inventory.simulated)
        except (OSError, GgufError):
            return None  # the verifier gives the reason when the unit starts
        if rig is None:
            self.estimates[unit.program] = est
        return est

    def free_bytes(self) -> dict[int, int]:
        return {g.index: g.free_bytes for g in self.inventory.read()}

    def _tree_rss(self, pid: int) -> int:
        total = 0
        for p in tree_pids(pid):
            try:
                total += psutil.Process(p).memory_info().rss
            except psutil.Error:
                pass  # it ended between the listing and the reading
        return total

    def _simulated_used(self, gpu: int) -> int:
        """Simulated 'used memory' of a GPU: resident memory of the processes pinned to it,
        split by each unit's share of that GPU."""
        used = 0
        for unit in (a.unit for a in self.all_actors()):
            pid = self.pids.get(unit.program)
            if pid and gpu in unit.gpus:
                used += int(self._tree_rss(pid) * unit.split[unit.gpus.index(gpu)])
        return used

    def actual(self, unit: Unit) -> dict[int, int]:
        pid = self.pids.get(unit.program)
        if not pid:
            return {}
        if self.inventory.simulated:
            rss = self._tree_rss(pid)
            return {g: int(rss * s) for g, s in zip(unit.gpus, unit.split)}
        return {g: self.inventory.process_bytes(g, tree_pids(pid)) for g in unit.gpus}

    async def settle(self) -> dict[int, int]:
        """Free memory once two readings 0.25 s apart agree within 1 % (freed VRAM takes time
        to show), or after vram_settle_s."""
        deadline = time.monotonic() + self.rig.lifecycle.vram_settle_s
        await self._refresh_pids()
        last = self.free_bytes()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            await self._refresh_pids()
            now = self.free_bytes()
            if all(abs(now[g] - last[g]) <= 0.01 * max(last[g], MIB) for g in now):
                return now
            last = now
        return last

    async def _refresh_pids(self) -> dict[str, dict]:
        asked = time.monotonic()
        infos = await self.supervisor.run("all_info")
        self.pids_read_at = asked
        self.pids = {name: i["pid"] for name, i in infos.items() if i["pid"]}
        self.program_states = {name: i["statename"] for name, i in infos.items()}
        return infos

    # ---- boot in waves ------------------------------------------------------------------------
    async def boot(self) -> None:
        gpu_leases.adopt(self)
        try:
            await self._adopt_active_slots()
        except SupervisorError as e:
            supervisor_refused("boot", e)
        pending = []
        for unit in self.units.values():
            if not unit.warm or any(g in self.switched for g in unit.gpus):
                continue  # (its GPU holds script work: it comes back when that work ends)
            est = self.estimate(unit)
            # One already running (the compute API restarted) is adopted: its memory is in the reading.
            running = self.program_states.get(self.actors[unit.name].unit.program) in ALIVE_STATES
            need = est.per_gpu if est and not running else {}
            pending.append(Candidate(unit.name, unit.priority, need))
        try:
            while pending:
                pending = await self._boot_wave(pending)
        except SupervisorError as e:
            supervisor_refused("boot stopped", e)
        finally:
            self.booted.set()

    def _units_alive(self) -> bool:
        """Whether a server of ours is running or stopping, as last read. Before the first wave
        with none, no memory of ours is being freed, so one reading needs no settling (memory
        still held by an exited process only makes the plan more cautious)."""
        return any(self.program_states.get(a.unit.program) in ALIVE_STATES for a in self.all_actors())

    async def _adopt_active_slots(self) -> None:
        """After a blue-green reload the green server serves, after a switch Whisper holds a GPU:
        when the compute API restarts, route to the slot that is running rather than load the
        model again beside it."""
        infos = await self._refresh_pids()
        for name, slots in self.slots.items():
            running = [i for i, a in enumerate(slots)
                       if infos.get(a.unit.program, {}).get("statename") in ALIVE_STATES]
            if running and running[0] != self.active[name]:
                self.active[name] = running[0]
                log.info("adopting the running slot", extra={"model": name, "program": slots[running[0]].unit.program})
            if len(running) > 1:
                log.warning("both slots of a model are running; the second is not used",
                            extra={"model": name, "program": slots[running[1]].unit.program})
            if running and slots[running[0]].unit.script:
                self._adopt_script(slots[running[0]], infos)

    def _adopt_script(self, placement, infos: dict) -> None:
        """A placement found running holds its GPU: script mode, its stopped LLMs given back later."""
        gpu = placement.unit.gpus[0]
        stopped = [a.unit.name for a in switch.llms_on(self, gpu)
                   if infos.get(a.unit.program, {}).get("statename") not in ALIVE_STATES]
        placement.send(Start(f"adopting the running {placement.unit.program}"))
        if not stopped or self.modes.mode(gpu) not in (Mode.LLM, Mode.IDLE):
            return  # it runs beside its GPU's LLMs
        self.switched[gpu] = stopped
        self.modes.set(gpu, Mode.TO_SCRIPT, placement.unit.name, f"{placement.unit.program} found running")
        self.post(switch.Adopted(placement, gpu))  # script mode once it serves: it may still be loading

    async def _boot_wave(self, pending: list[Candidate]) -> list[Candidate]:
        free = await self.settle() if self.boot_waves or self._units_alive() else self.free_bytes()
        wave = next_wave(pending, free, self.rig.lifecycle.vram_margin_mib * MIB)
        record = {"wave": len(self.boot_waves) + 1, "start": wave.start, "refused": wave.refused,
                  "started_at": time.time(), "done_at": None}
        self.boot_waves.append(record)
        log.info("wave planned", extra={k: v for k, v in record.items() if k != "done_at"})
        for name, reason in wave.refused.items():
            self.actors[name].send(Refuse(reason))
        await asyncio.gather(*(self.actors[n].ask(Start(f"boot wave {record['wave']}")) for n in wave.start))
        limit = self.rig.timeouts.load_budget_s
        await asyncio.gather(*(self.actors[n].wait_until(SETTLED, limit) for n in wave.start))
        record["done_at"] = time.time()
        done = set(wave.start) | set(wave.refused)
        return [c for c in pending if c.name not in done]

    # ---- the planner -------------------------------------------------------------------------
    def request_load(self, unit: Unit) -> None:
        if unit.program not in self._loads_queued:  # one queued load per unit (placements: per GPU) is enough
            self._loads_queued.add(unit.program)
            self.post(Load(unit))

    def post(self, command) -> None:
        self._plans.put_nowait(command)

    async def _planner(self) -> None:
        await self.booted.wait()
        while True:
            command = await self._plans.get()
            try:
                await self._plan(command)
            except Exception as e:  # one bad plan must not stop the later ones
                reply = getattr(command, "reply", None)
                _log_not_done(command, e, answered=reply is not None)
                if reply is not None and not reply.done():
                    reply.set_exception(e)

    async def _plan(self, command) -> None:
        if isinstance(command, Load):
            self._loads_queued.discard(command.unit.program)
            await self._load_or_place(command.unit)
        elif isinstance(command, switch.Restore):
            await switch.restore(self, command)
        elif isinstance(command, switch.Adopted):
            await switch.adopted(self, command)
        elif isinstance(command, gpu_leases.TakeGpu):
            await gpu_leases.take(self, command)
        elif isinstance(command, gpu_leases.ReturnGpu):
            await gpu_leases.give_back(self, command)
        elif isinstance(command, gpu_leases.LeaseExpired):
            await gpu_leases.expired(self, command)
        elif isinstance(command, operator.OperatorStart):
            await operator.start(self, command)
        elif isinstance(command, PlanReload):
            command.reply.set_result(await swap.plan_reload(self, command.name))
        elif isinstance(command, swap.Started):
            swap.hand_over(self, command)
        elif isinstance(command, swap.Restarted):
            swap.finish_restart(self, command)

    async def _load_or_place(self, unit: Unit) -> None:
        lent = [g for g in unit.gpus if g in self.leases]
        if unit.script:
            await switch.place(self, unit)
        elif lent:
            self.actors[unit.name].send(Refuse(f"GPU {lent[0]} is lent to {self.leases[lent[0]].holder} until that "
                                               "task ends", permanent=False))
        elif any(g in self.switched for g in unit.gpus):
            await switch.reclaim(self, unit)
        else:
            await self._load(unit)

    async def _load(self, unit: Unit) -> None:
        actor = self.actors[unit.name]
        if actor.state != State.STOPPED or not actor.waiters:
            return  # a skip only: the start below carries the conditions themselves
        est = self.estimate(unit)
        need = est.per_gpu if est else {}
        margin = self.rig.lifecycle.vram_margin_mib * MIB
        free = await self.settle()
        if shortfall(need, free, margin):
            free = await self._evict_for(unit, need, free, margin)
        short = shortfall(need, free, margin)
        if short:
            actor.send(Refuse(f"cannot load: {short}; every other model there is busy, loading or warm",
                              permanent=False))
            return
        start = Start("on-demand load", conditions=frozenset({Condition.WAITING, Condition.NOT_HELD}))
        if await actor.ask(start):
            await actor.wait_until(SETTLED, self.rig.timeouts.load_budget_s)

    async def _evict_for(self, unit: Unit, need: dict[int, int], free: dict[int, int],
                         margin: int) -> dict[int, int]:
        """Stop the least recently used idle models until `unit` fits; the free memory after
        (as it was, when no choice of idle models makes room)."""
        idle = [(n, a.last_used, self.actuals.get(n) or (self.estimate(a.unit) or Estimate({})).per_gpu)
                for n, a in self.actors.items()
                if n != unit.name and not a.unit.warm and a.state == State.READY and not a.inflight]
        victims = lru_victims(need, free, margin, idle)
        if victims is None:
            return free
        stopped = []
        for name in victims:  # each only if still idle: a request may have come since the reading
            stop = Stop(f"evicted (least recently used) to load {unit.name}",
                        conditions=frozenset({Condition.IDLE}))
            self.actors[name].send(stop)
            if stop.reply.result():
                log.info("evicting idle model", extra={"model": name, "for": unit.name})
                stopped.append(name)
        await asyncio.gather(*(self.actors[n].wait_until(ENDED, self.rig.timeouts.stop_budget_s) for n in stopped))
        return await self.settle()

    # ---- health -------------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        interval = self.rig.lifecycle.health_interval_s
        while True:
            try:
                await self._health_tick()
            except SupervisorError as e:
                supervisor_refused("health tick", e)
            except Exception:
                log.exception("health tick failed")
            await asyncio.sleep(interval)

    async def _health_tick(self) -> None:
        taken, before, before_at = time.monotonic(), self.pids, self.pids_read_at
        infos = await self._refresh_pids()
        for actor in self.all_actors():
            info = infos.get(actor.unit.program)
            if info and info["statename"] not in ALIVE_STATES:
                actor.send(Exited(await self._exit_cause(info), taken))
            elif info and info["pid"] and before.get(actor.unit.program, info["pid"]) != info["pid"]:
                actor.send(Replaced(f"pid {before[actor.unit.program]} -> {info['pid']}", before_at))
            # A hung server holds each probe for probe_timeout_s; probes overlap (up to the
            # threshold) so that it is caught after about threshold x interval + one timeout.
            program = actor.unit.program
            if actor.state in SERVING and self._probing[program] < self.rig.lifecycle.failure_threshold:
                self._probing[program] += 1
                asyncio.ensure_future(self._probe(actor))

    async def _exit_cause(self, info: dict) -> str:
        """exit_cause, read from supervisord's log once per exit (a FATAL program stays so)."""
        known = self._causes.get(info["name"])
        if known is None or known[0] != info["stop"]:
            known = self._causes[info["name"]] = (info["stop"], await exit_cause(self.supervisor, info))
        return known[1]

    def suspect(self, unit: Unit) -> None:
        actor = next(a for a in self.slots[unit.name] if a.unit.program == unit.program)
        if unit.program not in self._suspected:
            self._suspected.add(unit.program)
            asyncio.ensure_future(self._check_now(actor))

    async def _check_now(self, actor: UnitActor) -> None:
        """Out-of-turn check of one unit: has its process exited? (Else the next probes judge.)"""
        try:
            taken = time.monotonic()
            info = await self.supervisor.run("info", actor.unit.program)
            if info["statename"] not in ALIVE_STATES:
                actor.send(Exited(await self._exit_cause(info), taken))
        except SupervisorError as e:
            supervisor_refused("check", e)
        finally:
            self._suspected.discard(actor.unit.program)

    async def _probe(self, actor: UnitActor) -> None:
        unit, cfg = actor.unit, self.rig.lifecycle
        due_key = unit.program
        try:
            taken = time.monotonic()
            ok, detail = await self.http.ready(unit.port, unit.ready_path, cfg.probe_timeout_s)
            self.hooks.on_probe(unit, ok, "liveness")
            # The deep probe would queue behind real requests; while some are in flight, their
            # own progress is the proof that the server generates.
            deep_due = taken >= self._deep_due.get(due_key, 0) and not actor.inflight
            if ok and unit.kind == "llama" and cfg.deep_probe_interval_s > 0 and deep_due:
                self._deep_due[due_key] = taken + cfg.deep_probe_interval_s
                ok, detail = await self.http.generates(unit.port, cfg.probe_timeout_s)
                self.hooks.on_probe(unit, ok, "deep")
            actor.send(Probe(ok, detail, taken))
        finally:
            self._probing[unit.program] -= 1

    # ---- what the actors report ---------------------------------------------------------------
    def on_transition(self, unit, source, target, reason):
        self.hooks.on_transition(unit, source, target, reason)
        # Every request's READY <-> BUSY passes here: the test for script work comes first and costs one lookup.
        if unit.script and target in SCRIPT_ENDING and source not in SCRIPT_ENDING and unit.gpus[0] in self.switched:
            self.post(switch.Restore(unit.gpus[0]))

    def on_ready(self, unit, load_seconds):
        self.hooks.on_ready(unit, load_seconds)
        asyncio.ensure_future(self._record_actual(unit))

    async def _record_actual(self, unit: Unit) -> None:
        try:
            await self.settle()
        except SupervisorError as e:  # (a task of its own: nothing else would see the error)
            supervisor_refused(f"memory after load of {unit.name}", e)
            return
        self.actuals[unit.name] = self.actual(unit)
        est = self.estimate(unit)
        log.info("memory after load", extra={"model": unit.name, "gpus": unit.gpu_label,
                                             "estimate": est.per_gpu if est else None,
                                             "actual": self.actuals[unit.name]})
        self.hooks.on_memory(unit, est.per_gpu if est else {}, self.actuals[unit.name])

    def on_restart(self, unit, reason):
        self.hooks.on_restart(unit, reason)

    def on_circuit(self, unit, is_open):
        self.hooks.on_circuit(unit, is_open)

    def on_verdict(self, unit, verdict):
        self.hooks.on_verdict(unit, verdict)

    def on_stop_verified(self, unit, ok, reason):
        self.hooks.on_stop_verified(unit, ok, reason)

    def gpu_pids(self, unit) -> set[int]:
        if self.inventory.simulated:
            return set()
        return set().union(*(self.inventory.pids_on(g) for g in unit.gpus))

    # ---- the API's side -----------------------------------------------------------------------
    def actor(self, name: str) -> UnitActor:
        if name not in self.actors:
            raise UnknownModel("model_not_found", f"model {name!r} is not in this rig; known: "
                               f"{', '.join(sorted(self.actors))}")
        return self.actors[name]

    async def acquire(self, name: str) -> Lease:
        """A lease on a serving unit; waits (bounded) while a cold unit loads. A script service's
        request goes to the placement scale.route picks."""
        actor = self.actor(name)
        if actor.unit.script:
            actor = scale.route(self, name)
        if self.closing:
            raise NotAvailable("shutting_down", "the compute API is shutting down", 30)
        command = Acquire(may_wait=True)
        actor.send(command)
        if command.reply.done():  # handled at once (the usual case for a serving unit)
            return command.reply.result()
        # A timer on the reply rather than wait_for(shield(...)): cheaper per request, and a
        # caller that goes away cancels the reply, which the actor then skips (no lost lease).
        limit = self.rig.lifecycle.queue_timeout_s
        timer = asyncio.get_running_loop().call_later(limit, _give_up, command.reply, name, limit)
        try:
            return await command.reply
        finally:
            timer.cancel()

    async def start_unit(self, name: str) -> None:
        """Through the planner (lifecycle/operator.py): refused while its GPU is lent."""
        self.actor(name)
        await operator.ask(self, name)

    def stop_unit(self, name: str, drain: bool = True) -> None:
        self.actor(name).send(Stop("operator stop", drain=drain, operator=True))

    async def reset(self, name: str) -> None:
        self.actor(name)
        await operator.ask(self, name, reset=True)

    async def take_gpu(self, holder: str, ttl_s: float) -> dict:
        """A whole GPU for a script command; NotAvailable when none can be lent now."""
        command = gpu_leases.TakeGpu(holder, ttl_s)
        self.post(command)
        return await self._answer(command, f"the lease for {holder}")

    async def return_gpu(self, lease_id: str, reason: str) -> bool:
        command = gpu_leases.ReturnGpu(lease_id, reason)
        self.post(command)
        return await self._answer(command, f"the return of lease {lease_id}")

    async def _answer(self, command, what: str):
        """The planner's reply, waited for at most a switch's limit and a margin: a caller is not
        held for ever by a planner stuck behind a load (a lease given after that expires unrenewed)."""
        limit = self.modes.limit_s + PLANNER_MARGIN_S
        try:
            return await asyncio.wait_for(asyncio.shield(command.reply), limit)
        except asyncio.TimeoutError:
            raise NotAvailable("planner_busy", f"the planner did not answer {what} within {limit:g} s (a load or "
                               "a switch holds it): try again", 5) from None

    def renew_gpu(self, lease_id: str) -> dict | None:
        return gpu_leases.renew(self, lease_id)

    async def reload(self, name: str) -> dict:
        """Planned like a load, on the planner: its record once the decision is taken."""
        self.actor(name)  # an unknown model is refused here, not on the planner
        command = PlanReload(name)
        self.post(command)
        return await self._answer(command, f"the reload of {name}")

    async def stop_all(self, drain: bool = True) -> None:
        for actor in self.all_actors():
            actor.send(Stop("operator stop", drain=drain, operator=True))
        limit = self.rig.timeouts.stop_budget_s
        await asyncio.gather(*(a.wait_until(ENDED, limit)
                               for a in self.all_actors()))

    async def drain_requests(self) -> None:
        """Stop taking requests and wait for those in flight (the process is going away;
        supervisord stops the servers after us)."""
        self.closing = True
        deadline = time.monotonic() + self.rig.timeouts.drain_s
        while any(a.inflight for a in self.actors.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def gpu_report(self) -> list[dict]:
        """Each GPU's memory reading and the units pinned to it (the active slot of each model)."""
        units = [a.unit for a in self.actors.values()]
        return [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "used_bytes": g.used_bytes,
                 "units": [u.name for u in units if g.index in u.gpus], **self.modes.report(g.index)}
                for g in self.inventory.read()]

    def ready_report(self) -> tuple[bool, list[dict]]:
        rows = [a.snapshot() for a in self.actors.values()]
        # A model whose GPU was switched to script work is stopped by plan, not down.
        ok = self.booted.is_set() and all(r["state"] in ("ready", "busy") or any(g in self.switched for g in r["gpus"])
                                          for r in rows if r["required"] and r["warm"])
        return ok, rows


def _give_up(reply: asyncio.Future, name: str, limit: float) -> None:
    if not reply.done():
        reply.set_exception(NotAvailable("load_timeout", f"model {name!r} did not become ready within {limit:g} s "
                                         "(queue_timeout_s)", 10))
