"""A new plan that reuses what an ended plan already did (`llamarig retry ID`, `llamarig submit
PLAN --reuse ID`): a task is not run again when it succeeded there with the same definition,
its output is still there, and every task it depends on is reused too (so a task whose input
changes runs again, and so do its dependents). Priority, retries and timeout_s say when and how
long, not what (so does expected_s): changing them does not make a task run again."""
from __future__ import annotations

import asyncio
from pathlib import Path

from llamarig.work import outputs, priority

HOW_NOT_WHAT = ("priority", "expected_s", "retries", "timeout_s", "class_inferred")


def reusable(tasks: list[dict], old_tasks: list[dict], old_states: dict[str, dict], present) -> list[str]:
    """The names of `tasks` (a plan's model_dump) that the old plan's run covers; present(result):
    whether that result's output can still be read."""
    old = {t["name"]: t for t in old_tasks}
    new, covered = {t["name"]: t for t in tasks}, set()
    for name in priority.dependencies_first(tasks):
        state = old_states.get(name) or {}
        if (name in old and definition(old[name]) == definition(new[name]) and state.get("state") == "succeeded"
                and present(state.get("result") or {}) and covered.issuperset(new[name]["depends_on"])):
            covered.add(name)
    return [t["name"] for t in tasks if t["name"] in covered]


def definition(task: dict) -> dict:
    """What a task runs: its fields but those saying when and how long."""
    return {k: v for k, v in task.items() if k not in HOW_NOT_WHAT}


def present_here(result: dict) -> bool:
    """Its output is a file on this rig, or served by the rig that made it."""
    return "output_url" in result or bool(result.get("output")) and Path(result["output"]).is_file()


async def entry(old_id: str, state: dict, served_from: str) -> dict:
    """What the new plan starts with for a reused task: succeeded, its old result, where it came
    from; a file of this rig is served to dependents that run on another rig."""
    result = dict(state["result"])
    path = Path(result.get("output") or "")
    if "output_url" not in result and path.is_file():
        try:
            result |= await asyncio.to_thread(outputs.served, path, path.parent, served_from)
        except OSError:
            pass  # unreadable now: dependents on this rig read it where it is, or fail saying so
    return {"state": "succeeded", "result": result, "reused_from": state.get("reused_from", old_id)}
