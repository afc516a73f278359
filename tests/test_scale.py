"""Scale-out's rule (backend/lifecycle/scale.py) and the worker-model spread (activities.pick_model)
over fakes: which placement a request goes to, which GPU a scale-out may take, the hold."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from llamarig.backend.lifecycle import scale, thermal
from llamarig.backend.lifecycle.gpu_modes import Mode
from llamarig.backend.lifecycle.states import State
from llamarig.backend.lifecycle.thermal import Thermal
from llamarig.shared.thermal_config import ThermalConfig
from llamarig.work.activities import pick_model


@dataclass
class FakeActor:
    gpu: int
    state: State = State.STOPPED
    leases: set = field(default_factory=set)
    waiters: list = field(default_factory=list)
    llm: bool = False
    switchable: bool = True
    operator_held: bool = False
    refused: bool = False

    @property
    def unit(self):
        return SimpleNamespace(gpus=(self.gpu,), is_llm=self.llm, switchable=self.switchable, name="x")


def _rig(hold_s: float = 30):
    return SimpleNamespace(lifecycle=SimpleNamespace(switch_hold_s=hold_s))


def _m(placements, llms=(), modes=None, given_back=None, hold_s=30):
    modes = modes or {}
    return SimpleNamespace(slots={"whisper": list(placements)}, actors={"whisper": placements[0]},
                           all_actors=lambda: list(placements) + list(llms), leases={},
                           modes=SimpleNamespace(mode=lambda g: modes.get(g, Mode.IDLE)),
                           given_back_at=given_back or {}, rig=_rig(hold_s),
                           memory=SimpleNamespace(reserved_gpus=set), thermal=Thermal(ThermalConfig()))


def test_a_request_goes_to_an_idle_placement_then_to_a_spare_then_to_the_least_busy():
    a, b, c = FakeActor(3, State.READY), FakeActor(4, State.BUSY, leases={1}), FakeActor(2)
    m = _m([a, b, c])
    assert scale.route(m, "whisper") is a  # nothing outstanding there
    a.leases = {1, 2}
    assert scale.route(m, "whisper") is c  # every live one has work: a spare starts
    c.state = State.STARTING
    c.waiters = [1]
    assert scale.route(m, "whisper") is b  # no spare left: the least outstanding (b and c 1 each, a 2)


def test_with_none_live_the_active_placement_takes_it():
    a, b = FakeActor(3), FakeActor(4)
    assert scale.route(_m([a, b]), "whisper") is a


def test_a_scale_out_takes_free_gpus_first_then_idle_llms_never_serving_ones_nor_held_ones():
    free, behind_llm = FakeActor(4), FakeActor(2)
    llm = FakeActor(2, State.READY, llm=True)
    m = _m([free, behind_llm], [llm], modes={2: Mode.LLM, 4: Mode.IDLE})
    assert scale.rank(m, free) == scale.NOTHING_TO_STOP and scale.rank(m, behind_llm) == scale.IDLE_LLMS
    assert scale.spare(m, [behind_llm, free]) is free
    llm.leases = {1}  # the LLM serves: not for a scale-out
    assert scale.rank(m, behind_llm) is None
    llm.leases = set()
    m.given_back_at[2] = time.monotonic() - 5  # given back 5 s ago, held 30 s
    assert scale.rank(m, behind_llm) is None
    m.rig.lifecycle.switch_hold_s = 4
    assert scale.rank(m, behind_llm) == scale.IDLE_LLMS
    llm.switchable = False
    assert scale.rank(m, behind_llm) is None


def test_a_gpu_mid_switch_lent_or_a_held_placement_is_not_taken():
    p = FakeActor(4)
    m = _m([p], modes={4: Mode.TO_LLM})
    assert scale.rank(m, p) is None
    m = _m([p])
    m.leases = {4: object()}
    assert scale.rank(m, p) is None
    p.operator_held = True
    assert scale.rank(_m([p]), p) is None


def test_llm_tasks_spread_over_worker_models_as_script_services_do():
    load = {"a": {"state": "busy", "inflight": 1}, "b": {"state": "ready", "inflight": 0}, "c": {"state": "stopped"}}
    assert pick_model(["a", "b", "c"], load) == "b"
    load["b"]["inflight"] = 2
    assert pick_model(["a", "b", "c"], load) == "c"  # every serving one busy: a stopped one loads
    assert pick_model(["a", "b", "c"], load | {"c": {"state": "stopped", "held": True}}) == "a"  # not one held
    load["c"] = {"state": "loading"}
    assert pick_model(["a", "b", "c"], load) == "a"  # none stopped: the least outstanding


def test_a_scale_out_never_takes_a_hot_gpu_and_prefers_the_cooler():
    warm, cool, hot = FakeActor(4), FakeActor(5), FakeActor(6)
    m = _m([warm, cool, hot])
    thermal.on_reading(SimpleNamespace(thermal=m.thermal, leases={}, slots={}, post=None),
                       thermal.Reading({4: 70, 5: 50, 6: 90}))
    assert scale.rank(m, hot) is None and scale.spare(m, [warm, hot, cool]) is cool
    thermal.on_reading(SimpleNamespace(thermal=m.thermal, leases={}, slots={}, post=None),
                       thermal.Reading({6: 80}))  # under the target, not under target minus hysteresis
    assert scale.rank(m, hot) is None
    thermal.on_reading(SimpleNamespace(thermal=m.thermal, leases={}, slots={}, post=None),
                       thermal.Reading({6: 77}))
    assert scale.rank(m, hot) == scale.NOTHING_TO_STOP
