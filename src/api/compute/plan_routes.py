"""Operator routes of the work layer: /admin/plans (list, submit), /admin/plans/{id} (show),
/admin/plans/{id}/cancel. The Temporal client is made on first use: the API serves models
whether or not Temporal is up, and says so here with a 503."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from llamarig.shared.api_errors import error_response
from llamarig.shared.errors import LlamarigError


class TemporalLink:
    """One client for the API's life, connected when first needed (one connect at a time)."""

    def __init__(self, rig):
        self.rig, self.client, self.lock = rig, None, asyncio.Lock()

    async def get(self):
        async with self.lock:
            if self.client is None:
                from llamarig.work import engine

                self.client = await engine.connect(self.rig.work, identity="compute-api")
            return self.client


def build_router(state, rig) -> APIRouter:
    router = APIRouter(prefix="/admin/plans")
    link = TemporalLink(rig) if rig.work else None

    async def call(op, *args, status: int = 200) -> Response:
        from llamarig.work import plans

        if link is None:
            return error_response(404, "work_off", "this rig has no work section: plans are off")
        try:
            return JSONResponse(await getattr(plans, op)(await link.get(), *args), status_code=status)
        except LlamarigError as e:
            code = {"plan_not_found": 404, "plan_invalid": 400}.get(e.code, 503)
            return error_response(code, e.code, e.reason, retry_after=5 if code == 503 else None)

    @router.get("")
    async def list_all() -> Response:
        return await call("list_plans", rig)

    @router.post("")
    async def submit(request: Request, infer_class: bool = False) -> Response:
        from llamarig.work.plan import PlanError, parse_plan

        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "invalid_json", "the body must be JSON: {\"plan\": {...}}")
        if not isinstance(body, dict) or not isinstance(body.get("plan"), dict):
            return error_response(400, "plan_invalid", "the body must be {\"plan\": {name, tasks}}", "plan")
        try:
            plan = parse_plan(body["plan"], "plan", infer_class, set(rig.models))
        except PlanError as e:
            return error_response(400, e.code, e.reason, "plan")
        return await call("submit", rig, plan, status=201)

    @router.get("/{plan_id}")
    async def show(plan_id: str) -> Response:
        return await call("show", rig, plan_id)

    @router.post("/{plan_id}/cancel")
    async def cancel(plan_id: str) -> Response:
        return await call("cancel", plan_id, status=202)

    return router
