"""Limits on what a client sends, enforced before anything is buffered: a body over its cap is
refused (413) as soon as its declared length or its bytes so far pass the cap, without reading
the rest, and the connection is closed; a body that trickles is cut off (408)."""
from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from starlette.responses import JSONResponse

from llamarig.shared.api_errors import error_response
from llamarig.shared.errors import LlamarigError

MIB = 1024 * 1024
CLOSE = {"Connection": "close"}  # uvicorn closes the connection after an answer that says so
BODY_ARRIVED = "llamarig.body_arrived"  # scope key (guarded_http sets it): the body was parsed whole before the app ran


class BodyRefused(LlamarigError):
    def __init__(self, status: int, code: str, reason: str):
        super().__init__(code, reason)
        self.status = status

    def response(self) -> JSONResponse:
        response = error_response(self.status, self.code, self.reason)
        response.headers.update(CLOSE)
        return response


LIMIT_OF = {"body": "api.max_body_mib", "audio upload": "whisper.max_audio_mib",
            "plan body": "Temporal's payload limit: split the plan, or put long commands in script files"}


def _too_large(cap: int, what: str) -> BodyRefused:
    return BodyRefused(413, "body_too_large", f"the {what} is over its limit of {cap / MIB:g} MiB "
                       f"({LIMIT_OF.get(what, 'fixed')})")


def check_declared(scope: dict, cap: int, what: str = "body") -> None:
    """Refuse a Content-Length over the cap before reading anything."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise BodyRefused(400, "bad_content_length", "Content-Length must be a whole number of bytes")
            if int(value) > cap:
                raise _too_large(cap, what)


def parse_json(body: bytes, decode=json.loads):
    """JSON in UTF-8; a body nested deeper than the parser goes (RecursionError) is as invalid
    as any other, a 400 and never a 500."""
    try:
        return decode(body.decode())
    except (ValueError, RecursionError) as e:
        deep = isinstance(e, RecursionError)
        raise BodyRefused(400, "invalid_json", "the body must be JSON in UTF-8" +
                          (", nested less deep (it goes past the parser's limit of about 1000 levels)" if deep
                           else "")) from None


async def read_json(request, cap: int, timeout_s: float, what: str):
    """An admin route's JSON body: its cap checked before buffering (declared length, then the
    bytes so far), its time bounded, then parsed (parse_json)."""
    check_declared(request.scope, cap, what)
    return parse_json(await read_body(request.receive, cap, timeout_s, what, request.scope.get(BODY_ARRIVED, False)))


def _timed_out(timeout_s: float, what: str) -> BodyRefused:
    return BodyRefused(408, "body_timeout", f"the {what} did not arrive within {timeout_s:g} s (api.body_timeout_s)")


async def _next(receive, timeout_s: float) -> dict:
    try:
        async with asyncio.timeout(timeout_s):
            return await receive()
    except TimeoutError:
        raise _timed_out(timeout_s, "next piece of the upload") from None


async def read_body(receive, cap: int, timeout_s: float, what: str = "body", arrived: bool = False) -> bytes:
    """The whole body, which must arrive within timeout_s and stay within cap bytes. `arrived`:
    the server parsed it whole already (scope[BODY_ARRIVED]), so it is read without a timer
    (measured: the timer was a tenth of a 1-token request's CPU, a getpid(2) per
    get_running_loop on Python 3.11)."""
    if arrived:
        return await _gather(receive, cap, what)
    try:
        async with asyncio.timeout(timeout_s):
            return await _gather(receive, cap, what)
    except TimeoutError:
        raise _timed_out(timeout_s, what) from None


async def _gather(receive, cap: int, what: str) -> bytes:
    pieces, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyRefused(400, "client_gone", "the client closed the connection mid-body")
        piece = message.get("body", b"")
        size += len(piece)
        if size > cap:
            raise _too_large(cap, what)
        if not message.get("more_body"):
            if not pieces:
                return piece  # (the usual case: one piece, not copied)
            pieces.append(piece)
            return b"".join(pieces)
        pieces.append(piece)


async def stream_body(receive, cap: int, gap_s: float) -> AsyncIterator[bytes]:
    """The body piece by piece as it arrives (an upload passed on without buffering): at most
    gap_s between pieces and cap bytes in all."""
    total = 0
    while True:
        message = await _next(receive, gap_s)
        if message["type"] == "http.disconnect":
            raise BodyRefused(400, "client_gone", "the client closed the connection mid-upload")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > cap:
            raise _too_large(cap, "audio upload")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return
