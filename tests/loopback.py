"""A loopback HTTP server for the client and relay tests: it reads requests (with a length or
chunked) and lets each test write the answers byte for byte, as a model server would."""
from __future__ import annotations

import asyncio


class Server:
    """Reads requests; `answer(request_head, body, reader, writer)` writes each answer."""

    def __init__(self, answer):
        self.answer, self.connections, self.requests = answer, 0, []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await _read_body(reader, head)
                self.requests.append((head, body))
                if await self.answer(head, body, reader, writer) == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # (ValueError: a chunked body cut short)
        writer.close()


def writes(data: bytes, close: bool = False):
    """An answer function that writes `data` as it is to each request, then closes the
    connection if `close`."""
    async def answer(head, body, reader, writer):
        if data:
            writer.write(data)
            await writer.drain()
        return "close" if close else None
    return answer


async def _read_body(reader, head: bytes) -> bytes:
    lines = head.lower().split(b"\r\n")
    if b"transfer-encoding: chunked" in lines:
        body = b""
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
        return body
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), 0)
    return await reader.readexactly(length)
