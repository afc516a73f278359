"""A for_each task (work/mapping.py) in its plan: its items listed by one activity into a file
(the items never ride in the plan's history), then run as child workflows of work.map_slice items
each (MapSlice), two at a time, so that a map of 100,000 items keeps every history far inside
Temporal's limits (the plan's: about 10 events a slice; a slice's: about 2 KB an item). Each slice
writes its part of the manifest; one activity joins them, in item order, into the task's output.
Deterministic: no I/O here."""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError, ChildWorkflowError

from llamarig.work import mapping
from llamarig.work.attempts import Attempts, dependency_context, reason

SLICES_AT_ONCE = 2  # while one slice drains its last items, the next fills the window
FAILED_SHOWN = 20  # failed items kept in the plan's state (all of them are in the manifest)
FILES = {"start_to_close_timeout": timedelta(minutes=10), "retry_policy": RetryPolicy(maximum_attempts=5)}


class MapParent:
    """PlanWorkflow's part: a mapped task from its items to its manifest."""

    async def _map(self, t: dict) -> None:
        name = t["name"]
        self._set(name, state="queued", queued_at=workflow.now().timestamp())
        results = {dep: mapping.output_of(self.tasks[dep]["result"]) for dep in t["depends_on"]}
        try:
            listed = await self._files("map_items", {
                "plan_id": self.spec["plan_id"], "task": name, "source": self._source(t),
                "ctx": dependency_context(t, results, {})})
        except ActivityError as e:
            self._set(name, state="failed", error=f"its items could not be listed: {reason(e)}",
                      ended_at=workflow.now().timestamp())
            return
        count = listed["count"]
        parts = mapping.slices(count, self.spec["defaults"].get("map_slice", 1000))
        info = {"items": count, "allowed_failures": mapping.allowed_failures(t.get("max_failed"), count),
                "slices": len(parts), "slices_done": 0, "states": {}, "failed_items": []}
        self._set(name, state="running", map=info)
        template = {k: v for k, v in t.items() if k != "for_each"}  # (literal items: not in every slice's input)
        job = {"plan_id": self.spec["plan_id"], "queues": self.spec["queues"], "defaults": self.spec["defaults"],
               "submitter": self.spec.get("submitter"),
               "task": template, "items": listed["items"], "results": results, "key": list(self.keys[name][:2]),
               "reused": self.spec.get("reused_items", {}).get(name),
               "zipped": {dep: results[dep] for dep in mapping.indexed_deps(t)}}
        ended = await self._slices(name, info, job, parts)
        manifest = await self._files("join_manifest", {"plan_id": self.spec["plan_id"], "task": name,
                                                        "items": listed["items"], "parts": ended})
        self._map_ended(name, manifest, listed["items"] | {"count": count})

    def _source(self, t: dict) -> dict:
        each = t["for_each"]
        if each.get("lines"):
            return {"lines": each["lines"][1:]}
        if each.get("items_of"):
            return {"file": self.tasks[each["items_of"][1:]]["result"]["items"]}
        if each.get("glob"):
            return {"file": self.spec["mapped"][t["name"]]}  # (resolved at submit: plans.py)
        return {"items": [str(i) for i in each["items"]]}

    async def _slices(self, name: str, info: dict, job: dict, parts: list) -> list[dict]:
        limit, ended = asyncio.Semaphore(SLICES_AT_ONCE), [{"start": s, "count": n} for s, n in parts]

        async def one(k: int) -> None:
            async with limit:
                budget = info["allowed_failures"] - info["states"].get("failed", 0) - info["states"].get("not run", 0)
                if budget < 0:
                    ended[k]["error"] = "not run: the task's items failed past max_failed"
                    ended[k]["state"] = "not run"
                    return
                ended[k] |= await self._slice(job | {"slice": k, "start": parts[k][0], "count": parts[k][1],
                                                     "budget": budget})
                self._merge(name, info, ended[k])
        try:
            await asyncio.gather(*(one(k) for k in range(len(parts))))
        except asyncio.CancelledError:
            self._set(name, state="cancelled", error="the plan was cancelled")
            raise
        return ended

    async def _slice(self, job: dict) -> dict:
        try:
            return await workflow.execute_child_workflow(
                "MapSlice", job, id=f"{job['plan_id']}.{job['task']['name']}.{job['slice']}",
                task_queue=self.spec["queues"]["plan"])
        except ChildWorkflowError as e:  # (terminated, timed out: its items count as failed)
            if isinstance(e.cause, CancelledError):
                raise asyncio.CancelledError() from None  # (its items were stopped by the plan's cancel)
            why = getattr(e.cause, "message", None) or str(e.cause or e)
            return {"state": "failed", "error": f"its slice failed: {why}",
                    "counts": {"failed": job["count"]}, "failed": []}

    def _merge(self, name: str, info: dict, part: dict) -> None:
        states = Counter(info["states"]) + Counter(part.get("counts", {}))
        failed = sorted(info["failed_items"] + part.get("failed", []), key=lambda f: f["index"])[:FAILED_SHOWN]
        self._set(name, map=info | {"slices_done": info["slices_done"] + 1, "states": dict(states),
                                     "failed_items": failed})
        info.update(self.tasks[name]["map"])

    def _map_ended(self, name: str, manifest: dict, items: dict) -> None:
        """items: the reference of its items file (a task with items_of maps over the same)."""
        info = self.tasks[name]["map"]
        failed = info["states"].get("failed", 0)
        not_run = info["states"].get("not run", 0) + info["items"] - sum(info["states"].values())
        result = mapping.output_of(manifest) | {"count": info["items"], "items": items}
        now = workflow.now().timestamp()
        if failed + not_run > info["allowed_failures"] or info["states"].get("cancelled"):
            first = info["failed_items"][0] if info["failed_items"] else None
            self._set(name, state="failed", result=result, ended_at=now, error=(
                f"{failed} of {info['items']} items failed (max_failed allows {info['allowed_failures']}, "
                "counting items not run)" + (f"; {not_run} not run" if not_run else "")
                + (f"; first: item {first['index']} ({first['item'][:80]}): {first['error'][-200:]}" if first else "")))
            return
        self._set(name, state="succeeded", result=result, ended_at=now)

    async def _files(self, activity: str, job: dict) -> dict:
        return await workflow.execute_activity(activity, job, task_queue=self.spec["queues"]["cpu"], **FILES)


@workflow.defn(name="MapSlice", sandboxed=False)
class MapSliceWorkflow(Attempts):
    """Items start..start+count of one for_each task, each as the plan runs a task."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict] = {}
        self.keys: dict[str, tuple] = {}
        self.carried: dict[str, str] = {}
        self.spec: dict = {}
        self.job: dict = {}
        self.item_results: dict[str, dict] = {}  # item task -> its dependencies' results, its own items' included
        self.init_window()

    @workflow.query
    def state(self) -> dict:
        return {"slice": self.job.get("slice"), "tasks": self.tasks}

    @workflow.run
    async def run(self, job: dict) -> dict:
        self.job, self.spec = job, {k: job[k] for k in ("plan_id", "queues", "defaults")} | {
            "submitter": job.get("submitter")}
        self.grants_deferred = True
        got = await workflow.execute_activity("read_items", {
            "plan_id": job["plan_id"], "task": job["task"]["name"], "items": job["items"], "start": job["start"],
            "count": job["count"], "reused": job.get("reused"), "zipped": job.get("zipped", {})},
            task_queue=job["queues"]["cpu"], **FILES)
        old = {r["index"]: r for r in got.get("reused", [])}
        todo = []
        for i, item in enumerate(got["items"], start=job["start"]):
            t = mapping.substitute(job["task"], item, i)
            self.keys[t["name"]] = (*job["key"], i)
            prior = old.get(i)
            if prior is not None and prior.get("item") == item:
                self.tasks[t["name"]] = {"state": "succeeded", "result": mapping.output_of(prior) | {"worker": prior.get("worker")},
                                         "reused_from": prior.get("reused_from", job["reused"]["plan_id"])}
                continue
            if (why := self._zip(t["name"], i, got.get("zipped", {}))) is not None:
                self.tasks[t["name"]] = {"state": "not run", "class": t["cls"], "error": why}
                continue
            self.tasks[t["name"]] = {"state": "waiting", "class": t["cls"]}
            todo.append(t)
        asyncio.ensure_future(self._grants())
        await asyncio.gather(*(self._run_task(t) for t in todo))
        return await self._ended(got["items"])

    def _zip(self, name: str, i: int, zipped: dict[str, list]) -> str | None:
        """Item i's own inputs from for_each dependencies (@TASK[{index}]); why it cannot run, if so."""
        found = {}
        for dep, records in zipped.items():
            record = records[i - self.job["start"]] if i - self.job["start"] < len(records) else None
            if record is None or record["state"] != "succeeded":
                return f"not run: its input {dep}[{i}] " + (record["state"] if record else "does not exist")
            found[f"{dep}[{i}]"] = mapping.output_of(record)
        self.item_results[name] = self.job["results"] | found
        return None

    def _context(self, t: dict) -> dict:
        return dependency_context(t, self.item_results.get(t["name"], self.job["results"]), {})

    def _skip(self, t: dict) -> str | None:
        failed = sum(s["state"] in ("failed", "not run") for s in self.tasks.values())
        return "not run: the task's items failed past max_failed" if failed > self.job["budget"] else None

    async def _ended(self, items: list[str]) -> dict:
        start, name = self.job["start"], self.job["task"]["name"]
        records = [mapping.record(i, item, self.tasks[mapping.item_name(name, i)])
                   for i, item in enumerate(items, start=start)]
        part = await workflow.execute_activity("write_slice", {
            "plan_id": self.job["plan_id"], "task": name, "slice": self.job["slice"], "records": records},
            task_queue=self.job["queues"]["cpu"], **FILES)
        failed = [{"index": r["index"], "item": r["item"], "error": r.get("error", "")} for r in records
                  if r["state"] == "failed"][:FAILED_SHOWN]
        return {"counts": dict(Counter(r["state"] for r in records)), "failed": failed, "part": part}
