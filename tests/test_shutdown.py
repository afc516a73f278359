"""Start-up and shutdown as an operator sees them: `llamarig up` wave by wave (with a model that
cannot fit refused and the rest loaded), `llamarig status`, `llamarig down`, and SIGTERM to
supervisord while a stream is in flight."""
import json
import signal

import httpx
import psutil
import yaml

from helpers import alive, llamarig, model_entry, write_rig
import pytest

pytestmark = pytest.mark.slow


def supervisord_pid(rig_dir) -> int | None:
    try:
        return int((rig_dir / "run" / "supervisord.pid").read_text())
    except (OSError, ValueError):
        return None


def test_up_shows_waves_refuses_what_cannot_fit_and_down_stops_everything(tmp_path, models):
    rig_path = write_rig(tmp_path, {
        "brain": model_entry(models["gguf"], [0], priority=0),
        "worker": model_entry(models["gguf_b"], [2], priority=10),
        "big": model_entry(models["gguf"], [1], priority=10),
    })
    data = yaml.safe_load(rig_path.read_text())
    data["gpus"]["simulated"][1]["memory_mib"] = 4  # far less than any model needs
    rig_path.write_text(yaml.safe_dump(data))
    try:
        up = llamarig(rig_path, "up", "--timeout", "120")
        out = up.stdout
        assert "wave 1: starting brain" in out, out
        assert "wave 2: starting worker" in out and "big not started" in out, out
        assert "needs" in out and "on GPU 1" in out and "free" in out, out
        assert "wave 2: done in" in out, out
        assert up.returncode == 1, "a required model failed: status must say so"  # big is required
        status = llamarig(rig_path, "status")
        lines = status.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), status.stdout
        rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line.strip() and not line[0].isdigit()}
        assert rows["brain"] == rows["worker"] == "ready" and rows["big"] == "failed", status.stdout
        assert any(line.startswith("1 ") and "big" in line for line in lines), status.stdout  # GPU 1's line
        wide = llamarig(rig_path, "status", "--wide").stdout
        assert any(len(line) > 80 for line in wide.splitlines()), wide  # big's whole reason
        units = json.loads(llamarig(rig_path, "status", "--json").stdout)["units"]
        assert {u["name"] for u in units} == {"brain", "worker", "big"}
        pid = supervisord_pid(tmp_path)
        servers = {p.pid for p in psutil.Process(pid).children(recursive=True)}
        down = llamarig(rig_path, "down")
        assert down.returncode == 0, down.stderr
        assert not alive(pid), "`llamarig down` returned before supervisord exited"
        assert "supervisord stopped" in down.stdout, down.stdout
        assert not [p for p in servers if psutil.pid_exists(p)], "a server outlived `llamarig down`"
    finally:  # after a failure: every program has its own process group, so kill each process
        pid = supervisord_pid(tmp_path)
        if pid and psutil.pid_exists(pid):
            for p in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:
                p.kill()


def test_sigterm_to_supervisord_lets_a_stream_finish_then_everything_exits(one_model):
    b = one_model(context_size=4096, sections={"lifecycle": {"health_interval_s": 0.1}})  # ticks during the drain
    tree = b.tree()
    assert len(tree) >= 3  # supervisord, compute API, server
    body = {"model": "m", "prompt": "hi", "max_tokens": 1500, "stream": True, "ignore_eos": True}
    events, done = 0, False
    with httpx.stream("POST", b.api + "/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        b.proc.send_signal(signal.SIGTERM)
        for line in lines:
            done = done or line == "data: [DONE]"
            events += line.startswith("data: ")
    assert done and events > 100, "the stream was cut by the shutdown"
    b.proc.wait(timeout=60)
    left = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes outlived supervisord: {left}"
    # While the stream drained, health ticks met supervisord stopping everything: expected, so
    # not an error an on-call person reads in the log after every clean stop.
    records = [json.loads(line) for line in (b.rig.run_dir / "logs" / "compute-api.log").read_text().splitlines()
               if line.startswith("{")]
    assert any(r["msg"] == "health tick: supervisord is shutting down" for r in records)
    errors = [r["msg"] for r in records if r["level"] in ("error", "critical")]
    assert not errors, errors
