"""GET /admin/work/outputs/PLAN/TASK/attempt-N/NAME (operator key): a task output this rig made,
for a dependent running on another rig (work/outputs.py says when one is fetched); HEAD says
whether it is still here (a reuse asks, work/reuse.py). Only the output files of attempt folders
under the run folder are served; every part of the path is checked against the names the work
layer writes, so nothing else can be reached."""
from __future__ import annotations

import re

from fastapi import APIRouter
from starlette.responses import FileResponse, Response

from llamarig.shared.api_errors import error_response
from llamarig.work.outputs import ROUTE, SERVED_NAME
from llamarig.work.plan import TASK_NAME
from llamarig.work.plans import PLAN_ID
from llamarig.work.store import Store

TASK = re.compile(TASK_NAME.removesuffix("$") + r"(\.\d{1,6})?$")  # (TASK.INDEX: an item of a for_each)
ATTEMPT = re.compile(r"^attempt-([1-9]\d{0,3})$")


def build_router(rig) -> APIRouter:
    router = APIRouter(prefix=ROUTE)
    store = Store(rig.run_dir)

    @router.api_route("/{plan_id}/{task}/{attempt}/{name}", methods=["GET", "HEAD"])  # HEAD: still there?
    async def output(plan_id: str, task: str, attempt: str, name: str) -> Response:
        checks = (("plan_id", PLAN_ID, plan_id), ("task", TASK, task),
                  ("attempt", ATTEMPT, attempt), ("name", SERVED_NAME, name))
        for field, pattern, value in checks:
            if not pattern.match(value):
                return error_response(400, "invalid_output_path", f"{field} {value[:80]!r} is not one the work "
                                      f"layer writes ({pattern.pattern})", field)
        path = store.attempt(plan_id, task, int(attempt.removeprefix("attempt-"))) / name
        if not path.is_file():
            return error_response(404, "output_not_found", f"this rig has no {name} of {plan_id}/{task} "
                                  f"{attempt}: the run folder was cleaned or the task ran elsewhere", "name")
        return FileResponse(path, media_type="application/octet-stream")

    return router
