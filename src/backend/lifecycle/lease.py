"""What the caller of a unit's actor holds: a lease on a serving unit (one request), the
refusal when it cannot have one, and the life events the actor keeps."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamarig.shared.errors import LlamarigError

if TYPE_CHECKING:
    from llamarig.backend.lifecycle.actor import UnitActor


class NotAvailable(LlamarigError):
    """The unit cannot take a request now; retry_after is a hint in seconds."""

    def __init__(self, code: str, reason: str, retry_after: float):
        super().__init__(code, reason)
        self.retry_after = retry_after



class Lease:
    """One request's hold on a unit. The proxy marks progress as bytes flow, so that a busy
    server that answers probes slowly is not called dead. (A plain class: every request makes
    one, and a dataclass's field factory cost a call more.) Identity: each lease is one request."""
    __slots__ = ("actor", "last_progress", "released", "cold")

    def __init__(self, actor: "UnitActor", cold: bool = False):
        self.actor = actor
        self.last_progress = time.monotonic()
        self.released = False
        self.cold = cold  # the request waited for the unit to load

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def unreachable(self) -> None:
        """The server did not take the request: have the manager look at it now rather than
        at the next health tick, so a crash under traffic is found in milliseconds."""
        self.actor.deps.events.suspect(self.actor.unit)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.actor.release(self)


@dataclass(frozen=True)
class Transition:
    at: float
    source: str
    target: str
    reason: str
