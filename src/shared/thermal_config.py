"""The rig's `thermal` section: when a GPU is too hot for more work (backend/lifecycle/thermal.py)."""
from __future__ import annotations

from pydantic import Field, model_validator

from llamarig.shared.rig_types import Strict


class ThermalConfig(Strict):
    target_c: float = Field(83, ge=40, le=120, description="Celsius at or past which a GPU gets no new script "
                            "placement and no lease, and cooler GPUs are chosen first (its pinned LLMs still load: "
                            "their GPUs are fixed).")
    slowdown_c: float = Field(99, ge=40, le=130, description="Celsius at or past which the script work on a GPU "
                              "(script placements, a lease) is moved off it: placements stop drained, a lease ends "
                              "(its task runs again on a cooler GPU), and the GPU goes back to its LLMs.")
    hysteresis_c: float = Field(5, ge=0, le=30, description="Degrees under a threshold a GPU must fall to below "
                                "it again: work resumes below target_c minus this (and slowdown ends below "
                                "slowdown_c minus this); 0: at once.")
    interval_s: float = Field(2, ge=0.1, le=300, description="Seconds between thermal readings.")
    power_limit_w: float | None = Field(None, ge=50, le=2000, description="Watts each GPU's power limit is set to at "
                                        "the compute API's start, where NVML lets this process set it (root, or "
                                        "the host's nvidia-smi -pl otherwise: a refusal is logged, never fatal); "
                                        "a value outside a board's range is skipped and logged. null: left alone.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.slowdown_c <= self.target_c:
            raise ValueError(f"slowdown_c: {self.slowdown_c:g} must be above target_c ({self.target_c:g})")
        return self
