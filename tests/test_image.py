"""The image built and run for real: the CPU build of the one Dockerfile, run by a real dockerd
with the generated models mounted read-only and a run volume. The tests share one container and
run in file order: client routes, supervisorctl, a plan run by the image's workers through a
Temporal beside it, `docker kill` and a new run on the same volumes, then `docker stop` with a
stream in flight. The refusals each run a container of their own."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import httpx
import openai
import psutil
import pytest
import yaml

from dockerd import REPO, TEST_LABEL, temporal_beside
from helpers import HTTP, free_port, openai_client_round, stream_while, wait_for

pytestmark = pytest.mark.slow

CLIENT, OPERATOR = "client-key-0123456789", "operator-key-0123456789"
KEYS = ["-e", f"LLAMARIG_CLIENT_KEYS={CLIENT}", "-e", f"LLAMARIG_OPERATOR_KEY={OPERATOR}"]
MODELS = REPO / "models"  # made by runtime/setup.sh (`llamarig models make`)
# The workers poll the cluster the image points them at (temporal:7233); no embedded Temporal.
PROGRAMS = {"compute-api", "llama-brain", "llama-worker-1", "llama-worker-2", "llama-worker-3", "work-gpu", "work-cpu",
            "work-watchdog"}
# Whisper and the embeddings model, placed by the planner when their requests wait
PLACEMENTS = {f"{service}@{gpu}" for service in ("whisper", "llama-embed") for gpu in (1, 2, 4)}
USER = 10001  # the image's user


class Container:
    """One named container of the image on a published loopback port, with a run volume that
    outlives it (so a second run meets what the first left)."""

    def __init__(self, docker, image: str, name: str, network: str):
        self.docker, self.image, self.name, self.network = docker, image, name, network
        self.port, self.volume = free_port(), f"{name}-run"
        self.started = 0.0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> None:
        self.started = time.monotonic()
        self.docker("run", "-d", "--name", self.name, "--label", TEST_LABEL, "--stop-timeout", "120",
                    "--network", self.network,
                    "-p", f"127.0.0.1:{self.port}:8000", "-v", f"{MODELS}:/app/models:ro",
                    "-v", f"{self.volume}:/app/run", *KEYS, self.image)

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds from `docker run` to /ready 200."""
        def ready():
            try:
                return HTTP.get(self.api + "/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(ready, timeout, f"{self.name}: /ready = 200", interval=0.2)
        return time.monotonic() - self.started

    def state(self) -> dict:
        return self.docker.inspect(self.name)["State"]

    def exec(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        options = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return self.docker("exec", *options, self.name, *args, check=False)

    def admin(self, path: str, body: dict | None = None) -> dict:
        """An operator route: GET, or POST of a JSON body."""
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        if body is None:
            return HTTP.get(self.api + path, headers=headers, timeout=10).json()
        return HTTP.post(self.api + path, headers=headers, json=body, timeout=30).json()

    def logs(self) -> str:
        result = self.docker("logs", self.name)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def cluster(docker):
    """Temporal beside the image on a network of their own, answering as `temporal` as in
    docker-compose.yml (dockerd.temporal_beside). Yields the network's name."""
    network, name = f"llamarig-test-{os.getpid()}", f"llamarig-test-temporal-{os.getpid()}"
    docker("network", "create", "--label", TEST_LABEL, network)
    mounts, command = temporal_beside()
    docker("run", "-d", "--name", name, "--label", TEST_LABEL, "--network", network, "--network-alias", "temporal",
           *[f"--volume={m}" for m in mounts], "local/debian:bookworm", *command)
    yield network
    docker("rm", "-f", name, check=False)
    docker("network", "rm", network, check=False)


@pytest.fixture(scope="module")
def box(docker, image, cluster, report):
    c = Container(docker, image.tag, f"llamarig-test-{os.getpid()}", cluster)
    c.run()
    ready = c.wait_ready()
    report(f"image {image.tag}: {image.size_bytes / 2**20:.0f} MiB, built in {image.seconds:.0f} s; "
           f"docker run to /ready 200: {ready:.1f} s")
    yield c
    docker("rm", "-f", c.name, check=False)
    docker("volume", "rm", c.volume, check=False)


def test_the_health_check_turns_healthy(box, report):
    wait_for(lambda: box.state()["Health"]["Status"] == "healthy", 60, "docker's health check: healthy", interval=0.5)
    report(f"docker run to healthy: {time.monotonic() - box.started:.1f} s (the check runs every 10 s)")
    assert HTTP.get(box.api + "/ready", timeout=10).status_code == 200


def test_the_openai_client_gets_every_kind_of_answer_with_a_key(box, wav):
    openai_client_round(box.api, CLIENT, "worker-1", "brain", wav)
    assert HTTP.get(box.api + "/v1/models", timeout=10).status_code == 401


def test_it_runs_unprivileged_with_the_models_read_only(box):
    assert box.exec("id", "-u").stdout.strip() == str(USER)
    assert "Read-only file system" in box.exec("touch", "/app/models/x").stderr
    assert box.exec("touch", "/app/run/x").returncode == 0


def _status(box) -> dict[str, str]:
    out = box.exec("supervisorctl", "status").stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def test_supervisorctl_status_names_every_program_running(box):
    # supervisord says RUNNING once a program has lived startsecs (the launch gate's whole wait).
    status = wait_for(lambda: (s := _status(box)) and all(s.get(p) == "RUNNING" for p in PROGRAMS) and s,
                      90, "every program RUNNING", interval=1)
    assert {p for p, state in status.items() if p.endswith("_green")} == {f"llama-{m}_green" for m in
                                                                          ("brain", "worker-1", "worker-2", "worker-3")}
    assert all(state == "STOPPED" for p, state in status.items() if p.endswith("_green"))
    assert PLACEMENTS <= set(status) and "temporal" not in status, status
    # The operator key comes from the container's environment; COLUMNS as a terminal of `docker exec -it` gives.
    llamarig_status = box.exec("llamarig", "status", env={"COLUMNS": "200"})
    assert llamarig_status.returncode == 0 and "worker-3" in llamarig_status.stdout, llamarig_status.stderr


def test_the_image_s_workers_run_the_demo_plan_through_temporal_beside_it(box, report):
    """runtime/plans/demo.yaml (a command, Whisper, a worker LLM, embeddings, a command) submitted
    inside the container, as the README says, and run by its work-cpu and work-gpu."""
    started = time.monotonic()
    done = box.exec("llamarig", "submit", "runtime/plans/demo.yaml", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    view = box.admin(f"/admin/plans/{done.stdout.split()[1]}")
    report(f"the demo plan in the image, submit to succeeded: {time.monotonic() - started:.1f} s")
    tasks = view["tasks"]
    assert {t["state"] for t in tasks.values()} == {"succeeded"}, tasks
    assert "work-gpu" in tasks["words"]["result"]["worker"] and "work-cpu" in tasks["report"]["result"]["worker"]
    out = box.exec("cat", tasks["report"]["result"]["output"])
    assert out.returncode == 0, (out.stderr, tasks["report"])
    summary, vectors = out.stdout.splitlines()[0], out.stdout.splitlines()[-1]
    assert summary.startswith("summary: ") and int(vectors.split()[1]) > 100, out.stdout


def test_supervisorctl_restart_of_a_model_is_seen_by_the_lifecycle_manager(box):
    before = box.exec("supervisorctl", "pid", "llama-worker-1").stdout.strip()
    restart = box.exec("supervisorctl", "restart", "llama-worker-1")
    assert "llama-worker-1: started" in restart.stdout, restart.stdout + restart.stderr
    assert box.exec("supervisorctl", "pid", "llama-worker-1").stdout.strip() != before
    # Seen as a new process (a reading between the stop and the start sees it stopped instead).
    wait_for(lambda: any("outside llamarig" in h["reason"] for h in box.admin("/admin/units/worker-1")["history"]),
             30, "the manager to notice the restart")
    wait_for(lambda: box.admin("/admin/units/worker-1")["state"] == "ready", 60, "worker-1 ready again")
    client = openai.OpenAI(base_url=box.api + "/v1", api_key=CLIENT, max_retries=0, timeout=60)
    assert client.completions.create(model="worker-1", prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_after_docker_kill_a_new_run_on_the_same_volumes_comes_back_ready(box, docker, report):
    """And a plan that was running goes on: its engine is the cluster, its files are on the volume."""
    tasks = [{"name": "first", "class": "cpu", "command": "echo one"},
             {"name": "slow", "class": "cpu", "command": "sleep 3; echo two", "depends_on": ["first"]},
             {"name": "last", "class": "cpu", "command": "cat \"$INPUT_SLOW\"", "depends_on": ["slow"],
              "inputs": {"slow": "@slow"}}]
    plan_id = box.admin("/admin/plans", {"plan": {"name": "through-a-kill", "tasks": tasks}})["plan_id"]
    wait_for(lambda: box.admin(f"/admin/plans/{plan_id}")["tasks"]["slow"]["state"] == "running", 30,
             "the slow task to run")
    box.docker("kill", box.name)
    wait_for(lambda: not box.state()["Running"], 30, "the container to die")
    left = docker("run", "--rm", "--entrypoint", "ls", "-v", f"{box.volume}:/app/run", box.image, "/app/run").stdout
    assert "supervisor.sock" in left and "supervisord.pid" in left, left  # what a crash leaves behind
    docker("rm", box.name)
    box.run()
    ready = box.wait_ready()
    report(f"docker run to /ready 200 after docker kill, on the same run volume: {ready:.1f} s")
    # The killed attempt is noticed at the rig's heartbeat timeout (30 s), then runs again.
    view = wait_for(lambda: (v := box.admin(f"/admin/plans/{plan_id}"))["outcome"] != "running" and v, 120,
                    "the plan to end after the kill")
    assert view["outcome"] == "succeeded", view
    attempts = {name: t["attempt"] for name, t in view["tasks"].items()}
    assert attempts == {"first": 1, "slow": 2, "last": 1}, attempts
    report(f"a plan through docker kill and a new run: ended {time.monotonic() - box.started:.1f} s after the run")


def test_docker_stop_lets_a_stream_finish_and_stops_every_program_in_order(box, docker):
    host_pids = {int(p) for p in docker("top", box.name, "-eo", "pid").stdout.split()[1:]}
    assert len(host_pids) >= len(PROGRAMS)
    body = {"model": "worker-2", "prompt": "hi", "max_tokens": 1900, "stream": True, "ignore_eos": True}
    events, done = stream_while(box.api + "/v1/completions", body, lambda: docker("stop", box.name, timeout=180),
                                {"Authorization": f"Bearer {CLIENT}"})
    assert done and events > 100, "the stream was cut by docker stop"
    state = box.state()
    assert not state["Running"] and state["ExitCode"] == 0, state
    log = box.logs()
    assert "received SIGTERM" in log and "SIGKILL" not in log, log[-3000:]
    stopped = [m.group(1) for m in re.finditer(r"stopped: (\S+) ", log)]
    # The watchdog first (a worker that is stopping is not hung), then the workers stop polling
    # (their tasks may call the API), then the API drains.
    assert set(stopped) >= PROGRAMS and stopped[:4] == ["work-watchdog", "work-gpu", "work-cpu", "compute-api"], stopped
    assert not [p for p in host_pids if psutil.pid_exists(p)], "a process of the container outlived it"


# ---- refusals: each one line on stderr and exit status 2, before anything starts -------------
def _refused(docker, image, tmp_path, *args: str) -> str:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    os.chown(run, USER, USER)
    result = docker("run", "--rm", "--label", TEST_LABEL, "-v", f"{run}:/app/run", *args, image.tag, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llamarig: rig_invalid: "), result.stderr
    assert not (run / "supervisor.sock").exists() and not (run / "supervisord.pid").exists()
    return lines[0]


def test_without_keys_on_0_0_0_0_it_refuses(docker, image, tmp_path):
    line = _refused(docker, image, tmp_path, "-v", f"{MODELS}:/app/models:ro")
    assert "api.keys.client_file: api.host is 0.0.0.0" in line and "LLAMARIG_CLIENT_KEYS" in line


def test_without_models_it_refuses(docker, image, tmp_path):
    line = _refused(docker, image, tmp_path, *KEYS)
    assert "the models folder /app/models is empty" in line and "-v /srv/models:/app/models:ro" in line


def test_a_broken_rig_is_refused_naming_the_field(docker, image, tmp_path):
    data = yaml.safe_load((REPO / "runtime" / "rig.yaml").read_text())
    data["api"]["max_body_mib"] = 0
    rig = tmp_path / "rig.yaml"
    rig.write_text(yaml.safe_dump(data))
    line = _refused(docker, image, tmp_path, *KEYS, "-v", f"{MODELS}:/app/models:ro",
                       "-v", f"{rig}:/app/runtime/rig.yaml:ro")
    assert "api.max_body_mib" in line


def test_a_required_model_the_verifier_refuses_is_named(docker, image, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    (models / "worker-2.gguf").write_bytes(b"not a gguf file at all" * 10)
    line = _refused(docker, image, tmp_path, *KEYS, "-v", f"{models}:/app/models:ro")
    assert "models.worker-2.path: " in line and "required: false" in line
    assert "models.brain.path" not in line


def test_a_run_folder_the_user_cannot_write_is_refused(docker, image, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)  # root's, as a host folder mounted without a chown is
    result = docker("run", "--rm", "--label", TEST_LABEL, "-v", f"{locked}:/app/run", *KEYS,
                    "-v", f"{MODELS}:/app/models:ro", image.tag, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"paths.run_dir: /app/run is not writable by uid {USER}" in result.stderr
