"""HTTP calls to the servers themselves: readiness probe, one-token deep probe.

Probes go straight to the server, never through the routing path, so they never count as
activity (idle timers and request metrics ignore them).
"""
from __future__ import annotations

import httpx


class ServerHttp:
    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def ready(self, port: int, path: str, timeout: float) -> tuple[bool, str]:
        """(answered 200, detail)."""
        try:
            r = await self.client.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
        except httpx.TimeoutException:
            return False, f"{path} did not answer within {timeout:g} s"
        except httpx.HTTPError as e:
            return False, f"{path}: {type(e).__name__} {e}".strip()
        if r.status_code == 200:
            return True, "ok"
        return False, f"{path} answered {r.status_code}"

    async def generates(self, port: int, timeout: float) -> tuple[bool, str]:
        """A one-token completion: catches a server that answers /health but cannot generate."""
        body = {"prompt": "a", "max_tokens": 1, "temperature": 0}
        try:
            r = await self.client.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=timeout)
        except httpx.HTTPError as e:
            return False, f"deep probe: {type(e).__name__} {e}".strip()
        if r.status_code != 200:
            return False, f"deep probe answered {r.status_code}"
        return True, "ok"
