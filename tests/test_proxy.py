"""The proxy's stream relay: a client that goes away mid-stream frees the model at once, and
back-to-back streams (llama-server closes its connection after each) never meet a dead
pooled connection."""
from __future__ import annotations

import socket

import httpx
import pytest

from helpers import model_entry, wait_for, write_rig

pytestmark = pytest.mark.slow


def _processing(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    line = next(line for line in text.splitlines() if line.startswith("llamacpp:requests_processing"))
    return float(line.split()[-1])


def _open_stream(api: str, body: bytes) -> socket.socket:
    """A raw client, so the test decides exactly when the connection goes away."""
    host, port = api.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def test_a_client_gone_mid_stream_stops_the_generation_and_frees_the_model(tmp_path, models, bundle_factory):
    entry = model_entry(models["gguf"], [0], context_size=32768)
    b = bundle_factory(write_rig(tmp_path, {"m": entry}))
    b.wait_ready()
    # Tens of thousands of tokens: seconds of generation on the tiny model.
    body = b'{"model": "m", "prompt": "hi", "max_tokens": 30000, "ignore_eos": true, "stream": true}'
    s = _open_stream(b.api, body)
    s.settimeout(10)
    try:
        received = b""
        while b"data: " not in received:  # the stream has begun
            chunk = s.recv(65536)
            assert chunk, received
            received += chunk
        assert received.count(b"\r\nserver: ") == 1, received  # the server's header, not two
        assert b.unit("m")["inflight"] == 1
    finally:
        s.close()
    # Without the disconnect watcher both would stay up until the 30000 tokens were done.
    wait_for(lambda: b.unit("m")["inflight"] == 0 and b.unit("m")["state"] == "ready", 3, "the lease released")
    wait_for(lambda: _processing(entry["port"]) == 0, 3, "the server no longer generating")


def test_back_to_back_streams_and_json_answers_never_fail(one_model):
    b = one_model()
    stream = {"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True}
    whole = {"model": "m", "prompt": "hi", "max_tokens": 1}
    with httpx.Client(base_url=b.api, timeout=30) as client:
        for i in range(60):
            if i % 3:
                with client.stream("POST", "/v1/completions", json=stream) as r:
                    text = b"".join(r.iter_bytes())
                assert r.status_code == 200 and text.rstrip().endswith(b"data: [DONE]"), text[-200:]
            else:
                r = client.post("/v1/completions", json=whole)
                assert r.status_code == 200, r.text


def test_a_client_that_sends_expect_100_continue_gets_one_whole_answer(one_model):
    """curl sends `Expect: 100-continue` with bodies over 1 KiB. uvicorn answers it for the
    client; passed on, llama-server would answer it too, with an interim 100 before the answer."""
    b = one_model()
    body = b'{"model": "m", "prompt": "hi", "max_tokens": 1, "user": "%s"}' % (b"u" * 2000)  # over 1 KiB
    host, port = b.api.removeprefix("http://").split(":")
    for _ in range(3):  # the same pooled connection upstream each time
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            received = b""
            while b"\r\n\r\n" not in received:
                received += s.recv(65536)
            assert received.startswith(b"HTTP/1.1 100 Continue\r\n"), received  # from uvicorn
            s.sendall(body)
            while chunk := s.recv(65536):
                received += chunk
        final = received.split(b"\r\n\r\n", 1)[1]
        assert final.startswith(b"HTTP/1.1 200 OK\r\n"), final
        assert b'"completion_tokens":1' in final.replace(b" ", b""), final[-300:]
        assert final.count(b"HTTP/1.1") == 1, final
