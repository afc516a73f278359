"""The health loop's judgement: a server that answers /health but cannot generate is caught by
the deep probe; a busy server whose probes fail while its stream progresses is not called dead."""
import httpx
from prometheus_client.parser import text_string_to_metric_families

from helpers import fake_server, model_entry, wait_for, write_rig
import pytest

pytestmark = pytest.mark.slow


def sample(b, name: str, **labels) -> float:
    for family in text_string_to_metric_families(b.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_deep_probe_passes_on_a_real_server(one_model):
    b = one_model(sections={"lifecycle": {"deep_probe_interval_s": 0.5}})
    wait_for(lambda: sample(b, "llamarig_health_probes_total", model="m", kind="deep", result="ok") >= 3,
             30, "three passing deep probes")
    assert sample(b, "llamarig_health_probes_total", model="m", kind="deep", result="failed") == 0
    assert b.unit("m")["state"] == "ready"


def test_deep_probe_catches_a_server_that_cannot_generate(tmp_path, models, bundle_factory):
    entry = model_entry(models["gguf"], [0], extra_args=["--fake-mode", "cannot-generate"])
    rig = write_rig(tmp_path, {"m": entry}, engines={"llama_server": fake_server(tmp_path)},
                    lifecycle={"deep_probe_interval_s": 0.5, "failure_threshold": 2})
    b = bundle_factory(rig)
    def failed_once():
        unit = b.up() and b.unit("m")
        return unit and any(h["target"] == "failed" for h in unit["history"]) and unit

    unit = wait_for(failed_once, 60, "the unit to fail")
    failed = [h for h in unit["history"] if h["target"] == "failed"][0]
    assert "2 consecutive failed probes" in failed["reason"] and "deep probe answered 500" in failed["reason"]
    assert sample(b, "llamarig_health_probes_total", model="m", kind="liveness", result="ok") >= 2
    assert sample(b, "llamarig_health_probes_total", model="m", kind="deep", result="failed") >= 2


def test_a_busy_server_whose_probes_fail_while_it_streams_is_not_called_dead(tmp_path, models, bundle_factory):
    entry = model_entry(models["gguf"], [0], extra_args=["--fake-mode", "slow-health"])
    rig = write_rig(tmp_path, {"m": entry}, engines={"llama_server": fake_server(tmp_path)},
                    lifecycle={"failure_threshold": 2, "health_interval_s": 0.5, "probe_timeout_s": 1})
    b = bundle_factory(rig)
    b.wait_ready()
    body = {"model": "m", "prompt": "x", "max_tokens": 50, "stream": True}  # 5 s of events
    events, done = 0, False
    with httpx.stream("POST", b.api + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            done = done or line == "data: [DONE]"
            events += line.startswith("data: ")
    assert done and events == 51
    # The probes did fail (/health said 503 for 5 s, more than 2 x 0.5 s) ...
    assert sample(b, "llamarig_health_probe_failures_total", model="m") >= 2
    # ... but the stream made progress, so none was counted against the server.
    history = b.unit("m")["history"]
    assert not any(h["target"] == "failed" for h in history), history
    assert b.unit("m")["state"] in ("ready", "busy")
