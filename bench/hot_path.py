"""The compute API's own per-request logic, in process, without sockets or uvicorn: one routed
1-token completion through the real front (keys, limits, parsing and validation, the lease,
the proxy's answer handling, usage and metrics) against the bare proxy's app, both over the
same canned answer from a stand-in upstream. What is left after the floor's share is
llamarig's logic alone: the figure to cut when bench/cpu_pairs.py's ratio is over its target
(its passes move with the VM; this one moves less).

    python bench/hot_path.py [REQUESTS] [--named]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the planner's in-process fakes

import bare_proxy  # noqa: E402
from helpers import model_entry, write_rig  # noqa: E402
from planner_fakes import fake_manager  # noqa: E402
from llamarig.api.compute.app import create_app  # noqa: E402
from llamarig.api.compute.metrics import Metrics  # noqa: E402
from llamarig.api.compute.proxy import Proxy  # noqa: E402
from llamarig.api.compute.serve import Started  # noqa: E402
from llamarig.backend.lifecycle.states import SERVING  # noqa: E402
from llamarig.backend.models_make import make_gguf  # noqa: E402
from llamarig.backend.upstream import Answer  # noqa: E402
from llamarig.shared.keystore import KeyStore, NamedKey  # noqa: E402

KEY = "bench-client-key-0123456789"
BODY = b'{"model": "m", "prompt": "Hello", "max_tokens": 1, "temperature": 0}'
# llama-server's answer to a 1-token completion, its headers as it sends them
ANSWER = (b'{"choices":[{"text":" the","index":0,"logprobs":null,"finish_reason":"length"}],"created":1765000000,'
          b'"model":"m","system_fingerprint":"b1-abc","object":"text_completion","usage":{"completion_tokens":1,'
          b'"prompt_tokens":2,"total_tokens":3},"id":"cmpl-abc","timings":{"prompt_n":2,"prompt_ms":1.2,'
          b'"predicted_n":1,"predicted_ms":0.5}}')
HEADERS = [(b"keep-alive", b"timeout=5, max=100"), (b"content-type", b"application/json; charset=utf-8"),
           (b"server", b"llama.cpp"), (b"access-control-allow-origin", b""), (b"content-length", b"%d" % len(ANSWER))]
LIMITS = NamedKey("bench", "client", rpm=10**9, tpm=10**12, concurrent=10**6, quota=("month", 10**15))


class _Conn:
    def __init__(self, loop):
        self.loop = loop

    def resume_if_drained(self, _):
        pass

    def abort(self):
        pass


class CannedUpstream:
    """Answers every request at once with ANSWER, as upstream.Upstream's Answer."""

    def __init__(self):
        self.conn = None

    async def request(self, method, port, target, headers, body, close=False):
        if self.conn is None:
            self.conn = _Conn(asyncio.get_running_loop())
        answer = Answer(self.conn, 200, HEADERS)
        answer.chunks_in.append(ANSWER)
        answer.ended = True
        return answer


def _scope(key: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST", "root_path": "",
            "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*"),
                        (b"accept-encoding", b"gzip, deflate"), (b"authorization", f"Bearer {key}".encode()),
                        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
            "llamarig.body_arrived": True}


async def _receive():
    return {"type": "http.request", "body": BODY, "more_body": False}


BARE_APP = bare_proxy.app_of(bare_proxy.upstream_client(1, CannedUpstream()))  # the floor's own app


async def _time(app, key: str, n: int) -> float:
    """µs of CPU per request (process time: the loop is this process)."""
    statuses = []

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.process_time()
    for _ in range(n):
        await app(_scope(key), _receive, send)
    spent = time.process_time() - started
    assert set(statuses) == {200}, set(statuses)
    return spent / n * 1e6


async def _main(n: int, named: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-hot-path-"))
    gguf = make_gguf(folder / "tiny.gguf")
    rig_path = write_rig(folder, {"m": model_entry(gguf, [0])})
    m, _ = fake_manager(rig_path, lambda needs: 64 << 30)
    rig = m.rig
    key = KeyStore(rig.run_dir).add(LIMITS) if named else KEY
    os.environ["LLAMARIG_CLIENT_KEYS"] = KEY
    await m.start()
    deadline = time.monotonic() + 10
    while m.actor("m").state not in SERVING and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    front = create_app(rig, started=Started(m, Metrics()))
    front.state.manager, front.state.proxy = m, Proxy(CannedUpstream())
    front.state.metrics.attach(m)
    gc.freeze()
    await _time(front, key, 300)  # warm-up
    rows = []
    for _ in range(7):
        ours, bare = await _time(front, key, n), await _time(BARE_APP, key, n)
        rows.append((ours, bare))
        print(f"compute API {ours:.1f} µs, bare app {bare:.1f} µs, llamarig's own {ours - bare:.1f} µs", flush=True)
    print(f"median: llamarig's own logic {statistics.median(o - b for o, b in rows):.1f} µs per request "
          f"({'a named key, every limit set' if named else 'the environment key'})")
    await m.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("requests", nargs="?", type=int, default=5000)
    p.add_argument("--named", action="store_true", help="a named key with every limit set")
    a = p.parse_args()
    asyncio.run(_main(a.requests, a.named))
