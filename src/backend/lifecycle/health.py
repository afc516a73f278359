"""The health loop: each tick reads supervisord once and probes every serving unit; what it
finds goes to the unit's actor as a command (Exited, Replaced, Probe), which decides. Decides
nothing itself."""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

from llamarig.backend.lifecycle.actor import UnitActor
from llamarig.backend.lifecycle.commands import Exited, Probe, Replaced
from llamarig.backend.lifecycle.jobs import Events, exit_cause
from llamarig.backend.lifecycle.memory import Memory
from llamarig.backend.lifecycle.states import SERVING
from llamarig.backend.lifecycle.units import Unit
from llamarig.backend.llama_http import ServerHttp
from llamarig.backend.supervisor import ALIVE_STATES, SupervisorClient
from llamarig.shared.errors import LlamarigError, SupervisorError
from llamarig.shared.rig import Rig

log = logging.getLogger("llamarig.manager")


def supervisor_refused(what: str, e: SupervisorError) -> None:
    """While supervisord stops everything its refusals are expected (info); otherwise an error."""
    if e.shutting_down:
        log.info(f"{what}: supervisord is shutting down", extra={"reason": e.reason})
    else:
        word = "unreachable" if e.code == "supervisor_unreachable" else "refused"
        log.error(f"{what}: supervisord {word}", extra={"code": e.code, "reason": e.reason})


def log_not_done(command, e: Exception, answered: bool) -> None:
    """A refusal with a code is an answer (info when whoever asked gets it, else a warning); an
    unexpected exception is a bug (error, with its traceback)."""
    name = type(command).__name__
    if isinstance(e, SupervisorError):
        supervisor_refused(f"planner: {name}", e)
    elif isinstance(e, LlamarigError):
        (log.info if answered else log.warning)("planner command refused",
                                                extra={"command": name, "code": e.code, "reason": e.reason})
    else:
        log.exception("planner command failed", extra={"command": name})


class Health:
    def __init__(self, rig: Rig, supervisor: SupervisorClient, http: ServerHttp, memory: Memory,
                 actors: Callable[[], list[UnitActor]], events: Callable[[], Events]):
        self.rig, self.supervisor, self.http, self.memory = rig, supervisor, http, memory
        self.actors = actors   # every slot's actor
        self.events = events   # the hooks as they are now (the metrics listen once loaded)
        self._causes: dict[str, tuple[int, str]] = {}  # program -> (its last exit's time, how it ended)
        self._probing: collections.Counter[str] = collections.Counter()  # probes in flight per program
        self._suspected: set[str] = set()
        self._deep_due: dict[str, float] = {}

    async def loop(self) -> None:
        interval = self.rig.lifecycle.health_interval_s
        while True:
            try:
                await self.tick()
            except SupervisorError as e:
                supervisor_refused("health tick", e)
            except Exception:
                log.exception("health tick failed")
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        taken, before, before_at = time.monotonic(), self.memory.pids, self.memory.pids_read_at
        infos = await self.memory.refresh_pids()
        for actor in self.actors():
            info = infos.get(actor.unit.program)
            if info and info["statename"] not in ALIVE_STATES:
                actor.send(Exited(await self._exit_cause(info), taken))
            elif info and info["pid"] and before.get(actor.unit.program, info["pid"]) != info["pid"]:
                actor.send(Replaced(f"pid {before[actor.unit.program]} -> {info['pid']}", before_at))
            # A hung server holds each probe for probe_timeout_s; probes overlap (up to the
            # threshold) so that it is caught after about threshold x interval + one timeout.
            program = actor.unit.program
            if actor.state in SERVING and self._probing[program] < self.rig.lifecycle.failure_threshold:
                self._probing[program] += 1
                asyncio.ensure_future(self._probe(actor))

    async def _exit_cause(self, info: dict) -> str:
        """exit_cause, read from supervisord's log once per exit (a FATAL program stays so)."""
        known = self._causes.get(info["name"])
        if known is None or known[0] != info["stop"]:
            known = self._causes[info["name"]] = (info["stop"], await exit_cause(self.supervisor, info))
        return known[1]

    def suspect(self, unit: Unit) -> None:
        actor = next(a for a in self.actors() if a.unit.program == unit.program)
        if unit.program not in self._suspected:
            self._suspected.add(unit.program)
            asyncio.ensure_future(self._check_now(actor))

    async def _check_now(self, actor: UnitActor) -> None:
        """Out-of-turn check of one unit: has its process exited? (Else the next probes judge.)"""
        try:
            taken = time.monotonic()
            info = await self.supervisor.run("info", actor.unit.program)
            if info["statename"] not in ALIVE_STATES:
                actor.send(Exited(await self._exit_cause(info), taken))
        except SupervisorError as e:
            supervisor_refused("check", e)
        finally:
            self._suspected.discard(actor.unit.program)

    async def _probe(self, actor: UnitActor) -> None:
        unit, cfg = actor.unit, self.rig.lifecycle
        due_key = unit.program
        try:
            taken = time.monotonic()
            ok, detail = await self.http.ready(unit.port, unit.ready_path, cfg.probe_timeout_s)
            self.events().on_probe(unit, ok, "liveness")
            # The deep probe would queue behind real requests; while some are in flight, their
            # own progress is the proof that the server generates.
            deep_due = taken >= self._deep_due.get(due_key, 0) and not actor.inflight
            if ok and unit.kind == "llama" and cfg.deep_probe_interval_s > 0 and deep_due:
                self._deep_due[due_key] = taken + cfg.deep_probe_interval_s
                ok, detail = await self.http.generates(unit.port, cfg.probe_timeout_s)
                self.events().on_probe(unit, ok, "deep")
            actor.send(Probe(ok, detail, taken))
        finally:
            self._probing[unit.program] -= 1
