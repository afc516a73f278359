"""Which waiting task goes first: Temporal's priority key (1 first, strict within one task-queue
partition). Key 1 is kept for a task that waited past work.starvation_s. Then the task's
priority (10 most urgent), and within one priority the task with the most work still to do
after it starts: its own expected_s and that of the longest path of tasks waiting on it
(longest remaining work first; the workflow puts in what the rig learned, work/durations.py,
for tasks the plan does not say). A task without expected_s counts as the mean of the plan's
known ones, and a plan with none counts its tasks (the longest chain of dependents first). A
DAG of 200 sleeping tasks at 16 slots: 16 % sooner than arrival order by chains, and closer
still to its bound with expected_s (bench/RESULTS.md). Pure: the workflow and the engine's config
both use it."""
from __future__ import annotations

import math

RANK_LEVELS = 20  # places within one priority; a plan's remaining work is cut into this many
STARVED = 1
LEVELS = 1 + 10 * RANK_LEVELS  # matching.priorityLevels
CHAIN_LEVELS = 5  # plans started before remaining-work order (workflow.patched) replay with these keys


def key(priority: int, level: int) -> int:
    """priority 1..10; level 1..RANK_LEVELS, RANK_LEVELS for the most remaining work of its plan."""
    return 2 + (10 - priority) * RANK_LEVELS + RANK_LEVELS - level


def order(tasks: list[dict]) -> dict[str, tuple[int, float, int]]:
    """name -> (Temporal's priority key, minus the remaining work, place in the plan): the plan
    workflow lets its tasks into Temporal in this order; Temporal orders by the key alone."""
    left = remaining(tasks)
    top = max(left.values())
    return {t["name"]: (key(t["priority"], max(1, math.ceil(left[t["name"]] / top * RANK_LEVELS))),
                        -left[t["name"]], i) for i, t in enumerate(tasks)}


def remaining(tasks: list[dict]) -> dict[str, float]:
    """name -> its expected seconds plus those of the longest path of tasks waiting on it."""
    given = [t["expected_s"] for t in tasks if t.get("expected_s")]
    unknown = sum(given) / len(given) if given else 1.0
    waiting = _waiting(tasks)
    weight = {t["name"]: t.get("expected_s") or unknown for t in tasks}
    left: dict[str, float] = {}
    for name in _dependents_first(tasks, waiting):
        left[name] = weight[name] + max((left[w] for w in waiting[name]), default=0.0)
    return left


def legacy_order(tasks: list[dict]) -> dict[str, tuple[int, float, int]]:
    """The order of plans started before remaining-work order: the chain of dependents, capped
    at CHAIN_LEVELS, and those keys (Temporal may still hold their tasks)."""
    chains = remaining([{"name": t["name"], "depends_on": t["depends_on"]} for t in tasks])
    capped = {name: min(int(chain), CHAIN_LEVELS) for name, chain in chains.items()}
    return {t["name"]: (2 + (10 - t["priority"]) * CHAIN_LEVELS + CHAIN_LEVELS - capped[t["name"]], 0, i)
            for i, t in enumerate(tasks)}


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
