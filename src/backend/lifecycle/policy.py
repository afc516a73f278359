"""Restart backoff and the circuit breaker of one unit."""
from __future__ import annotations

import collections
import time


class RestartPolicy:
    """Delay = min(initial * 2^n, max) for the n-th restart in the window; more than
    `circuit_restarts` restarts in `circuit_window_s` open the circuit. After
    `circuit_cooldown_s` it half-opens: one start is tried; its success closes the circuit,
    its failure opens it again."""

    def __init__(self, config):
        self.config = config
        self.times: collections.deque[float] = collections.deque()
        self.is_open = False
        self.half_open = False  # the one try after the cooldown is under way
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
        if self.half_open or n >= self.config.circuit_restarts:
            self.half_open = False
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
        cooldown = self.config.circuit_cooldown_s
        retry = f"one start will be tried in {cooldown:g} s (circuit_cooldown_s); " if cooldown else ""
        return (f"circuit open: {self.count()} restarts in {self.config.circuit_window_s:g} s, last: {last}. "
                f"{retry}Fix the cause, then `llamarig reset {name}`")

    def clear(self) -> None:
        self.times.clear()
        self.is_open = False
        self.next_at = None
