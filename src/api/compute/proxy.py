"""Pass a request through to a server and its answer back as it arrives.

The request body is forwarded as the bytes received (never re-serialised) and the answer is
streamed chunk by chunk (never buffered), so SSE streams reach the client token by token.
Every chunk marks progress on the lease; the lease is released when the answer ends or the
client goes away. The client to the servers is upstream.py (pooled keep-alive connections,
httptools' C parser).
"""
from __future__ import annotations

import asyncio
import collections
import re
import time
from typing import Callable, NamedTuple

from starlette.responses import Response

from llamarig.api.compute.limits import BodyRefused
from llamarig.backend.upstream import Answer, Upstream
from llamarig.backend.lifecycle.actor import Lease
from llamarig.shared.api_errors import error_response

# Not passed on. `expect`: uvicorn already answered the client's 100-continue and the body is
# here; passed on, the server would send an interim 100 of its own.
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
              b"proxy-authorization", b"proxy-authenticate", b"host", b"content-length", b"authorization",
              b"expect"}


def _passed(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The end-to-end headers of a request (ASGI's) or an answer (upstream's); both lower case."""
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP]


# llama-cpp-python answers 500 when the prompt does not fit the context (llama-server: 400); only
# the engine's tokenizer knows the prompt's length, so its refusal is answered 400 like llama-server's.
CONTEXT_FULL = re.compile(rb"exceed context window|llama_decode returned 1")

# What the server reports at the end of an answer. Completion: usage.completion_tokens (JSON
# answers, llama-server's last completion event) or timings.predicted_n (llama-server's last chat
# event). Prompt: usage.prompt_tokens, or timings' cache_n + prompt_n (the prompt's tokens taken
# from the cache and those computed: llama-server's chat stream reports no usage). llama-cpp-python's
# streams report neither: their completion is counted by events and their prompt is not known (0).
COUNT = re.compile(rb'"\w+"\s*:\s*(\d+)')
TAIL = 4096  # bytes kept from the end of an answer, where the counts are


class Usage(NamedTuple):
    prompt: int = 0
    completion: int = 0
    audio_s: float = 0.0


NO_USAGE = Usage()


def _last(data: bytes, start: int, name: bytes, other: bytes = b"") -> int | None:
    """The number after the last of `name` or `other` (quoted JSON keys) in data[start:], or None."""
    at = data.rfind(name, start)
    if other:
        at = max(at, data.rfind(other, start))
    found = COUNT.match(data, at) if at >= 0 else None
    return int(found.group(1)) if found else None


def reported_usage(data: bytes) -> tuple[int | None, int]:
    """(completion or None, prompt) as the server reports them in an answer's tail: the last
    mention, found from the end (a regex over the tail cost ten times as much, measured)."""
    start = max(0, len(data) - TAIL)
    completion = _last(data, start, b'"completion_tokens"', b'"predicted_n"')
    if completion is None:
        return None, 0
    prompt = _last(data, start, b'"prompt_tokens"')
    if prompt is None:
        prompt = (_last(data, start, b'"prompt_n"') or 0) + (_last(data, start, b'"cache_n"') or 0)
    return completion, prompt


def whole_usage(body: bytes, audio_s: float = 0.0) -> Usage:
    completion, prompt = reported_usage(body)
    return Usage(prompt, completion or 0, audio_s)


class TokenCount:
    """Tokens generated in a stream, read as it passes, without parsing it: the count the
    server reports at the end, else the number of `data:` events, since llama.cpp sends about
    one token per event."""

    MARK = b"data: "

    def __init__(self):
        self.events = 0
        self.recent: collections.deque[bytes] = collections.deque()  # the last chunks, TAIL bytes or more
        self.held = 0
        self.edge = b""  # the last len(MARK) - 1 bytes: a marker may start there and end in the next chunk

    def feed(self, chunk: bytes) -> None:
        # Constant work per chunk (a stream is many small ones): the new bytes and the edge
        # before them are searched, and the tail is joined only when the count is read.
        joined = self.edge + chunk
        self.events += joined.count(self.MARK)
        self.edge = joined[1 - len(self.MARK):]
        self.recent.append(chunk)
        self.held += len(chunk)
        while self.held - len(self.recent[0]) >= TAIL:
            self.held -= len(self.recent.popleft())

    @property
    def usage(self) -> Usage:
        completion, prompt = reported_usage(b"".join(self.recent)[-TAIL:])
        if completion is None:
            return Usage(0, max(0, self.events - 1))  # the last event is [DONE]
        return Usage(prompt, completion)


class Proxy:
    def __init__(self, upstream: Upstream):
        self.upstream = upstream

    async def forward(self, scope: dict, port: int, path: str, body, lease: Lease,
                      on_done: Callable[[int, float | None, Usage], None], stream: bool = False):
        """Send `body` (bytes or an async byte iterator) to the server on `port`; `stream`: the
        request asks for a stream. on_done(status, first_byte_seconds, usage) is called once
        when the answer has ended."""
        started = time.perf_counter()
        query = scope["query_string"]
        target = f"{path}?{query.decode('latin-1')}" if query else path
        try:
            # llama-server closes the connection after a streamed answer although its headers
            # offer keep-alive: a stream's connection is not kept for the next request.
            answer = await self.upstream.request(scope["method"], port, target, _passed(scope["headers"]),
                                                 body, close=stream)
        except BodyRefused as e:  # the client's upload passed its cap or stalled: not the server's fault
            lease.release()
            on_done(e.status, None, NO_USAGE)
            return e.response()
        except OSError as e:  # refused, timed out, closed before answering
            lease.unreachable()
            lease.release()
            on_done(503, None, NO_USAGE)
            return error_response(503, "upstream_unreachable", f"the model server on port {port} did not "
                                  f"answer ({type(e).__name__}: {e}); it is being checked", retry_after=5)
        if not answer.header(b"content-type").startswith("text/event-stream"):
            return await self._whole(answer, started, lease, on_done)
        count = TokenCount()
        return Relay(answer, count, lease, lambda first: on_done(answer.status, first, count.usage), started)

    @staticmethod
    async def _whole(answer: Answer, started: float, lease: Lease, on_done):
        """A JSON answer is complete when the server sends it: pass it on in one piece, which
        spares the per-request task group a streamed response needs to watch for a disconnect."""
        try:
            body = await answer.read()
        except OSError as e:
            lease.unreachable()
            on_done(502, None, NO_USAGE)
            return error_response(502, "upstream_broken", f"the model server broke off its answer "
                                  f"({type(e).__name__})")
        finally:
            answer.close()
            lease.release()
        if answer.status == 500 and CONTEXT_FULL.search(body):
            on_done(400, time.perf_counter() - started, NO_USAGE)
            return error_response(400, "context_length_exceeded", "the prompt and max_tokens do not fit the model's "
                                  "context: shorten the prompt or lower max_tokens (the engine said: "
                                  f"{body[:200].decode(errors='replace')})", "messages")
        first = time.perf_counter() - started
        # Counted once the answer has gone: the client does not wait for the bookkeeping.
        return Whole(answer.status, _passed(answer.headers) + [(b"content-length", b"%d" % len(body))], body,
                     lambda: on_done(answer.status, first, whole_usage(body, _audio_seconds(answer))))


def _audio_seconds(answer: Answer) -> float:
    """Whisper's x-audio-seconds: the length of what it transcribed (0: not a transcription)."""
    try:
        return float(answer.header(b"x-audio-seconds") or 0)
    except ValueError:
        return 0.0


class Whole(Response):
    """A complete answer, its headers passed as they came: a Response (FastAPI's routes return
    it too) without Response's header building; `after` runs once the body is sent."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                 after: Callable[[], None] | None = None):
        self.status_code, self.raw_headers, self.body, self.background = status, headers, body, None
        self.after = after

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.body})
        finally:
            if self.after is not None:
                self.after()


class Relay(Response):
    """An SSE answer passed to the client chunk by chunk, as an ASGI response.

    Leaner than Starlette's StreamingResponse, which wraps every stream in a task group (the
    largest per-stream cost under load, measured). A plain task watches for the client going
    away, since uvicorn drops writes to a gone client silently: it closes the server's answer,
    which ends the relay and tells the server to stop generating.
    """

    def __init__(self, answer: Answer, count: TokenCount, lease: Lease,
                 done: Callable[[float | None], None], started: float):
        self.answer, self.count, self.lease, self.done, self.started = answer, count, lease, done, started
        self.background = None  # a Response attribute FastAPI sets

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(self._watch(receive))
        first, last = None, False
        try:
            await send({"type": "http.response.start", "status": self.answer.status,
                        "headers": _passed(self.answer.headers)})
            async for chunk in self.answer.chunks():
                if first is None:
                    first = time.perf_counter() - self.started
                self.lease.progress()
                self.count.feed(chunk)
                # The server's last event and its end usually arrive together: sent as the last
                # body, the end goes out in the same write (one write fewer per stream).
                last = self.answer.drained()
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if not last and not watcher.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
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
