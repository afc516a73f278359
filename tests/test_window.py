"""The plan window (work/window.py), model-based: Hypothesis joins, lets in, finishes and cancels
holders in any order, and after every step checks that no more than `size` are inside, that each
one let in had the smallest key of those waiting, and that nobody waits while a place is free."""
from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llamarig.work.window import Window


class WindowMachine(RuleBasedStateMachine):
    @initialize(size=st.integers(1, 5))
    def start(self, size: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.size, self.window, self.next = size, self.run(self._make()), 0
        self.waiting: dict[tuple, asyncio.Future] = {}
        self.inside: set[tuple] = set()

    async def _make(self) -> Window:
        return Window()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        if hasattr(self, "loop"):
            self.loop.close()

    @rule(priority=st.integers(1, 3), work=st.integers(-3, 0))
    def join(self, priority: int, work: int) -> None:
        key = (priority, work, self.next)
        self.next += 1

        async def joined():
            return self.window.join(key)
        self.waiting[key] = self.run(joined())

    @rule()
    def let_in(self) -> None:
        self.window.let_in(self.size)
        admitted = sorted(k for k, f in self.waiting.items() if f.done() and not f.cancelled())
        still = [k for k, f in self.waiting.items() if not f.done()]
        assert not still or not admitted or max(admitted) < min(still), (admitted, still)  # smallest keys first
        for k in admitted:
            self.inside.add(k)
            del self.waiting[k]

    @precondition(lambda self: self.inside)
    @rule(data=st.data())
    def finish(self, data) -> None:
        key = data.draw(st.sampled_from(sorted(self.inside)))
        self.inside.remove(key)
        self.window.leave()

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def cancel(self, data) -> None:
        """A plan cancelled: its waiter's future is cancelled, and it must take no place."""
        key = data.draw(st.sampled_from(sorted(self.waiting)))
        self.waiting.pop(key).cancel()

    @invariant()
    def never_over_size(self) -> None:
        if hasattr(self, "window"):
            assert self.window.inside == len(self.inside) <= self.size

    @invariant()
    def no_one_waits_while_a_place_is_free_after_letting_in(self) -> None:
        if hasattr(self, "window"):
            self.window.let_in(self.size)
            newly = [k for k, f in self.waiting.items() if f.done() and not f.cancelled()]
            self.inside.update(newly)
            for k in newly:
                del self.waiting[k]
            assert len(self.inside) == self.size or not self.waiting


TestWindow = WindowMachine.TestCase
TestWindow.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
