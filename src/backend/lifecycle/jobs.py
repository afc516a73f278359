"""The slow work of a unit's life, run as tasks whose results go back to its actor.

A job never changes state itself: it returns a JobDone (or nothing) and the actor decides.
"""
from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Callable

import psutil

from llamarig.backend.lifecycle.commands import JobDone
from llamarig.backend.lifecycle.units import Unit
from llamarig.backend.gate import EXIT_REFUSED, LaunchPlan, read_verdict, verdict_path, write_plan
from llamarig.backend.llama_http import ServerHttp
from llamarig.backend.supervisor import ALIVE_STATES, RUNNING_STATES, SupervisorClient
from llamarig.shared.errors import SupervisorError
from llamarig.shared.rig import Rig
from llamarig.shared.verify import Verdict

POLL_S = 0.2          # supervisord state polls (each an XML-RPC call to a single-threaded daemon)
READY_POLL_S = 0.02   # readiness poll: a GET on loopback (refused, or 503, while the server
                      # loads), cheap; every 10 ms off the load's end shows in boot and restart
                      # times (llama-swap polls every 1 s)
GONE_TIMEOUT_S = 10   # how long a stopped server's processes and port get to disappear


class Events:
    """What the manager hears of units (metrics, planning). The default hears nothing."""

    def on_transition(self, unit, source, target, reason): pass
    def on_ready(self, unit, load_seconds): pass
    def on_restart(self, unit, reason): pass
    def on_circuit(self, unit, is_open): pass
    def on_verdict(self, unit, verdict): pass
    def on_stop_verified(self, unit, ok, reason): pass
    def on_probe(self, unit, ok, kind): pass
    def on_switch(self, gpu, direction, seconds): pass
    def on_memory(self, unit, estimate, actual): pass
    def request_load(self, unit): pass
    def suspect(self, unit): pass
    def gpu_pids(self, unit) -> set[int]: return set()


class HeldEvents(Events):
    """The unit events heard before their listener exists, kept in order for it: the compute
    API starts booting before its metrics (prometheus_client, 30 to 50 ms of imports) load in a
    thread, and the boot's first transitions must still be counted. Every `on_*` of Events is
    held (set below, from Events itself, so one added there is held too)."""

    def __init__(self):
        self.held: list[tuple[str, tuple]] = []

    def hand_to(self, listener: Events) -> None:
        for name, args in self.held:
            getattr(listener, name)(*args)
        self.held.clear()


def _holding(name: str):
    def hold(self, *args):
        self.held.append((name, args))
    return hold


for _name in [n for n in vars(Events) if n.startswith("on_")]:
    setattr(HeldEvents, _name, _holding(_name))


@dataclass
class Deps:
    rig: Rig
    supervisor: SupervisorClient
    http: ServerHttp
    verify: Callable[[Unit], Verdict]  # blocking; run in a thread
    plan: Callable[[Unit], LaunchPlan] # what the unit's launch gate is to do (gate.py)
    events: Events


async def verify(deps: Deps, unit: Unit, epoch: int) -> JobDone:
    verdict = await asyncio.to_thread(deps.verify, unit)
    deps.events.on_verdict(unit, verdict)
    return JobDone("verify", epoch, verdict.ok, verdict.reason if verdict.ok else f"{verdict.code}: {verdict.reason}")


async def start(deps: Deps, unit: Unit, epoch: int, adopt: bool, after: asyncio.Task | None) -> JobDone:
    try:
        return await _start(deps, unit, epoch, adopt, after)
    except SupervisorError as e:  # (unreachable or refusing mid-start: a failed start, not a crashed job)
        return JobDone("start", epoch, False, f"supervisord: {e.reason}")


async def _start(deps: Deps, unit: Unit, epoch: int, adopt: bool, after: asyncio.Task | None) -> JobDone:
    if after:
        await asyncio.wait({after})
    info = await _settled_info(deps, unit)
    if info["statename"] in RUNNING_STATES:
        ok, _ = await deps.http.ready(unit.port, unit.ready_path, 2)
        if ok and adopt:
            return JobDone("start", epoch, True, f"adopted the running server (pid {info['pid']})")
        await _stop_program(deps, unit, hung=True)
    verdict_path(deps.rig.run_dir, unit.verdict_key).unlink(missing_ok=True)
    try:
        write_plan(deps.plan(unit))
    except OSError as e:
        return JobDone("start", epoch, False, f"cannot write the launch plan: {e}")
    try:
        await deps.supervisor.run("start", unit.program)
    except SupervisorError as e:
        return JobDone("start", epoch, False, e.reason)
    return await wait_ready(deps, unit, epoch)


async def _settled_info(deps: Deps, unit: Unit) -> dict:
    """Program info once it is not STOPPING (supervisord cannot start a stopping program)."""
    deadline = time.monotonic() + deps.rig.timeouts.stop_s + GONE_TIMEOUT_S
    info = await deps.supervisor.run("info", unit.program)
    while info["statename"] == "STOPPING" and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        info = await deps.supervisor.run("info", unit.program)
    return info


async def wait_ready(deps: Deps, unit: Unit, epoch: int) -> JobDone:
    """Until the program's server answers (or exits, or start_s passes); starts nothing."""
    deadline = time.monotonic() + deps.rig.timeouts.start_s
    timeout = deps.rig.lifecycle.probe_timeout_s
    checked = 0.0
    while time.monotonic() < deadline:
        ok, detail = await deps.http.ready(unit.port, unit.ready_path, timeout)
        if ok:
            return JobDone("start", epoch, True, "server answers " + unit.ready_path)
        if time.monotonic() - checked >= POLL_S:
            checked = time.monotonic()
            info = await deps.supervisor.run("info", unit.program)
            if info["statename"] not in ALIVE_STATES:
                return _exit_result(deps, unit, epoch, info, await exit_cause(deps.supervisor, info))
        await asyncio.sleep(READY_POLL_S)
    return JobDone("start", epoch, False, f"not ready within {deps.rig.timeouts.start_s:g} s (start_s)")


async def exit_cause(supervisor: SupervisorClient, info: dict) -> str:
    """How a program's process ended, in words: "terminated by SIGKILL (supervisord: FATAL)"."""
    if info["statename"] == "STOPPED":
        return "stopped outside llamarig (supervisord: STOPPED)"  # the units stop theirs as STOPPING
    try:
        cause = await supervisor.run("exit_cause", info["name"])
    except SupervisorError:
        cause = None
    return f"{cause or 'exit status ' + str(info['exitstatus'])} (supervisord: {info['statename']})"


def _exit_result(deps: Deps, unit: Unit, epoch: int, info: dict, cause: str) -> JobDone:
    if info["exitstatus"] == EXIT_REFUSED or cause.startswith(f"exit status {EXIT_REFUSED} "):
        verdict = read_verdict(deps.rig.run_dir, unit.verdict_key) or {}
        reason = f"{verdict.get('code', 'refused')}: {verdict.get('reason', 'see the program log')}"
        return JobDone("start", epoch, False, reason, refused=True)
    return JobDone("start", epoch, False, f"{cause}; see run/logs/{unit.program}.log")


async def stop(deps: Deps, unit: Unit, epoch: int) -> JobDone:
    ok, reason = await _stop_program(deps, unit, hung=False)
    return JobDone("stop", epoch, ok, reason)


async def kill(deps: Deps, unit: Unit, hung: bool) -> None:
    """Stop a failed unit's program so that it frees its GPU while the restart waits."""
    await _stop_program(deps, unit, hung)


async def _stop_program(deps: Deps, unit: Unit, hung: bool) -> tuple[bool, str]:
    pids = await asyncio.to_thread(_process_tree, deps, unit)
    if hung:
        # A stopped (SIGSTOP) process keeps SIGTERM pending; continue it so it can exit cleanly.
        for pid in pids:
            _signal_quietly(pid)
    try:
        await deps.supervisor.run("stop", unit.program)
    except SupervisorError as e:
        if e.code != "supervisor_not_running":
            return False, f"stop failed: {e.reason}"
    ok, reason = await _verify_gone(deps, unit, pids)
    deps.events.on_stop_verified(unit, ok, reason)
    return ok, reason


def tree_pids(pid: int) -> set[int]:
    """A process and all its descendants; empty if it is gone."""
    try:
        proc = psutil.Process(pid)
        return {pid} | {c.pid for c in proc.children(recursive=True)}
    except psutil.Error:
        return set()


def _process_tree(deps: Deps, unit: Unit) -> set[int]:
    try:
        pid = deps.supervisor.info(unit.program)["pid"]
    except SupervisorError:
        return set()
    return tree_pids(pid) if pid else set()


def _signal_quietly(pid: int) -> None:
    try:
        psutil.Process(pid).resume()
    except psutil.Error:
        pass


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            pass
    return alive


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _verify_gone(deps: Deps, unit: Unit, pids: set[int]) -> tuple[bool, str]:
    """After a stop: no process of the program left, its port free, its GPU memory released."""
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while True:
        alive, bound = _alive(pids), port_in_use(unit.port)
        on_gpu = deps.events.gpu_pids(unit) & pids
        if not (alive or bound or on_gpu):
            return True, "stopped: no process left, port free"
        if time.monotonic() >= deadline:
            return False, (f"stop not verified after {GONE_TIMEOUT_S} s: pids alive {sorted(alive)}, "
                           f"port {unit.port} {'in use' if bound else 'free'}, pids on GPU {sorted(on_gpu)}")
        await asyncio.sleep(POLL_S)
