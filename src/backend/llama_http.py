"""HTTP calls to the servers themselves: readiness probe, one-token deep probe.

Probes go straight to the server, never through the routing path, so they never count as
activity (idle timers and request metrics ignore them).

A probe only needs the answer's status line, so each is one request on its own loopback
connection over asyncio's streams, without an HTTP client library: importing httpx took 0.12 s
of the compute API's start before its first wave could be planned (measured on the 2-core VM;
bench/RESULTS.md). The request path has its own pooled client (api/compute/upstream.py).
"""
from __future__ import annotations

import asyncio
import json

HOST = "127.0.0.1"


async def status_of(port: int, method: str, path: str, body: bytes, timeout: float) -> int:
    """The HTTP status the server on `port` answers; raises TimeoutError, OSError or ValueError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
            if body:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            line = await reader.readline()
        finally:
            writer.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {line[:60]!r}")
    return int(parts[1])


class ServerHttp:
    async def ready(self, port: int, path: str, timeout: float) -> tuple[bool, str]:
        """(answered 200, detail)."""
        try:
            status = await status_of(port, "GET", path, b"", timeout)
        except TimeoutError:
            return False, f"{path} did not answer within {timeout:g} s"
        except (OSError, ValueError) as e:
            return False, f"{path}: {type(e).__name__} {e}".strip()
        if status == 200:
            return True, "ok"
        return False, f"{path} answered {status}"

    async def generates(self, port: int, timeout: float) -> tuple[bool, str]:
        """A one-token completion: catches a server that answers /health but cannot generate."""
        body = json.dumps({"prompt": "a", "max_tokens": 1, "temperature": 0}).encode()
        try:
            status = await status_of(port, "POST", "/v1/completions", body, timeout)
        except TimeoutError:
            return False, f"deep probe: no answer within {timeout:g} s"
        except (OSError, ValueError) as e:
            return False, f"deep probe: {type(e).__name__} {e}".strip()
        if status != 200:
            return False, f"deep probe answered {status}"
        return True, "ok"
