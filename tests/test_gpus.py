"""The GPU inventory where NVML finds no device (this machine, CI): the early NVML start runs
only where the rig may use NVML, and leaves open_inventory's answer as it was."""
import threading

from llamarig.shared import gpus
from llamarig.shared.gpus import open_inventory, start_nvml_early
from llamarig.shared.rig import GpusConfig

ONE_GPU = [{"index": 0, "name": "sim-0", "memory_mib": 1024}]


def _start_early_and_wait(config: GpusConfig) -> None:
    start_nvml_early(config)
    for t in [t for t in threading.enumerate() if t.name == "nvml-start"]:
        t.join(10)


def _counting_nvml_starts(monkeypatch) -> list:
    calls, real = [], gpus._nvml_or_reason
    monkeypatch.setattr(gpus, "_nvml_or_reason", lambda: calls.append(1) or real())
    return calls


def test_early_start_then_open_gives_the_simulated_inventory_with_its_reason(monkeypatch):
    calls = _counting_nvml_starts(monkeypatch)
    config = GpusConfig(source="auto", simulated=ONE_GPU)
    _start_early_and_wait(config)
    assert len(calls) == 1
    inventory = open_inventory(config)
    assert inventory.simulated and "NVML" in inventory.reason
    assert [g.total_bytes for g in inventory.read()] == [1024 * 1024 * 1024]


def test_no_early_start_when_the_rig_asks_for_the_simulated_inventory(monkeypatch):
    calls = _counting_nvml_starts(monkeypatch)
    _start_early_and_wait(GpusConfig(source="simulated", simulated=ONE_GPU))
    assert calls == []
