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
import heapq
from collections import Counter
from datetime import timedelta

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError, TimeoutError, TimeoutType

from llamarig.work import priority
from llamarig.work.readiness import Readiness

ENDED = ("succeeded", "failed", "cancelled")
PLAN_CANCELLED = "PlanCancelled"  # an attempt its worker stopped on the plan's cancel marker, before the engine said
ACTIVITY = {"cpu": "run_cpu", "script": "run_script", "llm": "run_llm"}


@workflow.defn(name="PlanWorkflow", sandboxed=False)
class PlanWorkflow:
    def __init__(self) -> None:
        self.tasks: dict[str, dict] = {}
        self.spec: dict = {}
        self.outcome = "running"
        self.ready: list[tuple] = []  # a heap of the tasks waiting for a place in the window
        self.in_flight = 0
        self.keys: dict[str, tuple] = {}  # (priority key, minus remaining work, place in the plan): who goes first
        self.carried: dict[str, str] = {}  # small outputs' bytes (base64), for dependents on another rig
        self.held_seconds = None  # the llamarig_task_held_seconds histogram, made at its first use
        self.grants_deferred = False  # (set in run: workflow.patched)
        self.readiness: Readiness | None = None  # (set in run: workflow.patched; else wait_conditions)
        self.grant_due = False  # a place may be free: for _grants

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
        self._set(name, state="queued", queued_at=workflow.now().timestamp())
        try:
            result = await self._attempts(t)
        except asyncio.CancelledError:
            self._set(name, state="cancelled", error="the plan was cancelled")
            raise
        except ActivityError as e:
            if isinstance(e.cause, CancelledError) or getattr(e.cause, "type", None) == PLAN_CANCELLED:
                self._set(name, state="cancelled", error="the plan was cancelled while it ran", **_where(e))
                raise asyncio.CancelledError() from None
            self._set(name, state="failed", error=_reason(e), ended_at=workflow.now().timestamp(), **_where(e))
            return
        if "output_data" in result:
            self.carried[name] = result.pop("output_data")
        self._set(name, state="succeeded", result=result, ended_at=workflow.now().timestamp())

    async def _attempts(self, t: dict) -> dict:
        """Attempt after attempt, each its own activity (so each shows in the history with its
        times), waiting retry_initial_s, then twice as long each time, up to retry_max_s."""
        d, name = self.spec["defaults"], t["name"]
        retries = d["retries"] if t["retries"] is None else t["retries"]
        key, attempt = self.keys[name][0], 1
        while True:
            try:
                return await self._activity(t, attempt, key, starve=key != priority.STARVED)
            except ActivityError as e:
                if _starved(e):
                    self._set(name, starved=True)
                    key = priority.STARVED  # waited past starvation_s: goes ahead of everything waiting
                    continue
                if isinstance(e.cause, TimeoutError) and e.cause.type == TimeoutType.HEARTBEAT:
                    workflow.metric_meter().create_counter(
                        "llamarig_task_heartbeat_timeouts_total", "Task attempts whose worker died or hung "
                        "(no heartbeat within work.heartbeat_timeout_s)").add(1, {"class": t["cls"]})
                if _final(e) or attempt > retries or isinstance(e.cause, CancelledError):
                    raise
                self._set(name, attempt=attempt, last_error=_reason(e))
                await workflow.sleep(min(d["retry_initial_s"] * 2 ** (attempt - 1), d["retry_max_s"]))
                attempt += 1

    async def _activity(self, t: dict, attempt: int, priority_key: int, starve: bool) -> dict:
        await self._window(t)
        try:
            return await self._execute(t, attempt, priority_key, starve)
        finally:
            self.in_flight -= 1
            self._grant_soon()

    async def _window(self, t: dict) -> None:
        """At most `window` activities of a plan are in Temporal at once, in priority key order:
        the engine persists every pending activity at each step, so a plan of thousands scheduled
        at once cost it O(n) per step (measured: 9 ms of server CPU per task at 1000)."""
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self.ready, (*self.keys[t["name"]], turn))
        held_at = workflow.now()
        self._grant_soon()
        await turn
        self._held(t, (workflow.now() - held_at).total_seconds())

    def _held(self, t: dict, seconds: float) -> None:
        """How long a task waited for the window, where Temporal's backlog age cannot see it (the
        LlamarigWorkBacklog alert reads both). Not recorded while the SDK replays."""
        if self.held_seconds is None:
            self.held_seconds = workflow.metric_meter().create_histogram_float(
                "llamarig_task_held_seconds", "Seconds a task waited for its plan's window before entering "
                "Temporal's queue", "s")
        self.held_seconds.record(seconds, {"taskqueue": self.spec["queues"][t["cls"]]})

    def _grant_soon(self) -> None:
        """Grant once every task this activation made ready has joined the heap (`_grants`):
        granting at each push gave the first places to the first tasks in plan order, and a
        freed place to a waiting task before the dependents its end made ready, whatever their
        priority. (Plans started before this change replay the old way: workflow.patched.)"""
        if self.grants_deferred:
            self.grant_due = True
        else:
            self._grant()

    async def _grants(self) -> None:
        """Its condition is checked after those of the tasks (registered later, each time), so
        the tasks made ready in one activation have all joined the heap when it grants."""
        while True:
            await workflow.wait_condition(lambda: self.grant_due)
            self.grant_due = False
            self._grant()

    def _grant(self) -> None:
        while self.ready and self.in_flight < self.spec["defaults"]["window"]:
            turn = heapq.heappop(self.ready)[-1]
            if not turn.done():  # (a cancelled plan's waiter)
                self.in_flight += 1
                turn.set_result(None)

    async def _execute(self, t: dict, attempt: int, priority_key: int, starve: bool) -> dict:
        spec, d = self.spec, self.spec["defaults"]
        self._set(t["name"], attempt=attempt)
        inputs = {k: self._input(v) for k, v in t["inputs"].items()}
        outputs = {dep: self.tasks[dep]["result"]["output"] for dep in t["depends_on"]}
        carried = {dep: self.carried[dep] for dep in t["depends_on"] if dep in self.carried}
        served = {dep: {"url": r["output_url"], "sha256": r["output_sha256"]} for dep in t["depends_on"]
                  if "output_url" in (r := self.tasks[dep]["result"])}
        ctx = {"plan_id": spec["plan_id"], "attempt": attempt, "inputs": inputs, "outputs": outputs,
               "carried": carried, "served": served, "cancel_grace_s": d["cancel_grace_s"]}
        return await workflow.execute_activity(
            ACTIVITY[t["cls"]], args=[t, ctx], task_queue=spec["queues"][t["cls"]], activity_id=f"{t['name']}#{attempt}",
            start_to_close_timeout=timedelta(seconds=t["timeout_s"] or d["timeout_s"]),
            heartbeat_timeout=timedelta(seconds=d["heartbeat_s"]),
            schedule_to_start_timeout=timedelta(seconds=d["starvation_s"]) if starve else None,
            retry_policy=RetryPolicy(maximum_attempts=1), priority=Priority(priority_key=priority_key),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED)

    def _input(self, value: str) -> str:
        """@TASK: that dependency's output file; else the value itself."""
        if value.startswith("@") and value[1:] in self.tasks:
            return self.tasks[value[1:]]["result"]["output"]
        return value

    def _set(self, name: str, **fields) -> None:
        self.tasks[name] = self.tasks[name] | fields
        if self.readiness and fields.get("state") in ENDED:
            self.readiness.ended(name)

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


def _final(e: ActivityError) -> bool:
    """A definition error: running it again would fail the same way."""
    return getattr(e.cause, "non_retryable", False)


def _starved(e: ActivityError) -> bool:
    return isinstance(e.cause, TimeoutError) and e.cause.type == TimeoutType.SCHEDULE_TO_START


def _where(e: ActivityError) -> dict:
    """Where the last attempt ran (the activity puts it in its failure's details)."""
    details = getattr(e.cause, "details", None) or ()
    return {"result": details[0]} if details and isinstance(details[0], dict) else {}


def _reason(e: ActivityError) -> str:
    cause = e.cause
    if isinstance(cause, TimeoutError):
        kind = {TimeoutType.HEARTBEAT: "no heartbeat within heartbeat_timeout_s (its worker died or hung)",
                TimeoutType.START_TO_CLOSE: "ran past its timeout_s"}.get(cause.type, cause.type.name.lower())
        return f"{kind}; after {e.retry_state.name.lower() if e.retry_state else 'its attempts'}"
    if isinstance(cause, CancelledError):
        return "cancelled"
    return str(cause.message if cause is not None and hasattr(cause, "message") else e)
