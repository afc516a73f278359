"""The lifecycle manager against real supervisord and real llama servers."""
import json
import os
import signal
import time

import httpx
import psutil
import pytest
import yaml

from helpers import edit_model, model_entry, wait_for, write_rig
from llamarig.backend.lifecycle.jobs import port_in_use
from llamarig.backend.models_make import GgufSize, make_gguf

pytestmark = pytest.mark.slow


def complete(b, model="m", timeout=30) -> httpx.Response:
    return b.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1}, timeout=timeout)


def test_kill_9_restarts_and_the_gap_gets_503_with_retry_after(one_model):
    b = one_model()
    old = b.pid("llama-m")
    os.kill(old, signal.SIGKILL)
    answers = []

    def back():
        started = time.monotonic()
        r = complete(b, timeout=20)
        answers.append((r.status_code, r.headers.get("Retry-After"), time.monotonic() - started))
        return r.status_code == 200

    wait_for(back, 60, "a 200 after the kill", interval=0.1)
    gap = [a for a in answers if a[0] != 200]
    assert gap, "no request saw the gap"
    assert all(code == 503 and retry is not None for code, retry, _ in gap), gap
    assert all(seconds < 10 for *_, seconds in answers), "a request hung"
    unit = b.unit("m")
    assert unit["state"] in ("ready", "busy") and unit["restarts_in_window"] >= 1
    assert b.pid("llama-m") != old
    # The cause as it happened (supervisord's process info says "FATAL, exit status 0" for it).
    assert any("process exited: terminated by SIGKILL (supervisord: " in h["reason"] for h in unit["history"]), \
        unit["history"]


def test_sigstop_is_detected_after_threshold_and_restarted(one_model):
    b = one_model()
    old = b.pid("llama-m")
    os.kill(old, signal.SIGSTOP)
    stopped_at = time.monotonic()
    failed = b.wait_state("m", {"failed"}, 30)
    detected = time.monotonic() - stopped_at
    assert "consecutive failed probes" in failed["reason"]
    # threshold x interval plus one probe timeout, with slack for a loaded machine
    assert detected >= 3 * 0.5
    b.wait_state("m", {"ready"}, 60)
    assert b.pid("llama-m") != old and not psutil.pid_exists(old)


def test_bad_flag_backs_off_then_opens_the_circuit_and_reset_works(one_model):
    b = one_model(ready=False, extra_args=["--no-such-flag"],
                  sections={"lifecycle": {"circuit_restarts": 2, "circuit_window_s": 120, "backoff_initial_s": 0.5}})
    unit = wait_for(lambda: b.up() and (u := b.unit("m"))["circuit_open"] and u, 60, "circuit open")
    assert unit["state"] == "failed" and "circuit open" in unit["reason"] and "llamarig reset m" in unit["reason"]
    reasons = [h["reason"] for h in b.get("/admin/units/m").json()["history"]]
    assert sum("start failed" in r for r in reasons) == 3  # first try + 2 restarts
    assert any("restart after 0.5 s" in r for r in reasons) and any("restart after 1 s" in r for r in reasons)
    r = complete(b)
    assert r.status_code == 503 and "circuit open" in r.json()["error"]["message"]
    edit_model(b.rig_path, extra_args=[])  # the operator fixes the flag and resets: the gate reads the rig afresh
    assert b.post("/admin/units/m/reset").status_code == 202
    unit = b.wait_state("m", {"ready"}, 60)
    assert not unit["circuit_open"] and unit["restarts_in_window"] == 0
    assert complete(b).status_code == 200


def test_an_open_circuit_half_opens_after_its_cooldown_and_closes_when_the_try_works(one_model):
    b = one_model(ready=False, extra_args=["--no-such-flag"], sections={"lifecycle": {
        "circuit_restarts": 1, "circuit_window_s": 120, "backoff_initial_s": 0.2, "circuit_cooldown_s": 1}})
    unit = wait_for(lambda: b.up() and (u := b.unit("m"))["circuit_open"] and u, 60, "circuit open")
    assert "one start will be tried in 1 s (circuit_cooldown_s)" in unit["reason"]

    def tries() -> int:
        return sum("circuit half-open after 1 s" in h["reason"] for h in b.get("/admin/units/m").json()["history"])

    wait_for(lambda: tries() >= 1 and b.unit("m")["circuit_open"] and b.unit("m")["state"] == "failed", 30,
             "a half-open try that fails and opens the circuit again")
    edit_model(b.rig_path, extra_args=[])  # the cause goes away; nobody resets
    unit = b.wait_state("m", {"ready"}, 30)
    assert not unit["circuit_open"] and unit["restarts_in_window"] == 0
    assert complete(b).status_code == 200


def test_drain_lets_a_stream_finish_then_stops_with_nothing_left(one_model):
    b = one_model(context_size=4096)
    pid, port = b.pid("llama-m"), b.rig.models["m"].port
    body = {"model": "m", "prompt": "hi", "max_tokens": 3000, "stream": True, "ignore_eos": True}
    seen = {"events": 0, "done": False, "states": set()}
    with httpx.stream("POST", b.api + "/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break
        assert b.post("/admin/units/m/stop").status_code == 202
        seen["states"].add(b.unit("m")["state"])
        assert complete(b).status_code == 503  # no new request while draining
        for line in lines:
            if line == "data: [DONE]":
                seen["done"] = True
            elif line.startswith("data: "):
                seen["events"] += 1
    assert "draining" in seen["states"]
    assert seen["done"] and seen["events"] > 100, seen
    b.wait_state("m", {"stopped"}, 30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not port_in_use(port)
    history = b.get("/admin/units/m").json()["history"]
    assert [h["target"] for h in history][-3:] == ["draining", "stopping", "stopped"]
    assert "no process left, port free" in history[-1]["reason"]


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Models big enough that their memory dominates a server's own (about 45 MB)."""
    folder = tmp_path_factory.mktemp("medium")
    return [make_gguf(folder / f"m{i}.gguf", GgufSize(layers=4, width=512), seed=i) for i in range(2)]


def test_on_demand_load_idle_unload_and_lru_that_never_evicts_a_busy_model(tmp_path, medium, models,
                                                                          bundle_factory):
    on_demand = {"warm": False, "keep_alive_s": 600, "context_size": 2048}
    rig_path = write_rig(tmp_path, {
        "a": model_entry(medium[0], [0], **on_demand), "b": model_entry(medium[1], [0], **on_demand),
        "idle": model_entry(models["gguf"], [1], warm=False, keep_alive_s=1),
    }, lifecycle={"vram_margin_mib": 0, "vram_settle_s": 1})
    data = yaml.safe_load(rig_path.read_text())
    # Room for one medium model (estimate 67 MiB, about 57 MiB resident), not two.
    data["gpus"]["simulated"][0]["memory_mib"] = 110
    rig_path.write_text(yaml.safe_dump(data))
    b = bundle_factory(rig_path)
    b.wait_ready()
    assert {b.unit(n)["state"] for n in ("a", "b", "idle")} == {"stopped"}

    # Cold model: the request waits while it loads, then is served; it counts as a cold start.
    assert complete(b, "a", timeout=90).status_code == 200
    assert b.unit("a")["state"] == "ready"
    metrics = b.get("/metrics").text
    assert 'llamarig_cold_starts_total{model="a"} 1.0' in metrics

    # b does not fit beside a: a is idle, so it is evicted (least recently used).
    assert complete(b, "b", timeout=90).status_code == 200
    b.wait_state("a", {"stopped"}, 30)
    assert any("evicted" in h["reason"] for h in b.get("/admin/units/a").json()["history"])
    assert b.unit("b")["state"] == "ready"

    # While b is busy, a cannot evict it: a 503 with the reason, not a wait or an eviction.
    stream_body = {"model": "b", "prompt": "x", "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", b.api + "/v1/completions", json=stream_body, timeout=120) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        refused = complete(b, "a", timeout=60)
        after = sum(1 for line in lines if line.startswith("data: "))
    assert after > 1, "the stream had ended before a was refused"
    assert refused.status_code == 503 and "cannot load" in refused.json()["error"]["message"]
    assert b.unit("b")["state"] == "ready"

    # keep_alive: 1 s idle, then unloaded.
    assert complete(b, "idle", timeout=60).status_code == 200
    b.wait_state("idle", {"stopped"}, 30)
    assert any("keep_alive" in h["reason"] for h in b.get("/admin/units/idle").json()["history"])


def test_probes_and_scrapes_do_not_count_as_activity(one_model):
    b = one_model(warm=False, keep_alive_s=2)
    assert complete(b, timeout=60).status_code == 200
    # Health probes run every 0.5 s and we scrape metrics: neither must keep it loaded.
    deadline = time.monotonic() + 20
    while b.unit("m")["state"] != "stopped" and time.monotonic() < deadline:
        b.get("/metrics")
    assert b.unit("m")["state"] == "stopped"


def test_100_start_stop_cycles_leave_no_leak(one_model):
    b = one_model()
    api = psutil.Process(b.pid("compute-api"))

    def cycle():
        b.stop_start("m")

    for _ in range(5):  # warm up caches and pools before the baseline
        cycle()
    base = (api.memory_info().rss, api.num_fds(), len(b.tree()))
    for _ in range(100):
        cycle()
    after = (api.memory_info().rss, api.num_fds(), len(b.tree()))
    report = {"rss_growth_mib": (after[0] - base[0]) / 2**20, "fds": (base[1], after[1]),
              "processes": (base[2], after[2])}
    print("churn", json.dumps(report))
    assert report["rss_growth_mib"] < 40, report
    assert after[1] <= base[1] + 10, report
    assert after[2] == base[2], report
