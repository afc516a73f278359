"""A bare proxy, the reference the compute API's overhead is read against: uvicorn (the same
settings as the compute API) and one upstream client, with nothing else: no routing by model,
no lease, no metrics. Run by proxy.py for the 1-token latency only.

    python bench/bare_proxy.py UPSTREAM_PORT PORT upstream|aiohttp
"""
from __future__ import annotations

import sys

import uvicorn
import uvloop

UPSTREAM, PORT, CLIENT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _upstream_client():
    from llamarig.backend.upstream import Upstream

    upstream = Upstream()

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        answer = await upstream.request("POST", UPSTREAM, path, [(b"content-type", b"application/json")], body)
        return answer.status, await answer.read()
    return post


def _aiohttp_client():
    import aiohttp

    session = None

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        nonlocal session
        if session is None:  # made on the running loop
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
                                            skip_auto_headers=("User-Agent", "Accept-Encoding"))
        async with session.post(f"http://127.0.0.1:{UPSTREAM}{path}", data=body,
                                headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.read()
    return post


POST = _upstream_client() if CLIENT == "upstream" else _aiohttp_client()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # no lifespan
    status, data = await POST(scope["path"], await _body(receive))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
    await send({"type": "http.response.body", "body": data})


async def main():
    config = uvicorn.Config(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False, loop="none",
                            http="httptools", ws="none", lifespan="off", interface="asgi3",
                            proxy_headers=False, server_header=False)
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    uvloop.run(main())
