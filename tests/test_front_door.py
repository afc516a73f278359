"""The front door on a real bundle with keys: scopes, body caps enforced before buffering,
trickling clients cut off, bad input answered 400 for both engines, embeddings, the spec, and
the official OpenAI client."""
from __future__ import annotations

import re
import socket
import threading
import time

import openai
import pytest

from helpers import HTTP, free_port, model_entry, openai_client_round, running_bundle, wait_for, write_rig

pytestmark = pytest.mark.slow
CLIENT, OPERATOR = "client-key-0123456789", "operator-key-0123456789"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def door(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("door")
    (folder / "clients").write_text(CLIENT + "\n")
    rig = write_rig(folder, {
        "native": model_entry(models["gguf"], [0], priority=0),
        "python": model_entry(models["gguf_b"], [1], engine="llama-cpp-python"),
        "embed": model_entry(models["gguf"], [2], embeddings=True),
    }, whisper={"model_dir": str(models["whisper"]), "gpu": 3, "port": free_port(), "max_new_tokens": 8,
                "max_audio_mib": 1},
        api={"keys": {"client_file": str(folder / "clients")}, "header_timeout_s": 1, "body_timeout_s": 2,
             "max_connections": 12})
    with running_bundle(folder, rig, env={"LLAMARIG_OPERATOR_KEY": OPERATOR}, key=OPERATOR) as b:
        yield b


def _as(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _auth_failures(b, group: str) -> float:
    for line in b.get("/metrics").text.splitlines():
        if line.startswith(f'llamarig_auth_failures_total{{group="{group}"}}'):
            return float(line.split()[-1])
    return 0.0


PLAN = "talk-20261130-120000-abcdef"
ADMIN = [("GET", "/admin/units"), ("GET", "/admin/units/native"), ("POST", "/admin/units/native/reset"),
         ("POST", "/admin/units/native/stop"), ("POST", "/admin/down"), ("GET", "/no/such/route"),
         # the work layer's: submitting, cancelling and retrying plans, and reading them
         ("GET", "/admin/plans"), ("POST", "/admin/plans"), ("GET", f"/admin/plans/{PLAN}"),
         ("POST", f"/admin/plans/{PLAN}/cancel"), ("POST", f"/admin/plans/{PLAN}/retry"), ("GET", "/admin/work")]


def test_admin_routes_need_the_operator_key(door):
    before = _auth_failures(door, "operator")
    for method, path in ADMIN:
        for key in (None, CLIENT, "x" * 24):
            r = HTTP.request(method, door.api + path, headers=_as(key), timeout=10)
            assert r.status_code == 401, (method, path, key, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    assert _auth_failures(door, "operator") == before + 3 * len(ADMIN)
    assert door.get("/admin/units").status_code == 200  # the operator key
    assert door.get("/admin/units/native").json()["state"] == "ready"


def test_client_routes_need_a_key_and_open_routes_stay_open(door):
    body = {"model": "native", "prompt": "hi", "max_tokens": 2}
    for key, status in ((None, 401), ("wrong-key-0123456789", 401), (CLIENT, 200), (OPERATOR, 200)):
        assert HTTP.post(door.api + "/v1/completions", json=body, headers=_as(key), timeout=30).status_code == status
        assert HTTP.get(door.api + "/v1/models", headers=_as(key), timeout=10).status_code == status
    for path in ("/health", "/ready", "/metrics"):
        assert HTTP.get(door.api + path, timeout=10).status_code == 200
    assert _auth_failures(door, "client") >= 4


def _big_request(port: int, total: int, declared: bool, path: bytes = b"/v1/completions",
                 content_type: bytes = b"application/json", prefix: bytes = b"",
                 key: str = CLIENT) -> tuple[int | None, float, bytes]:
    """Send a POST of `total` bytes (Content-Length, or chunked) while reading the answer, as a
    client that does not wait for the whole upload; return the status, the seconds it took and
    the answer's head."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    length = b"content-length: %d\r\n" % total if declared else b"transfer-encoding: chunked\r\n"
    s.sendall(b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: " + content_type + b"\r\n"
              b"authorization: Bearer " + key.encode() + b"\r\n" + length + b"\r\n")
    if prefix:
        s.sendall(prefix if declared else b"%x\r\n%s\r\n" % (len(prefix), prefix))
    started = time.monotonic()
    piece = b"x" * MIB
    frame = piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece)

    def upload():
        try:
            for _ in range(total // MIB):
                s.sendall(frame)
        except OSError:
            pass  # the server closed the connection: what it should do

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    answer, took = b"", None
    try:
        while not _complete(answer):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
            took = took or time.monotonic() - started  # the first byte of the answer
    except OSError:
        pass
    s.close()
    sender.join(10)
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, took, answer.lower()


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.I)
    return bool(found and length and len(body) >= int(length.group(1)))


def _hwm_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_bodies_over_the_cap_are_refused_at_once_without_being_buffered(door):
    pid = door.pid("compute-api")
    before = _hwm_bytes(pid)
    cases = [(300 * MIB, True), (2048 * MIB, True), (300 * MIB, False), (2048 * MIB, False)]
    results: list = [None] * len(cases)

    def run(i, total, declared):
        results[i] = _big_request(door.rig.api.port, total, declared)

    threads = [threading.Thread(target=run, args=(i, *c)) for i, c in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for (total, declared), (status, took, head) in zip(cases, results):
        assert status == 413, (total, declared, status)
        assert took is not None and took < 1.0, (total, declared, took)
        assert b"\r\nconnection: close\r\n" in head and b"body_too_large" in head
    grown = _hwm_bytes(pid) - before
    assert grown < 16 * MIB * len(cases) + 32 * MIB, f"peak RSS grew by {grown / MIB:.0f} MiB"
    assert door.get("/ready").status_code == 200


def test_admin_bodies_are_capped_before_buffering(door):
    """A plan (Temporal takes 2 MiB) and a lease (a few bytes): 300 MB, declared or not, is a 413 at once."""
    pid = door.pid("compute-api")
    before = _hwm_bytes(pid)
    for path in (b"/admin/plans", b"/admin/gpus/lease"):
        for declared in (True, False):
            status, took, head = _big_request(door.rig.api.port, 300 * MIB, declared, path, key=OPERATOR)
            assert status == 413 and b"body_too_large" in head and took < 1.0, (path, declared, status, head)
    assert _hwm_bytes(pid) - before < 64 * MIB


def test_json_nested_past_the_parsers_limit_is_a_400_on_every_route_that_reads_json(door):
    deep = "[" * 1000 + "]" * 1000  # 2 KB
    for path, body in (("/v1/chat/completions", f'{{"model": "native", "messages": [], "x": {deep}}}'),
                       ("/v1/completions", f'{{"model": "native", "prompt": "a", "x": {deep}}}'),
                       ("/v1/embeddings", f'{{"model": "embed", "input": "a", "x": {deep}}}'),
                       ("/admin/plans", f'{{"plan": {deep}}}'), ("/admin/gpus/lease", deep)):
        r = HTTP.post(door.api + path, content=body.encode(), timeout=30,
                      headers=_as(OPERATOR) | {"content-type": "application/json"})
        assert r.status_code == 400 and "nested less deep" in r.json()["error"]["message"], (path, r.text)
    assert door.get("/ready").status_code == 200


def test_audio_over_whispers_cap_is_refused_before_reading(door):
    form = (b"--B\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"content-type: audio/wav\r\n\r\n")
    for declared in (True, False):  # refused by its Content-Length, or once the bytes passed the cap
        status, took, head = _big_request(door.rig.api.port, 8 * MIB, declared, b"/v1/audio/transcriptions",
                                          b"multipart/form-data; boundary=B", form)
        assert status == 413 and b"whisper.max_audio_mib" in head, head


def test_trickling_headers_and_bodies_are_cut_off_and_connections_are_bounded(door):
    port = door.rig.api.port
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")  # and no more
    s.settimeout(5)
    started = time.monotonic()
    assert s.recv(100) == b"" and time.monotonic() - started < 3  # closed after header_timeout_s (1 s)
    s.close()

    # A kept-alive connection: its first request answered, the next one's headers get the same time.
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + CLIENT.encode() + b"\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
    started = time.monotonic()
    while s.recv(4096):  # (the first answer's tail, if it came in two pieces)
        pass
    assert time.monotonic() - started < 3  # closed after header_timeout_s (1 s)
    s.close()

    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + CLIENT.encode() +
              b"\r\ncontent-length: 100\r\n\r\n{\"model\"")
    s.settimeout(5)
    assert s.recv(4096).startswith(b"HTTP/1.1 408")  # body_timeout_s (2 s)
    s.close()

    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    r = door.get("/v1/models", headers=_as(CLIENT))
    assert r.status_code == 503  # max_connections: 12
    for c in idle:
        c.close()
    wait_for(lambda: door.get("/v1/models").status_code == 200, 5, "a connection free again")


BAD_INPUT = [
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "a\\udcffb"}]}',
     "messages[0].content"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}',
     "max_tokens"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "hi"}], '
     '"max_tokens": 100000000000}', "max_tokens"),
    ("/v1/chat/completions", '{"model": "M", "messages": "hi"}', "messages"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "hi"}], '
     '"temperature": "hot"}', "temperature"),
    ("/v1/completions", '{"model": "M", "prompt": 12345}', "prompt"),
    ("/v1/completions", '{"model": "M", "prompt": "hi", "max_tokens": -1}', "max_tokens"),
    ("/v1/completions", '{"model": "M", "prompt": "a\\ud800"}', "prompt"),
    ("/v1/completions", '{"model": "M", "prompt": "hi", "stream": "yes"}', "stream"),
    ("/v1/completions", '{"model": "M", "prompt": "hi"', "(body)"),
    ("/v1/completions", '{"model": "M", "prompt": "hi", "x-vendor": NaN}', "(body)"),
]


@pytest.mark.parametrize("model", ["native", "python"])
def test_bad_input_is_a_400_naming_the_field_for_both_engines(door, model):
    for path, body, param in BAD_INPUT:
        r = door.post(path, content=body.replace('"M"', f'"{model}"').encode(),
                      headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, body, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, (body, error)
    gaps = [line for line in door.get("/metrics").text.splitlines() if line.startswith("llamarig_validator_gaps_total{")]
    assert gaps == [], gaps


@pytest.mark.parametrize("model", ["native", "python"])
def test_a_prompt_longer_than_the_context_is_a_400_for_both_engines(door, model):
    """Only the engine's tokenizer knows a prompt's length; llama-cpp-python answers it 500."""
    long = "𝓣𝓱𝓮 𝓺𝓾𝓲𝓬𝓴 " * 40  # about 1800 byte tokens, for a context of 256
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": long}]}),
                       ("/v1/completions", {"prompt": long, "max_tokens": 8})):
        r = door.post(path, json={"model": model, **body})
        assert r.status_code == 400, (path, r.text)


def test_embeddings_go_to_the_embeddings_model_only(door):
    r = door.post("/v1/embeddings", json={"model": "native", "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model" and "embed" in r.json()["error"]["message"]
    r = door.post("/v1/chat/completions", json={"model": "embed", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "native" in r.json()["error"]["message"]


def test_the_openai_client_with_a_key(door, wav):
    client = openai_client_round(door.api, CLIENT, "native", "python", wav)
    assert len(client.embeddings.create(model="embed", input="one").data[0].embedding) == 64
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="native", prompt="hi", max_tokens=-3)
    assert e.value.body["param"] == "max_tokens"


def test_the_spec_lists_every_served_route_with_keys(door):
    assert HTTP.get(door.api + "/openapi.json", timeout=10).status_code == 401
    spec = door.get("/openapi.json", headers=_as(CLIENT)).json()
    from llamarig.api.compute.app import create_app

    app = create_app(door.rig).app
    served = {(m.lower(), r.path) for r in app.routes for m in (getattr(r, "methods", None) or set()) - {"HEAD"}
              if r.path not in ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")}
    listed = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert served - listed == set() and ("post", "/v1/embeddings") in listed
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"ClientKey": []}, {"OperatorKey": []}]
    schema = spec["components"]["schemas"]["ChatCompletionRequest"]
    assert schema["properties"]["model"]["enum"] == ["native", "python"]
    assert spec["paths"]["/admin/down"]["post"]["security"] == [{"OperatorKey": []}]
    assert spec["paths"]["/ready"]["get"]["security"] == []
    assert set(spec["components"]["securitySchemes"]) == {"ClientKey", "OperatorKey"}
    assert "ErrorBody" in spec["components"]["schemas"]
