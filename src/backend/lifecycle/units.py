"""What the lifecycle manager needs to know of each served unit, taken from the rig."""
from __future__ import annotations

from dataclasses import dataclass, replace

from llamarig.backend.engines import engine_for
from llamarig.backend.supervisor_conf import (BLUE, GREEN, WHISPER_PROGRAM, model_program, placement_program,
                                              placement_slot, verdict_key)
from llamarig.shared.rig import Rig


@dataclass(frozen=True)
class Unit:
    name: str                       # model name, or "whisper"
    kind: str                       # "llama" or "whisper"
    program: str                    # supervisord program name
    port: int
    ready_path: str                 # GET answers 200 once loaded
    metrics_path: str | None
    gpus: tuple[int, ...]
    split: tuple[float, ...]        # share of the unit on each of gpus, sums to 1
    priority: int
    required: bool
    warm: bool                      # loaded at boot, never unloaded or evicted
    keep_alive_s: float | None      # idle seconds before unload; None: never
    slot: str = BLUE                # blue: the usual server; green: the second one of a hot swap; gpuN: a placement
    switchable: bool = False        # the planner may stop it to give its GPU to script work
    script: bool = False            # a placed script service (Whisper, an embeddings model): not an LLM

    @property
    def is_llm(self) -> bool:
        """A model that holds its GPU as an LLM (a placed embeddings model is script work)."""
        return self.kind == "llama" and not self.script

    @property
    def gpu_label(self) -> str:
        return ",".join(map(str, self.gpus))

    @property
    def verdict_key(self) -> str:
        return verdict_key(self.name, self.slot)


def _split(gpus: list[int], tensor_split: list[float] | None) -> tuple[float, ...]:
    weights = tensor_split or [1.0] * len(gpus)
    total = sum(weights)
    return tuple(w / total for w in weights)


def units_from_rig(rig: Rig) -> list[Unit]:
    units = []
    for name, m in rig.models.items():
        if m.placements:
            continue  # placement_units
        engine = engine_for(m)
        keep = None if m.warm or m.keep_alive_s < 0 else m.keep_alive_s
        units.append(Unit(name, "llama", model_program(name), m.port, engine.ready_path, engine.metrics_path,
                          tuple(m.gpus), _split(m.gpus, m.tensor_split), m.priority, m.required,
                          m.warm, keep, switchable=m.may_switch))
    if rig.whisper and rig.whisper.gpus is None:
        w = rig.whisper
        units.append(Unit(WHISPER_PROGRAM, "whisper", WHISPER_PROGRAM, w.port, "/health", None, (w.gpu,),
                          (1.0,), 50, w.required, True, None))
    return units


def green_units(rig: Rig) -> dict[str, Unit]:
    """The second server slot of each model that has a swap_port, by model name."""
    blue = {u.name: u for u in units_from_rig(rig) if u.kind == "llama"}
    return {name: replace(blue[name], program=model_program(name, GREEN), port=m.swap_port, slot=GREEN)
            for name, m in rig.models.items() if m.swap_port is not None}


def placement_units(rig: Rig) -> dict[str, list[Unit]]:
    """The services placed by the planner, by name, one unit per GPU in order of preference:
    Whisper (whisper.gpus) and embeddings models with placements. Not loaded at boot, unloaded
    after lifecycle.script_idle_s idle."""
    idle, services = rig.lifecycle.script_idle_s, {}
    w = rig.whisper
    if w is not None and w.gpus is not None:
        services[WHISPER_PROGRAM] = [
            Unit(WHISPER_PROGRAM, "whisper", placement_program(g), w.port_on(g), "/health", None, (g,), (1.0,), 50,
                 False, False, idle, slot=placement_slot(g), script=True) for g in w.gpus]
    for name, m in rig.models.items():
        if m.placements:
            engine = engine_for(m)
            services[name] = [
                Unit(name, "llama", placement_program(g, model_program(name)), m.port_on(g), engine.ready_path,
                     engine.metrics_path, (g,), (1.0,), m.priority, False, False, idle, slot=placement_slot(g),
                     script=True) for g in m.placements]
    return services
