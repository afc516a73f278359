"""Pure-ASGI front of the compute API: the bearer-key check by route group, and the routed
OpenAI paths served without FastAPI's routing and dependency machinery (measured: most of the
per-request cost of the compute API was there and in a BaseHTTPMiddleware; see bench/RESULTS.md)."""
from __future__ import annotations

from llamarig.api.compute import openai_routes
from llamarig.shared.api_errors import error_response
from llamarig.shared.keys import Keys

# Route groups: open-able (the rig's api.keys.open_routes), client (inference and the docs),
# operator (everything else: /admin and any route added later, so a new route is closed by default).
OPENABLE = {"/health": "health", "/ready": "ready", "/metrics": "metrics"}
CLIENT_PREFIXES = ("/v1/", "/docs", "/openapi.json")


def route_group(path: str) -> str:
    """health, ready, metrics, client or operator."""
    if path in OPENABLE:
        return OPENABLE[path]
    if path.startswith("/metrics/"):
        return "metrics"
    return "client" if path.startswith(CLIENT_PREFIXES) else "operator"


def bearer(scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.partition(b" ")
            return key.strip() if scheme.lower() == b"bearer" else None
    return None


class FastPath:
    def __init__(self, app, state, keys: Keys, open_routes: list[str]):
        self.app = app
        self.state = state
        self.keys = keys
        self.open = set(open_routes) if keys.any else {"health", "ready", "metrics", "client", "operator"}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        group = route_group(path)
        if group not in self.open and not self._allowed(scope, group):
            response = self._refusal(group)
        elif scope["method"] == "POST" and path in openai_routes.ROUTED:
            response = await openai_routes.routed(self.state, scope, receive)
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def _allowed(self, scope, group: str) -> bool:
        sent = bearer(scope)
        if sent is None:
            return False
        return self.keys.is_operator(sent) if group == "operator" else self.keys.is_client(sent)

    def _refusal(self, group: str):
        self.state.metrics.auth_failed(group)
        env = self.state.rig.api.keys.operator_env
        if group != "operator":
            how = "this route needs a client key"
        elif self.keys.operator:
            how = f"this route needs the operator key (api.keys.operator_file or ${env})"
        else:
            how = f"no operator key is set, so operator routes are closed: set api.keys.operator_file or ${env}"
        return error_response(401, "invalid_api_key", f"{how}, sent as 'Authorization: Bearer KEY'",
                              headers={"WWW-Authenticate": "Bearer"})
