"""A bare proxy, the reference the compute API's overhead is read against: uvicorn (the same
settings as the compute API) and one upstream client, with nothing else: no routing by model,
no lease, no metrics. Run by proxy.py for the 1-token latency only.

    python bench/bare_proxy.py UPSTREAM_PORT PORT upstream|aiohttp

bench/hot_path.py runs the same app in process (app_of over upstream_client with a stand-in).
"""
from __future__ import annotations

import sys

import uvicorn
import uvloop

async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def upstream_client(port: int, upstream=None):
    """POST with llamarig's upstream client (or `upstream`, a stand-in of its shape)."""
    if upstream is None:
        from llamarig.backend.upstream import Upstream

        upstream = Upstream()

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        answer = await upstream.request("POST", port, path, [(b"content-type", b"application/json")], body)
        return answer.status, await answer.read()
    return post


def _aiohttp_client(port: int):
    import aiohttp

    session = None

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        nonlocal session
        if session is None:  # made on the running loop
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
                                            skip_auto_headers=("User-Agent", "Accept-Encoding"))
        async with session.post(f"http://127.0.0.1:{port}{path}", data=body,
                                headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.read()
    return post


def app_of(post):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return  # no lifespan
        status, data = await post(scope["path"], await _body(receive))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
    return app


async def main(upstream_port: int, port: int, client: str):
    post = upstream_client(upstream_port) if client == "upstream" else _aiohttp_client(upstream_port)
    config = uvicorn.Config(app_of(post), host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="none",
                            http="httptools", ws="none", lifespan="off", interface="asgi3",
                            proxy_headers=False, server_header=False)
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
