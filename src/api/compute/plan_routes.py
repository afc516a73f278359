"""Operator routes of the work layer: /admin/plans (list, submit), /admin/plans/{id} (show),
/admin/plans/{id}/retry, /admin/plans/{id}/cancel, and /admin/work (who polls the queues). The
Temporal client is made on first use: the API serves models whether or not Temporal is up, and
says so here with a 503."""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from llamarig.api.compute import limits
from llamarig.shared.api_errors import error_response
from llamarig.shared.errors import LlamarigError
from llamarig.shared.tls import api_url, loopback_trust, peer_trust


STATUS = {"plan_not_found": 404, "plan_invalid": 400, "plan_refused": 400, "glob_empty": 400, "not_mapped": 404,
          "plan_running": 409, "nothing_to_run": 409, "plan_spec_gone": 410, "plan_too_large": 413}  # else 503 (temporal_unreachable)


class TemporalLink:
    """One client for the API's life, connected when first needed (one connect at a time)."""

    def __init__(self, rig):
        self.rig, self.client, self.lock = rig, None, asyncio.Lock()

    async def get(self):
        async with self.lock:
            if self.client is None:
                from llamarig.work import engine

                self.client = await engine.connect(self.rig, identity="compute-api")
            return self.client


async def _answer(link: TemporalLink | None, op, what: str, *args, status: int = 200) -> Response:
    """op(client, *args) as a JSON answer; Temporal's failures as the errors they mean."""
    if link is None:
        return error_response(404, "work_off", "this rig has no work section: plans are off")
    from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError
    from temporalio.service import RPCError

    from llamarig.work.engine import failed_call, unanswered

    try:
        try:
            return JSONResponse(await op(await link.get(), *args), status_code=status)
        except RPCError as e:  # (what the plan operations do not map themselves: Temporal gone)
            raise failed_call(e, what) from None
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as e:
            raise unanswered(what, str(e)) from None
    except LlamarigError as e:
        code = STATUS.get(e.code, 503)
        return error_response(code, e.code, e.reason, retry_after=5 if code == 503 else None)


PLAN_BODY_BYTES = 2 * 1024 * 1024  # a plan Temporal takes (its payload limit), read whole only below this
VIEW_MAX_AGE_S = 1.0  # a plan's view is at most this old: viewers of one plan share a fetch a second


class Views:
    """Views of one plan share one fetch while it runs or is younger than max_age_s, however many
    ask or how often: a running plan's view is a set of queries its workflow answers between its own
    steps (a chain of 5000 viewed ten times a second took 110 s instead of 67, one view 36 s). A
    fetch that failed is not kept."""

    def __init__(self, max_age_s: float = VIEW_MAX_AGE_S):
        self.max_age_s = max_age_s
        self.fetches: dict[str, tuple[float, asyncio.Future]] = {}

    async def get(self, plan_id: str, fetch):
        now = time.monotonic()
        self.fetches = {k: v for k, v in self.fetches.items() if now - v[0] < self.max_age_s or not v[1].done()}
        if plan_id not in self.fetches:
            self.fetches[plan_id] = (now, asyncio.ensure_future(fetch()))
        fetched = self.fetches[plan_id][1]
        try:
            return await asyncio.shield(fetched)  # (a viewer who leaves does not cancel the others' fetch)
        except Exception:
            if self.fetches.get(plan_id, (0, None))[1] is fetched:
                del self.fetches[plan_id]
            raise


def build_work_router(rig, link: TemporalLink | None) -> APIRouter:
    """GET /admin/work: the engine the rig uses, and who polls its queues."""
    router = APIRouter(prefix="/admin/work")

    @router.get("")
    async def work() -> Response:
        from llamarig.work import pollers

        return await _answer(link, pollers.describe, "describe the queues", rig)

    return router


def build_router(state, rig, link: TemporalLink | None, operator_key: bytes | None) -> APIRouter:
    """operator_key: what other rigs' compute APIs take for the outputs they serve (a reuse asks
    them whether they still have each, work/reuse.py)."""
    router = APIRouter(prefix="/admin/plans")
    views = Views()

    async def call(op, *args, status: int = 200) -> Response:
        from llamarig.work import plans

        return await _answer(link, getattr(plans, op), op.replace("_", " "), *args, status=status)

    async def reusing(op, *args, submitter: str = "none") -> Response:
        from llamarig.work.api_client import ComputeApi
        from llamarig.work.outputs import key_origins

        api = ComputeApi(api_url(rig), None, 10, operator_key.decode() if operator_key else None,
                         key_origins=key_origins(rig), verify=loopback_trust(rig), peer_verify=peer_trust(rig))
        try:
            return await call(op, *args, api.output_gone, submitter, status=201)
        finally:
            await api.close()

    @router.get("")
    async def list_all() -> Response:
        return await call("list_plans", rig)

    @router.post("")
    async def submit(request: Request, infer_class: bool = False) -> Response:
        from llamarig.api.compute.openai_routes import caller_of
        from llamarig.work.plan import PlanError, parse_plan
        from llamarig.work.plans import PLAN_ID

        try:
            body = await limits.read_json(request, PLAN_BODY_BYTES, rig.api.body_timeout_s, "plan body")
        except limits.BodyRefused as e:
            return e.response()
        if not isinstance(body, dict) or not isinstance(body.get("plan"), dict):
            return error_response(400, "plan_invalid", "the body must be {\"plan\": {name, tasks}}", "plan")
        reused_plan = body.get("reuse")
        if reused_plan is not None and not (isinstance(reused_plan, str) and PLAN_ID.match(reused_plan)):
            return error_response(400, "plan_invalid", "reuse: the id of an ended plan (NAME-YYYYMMDD-HHMMSS-xxxxxx)",
                                  "reuse")
        try:
            plan = parse_plan(body["plan"], "plan", infer_class, set(rig.models), rig.work.external is not None,
                              rig.work.retries)
        except PlanError as e:
            return error_response(400, e.code, e.reason, "plan")
        submitter = caller_of(request.scope).name  # (its usage, and its llm tasks' limits)
        if reused_plan is None:
            return await call("submit", rig, plan, None, None, submitter, status=201)
        return await reusing("submit", rig, plan, reused_plan, submitter=submitter)

    @router.get("/{plan_id}")
    async def show(plan_id: str) -> Response:
        from llamarig.work import plans

        return await _answer(link, lambda client: views.get(plan_id, lambda: plans.show(client, rig, plan_id)), "show")

    @router.get("/{plan_id}/items/{task}")
    async def items(plan_id: str, task: str) -> Response:
        from llamarig.work.api_client import ComputeApi
        from llamarig.work.outputs import key_origins

        api = ComputeApi(api_url(rig), None, 60, operator_key.decode() if operator_key else None,
                         key_origins=key_origins(rig), verify=loopback_trust(rig), peer_verify=peer_trust(rig))
        try:
            return await call("items", rig, plan_id, task, api.fetch_output)
        finally:
            await api.close()

    @router.post("/{plan_id}/retry")
    async def retry(plan_id: str, request: Request) -> Response:
        from llamarig.api.compute.openai_routes import caller_of

        return await reusing("retry", rig, plan_id, submitter=caller_of(request.scope).name)

    @router.post("/{plan_id}/cancel")
    async def cancel(plan_id: str) -> Response:
        return await call("cancel", rig, plan_id, status=202)

    return router
