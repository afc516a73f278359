"""A real Docker daemon for the image tests: Debian's dockerd, started by the test session with
folders of its own and no network plumbing (see NOTES.md), stopped at its end; the CPU image
built on a debootstrap base with the engines this host already built."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import wait_for

REPO = Path(__file__).resolve().parent.parent
# Kept between runs: the base image and the build's layer cache make a rebuild take seconds.
DATA_ROOT = Path(os.environ.get("LLAMARIG_DOCKER_ROOT", Path.home() / ".cache" / "llamarig" / "docker"))
TEST_LABEL = "llamarig.test=1"
CPU_BUILD_ARGS = ["--build-arg", "BUILD_BASE=local/debian:bookworm", "--build-arg", "RUN_BASE=local/debian:bookworm",
                  "--build-arg", "ENGINE=cpu", "--build-arg", "ENGINES_FROM=prebuilt"]


@dataclass
class Docker:
    """The docker client pointed at the session's daemon."""
    socket: Path
    proc: subprocess.Popen | None = None
    env: dict = field(init=False)

    def __post_init__(self):
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                                input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {result.returncode}: {result.stderr.strip()}")
        return result

    def answers(self) -> bool:
        return self("version", "--format", "{{.Server.Version}}", timeout=10, check=False).returncode == 0

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", name).stdout)[0]

    def script(self, path: str, timeout: float = 900) -> str:
        """Run one of runtime/'s scripts against this daemon; its last line of output."""
        result = subprocess.run([str(REPO / path)], capture_output=True, text=True, timeout=timeout, env=self.env)
        if result.returncode != 0:
            raise AssertionError(f"{path} -> {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout.strip().splitlines()[-1]


def start_dockerd() -> Docker:
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        raise RuntimeError("the image tests need root and Debian's docker.io: runtime/setup.sh --with-docker")
    run = Path(tempfile.mkdtemp(prefix="lrd-"))  # short: a unix socket's path has 108 bytes at most
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    log = open(run / "dockerd.log", "wb")
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(DATA_ROOT), "--exec-root", str(run / "exec"), "--pidfile", str(run / "pid"),
         "--host", f"unix://{run / 'sock'}", "--iptables=false", "--ip-masq=false", "--storage-driver=overlay2"],
        stdout=log, stderr=log, start_new_session=True)
    docker = Docker(run / "sock", proc)
    try:
        wait_for(lambda: proc.poll() is not None or docker.answers(), 60, "dockerd to answer")
    except AssertionError:
        stop_dockerd(docker)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"dockerd exited {proc.returncode}: {(run / 'dockerd.log').read_text()[-2000:]}")
    return docker


def stop_dockerd(docker: Docker) -> None:
    leftovers = docker("ps", "-aq", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
    if leftovers:
        docker("rm", "-f", "-v", *leftovers, check=False)
    docker("network", "prune", "-f", "--filter", f"label={TEST_LABEL}", check=False)
    docker("image", "prune", "-f", check=False)  # earlier builds' layers; the current image's stay cached
    docker.proc.send_signal(signal.SIGTERM)
    try:
        docker.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(docker.proc.pid, signal.SIGKILL)
        docker.proc.wait(timeout=10)
    shutil.rmtree(docker.socket.parent, ignore_errors=True)


@dataclass
class Build:
    tag: str
    seconds: float
    size_bytes: int


def build_cpu_image(docker: Docker, tag: str) -> Build:
    """The README's CPU build: the base, prebuilt/, then `docker build` of the one Dockerfile."""
    docker.script("runtime/docker-base.sh")
    docker.script("runtime/image-prebuilt.sh")
    began = time.monotonic()
    docker("build", "--network", "host", "-t", tag, *CPU_BUILD_ARGS, str(REPO), timeout=1800)
    took = time.monotonic() - began
    return Build(tag, took, docker.inspect(tag)["Size"])


def temporal_beside() -> tuple[list[str], list[str]]:
    """What stands in for the cluster's Temporal (no Temporal image can be pulled here): the
    pinned CLI's dev server, the binary the bundle embeds, on the Debian base, listening on the
    container's network with the metrics port the cluster's (9091) and the embedded server's
    dynamic config. (bind mount, command)."""
    from llamarig.shared.rig import load_rig
    from llamarig.work.cli_cmds import temporal_bin
    from llamarig.work.engine import embedded_command

    work = load_rig(REPO / "runtime" / "rig.yaml").work
    work = work.model_copy(update={"embedded": work.embedded.model_copy(update={"ui_port": 0, "metrics_port": 9091})})
    command = embedded_command(work, "/usr/local/bin/temporal", "/tmp/temporal.db", "default")
    command[command.index("127.0.0.1")] = "0.0.0.0"
    return [f"{temporal_bin()}:/usr/local/bin/temporal:ro"], command


def build_monitoring_image(docker: Docker, tag: str = "local/prometheus-debian:bookworm") -> str:
    """Prometheus and Alertmanager from Debian's packages (no prom/* image can be pulled here), on
    the Debian base; each service names its binary as the entrypoint."""
    dockerfile = ("FROM local/debian:bookworm\n"
                  "RUN apt-get update && apt-get install -y --no-install-recommends prometheus "
                  "prometheus-alertmanager && rm -rf /var/lib/apt/lists/*\nWORKDIR /var/lib/monitoring\n")
    docker("build", "--network", "host", "-t", tag, "-", input=dockerfile, timeout=900)
    return tag
