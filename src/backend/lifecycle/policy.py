"""Restart backoff and the circuit breaker of one unit."""
from __future__ import annotations

import collections
import time


class RestartPolicy:
    """Delay = min(initial * 2^n, max) for the n-th restart in the window; more than
    `circuit_restarts` restarts in `circuit_window_s` opens the circuit until a reset."""

    def __init__(self, config):
        self.config = config
        self.times: collections.deque[float] = collections.deque()
        self.is_open = False
        self.next_at: float | None = None

    def _prune(self) -> None:
        horizon = time.monotonic() - self.config.circuit_window_s
        while self.times and self.times[0] < horizon:
            self.times.popleft()

    def count(self) -> int:
        self._prune()
        return len(self.times)

    def next_delay(self) -> float | None:
        """Seconds until the next restart, or None once the circuit is open."""
        n = self.count()
        if n >= self.config.circuit_restarts:
            self.is_open = True
            self.next_at = None
            return None
        delay = min(self.config.backoff_initial_s * 2 ** n, self.config.backoff_max_s)
        now = time.monotonic()
        self.times.append(now)
        self.next_at = now + delay
        return delay

    def eta(self) -> float | None:
        if self.is_open or self.next_at is None:
            return None
        return max(0.0, self.next_at - time.monotonic())

    def open_reason(self, last: str, name: str) -> str:
        return (f"circuit open: {self.count()} restarts in {self.config.circuit_window_s:g} s, last: {last}. "
                f"Fix the cause, then `llamarig reset {name}`")

    def clear(self) -> None:
        self.times.clear()
        self.is_open = False
        self.next_at = None
