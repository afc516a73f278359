"""The launch gate (`llamarig launch`, a real process): it runs the manager's plan while the rig
file is the one the plan was made from, and reads the rig itself otherwise."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from helpers import PATH, model_entry, write_rig
from llamarig.backend.gate import EXIT_REFUSED, plan_path, read_plan, read_verdict, write_plan
from llamarig.backend.launch import plan_for
from llamarig.shared.rig import load_rig


def _rig(tmp_path, models):
    return load_rig(write_rig(tmp_path, {"brain": model_entry(models["gguf"], [0])},
                              timeouts={"settle_s": 0, "model_wait_s": 0}))


def _gate(rig, *extra: str) -> subprocess.CompletedProcess:
    plan = plan_path(rig.run_dir, "brain")
    return subprocess.run([sys.executable, "-m", "llamarig.cli", "--rig", rig.source, "launch", "brain",
                           "--plan", str(plan), *extra], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": PATH})


def _marked_plan(rig, mark: str):
    """The rig's plan for brain, with a server command that only prints `mark`."""
    plan = dataclasses.replace(plan_for(rig, "brain", on_gpu=False),
                               argv=[sys.executable, "-c", f"print({mark!r})"])
    write_plan(plan)
    return plan


def test_plan_made_from_the_rig_as_it_is_is_run(tmp_path, models):
    rig = _rig(tmp_path, models)
    _marked_plan(rig, "ran the plan")
    done = _gate(rig)
    assert done.returncode == 0, done.stderr
    assert "ran the plan" in done.stdout
    assert read_verdict(rig.run_dir, "brain")["ok"] is True


def test_a_changed_rig_file_makes_the_gate_read_the_rig(tmp_path, models):
    rig = _rig(tmp_path, models)
    _marked_plan(rig, "ran the plan")
    # Same settings, one byte more: the plan is stale; the rig now names a server binary that
    # does not exist, so the rig's own plan refuses, which shows that the rig was read.
    text = open(rig.source).read().replace(rig.engines.llama_server, "/nonexistent/llama-server")
    open(rig.source, "w").write(text)
    assert read_plan(plan_path(rig.run_dir, "brain"), rig.source) is None
    done = _gate(rig)
    assert done.returncode == EXIT_REFUSED
    assert "ran the plan" not in done.stdout
    assert read_verdict(rig.run_dir, "brain")["code"] == "engine_missing"


def test_a_plan_for_another_slot_is_not_used(tmp_path, models):
    rig = _rig(tmp_path, models)
    _marked_plan(rig, "ran the plan")
    done = _gate(rig, "--slot", "green")  # no swap_port: the rig's plan refuses the green slot
    assert done.returncode == EXIT_REFUSED
    assert "ran the plan" not in done.stdout
    assert read_verdict(rig.run_dir, "brain_green")["code"] == "no_swap_port"


def test_the_gate_still_verifies_when_it_has_a_plan(tmp_path, models):
    rig = _rig(tmp_path, models)
    plan = _marked_plan(rig, "ran the plan")
    write_plan(dataclasses.replace(plan, target=str(tmp_path / "gone.gguf")))
    done = _gate(rig)
    assert done.returncode == EXIT_REFUSED
    assert "ran the plan" not in done.stdout
    verdict = read_verdict(rig.run_dir, "brain")
    assert verdict["code"] == "missing" and "gone.gguf" in verdict["reason"]


def test_a_plan_that_carries_a_refusal_refuses_after_verifying(tmp_path, models):
    rig = _rig(tmp_path, models)
    plan = plan_for(rig, "brain", on_gpu=False)
    write_plan(dataclasses.replace(plan, argv=[], refusal=["engine_missing", "no such binary"]))
    done = _gate(rig)
    assert done.returncode == EXIT_REFUSED
    assert read_verdict(rig.run_dir, "brain") | {"pid": 0} == {
        "path": str(models["gguf"]), "ok": False, "code": "engine_missing", "reason": "no such binary",
        "size": 0, "pid": 0}


def test_an_unreadable_plan_is_ignored(tmp_path, models):
    rig = _rig(tmp_path, models)
    path = plan_path(rig.run_dir, "brain")
    path.parent.mkdir(parents=True)
    for text in ("{not json", json.dumps({"unit": "brain"}), json.dumps([1, 2])):
        path.write_text(text)
        assert read_plan(path, rig.source) is None
