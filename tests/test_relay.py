"""The proxy's SSE relay (api/compute/proxy.py's Relay) against loopback servers that end a
stream as llama-server does (the last event and the end in one write) and as a slower server
may (the end apart): either way the client gets every event and exactly one end."""
from __future__ import annotations

import asyncio

from loopback import Server
from llamarig.api.compute.proxy import Relay, TokenCount
from llamarig.backend.upstream import Upstream

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n")
EVENTS = [b'data: {"choices": [{"text": "x"}]}\n\n', b"data: [DONE]\n\n"]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _together(head, body, reader, writer):
    writer.write(HEAD + _chunk(EVENTS[0]))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(_chunk(EVENTS[1]) + b"0\r\n\r\n")
    await writer.drain()
    return "close"


async def _apart(head, body, reader, writer):
    writer.write(HEAD + _chunk(EVENTS[0]) + _chunk(EVENTS[1]))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return "close"


class _Lease:
    released = 0

    def progress(self): pass
    def unreachable(self): raise AssertionError("the server did not break off")
    def release(self): self.released += 1


async def _relayed(answer_fn) -> tuple[list[dict], _Lease, list]:
    sent, lease, done = [], _Lease(), []

    async def receive():
        await asyncio.sleep(3600)  # the client stays

    async def send(message):
        sent.append(message)

    async with Server(answer_fn) as server:
        answer = await Upstream().request("POST", server.port, "/v1/completions", [], b"{}", close=True)
        relay = Relay(answer, TokenCount(), lease, done.append, 0.0)
        await asyncio.wait_for(relay({"type": "http"}, receive, send), 5)
    return sent, lease, done


def _body_and_ends(sent: list[dict]) -> tuple[bytes, int]:
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    return b"".join(m["body"] for m in bodies), sum(not m.get("more_body") for m in bodies)


async def test_a_stream_whose_end_comes_with_its_last_event_ends_in_that_message():
    sent, lease, done = await _relayed(_together)
    assert _body_and_ends(sent) == (b"".join(EVENTS), 1)
    assert sent[-1]["body"] == EVENTS[1] and not sent[-1]["more_body"]  # no separate empty end
    assert lease.released == 1 and len(done) == 1


async def test_a_stream_whose_end_comes_apart_ends_with_an_empty_message():
    sent, lease, done = await _relayed(_apart)
    assert _body_and_ends(sent) == (b"".join(EVENTS), 1)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert lease.released == 1 and len(done) == 1
