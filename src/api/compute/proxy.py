"""Pass a request through to a server and its answer back as it arrives.

The request body is forwarded as the bytes received (never re-serialised) and the answer is
streamed chunk by chunk (never buffered), so SSE streams reach the client token by token.
Every chunk marks progress on the lease; the lease is released when the answer ends or the
client goes away. aiohttp's client (C parser, pooled keep-alive connections) carries it: on
the hot path it costs a fraction of httpx's per-request time (see bench/RESULTS.md).
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Callable

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from llamarig.backend.lifecycle.actor import Lease
from llamarig.shared.api_errors import error_response

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length", "authorization"}


def _headers(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def new_session() -> aiohttp.ClientSession:
    # No total or read timeout: a long generation is not an error; the health loop judges servers.
    # Idle connections are dropped before llama-server's own 5 s keep-alive ends, so a request
    # never goes out on a connection the server is closing.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                                 skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))


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
    def __init__(self, session: aiohttp.ClientSession):
        self.session = session

    async def forward(self, request: Request, port: int, path: str, body, lease: Lease,
                      on_done: Callable[[int, float | None, int], None], stream: bool = False) -> Response:
        """Send `body` (bytes or an async byte iterator) to the server on `port`; `stream`: the
        request asks for a stream. on_done(status, first_byte_seconds, tokens) is called once
        when the answer has ended."""
        started = time.perf_counter()
        url = f"http://127.0.0.1:{port}{path}"
        query = request.scope["query_string"]
        if query:
            url += "?" + query.decode("latin-1")
        try:
            answer = await self._send(request, url, body, stream)
        except (aiohttp.ClientError, OSError) as e:
            lease.unreachable()
            lease.release()
            on_done(503, None, 0)
            return error_response(503, "upstream_unreachable", f"the model server on port {port} did not "
                                  f"answer ({type(e).__name__}: {e}); it is being checked", retry_after=5)
        count = TokenCount(answer.headers.get("content-type", ""))
        if not count.stream:
            return await self._whole(answer, started, count, lease, on_done)
        return Relay(answer, count, lease, lambda first: on_done(answer.status, first, count.tokens), started)

    async def _send(self, request: Request, url: str, body, stream: bool):
        headers = _headers(request.headers)
        if stream:
            # llama-server closes the connection after a streamed answer although its headers
            # offer keep-alive; asked to close, aiohttp does not put it back in the pool, where
            # the next request would find it dead.
            headers["Connection"] = "close"
        try:
            return await self.session.request(request.method, url, data=body, headers=headers)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # llama-server closes a keep-alive connection after 100 requests or 5 s idle; a request
            # sent on it just then gets no answer, or cannot be written, and was not read. Once
            # more on a new connection (a refused connection fails again at once).
            if not isinstance(body, bytes):
                raise  # a streamed upload cannot be sent twice
            return await self.session.request(request.method, url, data=body, headers=headers)

    @staticmethod
    async def _whole(answer, started: float, count: TokenCount, lease: Lease, on_done) -> Response:
        """A JSON answer is complete when the server sends it: pass it on in one piece, which
        spares the per-request task group a streamed response needs to watch for a disconnect."""
        try:
            body = await answer.read()
        except (aiohttp.ClientError, OSError) as e:
            lease.unreachable()
            on_done(502, None, 0)
            return error_response(502, "upstream_broken", f"the model server broke off its answer "
                                  f"({type(e).__name__})")
        finally:
            answer.release()
            lease.release()
        count.feed(body)
        on_done(answer.status, time.perf_counter() - started, count.tokens)
        return Response(body, status_code=answer.status, headers=_headers(answer.headers))


class Relay:
    """An SSE answer passed to the client chunk by chunk, as an ASGI response.

    Leaner than Starlette's StreamingResponse, which wraps every stream in a task group (the
    largest per-stream cost under load, measured). A plain task watches for the client going
    away, since uvicorn drops writes to a gone client silently: it closes the server's answer,
    which ends the relay and tells the server to stop generating.
    """

    def __init__(self, answer: aiohttp.ClientResponse, count: TokenCount, lease: Lease,
                 done: Callable[[float | None], None], started: float):
        self.answer, self.count, self.lease, self.done, self.started = answer, count, lease, done, started

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(self._watch(receive))
        first = None
        try:
            await send({"type": "http.response.start", "status": self.answer.status,
                        "headers": [(k.lower().encode(), v.encode()) for k, v in
                                    _headers(self.answer.headers).items()]})
            async for chunk in self.answer.content.iter_any():
                if first is None:
                    first = time.perf_counter() - self.started
                self.lease.progress()
                self.count.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not watcher.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, OSError):
            if not watcher.done():
                self.lease.unreachable()  # the server broke off; the client sees a cut stream
        finally:
            watcher.cancel()
            self.answer.close()
            self.lease.release()
            self.done(first)

    async def _watch(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.answer.close()
