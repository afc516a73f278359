"""The lifecycle manager: the compute API's side of the units (acquire a lease on a serving
unit, operator commands, reports) over the parts that decide (the planner, planner.py), watch
(the health loop, health.py) and measure (memory.py).

It lives in the compute API process, where the drain can see in-flight requests. Each unit's
own state changes only inside its actor; everything that spans units goes to the planner as a
command; the manager itself writes nothing but `closing`.
"""
from __future__ import annotations

import asyncio
import logging
import time

from llamarig.backend.launch import checks_for, plan_for, verify_unit
from llamarig.backend.lifecycle import gpu_leases, operator, scale, swap, switch, thermal
from llamarig.backend.lifecycle.actor import Lease, NotAvailable, UnitActor
from llamarig.backend.lifecycle.commands import Acquire, Stop
from llamarig.backend.lifecycle.health import Health, supervisor_refused
from llamarig.backend.lifecycle.jobs import Deps, Events, HeldEvents
from llamarig.backend.lifecycle.memory import Memory
from llamarig.backend.lifecycle.planner import Planner, UnknownModel
from llamarig.backend.lifecycle.states import ENDED, State
from llamarig.backend.lifecycle.units import Unit, green_units, placement_units, units_from_rig
from llamarig.backend.llama_http import ServerHttp
from llamarig.backend.supervisor import SupervisorClient
from llamarig.shared.errors import SupervisorError
from llamarig.shared.gpus import GpuInventory
from llamarig.shared.rig import Rig
from llamarig.shared.verify import wait_until_verified

__all__ = ["Manager", "UnknownModel"]
log = logging.getLogger("llamarig.manager")
SCRIPT_ENDING = frozenset({State.DRAINING, State.STOPPING, State.STOPPED, State.FAILED})  # its GPU goes back
PLANNER_MARGIN_S = 10.0  # over a switch's limit (stop and load budgets), the longest a planner step waits


class Manager(Events):
    def __init__(self, rig: Rig, supervisor: SupervisorClient, http: ServerHttp,
                 inventory: GpuInventory | None = None, hooks: Events | None = None, tree=None):
        self.supervisor = supervisor
        self.http = http
        self.hooks = hooks or Events()
        units = {u.name: u for u in units_from_rig(rig)}
        checks = checks_for(rig, settle=False)
        # Like the launch gate, wait while a refusal is transient (a copy in progress).
        deps = Deps(rig, supervisor, http, lambda unit: wait_until_verified(
            lambda: verify_unit(self.planner.rig_for(unit), unit.name, checks), rig.timeouts.model_wait_s),
            lambda unit: plan_for(self.planner.rig_for(unit), unit.name, unit.slot,
                                  on_gpu=not self.inventory.simulated, pinned=unit.name in self.planner.kept), self)
        greens = green_units(rig)
        # Each model has one actor per server slot; routing goes to the active slot's actor.
        slots = {name: [UnitActor(unit, deps)] + ([UnitActor(greens[name], deps)] if name in greens else [])
                 for name, unit in units.items()}
        for name, placements in placement_units(rig).items():  # placed by the planner: a slot per GPU
            slots[name] = [UnitActor(u, deps) for u in placements]
        actors = lambda: [a for s in slots.values() for a in s]  # noqa: E731
        self.memory = Memory(rig, self._rig_for, supervisor,
                             actors, self, inventory,
                             **({"tree": tree} if tree else {}))
        self.inventory = self.memory.inventory
        self.planner = Planner(rig, slots, self.memory, self)
        self.health = Health(rig, supervisor, http, self.memory, actors, lambda: self.hooks)
        self._tasks: list[asyncio.Task] = []
        self.closing = False

    # ---- readers' views (the planner writes them) ---------------------------------------------
    @property
    def rig(self) -> Rig:
        return self.planner.rig

    def _rig_for(self, unit: Unit | None) -> Rig:
        return self.planner.rig_for(unit)

    @property
    def actors(self) -> dict[str, UnitActor]:
        return self.planner.actors

    @property
    def slots(self) -> dict[str, list[UnitActor]]:
        return self.planner.slots

    @property
    def modes(self):
        return self.planner.modes

    @property
    def swaps(self) -> dict[str, dict]:
        return self.planner.swaps

    @property
    def booted(self) -> asyncio.Event:
        return self.planner.booted

    @property
    def boot_waves(self) -> list[dict]:
        return self.planner.boot_waves

    @property
    def program_states(self) -> dict[str, str]:
        return self.memory.program_states

    def all_actors(self) -> list[UnitActor]:
        return self.planner.all_actors()

    def listen(self, hooks: Events) -> None:
        """Send unit events to `hooks` from now on, after what was held for them."""
        if isinstance(self.hooks, HeldEvents):
            self.hooks.hand_to(hooks)
        self.hooks = hooks

    # ---- running ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        thermal.apply_power_limit(self.inventory, self.rig.thermal)
        self._tasks = [loop.create_task(self.health.loop(), name="health"),
                       loop.create_task(self.planner.run(), name="planner"),
                       loop.create_task(thermal.read_every(self.inventory, self.planner.post, self.rig.thermal),
                                        name="thermal")]

    async def close(self) -> None:
        for a in self.all_actors():
            a.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.planner.close()

    # ---- what the actors report ---------------------------------------------------------------
    def on_transition(self, unit, source, target, reason):
        self.hooks.on_transition(unit, source, target, reason)
        # Every request's READY <-> BUSY passes here: the test for script work comes first and costs one lookup.
        if unit.script and target in SCRIPT_ENDING and source not in SCRIPT_ENDING and unit.gpus[0] in self.planner.switched:
            self.planner.post(switch.Restore(unit.gpus[0]))

    def on_ready(self, unit, load_seconds):
        self.hooks.on_ready(unit, load_seconds)
        asyncio.ensure_future(self._record_actual(unit))

    async def _record_actual(self, unit: Unit) -> None:
        try:
            await self.memory.record_actual(unit)
        except SupervisorError as e:  # (a task of its own: nothing else would see the error)
            supervisor_refused(f"memory after load of {unit.name}", e)

    def on_switch(self, gpu, direction, seconds):
        self.hooks.on_switch(gpu, direction, seconds)

    def on_memory(self, unit, estimate, actual):
        self.hooks.on_memory(unit, estimate, actual)

    def on_restart(self, unit, reason):
        self.hooks.on_restart(unit, reason)

    def on_circuit(self, unit, is_open):
        self.hooks.on_circuit(unit, is_open)

    def on_verdict(self, unit, verdict):
        self.hooks.on_verdict(unit, verdict)

    def on_stop_verified(self, unit, ok, reason):
        self.hooks.on_stop_verified(unit, ok, reason)

    def request_load(self, unit: Unit) -> None:
        self.planner.request_load(unit)

    def suspect(self, unit: Unit) -> None:
        self.health.suspect(unit)

    def gpu_pids(self, unit) -> set[int]:
        return self.memory.gpu_pids(unit)

    # ---- the API's side -----------------------------------------------------------------------
    def actor(self, name: str) -> UnitActor:
        return self.planner.actor(name)

    def try_acquire(self, name: str) -> Lease | None:
        """A lease at once on a serving unit, else None (then: acquire). Not a coroutine: every
        request asks, and most are answered here."""
        actor = self.actor(name)
        if actor.unit.script:
            actor = scale.route(self.planner, name)
        if self.closing:
            raise NotAvailable("shutting_down", "the compute API is shutting down", 30)
        return actor.try_lease()

    async def acquire(self, name: str) -> Lease:
        """A lease on a serving unit; waits (bounded) while a cold unit loads. A script service's
        request goes to the placement scale.route picks."""
        lease = self.try_acquire(name)
        if lease is not None:  # the usual case: it serves
            return lease
        actor = self.actor(name)
        if actor.unit.script:
            actor = scale.route(self.planner, name)
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
        await operator.ask(self.planner, name)

    def stop_unit(self, name: str, drain: bool = True) -> None:
        """Every server of the model: a reload's green one too (it would serve once loaded),
        every placement of a script service."""
        self.actor(name)
        for actor in self.planner.slots[name]:
            actor.send(Stop("operator stop", drain=drain, operator=True))

    async def reset(self, name: str) -> None:
        self.actor(name)
        await operator.ask(self.planner, name, reset=True)

    async def take_gpu(self, holder: str, ttl_s: float) -> dict:
        """A whole GPU for a script command; NotAvailable when none can be lent now."""
        command = gpu_leases.TakeGpu(holder, ttl_s)
        self.planner.post(command)
        return await self._answer(command, f"the lease for {holder}")

    async def return_gpu(self, lease_id: str, reason: str) -> bool:
        command = gpu_leases.ReturnGpu(lease_id, reason)
        self.planner.post(command)
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
        return gpu_leases.renew(self.planner, lease_id)

    async def reload(self, name: str) -> dict:
        """Planned like a load, on the planner: its record once the decision is taken."""
        self.actor(name)  # an unknown model is refused here, not on the planner
        command = swap.PlanReload(name)
        self.planner.post(command)
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
                 "units": [u.name for u in units if g.index in u.gpus], **self.modes.report(g.index),
                 **self.planner.thermal.report(g.index), "power_w": g.power_w, "power_limit_w": g.power_limit_w,
                 "throttle": list(g.throttle)}
                for g in self.inventory.read()]

    def ready_report(self) -> tuple[bool, list[dict]]:
        rows = [a.snapshot() for a in self.actors.values()]
        # A model whose GPU was switched to script work is stopped by plan, not down.
        switched = self.planner.switched
        ok = self.booted.is_set() and all(r["state"] in ("ready", "busy") or any(g in switched for g in r["gpus"])
                                          for r in rows if r["required"] and r["warm"])
        return ok, rows


def _give_up(reply: asyncio.Future, name: str, limit: float) -> None:
    if not reply.done():
        reply.set_exception(NotAvailable("load_timeout", f"model {name!r} did not become ready within {limit:g} s "
                                         "(queue_timeout_s)", 10))
