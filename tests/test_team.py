"""A rig a team shares, on a real bundle: named keys made, listed and revoked with the CLI
(revocation under load), usage by key equal to the engines' own counts, the limits as the
official openai client meets them, and an audit line for every admin route."""
from __future__ import annotations

import datetime
import json
import re
import socket
import threading
import time

import httpx
import openai
import pytest

from helpers import (HTTP, free_port, llamarig, model_entry, plan_ended, running_bundle, wait_for, work_section,
                     write_rig)

pytestmark = pytest.mark.slow
CLIENT, OPERATOR = "legacy-client-key-0123456789", "operator-key-0123456789"


@pytest.fixture(scope="module")
def team(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("team")
    rig = write_rig(folder, {"native": model_entry(models["gguf"], [0]),
                             "python": model_entry(models["gguf_b"], [1], engine="llama-cpp-python")},
                    whisper={"model_dir": str(models["whisper"]), "gpu": 2, "port": free_port(), "max_new_tokens": 8},
                    work=work_section())
    env = {"LLAMARIG_CLIENT_KEYS": CLIENT, "LLAMARIG_OPERATOR_KEY": OPERATOR}
    with running_bundle(folder, rig, env=env, key=OPERATOR) as b:
        b.wait_ready(120)
        yield b


def add_key(b, name: str, *flags: str) -> str:
    done = llamarig(b.rig_path, "keys", "add", name, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


def _as(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _metric(b, name: str, **labels) -> float:
    text = b.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                return float(line.split()[-1])
    return 0.0


def test_named_keys_are_listed_without_their_secret_and_the_old_keys_keep_working(team):
    key = add_key(team, "alice", "--scope", "client", "--rpm", "100", "--quota-tokens", "month:100000")
    body = {"model": "native", "prompt": "hi", "max_tokens": 2}
    for k in (key, CLIENT, OPERATOR):
        assert HTTP.post(team.api + "/v1/completions", json=body, headers=_as(k), timeout=30).status_code == 200
    listed = llamarig(team.rig_path, "keys", "list")
    assert "alice" in listed.stdout and "rpm=100" in listed.stdout and "quota=month:100000" in listed.stdout
    assert key not in listed.stdout and key not in team.get("/admin/keys").text
    assert key not in (team.rig.run_dir / "keys.sqlite").read_text(errors="replace")
    assert HTTP.get(team.api + "/admin/units", headers=_as(key), timeout=10).status_code == 401  # a client key
    refused = llamarig(team.rig_path, "keys", "add", "alice", "--scope", "client")
    assert refused.returncode == 2 and "key_exists" in refused.stderr


def test_a_key_stops_working_when_it_expires_and_its_last_use_is_listed(team):
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)
    key = add_key(team, "brief", "--scope", "client", "--expires", when.isoformat(timespec="seconds"))
    body = {"model": "native", "prompt": "hi", "max_tokens": 1}
    assert HTTP.post(team.api + "/v1/completions", json=body, headers=_as(key), timeout=30).status_code == 200
    wait_for(lambda: "brief" in (row := next((line for line in llamarig(team.rig_path, "keys", "list").stdout
                                              .splitlines() if line.startswith("brief")), "")) and
             not row.rstrip().endswith("never"), 20, "its last use listed (written every 10 s)")
    r = wait_for(lambda: (r := HTTP.post(team.api + "/v1/completions", json=body, headers=_as(key), timeout=30))
                 .status_code == 401 and r, 10, "the key refused once it expired")
    assert "expired" in r.json()["error"]["message"]
    assert _metric(team, "llamarig_key_refused_total", key="brief", why="expired") >= 1


def _engine_usage(r: httpx.Response | None, events: list[dict]) -> tuple[int, int]:
    """(prompt, completion) as the engine said them: a whole answer's usage; a stream's last
    usage or timings (llama-server), else its content events (llama-cpp-python: no prompt)."""
    if r is not None:
        usage = r.json()["usage"]
        return usage["prompt_tokens"], usage["completion_tokens"]
    for event in reversed(events):
        if event.get("usage"):
            return event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"]
        if event.get("timings"):
            t = event["timings"]
            return t["cache_n"] + t["prompt_n"], t["predicted_n"]
    return 0, len(events)


def test_usage_by_key_equals_what_the_engines_counted(team):
    key = add_key(team, "counter", "--scope", "client")
    expected: dict[str, list[int]] = {"native": [0, 0, 0], "python": [0, 0, 0]}
    asks = [("/v1/completions", {"prompt": "count these words please", "max_tokens": 5}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 6})]
    for model in ("native", "python"):
        for path, ask in asks:
            for stream in (False, True):
                body = {"model": model, **ask, "stream": stream, "ignore_eos": True}
                if not stream:
                    r = HTTP.post(team.api + path, json=body, headers=_as(key), timeout=60)
                    assert r.status_code == 200, r.text
                    prompt, completion = _engine_usage(r, [])
                else:
                    with httpx.stream("POST", team.api + path, json=body, headers=_as(key), timeout=60) as s:
                        events = [json.loads(line[6:]) for line in s.iter_lines()
                                  if line.startswith("data: ") and line != "data: [DONE]"]
                    prompt, completion = _engine_usage(None, [e for e in events if e.get("choices") is not None]
                                                       if model == "python" else events)
                row = expected[model]
                row[0] += 1
                row[1] += prompt
                row[2] += completion
    rows = {r["model"]: r for r in team.get("/admin/usage", params={"by": "key,model"}).json()["rows"]
            if r["key"] == "counter"}
    for model, (requests, prompt, completion) in expected.items():
        assert (rows[model]["requests"], rows[model]["prompt_tokens"], rows[model]["completion_tokens"]) == (
            requests, prompt, completion), (model, rows[model])
    assert _metric(team, "llamarig_key_tokens_total", key="counter", model="native", kind="completion") == \
        expected["native"][2]
    shown = llamarig(team.rig_path, "usage", "--by", "key,model", "--csv")
    assert shown.returncode == 0 and f"counter,native,4,0,{expected['native'][1]}" in shown.stdout, shown.stdout


def test_a_revoked_key_is_refused_within_a_second_under_load(team):
    key = add_key(team, "doomed", "--scope", "client")
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                r = client.post(team.api + "/v1/completions", headers=_as(key),
                                json={"model": "native", "prompt": "hi", "max_tokens": 1})
                seen.append((sent, r.status_code))

    workers = [threading.Thread(target=hammer) for _ in range(6)]
    for w in workers:
        w.start()
    wait_for(lambda: sum(1 for _, s in seen if s == 200) >= 20, 30, "requests served with the key")
    revoked = llamarig(team.rig_path, "keys", "revoke", "doomed")
    done_at = time.monotonic()
    wait_for(lambda: any(t > done_at + 1.5 for t, _ in seen), 30, "requests after the revocation")
    stop.set()
    for w in workers:
        w.join(30)
    assert revoked.returncode == 0, revoked.stderr
    late = [s for t, s in seen if t > done_at + 1.0]
    assert late and set(late) == {401}, sorted(set(late))
    r = HTTP.post(team.api + "/v1/completions", headers=_as(key), json={"model": "native", "prompt": "hi"}, timeout=10)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert _metric(team, "llamarig_key_refused_total", key="doomed", why="revoked") >= len(late)


def _hold_an_upload(b, key: str, release: threading.Event) -> threading.Thread:
    """A transcription whose upload pauses half-way until `release`: admitted, so it is one of
    its key's requests in progress all the while."""
    form = (b"--B\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"content-type: audio/wav\r\n\r\n")
    tail = b"\r\n--B--\r\n"
    audio = b"RIFF" + b"\0" * 2000
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
            f"content-type: multipart/form-data; boundary=B\r\ncontent-length: {len(form) + len(audio) + len(tail)}"
            "\r\n\r\n").encode()

    def run():
        with socket.create_connection(("127.0.0.1", b.rig.api.port)) as s:
            s.sendall(head + form + audio[:1000])
            release.wait(60)
            s.sendall(audio[1000:] + tail)
            s.settimeout(60)
            s.recv(4096)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_limits_as_the_openai_client_meets_them(team):
    # Requests at once: the client is told to come back in a second, and its retries get through.
    one = add_key(team, "one-at-a-time", "--scope", "client", "--concurrent", "1")
    release = threading.Event()
    holder = _hold_an_upload(team, one, release)
    wait_for(lambda: _metric(team, "llamarig_requests_inflight", model="whisper") >= 1, 30, "the upload admitted")
    threading.Timer(1.5, release.set).start()
    client = openai.OpenAI(base_url=team.api + "/v1", api_key=one, max_retries=5, timeout=60)
    started = time.monotonic()
    done = client.completions.create(model="native", prompt="hi", max_tokens=2)
    assert done.usage.completion_tokens == 2 and time.monotonic() - started >= 1.0
    assert _metric(team, "llamarig_key_limited_total", key="one-at-a-time", why="concurrent") >= 1
    holder.join(60)

    # Requests per minute: 429 rate_limit_exceeded with a Retry-After.
    rpm = add_key(team, "slow-one", "--scope", "client", "--rpm", "1")
    body = {"model": "native", "prompt": "hi", "max_tokens": 1}
    assert HTTP.post(team.api + "/v1/completions", json=body, headers=_as(rpm), timeout=30).status_code == 200
    r = HTTP.post(team.api + "/v1/completions", json=body, headers=_as(rpm), timeout=30)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    with pytest.raises(openai.RateLimitError) as e:
        openai.OpenAI(base_url=team.api + "/v1", api_key=rpm, max_retries=0).completions.create(**body)
    assert e.value.code == "rate_limit_exceeded"

    # An exhausted quota: insufficient_quota, and the client does not retry it.
    quota = add_key(team, "small-quota", "--scope", "client", "--quota-tokens", "day:1")
    assert HTTP.post(team.api + "/v1/completions", json=body, headers=_as(quota), timeout=30).status_code == 200
    before = _metric(team, "llamarig_key_limited_total", key="small-quota", why="quota")
    with pytest.raises(openai.RateLimitError) as e:
        openai.OpenAI(base_url=team.api + "/v1", api_key=quota, max_retries=3).completions.create(**body)
    assert e.value.code == "insufficient_quota"
    assert _metric(team, "llamarig_key_limited_total", key="small-quota", why="quota") == before + 1  # no retry

    # A model outside the key's list: 403, and /v1/models shows only its own.
    only = add_key(team, "native-only", "--scope", "client", "--models", "native")
    r = HTTP.post(team.api + "/v1/completions", json={**body, "model": "python"}, headers=_as(only), timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    listed = HTTP.get(team.api + "/v1/models", headers=_as(only), timeout=10).json()["data"]
    assert [m["id"] for m in listed] == ["native"]


def test_a_plan_counts_its_tasks_and_its_llm_requests_against_its_submitter(team):
    planner = add_key(team, "planner", "--scope", "operator", "--tpm", "100000")
    tasks = [{"name": "a", "class": "cpu", "command": "true"},
             {"name": "b", "class": "llm", "depends_on": ["a"],
              "generate": {"prompt": "Say hi.", "model": "native", "max_tokens": 3}}]
    r = HTTP.post(team.api + "/admin/plans", json={"plan": {"name": "mine", "tasks": tasks}}, headers=_as(planner),
                  timeout=30)
    assert r.status_code == 201, r.text
    view = plan_ended(team, r.json()["plan_id"])
    assert view["outcome"] == "succeeded", view
    rows = {r["model"]: r for r in team.get("/admin/usage", params={"by": "key,model"}).json()["rows"]
            if r["key"] == "planner"}
    assert rows["tasks:cpu"]["requests"] == 1 and rows["tasks:llm"]["requests"] == 1, rows
    assert rows["tasks:llm"]["task_seconds"] > 0 and rows["tasks:llm"]["errors"] == 0
    assert rows["native"]["requests"] == 1 and rows["native"]["completion_tokens"] == 3, rows  # the worker's request

    llamarig(team.rig_path, "keys", "revoke", "planner")  # a revoked submitter's llm tasks are refused (within 1 s)
    r = wait_for(lambda: (r := HTTP.post(team.api + "/v1/chat/completions", timeout=30, json={
        "model": "native", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        headers={**_as(CLIENT), "x-llamarig-on-behalf-of": "planner"})).status_code == 401 and r, 2, "refused")
    assert "planner" in r.json()["error"]["message"]


def test_every_admin_route_writes_an_audit_line(team):
    ops = add_key(team, "ops", "--scope", "operator")
    spec = team.get("/openapi.json").json()
    calls = [(method.upper(), path) for path, methods in spec["paths"].items() if path.startswith("/admin")
             for method in methods if method in ("post", "delete", "put", "patch")]
    assert ("POST", "/admin/plans") in calls or not team.rig.work
    fill = {"name": "native", "action": "reset", "lease_id": "no-such-lease", "plan_id": "no-such-plan", "gpu": "1"}
    calls.sort(key=lambda c: c[1] == "/admin/down")  # the bundle's end, last
    for method, template in calls:
        path = re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], template)
        before = len(llamarig_audit(team))
        r = HTTP.request(method, team.api + path, headers=_as(ops), json={}, timeout=120)
        assert r.status_code < 500, (method, path, r.text)
        wait_for(lambda: len(llamarig_audit(team)) > before, 10, f"an audit line for {method} {path}")
        line = llamarig_audit(team)[-1]
        assert line["key"] == "ops" and line["route"] == f"{method} {path}" and line["outcome"] == str(r.status_code)
    rows = llamarig_audit(team)
    assert any(r["route"] == "cli keys add" and r["target"] == "ops" for r in rows)
    assert any(r["route"] == "cli keys revoke" and r["target"] == "doomed" for r in rows)
    assert not any(ops in json.dumps(r) or OPERATOR in json.dumps(r) for r in rows)


def llamarig_audit(b) -> list[dict]:
    done = llamarig(b.rig_path, "audit", "--json")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
