"""Operator routes: status, start, stop (drained), reset of an open circuit, reload, down."""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from llamarig.api.compute import limits
from llamarig.backend.lifecycle.actor import NotAvailable
from llamarig.backend.lifecycle.manager import UnknownModel
from llamarig.shared.api_errors import error_response
from llamarig.shared.errors import LlamarigError
from llamarig.shared.gpus import TEMPERATURES, simulated_temperatures
from llamarig.work.store import replace_json

ACTIONS = ("start", "stop", "reset", "reload")
LEASE_BODY_BYTES = 4096  # {"holder": up to 200 characters, "ttl_s": n}, read whole only below this


def build_router(state) -> APIRouter:
    router = APIRouter(prefix="/admin")

    @router.get("/units")
    async def units() -> JSONResponse:
        m = state.manager
        return JSONResponse({"units": [a.snapshot() for a in m.actors.values()], "gpus": m.gpu_report(),
                             "placements": {name: [a.snapshot() | {"history": None} for a in slots]
                                            for name, slots in m.slots.items() if slots[0].unit.script},
                             "gpus_simulated": m.inventory.simulated, "boot_waves": m.boot_waves,
                             "booted": m.booted.is_set()})

    @router.get("/units/{name}")
    async def unit(name: str) -> Response:
        try:
            actor = state.manager.actor(name)
        except UnknownModel as e:
            return error_response(404, e.code, e.reason, "name")
        return JSONResponse({**actor.snapshot(), "history": [vars(t) for t in actor.history],
                             "reload": state.manager.swaps.get(name)})

    @router.post("/units/{name}/{action}")
    async def act(name: str, action: str, drain: bool = True) -> Response:
        if action not in ACTIONS:
            return error_response(404, "unknown_action", f"action must be one of {ACTIONS}", "action")
        m = state.manager
        try:
            m.actor(name)
        except UnknownModel as e:
            return error_response(404, e.code, e.reason, "name")
        if action == "reload":
            try:
                record = await m.reload(name)
            except LlamarigError as e:
                return error_response(409, e.code, e.reason, "name")
            return JSONResponse({"name": name, "action": action, "accepted": True, **record}, status_code=202)
        try:
            if action == "stop":
                m.stop_unit(name, drain)
            else:  # (through the planner: refused while the unit's GPU is lent)
                await (m.start_unit(name) if action == "start" else m.reset(name))
        except LlamarigError as e:
            return error_response(409, e.code, e.reason, "name")
        return JSONResponse({"name": name, "action": action, "accepted": True}, status_code=202)

    @router.post("/gpus/lease")
    async def lease(request: Request) -> Response:
        """A whole GPU for a script command: {"holder": "plan/task#attempt", "ttl_s": seconds}."""
        try:
            body = await limits.read_json(request, LEASE_BODY_BYTES, state.rig.api.body_timeout_s, "lease body")
            holder, ttl = str(body["holder"])[:200], float(body["ttl_s"])
        except limits.BodyRefused as e:
            return e.response()
        except (ValueError, KeyError, TypeError):
            return error_response(400, "invalid_lease", 'the body must be {"holder": text, "ttl_s": seconds}')
        if not 1 <= ttl <= 3600:
            return error_response(400, "invalid_lease", "ttl_s must be 1 to 3600 seconds", "ttl_s")
        try:
            return JSONResponse(await state.manager.take_gpu(holder, ttl), status_code=201)
        except NotAvailable as e:
            return error_response(503, e.code, e.reason, retry_after=e.retry_after)

    @router.post("/gpus/lease/{lease_id}/renew")
    async def renew(lease_id: str) -> Response:
        record = state.manager.renew_gpu(lease_id)
        return _unknown_lease(lease_id) if record is None else JSONResponse(record)

    @router.delete("/gpus/lease/{lease_id}")
    async def give_back(lease_id: str, reason: str = "ended") -> Response:
        try:
            if not await state.manager.return_gpu(lease_id, reason[:200]):
                return _unknown_lease(lease_id)
        except NotAvailable as e:
            return error_response(503, e.code, e.reason, retry_after=e.retry_after)
        return JSONResponse({"lease_id": lease_id, "returned": True})

    @router.put("/gpus/{gpu}/temperature")
    async def temperature(gpu: int, request: Request) -> Response:
        """The simulated inventory's temperature of one GPU, {"celsius": n}: the thermal policy's
        input on a rig without NVML (tests, a drill). Refused where NVML reads the real one."""
        m = state.manager
        if not m.inventory.simulated:
            return error_response(409, "not_simulated", "NVML reads this rig's temperatures; only the simulated "
                                  "inventory's can be set")
        if gpu not in m.modes.gpus:
            return error_response(404, "unknown_gpu", f"no GPU {gpu} in this rig's inventory", "gpu")
        try:
            body = await limits.read_json(request, LEASE_BODY_BYTES, state.rig.api.body_timeout_s, "temperature body")
            celsius = body["celsius"]
        except limits.BodyRefused as e:
            return e.response()
        except (KeyError, TypeError):
            celsius = None
        if isinstance(celsius, bool) or not isinstance(celsius, (int, float)) or not -50 <= celsius <= 200:
            return error_response(400, "invalid_temperature", 'the body must be {"celsius": a number from -50 to 200}',
                                  "celsius")
        set_simulated_temperature(state.rig.run_dir, gpu, float(celsius))
        return JSONResponse({"gpu": gpu, "celsius": float(celsius)})

    @router.post("/down")
    async def down() -> JSONResponse:
        await state.manager.stop_all(drain=True)
        return JSONResponse({"units": [a.snapshot() for a in state.manager.actors.values()]})

    return router


def set_simulated_temperature(run_dir, gpu: int, celsius: float) -> None:
    """Write one GPU's temperature into the simulated inventory's file (atomically: the thermal
    loop reads it meanwhile)."""
    now = simulated_temperatures(run_dir) | {gpu: celsius}
    replace_json(run_dir / TEMPERATURES, {str(g): c for g, c in now.items()}, indent=None)


def _unknown_lease(lease_id: str) -> Response:
    return error_response(404, "unknown_lease", f"no lease {lease_id!r}: it expired or was returned")
