"""The team's routes (operator key): usage by key, the keys (never a key: names, scopes,
limits, last use), the audit log's latest lines."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from llamarig.shared.api_errors import error_response
from llamarig.shared.errors import LlamarigError
from llamarig.shared.keystore import KeyStore
from llamarig.shared.usage_store import GROUPS, UsageStore


def build_router(state, run_dir) -> APIRouter:
    router = APIRouter(prefix="/admin")
    usage, keys = UsageStore(run_dir), KeyStore(run_dir)

    @router.get("/usage")
    async def usage_by(since: str | None = None, by: str = "key") -> Response:
        """Sums per key (and/or model, day) from the day `since` (YYYY-MM-DD) on: requests,
        errors, prompt and completion tokens, audio seconds, embedding inputs."""
        await state.ledger.flush()  # what the last seconds added, too
        try:
            rows = await asyncio.to_thread(usage.query, since, tuple(b for b in by.split(",") if b))
        except LlamarigError as e:
            return error_response(400, e.code, f"by={by}: one or more of {', '.join(GROUPS)}", "by")
        return JSONResponse({"since": since, "by": by, "rows": rows})

    @router.get("/keys")
    async def key_list() -> JSONResponse:
        return JSONResponse({"keys": [k.row() for k in await asyncio.to_thread(keys.all)]})

    @router.get("/audit")
    async def audit(since: str | None = None, limit: int = 200) -> JSONResponse:
        rows = await asyncio.to_thread(state.audit.read, since)
        return JSONResponse({"lines": rows[-max(1, min(limit, 10000)):]})

    return router
