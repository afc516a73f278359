"""GPU memory as the planner sees it: readings (NVML, or the simulated inventory's resident
memory of the processes pinned to each GPU), each unit's estimate and measured use, and the
planner's reservations.

Memory promised but not yet in the reading is subtracted from it (`planned_free`), so that a
decision made meanwhile never plans on the same memory: what a unit has not taken yet of its
need while it loads, waits to start again after a stop (a drain-first reload) or waits for a
restart after a crash; and explicit reservations, for a unit the planner has decided to start
but not started yet (a load waiting for its evictions) or one with other settings (a reload's
green server). The planner is the only writer of reservations; `refresh_pids` of the readings.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import psutil

from llamarig.backend.lifecycle.jobs import Events, tree_pids
from llamarig.backend.lifecycle.states import SERVING
from llamarig.backend.lifecycle.units import Unit
from llamarig.backend.supervisor import SupervisorClient
from llamarig.shared.gguf_header import GgufError, read_header
from llamarig.shared.gpus import GpuInventory, open_inventory, simulated_temperatures
from llamarig.shared.rig import Rig
from llamarig.shared.vram import Estimate, estimate, estimate_folder

log = logging.getLogger("llamarig.memory")
MIB = 1024 * 1024


class Memory:
    settle_poll_s = 0.25  # freed VRAM takes time to show: two readings this far apart must agree

    def __init__(self, rig: Rig, rig_of: Callable[[Unit | None], Rig], supervisor: SupervisorClient,
                 actors: Callable[[], list], events: Events, inventory: GpuInventory | None,
                 tree: Callable[[int], set[int]] = tree_pids):
        self.rig_of = rig_of          # the rig a unit's program starts with (a reload's before it commits)
        self.supervisor = supervisor
        self.actors = actors          # every slot's actor
        self.events = events
        self.tree = tree
        self.pids: dict[str, int] = {}  # (before the first reading: a simulated one sums their memory)
        self.pids_read_at = 0.0  # monotonic time `pids` was asked for
        self.program_states: dict[str, str] = {}
        self.estimates: dict[str, Estimate] = {}  # by program
        self.actuals: dict[str, dict[int, int]] = {}  # by model, measured after its load
        self.reservations: dict[str, tuple[Unit, dict[int, int]]] = {}  # by program
        self.inventory = inventory or open_inventory(rig.gpus, self._simulated_used,
                                                     lambda: simulated_temperatures(rig.run_dir))

    # ---- estimates ----------------------------------------------------------------------------
    def estimate(self, unit: Unit, rig: Rig | None = None) -> Estimate | None:
        """Memory a unit needs with the rig's settings (or `rig`'s, uncached: a reload's)."""
        if rig is None and unit.program in self.estimates:  # by program: Whisper's placements differ
            return self.estimates[unit.program]
        rig_ = rig or self.rig_of(None)
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

    def need(self, unit: Unit, rig: Rig | None = None) -> dict[int, int]:
        """Bytes per GPU the unit needs (estimate's rules); {}: not known."""
        est = self.estimate(unit, rig)
        return est.per_gpu if est else {}

    # ---- reservations -------------------------------------------------------------------------
    def reserve(self, unit: Unit, need: dict[int, int]) -> None:
        self.reservations[unit.program] = (unit, need)
        log.info("memory reserved", extra={"program": unit.program, "need": need})

    def release(self, unit: Unit) -> None:
        if self.reservations.pop(unit.program, None) is not None:
            log.info("memory reservation released", extra={"program": unit.program})

    def reserved_gpus(self) -> set[int]:
        return {g for _, need in self.reservations.values() for g in need}

    def planned_free(self, free: dict[int, int], besides: Unit | None = None) -> dict[int, int]:
        """`free` less what units claiming memory and reservations (other than `besides`'s own)
        have not taken yet."""
        claims = {a.unit.program: (a.unit, None) for a in self.actors() if a.claims_memory or self._exited_unseen(a)}
        claims.update(self.reservations)  # (its need as reserved: a reload's may differ from the rig's)
        out = dict(free)
        for program, (unit, need) in claims.items():
            if besides is not None and program == besides.program:
                continue
            taken = self.actual(unit)
            for g, n in (self.need(unit) if need is None else need).items():
                out[g] = out.get(g, 0) - max(0, n - taken.get(g, 0))
        return out

    def _exited_unseen(self, actor) -> bool:
        """Serving by its actor's account, but its process is gone by supervisord's latest reading:
        a crash the health loop has not reported yet, whose restart will take the memory back
        (the harness found a load planned into that memory in the moment between)."""
        if actor.state not in SERVING:
            return False
        seen = self.program_states.get(actor.unit.program)
        return seen is not None and seen not in ("RUNNING", "STOPPING")

    # ---- readings -----------------------------------------------------------------------------
    def free_bytes(self) -> dict[int, int]:
        return {g.index: g.free_bytes for g in self.inventory.read()}

    def _tree_rss(self, pid: int) -> int:
        total = 0
        for p in self.tree(pid):
            try:
                total += psutil.Process(p).memory_info().rss
            except psutil.Error:
                pass  # it ended between the listing and the reading
        return total

    def _simulated_used(self, gpu: int) -> int:
        """Simulated 'used memory' of a GPU: resident memory of the processes pinned to it,
        split by each unit's share of that GPU."""
        used = 0
        for unit in (a.unit for a in self.actors()):
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
        return {g: self.inventory.process_bytes(g, self.tree(pid)) for g in unit.gpus}

    def gpu_pids(self, unit: Unit) -> set[int]:
        if self.inventory.simulated:
            return set()
        return set().union(*(self.inventory.pids_on(g) for g in unit.gpus))

    async def settle(self) -> dict[int, int]:
        """Free memory once two readings settle_poll_s apart agree within 1 % (freed VRAM takes
        time to show), or after vram_settle_s."""
        deadline = time.monotonic() + self.rig_of(None).lifecycle.vram_settle_s
        await self.refresh_pids()
        last = self.free_bytes()
        while time.monotonic() < deadline:
            await asyncio.sleep(self.settle_poll_s)
            await self.refresh_pids()
            now = self.free_bytes()
            if all(abs(now[g] - last[g]) <= 0.01 * max(last[g], MIB) for g in now):
                return now
            last = now
        return last

    async def refresh_pids(self) -> dict[str, dict]:
        asked = time.monotonic()
        infos = await self.supervisor.run("all_info")
        self.pids_read_at = asked
        self.pids = {name: i["pid"] for name, i in infos.items() if i["pid"]}
        self.program_states = {name: i["statename"] for name, i in infos.items()}
        return infos

    async def record_actual(self, unit: Unit) -> None:
        """After a load: what the unit holds, beside its estimate (logged, and a metric)."""
        await self.settle()
        self.actuals[unit.name] = self.actual(unit)
        est = self.estimate(unit)
        log.info("memory after load", extra={"model": unit.name, "gpus": unit.gpu_label,
                                             "estimate": est.per_gpu if est else None,
                                             "actual": self.actuals[unit.name]})
        self.events.on_memory(unit, est.per_gpu if est else {}, self.actuals[unit.name])
