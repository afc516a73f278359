"""Plan operations over Temporal, for the compute API's /admin/plans and the CLI: submit a
validated plan, list plans, show one (per task: state, attempt, rig, worker, GPU, duration,
error tail), cancel one. A plan past the engine's retention is still shown from its record
under the run folder."""
from __future__ import annotations

import re
import secrets
import time

from llamarig.work import engine
from llamarig.work.plan import TASK_NAME, Plan
from llamarig.work.store import Store

# A plan's id: its name, when it was submitted (UTC) and 6 hex digits (`submit`).
PLAN_ID = re.compile(TASK_NAME.removesuffix("$") + r"-\d{8}-\d{6}-[0-9a-f]{6}$")
PENDING_STATES = {1: "scheduled", 2: "running", 3: "cancel requested", 4: "paused", 5: "pause requested"}


def spec_of(rig, plan: Plan, plan_id: str) -> dict:
    """Everything the workflow needs, fixed at submit: it reads no rig of its own."""
    w = rig.work
    return {"plan_id": plan_id, "plan": plan.model_dump(), "queues": engine.queues(w),
            "defaults": {"retries": w.retries, "timeout_s": w.task_timeout_s, "heartbeat_s": w.heartbeat_timeout_s,
                         "starvation_s": w.starvation_s, "retry_initial_s": w.retry_initial_s,
                         "retry_max_s": w.retry_max_s, "cancel_grace_s": w.cancel_grace_s, "window": w.plan_window}}


async def submit(client, rig, plan: Plan) -> dict:
    plan_id = f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    spec = spec_of(rig, plan, plan_id)
    await client.start_workflow(engine.PLAN_WORKFLOW, spec, id=plan_id, task_queue=spec["queues"]["plan"],
                                memo={"name": plan.name, "tasks": len(plan.tasks)})
    Store(rig.run_dir).write_record(plan_id, {"plan_id": plan_id, "name": plan.name, "outcome": "running",
                                              "submitted_at": time.time(), "spec": spec})
    return {"plan_id": plan_id, "tasks": len(plan.tasks)}


async def list_plans(client, rig, limit: int = 100) -> dict:
    rows = []
    query = f"WorkflowType = '{engine.PLAN_WORKFLOW}'"
    async for wf in client.list_workflows(query, limit=limit):
        rows.append({"plan_id": wf.id, "status": wf.status.name.lower() if wf.status else "unknown",
                     "started_at": wf.start_time.timestamp() if wf.start_time else None,
                     "closed_at": wf.close_time.timestamp() if wf.close_time else None})
    known = {r["plan_id"] for r in rows}
    store = Store(rig.run_dir)
    for r in rows:  # an ended plan's outcome (succeeded, failed, cancelled) is in its record
        outcome = (store.read_record(r["plan_id"]) or {}).get("outcome")
        if r["status"] != "running" and outcome not in (None, "running"):
            r["status"] = outcome
    for plan_id in store.plan_ids():  # past retention: from the record
        if plan_id in known:
            continue  # (its record was read above)
        record = store.read_record(plan_id) or {}
        if record.get("outcome") != "running":
            rows.append({"plan_id": plan_id, "status": record.get("outcome", "unknown"), "started_at":
                         record.get("submitted_at"), "closed_at": record.get("ended_at"), "from": "record"})
    return {"plans": sorted(rows, key=lambda r: r["started_at"] or 0, reverse=True)}


async def show(client, rig, plan_id: str) -> dict:
    from temporalio.service import RPCError

    handle = client.get_workflow_handle(plan_id)
    try:
        desc = await handle.describe()
    except RPCError:
        record = Store(rig.run_dir).read_record(plan_id)
        if record is None or "tasks" not in record:
            raise engine.WorkError("plan_not_found", f"no plan {plan_id!r} in Temporal nor under the run folder")
        return {k: v for k, v in record.items() if k != "spec"} | {"from": "record"}
    state = await handle.query("state")
    _merge_pending(state["tasks"], desc.raw_description.pending_activities)
    return state | {"status": desc.status.name.lower() if desc.status else "unknown"}


def _merge_pending(tasks: dict, pending) -> None:
    """A task being run: its attempt and worker as the engine sees them now."""
    for p in pending:
        t = tasks.get(p.activity_id.split("#")[0])
        if t is None:
            continue
        t["state"] = PENDING_STATES.get(p.state, t["state"]) if t["state"] == "queued" else t["state"]
        t["attempt"] = int(p.activity_id.split("#")[1]) if "#" in p.activity_id else p.attempt
        t["worker"] = p.last_worker_identity or None
        if p.HasField("last_failure"):
            t["last_error"] = p.last_failure.message[-200:]


async def cancel(client, plan_id: str) -> dict:
    from temporalio.service import RPCError

    try:
        await client.get_workflow_handle(plan_id).cancel()
    except RPCError as e:
        raise engine.WorkError("plan_not_found", f"cannot cancel {plan_id!r}: {e.message}") from None
    return {"plan_id": plan_id, "cancel_requested": True}
