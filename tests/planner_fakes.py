"""In-process stand-ins for what the planner stands on: supervisord, the servers' HTTP and the
GPU inventory. No process starts: a "program" is a row here, its memory the unit's estimate,
its server ready as soon as it runs. The actors, the planner and the manager are the real ones.
"""
from __future__ import annotations

import itertools
import time

from llamarig.backend.lifecycle.manager import Manager
from llamarig.shared.errors import SupervisorError
from llamarig.shared.gpus import GpuReading
from llamarig.shared.rig import load_rig

FAKE_PIDS = itertools.count(50_000_000)  # past any pid_max: psutil finds no such process


class FakeRig:
    """Programs, their memory and their servers, shared by the three fakes."""

    def __init__(self):
        self.programs: dict[str, dict] = {}   # name -> supervisord-shaped info
        self.bytes: dict[str, dict[int, int]] = {}  # name -> memory per GPU while running
        self.ports: dict[int, str] = {}       # port -> program
        self.need = lambda program: {}        # set by the harness: the unit's estimate
        self.total: dict[int, int] = {}       # GPU -> capacity
        self.starts: list[tuple[float, str]] = []
        self.slow: set[str] = set()  # programs still loading: no answer yet, and their memory not in the reading
        self.celsius: dict[int, float] = {}  # GPU -> its temperature (the thermal policy's input)

    def add(self, program: str, port: int) -> None:
        self.programs[program] = {"name": program, "statename": "STOPPED", "pid": 0, "stop": 0, "exitstatus": 0}
        self.ports[port] = program

    def running(self, program: str) -> bool:
        return self.programs[program]["statename"] == "RUNNING"

    def crash(self, program: str) -> None:
        info = self.programs[program]
        if info["statename"] == "RUNNING":
            info.update(statename="EXITED", pid=0, stop=info["stop"] + 1, exitstatus=1)

    def holds(self, program: str) -> bool:
        return self.running(program) and program not in self.slow

    def used(self, gpu: int) -> int:
        return sum(b.get(gpu, 0) for p, b in self.bytes.items() if self.holds(p))


class FakeSupervisor:
    def __init__(self, rig: FakeRig):
        self.rig = rig
        self.down_until = 0.0  # monotonic: every call fails until then (supervisord restarting)

    def _up(self) -> None:
        if time.monotonic() < self.down_until:
            raise SupervisorError("supervisor_unreachable", "the harness took supervisord down")

    def info(self, program: str) -> dict:
        self._up()
        return dict(self.rig.programs[program])

    async def run(self, method: str, *args):
        self._up()
        programs = self.rig.programs
        if method == "all_info":
            return {name: dict(i) for name, i in programs.items()}
        if method == "info":
            return dict(programs[args[0]])
        if method == "exit_cause":
            return "exit status 1 (a crash the harness made)"
        info = programs[args[0]]
        if method == "start":
            if info["statename"] == "RUNNING":
                raise SupervisorError("supervisor_fault", f"{args[0]}: ALREADY_STARTED")
            self.rig.bytes[args[0]] = self.rig.need(args[0])
            self.rig.starts.append((time.monotonic(), args[0]))
            info.update(statename="RUNNING", pid=next(FAKE_PIDS))
            return True
        if method == "stop":
            info.update(statename="STOPPED", pid=0, stop=info["stop"] + 1)
            return True
        raise AssertionError(f"the fake supervisor has no {method}")


class FakeHttp:
    def __init__(self, rig: FakeRig):
        self.rig = rig

    async def ready(self, port: int, path: str, timeout: float) -> tuple[bool, str]:
        program = self.rig.ports.get(port)
        if program in self.rig.slow:
            return False, "503 loading"
        return (True, "ok") if program and self.rig.running(program) else (False, "connection refused")

    async def generates(self, port: int, timeout: float) -> tuple[bool, str]:
        return await self.ready(port, "/health", timeout)


class FakeInventory:
    simulated = False
    reason = "the planner harness's inventory"

    def __init__(self, rig: FakeRig):
        self.rig = rig

    def read(self) -> list[GpuReading]:
        return [GpuReading(g, "Fake GPU", total, min(total, self.rig.used(g)), temperature_c=self.rig.celsius.get(g))
                for g, total in self.rig.total.items()]

    def temperatures(self) -> dict[int, float]:
        return {g: c for g, c in self.rig.celsius.items() if g in self.rig.total}

    def pids_on(self, index: int) -> set[int]:
        return {i["pid"] for p, i in self.rig.programs.items() if self.rig.running(p) and index in self.rig.bytes[p]}

    def process_bytes(self, index: int, pids: set[int]) -> int:
        return sum(b.get(index, 0) for p, b in self.rig.bytes.items()
                   if self.rig.holds(p) and self.rig.programs[p]["pid"] in pids)


def fake_manager(rig_path, capacity=None) -> tuple[Manager, FakeRig]:
    """The real manager on the fakes; capacity(needs) -> each GPU's memory, from the units'
    estimates (default: room for everything). Not started."""
    fake = FakeRig()
    fake.total = {g: 0 for g in range(5)}
    m = Manager(load_rig(rig_path), FakeSupervisor(fake), FakeHttp(fake), inventory=FakeInventory(fake),
                tree=lambda pid: {pid})
    m.memory.settle_poll_s = 0.01
    units = {a.unit.program: a.unit for a in m.all_actors()}
    for unit in units.values():
        fake.add(unit.program, unit.port)
    fake.need = lambda program: m.memory.need(units[program])
    needs = {u.program: sum(m.memory.need(u).values()) for u in units.values()}
    fake.total = {g: (capacity or (lambda n: sum(n.values())))(needs) for g in range(5)}
    return m, fake
