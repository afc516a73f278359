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


def test_with_nvml_the_modes_and_the_gpus_to_lend_are_nvmls_not_the_declared_list(tmp_path):
    """Seen on a lent one-GPU host: the rig declared five simulated GPUs (its fallback), NVML
    found one, and the planner lent GPU 1, which did not exist, so a script command never got a
    GPU. The modes are the inventory's GPUs (and any a unit names); a GPU NVML does not show is
    never lent."""
    from helpers import model_entry, write_rig
    from llamarig.backend.lifecycle import gpu_leases
    from llamarig.backend.lifecycle.manager import Manager
    from llamarig.backend.llama_http import ServerHttp
    from llamarig.backend.supervisor import SupervisorClient
    from llamarig.shared.gpus import GpuReading
    from llamarig.shared.rig import load_rig

    class OneGpu:  # what NvmlInventory reads on that host
        simulated, reason = False, "NVML: 1 device(s)"

        def read(self):
            return [GpuReading(0, "NVIDIA H200", 140 * 2**30, 2**30)]
    rig = load_rig(write_rig(tmp_path, {"w0": model_entry(tmp_path / "m.gguf", [0]),
                                        "w3": model_entry(tmp_path / "m.gguf", [3])}, gpus={"source": "nvml"}))
    assert len(rig.gpus.simulated) == 5
    m = Manager(rig, SupervisorClient(tmp_path / "none.sock"), ServerHttp(), inventory=OneGpu())
    assert sorted(m.modes.gpus) == [0, 3]  # 3: named by w3, which cannot load here
    assert gpu_leases._candidates(m.planner) == [0]
