"""The races a review of the lifecycle found, each reproduced on a real bundle: an operator stop
during an on-demand load, two reloads at once, an operator stop during a blue-green reload, and
a failed reload's settings (and the rig file's hash after a good one)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading

import pytest

from helpers import edit_model, free_port, model_entry, reload_done, wait_for, write_rig
from llamarig.backend.lifecycle.jobs import port_in_use

pytestmark = pytest.mark.slow


def _log_has(b, text: str) -> bool:
    path = b.rig.run_dir / "logs" / "compute-api.log"
    return path.exists() and text in path.read_text()


def test_an_operator_stop_during_an_on_demand_load_is_not_undone(one_model):
    b = one_model(warm=False, sections={"lifecycle": {"vram_settle_s": 3}})
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(b.post(
        "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1}, timeout=60)))
    waiting.start()
    wait_for(lambda: b.unit("m")["waiting"] == 1, 10, "the request to wait for the load")
    assert b.post("/admin/units/m/stop").status_code == 202  # while the planner reads the memory
    waiting.join(timeout=60)
    assert answers[0].status_code == 503, answers[0].text
    # The planner reads the state after its memory reading: it starts nothing (or the actor refuses its start).
    wait_for(lambda: _log_has(b, "command refused: its condition no longer holds") or _log_has(b, "load not started"),
             30, "the planner's decision")
    unit = b.unit("m")
    assert unit["state"] == "stopped" and not port_in_use(unit["port"]), unit
    assert [h["target"] for h in unit["history"]] == []  # never left stopped


def _reload_rig(tmp_path, models, **more):
    entry = model_entry(models["gguf"], [0], swap_port=free_port(), **more)
    return write_rig(tmp_path, {"m": entry}), entry


def test_two_reloads_at_once_one_is_refused(tmp_path, models, bundle_factory):
    rig_path, _ = _reload_rig(tmp_path, models)
    b = bundle_factory(rig_path)
    b.wait_ready()
    edit_model(rig_path, path=str(models["gguf_b"]))
    barrier, codes = threading.Barrier(2), []

    def reload():
        barrier.wait()
        codes.append(b.post("/admin/units/m/reload").status_code)

    threads = [threading.Thread(target=reload) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(codes) == [202, 409], codes
    assert reload_done(b)["state"] == "done"


def test_an_operator_stop_during_a_blue_green_reload_is_not_undone(tmp_path, models, bundle_factory):
    rig_path, entry = _reload_rig(tmp_path, models)
    b = bundle_factory(rig_path)
    b.wait_ready()
    edit_model(rig_path, path=str(models["gguf_b"]))
    assert b.post("/admin/units/m/reload").json()["how"] == "blue-green"
    assert b.post("/admin/units/m/stop").status_code == 202  # while the new server loads
    record = reload_done(b)
    assert record["state"] == "cancelled" and "was stopped during the reload" in record["reason"], record
    unit = wait_for(lambda: (u := b.unit("m"))["state"] == "stopped" and u, 30, "the model to stay stopped")
    assert unit["program"] == "llama-m"  # routing never moved to the new server
    wait_for(lambda: not port_in_use(entry["swap_port"]) and not port_in_use(entry["port"]), 30,
             "both servers gone")


def _plan(b, key: str) -> dict:
    return json.loads((b.rig.run_dir / "plans" / f"{key}.json").read_text())


def test_a_failed_reload_leaves_the_old_settings_for_the_old_servers_restarts(tmp_path, models, bundle_factory):
    rig_path, _ = _reload_rig(tmp_path, models)
    b = bundle_factory(rig_path)
    b.wait_ready()
    edit_model(rig_path, extra_args=["--no-such-flag"])
    assert b.post("/admin/units/m/reload").json()["how"] == "blue-green"
    assert reload_done(b)["state"] == "failed"
    os.kill(b.pid("llama-m"), signal.SIGKILL)  # the old server must come back as it was
    wait_for(lambda: b.unit("m")["restarts_in_window"] >= 1, 30, "the crash to be seen")
    unit = b.wait_state("m", {"ready"}, 60)
    assert "--no-such-flag" not in _plan(b, "m")["argv"], unit
    assert b.post("/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1}).status_code == 200


def test_after_a_good_reload_launch_plans_match_the_rig_file(tmp_path, models, bundle_factory):
    rig_path, _ = _reload_rig(tmp_path, models)
    b = bundle_factory(rig_path)
    b.wait_ready()
    edit_model(rig_path, context_size=512)
    assert b.post("/admin/units/m/reload").json()["how"] == "blue-green"
    assert reload_done(b)["state"] == "done"
    sha = hashlib.sha256(rig_path.read_bytes()).hexdigest()
    assert _plan(b, "m_green")["rig_sha256"] == sha
    os.kill(b.pid("llama-m_green"), signal.SIGKILL)  # its restart's plan comes from the updated rig
    wait_for(lambda: b.unit("m")["restarts_in_window"] >= 1, 30, "the crash to be seen")
    b.wait_state("m", {"ready"}, 60)
    plan = _plan(b, "m_green")
    assert plan["rig_sha256"] == sha and "512" in plan["argv"], plan
