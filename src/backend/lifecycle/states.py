"""The states of a served unit (a llama model or Whisper), its transitions and their timeouts.

Standard library only. The seed's words map onto these states:
  initializing -> VERIFYING, STARTING   (file checks, then the server loads)
  warm         -> READY                 (loaded, idle)
  active       -> BUSY                  (serving at least one request)
  cooling      -> DRAINING              (no new requests; in-flight ones finish)
  terminated   -> STOPPED               (no process; STOPPING is the way there)
FAILED is where a unit waits for a restart (with backoff) or, once its circuit is open or its
file was refused, for an operator.

Every transition goes into the transitions counter and is logged; into the unit's history and
at INFO, except READY <-> BUSY, which happens at every request's start and end: that one is
logged at DEBUG (at INFO it was most of the log and a fifth of the compute API's CPU) and left
out of the history (under traffic it would push out everything else).
"""
from __future__ import annotations

from enum import Enum


class State(str, Enum):
    STOPPED = "stopped"
    VERIFYING = "verifying"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"


SERVING = frozenset({State.READY, State.BUSY})
LOADING = frozenset({State.VERIFYING, State.STARTING})
SETTLED = frozenset({State.READY, State.BUSY, State.FAILED, State.STOPPED})  # a start has ended, well or not
ENDED = frozenset({State.STOPPED, State.FAILED})  # no server of the unit is running or wanted
# Resting states have no deadline of their own (READY may have keep_alive, see timeout_for).
RESTING = frozenset({State.STOPPED, State.READY, State.BUSY, State.FAILED})
PROCESS_EXPECTED = frozenset({State.STARTING, State.READY, State.BUSY, State.DRAINING})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.VERIFYING, State.FAILED}),  # FAILED: refused before it starts
    State.VERIFYING: frozenset({State.STARTING, State.FAILED, State.STOPPED}),
    State.STARTING: frozenset({State.READY, State.FAILED, State.STOPPING}),
    # STARTING from READY or BUSY: a process restarted outside llamarig is waited for.
    State.READY: frozenset({State.BUSY, State.DRAINING, State.STOPPING, State.FAILED, State.STARTING}),
    State.BUSY: frozenset({State.READY, State.DRAINING, State.STOPPING, State.FAILED, State.STARTING}),
    State.DRAINING: frozenset({State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.FAILED: frozenset({State.VERIFYING, State.STOPPING, State.STOPPED}),
}

# What a state turns into when its timeout expires.
ON_TIMEOUT: dict[State, State] = {
    State.VERIFYING: State.FAILED,
    State.STARTING: State.FAILED,
    State.READY: State.DRAINING,  # keep_alive expired: idle unload
    State.DRAINING: State.STOPPING,  # in-flight requests had their time
    State.STOPPING: State.FAILED,  # the process would not go: an operator must look
}


class IllegalTransition(Exception):
    def __init__(self, unit: str, source: State, target: State):
        super().__init__(f"{unit}: {source.value} -> {target.value} is not a legal transition")


def check_transition(unit: str, source: State, target: State) -> None:
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(unit, source, target)


def timeout_for(state: State, timeouts, keep_alive_s: float | None) -> float | None:
    """Seconds a unit may stay in `state`; None: no limit. `timeouts` is the rig's
    TimeoutsConfig; keep_alive_s is None for units that are never unloaded when idle."""
    return {
        State.VERIFYING: timeouts.verify_budget_s,
        State.STARTING: timeouts.start_s,
        State.READY: keep_alive_s,
        State.DRAINING: timeouts.drain_s,
        State.STOPPING: timeouts.kill_budget_s,
    }.get(state)
