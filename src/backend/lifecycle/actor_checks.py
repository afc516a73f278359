"""What a unit's actor checks before it acts: the conditions a planned command carries, and
the health loop's reports (a probe, a process gone, a process restarted outside llamarig). A
part of UnitActor (actor.py), apart only to keep each file short: the same single writer, the
same rules (no await, nothing acted on later)."""
from __future__ import annotations

import logging
import time

from llamarig.backend.lifecycle.commands import Condition, Exited, Probe, Replaced
from llamarig.backend.lifecycle.states import PROCESS_EXPECTED, SERVING, State

log = logging.getLogger("llamarig.lifecycle")


class Checks:
    # ---- conditions a planned command carries -------------------------------------------------
    def _failed_condition(self, conditions: frozenset[Condition]) -> Condition | None:
        """The first condition the command was planned under that no longer holds, or None."""
        for condition in conditions:
            if not self._holds(condition):
                return condition
        return None

    def _holds(self, condition: Condition) -> bool:
        if condition == Condition.WAITING:
            return bool(self.waiters)
        if condition == Condition.NOT_HELD:
            return not self.operator_held
        if condition == Condition.IDLE:
            return self.state == State.READY and not self.leases and not self.waiters
        return self.state in SERVING and not self.operator_held  # Condition.SERVING

    def _stopped_since(self, seen: int | None, command) -> bool:
        """An operator's start or reset asked before an operator's stop that came first here:
        the later word wins (found by the planner harness: a start queued behind the planner's
        work ran after the stop)."""
        if seen is None or seen == self.operator_stops:
            return False
        log.info("operator start refused: an operator stop was asked after it",
                 extra=self._fields(command=type(command).__name__, seen=seen, stops=self.operator_stops))
        reply = getattr(command, "reply", None)
        if reply is not None and not reply.done():
            reply.set_result(False)
        return True

    def _refused(self, command, condition: Condition) -> None:
        log.info("command refused: its condition no longer holds",
                 extra=self._fields(command=type(command).__name__, condition=condition.value,
                                    reason=getattr(command, "reason", "")))
        reply = getattr(command, "reply", None)
        if reply is not None and not reply.done():
            reply.set_result(False)

    # ---- the health loop's reports -------------------------------------------------------------
    def _on_probe(self, c: Probe) -> None:
        # A report taken before this process was started is about an earlier one. (Not
        # `since`: ready <-> busy changes under traffic would void every report.)
        if self.state not in SERVING or c.taken_at < self.process_since:
            return
        if c.ok:
            self.failures = 0
            return
        if self._progressing():
            log.info("probe failed while requests progress: not counted", extra=self._fields(detail=c.detail))
            return
        self.failures += 1
        log.warning("probe failed", extra=self._fields(detail=c.detail, failures=self.failures))
        if self.failures >= self.deps.rig.lifecycle.failure_threshold:
            self._crash(f"{self.failures} consecutive failed probes, last: {c.detail}", hung=True)

    def _progressing(self) -> bool:
        window = self.deps.rig.lifecycle.probe_timeout_s * 2
        return any(time.monotonic() - lease.last_progress < window for lease in self.leases)

    def _on_exited(self, c: Exited) -> None:
        if self.state in PROCESS_EXPECTED and self.state != State.STARTING and c.taken_at >= self.process_since:
            self._crash(f"server process exited: {c.detail}", hung=False)

    def _on_replaced(self, c: Replaced) -> None:
        # A process this unit asked for after the earlier reading explains the change itself.
        if self.state not in SERVING or self.process_since >= c.last_seen_at:
            return
        self.epoch += 1
        self.following = True
        self._to(State.STARTING, f"restarted outside llamarig ({c.detail}): waiting for the new process")
