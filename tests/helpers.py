"""Test helpers: free ports, polling with deadlines, and a real bundle under supervisord."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

from llamarig.backend.supervisor_conf import render
from llamarig.backend.supervisor import wait_running, with_our_bin
from llamarig.backend.supervisor_conf import socket_path
from llamarig.shared.rig import load_rig
from llamarig.shared.tls import api_url, loopback_trust

PATH = with_our_bin(os.environ.get("PATH", ""))
# One client for every call: httpx.get makes a client (and its SSL context) per call, 28 ms of
# CPU each (measured), which polling loops took from the bundles under test. No keep-alive, as
# with httpx.get: a test must not meet a connection that a restarted API closed.
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


_HANDED_OUT: set[int] = set()
_RANDOM = random.Random()  # (its own: a test that seeds the global one must not repeat ports)


def _below_ephemeral() -> tuple[int, int]:
    """[10000, the first ephemeral port): Linux hands client connections ports from
    ip_local_port_range (32768 to 60999 by default), never from below it."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return 10000, max(first, 12000)


PORTS = _below_ephemeral()


def free_port() -> int:
    """A loopback port free now, not handed out before in this process, and below the kernel's
    ephemeral range: a port the kernel handed out (bind to 0) could be taken again by any client
    connection before the server meant to listen on it started (seen in CI: Whisper's port, taken
    by a connection of the bundle, so Whisper exited with EADDRINUSE and a request got a 503)."""
    low, high = PORTS
    while True:
        port = _RANDOM.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def free_ports_in_a_row(n: int) -> int:
    """The first of n consecutive loopback ports free now (Whisper's placements take port + i)."""
    while True:
        first = free_port()
        if first + n > PORTS[1]:
            continue  # (the rest would be in the ephemeral range)
        try:
            for port in range(first + 1, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED_OUT.update(range(first, first + n))
        return first


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check()` until it returns a truthy value; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def alive(pid: int | None) -> bool:
    """The process runs (a zombie, left to a parent that does not reap it, does not)."""
    try:
        return bool(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def llama_server_bin() -> str:
    found = shutil.which("llama-server", path=PATH)
    if not found:
        raise RuntimeError("llama-server is not on PATH: run runtime/setup.sh")
    return found


def fake_server(folder: Path) -> str:
    """tests/fake_server.py as an executable a rig can name as engines.llama_server."""
    script = folder / "fake-llama-server"
    script.write_text(f"#!{sys.executable}\n" + (Path(__file__).parent / "fake_server.py").read_text())
    script.chmod(0o755)
    return str(script)


@contextlib.contextmanager
def llama_server(model: Path, folder: Path, *args: str, context: int = 512):
    """A bare llama-server of the tiny model on a free loopback port (args: more flags); yields its URL."""
    port = free_port()
    with open(folder / f"llama-server-{port}.log", "wb") as log:
        proc = subprocess.Popen([llama_server_bin(), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                                 "-c", str(context), "-t", "1", *args], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _answers(url + "/health"), 60, "llama-server to load")
        assert proc.poll() is None, (folder / f"llama-server-{port}.log").read_text()[-2000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def write_rig(folder: Path, models: dict, whisper: dict | None = None, **sections) -> Path:
    """A rig file for tests: simulated GPUs, free ports, short timeouts (overridable)."""
    data = {
        "gpus": {"source": "simulated", "simulated": [
            {"index": i, "name": "Simulated GPU 6GB", "memory_mib": 6144} for i in range(5)]},
        "models": models,
        "api": {"host": "127.0.0.1", "port": free_port()},
        "timeouts": {"model_wait_s": 2, "settle_s": 0.2, "start_s": 60, "stop_s": 5, "drain_s": 10},
        "lifecycle": {"health_interval_s": 0.5, "probe_timeout_s": 2, "failure_threshold": 3,
                      "backoff_initial_s": 0.5, "backoff_max_s": 2, "vram_settle_s": 1},
        "engines": {"llama_server": llama_server_bin(), "threads": 1},
    }
    if whisper:
        data["whisper"] = whisper
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path = folder / "rig.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def model_entry(path: Path, gpus: list[int], engine: str = "llama-server", **more) -> dict:
    return {"path": str(path), "engine": engine, "gpus": gpus, "context_size": 256, "port": free_port(), **more}


@dataclass
class Bundle:
    folder: Path
    rig_path: Path
    conf: Path
    proc: subprocess.Popen
    key: str | None = None  # sent as the bearer key by get and post (the operator key, where the rig has keys)

    @property
    def rig(self):
        return load_rig(self.rig_path)

    @property
    def api(self) -> str:
        return api_url(self.rig)  # https where the rig has a certificate (api.tls)

    @property
    def http(self) -> httpx.Client:
        """The shared client, or one trusting the rig's CA where it serves HTTPS."""
        trust = loopback_trust(self.rig)
        if trust is True:
            return HTTP
        return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), verify=trust)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["supervisorctl", "-c", str(self.conf), *args], capture_output=True, text=True,
                              env={**os.environ, "PATH": PATH}, timeout=60)

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).stdout.strip() or 0)

    def _headers(self, kw: dict) -> dict:
        auth = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return {**auth, **kw.pop("headers", {})}

    def get(self, path: str, **kw) -> httpx.Response:
        return self.http.get(self.api + path, timeout=kw.pop("timeout", 30), headers=self._headers(kw), **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.http.post(self.api + path, timeout=kw.pop("timeout", 60), headers=self._headers(kw), **kw)

    def delete(self, path: str, **kw) -> httpx.Response:
        return self.http.delete(self.api + path, timeout=kw.pop("timeout", 30), headers=self._headers(kw), **kw)

    def unit(self, name: str) -> dict:
        return self.get(f"/admin/units/{name}").json()

    def wait_state(self, name: str, states: set[str], timeout: float = 60) -> dict:
        def in_state():
            try:
                u = self.unit(name)
            except httpx.HTTPError:  # the API is not listening yet
                return None
            return u["state"] in states and u
        return wait_for(in_state, timeout, f"{name} in {states}")

    def stop_start(self, name: str) -> None:
        """One unload/load cycle through the admin API, waiting for each end state."""
        assert self.post(f"/admin/units/{name}/stop").status_code == 202
        self.wait_state(name, {"stopped"}, 60)
        assert self.post(f"/admin/units/{name}/start").status_code == 202
        self.wait_state(name, {"ready"}, 60)

    def up(self) -> bool:
        try:
            return self.get("/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 90) -> dict:
        def ready():
            try:
                r = self.get("/ready", timeout=5)
            except httpx.HTTPError:
                return None
            return r.status_code == 200 and r.json()
        return wait_for(ready, timeout, "/ready = 200", interval=0.2)

    def tree(self) -> set[int]:
        try:
            p = psutil.Process(self.proc.pid)
            return {self.proc.pid} | {c.pid for c in p.children(recursive=True)}
        except psutil.Error:
            return set()

    def shutdown(self) -> set[int]:
        """supervisorctl shutdown; returns the pids of the bundle still alive after it."""
        pids = self.tree()
        self.ctl("shutdown")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}

    def kill(self) -> None:
        """Last-resort clean-up so one failed test does not leave servers for the next."""
        for pid in self.tree():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)


def start_bundle(folder: Path, rig_path: Path, env: dict[str, str] | None = None, key: str | None = None) -> Bundle:
    """supervisord on the rig; `env` is added to its environment (and so its programs')."""
    rig = load_rig(rig_path)
    conf = folder / "supervisord.conf"
    conf.write_text(render(rig, folder))
    (rig.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], cwd=folder,
                            env={**os.environ, "PATH": PATH, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_running(socket_path(rig))
    return Bundle(folder, rig_path, conf, proc, key)


@contextlib.contextmanager
def running_bundle(folder: Path, rig_path: Path, env: dict[str, str] | None = None, key: str | None = None):
    """A bundle for a whole test module, ready when it is handed out; shut down (or killed) after."""
    b = start_bundle(folder, rig_path, env, key)
    try:
        b.wait_ready()
        yield b
    finally:
        if b.shutdown():
            b.kill()


@contextlib.contextmanager
def temporal_cluster(folder: Path):
    """A bare Temporal dev server of the pinned CLI on free loopback ports, standing in for a
    cluster no rig embeds; yields its address."""
    from llamarig.backend.lifecycle.jobs import port_in_use
    from llamarig.work.cli_cmds import temporal_bin

    port = free_port()
    cmd = [temporal_bin(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless",
           "--http-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "error",
           "--db-filename", str(folder / "cluster.db")]
    with open(folder / "cluster.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: proc.poll() is not None or port_in_use(port), 60, "the dev server to listen")
        assert proc.poll() is None, (folder / "cluster.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def edit_model(rig_path, **changes):
    """Change model m's settings in the rig file (as an operator edits it before a reload)."""
    data = yaml.safe_load(rig_path.read_text())
    data["models"]["m"].update(changes)
    rig_path.write_text(yaml.safe_dump(data))


def reload_done(b, timeout=90) -> dict:
    """Model m's reload record once it ended."""
    return wait_for(lambda: (r := b.unit("m")["reload"]) and r["state"] not in ("starting", "restarting", "draining") and r,
                    timeout, "the reload to end")


def openai_client_round(api: str, key: str, chat_model: str, stream_model: str, wav: Path):
    """What any OpenAI client does with a key: a chat completion, a stream, embeddings (model
    `embed`) and a transcription, each checked; a wrong key refused. Returns the client."""
    import openai
    import pytest

    client = openai.OpenAI(base_url=api + "/v1", api_key=key, max_retries=0, timeout=60)
    chat = client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model=stream_model, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=8, stream=True))
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason is not None
    vectors = client.embeddings.create(model="embed", input=["one", "two words"])
    assert len(vectors.data) == 2 and vectors.data[0].embedding != vectors.data[1].embedding
    with wav.open("rb") as f:
        assert isinstance(client.audio.transcriptions.create(model="whisper-1", file=f).text, str)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api + "/v1", api_key="wrong-key-0123456789", max_retries=0).models.list()
    return client


def stream_while(url: str, body: dict, action, headers: dict | None = None) -> tuple[int, bool]:
    """Stream a completion and, once its first event has arrived, start `action` in a thread;
    read the stream to its end, then wait for the action. (events, whether [DONE] came)."""
    import threading

    events, done = 0, False
    with httpx.stream("POST", url, json=body, timeout=120, headers=headers or {}) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        worker = threading.Thread(target=action)
        worker.start()
        for line in lines:
            done = done or line == "data: [DONE]"
            events += line.startswith("data: ")
    worker.join(timeout=180)
    return events, done


def work_section(**over) -> dict:
    """A rig's work section for tests: its own embedded Temporal, short heartbeats and retries."""
    section = {"embedded": {"port": free_port()}, "heartbeat_timeout_s": 3, "retry_initial_s": 0.5,
               "retry_max_s": 4, "cancel_grace_s": 1, "concurrency": {"cpu": 2, "script": 1, "llm": 2}}
    for key, value in over.items():
        section[key] = {**section[key], **value} if isinstance(value, dict) and key in section else value
    return section


def submit_plan(b, tasks: list[dict], name: str = "t", **params) -> str:
    r = b.post("/admin/plans", json={"plan": {"name": name, "tasks": tasks}}, params=params, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["plan_id"]


def plan_view(b, plan_id: str, timeout: float = 30) -> dict:
    r = b.get(f"/admin/plans/{plan_id}", timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def plan_ended(b, plan_id: str, timeout: float = 90) -> dict:
    """Its outcome known and its workflow closed (so its record is written, and what it taught
    the rig's learned durations)."""
    return wait_for(lambda: (v := plan_view(b, plan_id))["outcome"] != "running" and v.get("status") != "running"
                    and v, timeout, f"plan {plan_id} to end")


def plan_history(rig, plan_id: str) -> list:
    """The plan workflow's history events, read with the SDK (the engine's own record)."""
    import asyncio

    from llamarig.work import engine

    async def fetch():
        client = await engine.connect(rig)
        return [e async for e in client.get_workflow_handle(plan_id).fetch_history_events()]
    return asyncio.run(fetch())


def forget_plan(rig, plan_id: str) -> None:
    """Delete a plan's workflow from Temporal, as its retention ending does."""
    import asyncio

    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest

    from llamarig.work import engine

    async def delete():
        client = await engine.connect(rig)
        await client.workflow_service.delete_workflow_execution(DeleteWorkflowExecutionRequest(
            namespace=client.namespace, workflow_execution=WorkflowExecution(workflow_id=plan_id)))
    asyncio.run(delete())


def llamarig(rig_path, *args, timeout=180) -> subprocess.CompletedProcess:
    """The `llamarig` command on a rig, as an operator runs it (this Python, the bundle's PATH)."""
    argv, env = _cli(rig_path, args)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def llamarig_started(rig_path, *args) -> subprocess.Popen:
    """The same, left running (its stdout and stderr piped)."""
    argv, env = _cli(rig_path, args)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli(rig_path, args) -> tuple[list[str], dict]:
    return ([sys.executable, "-m", "llamarig.cli", "--rig", str(rig_path), *args],
            {**os.environ, "PATH": PATH, "COLUMNS": "200"})


def aged(folder: Path, days: float) -> None:
    """Every path under folder (and itself) last changed `days` ago."""
    when = time.time() - days * 86400
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.utime(os.path.join(top, name), (when, when))
    os.utime(folder, (when, when))
