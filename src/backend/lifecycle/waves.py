"""Wave planning: which units to start next, given their estimates and the free memory.

Pure functions. A wave is the units of the lowest pending priority that fit, planned against
the free memory read just before it; after a wave loads and readings settle, the next wave is
planned again from fresh readings, so estimate errors do not pile up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024 ** 3


@dataclass(frozen=True)
class Candidate:
    name: str
    priority: int
    need: dict[int, int]  # GPU index -> bytes


@dataclass
class Wave:
    start: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # name -> reason


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def shortfall(need: dict[int, int], free: dict[int, int], margin: int = 0) -> str | None:
    """Reason a unit does not fit in `free` less `margin` on every GPU, or None if it does."""
    free = {g: f - margin for g, f in free.items()}
    for gpu, bytes_needed in sorted(need.items()):
        if gpu not in free:
            return f"GPU {gpu} is not in the inventory"
        if bytes_needed > free[gpu]:
            return f"needs {_gib(bytes_needed)} on GPU {gpu}, {_gib(max(0, free[gpu]))} free"
    return None


def next_wave(pending: list[Candidate], free: dict[int, int], margin: int) -> Wave:
    """Plan one wave: the lowest pending priority level, each unit that fits in turn."""
    wave = Wave()
    if not pending:
        return wave
    level = min(c.priority for c in pending)
    budget = {g: f - margin for g, f in free.items()}
    for c in sorted(pending, key=lambda c: (c.priority, c.name)):
        if c.priority != level:
            continue
        reason = shortfall(c.need, budget)
        if reason:
            wave.refused[c.name] = reason
            continue
        for gpu, n in c.need.items():
            budget[gpu] -= n
        wave.start.append(c.name)
    return wave


def plan_all(pending: list[Candidate], free: dict[int, int], margin: int) -> list[Wave]:
    """Every wave assuming estimates are exact (for `llamarig plan` and tests)."""
    waves, left, free = [], list(pending), dict(free)
    while left:
        wave = next_wave(left, free, margin)
        for name in wave.start:
            for gpu, n in next(c for c in left if c.name == name).need.items():
                free[gpu] -= n
        done = set(wave.start) | set(wave.refused)
        left = [c for c in left if c.name not in done]
        waves.append(wave)
    return waves


def lru_victims(need: dict[int, int], free: dict[int, int], margin: int,
                idle: list[tuple[str, float, dict[int, int]]]) -> list[str] | None:
    """Idle units to unload, least recently used first, until `need` fits; None if even
    unloading all of them is not enough. `idle` holds (name, last_used, usage per GPU) of
    units that may be evicted: never busy, loading or in the warm set."""
    budget = {g: f - margin for g, f in free.items()}
    victims = []
    for name, _, usage in sorted(idle, key=lambda v: v[1]):
        if shortfall(need, budget) is None:
            break
        if not set(usage) & set(need):
            continue
        victims.append(name)
        for gpu, n in usage.items():
            budget[gpu] = budget.get(gpu, 0) + n
    return victims if shortfall(need, budget) is None else None
