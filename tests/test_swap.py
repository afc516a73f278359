"""Reload: blue-green when the new server fits beside the old one, drain-first otherwise."""
import json
import threading

import httpx
import yaml

from helpers import edit_model, free_port, model_entry, reload_done, wait_for, write_rig
from llamarig.backend.lifecycle.jobs import port_in_use
from llamarig.shared.gguf_header import read_header
from llamarig.shared.vram import estimate
import pytest

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def served_file(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"][0]["id"]


def test_blue_green_reload_switches_without_failing_a_request(tmp_path, models, bundle_factory):
    entry = model_entry(models["gguf"], [0], swap_port=free_port(), context_size=4096)
    rig_path = write_rig(tmp_path, {"m": entry})
    b = bundle_factory(rig_path)
    b.wait_ready()
    assert "tiny.gguf" in served_file(entry["port"])
    edit_model(rig_path, path=str(models["gguf_b"]))

    codes, stop = [], threading.Event()

    def steady_client():
        while not stop.is_set():
            r = b.post("/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1}, timeout=30)
            codes.append(r.status_code)

    client = threading.Thread(target=steady_client)
    client.start()
    body = {"model": "m", "prompt": "hi", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    events, done = 0, False
    try:
        with httpx.stream("POST", b.api + "/v1/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            answer = b.post("/admin/units/m/reload")
            assert answer.status_code == 202, answer.text
            assert answer.json()["how"] == "blue-green", answer.json()
            for line in lines:
                done = done or line == "data: [DONE]"
                events += line.startswith("data: ")
        record = reload_done(b)
    finally:
        stop.set()
        client.join(60)
    assert done and events > 100, "the stream on the old server was cut"
    assert record["state"] == "done", record
    assert record["from"] == "llama-m" and record["to"] == "llama-m_green"
    assert codes and set(codes) == {200}, f"requests failed during the swap: {sorted(set(codes))}"
    unit = b.unit("m")
    assert unit["program"] == "llama-m_green" and unit["port"] == entry["swap_port"]
    assert unit["state"] in ("ready", "busy")
    assert "tiny-b.gguf" in served_file(entry["swap_port"])
    assert not port_in_use(entry["port"]), "the old server still holds its port"
    assert "STOPPED" in b.ctl("status", "llama-m").stdout
    # Routing follows the switch: a request now lands on the green server.
    ok = b.post("/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200

    # A restart of the compute API adopts the green server instead of loading blue beside it.
    green_pid = b.pid("llama-m_green")
    assert "compute-api: started" in b.ctl("restart", "compute-api").stdout
    b.wait_ready()
    unit = b.unit("m")
    assert unit["program"] == "llama-m_green" and b.pid("llama-m_green") == green_pid
    assert any("adopted the running server" in h["reason"] for h in unit["history"])
    assert "STOPPED" in b.ctl("status", "llama-m").stdout

    # A second reload goes back to the blue slot.
    edit_model(rig_path, path=str(models["gguf"]))
    assert b.post("/admin/units/m/reload").json()["to"] == "llama-m"
    assert reload_done(b)["state"] == "done"
    assert "tiny.gguf" in served_file(entry["port"]) and not port_in_use(entry["swap_port"])


def test_a_bad_new_file_leaves_the_old_server_serving(tmp_path, models, bundle_factory):
    entry = model_entry(models["gguf"], [0], swap_port=free_port())
    rig_path = write_rig(tmp_path, {"m": entry})
    b = bundle_factory(rig_path)
    b.wait_ready()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(4096))
    edit_model(rig_path, path=str(bad))
    assert b.post("/admin/units/m/reload").json()["how"] == "blue-green"
    record = reload_done(b)
    assert record["state"] == "failed" and "bad_magic" in record["reason"], record
    assert "llama-m keeps serving" in record["reason"]
    unit = b.unit("m")
    assert unit["program"] == "llama-m" and unit["state"] in ("ready", "busy")
    assert b.post("/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1}).status_code == 200
    assert not port_in_use(entry["swap_port"])


def test_reload_drains_first_when_two_servers_do_not_fit(tmp_path, models, bundle_factory):
    need = estimate(read_header(models["gguf"]), (0,), (1.0,), 256, -1, True).total
    entry = model_entry(models["gguf"], [0], swap_port=free_port())
    rig_path = write_rig(tmp_path, {"m": entry}, lifecycle={"vram_margin_mib": 0})
    data = yaml.safe_load(rig_path.read_text())
    # Room for one server, not for a second beside a running one (this one holds about 18 MiB).
    data["gpus"]["simulated"][0]["memory_mib"] = need // MIB + 10
    rig_path.write_text(yaml.safe_dump(data))
    b = bundle_factory(rig_path)
    b.wait_ready()
    answer = b.post("/admin/units/m/reload").json()
    assert answer["how"] == "drain-first" and "no room for two servers" in answer["why"], answer
    assert "on GPU 0" in answer["why"]
    wait_for(lambda: any(h["target"] == "stopping" for h in b.unit("m")["history"]), 30, "the old server to stop")
    unit = b.wait_state("m", {"ready"}, 60)
    assert unit["program"] == "llama-m"


def test_reload_without_swap_port_and_with_a_changed_port(one_model):
    b = one_model()
    rig_path = b.rig_path
    answer = b.post("/admin/units/m/reload").json()
    assert answer["how"] == "drain-first" and answer["why"] == "models.m.swap_port is not set"
    b.wait_state("m", {"ready"}, 60)
    edit_model(rig_path, port=free_port())
    refused = b.post("/admin/units/m/reload")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "rig_changed" and "port" in refused.json()["error"]["message"]
    # An answer to the operator, logged as such: not an error with a traceback.
    log = [json.loads(line) for line in (b.rig.run_dir / "logs" / "compute-api.log").read_text().splitlines()
           if line.startswith("{")]
    refusal = next(r for r in log if r["msg"] == "planner command refused")
    assert refusal["level"] == "info" and refusal["code"] == "rig_changed" and "exc" not in refusal
    assert not [r for r in log if r["level"] == "error"], log


def test_a_reload_candidate_claims_the_files_hash_only_when_nothing_else_changed(tmp_path, models):
    from llamarig.backend.gate import file_sha256
    from llamarig.backend.lifecycle.swap import candidate_rig
    from llamarig.shared.rig import load_rig

    rig_path = write_rig(tmp_path, {"m": model_entry(models["gguf"], [0]), "n": model_entry(models["gguf"], [1])})
    running = load_rig(rig_path)
    edit_model(rig_path, context_size=512)
    candidate = candidate_rig(running, "m")
    assert candidate.models["m"].context_size == 512 and candidate.source_sha256 == file_sha256(rig_path)
    assert running.models["m"].context_size == 256  # the running rig is untouched until a commit
    data = yaml.safe_load(rig_path.read_text())
    data["models"]["n"]["context_size"] = 1024  # another model changed too, not reloaded
    rig_path.write_text(yaml.safe_dump(data))
    candidate = candidate_rig(running, "m")
    assert candidate.source_sha256 == "" and candidate.models["n"].context_size == 256
