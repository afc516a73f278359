"""The compute API's HTTP/1.1 client to the model servers on loopback: pooled keep-alive
connections, an answer's head as soon as it arrives, its body whole or chunk by chunk.

httptools (the C parser under uvicorn) parses the answers; the rest is a small asyncio
Protocol. It replaced aiohttp on the request path: a bare uvicorn proxy adds 0.1 to 0.25 ms
less at p50 with this client than with aiohttp (bench/bare_proxy.py, measured side by side in
each run of bench/RESULTS.md). It speaks only what the servers behind llamarig need: no HEAD
requests, no upgrades, no TLS; interim 1xx answers are skipped.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import AsyncIterator

import httptools

HIGH_WATER = 1 << 20  # bytes of an answer held unread before the server is made to wait
IDLE_S = 4.0          # an idle connection is dropped before llama-server's own 5 s keep-alive ends
CONNECT_S = 5.0       # a loopback connect that takes longer means the server is stuck


class UpstreamError(ConnectionError):
    """The server closed the connection or sent something that is not HTTP; an OSError, so
    callers treat it like a refused connection."""


class Answer:
    """A server's answer: status and headers now, the body as it arrives."""

    def __init__(self, conn: _Connection, status: int, headers: list[tuple[bytes, bytes]]):
        self.conn, self.status, self.headers = conn, status, headers
        self.chunks_in: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.ended = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future | None = None

    def ends_at_close(self) -> bool:
        """An answer with neither a Content-Length nor chunks: its body runs until the server
        closes the connection (HTTP/1.1, section 6.3 of RFC 9112)."""
        names = {k for k, _ in self.headers}
        return b"content-length" not in names and self.header(b"transfer-encoding").lower() != "chunked"

    def header(self, name: bytes) -> str:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return ""

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self.chunks_in:
                chunk = self.chunks_in.popleft()
                self.buffered -= len(chunk)
                self.conn.resume_if_drained(self.buffered)
                yield chunk
            if self.error:
                raise self.error
            if self.ended:
                return
            self.waiter = self.conn.loop.create_future()
            await self.waiter

    def drained(self) -> bool:
        """The server has ended the answer and every byte of it has been taken."""
        return self.ended and not self.chunks_in and self.error is None

    def close(self) -> None:
        """Stop reading: an unfinished answer's connection is closed, which tells the server to stop."""
        if not self.ended:
            self.conn.abort()

    # ---- fed by the connection
    def feed(self, chunk: bytes) -> None:
        self.chunks_in.append(chunk)
        self.buffered += len(chunk)
        self.conn.hold_if_full(self.buffered)
        self._wake()

    def end(self, error: Exception | None = None) -> None:
        self.ended, self.error = True, self.error or error
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One connection, one request at a time; httptools calls the on_* methods."""

    def __init__(self, pool: Upstream, port: int):
        self.pool, self.port = pool, port
        # Kept: asyncio.get_running_loop() makes a getpid() syscall each time on Python 3.11.
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.head: asyncio.Future | None = None
        self.answer: Answer | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep = True
        self.paused = False
        self.writable: asyncio.Future | None = None

    # ---- asyncio
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._lost(UpstreamError(f"the server on port {self.port} sent a malformed answer ({e})"))
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.answer is not None and exc is None and self.answer.ends_at_close():
            self.on_message_complete()  # a body without a length ends when the connection does
        self._lost(UpstreamError(f"the server on port {self.port} closed the connection "
                                 f"{'before answering' if self.head and not self.head.done() else 'mid-answer'}"))

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    # ---- httptools
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # interim (100 Continue, 103 Early Hints): the answer follows
        self.answer = Answer(self, status, self.headers)
        if self.head and not self.head.done():
            self.head.set_result(self.answer)

    def on_body(self, body: bytes) -> None:
        self.answer.feed(body)

    def on_message_complete(self) -> None:
        if self.answer is None:
            return  # the end of an interim answer
        answer, self.answer = self.answer, None
        answer.end()
        if self.keep and not self.closed and self.parser.should_keep_alive():
            self.pool.put_back(self)
        else:
            self.abort()

    # ---- used by the pool and the answer
    async def send(self, head: bytes, body) -> Answer:
        self.head = self.loop.create_future()
        self.transport.write(head + body if isinstance(body, bytes) else head)
        try:
            if not isinstance(body, bytes):
                await self._send_chunked(body)
            return await self.head
        except BaseException:
            # The caller went away, or the body it was sending failed: the server must not go
            # on with a request cut short, nor the connection be used again. No one will await
            # the head: cancelled, the connection's loss is not set on it to be logged unretrieved.
            self.head.cancel()
            self.abort()
            raise

    async def _send_chunked(self, body: AsyncIterator[bytes]) -> None:
        async for chunk in body:
            if chunk:
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if self.writable:
                await self.writable
            if self.closed:
                return
        self.transport.write(b"0\r\n\r\n")

    def hold_if_full(self, buffered: int) -> None:
        if buffered > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_if_drained(self, buffered: int) -> None:
        if self.paused and buffered < HIGH_WATER // 2 and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def _lost(self, error: Exception) -> None:
        self.closed = True
        if self.head and not self.head.done():
            self.head.set_exception(error)
        if self.answer is not None:
            self.answer.end(error)
        self.resume_writing()


class Upstream:
    """Connections to the servers on 127.0.0.1, pooled per port."""

    def __init__(self):
        self.idle: dict[int, list[_Connection]] = collections.defaultdict(list)

    async def request(self, method: str, port: int, target: str, headers: list[tuple[bytes, bytes]], body,
                      close: bool = False) -> Answer:
        """Send a request; return once the answer's head has arrived. `body` is bytes or an async
        iterator of bytes (sent chunked). `close`: do not reuse the connection afterwards.
        Raises OSError (UpstreamError, ConnectionRefusedError, TimeoutError...)."""
        head = _head(method, port, target, headers, body, close)
        conn = self._idle(port)
        if conn is not None:
            try:
                return await self._send(conn, head, body, close)
            except UpstreamError:
                # The server closed this pooled connection (llama-server does after 100 requests
                # or 5 s idle) just as the request went out, so it was not read: once more on a
                # new connection, for a body that can be sent twice.
                if not isinstance(body, bytes):
                    raise
        return await self._send(await self._connect(port), head, body, close)

    async def _send(self, conn: _Connection, head: bytes, body, close: bool) -> Answer:
        conn.keep = not close
        return await conn.send(head, body)

    def _idle(self, port: int) -> _Connection | None:
        pool, now = self.idle[port], time.monotonic()
        while pool:
            conn = pool.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.abort()
        return None

    async def _connect(self, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_S):
            _, conn = await loop.create_connection(lambda: _Connection(self, port), "127.0.0.1", port)
        return conn

    def put_back(self, conn: _Connection) -> None:
        conn.resume_if_drained(0)  # the answer is all read from the socket; its reader may lag
        conn.idle_since = time.monotonic()
        conn.head = None
        self.idle[conn.port].append(conn)

    def close(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.abort()
        self.idle.clear()


def _head(method: str, port: int, target: str, headers: list[tuple[bytes, bytes]], body, close: bool) -> bytes:
    parts = [f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode("latin-1")]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"content-length: %d\r\n" % len(body) if isinstance(body, bytes) else b"transfer-encoding: chunked\r\n")
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(parts)
