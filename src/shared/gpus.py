"""One GPU inventory interface: NVML where it finds devices, else the declared simulated one.

The simulated inventory keeps the real rig's topology. Its "used memory" is not made up: the
caller passes a function giving the bytes in use on a GPU (the lifecycle manager sums the
resident memory of the processes pinned to it), so settle and estimate-vs-actual logic runs
for real on the CPU.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from llamarig.shared.errors import LlamarigError
from llamarig.shared.rig import GpusConfig, GpuSource

log = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    throttle: tuple[str, ...] = ()  # NVML's reasons the clocks are held down now (THROTTLE's names)

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


# NVML's clock throttle (event) reason bits, by the names the metrics use.
THROTTLE = {0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
            0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
            0x100: "display_clocks"}
TEMPERATURES = "gpu-temperatures.json"  # the simulated inventory's temperature per GPU, in the run folder


def throttle_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE.items() if mask & bit)


def simulated_temperatures(run_dir: Path) -> dict[int, float]:
    """The simulated GPUs' temperatures: what PUT /admin/gpus/N/temperature (or a person) wrote
    in RUN_DIR/gpu-temperatures.json, {"0": 71.5, ...}; none where it is missing or unreadable."""
    try:
        data = json.loads((run_dir / TEMPERATURES).read_text())
        return {int(k): float(v) for k, v in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("simulated GPU temperatures unreadable", extra={"reason": str(e)[:200]})
        return {}


class GpuInventory(Protocol):
    simulated: bool
    reason: str

    def read(self) -> list[GpuReading]: ...

    def temperatures(self) -> dict[int, float]: ...

    def set_power_limit(self, index: int, watts: float) -> str: ...


class NvmlInventory:
    simulated = False

    def __init__(self, nvml):
        self.nvml = nvml
        self.reason = f"NVML: {nvml.nvmlDeviceGetCount()} device(s)"

    def read(self) -> list[GpuReading]:
        n = self.nvml
        return [self._reading(i, n.nvmlDeviceGetHandleByIndex(i)) for i in range(n.nvmlDeviceGetCount())]

    def temperatures(self) -> dict[int, float]:
        """Each GPU's temperature alone: the thermal loop's reading, one NVML call a GPU."""
        n, out = self.nvml, {}
        for i in range(n.nvmlDeviceGetCount()):
            handle = n.nvmlDeviceGetHandleByIndex(i)
            celsius = self._optional(lambda: n.nvmlDeviceGetTemperature(handle, n.NVML_TEMPERATURE_GPU))
            if celsius is not None:
                out[i] = celsius
        return out

    def _reading(self, index: int, handle) -> GpuReading:
        n = self.nvml
        mem = n.nvmlDeviceGetMemoryInfo(handle)
        name = n.nvmlDeviceGetName(handle)
        return GpuReading(
            index, name.decode() if isinstance(name, bytes) else name, mem.total, mem.used,
            self._optional(lambda: n.nvmlDeviceGetUtilizationRates(handle).gpu),
            self._optional(lambda: n.nvmlDeviceGetTemperature(handle, n.NVML_TEMPERATURE_GPU)),
            self._optional(lambda: n.nvmlDeviceGetPowerUsage(handle) / 1000.0),
            self._optional(lambda: n.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
            throttle_names(int(self._optional(lambda: self._throttle_mask(handle)) or 0)))

    def _throttle_mask(self, handle) -> int:
        n = self.nvml  # (renamed "clocks event reasons" in newer NVML; the bits are the same)
        read = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or n.nvmlDeviceGetCurrentClocksThrottleReasons
        return read(handle)

    def set_power_limit(self, index: int, watts: float) -> str:
        """Set one GPU's power limit; returns what happened, in words (never raises)."""
        n = self.nvml
        try:
            handle = n.nvmlDeviceGetHandleByIndex(index)
            low, high = n.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            if not low <= watts * 1000 <= high:
                return f"skipped: {watts:g} W is outside this board's range {low / 1000:g}-{high / 1000:g} W"
            n.nvmlDeviceSetPowerManagementLimit(handle, int(watts * 1000))
            return f"set to {watts:g} W"
        except n.NVMLError as e:
            return f"refused by NVML ({e}): setting it needs root; set it on the host with nvidia-smi -pl"

    def _processes(self, index: int) -> dict[int, int]:
        handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return {p.pid: (p.usedGpuMemory or 0) for p in procs}

    def pids_on(self, index: int) -> set[int]:
        """Processes holding memory on a GPU (NVML sees host pids, so this is empty inside a
        container without the host's pid namespace)."""
        return set(self._processes(index))

    def process_bytes(self, index: int, pids: set[int]) -> int:
        return sum(b for pid, b in self._processes(index).items() if pid in pids)

    def _optional(self, read):
        # Some boards do not report power or utilisation; a missing value is not an error.
        try:
            return float(read())
        except self.nvml.NVMLError:
            return None


class SimulatedInventory:
    simulated = True

    def __init__(self, config: GpusConfig, used_bytes: Callable[[int], int], reason: str,
                 temperatures: Callable[[], dict[int, float]] = dict):
        self.gpus = config.simulated
        self.used_bytes = used_bytes
        self._celsius = temperatures
        self.reason = reason

    def read(self) -> list[GpuReading]:
        celsius = self._celsius()
        return [GpuReading(g.index, g.name, g.memory_mib * MIB, self.used_bytes(g.index),
                           temperature_c=celsius.get(g.index)) for g in self.gpus]

    def temperatures(self) -> dict[int, float]:
        """Without the memory: a simulated GPU's 'used' memory walks every process's tree."""
        known = {g.index for g in self.gpus}
        return {g: c for g, c in self._celsius().items() if g in known}

    def set_power_limit(self, index: int, watts: float) -> str:
        return "not applied: the simulated inventory has no power control"


def start_nvml_early(config: GpusConfig) -> None:
    """Start NVML and take a first reading in a thread while the caller imports the rest: the two
    took 38 ms on the lent H100 host (bench/RESULTS.md), and ctypes lets other Python run during
    its calls. open_inventory then finds NVML started; where it fails, open_inventory fails the
    same way and says why, so this thread drops the error."""
    if config.source == GpuSource.simulated:
        return

    def start():
        nvml, _ = _nvml_or_reason()
        if nvml:
            try:
                NvmlInventory(nvml).read()
            except nvml.NVMLError:
                pass  # read again, and reported, by the inventory's owner

    threading.Thread(target=start, name="nvml-start", daemon=True).start()


def _nvml_or_reason():
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() > 0:
            return pynvml, ""
        return None, "NVML found no device"
    except Exception as e:  # NVML raises a family of classes; any of them means "no NVML"
        return None, f"NVML unavailable ({e})"


def nvml_only(config: GpusConfig) -> NvmlInventory | None:
    """NVML's inventory where the rig may use it and it finds a device; None else (no warning:
    for readings that only NVML can give, such as a task's VRAM peak)."""
    if config.source == GpuSource.simulated:
        return None
    nvml, _ = _nvml_or_reason()
    return NvmlInventory(nvml) if nvml else None


def open_inventory(config: GpusConfig, used_bytes: Callable[[int], int] = lambda i: 0,
                   temperatures: Callable[[], dict[int, float]] = dict) -> GpuInventory:
    """The inventory the rig asks for; simulated (with its reason logged) where NVML has none."""
    if config.source != GpuSource.simulated:
        nvml, why = _nvml_or_reason()
        if nvml:
            return NvmlInventory(nvml)
        if config.source == GpuSource.nvml:
            raise LlamarigError("nvml_unavailable", f"{why}; gpus.source is 'nvml' so nothing starts")
    else:
        why = "gpus.source is 'simulated'"
    reason = f"{why}: simulated inventory of {len(config.simulated)} GPU(s), servers run on the CPU"
    log.warning("gpu inventory simulated", extra={"reason": reason})
    return SimulatedInventory(config, used_bytes, reason, temperatures)

