"""Operator commands that talk to a running compute API: status, up, stop, start, reset, down."""
from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console

from llamarig import status_view
from llamarig.backend.daemon import Daemon
from llamarig.backend.supervisor import wait_running, with_our_bin
from llamarig.backend.supervisor_conf import socket_path
from llamarig.shared.errors import LlamarigError, SupervisorError
from llamarig.shared.keys import load_keys
from llamarig.shared.rig import Rig
from llamarig.shared.tls import api_url, loopback_trust

console = Console()


class Api:
    """The compute API's admin routes, over the standard library's HTTP client: `llamarig up`
    runs beside the boot it shows, and importing httpx there took 0.1 s of CPU from it on 2
    cores (measured)."""

    def __init__(self, rig: Rig):
        host = "127.0.0.1" if rig.api.host in ("0.0.0.0", "::") else rig.api.host
        self.base_url = api_url(rig, host)
        self.trust = loopback_trust(rig)
        self.headers = {}
        operator = load_keys(rig).operator  # never printed: an error names the field, not the key
        if operator:
            self.headers["Authorization"] = "Bearer " + operator.decode()

    def _context(self):
        return self.trust if isinstance(self.trust, ssl.SSLContext) else None  # (None: plain HTTP)

    def _call(self, method: str, path: str, timeout: float, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        headers = self.headers | ({"Content-Type": "application/json"} if data else {})
        request = urllib.request.Request(self.base_url + path, method=method, headers=headers, data=data)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._context()) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:  # an answer, with an error body
            with e:
                return e.code, json.load(e)
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
            hint = "; is the bundle up? `llamarig up`" if method == "GET" else ""
            raise LlamarigError("api_unreachable", f"compute API at {self.base_url} did not answer "
                                f"({type(e).__name__}){hint}") from None

    def get(self, path: str) -> dict:
        status, body = self._call("GET", path, 30)
        if status >= 400 and isinstance(body.get("error"), dict):
            raise LlamarigError(body["error"].get("code", "api_error"), body["error"].get("message", str(body)))
        return body

    def post(self, path: str, timeout: float = 30) -> dict:
        return self.post_json(path, None, timeout)

    def post_json(self, path: str, body: dict | None, timeout: float = 30) -> dict:
        status, body = self._call("POST", path, timeout, body)
        if status >= 400:
            err = body.get("error", {})
            raise LlamarigError(err.get("code", "api_error"), err.get("message", str(body)))
        return body


def status(rig: Rig, wide: bool = False, as_json: bool = False) -> int:
    api = Api(rig)
    body = api.get("/admin/units")
    work = _work(api) if rig.work else None
    if as_json:
        print(json.dumps(body | ({"work": work} if work else {}), indent=2))
    else:
        print(status_view.render(body, wide) + (f"\n\n{status_view.render_work(work, wide)}" if work else ""))
    units = body["units"]
    return 0 if all(u["state"] in ("ready", "busy") for u in units if u["required"] and u["warm"]) else 1


def _work(api: Api) -> dict:
    """GET /admin/work, or the error it answered (Temporal down is shown, not raised)."""
    try:
        return api.get("/admin/work")
    except LlamarigError as e:
        return {"error": {"code": e.code, "message": e.reason}}


def up(rig: Rig, daemon: Daemon, started: bool, timeout: float) -> int:
    """Show each wave of a boot (supervisord was started by the caller, if `started`), end
    with the status table; or, as soon as the bundle cannot come up (supervisord gone, a program
    that must run failing), the cause and exit status 1."""
    if started:
        console.print(f"supervisord started (pid {daemon.pid()}; {daemon.socket.parent}/supervisord.conf)")
    api, shown, deadline = Api(rig), set(), time.monotonic() + timeout
    with console.status("waiting for the compute API and the waves…"):
        while time.monotonic() < deadline:
            failure = daemon.boot_failure()
            if failure:
                return _boot_failed(failure)
            if _booted(api, shown) and daemon.always_on_running():
                break
            time.sleep(0.2)
    return status(rig)


def _booted(api: Api, shown: set) -> bool:
    try:
        body = api.get("/admin/units")
    except LlamarigError:
        return False
    for w in body["boot_waves"]:
        _print_wave(w, shown)
    return body["booted"]


def _boot_failed(failure: str) -> int:
    print(f"llamarig up: the bundle cannot come up: {failure}\nWhat did start keeps running: `llamarig down` "
          "stops it.", flush=True)  # (not rich's console: it would wrap the log lines)
    return 1


def _print_wave(w: dict, shown: set) -> None:
    """A wave's start (with what it refused) and its end, each once; a wave that began and ended
    between two polls still shows both."""
    if (w["wave"], False) not in shown:
        shown.add((w["wave"], False))
        console.print(f"wave {w['wave']}: starting {', '.join(w['start']) or 'nothing'}")
        for name, why in w["refused"].items():
            console.print(f"  [red]{name} not started[/]: {why}")
    if w["done_at"] is not None and (w["wave"], True) not in shown:
        shown.add((w["wave"], True))
        console.print(f"wave {w['wave']}: done in {w['done_at'] - w['started_at']:.1f} s")


def act(rig: Rig, name: str, action: str, drain: bool = True) -> int:
    body = Api(rig).post(f"/admin/units/{name}/{action}?drain={'true' if drain else 'false'}")
    if action == "reload":
        console.print(f"reload {name}: {body['how']} ({body['why']}); {body['from']} -> {body['to']}")
        console.print(f"follow it with: llamarig status, or curl the API's /admin/units/{name}")
    else:
        console.print(f"{action} {name}: accepted")
    return 0


def down(rig: Rig) -> int:
    """Drain and stop every unit (verified), then shut supervisord down and wait for it to exit
    (at most the sum of its programs' stop waits); exit status 1 if it is still stopping then."""
    daemon = Daemon(rig)
    pid = daemon.pid()
    if pid is None and daemon.state() is None:
        console.print(f"supervisord of this rig is not running ({daemon.socket}): nothing to stop")
        return 0
    try:
        body = Api(rig).post("/admin/down", timeout=rig.timeouts.stop_budget_s + 30)
        print(status_view.render({"units": body["units"]}))
    except LlamarigError as e:
        console.print(f"[yellow]compute API: {e.reason}; stopping through supervisord only[/]")
    try:
        daemon.supervisor.shutdown()
    except SupervisorError as e:
        console.print(f"supervisord: {e.reason}")
    budget = daemon.stop_budget_s()
    console.print(f"supervisord (pid {pid}) stopping: waiting up to {budget:.0f} s for it to exit")
    if daemon.wait_gone(budget):
        console.print("supervisord stopped")
        return 0
    console.print(f"[red]supervisord (pid {pid}) is still stopping after {budget:.0f} s[/]: it goes on; "
                  f"`llamarig up` waits for it (its log: {daemon.logs}/supervisord.log)")
    return 1


def exec_supervisord(rig: Rig, conf: Path) -> None:
    """Foreground supervisord (PID 1 in the image): make its folders, then exec. A forked
    child nudges it (see supervisor.wait_running) and exits; supervisord reaps it, which its
    log shows once at start as "reaped unknown pid ... (exit status 0)"."""
    (rig.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    os.environ["PATH"] = with_our_bin(os.environ.get("PATH", ""))
    if os.fork() == 0:
        try:
            wait_running(socket_path(rig))
        finally:
            os._exit(0)
    os.execvp("supervisord", ["supervisord", "-c", str(conf)])
    sys.exit(1)
