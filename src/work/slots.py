"""work-gpu takes a task from Temporal only when the rig can run one now: a slot supplier that
follows the compute API's /ready (an LLM ready, busy or loadable on demand for llm tasks; the
rig booted with a script service for script tasks). When it cannot, the worker does not poll, so the task waits
in Temporal, visible in its backlog, free to go to another rig's worker."""
from __future__ import annotations

import asyncio
import logging
import threading

from temporalio.worker import CustomSlotSupplier, SlotPermit

log = logging.getLogger("llamarig.work")
SERVING = ("ready", "busy")


def capacity(ready: dict | None, rig) -> int:
    """Tasks the rig can take now, from a /ready body (None: the API did not answer)."""
    if not ready or not ready.get("booted"):
        return 0
    c, comps = rig.work.concurrency, ready.get("components", {})
    llms = [comps.get(n, {}) for n, m in rig.models.items() if not m.embeddings]
    llm = c.llm if any(_may_serve(u) for u in llms) else 0
    has_script = rig.whisper is not None or any(m.embeddings or m.may_switch for m in rig.models.values())
    return llm + (c.script if has_script else 0)


def _may_serve(unit: dict) -> bool:
    """An LLM serving, or one a request loads: stopped on demand (not held by an operator). A rig
    of on-demand LLMs took no llm task when this asked for one serving."""
    return unit.get("state") in SERVING or unit.get("state") == "stopped" and unit.get("held") is False


class RigSlots(CustomSlotSupplier):
    def __init__(self, rig, api, refresh_s: float = 1.0):
        self.rig, self.api, self.refresh_s = rig, api, refresh_s
        self.reserved = 0
        self.counting = threading.Lock()  # (release_slot runs on the SDK's threads)
        self.can_take = 0
        self.changed = asyncio.Condition()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._task = self.loop.create_task(self._follow(), name="rig-slots")

    async def _follow(self) -> None:
        while True:
            try:
                body = await self.api.ready_body()
            except Exception as e:  # the API restarting: take nothing until it answers
                body = None
                log.debug("compute API not answering", extra={"reason": str(e)})
            can = capacity(body, self.rig)
            if can != self.can_take:
                log.info("rig capacity for GPU tasks changed", extra={"from": self.can_take, "to": can})
            async with self.changed:
                self.can_take = can
                self.changed.notify_all()
            await asyncio.sleep(self.refresh_s)

    async def reserve_slot(self, ctx) -> SlotPermit:
        async with self.changed:
            await self.changed.wait_for(self._took_one)
        return SlotPermit()

    def _took_one(self) -> bool:
        with self.counting:
            if self.reserved < self.can_take:
                self.reserved += 1
                return True
        return False

    def try_reserve_slot(self, ctx) -> SlotPermit | None:
        with self.counting:
            if self.reserved < self.can_take:
                self.reserved += 1
                return SlotPermit()
        return None

    def mark_slot_used(self, ctx) -> None:
        pass

    def release_slot(self, ctx) -> None:
        """Called on the SDK's threads: the count changes under the lock its increments take."""
        with self.counting:
            self.reserved -= 1
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._notify()))

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()
