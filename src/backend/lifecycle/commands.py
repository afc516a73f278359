"""Commands a unit's actor takes. Those with a `reply` future are awaited by the caller.

A command a planner made from what it read carries the conditions it was planned under; the
actor refuses it (reply False, a log line) when one no longer holds, and the planner plans again.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum


def _future() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


class Condition(str, Enum):
    WAITING = "requests still wait for it"
    NOT_HELD = "not held stopped by an operator"
    IDLE = "ready, with no request in flight or waiting"
    SERVING = "serving, and not held stopped by an operator"


NONE: frozenset[Condition] = frozenset()


@dataclass
class Start:
    reason: str
    recovering: bool = False   # a restart after a failure: requests get 503 rather than wait
    operator: bool = False     # asked for by a person: clears the restart history
    trial: bool = False        # the open circuit's one try after its cooldown
    conditions: frozenset[Condition] = NONE
    after_stops: int | None = None  # an operator's start: the operator stops it saw when asked; one since wins
    reply: asyncio.Future = field(default_factory=_future)  # True once a start began, False if ignored


@dataclass
class Stop:
    reason: str
    drain: bool = True         # let in-flight requests finish first
    operator: bool = False     # held stopped: requests do not load it again
    conditions: frozenset[Condition] = NONE
    reply: asyncio.Future = field(default_factory=_future)  # False: refused, a condition failed


@dataclass
class Expire:
    since: float               # the state's start the timer was armed for


@dataclass
class Acquire:
    may_wait: bool = True      # may wait in the bounded queue while the unit loads
    reply: asyncio.Future = field(default_factory=_future)


@dataclass
class Release:
    lease: object


@dataclass
class Probe:
    ok: bool
    detail: str
    taken_at: float            # monotonic time the probe was sent


@dataclass
class Exited:
    detail: str
    taken_at: float            # monotonic time supervisord was asked


@dataclass
class Replaced:
    """supervisord shows another process for the unit's program than at its last reading:
    restarted outside llamarig (`supervisorctl restart`), unless the unit started it itself."""
    detail: str
    last_seen_at: float        # monotonic time the earlier process was last read


@dataclass
class JobDone:
    kind: str                  # verify | start | stop | crash
    epoch: int
    ok: bool
    reason: str
    refused: bool = False      # the launch gate refused the model file


@dataclass
class Reset:
    after_stops: int | None = None  # as Start's: an operator stop asked after the reset wins


@dataclass
class Refuse:
    """The planner will not start this unit (it cannot fit); `permanent` marks it failed,
    otherwise only the requests waiting for it are answered."""
    reason: str
    permanent: bool = True


@dataclass
class MoveWaiters:
    """Hand the requests waiting here to `to`, another placement of the same service (the
    planner routes the service there)."""
    to: object


@dataclass
class AdoptWaiters:
    waiters: list
