"""Wave planning and LRU eviction: pure functions, many cases."""
from llamarig.backend.lifecycle.waves import Candidate, lru_victims, next_wave, plan_all, shortfall

GIB = 1024 ** 3
SEED_FREE = {g: 6 * GIB for g in range(5)}   # the seed rig: 5 x 6 GiB
MARGIN = 256 * 1024 ** 2


def seed_rig(brain=(4 * GIB, 4 * GIB), worker=3 * GIB):
    return [Candidate("brain", 0, {0: brain[0], 3: brain[1]}),
            Candidate("worker-1", 10, {1: worker}), Candidate("worker-2", 10, {2: worker}),
            Candidate("worker-3", 10, {4: worker}), Candidate("whisper", 50, {2: 1 * GIB})]


def test_seed_rig_brain_first_then_workers_then_whisper():
    waves = plan_all(seed_rig(), SEED_FREE, MARGIN)
    assert [w.start for w in waves] == [["brain"], ["worker-1", "worker-2", "worker-3"], ["whisper"]]
    assert not any(w.refused for w in waves)


def test_a_model_too_big_for_any_gpu_is_refused_with_a_reason_and_the_rest_load():
    candidates = seed_rig() + [Candidate("giant", 5, {1: 7 * GIB})]
    waves = plan_all(candidates, SEED_FREE, MARGIN)
    refused = {k: v for w in waves for k, v in w.refused.items()}
    assert refused == {"giant": "needs 7.0 GiB on GPU 1, 5.8 GiB free"}
    assert {n for w in waves for n in w.start} == {"brain", "worker-1", "worker-2", "worker-3", "whisper"}


def test_a_tensor_split_that_overflows_one_gpu():
    # 3:1 split of an 8 GiB brain puts 6 GiB on GPU 0: more than 6 GiB minus the margin.
    candidates = [Candidate("brain", 0, {0: 6 * GIB, 3: 2 * GIB})]
    wave = next_wave(candidates, SEED_FREE, MARGIN)
    assert wave.start == [] and wave.refused["brain"].startswith("needs 6.0 GiB on GPU 0")


def test_priority_order_and_shared_gpu_budget():
    # Two units of one priority on one GPU: the first (by name) fits, the second does not.
    candidates = [Candidate("b", 1, {0: 4 * GIB}), Candidate("a", 1, {0: 4 * GIB}), Candidate("z", 0, {1: GIB})]
    first = next_wave(candidates, SEED_FREE, MARGIN)
    assert first.start == ["z"]
    second = next_wave([c for c in candidates if c.name != "z"], SEED_FREE, MARGIN)
    assert second.start == ["a"] and "b" in second.refused


def test_whisper_sharing_a_worker_gpu_counts_against_it():
    candidates = seed_rig(worker=5 * GIB)
    waves = plan_all(candidates, SEED_FREE, MARGIN)
    assert waves[-1].refused == {"whisper": "needs 1.0 GiB on GPU 2, 0.8 GiB free"}


def test_a_gpu_missing_from_the_inventory():
    wave = next_wave([Candidate("m", 0, {9: GIB})], SEED_FREE, MARGIN)
    assert wave.refused == {"m": "GPU 9 is not in the inventory"}


def test_empty_plan():
    assert plan_all([], SEED_FREE, MARGIN) == []


def test_lru_picks_the_least_recently_used_idle_model_on_the_needed_gpu():
    free = {0: 1 * GIB, 1: 1 * GIB}
    idle = [("recent", 200.0, {0: 3 * GIB}), ("old", 100.0, {0: 3 * GIB}), ("elsewhere", 1.0, {1: 5 * GIB})]
    assert lru_victims({0: 3 * GIB}, free, MARGIN, idle) == ["old"]
    assert lru_victims({0: 6 * GIB}, free, MARGIN, idle) == ["old", "recent"]


def test_lru_gives_up_when_even_evicting_everything_is_not_enough():
    assert lru_victims({0: 20 * GIB}, {0: GIB}, MARGIN, [("a", 1.0, {0: 3 * GIB})]) is None


def test_lru_with_room_already_evicts_nothing():
    assert lru_victims({0: GIB}, {0: 5 * GIB}, MARGIN, [("a", 1.0, {0: 3 * GIB})]) == []


def test_shortfall_keeps_the_margin_free():
    need, free = {0: 5 * GIB}, {0: 6 * GIB}
    assert shortfall(need, free) is None
    assert shortfall(need, free, margin=2 * GIB) == "needs 5.0 GiB on GPU 0, 4.0 GiB free"
