"""The compute API's client to the model servers (api/compute/upstream.py), against real
loopback servers that answer in the ways llama-server, llama-cpp-python and Whisper do, and in
the ways a dying server does."""
from __future__ import annotations

import asyncio

import pytest

from helpers import free_port
from loopback import Server, writes
from llamarig.backend.upstream import HIGH_WATER, Upstream, UpstreamError

JSON_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _posts(upstream: Upstream, port: int, n: int) -> list[tuple[int, bytes]]:
    """n requests one after the other: each answer's status and body."""
    got = []
    for _ in range(n):
        answer = await upstream.request("POST", port, "/", [], b"{}")
        got.append((answer.status, await answer.read()))
    return got


_json = writes(JSON_ANSWER)


async def test_keep_alive_connections_are_reused_and_bodies_pass_unchanged():
    upstream = Upstream()
    async with Server(_json) as server:
        for _ in range(3):
            answer = await upstream.request("POST", server.port, "/v1/completions?x=1",
                                            [(b"content-type", b"application/json")], b'{"model": "m"}')
            assert (answer.status, await answer.read(), answer.header(b"content-type")) == (
                200, b"{}", "application/json")
        assert server.connections == 1
        head, body = server.requests[0]
        assert head.startswith(b"POST /v1/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"content-length: 14\r\n" in head and body == b'{"model": "m"}'
    upstream.close()


async def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error():
    once_then_close = writes(JSON_ANSWER, close=True)  # offers keep-alive, then closes, as llama-server does after 100

    upstream = Upstream()
    async with Server(once_then_close) as server:
        assert await _posts(upstream, server.port, 3) == [(200, b"{}")] * 3
        assert server.connections == 3
    upstream.close()


async def test_connection_close_answers_are_not_pooled_and_close_requests_say_so():
    closing = writes(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")

    upstream = Upstream()
    async with Server(closing) as server:
        await (await upstream.request("GET", server.port, "/a", [], b"")).read()
        await (await upstream.request("GET", server.port, "/b", [], b"", close=True)).read()
        assert server.connections == 2
        assert b"connection: close\r\n" in server.requests[1][0]
    upstream.close()


async def test_a_chunked_stream_arrives_chunk_by_chunk():
    release = asyncio.Event()

    async def sse(head, body, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"b\r\ndata: one\n\n\r\n")
        await writer.drain()
        await release.wait()  # the second event is sent only once the first was received
        writer.write(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")
        await writer.drain()

    upstream = Upstream()
    async with Server(sse) as server:
        answer = await upstream.request("POST", server.port, "/", [], b"{}")
        got = []
        async for chunk in answer.chunks():
            got.append(chunk)
            release.set()
        assert got == [b"data: one\n\n", b"data: two\n\n"]
    upstream.close()


async def test_a_server_that_dies_mid_answer_or_before_it_is_an_oserror():
    half = writes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial", close=True)
    silent_close = writes(b"", close=True)

    upstream = Upstream()
    async with Server(half) as server:
        answer = await upstream.request("POST", server.port, "/", [], b"{}")
        with pytest.raises(UpstreamError, match="mid-answer"):
            await answer.read()
    async with Server(silent_close) as server:
        with pytest.raises(UpstreamError, match="before answering"):
            await upstream.request("POST", server.port, "/", [], b"{}")
    with pytest.raises(ConnectionRefusedError):
        await upstream.request("POST", free_port(), "/", [], b"{}")
    upstream.close()


async def test_a_streamed_upload_is_sent_chunked():
    async def parts():
        for part in (b"--boundary\r\n", b"", b"audio bytes" * 1000, b"\r\n--boundary--\r\n"):
            yield part

    upstream = Upstream()
    async with Server(_json) as server:
        answer = await upstream.request("POST", server.port, "/v1/audio/transcriptions",
                                        [(b"content-type", b"multipart/form-data; boundary=boundary")], parts())
        assert await answer.read() == b"{}"
        head, body = server.requests[0]
        assert b"transfer-encoding: chunked\r\n" in head
        assert body == b"--boundary\r\n" + b"audio bytes" * 1000 + b"\r\n--boundary--\r\n"
    upstream.close()


async def test_a_slow_reader_holds_the_server_back_instead_of_buffering_everything():
    size, chunk = 16 * HIGH_WATER, 64 * 1024

    async def big(head, body, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // chunk):
            writer.write(b"x" * chunk)
            await writer.drain()

    upstream = Upstream()
    async with Server(big) as server:
        answer = await upstream.request("GET", server.port, "/", [], b"")
        received, most_held = 0, 0
        async for part in answer.chunks():
            received += len(part)
            most_held = max(most_held, answer.buffered)
            await asyncio.sleep(0.001)  # a client slower than loopback
        assert received == size
        # Reading stops above HIGH_WATER; what was already in flight still lands.
        assert most_held < 3 * HIGH_WATER
    upstream.close()


async def test_a_caller_that_goes_away_closes_the_connection():
    hung_up = asyncio.Event()

    async def generate_until_hung_up(head, body, reader, writer):
        await reader.read()  # a long generation: it ends when the client hangs up
        hung_up.set()
        return "close"

    upstream = Upstream()
    async with Server(generate_until_hung_up) as server:
        task = asyncio.ensure_future(upstream.request("POST", server.port, "/", [], b"{}"))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.wait_for(hung_up.wait(), 5)
    upstream.close()


async def test_an_interim_100_continue_is_not_taken_for_the_answer():
    continue_first = writes(b"HTTP/1.1 100 Continue\r\n\r\n" + JSON_ANSWER)

    upstream = Upstream()
    async with Server(continue_first) as server:
        # twice: the connection is still in step for the next request
        assert await _posts(upstream, server.port, 2) == [(200, b"{}")] * 2
        assert server.connections == 1
    upstream.close()


async def test_a_body_without_a_length_ends_when_the_server_closes():
    until_close = writes(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", close=True)

    upstream = Upstream()
    async with Server(until_close) as server:
        answer = await upstream.request("GET", server.port, "/metrics", [], b"")
        assert await answer.read() == b"all of it"
        assert not upstream.idle[server.port]  # a closed connection is not pooled
    upstream.close()


async def test_an_upload_that_fails_midway_leaves_no_error_unretrieved(caplog):
    """The client's body failing mid-upload aborts the connection; the answer's head, which no
    one awaits any more, must not carry the loss into asyncio's 'never retrieved' error log."""
    import gc

    async def parts():
        yield b"first part"
        raise ConnectionResetError("the client went away mid-upload")

    upstream = Upstream()
    async with Server(_json) as server:
        with pytest.raises(ConnectionResetError):
            await upstream.request("POST", server.port, "/v1/audio/transcriptions", [], parts())
        conn_lost = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(conn_lost.set_result, None)  # after the abort's connection_lost
        await conn_lost
    gc.collect()
    assert "never retrieved" not in caplog.text, caplog.text
    upstream.close()
