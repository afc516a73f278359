"""The worker processes of a rig, as supervisord runs them: work-gpu, and work-cpu, or with
work.cpu_processes N above 1 the group work-cpu of work-cpu-0 .. work-cpu-(N-1) (numprocs). Each
cpu process is a whole worker (plans and cpu tasks) with its share of concurrency.cpu: one Python
process bounds the rate of short tasks (bench/RESULTS.md), more use more cores."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerProcess:
    role: str  # cpu or gpu
    index: int | None = None  # None: the role's only process

    @property
    def name(self) -> str:
        """work-cpu, work-cpu-1: supervisord's process name, its log file, the worker's identity."""
        return f"work-{self.role}" + ("" if self.index is None else f"-{self.index}")

    @property
    def namespec(self) -> str:
        """What supervisorctl and supervisord's XML-RPC take: work-cpu, or work-cpu:work-cpu-1."""
        return self.name if self.index is None else f"work-{self.role}:{self.name}"

    @property
    def key(self) -> str:
        """cpu, cpu-1: the alive file's suffix (watchdog.py) and its commands' owner (commands.sweep)."""
        return self.name.removeprefix("work-")


def of_rig(rig) -> list[WorkerProcess]:
    n = rig.work.cpu_processes
    cpu = [WorkerProcess("cpu")] if n == 1 else [WorkerProcess("cpu", i) for i in range(n)]
    return cpu + [WorkerProcess("gpu")]


def cpu_slots(work, index: int | None) -> int:
    """This process's share of concurrency.cpu: the rig's total, split as evenly as it goes."""
    n, total = work.cpu_processes, work.concurrency.cpu
    return total if index is None else total // n + (1 if index < total % n else 0)

