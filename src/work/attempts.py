"""How a plan's tasks run, shared by the plan workflow and a for_each task's slices
(map_workflow.py): each attempt its own activity, at most `window` of them in Temporal at once in
priority-key order, retries backing off exponentially, a task starved on its queue sent again as
the most urgent. Deterministic: no I/O."""
from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError, TimeoutError, TimeoutType

from llamarig.work import priority
from llamarig.work.window import Window

ENDED = ("succeeded", "failed", "cancelled")
PLAN_CANCELLED = "PlanCancelled"  # an attempt its worker stopped on the plan's cancel marker, before the engine said
ACTIVITY = {"cpu": "run_cpu", "script": "run_script", "llm": "run_llm"}


class NotRun(Exception):
    """An attempt not started after all (a for_each slice past its failure budget)."""


class Attempts:
    """Needs: spec (plan_id, queues, defaults), tasks (name -> state), keys (name -> order key),
    carried; and the window's fields set by init_window."""

    def init_window(self) -> None:
        self.window = Window()
        self.held_seconds = None  # the llamarig_task_held_seconds histogram, made at its first use
        self.grants_deferred = False  # (set in run: workflow.patched)
        self.grant_due = False  # a place may be free: for _grants
        self.readiness = None

    async def _run_task(self, t: dict) -> None:
        """The task from queued to its end, its state set at each step; a cancel propagates."""
        name = t["name"]
        self._set(name, state="queued", queued_at=workflow.now().timestamp())
        try:
            result = await self._attempts(t)
        except asyncio.CancelledError:
            self._set(name, state="cancelled", error="the plan was cancelled")
            raise
        except ActivityError as e:
            if isinstance(e.cause, CancelledError) or getattr(e.cause, "type", None) == PLAN_CANCELLED:
                self._set(name, state="cancelled", error="the plan was cancelled while it ran", **where(e))
                raise asyncio.CancelledError() from None
            self._set(name, state="failed", error=reason(e), ended_at=workflow.now().timestamp(), **where(e))
            return
        except NotRun as e:
            self._set(name, state="not run", error=str(e))
            return
        if "output_data" in result:
            self.carried[name] = result.pop("output_data")
        self._set(name, state="succeeded", result=result, ended_at=workflow.now().timestamp())

    def _skip(self, t: dict) -> str | None:
        """Why the task, given its place in the window, should not start after all (None: start)."""
        return None

    async def _attempts(self, t: dict) -> dict:
        """Attempt after attempt, each its own activity (so each shows in the history with its
        times), waiting retry_initial_s, then twice as long each time, up to retry_max_s."""
        d, name = self.spec["defaults"], t["name"]
        retries = d["retries"] if t["retries"] is None else t["retries"]
        key, attempt, failures = self.keys[name][0], 1, []
        while True:
            try:
                return await self._activity(t, attempt, key, key != priority.STARVED, failures)
            except ActivityError as e:
                if starved(e):
                    self._set(name, starved=True)
                    key = priority.STARVED  # waited past starvation_s: goes ahead of everything waiting
                    continue
                if isinstance(e.cause, TimeoutError) and e.cause.type == TimeoutType.HEARTBEAT:
                    workflow.metric_meter().create_counter(
                        "llamarig_task_heartbeat_timeouts_total", "Task attempts whose worker died or hung "
                        "(no heartbeat within work.heartbeat_timeout_s)").add(1, {"class": t["cls"]})
                if final(e) or attempt > retries or isinstance(e.cause, CancelledError):
                    raise
                self._set(name, attempt=attempt, last_error=reason(e))
                if t.get("escalate"):  # (what the escalation tier is told: escalation.py)
                    failures.append({"attempt": attempt, "error": reason(e)[-2000:]})
                await workflow.sleep(min(d["retry_initial_s"] * 2 ** (attempt - 1), d["retry_max_s"]))
                attempt += 1

    async def _activity(self, t: dict, attempt: int, priority_key: int, starve: bool, failures=()) -> dict:
        await self._window(t)
        try:
            if (why := self._skip(t)) is not None:
                raise NotRun(why)
            return await self._execute(t, attempt, priority_key, starve, failures)
        finally:
            self.window.leave()
            self._grant_soon()

    async def _window(self, t: dict) -> None:
        """At most `window` activities of a plan are in Temporal at once, in priority key order:
        the engine persists every pending activity at each step, so a plan of thousands scheduled
        at once cost it O(n) per step (measured: 9 ms of server CPU per task at 1000)."""
        turn = self.window.join(self.keys[t["name"]])
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
        the tasks made ready in one activation have all joined the heap when it grants. That is
        the SDK's order of wait_condition callbacks, pinned by test_work_order.py's
        test_a_place_freed_in_the_window_goes_to_the_most_urgent_task_its_end_made_ready."""
        while True:
            await workflow.wait_condition(lambda: self.grant_due)
            self.grant_due = False
            self._grant()

    def _grant(self) -> None:
        self.window.let_in(self.spec["defaults"]["window"])

    async def _execute(self, t: dict, attempt: int, priority_key: int, starve: bool, failures=()) -> dict:
        spec, d = self.spec, self.spec["defaults"]
        self._set(t["name"], attempt=attempt)
        ctx = {"plan_id": spec["plan_id"], "attempt": attempt, **self._context(t), "cancel_grace_s": d["cancel_grace_s"],
               "submitter": spec.get("submitter")}  # (its llm tasks count against the key that submitted the plan)
        if failures:
            ctx["failures"] = list(failures[-10:])
        external = asks_tier(t, attempt)  # (no GPU and no local model needed: work-cpu runs it)
        return await workflow.execute_activity(
            "run_external" if external else ACTIVITY[t["cls"]], args=[t, ctx],
            task_queue=spec["queues"]["cpu" if external else t["cls"]], activity_id=f"{t['name']}#{attempt}",
            start_to_close_timeout=timedelta(seconds=t["timeout_s"] or d["timeout_s"]),
            heartbeat_timeout=timedelta(seconds=d["heartbeat_s"]),
            schedule_to_start_timeout=timedelta(seconds=d["starvation_s"]) if starve else None,
            retry_policy=RetryPolicy(maximum_attempts=1), priority=Priority(priority_key=priority_key),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED)

    def _context(self, t: dict) -> dict:
        """What an attempt reads of its dependencies: inputs with @TASK as that output's path, the
        outputs' paths, the bytes of those carried (releases before outputs by reference), and
        where the rigs that made them serve them."""
        results = {dep: self.tasks[dep]["result"] for dep in t["depends_on"]}
        return dependency_context(t, results, self.carried)

    def _set(self, name: str, **fields) -> None:
        self.tasks[name] = self.tasks[name] | fields
        if self.readiness and fields.get("state") in ENDED:
            self.readiness.ended(name)


def dependency_context(t: dict, results: dict[str, dict], carried: dict[str, str]) -> dict:
    """inputs, outputs, carried, served of an attempt of `t`; results: its dependencies'."""
    inputs = {k: results[v[1:]]["output"] if v.startswith("@") and v[1:] in results else v
              for k, v in t["inputs"].items()}
    outputs = {dep: r["output"] for dep, r in results.items()}
    return {"inputs": inputs, "outputs": outputs, "carried": {d: carried[d] for d in results if d in carried},
            "served": {dep: {"url": r["output_url"], "sha256": r["output_sha256"]} for dep, r in results.items()
                       if "output_url" in r}}


def asks_tier(t: dict, attempt: int) -> bool:
    """Whether this attempt of an llm task goes to the escalation tier (work/escalation.py)."""
    escalate = t.get("escalate")
    return bool(t.get("external")) or (escalate is not None and attempt > escalate["after_failures"])


def final(e: ActivityError) -> bool:
    """A definition error: running it again would fail the same way."""
    return getattr(e.cause, "non_retryable", False)


def starved(e: ActivityError) -> bool:
    return isinstance(e.cause, TimeoutError) and e.cause.type == TimeoutType.SCHEDULE_TO_START


def where(e: ActivityError) -> dict:
    """Where the last attempt ran (the activity puts it in its failure's details)."""
    details = getattr(e.cause, "details", None) or ()
    return {"result": details[0]} if details and isinstance(details[0], dict) else {}


def reason(e: ActivityError) -> str:
    cause = e.cause
    if isinstance(cause, TimeoutError):
        kind = {TimeoutType.HEARTBEAT: "no heartbeat within heartbeat_timeout_s (its worker died or hung)",
                TimeoutType.START_TO_CLOSE: "ran past its timeout_s"}.get(cause.type, cause.type.name.lower())
        return f"{kind}; after {e.retry_state.name.lower() if e.retry_state else 'its attempts'}"
    if isinstance(cause, CancelledError):
        return "cancelled"
    return str(cause.message if cause is not None and hasattr(cause, "message") else e)
