"""Which waiting task goes first: Temporal's priority key (1 first, strict within one task-queue
partition). Key 1 is kept for a task that waited past work.starvation_s. Then the task's
priority (10 most urgent), and within one priority the task with the longer chain of tasks
waiting on it (critical path first: a DAG of 200 at 16 slots ended 16 % sooner this way than in
arrival order, bench/RESULTS.md). Pure: the workflow and the engine's config both use it."""
from __future__ import annotations

CHAIN_LEVELS = 5  # chains of dependents this long or longer share the first place of their priority
STARVED = 1
LEVELS = 1 + 10 * CHAIN_LEVELS  # matching.priorityLevels


def key(priority: int, chain: int) -> int:
    """priority 1..10; chain: tasks on the longest path from this one to the plan's end, itself included."""
    return 2 + (10 - priority) * CHAIN_LEVELS + CHAIN_LEVELS - min(chain, CHAIN_LEVELS)


def chains(tasks: list[dict]) -> dict[str, int]:
    """name -> the longest chain of dependents starting at it (1: nothing waits on it)."""
    waiting = _waiting(tasks)
    length: dict[str, int] = {}
    for name in _dependents_first(tasks, waiting):
        length[name] = 1 + max((length[w] for w in waiting[name]), default=0)
    return length


def dependencies_first(tasks: list[dict]) -> list[str]:
    """Every name after all the tasks it depends on."""
    return _dependents_first(tasks, _waiting(tasks))[::-1]


def _waiting(tasks: list[dict]) -> dict[str, list[str]]:
    """name -> the tasks that depend on it."""
    waiting: dict[str, list[str]] = {t["name"]: [] for t in tasks}
    for t in tasks:
        for d in t["depends_on"]:
            waiting[d].append(t["name"])
    return waiting


def _dependents_first(tasks: list[dict], waiting: dict[str, list[str]]) -> list[str]:
    """Every name after all the tasks waiting on it (a depth-first post-order, without recursion:
    plans of thousands of tasks; plans are validated acyclic)."""
    out, seen = [], set()
    for t in tasks:
        stack = [(t["name"], False)]
        while stack:
            name, done = stack.pop()
            if done:
                out.append(name)
            elif name not in seen:
                seen.add(name)
                stack.append((name, True))
                stack.extend((w, False) for w in waiting[name] if w not in seen)
    return out
