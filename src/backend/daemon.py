"""supervisord as a process, for `llamarig up`, `run` and `down`: its conf rendered from the rig
into the rig's run folder (so every command, and `supervisorctl -c RUN/supervisord.conf`, finds
the bundle of any --rig), its start, a failure at boot noticed and said with the log lines that
give the cause, and its exit waited for."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import time
from pathlib import Path

from llamarig.backend.supervisor import SupervisorClient, wait_running, with_our_bin
from llamarig.backend.supervisor_conf import always_on, render, socket_path
from llamarig.shared.errors import LlamarigError, SupervisorError
from llamarig.shared.rig import Rig

FAILING = {"FATAL", "BACKOFF"}  # a program that must run, failing to
TAIL_LINES = 6
ANSWER_S = 5.0  # a supervisord that does not answer a call in this long counts as not answering


def conf_path(rig: Rig) -> Path:
    return rig.run_dir / "supervisord.conf"


def write_conf(rig: Rig) -> Path:
    """The rig's supervisord.conf in its run folder, absolute paths: the conf a bundle runs is
    always its rig's (a checked-in render of another rig is never started by mistake)."""
    conf = conf_path(rig)
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(render(rig, None))
    return conf


class Daemon:
    """The rig's supervisord: found by its run folder's pid file and socket."""

    def __init__(self, rig: Rig):
        self.rig, self.socket, self.proc = rig, socket_path(rig), None
        self.supervisor = SupervisorClient(self.socket, ANSWER_S)
        self.logs = rig.run_dir / "logs"
        self.log_starts: dict[Path, int] = {}  # each log's size at our start: its tail says this start's cause

    def pid(self) -> int | None:
        """The pid of the rig's supervisord while it lives (a stale pid file counts as none)."""
        import psutil

        try:
            pid = int((self.rig.run_dir / "supervisord.pid").read_text())
            p = psutil.Process(pid)
            ours = p.status() != psutil.STATUS_ZOMBIE and any("supervisord" in a for a in p.cmdline()[:3])
        except (OSError, ValueError, psutil.Error):
            return None
        return pid if ours else None

    def state(self) -> str | None:
        """supervisord's own state (RUNNING, SHUTDOWN...); None where nothing answers."""
        try:
            return self.supervisor.state()
        except SupervisorError as e:  # (while it shuts down, every call is refused with a fault that says so)
            return "SHUTDOWN" if e.shutting_down else None

    def stop_budget_s(self) -> float:
        """The longest a shutdown may take: supervisord stops one program after another, each
        within its stopwaitsecs (then SIGKILL)."""
        conf = configparser.RawConfigParser()
        conf.read_string(render(self.rig, None))
        waits = [int(conf[s].get("stopwaitsecs", 10)) for s in conf.sections()
                 if s.startswith(("program:", "eventlistener:"))]
        return float(sum(waits) + 5)

    def wait_shutdown(self) -> None:
        """A supervisord of this rig that is there but not RUNNING is shutting down: wait for it
        to exit (its stop budget at most), saying so; raises if it is still there then."""
        if not (self.pid() or self.state()):
            return
        budget = self.stop_budget_s()
        print(f"supervisord of this rig (pid {self.pid()}) is still shutting down: waiting up to {budget:.0f} s "
              "for it to exit", flush=True)
        if not self.wait_gone(budget):
            raise LlamarigError("supervisord_stopping", f"supervisord of this rig (pid {self.pid()}) is still "
                                f"stopping after {budget:.0f} s; nothing started (its log: {self.logs})")

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pid() is not None or self.state() is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def start(self) -> None:
        """supervisord in the background (its own session) on the rig's conf, rendered now;
        raises with its last lines if it exits before it answers."""
        conf = write_conf(self.rig)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_starts = {f: f.stat().st_size for f in self.logs.iterdir() if f.is_file()}
        env = {**os.environ, "PATH": with_our_bin(os.environ.get("PATH", ""))}
        binary = shutil.which("supervisord", path=env["PATH"]) or "supervisord"
        with open(self.logs / "supervisord.out", "ab") as out:  # supervisord keeps its own copy
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out, start_new_session=True,
                                         cwd=conf.parent, env=env)
        deadline = time.monotonic() + 15
        while not wait_running(self.socket, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LlamarigError("supervisord_failed", self.boot_failure() or "supervisord did not answer on "
                                    f"{self.socket} within 15 s; {self._tail('supervisord.out')}")

    def boot_failure(self) -> str | None:
        """Why the bundle cannot come up, if it cannot: supervisord gone, or a program that must
        run (compute-api, temporal, the workers) FATAL or in BACKOFF; with the log lines saying why."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"supervisord exited (status {self.proc.returncode}); {self._tail('supervisord.out')}"
        try:
            info = self.supervisor.all_info()
        except SupervisorError as e:
            return None if self.pid() else f"supervisord is gone ({e.reason}); {self._tail('supervisord.log')}"
        must = always_on(self.rig)
        failing = [p for p in info.values() if p["group"] in must and p["statename"] in FAILING]
        return "; ".join(self._program_failure(p) for p in failing) or None

    def always_on_running(self) -> bool:
        """Every program that must run is past its startsecs (RUNNING: alive, not just spawned)."""
        try:
            info = self.supervisor.all_info()
        except SupervisorError:
            return False
        must = always_on(self.rig)
        return all(p["statename"] == "RUNNING" for p in info.values() if p["group"] in must)

    def _program_failure(self, p: dict) -> str:
        name = p["name"] if p["name"] == p["group"] else f"{p['group']}:{p['name']}"
        cause = self.supervisor.exit_cause(p["name"]) or p.get("spawnerr") or "no exit cause logged"
        logs = [Path(f) for f in (p.get("stdout_logfile"), p.get("stderr_logfile")) if f]
        log = next((f for f in logs if f.is_file() and f.stat().st_size), self.logs / f"{p['name']}.log")
        return f"{name} is {p['statename']} ({cause}); {self._tail(log)}"

    def _tail(self, log: str | Path) -> str:
        path = self.logs / log if isinstance(log, str) else log
        try:
            with open(path, "rb") as f:
                f.seek(self.log_starts.get(path, 0))
                lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            return f"{path}: not written"
        return f"the last lines of {path}:\n  " + "\n  ".join(lines[-TAIL_LINES:]) if lines else f"{path} is empty"
