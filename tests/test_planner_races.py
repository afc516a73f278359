"""The planner's races a review found, each reproduced over the fakes (tests/planner_fakes.py:
the real manager, planner and actors; no process): each failed before its fix."""
from __future__ import annotations

import asyncio
import time

import pytest

from helpers import free_port, free_ports_in_a_row, model_entry, write_rig
from llamarig.backend.lifecycle import swap
from llamarig.backend.lifecycle.states import LOADING, SERVING, State
from planner_fakes import fake_manager

FAST = {"timeouts": {"model_wait_s": 0, "settle_s": 0, "start_s": 10, "stop_s": 1, "drain_s": 1},
        "lifecycle": {"health_interval_s": 0.05, "probe_timeout_s": 0.5, "failure_threshold": 2,
                      "backoff_initial_s": 0.1, "backoff_max_s": 0.5, "vram_settle_s": 0.1, "vram_margin_mib": 0,
                      "queue_timeout_s": 5, "deep_probe_interval_s": 0}}


async def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def started():
    made = []

    async def start(rig_path, capacity=None):
        m, fake = fake_manager(rig_path, capacity)
        await m.start()
        await _until(m.booted.is_set, 10, "boot")
        made.append(m)
        return m, fake
    yield start
    for m in made:
        await m.close()


async def test_a_cold_load_does_not_wait_behind_another_models_load(tmp_path, models, started):
    """One planner queue held a load until it settled: a request for another model waited up to
    the load budget. A load is now a reservation and a continuation."""
    rig = write_rig(tmp_path, {"a": model_entry(models["gguf"], [0], warm=False),
                               "b": model_entry(models["gguf"], [1], warm=False)}, **FAST)
    m, fake = await started(rig)
    fake.slow.add("llama-a")  # a's server takes its time to answer
    a = asyncio.ensure_future(m.acquire("a"))
    await _until(lambda: m.actors["a"].state in LOADING, 5, "a loading")
    lease = await asyncio.wait_for(m.acquire("b"), 3)
    assert lease.actor.unit.name == "b" and m.actors["a"].state in LOADING and not a.done()
    lease.release()
    fake.slow.clear()
    (await asyncio.wait_for(a, 5)).release()


async def test_a_green_server_that_crashed_after_its_load_is_not_routed_to(tmp_path, models, started):
    """The hand-over acted on the readiness its command carried, taken when the green server's
    wait ended: a green that crashed since got the traffic while the good one drained."""
    rig = write_rig(tmp_path, {"m": model_entry(models["gguf"], [0], swap_port=free_port())}, **FAST)
    m, fake = await started(rig)
    post, held = m.planner.post, []
    m.planner.post = lambda c: held.append(c) if isinstance(c, swap.Started) else post(c)
    record = await m.reload("m")
    assert record["how"] == "blue-green", record
    await _until(lambda: held, 5, "the green server settled")
    green = held[0].new
    fake.crash(green.unit.program)  # after its wait ended, before its hand-over runs
    await _until(lambda: green.state not in SERVING, 5, "the crash seen")
    post(held[0])
    await _until(lambda: m.swaps["m"]["state"] != "starting", 5, "the hand-over")
    assert m.swaps["m"]["state"] == "failed", m.swaps["m"]
    assert m.actors["m"].unit.program == "llama-m" and m.actors["m"].state in SERVING


async def test_a_reload_counts_its_green_servers_memory_before_that_server_loads(tmp_path, models, started):
    """A reload's green server was started before its memory was counted: a load planned while
    it loaded took the same memory."""
    rig = write_rig(tmp_path, {"m": model_entry(models["gguf"], [0], swap_port=free_port()),
                               "s": model_entry(models["gguf"], [0], warm=False)}, **FAST)
    m, fake = await started(rig, capacity=lambda needs: needs["llama-m"] * 5 // 2)  # two, not three
    fake.slow.add("llama-m_green")  # loading: its memory not in the reading yet, as on a GPU mid-load
    assert (await m.reload("m"))["how"] == "blue-green"
    with pytest.raises(Exception) as refused:
        (await asyncio.wait_for(m.acquire("s"), 5)).release()
    assert "cannot load" in str(refused.value), refused.value
    fake.slow.clear()
    await _until(lambda: m.swaps["m"]["state"] in ("draining", "done"), 5, "the hand-over")
    assert not fake.running("llama-s") and fake.used(0) <= fake.total[0]


async def test_a_drain_first_reload_never_starts_a_model_an_operator_stopped_while_it_waited(
        tmp_path, models, started):
    """The drain-first reload read the model's state, waited for a memory reading, then sent an
    unconditional stop and start: an operator's stop in that wait was undone."""
    rig = write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])}, **FAST)
    m, fake = await started(rig)
    settle = m.memory.settle

    async def stopped_meanwhile():
        m.stop_unit("m")
        return await settle()
    m.memory.settle = stopped_meanwhile
    starts = len(fake.starts)
    record = await m.reload("m")  # (answered once decided: a start would have been sent by now)
    m.memory.settle = settle
    actor = m.actors["m"]
    assert record["how"] == "settings-only" and actor.pending_start is None and not actor.claims_memory, record
    await _until(lambda: actor.state == State.STOPPED, 5, "the operator's stop")
    assert len(fake.starts) == starts and actor.operator_held


async def test_an_operator_start_fits_its_memory_evicting_an_idle_model_or_is_refused(tmp_path, models, started):
    """An operator's start reached the actor with no memory planned: a model started onto a GPU
    another held (it would fail to load on a real GPU, or take the other's memory)."""
    rig = write_rig(tmp_path, {"w": model_entry(models["gguf"], [0]),
                               "a": model_entry(models["gguf"], [1], warm=False),
                               "b": model_entry(models["gguf"], [1], warm=False),
                               "c": model_entry(models["gguf"], [0], warm=False)}, **FAST)
    m, fake = await started(rig, capacity=lambda needs: needs["llama-w"] * 3 // 2)  # one model per GPU
    (await m.acquire("a")).release()
    await m.start_unit("b")  # a is idle and on demand: evicted for b
    await _until(lambda: m.actors["b"].state in SERVING, 5, "b serving")
    assert m.actors["a"].state == State.STOPPED and fake.used(1) <= fake.total[1]
    with pytest.raises(Exception) as refused:
        await m.start_unit("c")  # w is warm: nothing to evict on GPU 0
    assert getattr(refused.value, "code", None) == "no_room" and "does not fit" in refused.value.reason
    assert not fake.running("llama-c") and m.actors["c"].state == State.STOPPED


async def test_only_a_jobs_own_task_may_hand_the_planner_back(tmp_path, models, started, monkeypatch):
    """A task a job spawns inherits the job's context: had it called Planner.wait, it would have
    handed the planner back while the job itself went on holding it."""
    from dataclasses import dataclass

    from llamarig.backend.lifecycle import planner as planner_module

    @dataclass
    class Probe:
        reply: asyncio.Future

    async def handler(p, c):
        async def spawned():
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            await p.wait(done)
        try:
            await asyncio.ensure_future(spawned())
        except RuntimeError as e:
            c.reply.set_result(str(e))

    monkeypatch.setitem(planner_module.HANDLERS, Probe, handler)
    m, _ = await started(write_rig(tmp_path, {"a": model_entry(models["gguf"], [0], warm=False)}, **FAST))
    said = asyncio.get_running_loop().create_future()
    m.planner.post(Probe(said))
    assert "only the job's own task" in await asyncio.wait_for(said, 5)


async def test_a_start_asked_for_while_its_gpu_held_script_work_comes_back_only_if_it_fits(tmp_path, models, started):
    """Harness run of 2026-12-07: an operator's start of a model whose GPU held Whisper added it
    to the LLMs the give-back starts, which then waited for both to fit (never) for the whole
    switch limit with nothing running, and started both anyway: over the GPU's memory."""
    rig = write_rig(tmp_path, {"a": model_entry(models["gguf"], [0]), "s": model_entry(models["gguf"], [0], warm=False)},
                    {"model_dir": str(models["whisper"]), "gpus": [0], "port": free_ports_in_a_row(1)}, **FAST)
    m, fake = await started(rig, capacity=lambda needs: max(needs.values()) * 3 // 2)  # one LLM, or Whisper
    (await asyncio.wait_for(m.acquire("whisper"), 10)).release()
    assert m.planner.switched == {0: ["a"]}
    await m.start_unit("s")
    await _until(lambda: m.actors["a"].state in SERVING, 5, "a given back")
    await _until(lambda: not m.planner._jobs, 5, "the operator's start planned to its end")
    assert fake.used(0) <= fake.total[0] and not fake.running("llama-s")


async def test_a_load_is_not_planned_into_the_memory_of_a_crash_not_yet_reported(tmp_path, models, started):
    """Harness run of 2026-12-07 (29,434 steps): a server crashed during a load's memory reading;
    the reading showed its memory free before the health loop told its actor, the load took it,
    and the crashed server's restart came back on top: over the GPU's memory."""
    slow_health = {**FAST, "lifecycle": {**FAST["lifecycle"], "health_interval_s": 3}}
    rig = write_rig(tmp_path, {"a": model_entry(models["gguf"], [0]), "s": model_entry(models["gguf"], [0], warm=False)},
                    **slow_health)
    m, fake = await started(rig, capacity=lambda needs: needs["llama-a"] * 3 // 2)  # one of the two
    fake.crash("llama-a")  # the actor still says ready: the health loop looks in up to 3 s
    assert m.actors["a"].state in SERVING
    with pytest.raises(Exception) as refused:
        (await asyncio.wait_for(m.acquire("s"), 5)).release()
    assert "cannot load" in str(refused.value), refused.value
    await _until(lambda: m.actors["a"].state in SERVING and fake.running("llama-a"), 10, "a restarted")
    assert fake.used(0) <= fake.total[0] and not fake.running("llama-s")


async def test_an_operator_stop_asked_after_a_start_wins_though_the_start_is_planned_later(tmp_path, models, started):
    """The planner took the start after its first wait, by when the operator had stopped the
    model: the start ran anyway, the model served while held stopped (found by the harness once
    it also heated GPUs). The start now carries the operator stops it saw; the actor refuses it."""
    rig = write_rig(tmp_path, {"a": model_entry(models["gguf"], [0], warm=False)}, **FAST)
    m, fake = await started(rig)
    start = asyncio.ensure_future(m.start_unit("a"))
    await asyncio.sleep(0)  # (one turn: the start is asked for and posted, not planned yet)
    m.stop_unit("a")
    await asyncio.wait_for(start, 5)
    await _until(lambda: not m.planner._jobs, 5, "the operator's start planned to its end")
    actor = m.actors["a"]
    assert actor.state == State.STOPPED and actor.operator_held and not fake.running("llama-a"), list(actor.history)
    await m.start_unit("a")  # a start asked after the stop starts it
    await _until(lambda: actor.state in SERVING, 5, "a started")
