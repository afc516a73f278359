"""Pure-ASGI front of the compute API: the bearer-key check by route group (whose key it is:
keyring.py), the audit line of every admin action, and the routed
OpenAI paths served without FastAPI's routing and dependency machinery (measured: most of the
per-request cost of the compute API was there and in a BaseHTTPMiddleware; see bench/RESULTS.md)."""
from __future__ import annotations

import time

from llamarig.api.compute import openai_routes
from llamarig.api.compute.keyring import CALLER, NO_KEYS, WORKERS, KeyRing
from llamarig.shared.api_errors import error_response
from llamarig.shared.audit import AuditLog, target_of
from llamarig.shared.keystore import NamedKey

# Route groups: open-able (the rig's api.keys.open_routes), client (inference and the docs),
# operator (everything else: /admin and any route added later, so a new route is closed by default).
OPENABLE = {"/health": "health", "/ready": "ready", "/metrics": "metrics"}
CONSOLE = ("/console", "/console/login", "/console/logout")  # the page and its sign-in hold no data: always open
CLIENT_PREFIXES = ("/v1/", "/docs", "/openapi.json")


def route_group(path: str) -> str:
    """health, ready, metrics, client or operator."""
    if path in OPENABLE:
        return OPENABLE[path]
    if path in CONSOLE:
        return "console"
    if path.startswith("/metrics/"):
        return "metrics"
    return "client" if path.startswith(CLIENT_PREFIXES) else "operator"


def console_key(scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"cookie":
            for part in value.split(b";"):
                key, _, found = part.strip().partition(b"=")
                if key == b"llamarig_console":
                    return found or None
    return None


def bearer(scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.partition(b" ")
            return key.strip() if scheme.lower() == b"bearer" else None
    return None


READS = ("GET", "HEAD")
ON_BEHALF_OF = b"x-llamarig-on-behalf-of"  # (work/api_client.py sends it)


class FastPath:
    def __init__(self, app, state, ring: KeyRing, open_routes: list[str], audit: AuditLog | None = None):
        self.app = app
        self.state = state
        self.ring = ring
        self.open_routes = set(open_routes)
        self.audit = audit

    @property
    def open(self) -> set[str]:
        return self.open_routes if self.ring.any else {"health", "ready", "metrics", "client", "operator"}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        group = route_group(path)
        caller, refused = self._caller(scope) if self.ring.known else (NO_KEYS, None)
        scope[CALLER] = caller
        if self.audit is not None and group == "operator" and scope["method"] not in READS:
            send = self._audited(scope, send, caller)
        if caller is None and group not in self.open_routes and group != "console":
            response = self._refusal(group, refused)
        elif group == "operator" and caller is not None and caller.scope != "operator":
            response = self._refusal(group, None)
        elif scope["method"] == "POST" and path in openai_routes.ROUTED:
            caller, refused = self._on_behalf(scope, caller or NO_KEYS)
            response = self._refusal("client", refused) if refused else \
                await openai_routes.routed(self.state, scope, receive, caller)
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def _caller(self, scope) -> tuple[NamedKey | None, NamedKey | None]:
        """(the key's owner, or None; a known key refused now: revoked or expired). The console's
        cookie stands for the key on the admin routes' reads only."""
        sent = bearer(scope)
        if sent is None and scope["method"] in READS and scope["path"].startswith("/admin/"):
            sent = console_key(scope)
        key = self.ring.identify(sent) if sent else None
        if key is None:
            return None, None
        now = time.time()
        if (key.revoked_at is not None or key.expires_at is not None) and self.ring.refusal(key, now):
            return None, key
        self.ring.last_used[key.name] = now
        return key, None

    def _on_behalf(self, scope, caller: NamedKey) -> tuple[NamedKey, NamedKey | None]:
        """A plan's llm task, sent by a worker with its own key, counts against the key that
        submitted the plan (x-llamarig-on-behalf-of), if that key exists: its usage and its limits;
        refused if it is revoked or expired. (caller, refused key or None)."""
        if caller.name not in WORKERS:
            return caller, None
        for name, value in scope["headers"]:
            if name == ON_BEHALF_OF:
                key = self.ring.by_name.get(value.decode("latin-1"))
                if key is None:
                    return caller, None
                return (caller, key) if self.ring.refusal(key, time.time()) else (key, None)
        return caller, None

    def _audited(self, scope, send, caller: NamedKey | None):
        """`send`, noting the status; the line is written when the answer has gone."""
        audit, route, status = self.audit, f"{scope['method']} {scope['path']}", []

        async def noting(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                audit.write(caller.name if caller else "(unknown)", route, target_of(scope["path"]), str(status[0]))
        return noting

    def _refusal(self, group: str, refused: NamedKey | None):
        self.state.metrics.auth_failed(group)
        if refused is not None:
            why = self.ring.refusal(refused, time.time())
            self.state.metrics.key_refused(refused.name, why)
            return error_response(401, "invalid_api_key", f"the key {refused.name!r} is {why}; ask the rig's operator "
                                  "for a new one (llamarig keys add)", headers={"WWW-Authenticate": "Bearer"})
        env = self.state.rig.api.keys.operator_env
        if group != "operator":
            how = "this route needs a client key"
        elif self.ring.legacy.operator or any(k.scope == "operator" for k in self.ring.known.values()):
            how = f"this route needs an operator key (llamarig keys add NAME --scope operator, api.keys.operator_file " \
                  f"or ${env})"
        else:
            how = f"no operator key is set, so operator routes are closed: set api.keys.operator_file or ${env}, " \
                  "or add one (llamarig keys add NAME --scope operator)"
        return error_response(401, "invalid_api_key", f"{how}, sent as 'Authorization: Bearer KEY'",
                              headers={"WWW-Authenticate": "Bearer"})
