"""What a unit's actor does on entering a state (ready: serve the waiters; stopped: a start
that was pending; failed: a restart after its backoff, or the circuit opens) and what it shows
(its snapshot). A part of UnitActor (actor.py), apart only to keep each file short: the same
single writer, the same rules (no await, nothing acted on later)."""
from __future__ import annotations

import asyncio
import logging
import time

from llamarig.backend.lifecycle import jobs
from llamarig.backend.lifecycle.commands import JobDone, Start
from llamarig.backend.lifecycle.states import LOADING, State
from llamarig.backend.lifecycle.lease import NotAvailable

log = logging.getLogger("llamarig.lifecycle")


class StateEntry:
    # ---- a start's jobs reporting back -------------------------------------------------------
    def _verify_done(self, c: JobDone) -> None:
        if self.state != State.VERIFYING:
            return
        if c.ok:
            self._to(State.STARTING, c.reason)
        else:
            self.refused = True
            self._to(State.FAILED, f"refused: {c.reason}")

    def _start_done(self, c: JobDone) -> None:
        if self.state != State.STARTING:
            return
        if c.ok:
            self.load_seconds = time.monotonic() - self.since
            self._to(State.READY, c.reason)
            self.deps.events.on_ready(self.unit, self.load_seconds)  # a load ended, not a request
        elif c.refused:
            self.refused = True
            self._to(State.FAILED, f"refused: {c.reason}")
        else:
            self._crash(f"start failed: {c.reason}", hung=False)

    # ---- state entry --------------------------------------------------------------------------
    def _on_ready(self) -> None:
        self.failures = 0
        self.recovering = False
        if self.policy.is_open:  # the half-open try worked
            self.policy.clear()
            log.info("circuit closed: the start after the cooldown worked", extra=self._fields())
            self.deps.events.on_circuit(self.unit, False)
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                lease = self._lease()
                lease.cold = True
                fut.set_result(lease)

    def _on_stopped(self) -> None:
        self._fail_waiters(self.reason, 5)
        if self.pending_start:
            start, self.pending_start = self.pending_start, None
            self.send(start)

    def _crash(self, reason: str, hung: bool) -> None:
        self.epoch += 1
        self._to(State.FAILED, reason)
        # A hung or half-started server still holds its GPU: stop it now, not at the restart.
        # Its own task: the next start waits for it rather than cancelling it.
        self._kill = asyncio.ensure_future(jobs.kill(self.deps, self.unit, hung))

    def _on_failed(self) -> None:
        self._fail_waiters(self.reason, self._retry_after())
        if self.refused or self.operator_held or self.stop_wanted:
            return  # (a failed stop: whoever stopped it wanted its memory, a restart would take it back)
        delay = self.policy.next_delay()
        if delay is None:
            self.reason = self.policy.open_reason(self.reason, self.unit.name)
            log.error("circuit open", extra=self._fields(reason=self.reason))
            self.deps.events.on_circuit(self.unit, True)
            self._half_open_later()
            return
        log.info("restart scheduled", extra=self._fields(delay_s=delay))
        self.deps.events.on_restart(self.unit, self.reason)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self.send, Start(f"restart after {delay:g} s", recovering=True))

    def _half_open_later(self) -> None:
        cooldown = self.deps.rig.lifecycle.circuit_cooldown_s
        if cooldown > 0:
            start = Start(f"circuit half-open after {cooldown:g} s: one start", recovering=True, trial=True)
            self._timer = asyncio.get_running_loop().call_later(cooldown, self.send, start)

    def _cancel_timer(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None

    def _retry_after(self) -> float:
        eta = self.policy.eta()
        load = self.load_seconds or 5.0
        return (eta + load) if eta is not None else 30.0

    def _unavailable(self) -> NotAvailable:
        s = self.state
        if s == State.FAILED:
            return NotAvailable("model_failed", f"model {self.unit.name!r} failed: {self.reason}",
                                self._retry_after())
        if s in LOADING:
            return NotAvailable("model_loading", f"model {self.unit.name!r} is {s.value} "
                                f"({self.reason})", self.load_seconds or 5.0)
        if len(self.waiters) >= self.deps.rig.lifecycle.queue_size and s != State.STOPPED:
            return NotAvailable("queue_full", f"model {self.unit.name!r}: the wait queue is full", 5.0)
        return NotAvailable("model_unavailable", f"model {self.unit.name!r} is {s.value} ({self.reason})", 10.0)

    def _fail_waiters(self, reason: str, retry_after: float) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(NotAvailable("model_unavailable", f"model {self.unit.name!r}: {reason}",
                                               retry_after))

    # ---- read-only views ----------------------------------------------------------------------
    @property
    def claims_memory(self) -> bool:
        """Whether the unit is about to take memory the reading may not show yet: loading, a
        start pending after its stop (a drain-first reload), or failed with a restart due."""
        return (self.state in LOADING or self.pending_start is not None
                or (self.state == State.FAILED and self._timer is not None))

    def snapshot(self) -> dict:
        return {"name": self.unit.name, "kind": self.unit.kind, "program": self.unit.program,
                "slot": self.unit.slot, "state": self.state.value,
                "reason": self.reason, "since_s": round(time.monotonic() - self.since, 3),
                "gpus": list(self.unit.gpus), "port": self.unit.port, "inflight": self.inflight,
                "waiting": len(self.waiters), "required": self.unit.required, "warm": self.unit.warm,
                "held": self.operator_held,
                "restarts_in_window": self.policy.count(), "circuit_open": self.policy.is_open,
                "load_seconds": self.load_seconds, "last_used": self.last_used or None,
                "history": [vars(t) for t in self.history][-10:]}
