"""Plan operations over Temporal, for the compute API's /admin/plans and the CLI: submit a
validated plan (reusing what an ended one did, work/reuse.py), list plans, show one (per task:
state, attempt, rig, worker, GPU, duration, error tail), retry one, cancel one. A plan past the
engine's retention is still shown from its record under the run folder."""
from __future__ import annotations

import json
import re
import secrets
import time

from llamarig.work import durations, engine, engine_end, outputs, reuse
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
                         "retry_max_s": w.retry_max_s, "cancel_grace_s": w.cancel_grace_s, "window": w.plan_window,
                         "map_slice": w.map_slice}}


async def submit(client, rig, plan: Plan, reusing: str | None, output_gone, submitter: str = "none") -> dict:
    """reusing: an ended plan whose succeeded tasks this one takes as done (work/reuse.py);
    output_gone(url), with reusing: why a served output cannot be fetched (ComputeApi.output_gone);
    submitter: the name of the key that submitted it (its usage, and its llm tasks' limits)."""
    return await _submit(client, rig, plan, await _ended(client, rig, reusing) if reusing else None, output_gone,
                         submitter)


async def retry(client, rig, plan_id: str, output_gone, submitter: str = "none") -> dict:
    """The same plan again, its succeeded tasks reused: what failed or was cancelled runs, and
    what succeeded but whose output is gone."""
    old = await _ended(client, rig, plan_id)
    return await _submit(client, rig, Plan.model_validate(old["spec"]["plan"]), old, output_gone, submitter)


async def _submit(client, rig, plan: Plan, old: dict | None, output_gone, submitter: str) -> dict:
    plan_id = f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    spec, rerun = spec_of(rig, plan, plan_id) | {"submitter": submitter}, []
    if old is not None:
        Store(rig.run_dir).touch(old["plan_id"])  # before its outputs are looked at: a prune now keeps them
        spec["reused"], rerun = await _reused(rig, plan, old, output_gone, spec)
    spec["learned_s"] = durations.expected(rig.run_dir, spec["plan"]["tasks"])  # (work/durations.py)
    items = _resolve_maps(rig, spec)
    await _start(client, spec, plan)
    Store(rig.run_dir).write_record(plan_id, {"plan_id": plan_id, "name": plan.name, "outcome": "running",
                                              "submitted_at": time.time(), "spec": spec})
    return {"plan_id": plan_id, "tasks": len(plan.tasks), "reused": list(spec.get("reused", {})),
            "outputs_gone": rerun, "items": items}


def _resolve_maps(rig, spec: dict) -> dict[str, int | str]:
    """Each for_each task's item count as far as known at submit: a glob is resolved here, on
    this rig, into the task's items file (spec["mapped"]); lines are known when their task ends."""
    from llamarig.work import map_files

    counts: dict[str, int | str] = {}
    for t in spec["plan"]["tasks"]:
        each = t.get("for_each")
        if not each or t["name"] in spec.get("reused", {}):
            continue
        if each.get("glob"):
            ref = map_files.resolve_glob(Store(rig.run_dir), spec["plan_id"], t["name"], each["glob"],
                                         outputs.base_url(rig))
            if not ref["count"]:
                raise engine.WorkError("glob_empty", f"tasks.{t['name']}.for_each.glob: no file on this rig matches "
                                       f"{each['glob']!r}: the task would run nothing")
            spec.setdefault("mapped", {})[t["name"]] = ref
        counts[t["name"]] = (spec.get("mapped", {}).get(t["name"], {}).get("count") or len(each.get("items") or [])
                             or f"the lines of {each['lines']}, when it ends")
    return counts


async def _start(client, spec: dict, plan: Plan) -> None:
    from temporalio.service import RPCError

    try:
        await client.start_workflow(engine.PLAN_WORKFLOW, spec, id=spec["plan_id"], task_queue=spec["queues"]["plan"],
                                    memo={"name": plan.name, "tasks": len(plan.tasks), "reuses": reuses(spec)})
    except RPCError as e:
        size = len(json.dumps(spec)) // 1024
        error = engine.failed_call(e, f"the plan ({size} KiB as submitted)")
        if error.code == "plan_too_large":
            error = engine.WorkError(error.code, error.reason + " (the embedded server takes 2 MiB): split the "
                                     "plan, or put long commands in script files")
        raise error from None


def reuses(spec: dict) -> list[str]:
    """The plans whose outputs this one reads (its memo says so: work/prune.py keeps them)."""
    return sorted({entry["reused_from"] for entry in spec.get("reused", {}).values()}
                  | {entry["plan_id"] for entry in spec.get("reused_items", {}).values()})


async def _reused(rig, plan: Plan, old: dict, output_gone, spec: dict) -> tuple[dict, list[str]]:
    """What the new plan starts with for the tasks it reuses, and the tasks that would have been
    reused but run again because an output they need is gone."""
    tasks, old_tasks = plan.model_dump()["tasks"], old["spec"]["plan"]["tasks"]
    gone = await reuse.gone_outputs(old["tasks"], output_gone)
    names = reuse.reusable(tasks, old_tasks, old["tasks"], lambda result: reuse.present_here(result, gone))
    if len(names) == len(plan.tasks):
        raise engine.WorkError("nothing_to_run", f"every task of the plan succeeded in {old['plan_id']} as "
                               "defined now: nothing would run")
    rerun = [n for n in reuse.reusable(tasks, old_tasks, old["tasks"], lambda result: True) if n not in names]
    base = outputs.base_url(rig)
    items = reuse.reusable_items(tasks, old_tasks, old["tasks"], set(names), old["plan_id"])
    if items:
        spec["reused_items"] = items
    return {name: await reuse.entry(old["plan_id"], old["tasks"][name], base) for name in names}, rerun


def running(view: dict) -> bool:
    """Whether the engine still runs the plan (a view from a record: no longer in the engine)."""
    return view.get("status") == "running"


async def _ended(client, rig, plan_id: str) -> dict:
    """An ended plan's view, with the spec it was submitted with (its record is read once)."""
    view = await _view(client, rig, plan_id)
    if running(view):
        raise engine.WorkError("plan_running", f"{plan_id} is still running: wait for it to end, or cancel it "
                               f"(llamarig cancel {plan_id}), then retry")
    return view if "spec" in view else view | {"spec": await _spec(client, rig, plan_id)}


async def _spec(client, rig, plan_id: str) -> dict:
    """What the plan was submitted with: from its record, else from its start in the engine (a
    plan submitted on another rig)."""
    from temporalio.service import RPCError

    record = Store(rig.run_dir).read_record(plan_id) or {}
    if "spec" in record:
        return record["spec"]
    try:
        async for event in client.get_workflow_handle(plan_id).fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            return (await client.data_converter.decode(payloads))[0]
    except RPCError:
        pass
    raise engine.WorkError("plan_spec_gone", f"{plan_id}'s tasks as submitted are gone: it is past the engine's "
                           "retention and its record (written by an older release) does not keep them; submit "
                           "the plan file again")


async def list_plans(client, rig, limit: int = 100) -> dict:
    rows = []
    query = f"WorkflowType = '{engine.PLAN_WORKFLOW}'"
    async for wf in client.list_workflows(query, limit=limit):
        rows.append({"plan_id": wf.id, "status": wf.status.name.lower() if wf.status else "unknown",
                     "started_at": wf.start_time.timestamp() if wf.start_time else None,
                     "closed_at": wf.close_time.timestamp() if wf.close_time else None})
    known = {r["plan_id"] for r in rows}
    store = Store(rig.run_dir)
    for r in rows:  # an ended plan's outcome (succeeded, failed, cancelled) is in its record's summary
        summary = store.read_summary(r["plan_id"]) or {}
        if r["status"] != "running" and summary.get("outcome") not in (None, "running"):
            r |= {"status": summary["outcome"]} | _engine_reason(summary)
        elif r["status"] in engine_end.ENGINE_CLOSED:  # (not settled yet: work-cpu's sweep, or a view, does)
            r |= {"status": "failed", "reason": await engine_end.reason(client, r["plan_id"])}
    for plan_id in store.plan_ids():  # past retention: from the record's summary
        if plan_id in known:
            continue  # (its summary was read above)
        record = store.read_summary(plan_id) or {}
        if record.get("outcome") != "running":
            rows.append({"plan_id": plan_id, "status": record.get("outcome", "unknown"), "started_at":
                         record.get("submitted_at"), "closed_at": record.get("ended_at"), "from": "record"}
                        | _engine_reason(record))
    return {"plans": sorted(rows, key=lambda r: r["started_at"] or 0, reverse=True)}


def _engine_reason(summary: dict) -> dict:
    ended = summary.get("ended_by_engine")
    return {"reason": ended["reason"]} if ended else {}


def _shaped(plan_id: str) -> None:
    """An id `submit` could have made, before it names a file under the run folder."""
    if not PLAN_ID.match(plan_id):
        raise engine.WorkError("plan_not_found", f"no plan {plan_id!r}: plan ids look like NAME-YYYYMMDD-HHMMSS-"
                               "xxxxxx (llamarig plans lists them)")


async def show(client, rig, plan_id: str) -> dict:
    """From the engine while it runs; once it ended, from its record here (the same final state,
    without replaying thousands of tasks), else from the engine; past retention, the record."""
    return with_external(_without_spec(await _view(client, rig, plan_id)))


def with_external(view: dict) -> dict:
    """The view with what its tasks' calls to the escalation tier cost, summed (where any did)."""
    calls = [(t.get("result") or {}).get("external") for t in view.get("tasks", {}).values()]
    calls = [c for c in calls if c]
    if not calls:
        return view
    total = {k: sum(c[k] for c in calls) for k in ("calls", "tokens_in", "tokens_out")}
    return view | {"external": total | {"cost": round(sum(c["cost"] for c in calls), 6),
                                        "currency": calls[0]["currency"]}}


async def _view(client, rig, plan_id: str) -> dict:
    """show's view, with the spec when it came from a record that keeps it."""
    from temporalio.service import RPCError, RPCStatusCode

    _shaped(plan_id)
    handle = client.get_workflow_handle(plan_id)
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise engine.failed_call(e, f"about {plan_id}") from None
        if "tasks" not in (kept := _kept(rig, plan_id)):
            raise engine.WorkError("plan_not_found", f"no plan {plan_id!r} in Temporal nor under the run folder")
        return kept | {"from": "record"}
    status = desc.status.name.lower() if desc.status else "unknown"
    if status != "running" and (kept := _kept(rig, plan_id)).get("outcome") not in (None, "running"):
        return kept | {"status": status}
    if status in engine_end.ENGINE_CLOSED:
        return await settle_closed(client, rig, plan_id, status) | {"status": status}
    state = await _state(handle)
    _merge_pending(state["tasks"], desc.raw_description.pending_activities)
    return state | {"status": status}


async def settle_closed(client, rig, plan_id: str, status: str) -> dict:
    """A plan the engine closed (terminated, timed out, failed): what its workflow last knew, if
    it can still be asked (a query replays its history), else its tasks as submitted."""
    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError

    try:
        state = await _state(client.get_workflow_handle(plan_id))
    except (WorkflowQueryFailedError, RPCError):
        state = None
    spec = (_kept(rig, plan_id).get("spec") or await _spec(client, rig, plan_id)) if state is None else {}
    return await engine_end.settle(client, rig, plan_id, status, state, spec)


def _kept(rig, plan_id: str) -> dict:
    """The plan's record under this rig's run folder ({} if none), read only when needed."""
    return Store(rig.run_dir).read_record(plan_id) or {}


def _without_spec(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "spec"}


async def _state(handle, page: int = 1000) -> dict:
    """The workflow's state, `page` tasks at a time, fewer when an answer would be over Temporal's
    2 MiB (about 400 bytes a task that ran; more with long errors). 1000 keeps an answer under the
    SDK's 512 KiB warning (2000 made one warning line in the worker's log per page). A worker of a
    release without the page query answers the whole state."""
    from temporalio.client import WorkflowQueryFailedError

    state: dict = {"tasks": {}, "task_count": 1}
    while len(state["tasks"]) < state["task_count"]:
        try:
            more = await handle.query("page", args=[len(state["tasks"]), page])
        except WorkflowQueryFailedError as e:
            if "page" in str(e) and not state["tasks"]:
                return await handle.query("state")
            if "size" not in str(e) or page < 100:
                raise
            page //= 4
            continue
        if not more["tasks"]:
            break
        state = more | {"tasks": state["tasks"] | more["tasks"]}
    return state


def _merge_pending(tasks: dict, pending) -> None:
    """A task being run: its attempt and worker as the engine sees them now. The pending list is
    read before the state: a task the state shows ended since keeps its own attempt and worker."""
    for p in pending:
        t = tasks.get(p.activity_id.split("#")[0])
        if t is None or t["state"] != "queued":
            continue
        t["state"] = PENDING_STATES.get(p.state, t["state"])
        t["attempt"] = int(p.activity_id.split("#")[1]) if "#" in p.activity_id else p.attempt
        t["worker"] = p.last_worker_identity or None
        if p.HasField("last_failure"):
            t["last_error"] = p.last_failure.message[-200:]


async def cancel(client, rig, plan_id: str) -> dict:
    """The plan's commands on this rig are told first (Store.ask_stop: SIGTERM within a
    fraction of a second), those on other rigs at their next heartbeat."""
    from temporalio.service import RPCError, RPCStatusCode

    _shaped(plan_id)
    if Store(rig.run_dir).record_path(plan_id).parent.is_dir():  # (a plan this rig knows)
        Store(rig.run_dir).ask_stop(plan_id)
    try:
        await client.get_workflow_handle(plan_id).cancel()
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise engine.failed_call(e, f"the cancel of {plan_id}") from None
        raise engine.WorkError("plan_not_found", f"cannot cancel {plan_id!r}: {e.message}") from None
    return {"plan_id": plan_id, "cancel_requested": True}


async def items(client, rig, plan_id: str, task: str, fetch) -> dict:
    """Every item of a for_each task: from its manifest once it ended (fetch(url, dest, sha256)
    where another rig wrote it), else from its slices' workflows, those started so far."""
    import tempfile
    from pathlib import Path

    view = _without_spec(await _view(client, rig, plan_id))
    t = view["tasks"].get(task)
    if t is None or "map" not in t and not (t.get("result") or {}).get("output", "").endswith(".jsonl"):
        raise engine.WorkError("not_mapped", f"{plan_id} has no for_each task {task!r} whose items have been listed")
    result = t.get("result") or {}
    if result.get("output"):
        path = Path(result["output"])
        if not path.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                await fetch(result["output_url"], Path(tmp) / "m", result["output_sha256"])
                return {"task": task, "items": _jsonl(Path(tmp) / "m")}
        return {"task": task, "items": _jsonl(path)}
    return {"task": task, "items": await _slice_items(client, plan_id, task, t["map"]["slices"]), "running": True}


def _jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


async def _slice_items(client, plan_id: str, task: str, slices: int) -> list[dict]:
    from temporalio.service import RPCError

    found = []
    for k in range(slices):
        try:
            state = await client.get_workflow_handle(f"{plan_id}.{task}.{k}").query("state")
        except RPCError:
            break  # (not started yet: slices start in order)
        for name, s in state["tasks"].items():
            found.append({"index": int(name.rsplit(".", 1)[1]), "state": s["state"]}
                         | ({"error": s["error"][-300:]} if s.get("error") else {}))
    return found
