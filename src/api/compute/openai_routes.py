"""OpenAI-compatible routes: chat, completions, embeddings (routed by `model`), models and
transcriptions (to Whisper). An unknown model is a 404; a model that is not ready is a 503
with Retry-After; there is no fallback to another model."""
from __future__ import annotations

import json
import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llamarig.backend.lifecycle.actor import NotAvailable
from llamarig.backend.lifecycle.manager import UnknownModel
from llamarig.backend.supervisor_conf import WHISPER_PROGRAM
from llamarig.shared.api_errors import error_response

ROUTED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def _model_and_stream(body: bytes) -> tuple[str | None, bool]:
    """The body's `model` (None when missing or not JSON) and whether it asks for a stream."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, False
    if not isinstance(data, dict):
        return None, False
    model = data.get("model")
    return (model if isinstance(model, str) and model else None), data.get("stream") is True


async def route(state, scope: dict, name: str, path: str, body, stream: bool = False) -> Response:
    """Lease the model (waiting, bounded, while it loads) and pass the request (its ASGI scope
    and body) through."""
    arrived = time.perf_counter()
    try:
        lease = await state.manager.acquire(name)
    except UnknownModel as e:
        state.metrics.request_done(name, path, 404, time.perf_counter() - arrived, None, False)
        return error_response(404, e.code, e.reason, "model")
    except NotAvailable as e:
        state.metrics.request_done(name, path, 503, time.perf_counter() - arrived, None, False)
        return error_response(503, e.code, e.reason, retry_after=e.retry_after)
    unit = lease.actor.unit  # the slot serving now; a blue-green reload switches it
    cold = lease.cold

    def done(status: int, first_byte: float | None, tokens: int) -> None:
        ttfb = (time.perf_counter() - arrived) if first_byte is not None else None
        state.metrics.request_done(name, path, status, time.perf_counter() - arrived, ttfb, cold, tokens)

    return await state.proxy.forward(scope, unit.port, path, body, lease, done, stream)


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def routed(state, scope: dict, receive) -> Response:
    """POST to one of ROUTED: the model named in the JSON body gets it."""
    body = await _body(receive)
    name, stream = _model_and_stream(body)
    if name is None:
        return error_response(400, "model_missing", "the body must be JSON with a 'model' field naming "
                              "one of GET /v1/models", "model")
    if name == WHISPER_PROGRAM or name not in state.manager.rig.models:
        return error_response(404, "model_not_found", f"model {name!r} is not served here; known: "
                              f"{', '.join(sorted(state.manager.rig.models))}", "model")
    return await route(state, scope, name, scope["path"], body, stream)


def build_router(state) -> APIRouter:
    """`state` holds manager, proxy and metrics (see app.py). The ROUTED paths are served by
    the fast path in app.py, before FastAPI."""
    router = APIRouter()

    @router.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        if WHISPER_PROGRAM not in state.manager.actors:
            return error_response(404, "model_not_found", "this rig has no Whisper service", "model")
        return await route(state, request.scope, WHISPER_PROGRAM, "/v1/audio/transcriptions", request.stream())

    @router.get("/v1/models")
    async def models() -> JSONResponse:
        rows = [a.snapshot() for n, a in state.manager.actors.items() if n != WHISPER_PROGRAM]
        return JSONResponse({"object": "list", "data": [
            {"id": r["name"], "object": "model", "owned_by": "llamarig", "state": r["state"],
             "reason": r["reason"], "gpus": r["gpus"]} for r in rows]})

    return router
