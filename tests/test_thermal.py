"""The thermal policy: levels with hysteresis (alone), then on real bundles on the simulated
inventory, its temperatures set through PUT /admin/gpus/N/temperature: a hot GPU gets no lease
and no placement and cooler ones are chosen; at slowdown a lease ends and a placement stops."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from helpers import free_ports_in_a_row, llamarig, model_entry, wait_for, write_rig
from llamarig.backend.lifecycle.thermal import Level, next_level
from llamarig.shared.gpus import NvmlInventory, SimulatedInventory, throttle_names
from llamarig.shared.rig import GpusConfig
from llamarig.shared.thermal_config import ThermalConfig
from test_health import sample

CFG = ThermalConfig()  # 83 / 99, hysteresis 5


@pytest.mark.parametrize("was, celsius, now", [
    (Level.OK, 82.9, Level.OK), (Level.OK, 83, Level.HOT), (Level.HOT, 80, Level.HOT), (Level.HOT, 78, Level.OK),
    (Level.OK, 99, Level.SLOWDOWN), (Level.SLOWDOWN, 95, Level.SLOWDOWN), (Level.SLOWDOWN, 94, Level.HOT),
    (Level.SLOWDOWN, 70, Level.OK), (Level.HOT, 120, Level.SLOWDOWN),
])
def test_levels_rise_at_their_thresholds_and_fall_only_past_the_hysteresis(was, celsius, now):
    assert next_level(was, celsius, CFG) is now


def test_a_slowdown_not_above_the_target_is_refused_with_its_path():
    with pytest.raises(ValidationError, match="slowdown_c: 80 must be above target_c"):
        ThermalConfig(target_c=85, slowdown_c=80)


def test_the_simulated_inventory_reads_its_temperatures_and_sets_no_power_limit():
    gpus = GpusConfig(source="simulated", simulated=[{"index": 0, "name": "s", "memory_mib": 10},
                                                     {"index": 1, "name": "s", "memory_mib": 10}])
    inv = SimulatedInventory(gpus, lambda i: 0, "test", lambda: {1: 71.5})
    assert [g.temperature_c for g in inv.read()] == [None, 71.5]
    assert "not applied" in inv.set_power_limit(0, 300)
    assert throttle_names(0x20 | 0x4) == ("sw_power_cap", "sw_thermal")


def test_the_thermal_loops_reading_is_the_temperatures_alone():
    """Not the memory: on the simulated inventory that walks every process's tree, in the loop's
    thread, every interval_s (it cost a tenth of the API's CPU under load)."""
    gpus = GpusConfig(source="simulated", simulated=[{"index": 0, "name": "s", "memory_mib": 10}])

    def no_memory(index):
        raise AssertionError("the thermal reading read the memory")
    assert SimulatedInventory(gpus, no_memory, "test", lambda: {0: 70.0, 7: 99.0}).temperatures() == {0: 70.0}

    class Nvml:  # pynvml's shape; GPU 1 reports no temperature
        NVMLError, NVML_TEMPERATURE_GPU = OSError, 0

        def nvmlDeviceGetCount(self):
            return 2

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetTemperature(self, handle, sensor):
            if handle == 1:
                raise OSError("not supported")
            return 64

        def nvmlDeviceGetMemoryInfo(self, handle):
            raise AssertionError("the thermal reading read the memory")
    assert NvmlInventory(Nvml()).temperatures() == {0: 64.0}


# ---- on real bundles --------------------------------------------------------------------------------
def _rig(tmp_path, models, whisper=None):
    return write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])}, whisper, thermal={"interval_s": 0.2})


def _heat(b, **celsius) -> None:
    for gpu, c in celsius.items():
        r = b.http.put(f"{b.api}/admin/gpus/{gpu[1:]}/temperature", json={"celsius": c}, timeout=10)
        assert r.status_code == 200, r.text
    wait_for(lambda: all(_gpu(b, int(g[1:]))["temperature_c"] == c for g, c in celsius.items()), 10,
             "the thermal loop to read the temperatures")


def _gpu(b, index: int) -> dict:
    return next(g for g in b.get("/admin/units").json()["gpus"] if g["index"] == index)


def _lease(b) -> dict:
    r = b.post("/admin/gpus/lease", json={"holder": "test", "ttl_s": 60})
    return r.json() | {"status": r.status_code}


@pytest.mark.slow
def test_a_hot_gpu_is_lent_to_nobody_the_coolest_is_and_slowdown_takes_a_lease_back(tmp_path, models, bundle_factory):
    b = bundle_factory(_rig(tmp_path, models))
    b.wait_ready()
    _heat(b, g0=85, g1=90, g2=60, g3=40, g4=50)  # (GPU 0 holds the switchable LLM: lendable too when cool)
    assert _gpu(b, 1)["thermal"] == "hot" and _gpu(b, 3)["thermal"] == "ok"
    assert "[hot 90 C]" in llamarig(b.rig_path, "status").stdout
    first = _lease(b)
    assert (first["status"], first["gpu"]) == (201, 3), first  # the coolest without an LLM; never the hot one
    _heat(b, g3=100)  # past slowdown_c: the lease ends, its command would stop at its next renew
    wait_for(lambda: b.post(f"/admin/gpus/lease/{first['lease_id']}/renew").status_code == 404, 10,
             "the lease on the GPU at slowdown to end")
    assert _gpu(b, 3)["thermal"] == "slowdown" and sample(b, "llamarig_gpu_thermal_level", gpu="3", level="slowdown") == 1
    assert _lease(b)["gpu"] == 4  # 50 C: cooler than GPU 2
    _heat(b, g1=80)  # under the target, not by the hysteresis: still hot
    assert _gpu(b, 1)["thermal"] == "hot"
    _heat(b, g2=95)
    refused = _lease(b)  # GPUs 0, 1 and 2 hot, 3 at slowdown, 4 lent
    assert refused["status"] == 503 and "thermal.target_c" in refused["error"]["message"], refused
    _heat(b, g1=77)
    assert _gpu(b, 1)["thermal"] == "ok" and _lease(b)["gpu"] == 1


@pytest.mark.slow
def test_a_placement_goes_to_the_cooler_gpu_and_leaves_one_at_slowdown(tmp_path, models, wav, bundle_factory):
    whisper = {"model_dir": str(models["whisper"]), "gpus": [3, 4], "port": free_ports_in_a_row(2)}
    b = bundle_factory(_rig(tmp_path, models, whisper))
    b.wait_ready()
    _heat(b, g3=90, g4=40)

    def transcribe():
        with wav.open("rb") as f:
            return b.post("/v1/audio/transcriptions", files={"file": ("a.wav", f, "audio/wav")},
                          data={"model": "whisper-1"}, timeout=120)

    def placed() -> dict[int, str]:
        return {p["gpus"][0]: p["state"] for p in b.get("/admin/units").json()["placements"]["whisper"]}

    assert transcribe().status_code == 200
    assert placed()[4] in ("ready", "busy") and placed()[3] == "stopped"
    _heat(b, g4=100)
    wait_for(lambda: placed()[4] == "stopped", 30, "the placement on the GPU at slowdown to stop")
    refused = transcribe()  # GPU 3 hot, GPU 4 at slowdown: no placement may start
    assert refused.status_code == 503 and "Retry-After" in refused.headers, refused.text
    _heat(b, g3=70)
    assert transcribe().status_code == 200 and placed()[3] in ("ready", "busy")


@pytest.mark.slow
def test_temperatures_are_set_only_on_the_simulated_inventory_and_checked(tmp_path, models, bundle_factory):
    b = bundle_factory(_rig(tmp_path, models))
    b.wait_ready()
    put = lambda gpu, body: b.http.put(f"{b.api}/admin/gpus/{gpu}/temperature", json=body, timeout=10)  # noqa: E731
    assert put(9, {"celsius": 50}).status_code == 404
    for bad in ({"celsius": "hot"}, {"celsius": 900}, {"c": 1}, [1], {"celsius": True}):
        r = put(1, bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "celsius", (bad, r.text)
