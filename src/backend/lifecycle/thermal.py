"""The thermal policy, run by the planner (its only writer): each GPU's level from its readings.

- ok: below thermal.target_c (or below target_c - hysteresis_c once it was hot).
- hot: at or past target_c. No new script placement and no lease on it; cooler GPUs are chosen
  first everywhere (switch.py, scale.py, gpu_leases.py). Its pinned LLMs still load: their GPUs
  are fixed, and a model down pages louder than a warm GPU.
- slowdown: at or past slowdown_c. Its script work moves off (CoolOff): placements stop
  drained, a lease ends (the command's next renew is told so and stops; its task runs again on
  a cooler GPU), and the GPU goes back to its LLMs. Ends below slowdown_c - hysteresis_c.

Readings come from the manager's thermal loop (NVML, or the simulated inventory's temperatures:
RUN_DIR/gpu-temperatures.json, PUT /admin/gpus/N/temperature), as Reading commands: the same
code on the CPU as on a GPU. A GPU without a temperature keeps its level."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import Enum

from llamarig.backend.lifecycle import gpu_leases, switch
from llamarig.backend.lifecycle.commands import Stop
from llamarig.backend.lifecycle.gpu_modes import TRANSITIONAL
from llamarig.backend.lifecycle.states import ENDED, State
from llamarig.shared.thermal_config import ThermalConfig

log = logging.getLogger("llamarig.planner")


class Level(str, Enum):
    OK = "ok"
    HOT = "hot"
    SLOWDOWN = "slowdown"


@dataclass
class Reading:
    celsius: dict[int, float]


@dataclass
class CoolOff:
    """Move `gpu`'s script work off it, if it is still at slowdown and still holds some."""
    gpu: int


@dataclass
class Thermal:
    config: ThermalConfig
    levels: dict[int, Level] = field(default_factory=dict)
    celsius: dict[int, float] = field(default_factory=dict)
    since: dict[int, float] = field(default_factory=dict)  # Unix time each GPU's level began
    cooling: set[int] = field(default_factory=set)  # CoolOff posted, not handled yet

    def level(self, gpu: int) -> Level:
        return self.levels.get(gpu, Level.OK)

    def hot(self, gpu: int) -> bool:
        return self.level(gpu) is not Level.OK

    def warmth(self, gpu: int) -> float:
        """For ordering: cooler first (an unread GPU counts as cool)."""
        return self.celsius.get(gpu, 0.0)

    def report(self, gpu: int) -> dict:
        return {"thermal": self.level(gpu).value, "temperature_c": self.celsius.get(gpu)}


def next_level(level: Level, c: float, cfg: ThermalConfig) -> Level:
    if c >= cfg.slowdown_c or (level is Level.SLOWDOWN and c > cfg.slowdown_c - cfg.hysteresis_c):
        return Level.SLOWDOWN
    if c >= cfg.target_c or (level is not Level.OK and c > cfg.target_c - cfg.hysteresis_c):
        return Level.HOT
    return Level.OK


def on_reading(p, c: Reading) -> None:
    t = p.thermal
    for gpu, celsius in c.celsius.items():
        was = t.level(gpu)
        now = next_level(was, celsius, t.config)
        t.celsius[gpu], t.levels[gpu] = celsius, now
        if now is not was:
            t.since[gpu] = time.time()
            log.info("gpu thermal level", extra={"event_type": "gpu_thermal", "gpu": gpu, "from": was.value,
                                                 "to": now.value, "celsius": celsius})
        if now is Level.SLOWDOWN and gpu not in t.cooling and holds_script_work(p, gpu):
            t.cooling.add(gpu)
            p.post(CoolOff(gpu))


def holds_script_work(p, gpu: int) -> bool:
    return gpu in p.leases or any(a.state not in ENDED for a in switch.script_on(p, gpu))


async def cool_off(p, c: CoolOff) -> None:
    p.thermal.cooling.discard(c.gpu)
    gpu = c.gpu
    if p.thermal.level(gpu) is not Level.SLOWDOWN or not holds_script_work(p, gpu) \
            or p.modes.mode(gpu) in TRANSITIONAL:
        return  # cooled meanwhile, its work ended, or a switch went wrong (switch.Stuck handles it)
    cfg = p.thermal.config
    reason = (f"GPU {gpu} at {p.thermal.celsius[gpu]:g} C, at or past thermal.slowdown_c ({cfg.slowdown_c:g}): "
              "its script work moves to cooler GPUs")
    log.warning("script work moved off a hot GPU", extra={"event_type": "gpu_cool_off", "gpu": gpu,
                                                          "lease": gpu in p.leases, "reason": reason})
    lease = p.leases.pop(gpu, None)
    if lease is not None:
        gpu_leases.save(p)  # (its command's next renew is answered 404: it stops, its task runs again)
    for placement in switch.script_on(p, gpu):
        if placement.state != State.STOPPED:
            placement.send(Stop(reason, drain=True))
    if gpu in p.switched:
        await switch.back_to_llm(p, gpu, reason)


async def read_every(inventory, post, config: ThermalConfig) -> None:
    """The manager's thermal loop: each GPU's temperature to the planner every interval_s. Only
    the temperatures are read: the whole reading, on the simulated inventory, walked every
    process for the memory in the loop's thread (measured: a tenth of the API's CPU under load)."""
    while True:
        try:
            celsius = inventory.temperatures()
        except Exception as e:  # (a failed reading: the stale-reading alert covers it; the levels stay)
            log.warning("thermal reading failed", extra={"reason": str(e)[:200]})
        else:
            if celsius:
                post(Reading(celsius))
        await asyncio.sleep(config.interval_s)


def apply_power_limit(inventory, config: ThermalConfig) -> dict[int, str]:
    """thermal.power_limit_w on every GPU, once at the start; what happened on each, logged."""
    if config.power_limit_w is None:
        return {}
    done = {g.index: inventory.set_power_limit(g.index, config.power_limit_w) for g in inventory.read()}
    for gpu, outcome in done.items():
        log.log(logging.INFO if outcome.startswith("set") else logging.WARNING, "gpu power limit",
                extra={"event_type": "gpu_power_limit", "gpu": gpu, "watts": config.power_limit_w, "outcome": outcome})
    return done
