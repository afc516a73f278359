"""A plan's window (work.plan_window): at most `size` of its task attempts in Temporal at once,
let in by key, smallest first (the priority key, minus the remaining work, the place in the plan;
work/priority.py). Pure: plain futures, no clock, no I/O, so the workflows use it as they are
and tests/test_window.py drives it with Hypothesis."""
from __future__ import annotations

import asyncio
import heapq


class Window:
    def __init__(self) -> None:
        self.waiting: list[tuple] = []  # a heap of (*key, future)
        self.inside = 0

    def join(self, key: tuple) -> asyncio.Future:
        """A future set once the holder of `key` (unique in the window) is let in."""
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (*key, turn))
        return turn

    def leave(self) -> None:
        self.inside -= 1

    def let_in(self, size: int) -> None:
        """Let the smallest keys in while fewer than `size` are inside; a cancelled waiter (its plan
        was cancelled) takes no place."""
        while self.waiting and self.inside < size:
            turn = heapq.heappop(self.waiting)[-1]
            if not turn.done():
                self.inside += 1
                turn.set_result(None)
