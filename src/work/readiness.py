"""When a plan's task may start: once every task it depends on ended. A count per task, lowered
as each dependency ends, wakes it: O(dependencies) in all. (A wait_condition per task is checked
by the SDK at every step of the workflow: 3 ms more a step with 1000 tasks waiting, measured on
a chain; bench/RESULTS.md.) Deterministic: plain futures on the workflow's loop, no I/O."""
from __future__ import annotations

import asyncio


class Readiness:
    def __init__(self, tasks: list[dict], ended: set[str]):
        """tasks: the plan's; ended: names already ended at the start (reused from an earlier plan)."""
        self.left = {t["name"]: sum(d not in ended for d in t["depends_on"]) for t in tasks}
        self.dependents: dict[str, list[str]] = {}
        for t in tasks:
            for d in t["depends_on"]:
                if d not in ended:
                    self.dependents.setdefault(d, []).append(t["name"])
        self.turns: dict[str, asyncio.Future] = {}

    async def wait(self, name: str) -> None:
        """Returns once every dependency of `name` ended (at once if none is left)."""
        if self.left[name]:
            self.turns[name] = asyncio.get_running_loop().create_future()
            await self.turns[name]

    def ended(self, name: str) -> None:
        """`name` ended (succeeded, failed or cancelled); only its first end counts."""
        for waiting in self.dependents.pop(name, ()):
            self.left[waiting] -= 1
            turn = self.turns.get(waiting)
            if not self.left[waiting] and turn is not None and not turn.done():
                turn.set_result(None)
