"""Plans the engine closed, not their workflow: terminated (an operator, or Temporal itself past a
message or history limit: GrpcMessageTooLarge, "history size exceeds limit"), timed out, or
failed outside the workflow's own code. The workflow never wrote their record, so whoever meets
one first (a view, the plans list, work-cpu's sweep) settles it here: outcome `failed` with the
engine's reason from the last event of the history, its tasks that had not ended `not run`, and
the record written so that every later reader sees the same."""
from __future__ import annotations

import time

from llamarig.work.engine import PLAN_WORKFLOW
from llamarig.work.store import Store
from llamarig.work.workflow import ENDED

ENGINE_CLOSED = ("terminated", "timed_out", "failed")  # (a workflow of ours ends completed or cancelled)
NOT_RUN = "not run"
_CLOSED_QUERY = f"WorkflowType = '{PLAN_WORKFLOW}' AND ExecutionStatus IN ('Terminated', 'TimedOut', 'Failed')"


async def closed_by_engine(client, rig) -> dict[str, tuple[str, dict]]:
    """This rig's plans (their records are here) that the engine closed: {plan_id: (status, summary)}."""
    store, found = Store(rig.run_dir), {}
    async for wf in client.list_workflows(_CLOSED_QUERY, limit=1000):
        if (summary := store.read_summary(wf.id)) is not None:
            found[wf.id] = (wf.status.name.lower(), summary)
    return found


async def reason(client, plan_id: str) -> str:
    """The engine's words for the close, read from the history's last event."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest

    answer = await client.workflow_service.get_workflow_execution_history_reverse(
        GetWorkflowExecutionHistoryReverseRequest(namespace=client.namespace, maximum_page_size=1,
                                                  execution=WorkflowExecution(workflow_id=plan_id)))
    if not answer.history.events:
        return "closed by the engine (its history holds no events)"
    event = answer.history.events[0]
    if event.HasField("workflow_execution_terminated_event_attributes"):
        a = event.workflow_execution_terminated_event_attributes
        return f"terminated by {a.identity or 'Temporal'}: {a.reason or 'no reason given'}"
    if event.HasField("workflow_execution_timed_out_event_attributes"):
        return "timed out: the plan's workflow ran past its run timeout"
    if event.HasField("workflow_execution_failed_event_attributes"):
        return f"failed in the engine: {event.workflow_execution_failed_event_attributes.failure.message}"
    return f"closed by the engine (last event: {event.event_type})"


async def settle(client, rig, plan_id: str, status: str, state: dict | None, spec: dict) -> dict:
    """The plan's final view: `state` is what its workflow last knew (None where it cannot be
    asked: then its tasks come from `spec`, as submitted). Written as its record where it was
    submitted on this rig (its record is here)."""
    tasks = (state or {}).get("tasks") or {t["name"]: {"state": "waiting"} for t in spec["plan"]["tasks"]}
    for task in tasks.values():
        if task["state"] not in ENDED:
            task |= {"state": NOT_RUN, "error": f"not run: the engine closed the plan ({status})"}
    store = Store(rig.run_dir)
    kept = store.read_record(plan_id)
    view = (kept or {"plan_id": plan_id}) | {
        "outcome": "failed", "ended_by_engine": {"status": status, "reason": await reason(client, plan_id)},
        "tasks": tasks, "ended_at": (kept or {}).get("ended_at") or time.time()}
    if kept is not None:
        store.write_record(plan_id, view)
    return view
