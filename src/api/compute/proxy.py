"""Pass a request through to a server and its answer back as it arrives.

The request body is forwarded as the bytes received (never re-serialised) and the answer is
streamed chunk by chunk (never buffered), so SSE streams reach the client token by token.
Every chunk marks progress on the lease; the lease is released when the answer ends or the
client goes away.
"""
from __future__ import annotations

import re
import time
from typing import AsyncIterator, Callable

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llamarig.backend.lifecycle.actor import Lease
from llamarig.shared.api_errors import error_response

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length", "authorization"}


def _headers(headers: httpx.Headers | dict, drop_length: bool = True) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP or
            (k.lower() == "content-length" and not drop_length)}


# The count the server reports at the end of an answer: usage.completion_tokens (JSON answers,
# llama-server's last completion event), or timings.predicted_n (llama-server's last chat event).
REPORTED = re.compile(rb'"(?:completion_tokens|predicted_n)"\s*:\s*(\d+)')
TAIL = 4096  # bytes kept from the end of an answer, where that count is


class TokenCount:
    """Tokens generated, read from the answer as it passes, without parsing it: the count the
    server reports at the end, else (a stream without one) the number of `data:` events, since
    llama.cpp sends about one token per event."""

    def __init__(self, content_type: str):
        self.stream = content_type.startswith("text/event-stream")
        self.events = 0
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        # Markers split across two chunks are seen once: only those ending in the new bytes count.
        joined = self.tail + chunk
        if self.stream:
            self.events += joined.count(b"data: ") - self.tail.count(b"data: ")
        self.tail = joined[-TAIL:]

    @property
    def tokens(self) -> int:
        found = REPORTED.findall(self.tail)
        if found:
            return int(found[-1])
        return max(0, self.events - 1) if self.stream else 0  # the last event is [DONE]


class Proxy:
    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def forward(self, request: Request, port: int, path: str, body, lease: Lease,
                      on_done: Callable[[int, float | None, int], None]) -> Response:
        """Send `body` (bytes or an async byte iterator) to the server on `port`.
        on_done(status, first_byte_seconds, tokens) is called once when the answer has ended."""
        started = time.perf_counter()
        upstream = self.client.build_request(request.method, f"http://127.0.0.1:{port}{path}",
                                             headers=_headers(request.headers), content=body,
                                             params=request.query_params)
        try:
            answer = await self.client.send(upstream, stream=True)
        except httpx.HTTPError as e:
            lease.release()
            on_done(503, None, 0)
            return error_response(503, "upstream_unreachable", f"the model server on port {port} did not "
                                  f"answer ({type(e).__name__}); it is being checked", retry_after=5)
        first: list[float] = []
        count = TokenCount(answer.headers.get("content-type", ""))

        async def relay() -> AsyncIterator[bytes]:
            async for chunk in answer.aiter_raw():
                if not first:
                    first.append(time.perf_counter() - started)
                lease.progress()
                count.feed(chunk)
                yield chunk

        async def finish() -> None:
            await answer.aclose()
            lease.release()
            on_done(answer.status_code, first[0] if first else None, count.tokens)

        return StreamingResponse(relay(), status_code=answer.status_code,
                                 headers=_headers(answer.headers, drop_length=False),
                                 background=BackgroundTask(finish))
