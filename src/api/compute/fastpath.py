"""Pure-ASGI front of the compute API: the bearer-key check, and the routed OpenAI paths served
without FastAPI's routing and dependency machinery (measured: most of the per-request cost of
the compute API was there and in a BaseHTTPMiddleware; see bench/RESULTS.md)."""
from __future__ import annotations

import hmac

from llamarig.api.compute import openai_routes
from llamarig.shared.api_errors import error_response

OPEN_PATHS = ("/health", "/ready", "/metrics")


class FastPath:
    def __init__(self, app, state, key: str | None):
        self.app = app
        self.state = state
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.key and not path.startswith(OPEN_PATHS) and not self._key_ok(scope):
            response = error_response(401, "invalid_api_key", "send the key from api.api_key_file as "
                                      "'Authorization: Bearer KEY'")
        elif scope["method"] == "POST" and path in openai_routes.ROUTED:
            response = await openai_routes.routed(self.state, scope, receive)
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def _key_ok(self, scope) -> bool:
        sent = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                sent = value.removeprefix(b"Bearer ").strip()
        return hmac.compare_digest(sent, self.key)
