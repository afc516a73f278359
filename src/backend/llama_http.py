"""HTTP calls to the servers themselves: readiness probe, one-token deep probe.

Probes go straight to the server, never through the routing path, so they never count as
activity (idle timers and request metrics ignore them). They use the loopback client the proxy
uses (backend/upstream.py: httptools, nothing as heavy to import as httpx), with a pool of
their own and one connection per probe, so that a hung server's probe never waits behind a
request nor leaves a connection to be reused.
"""
from __future__ import annotations

import asyncio
import json

from llamarig.backend.upstream import Upstream

JSON = [(b"content-type", b"application/json")]


async def status_of(upstream: Upstream, port: int, method: str, path: str, body: bytes, timeout: float) -> int:
    """The HTTP status the server on `port` answers; raises TimeoutError or another OSError."""
    async with asyncio.timeout(timeout):
        answer = await upstream.request(method, port, path, JSON if body else [], body, close=True)
        try:
            await answer.read()
        finally:
            answer.close()
    return answer.status


class ServerHttp:
    def __init__(self, upstream: Upstream | None = None):
        self.upstream = upstream or Upstream()

    async def ready(self, port: int, path: str, timeout: float) -> tuple[bool, str]:
        """(answered 200, detail)."""
        try:
            status = await status_of(self.upstream, port, "GET", path, b"", timeout)
        except TimeoutError:
            return False, f"{path} did not answer within {timeout:g} s"
        except OSError as e:
            return False, f"{path}: {type(e).__name__} {e}".strip()
        if status == 200:
            return True, "ok"
        return False, f"{path} answered {status}"

    async def generates(self, port: int, timeout: float) -> tuple[bool, str]:
        """A one-token completion: catches a server that answers /health but cannot generate."""
        body = json.dumps({"prompt": "a", "max_tokens": 1, "temperature": 0}).encode()
        try:
            status = await status_of(self.upstream, port, "POST", "/v1/completions", body, timeout)
        except TimeoutError:
            return False, f"deep probe: no answer within {timeout:g} s"
        except OSError as e:
            return False, f"deep probe: {type(e).__name__} {e}".strip()
        if status != 200:
            return False, f"deep probe answered {status}"
        return True, "ok"
