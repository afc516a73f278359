"""Each GPU's mode: which kind of work holds it (its LLMs, a script service such as Whisper, or
nothing), or a switch in progress. The planner is its only writer; the modes are standard
library only, like states.py.

The seed rig's six GPU states map onto a mode and the state of the unit holding the GPU:
  idle           -> IDLE
  booting_llm    -> LLM, its model loading (verifying, starting)
  llm_ready      -> LLM, its model ready
  llm_busy       -> LLM, its model busy
  booting_script -> TO_SCRIPT (the LLM drains and stops, the memory clears, the service loads)
  script_busy    -> SCRIPT (ready or busy: the service's own state says which)
TO_LLM, the way back (the service stops, the LLM loads again), has no name in the seed. Each
transitional mode has a time limit; the planner's switch gives up past it and says why.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("llamarig.gpu_modes")
HISTORY = 50


class Mode(str, Enum):
    IDLE = "idle"
    LLM = "llm"
    TO_SCRIPT = "to_script"
    SCRIPT = "script"
    TO_LLM = "to_llm"


TRANSITIONS: dict[Mode, frozenset[Mode]] = {
    Mode.IDLE: frozenset({Mode.LLM, Mode.TO_SCRIPT}),
    Mode.LLM: frozenset({Mode.IDLE, Mode.TO_SCRIPT}),
    Mode.TO_SCRIPT: frozenset({Mode.SCRIPT, Mode.TO_LLM}),  # TO_LLM: the switch failed, the LLM comes back
    Mode.SCRIPT: frozenset({Mode.TO_LLM, Mode.IDLE}),       # IDLE: no LLM to give it back to
    Mode.TO_LLM: frozenset({Mode.LLM, Mode.IDLE, Mode.TO_LLM}),  # TO_LLM: giving it back again after a failure
}
TRANSITIONAL = frozenset({Mode.TO_SCRIPT, Mode.TO_LLM})
DIRECTION = {Mode.SCRIPT: "to_script", Mode.LLM: "to_llm"}  # a switch's direction, by where it ends


class IllegalModeChange(Exception):
    pass


@dataclass(frozen=True)
class ModeChange:
    at: float
    source: str
    target: str
    holder: str
    reason: str


@dataclass
class GpuMode:
    index: int
    mode: Mode
    holder: str                  # the units holding it ("" when idle)
    since: float                 # monotonic
    switch_began: float | None = None
    history: collections.deque | None = None


class GpuModes:
    """The modes of every GPU; `limit_s` bounds each transitional mode."""

    def __init__(self, initial: dict[int, tuple[Mode, str]], limit_s: float, hooks=None):
        now = time.monotonic()
        self.gpus = {g: GpuMode(g, mode, holder, now, None, collections.deque(maxlen=HISTORY))
                     for g, (mode, holder) in initial.items()}
        self.limit_s = limit_s
        self.hooks = hooks

    def mode(self, gpu: int) -> Mode:
        return self.gpus[gpu].mode

    def set(self, gpu: int, target: Mode, holder: str, reason: str) -> None:
        g = self.gpus[gpu]
        if target not in TRANSITIONS[g.mode]:
            raise IllegalModeChange(f"GPU {gpu}: {g.mode.value} -> {target.value} is not a legal mode change")
        source, now = g.mode, time.monotonic()
        if target in TRANSITIONAL and source not in TRANSITIONAL:
            g.switch_began = now
        g.mode, g.holder, g.since = target, holder, now
        g.history.append(ModeChange(time.time(), source.value, target.value, holder, reason))
        log.info("gpu mode change", extra={"gpu": gpu, "source": source.value, "target": target.value,
                                           "holder": holder, "reason": reason})
        if target in DIRECTION and g.switch_began is not None:
            took, g.switch_began = now - g.switch_began, None
            if self.hooks:
                self.hooks.on_switch(gpu, DIRECTION[target], took)

    def time_left(self, gpu: int) -> float:
        """Seconds the current transitional mode has left (its limit from its start)."""
        return max(0.0, self.gpus[gpu].since + self.limit_s - time.monotonic())

    def report(self, gpu: int) -> dict:
        g = self.gpus.get(gpu)
        if g is None:  # a GPU no unit names: nothing ever holds it
            return {"mode": Mode.IDLE.value, "holder": "", "mode_since_s": None, "mode_history": []}
        return {"mode": g.mode.value, "holder": g.holder, "mode_since_s": round(time.monotonic() - g.since, 3),
                "mode_history": [vars(c) for c in g.history][-10:]}
