"""One unit's life: the actor is the only writer of its state.

Callers send commands; none reads the state and acts on it later. A command planned from what
a planner read carries its conditions, and is refused when one no longer holds. Slow work
(verifying, starting, stopping) runs in jobs that report back as commands tagged with the
attempt (`epoch`) they belong to, so a late report from an abandoned attempt is ignored.

Handlers never await, and `send` handles a command whole before it returns, so a reply is set
by the time the sender looks, and nothing can happen between a planner's command and its next
step. A send from inside a handler waits in the inbox and is handled right after, in order.
A state's timeout is a timer that sends `Expire`. No task per unit: a request's acquire and
release cost no event-loop turn (measured on the proxy's p50, bench/RESULTS.md).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time

from llamarig.backend.lifecycle import jobs
from llamarig.backend.lifecycle.commands import (Acquire, AdoptWaiters, Exited, Expire, JobDone,
                                                 MoveWaiters, Probe, Refuse, Release, Replaced, Reset, Start, Stop)
from llamarig.backend.lifecycle.actor_checks import Checks
from llamarig.backend.lifecycle.actor_entry import StateEntry
from llamarig.backend.lifecycle.lease import Lease, NotAvailable, Transition
from llamarig.backend.lifecycle.policy import RestartPolicy
from llamarig.backend.lifecycle.states import (LOADING, ON_TIMEOUT, SERVING, State,
                                               check_transition, timeout_for)
from llamarig.backend.lifecycle.units import Unit
from llamarig.shared.errors import LlamarigError

__all__ = ["Lease", "NotAvailable", "Transition", "UnitActor"]  # (callers import them from here)
log = logging.getLogger("llamarig.lifecycle")
HISTORY = 50


HANDLERS = {Start: "_on_start", Stop: "_on_stop", Acquire: "_on_acquire", Release: "_on_release", Probe: "_on_probe",
            Exited: "_on_exited", JobDone: "_on_job_done", Reset: "_on_reset", Refuse: "_on_refuse",
            Replaced: "_on_replaced", Expire: "_on_expire", MoveWaiters: "_on_move_waiters",
            AdoptWaiters: "_on_adopt_waiters"}


class UnitActor(StateEntry, Checks):
    def __init__(self, unit: Unit, deps: jobs.Deps):
        self.unit = unit
        self.deps = deps
        self.state = State.STOPPED
        self.reason = "not started yet"
        self.since = time.monotonic()
        self.process_since = 0.0  # when the current server process was asked for (entering STARTING)
        self.epoch = 0
        self.leases: set[Lease] = set()
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.history: collections.deque[Transition] = collections.deque(maxlen=HISTORY)
        self.policy = RestartPolicy(deps.rig.lifecycle)
        self.failures = 0
        self.operator_held = False
        self.operator_stops = 0  # operator stops so far: a start asked before the last one is refused
        self.stop_wanted = False  # since the last start: a stop that then fails restarts nothing
        self.recovering = False
        self.pending_start: Start | None = None
        self.last_used = 0.0
        self.load_seconds: float | None = None
        self.refused = False
        self.following = False  # the next STARTING waits for a process someone else started
        self._inbox: collections.deque = collections.deque()
        self._handling = False  # a handler is running: a send from inside it waits in the inbox
        self._deadline: asyncio.TimerHandle | None = None  # sends Expire when the state times out
        self._armed_for: tuple | None = None
        self._limits = {s: timeout_for(s, deps.rig.timeouts, unit.keep_alive_s) for s in State}
        self._watchers: list[asyncio.Future] = []
        self._job: asyncio.Task | None = None
        self._kill: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ---- the caller's side ------------------------------------------------------------------
    def send(self, command) -> None:
        """Handle `command` whole before returning. A command sent by a handler (re-entrant: a
        state entry that sends a restart, say) is queued and handled right after, in order."""
        self._inbox.append(command)
        if self._handling:
            return
        self._handling = True
        try:
            while self._inbox:
                self._handle_safely(self._inbox.popleft())
        finally:
            self._handling = False
        self._arm_deadline()

    def try_lease(self) -> Lease | None:
        """A lease at once while the unit serves, as an Acquire would be answered, without the
        command's reply future (every request takes this path); None: send an Acquire."""
        if self._handling or self._inbox or self.state not in SERVING:
            return None
        return self._now(self._lease)

    def release(self, lease: Lease) -> None:
        """A lease's end, handled as a Release command would be, without making one (every
        request ends here) unless a handler is running: then it waits in the inbox, in order."""
        if self._handling or self._inbox:
            return self.send(Release(lease))
        self._now(self._end_lease_safely, lease)

    def _now(self, step, *args):
        """Run `step` as a handler at once (the inbox is empty and nothing handles), then what it
        sent, in order; returns what `step` returned."""
        self._handling = True
        try:
            result = step(*args)
            while self._inbox:
                self._handle_safely(self._inbox.popleft())
        finally:
            self._handling = False
        self._arm_deadline()
        return result

    async def ask(self, command):
        """Send a command that carries a reply future and await the reply."""
        self.send(command)
        return await command.reply

    async def wait_until(self, states: frozenset[State], timeout: float) -> State:
        """Wait until the unit is in one of `states` (for planners and tests, not for acting)."""
        deadline = time.monotonic() + timeout
        while self.state not in states:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            fut = asyncio.get_running_loop().create_future()
            self._watchers.append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                break
        return self.state

    @property
    def inflight(self) -> int:
        return len(self.leases)

    def close(self) -> None:
        """Cancel the timers (the manager is going away)."""
        for handle in (self._deadline, self._timer):
            if handle is not None:
                handle.cancel()

    # ---- the writer ---------------------------------------------------------------------------
    def _arm_deadline(self) -> None:
        """A timer for the current state's timeout, re-armed only when the state changed (the
        READY <-> BUSY flips of every request leave a BUSY timer-free and READY's rearmed)."""
        armed_for = (self.state, self.since)
        if armed_for == self._armed_for:
            return
        self._armed_for = armed_for
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        left = self._time_left()
        if left is not None:
            self._deadline = asyncio.get_running_loop().call_later(left, self.send, Expire(self.since))

    def _handle_safely(self, command) -> None:
        try:
            self._handle(command)
        except Exception as e:  # a bug in one handler must not kill the unit's only writer
            log.exception("command failed", extra=self._fields(command=type(command).__name__))
            reply = getattr(command, "reply", None)
            if reply is not None and not reply.done():
                reply.set_exception(LlamarigError("internal_error", f"{type(e).__name__}: {e}"))

    def _handle(self, c) -> None:
        getattr(self, HANDLERS[type(c)])(c)  # (one bound method per command, not a table of them)

    def _time_left(self) -> float | None:
        limit = self._limits[self.state]
        if limit is None:
            return None
        return max(0.0, self.since + limit - time.monotonic())

    def _on_expire(self, c: Expire) -> None:
        if c.since != self.since:
            return  # armed for a state the unit has left since
        target = ON_TIMEOUT[self.state]
        reason = f"{self.state.value} timed out"
        if self.state == State.READY:
            reason = f"idle for {self.unit.keep_alive_s:g} s (keep_alive): unloading"
        self._to(target, reason)

    def _fields(self, **more) -> dict:
        return {"model": self.unit.name, "program": self.unit.program, "gpus": self.unit.gpu_label,
                "state": self.state.value, **more}

    def _to(self, target: State, reason: str) -> None:
        source = self.state
        check_transition(self.unit.name, source, target)
        self.state, self.reason, self.since = target, reason, time.monotonic()
        self.history.append(Transition(time.time(), source.value, target.value, reason))
        log.info("state change", extra=self._fields(source=source.value, target=target.value, reason=reason))
        self.deps.events.on_transition(self.unit, source, target, reason)
        self._wake(target)
        self._enter(target)

    def _flip(self, target: State, reason: str) -> None:
        """READY <-> BUSY, at every request's start and end, kept light: no transition check
        (both ways are legal), logged at DEBUG (else the log is mostly these lines and costs the
        API a fifth of its CPU, measured), kept out of the history (which under traffic would hold
        nothing else: a restart five minutes ago must still be there for whoever is on call), and
        not sent to the events (llamarig_requests_total counts requests)."""
        source, self.state, self.reason, self.since = self.state, target, reason, time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("state change", extra=self._fields(source=source.value, target=target.value, reason=reason))
        if self._watchers:
            self._wake(target)
        if target is State.READY:
            self.failures = 0  # as on any way into READY: the server answered

    def _wake(self, target: State) -> None:
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(target)
        self._watchers.clear()

    def _enter(self, state: State) -> None:
        if state == State.VERIFYING:
            self._spawn(jobs.verify(self.deps, self.unit, self.epoch))
        elif state == State.STARTING:
            self.process_since = self.since
            following, self.following = self.following, False
            self._spawn(jobs.wait_ready(self.deps, self.unit, self.epoch) if following else
                        jobs.start(self.deps, self.unit, self.epoch, not self.recovering, self._kill))
        elif state == State.READY:
            self._on_ready()
        elif state == State.DRAINING and not self.leases:
            self._to(State.STOPPING, "drained: no request in flight")
        elif state == State.STOPPING:
            self._spawn(jobs.stop(self.deps, self.unit, self.epoch))
        elif state == State.STOPPED:
            self._on_stopped()
        elif state == State.FAILED:
            self._on_failed()

    def _spawn(self, coro) -> None:
        if self._job and not self._job.done():
            self._job.cancel()
        self._job = asyncio.ensure_future(coro)
        self._job.add_done_callback(self._job_finished)

    def _job_finished(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        if task.exception():
            log.error("job crashed", exc_info=task.exception(), extra=self._fields())
            self.send(JobDone("crash", self.epoch, False, f"internal error: {task.exception()}"))
        elif task.result() is not None:
            self.send(task.result())

    # ---- commands -----------------------------------------------------------------------------
    def _on_start(self, c: Start) -> None:
        failed = self._failed_condition(c.conditions)
        if failed:
            self._refused(c, failed)
            return
        if self._stopped_since(c.after_stops, c):
            return
        began = self.state in (State.STOPPED, State.FAILED)
        self._start(c)
        if not c.reply.done():
            c.reply.set_result(began)

    def _start(self, c: Start) -> None:
        self.operator_held = False
        self.stop_wanted = False
        if c.operator:
            self.policy.clear()
        self.policy.half_open = c.trial
        if self.state in (State.STOPPED, State.FAILED):
            self._cancel_timer()
            self.epoch += 1
            self.recovering = c.recovering
            self.refused = False
            self._to(State.VERIFYING, c.reason)
        elif self.state in (State.DRAINING, State.STOPPING):
            self.pending_start = c  # start again once the stop is done

    def _on_stop(self, c: Stop) -> None:
        failed = self._failed_condition(c.conditions)
        if failed:
            self._refused(c, failed)
            return
        if not c.reply.done():
            c.reply.set_result(True)
        self.pending_start = None
        # Only a start or a reset ends an operator's hold: a planner's stop since (a GPU switched
        # away) left it off, and a failed stop then restarted the unit (found by the planner harness).
        self.operator_held = self.operator_held or c.operator
        self.operator_stops += c.operator
        self.stop_wanted = True
        self._cancel_timer()
        if self.state in SERVING:
            self._to(State.DRAINING if c.drain else State.STOPPING, c.reason)
        elif self.state in LOADING or self.state == State.FAILED:
            self.epoch += 1
            self._to(State.STOPPED if self.state == State.VERIFYING else State.STOPPING, c.reason)
        elif self.state == State.DRAINING and not c.drain:
            self._to(State.STOPPING, c.reason)
        self._fail_waiters(c.reason, 5)

    def _on_acquire(self, c: Acquire) -> None:
        if c.reply.done():
            return  # the caller gave up (timed out or went away) before this was handled
        if self.state in SERVING:
            c.reply.set_result(self._lease())
        elif self._should_wait(c):
            if self.state == State.STOPPED:
                self.deps.events.request_load(self.unit)
            self.waiters.append(c.reply)
        else:
            c.reply.set_exception(self._unavailable())

    def _should_wait(self, c: Acquire) -> bool:
        if not c.may_wait or len(self.waiters) >= self.deps.rig.lifecycle.queue_size:
            return False
        if self.state in LOADING:
            return not self.recovering  # a cold load is worth waiting for; a crash recovery is not
        return self.state == State.STOPPED and not self.operator_held and not self.refused

    def _lease(self) -> Lease:
        lease = Lease(self)
        self.leases.add(lease)
        if self.state is State.READY:
            self._flip(State.BUSY, "request in flight")
        return lease

    def _on_release(self, c: Release) -> None:
        self._end_lease(c.lease)

    def _end_lease_safely(self, lease: Lease) -> None:
        try:
            self._end_lease(lease)
        except Exception:  # (as _handle_safely: a bug here must not reach the request's answer)
            log.exception("command failed", extra=self._fields(command="Release"))

    def _end_lease(self, lease: Lease) -> None:
        self.leases.discard(lease)
        self.last_used = time.time()
        if self.leases:
            return
        if self.state is State.BUSY:
            self._flip(State.READY, "no request in flight")
        elif self.state == State.DRAINING:
            self._to(State.STOPPING, "drained: last request finished")

    def _on_move_waiters(self, c: MoveWaiters) -> None:
        waiting, self.waiters = list(self.waiters), collections.deque()
        c.to.send(AdoptWaiters(waiting))

    def _on_adopt_waiters(self, c: AdoptWaiters) -> None:
        """Requests handed over by another placement of the service: served at once when this one
        serves, else they wait here (and ask for a load when it is stopped)."""
        waiting = [f for f in c.waiters if not f.done()]
        if self.state in SERVING:
            for fut in waiting:
                fut.set_result(self._lease())
            return
        self.waiters.extend(waiting)
        if waiting and self.state == State.STOPPED:
            self.deps.events.request_load(self.unit)

    def _on_job_done(self, c: JobDone) -> None:
        if c.epoch != self.epoch:
            return
        if c.kind == "verify":
            self._verify_done(c)
        elif c.kind == "start":
            self._start_done(c)
        elif c.kind == "stop":
            self._to(State.STOPPED if c.ok else State.FAILED, c.reason)
        elif self.state not in (State.STOPPED, State.FAILED):
            self._to(State.FAILED, c.reason)

    def _on_refuse(self, c: Refuse) -> None:
        if not c.permanent:
            self._fail_waiters(c.reason, 10)
        elif self.state in (State.STOPPED, State.FAILED):
            self.refused = True
            if self.state == State.STOPPED:
                self._to(State.FAILED, c.reason)
            else:
                self.reason = c.reason
                self._fail_waiters(c.reason, 30)

    def _on_reset(self, c: Reset) -> None:
        if self._stopped_since(c.after_stops, c):
            return
        self.policy.clear()
        self.refused = False
        self.operator_held = False
        if self.state == State.FAILED:
            self.send(Start("operator reset", operator=True, after_stops=c.after_stops))
