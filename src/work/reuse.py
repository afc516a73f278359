"""A new plan that reuses what an ended plan already did (`llamarig retry ID`, `llamarig submit
PLAN --reuse ID`): a task is not run again when it succeeded there with the same definition,
its output is still there, and every task it depends on is reused too (so a task whose input
changes runs again, and so do its dependents). Priority, retries and timeout_s say when and how
long, not what (so does expected_s): changing them does not make a task run again."""
from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from llamarig.work import mapping, outputs, priority

HOW_NOT_WHAT = ("priority", "expected_s", "retries", "timeout_s", "class_inferred", "max_failed", "sensitive")


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
    """What a task runs: its fields but those saying when and how long (a field left unset is
    the same as one absent: plans of releases before it compare equal)."""
    return {k: v for k, v in task.items() if k not in HOW_NOT_WHAT and v is not None}


def reusable_items(tasks: list[dict], old_tasks: list[dict], old_states: dict[str, dict], covered: set[str],
                   old_id: str) -> dict[str, dict]:
    """for_each tasks run again whose items may be reused one by one (map_workflow.py: an item
    whose index and value are the same, and which succeeded): the old manifest of each, where
    the task is defined the same and every task it depends on is reused."""
    old = {t["name"]: t for t in old_tasks}
    found = {}
    for t in tasks:
        result = (old_states.get(t["name"]) or {}).get("result") or {}
        if (t.get("for_each") and t["name"] not in covered and t["name"] in old
                and definition(old[t["name"]]) == definition(t) and covered.issuperset(t["depends_on"])
                and str(result.get("output", "")).endswith(".jsonl")):
            found[t["name"]] = mapping.output_of(result) | {"plan_id": old_id}
    return found


def present_here(result: dict, gone: dict[str, str]) -> bool:
    """Its output is a file on this rig, or a rig still serves it (gone: the served outputs found
    missing, gone_outputs)."""
    return _local(result) or "output_url" in result and result["output_url"] not in gone


def _local(result: dict) -> bool:
    return bool(result.get("output")) and Path(result["output"]).is_file()


CHECKS_AT_ONCE = 8


async def gone_outputs(states: dict[str, dict], output_gone) -> dict[str, str]:
    """{url: why} of the served outputs of the old plan's succeeded tasks that cannot be fetched
    now (pruned or lost where they were made; a rig not answering): output_gone(url) asks the rig
    serving it (api_client.ComputeApi.output_gone), a few at a time; one unreachable answer
    stands for all that rig's outputs. A reused task whose output is gone runs again instead of
    failing its dependents at every retry."""
    urls = sorted({r["output_url"] for s in states.values() if s.get("state") == "succeeded"
                   for r in [s.get("result") or {}] if "output_url" in r and not _local(r)})
    by_rig: dict[str, list[str]] = {}
    for url in urls:
        by_rig.setdefault(urlsplit(url).netloc, []).append(url)
    limit = asyncio.Semaphore(CHECKS_AT_ONCE)

    async def ask(url: str):
        async with limit:
            return await output_gone(url)

    async def ask_rig(rig_urls: list[str]) -> dict[str, str]:
        first = await ask(rig_urls[0])
        if first is not None and first.code == "output_unreachable":
            return {url: f"{first.code}: {first.reason}" for url in rig_urls}
        whys = [first, *await asyncio.gather(*(ask(url) for url in rig_urls[1:]))]
        return {url: f"{why.code}: {why.reason}" for url, why in zip(rig_urls, whys) if why is not None}
    return {url: why for found in await asyncio.gather(*map(ask_rig, by_rig.values())) for url, why in found.items()}


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
