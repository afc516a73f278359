"""OpenAI-compatible routes: chat, completions, embeddings (routed by `model`), models and
transcriptions (to Whisper). An unknown model is a 404; a model that is not ready is a 503
with Retry-After; there is no fallback to another model."""
from __future__ import annotations

import hashlib
import json
import logging
import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llamarig.api.compute import limits, schemas, validate
from llamarig.api.compute.keyring import CALLER, NO_KEYS
from llamarig.api.compute.ledger import Limited
from llamarig.api.compute.proxy import Usage
from llamarig.api.compute.validate import Invalid, ModelLimits
from llamarig.backend.lifecycle.actor import NotAvailable
from llamarig.backend.lifecycle.manager import UnknownModel
from llamarig.backend.supervisor_conf import WHISPER_PROGRAM
from llamarig.shared.api_errors import error_response
from llamarig.shared.keystore import NamedKey

ROUTED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
OURS = (502, 503)  # the proxy's own answers: a server gone or broken off, not a refusal of the request
log = logging.getLogger("llamarig.api")


def validator_gap(state, name: str, path: str, status: int, body: bytes) -> None:
    """An engine failed on a request the validator let through: a gap to close in validate.py."""
    digest = hashlib.sha256(body).hexdigest()[:16]
    log.warning("engine answered %d to a request that passed validation", status,
                extra={"model": name, "route": path, "status": status, "body_sha256": digest, "bytes": len(body)})
    state.metrics.validator_gap(name, path)


async def route(state, scope: dict, name: str, path: str, body, caller: NamedKey, stream: bool = False,
                inputs: int = 0) -> Response:
    """Admit the request under its key's limits, lease the model (waiting, bounded, while it
    loads) and pass the request (its ASGI scope and body) through; its usage is recorded when
    the answer has ended. `inputs`: an embeddings request's inputs."""
    arrived = time.perf_counter()
    try:
        state.ledger.admit(caller, name)
    except Limited as e:
        state.metrics.request_done(name, path, e.status, time.perf_counter() - arrived, None, False)
        return e.response()
    try:
        lease = state.manager.try_acquire(name) or await state.manager.acquire(name)
    except (UnknownModel, NotAvailable) as e:
        status = 404 if isinstance(e, UnknownModel) else 503
        state.ledger.end(caller, name, status)
        state.metrics.request_done(name, path, status, time.perf_counter() - arrived, None, False)
        if status == 404:
            return error_response(404, e.code, e.reason, "model")
        return error_response(503, e.code, e.reason, retry_after=e.retry_after)
    unit = lease.actor.unit  # the slot serving now; a blue-green reload switches it
    cold = lease.cold

    def done(status: int, first_byte: float | None, usage: Usage) -> None:
        state.ledger.end(caller, name, status, usage.prompt, usage.completion, usage.audio_s,
                         inputs if status < 400 else 0)
        ttfb = (time.perf_counter() - arrived) if first_byte is not None else None
        state.metrics.request_done(name, path, status, time.perf_counter() - arrived, ttfb, cold, usage.completion)
        if status >= 500 and status not in OURS and isinstance(body, bytes):
            validator_gap(state, name, path, status, body)

    return await state.proxy.forward(scope, unit.port, path, body, lease, done, stream)


def _not_json(constant: str):
    # Python's json takes NaN and Infinity; JSON and llama-server's parser (a 500) do not.
    raise ValueError(f"{constant} is not JSON")


DECODER = json.JSONDecoder(parse_constant=_not_json)  # made once: json.loads with a keyword makes one a call


def _parse(body: bytes) -> dict:
    try:
        data = DECODER.decode(body.decode())  # JSON is UTF-8 (RFC 8259); anything else is a 400
    except ValueError:
        raise Invalid("(body)", "the body must be a JSON object in UTF-8") from None
    except RecursionError:  # (a 2 KB body of [[[[...]]]] 1000 deep: a 500 before)
        raise Invalid("(body)", "the body must be a JSON object nested less deep (it goes past the parser's "
                      "limit of about 1000 levels)") from None
    if not isinstance(data, dict):
        raise Invalid("(body)", "the body must be a JSON object")
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise Invalid("model", "the body must have a 'model' field naming one of GET /v1/models")
    return data


def _kind_refusal(rig, name: str, path: str, limits: ModelLimits) -> Response | None:
    """An embeddings model serves /v1/embeddings only, and only embeddings models serve it."""
    wants = path == "/v1/embeddings"
    if limits.embeddings == wants:
        return None
    fit = sorted(n for n, m in rig.models.items() if m.embeddings == wants) or ["none in this rig"]
    what = "embeddings" if wants else "chat and completions"
    return error_response(400, "model_kind_mismatch", f"model {name!r} does not serve {what}; the models that "
                          f"do: {', '.join(fit)}", "model")


async def routed(state, scope: dict, receive, caller: NamedKey) -> Response:
    """POST to one of ROUTED: the model named in the JSON body gets it, once the body has
    arrived within its limits and passed validation."""
    api = state.rig.api
    cap = api.max_body_bytes
    try:
        limits.check_declared(scope, cap)
        body = await limits.read_body(receive, cap, api.body_timeout_s, "body", scope.get(limits.BODY_ARRIVED, False))
    except limits.BodyRefused as e:
        return e.response()
    path, rig = scope["path"], state.manager.rig
    try:
        data = _parse(body)
        name = data["model"]
        if name == WHISPER_PROGRAM or name not in rig.models:
            return error_response(404, "model_not_found", f"model {name!r} is not served here; known: "
                                  f"{', '.join(sorted(rig.models))}", "model")
        model_limits = state.model_limits.get(rig, name)
        refusal = _kind_refusal(rig, name, path, model_limits)
        if refusal:
            return refusal
        validate.check(path, data, body, model_limits)
    except Invalid as e:
        code = "model_missing" if e.param == "model" else "invalid_request"
        return error_response(400, code, e.message, e.param)
    inputs = _inputs(data) if path == "/v1/embeddings" else 0
    return await route(state, scope, name, path, body, caller, data.get("stream") is True, inputs)


def _inputs(data: dict) -> int:
    """An embeddings request's inputs: a list of texts or of token lists is several; else one."""
    given = data.get("input")
    if isinstance(given, list) and given and isinstance(given[0], (str, list)):
        return len(given)
    return 1


DOCUMENTED = {"/v1/chat/completions": ("ChatCompletionRequest", schemas.ChatCompletion),
              "/v1/completions": ("CompletionRequest", schemas.Completion),
              "/v1/embeddings": ("EmbeddingRequest", schemas.EmbeddingList)}


def caller_of(scope: dict) -> NamedKey:
    return scope.get(CALLER) or NO_KEYS  # (set by the fast path; an app called without it has no keys)


def _served_by_fast_path(state):
    async def handler(request: Request) -> Response:
        """Served by the fast path before FastAPI; here so the spec and /docs describe it."""
        return await routed(state, request.scope, request.receive, caller_of(request.scope))
    return handler


def audio_cap(rig) -> int:
    """Whisper's own cap on the file, and room for the form's other fields and boundaries."""
    return rig.whisper.max_audio_mib * limits.MIB + 64 * 1024


def build_router(state) -> APIRouter:
    """`state` holds manager, proxy and metrics (see app.py). The ROUTED paths are served by
    the fast path in app.py, before FastAPI."""
    router = APIRouter()
    for path, (request_model, answer) in DOCUMENTED.items():
        router.add_api_route(path, _served_by_fast_path(state), methods=["POST"], summary=request_model,
                             openapi_extra=schemas.body_of_name(request_model), responses=schemas.answers(answer))

    @router.post("/v1/audio/transcriptions", openapi_extra=schemas.TRANSCRIPTION_BODY,
                 responses=schemas.answers(schemas.Transcription))
    async def transcriptions(request: Request) -> Response:
        """Passed on to Whisper piece by piece as it arrives, never buffered here."""
        if WHISPER_PROGRAM not in state.manager.actors:
            return error_response(404, "model_not_found", "this rig has no Whisper service", "model")
        cap = audio_cap(state.manager.rig)
        try:
            limits.check_declared(request.scope, cap, "audio upload")
        except limits.BodyRefused as e:
            return e.response()
        body = limits.stream_body(request.receive, cap, state.rig.api.body_timeout_s)
        return await route(state, request.scope, WHISPER_PROGRAM, "/v1/audio/transcriptions", body,
                           caller_of(request.scope))

    @router.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        """The models this key may use (all, unless its --models list says fewer)."""
        allowed = caller_of(request.scope).models
        rows = [a.snapshot() for n, a in state.manager.actors.items()
                if n != WHISPER_PROGRAM and (allowed is None or n in allowed)]
        return JSONResponse({"object": "list", "data": [
            {"id": r["name"], "object": "model", "owned_by": "llamarig", "state": r["state"],
             "reason": r["reason"], "gpus": r["gpus"]} for r in rows]})

    return router
