"""The plan workflow: one per submitted plan, its tasks as activities on their class's queue.

A task starts once every dependency succeeded; a dependency that failed (after its retries)
fails the task without running it, naming the failed ancestor; other branches go on. Retries
back off exponentially (work.retry_initial_s, doubling, up to work.retry_max_s), driven here so
that every attempt is its own activity in the history, with its own times; a DefinitionError is
not retried. A task that waits on its queue past work.starvation_s behind
more urgent ones (Temporal's schedule-to-start timeout, which is never retried) is sent again
as the most urgent, so low priority means later, never never. Tasks an earlier plan did
(spec["reused"]: `llamarig retry`, work/reuse.py) are succeeded from the start. Deterministic:
no I/O here; the final summary is written under the run folder by the record_plan activity.

It runs outside the SDK's sandbox: the sandbox cost a third of each workflow task's time (6.5
against 4.4 ms, p50, in bench/work.py's DAG) and this code touches no global state, no clock
but workflow.now() and no randomness. tests/test_work.py replays real histories with
Temporal's Replayer, which would catch a change that breaks determinism.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from llamarig.work import priority
from llamarig.work.attempts import ENDED, PLAN_CANCELLED, Attempts
from llamarig.work.map_workflow import MapParent
from llamarig.work.readiness import Readiness

__all__ = ["ENDED", "PLAN_CANCELLED", "PlanWorkflow"]


@workflow.defn(name="PlanWorkflow", sandboxed=False)
class PlanWorkflow(Attempts, MapParent):
    def __init__(self) -> None:
        self.tasks: dict[str, dict] = {}
        self.spec: dict = {}
        self.outcome = "running"
        self.keys: dict[str, tuple] = {}  # (priority key, minus remaining work, place in the plan): who goes first
        self.carried: dict[str, str] = {}  # small outputs' bytes (base64), for dependents on another rig
        self.init_window()
        self.readiness: Readiness | None = None  # (set in run: workflow.patched; else wait_conditions)

    @workflow.query
    def state(self) -> dict:
        return {"plan_id": self.spec.get("plan_id"), "name": self.spec.get("plan", {}).get("name"),
                "outcome": self.outcome, "tasks": self.tasks}

    @workflow.query
    def page(self, first: int, count: int) -> dict:
        """The state with `count` tasks from the `first`: a whole plan of thousands of tasks is
        over Temporal's 2 MiB for one payload (about 500 bytes a task once it ran)."""
        names = list(self.tasks)[first:first + count]
        return self.state() | {"task_count": len(self.tasks), "tasks": {n: self.tasks[n] for n in names}}

    def _summary(self) -> dict:
        """What the workflow returns: counts only (the whole state went over 2 MiB at 4000 tasks, and
        the engine refused to complete the plan); the state is in the plan's record."""
        counts = Counter(t["state"] for t in self.tasks.values())
        return {"plan_id": self.spec["plan_id"], "outcome": self.outcome, "tasks": dict(counts)}

    @workflow.run
    async def run(self, spec: dict) -> dict:
        self.spec = spec
        self.grants_deferred = workflow.patched("window-grants-after-the-activation")
        tasks, reused = spec["plan"]["tasks"], spec.get("reused", {})  # (reused: done by an earlier plan)
        learned = spec.get("learned_s", {})  # seconds this rig measured before, for tasks without expected_s
        expected = {t["name"]: _expected(t, learned) for t in tasks}
        self.tasks = {t["name"]: {"state": "waiting", "class": t["cls"], "priority": t["priority"]}
                      | expected[t["name"]] | reused.get(t["name"], {}) for t in tasks}
        if workflow.patched("longest-remaining-work-first"):
            self.keys = priority.order([t | expected[t["name"]] for t in tasks])
        else:
            self.keys = priority.legacy_order(tasks)  # (started before: the chain of dependents, 5 levels)
        if workflow.patched("dependency-counts"):
            self.readiness = Readiness(tasks, {n for n, t in self.tasks.items() if t["state"] in ENDED})
        jobs = [asyncio.ensure_future(self._task(t)) for t in tasks if t["name"] not in reused]
        if self.grants_deferred:
            asyncio.ensure_future(self._grants())  # (ends with the workflow)
        try:
            await asyncio.gather(*jobs)
        except asyncio.CancelledError:
            for job in jobs:  # each running command ends (SIGTERM, then SIGKILL) before the plan does
                try:
                    await job
                except (asyncio.CancelledError, ActivityError):
                    pass
            self.outcome = "cancelled"
            await self._record()
            raise
        self.outcome = "succeeded" if all(t["state"] == "succeeded" for t in self.tasks.values()) else "failed"
        await self._record()
        return self._summary()

    async def _task(self, t: dict) -> None:
        name, deps = t["name"], t["depends_on"]
        try:
            if self.readiness:
                await self.readiness.wait(name)
            else:  # (plans started before the counts: replayed as they ran)
                await workflow.wait_condition(lambda: all(self.tasks[d]["state"] in ENDED for d in deps))
        except asyncio.CancelledError:
            self._set(name, state="cancelled", error="the plan was cancelled before it started")
            raise
        bad = [d for d in deps if self.tasks[d]["state"] != "succeeded"]
        if bad:
            root = self.tasks[bad[0]].get("root", bad[0])
            self._set(name, state="failed", root=root, error=f"not run: its ancestor '{root}' "
                      f"{self.tasks[root]['state']}" + ("" if root == bad[0] else f" (through '{bad[0]}')"))
            return
        if t.get("for_each"):
            await self._map(t)
        else:
            await self._run_task(t)

    async def _record(self) -> None:
        """The plan's record under the run folder of the rig that ran it, whole (its spec too, for
        `llamarig retry` past the engine's retention), replacing the one `submit` wrote."""
        summary = self.state() | {"submitted_at": workflow.info().start_time.timestamp(), "spec": self.spec,
                                  "ended_at": workflow.now().timestamp()}
        await workflow.execute_local_activity("record_plan", summary, start_to_close_timeout=timedelta(seconds=60))


def _expected(t: dict, learned: dict) -> dict:
    """The task's expected_s, from its plan or else learned on this rig (expected_from says which)."""
    if t.get("expected_s"):
        return {"expected_s": t["expected_s"], "expected_from": "plan"}
    return {"expected_s": learned[t["name"]], "expected_from": "learned"} if t["name"] in learned else {}
