"""The probes (backend/llama_http.py) against real loopback sockets: what each kind of answer,
silence or refusal turns into."""
from __future__ import annotations

import asyncio
import json

from helpers import free_port
from llamarig.backend.llama_http import ServerHttp


async def _serve(answer: bytes | None, seen: list):
    """A server that reads one request and sends `answer` (None: never answers)."""
    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        seen.append((head, await reader.readexactly(length)))
        if answer is None:
            await reader.read()  # silent until the client gives up and closes
            writer.close()
            return
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_ready_reads_the_status_of_the_answer():
    http, seen = ServerHttp(), []
    for answer, expected in ((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", (True, "ok")),
                             (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", (False, "/health answered 503"))):
        server, port = await _serve(answer, seen)
        async with server:
            assert await http.ready(port, "/health", 2) == expected
    assert seen[0][0].startswith(b"GET /health HTTP/1.1\r\n")


async def test_silence_refusal_and_garbage_are_failures_with_a_reason():
    http = ServerHttp()
    server, port = await _serve(None, [])
    async with server:
        assert await http.ready(port, "/health", 0.3) == (False, "/health did not answer within 0.3 s")
    ok, detail = await http.ready(free_port(), "/health", 2)
    assert not ok and detail.startswith("/health: ConnectionRefusedError")
    server, port = await _serve(b"SSH-2.0-OpenSSH\r\n", [])
    async with server:
        ok, detail = await http.ready(port, "/health", 2)
    assert not ok and "UpstreamError" in detail and "malformed answer" in detail


async def test_deep_probe_posts_a_one_token_completion():
    http, seen = ServerHttp(), []
    server, port = await _serve(b"HTTP/1.1 200 OK\r\n\r\n{}", seen)
    async with server:
        assert await http.generates(port, 2) == (True, "ok")
    head, body = seen[0]
    assert head.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert json.loads(body) == {"prompt": "a", "max_tokens": 1, "temperature": 0}
    server, port = await _serve(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", [])
    async with server:
        assert await http.generates(port, 2) == (False, "deep probe answered 500")
