"""`llamarig up` and `down` on a rig of its own (not the repository's), as an operator meets them:
the conf rendered into the rig's run folder and found by every command; a supervisord that dies
or a program that must run failing said within seconds, with the log lines giving the cause; a
`down` that returns once supervisord exited; an `up` that waits for a shutdown; every port the rig
needs checked free first; and two rigs that can never share one embedded Temporal."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time

import psutil
import pytest
import yaml

from helpers import (PATH, alive, free_port, free_ports_in_a_row, llamarig, llamarig_started, model_entry, start_bundle, wait_for, work_section,
                     write_rig)
from llamarig.backend import ports
from llamarig.backend.daemon import Daemon
from llamarig.shared.rig import claimed_ports, load_rig

pytestmark = pytest.mark.slow


def _rig(folder, models, **sections):
    folder.mkdir(exist_ok=True)
    return write_rig(folder, {"m": model_entry(models["gguf"], [0])}, **sections)


def _pid(rig_path) -> int | None:
    return Daemon(load_rig(rig_path)).pid()


@contextlib.contextmanager
def brought_down(*rig_paths):
    """`llamarig down` each rig at the end; kill whatever is left of one that does not stop."""
    try:
        yield
    finally:
        for rig_path in rig_paths:
            pid = _pid(rig_path)
            if pid and llamarig(rig_path, "down", timeout=120).returncode != 0 and alive(pid):
                for p in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:
                    p.kill()


def test_up_runs_any_rig_from_its_run_folder_and_down_returns_once_supervisord_exited(tmp_path, models):
    rig_path = _rig(tmp_path / "other", models)
    run = tmp_path / "other" / "run"
    with brought_down(rig_path):
        up = llamarig(rig_path, "up", "--timeout", "120")
        assert up.returncode == 0, up.stdout + up.stderr
        conf = run / "supervisord.conf"
        assert f"{run}/supervisord.conf" in up.stdout and str(rig_path) in conf.read_text()
        status = llamarig(rig_path, "supervisorctl", "status", "compute-api")
        assert "RUNNING" in status.stdout, status.stdout + status.stderr
        plain = subprocess.run(["supervisorctl", "-c", str(conf), "status", "llama-m"], capture_output=True,
                               text=True, env={**os.environ, "PATH": PATH}, timeout=30)
        assert plain.stdout.startswith("llama-m") and plain.stdout.split()[1] in ("RUNNING", "STARTING"), plain.stdout
        pid = _pid(rig_path)
        down = llamarig(rig_path, "down")
        assert down.returncode == 0 and "supervisord stopped" in down.stdout, down.stdout + down.stderr
        assert not alive(pid), "`llamarig down` returned before supervisord exited"
        again = llamarig(rig_path, "down")
        assert again.returncode == 0 and "not running" in again.stdout, again.stdout
        up = llamarig(rig_path, "up", "--timeout", "120")  # at once: nothing of the old one is in the way
        assert up.returncode == 0 and _pid(rig_path) not in (None, pid), up.stdout + up.stderr


def test_up_waits_for_a_supervisord_still_shutting_down_then_starts(tmp_path, models):
    """The server stopped by SIGSTOP holds supervisord's shutdown for its stopwaitsecs (then SIGKILL)."""
    rig_path = _rig(tmp_path, models)
    with brought_down(rig_path):
        assert llamarig(rig_path, "up", "--timeout", "120").returncode == 0
        daemon = Daemon(load_rig(rig_path))
        old = daemon.pid()
        server = int(llamarig(rig_path, "supervisorctl", "pid", "llama-m").stdout)
        os.kill(server, signal.SIGSTOP)
        daemon.supervisor.shutdown()
        assert daemon.state() == "SHUTDOWN"
        up = llamarig(rig_path, "up", "--timeout", "120")
        assert "is still shutting down: waiting up to" in up.stdout, up.stdout + up.stderr
        assert up.returncode == 0 and not alive(old) and daemon.pid() not in (None, old), up.stdout
        assert not alive(server)


def test_down_says_when_supervisord_is_still_stopping_and_up_does_not_start_beside_it(tmp_path, models):
    """A supervisord that does not exit (a stand-in process of that name with the rig's pid file):
    `down` waits its budget, then says so with exit status 1; `up` refuses to start a second one."""
    rig_path = _rig(tmp_path, models, timeouts={"stop_s": 1, "drain_s": 1})
    run = tmp_path / "run"
    run.mkdir()
    stand_in = subprocess.Popen(["bash", "-c", "exec -a supervisord sleep 300"])
    try:
        wait_for(lambda: psutil.Process(stand_in.pid).cmdline()[:1] == ["supervisord"], 10, "the stand-in")
        (run / "supervisord.pid").write_text(str(stand_in.pid))
        budget = Daemon(load_rig(rig_path)).stop_budget_s()
        began = time.monotonic()
        down = llamarig(rig_path, "down")
        took = time.monotonic() - began
        assert down.returncode == 1 and f"waiting up to {budget:.0f} s" in down.stdout, down.stdout
        assert f"still stopping after {budget:.0f} s" in down.stdout and budget <= took < budget + 15, down.stdout
        began = time.monotonic()
        up = llamarig(rig_path, "up", "--timeout", "60")
        assert up.returncode == 2 and "supervisord_stopping" in up.stderr and "nothing started" in up.stderr
        assert not (run / "supervisor.sock").exists()
    finally:
        stand_in.kill()
        stand_in.wait()


def test_up_says_at_once_why_supervisord_exited(tmp_path, models):
    rig_path = _rig(tmp_path, models)
    (tmp_path / "run" / "logs" / "supervisord.log").mkdir(parents=True)  # supervisord cannot open its log
    began = time.monotonic()
    up = llamarig(rig_path, "up", "--timeout", "120")
    assert up.returncode == 2 and time.monotonic() - began < 20
    assert "supervisord_failed: supervisord exited (status 1)" in up.stderr, up.stderr
    assert "IsADirectoryError" in up.stderr and "supervisord.out" in up.stderr, up.stderr


def test_up_says_at_once_why_a_program_that_must_run_fails(tmp_path, models):
    """gpus.source nvml where NVML finds no GPU: the compute API refuses to start, again and again."""
    rig_path = _rig(tmp_path, models)
    data = yaml.safe_load(rig_path.read_text())
    data["gpus"]["source"] = "nvml"
    rig_path.write_text(yaml.safe_dump(data))
    with brought_down(rig_path):
        began = time.monotonic()
        up = llamarig(rig_path, "up", "--timeout", "120")
        assert up.returncode == 1 and time.monotonic() - began < 30, up.stdout + up.stderr
        line = next(line for line in up.stdout.splitlines() if line.startswith("llamarig up: the bundle cannot"))
        assert "compute-api is BACKOFF" in line or "compute-api is FATAL" in line, up.stdout
        assert "nvml_unavailable" in up.stdout and "`llamarig down` stops it" in up.stdout, up.stdout


def test_every_port_the_rig_claims_is_checked_and_named(tmp_path, models):
    """Each port of a rig with every kind (API, model, swap, placements of an embeddings model and of
    Whisper, the embedded Temporal's three, the workers' metrics), taken in turn by this process."""
    rig_path = write_rig(tmp_path, {
        "m": model_entry(models["gguf"], [0], swap_port=free_port()),
        "embed": model_entry(models["gguf"], [1], placements=[1, 2], embeddings=True, port=free_ports_in_a_row(2))},
        whisper={"model_dir": str(models["whisper"]), "gpus": [1, 2], "port": free_ports_in_a_row(2)},
        work=work_section(embedded={"port": free_port(), "ui_port": free_port(), "metrics_port": free_port()},
                          metrics_port_gpu=free_port(), metrics_port_cpu=free_port(), cpu_processes=2))
    rig = load_rig(rig_path)
    claims = claimed_ports(rig)
    fields = {field for _, field in claims}
    assert {"api.port", "models.m.port", "models.m.swap_port", "models.embed.port",
            "models.embed.port (+1, the placement on GPU 2)", "whisper.port", "whisper.port (+1, the placement on GPU 2)",
            "work.embedded.port", "work.embedded.ui_port", "work.embedded.metrics_port", "work.metrics_port_gpu",
            "work.metrics_port_cpu", "work.metrics_port_cpu (+1, cpu_processes)"} == fields, fields
    assert ports.taken(rig) == []
    for port, field in claims:
        with socket.socket() as held:
            held.bind(("127.0.0.1", port))
            held.listen()
            problems = ports.taken(rig)
        assert len(problems) == 1 and problems[0].startswith(f"{field}: port {port} on 127.0.0.1 is already in use "
                                                             f"by pid {os.getpid()}"), (field, problems)


def test_up_refuses_a_taken_port_before_anything_starts(tmp_path, models):
    rig_path = _rig(tmp_path, models)
    port = load_rig(rig_path).models["m"].port
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        up = llamarig(rig_path, "up", "--timeout", "60")
    assert up.returncode == 2 and len(up.stderr.strip().splitlines()) == 1, up.stderr
    assert f"models.m.port: port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in up.stderr
    assert _pid(rig_path) is None and not (tmp_path / "run" / "supervisor.sock").exists()


def test_two_rigs_never_share_an_embedded_temporal(tmp_path, models):
    """Rig b is given rig a's embedded port. `up` refuses it, naming a's server. Started anyway (as
    two rigs started at the same moment would be), b's Temporal cannot bind, and b's workers and
    API refuse a's server (it has not b's namespace): a's queues are polled by a's workers only."""
    a = _rig(tmp_path / "a", models, work=work_section())
    b_work = work_section(embedded={"port": load_rig(a).work.embedded.port})
    b = _rig(tmp_path / "b", models, work=b_work)
    with brought_down(a):
        up = llamarig(a, "up", "--timeout", "120")
        assert up.returncode == 0, up.stdout + up.stderr
        refused = llamarig(b, "up", "--timeout", "60")
        assert refused.returncode == 2 and "work.embedded.port: port" in refused.stderr, refused.stderr
        assert "temporal server start-dev" in refused.stderr and str(tmp_path / "a" / "run") in refused.stderr
        bundle = start_bundle(tmp_path / "b", b)  # past the check
        try:
            log = bundle.rig.run_dir / "logs" / "work-cpu.log"
            wait_for(lambda: log.exists() and "is not this rig's embedded server" in log.read_text(), 60,
                     "b's cpu worker to refuse a's Temporal")
            wait_for(bundle.up, 60, "b's compute API to answer")  # (it may start after the workers)
            answer = bundle.post("/admin/plans", json={"plan": {"name": "x", "tasks": [
                {"name": "t", "class": "cpu", "command": "true"}]}})
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "temporal_not_ours", answer.text
            work = llamarig(a, "status", "--json")
            pollers = [p["identity"] for q in json.loads(work.stdout)["work"]["queues"].values()
                       for p in q["pollers"]]
            a_port = load_rig(a).api.port
            assert pollers and all(f":{a_port}:" in who for who in pollers), pollers
        finally:
            bundle.ctl("shutdown")
            bundle.proc.wait(timeout=60)


def test_a_rig_started_in_the_foreground_is_refused_while_it_runs(tmp_path, models):
    """`llamarig run` (the image's way) beside the same rig's running supervisord."""
    rig_path = _rig(tmp_path, models)
    with brought_down(rig_path):
        assert llamarig(rig_path, "up", "--timeout", "120").returncode == 0
        run = llamarig_started(rig_path, "run")
        out, err = run.communicate(timeout=60)
        assert run.returncode == 2 and "this rig's supervisord already runs" in err, err
