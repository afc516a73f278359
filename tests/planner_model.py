"""The planner's model-based harness: the real manager, planner and actors over the fakes of
planner_fakes.py, driven by a Hypothesis RuleBasedStateMachine through operator commands,
requests, crashes, GPU leases, reloads, supervisord going away and clock steps. After every step it checks what the
planner promises:

- no GPU's memory (the programs running on it) over its capacity;
- a unit an operator stopped is never started by the planner;
- every transitional GPU mode ends within its limit (5 s here), supervisord failing or not;
- a GPU lent to a script command runs no LLM;
- a request is routed only to a server that is ready;
- every waiting request is served or refused within its deadline (queue_timeout_s).

tests/test_planner_model.py runs it in CI with a fixed budget; bench/planner_long.py (and
`bench/run.py planner`) runs it long and reports what it found. Built on a rig file made by
`rig_file` (the generated models).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from helpers import free_port, free_ports_in_a_row, model_entry, write_rig
from llamarig.backend.lifecycle.gpu_modes import TRANSITIONAL
from llamarig.backend.lifecycle.states import ENDED, LOADING, SERVING
from llamarig.shared.errors import LlamarigError
from planner_fakes import fake_manager

LLMS = ("brain", "worker", "spare1", "spare2")
MODELS = LLMS + ("whisper",)
QUEUE_S = 3.0   # queue_timeout_s: a waiting request's deadline
SLACK_S = 0.5   # a loop turn on a loaded 2-core machine
RECENT = collections.deque(maxlen=80)  # the planner's and the actors' last log lines, for a failure's story


class _Recent(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k in ("model", "program", "state", "source", "target",
                                                                   "reason", "gpu", "need", "short", "command")}
        RECENT.append(f"{record.name}: {record.getMessage()} {fields}")


for _name in ("llamarig.planner", "llamarig.lifecycle"):
    logging.getLogger(_name).addHandler(_Recent())
    logging.getLogger(_name).setLevel(logging.INFO)
LIMIT_S = 5.0   # each transitional GPU mode's limit here


def rig_file(folder: Path, models: dict) -> Path:
    """brain on GPU 0 (not switchable), worker (blue-green) and spare1 on GPU 1, spare2 on GPU 2,
    Whisper placed on 2 or 3; GPU 4 has nothing (lent first)."""
    gguf = models["gguf"]
    entries = {"brain": model_entry(gguf, [0], priority=0, switchable=False),
               "worker": model_entry(gguf, [1], swap_port=free_port()),
               "spare1": model_entry(gguf, [1], warm=False, keep_alive_s=2),
               "spare2": model_entry(gguf, [2], warm=False, keep_alive_s=2)}
    whisper = {"model_dir": str(models["whisper"]), "gpus": [2, 3], "port": free_ports_in_a_row(2)}
    return write_rig(folder, entries, whisper,
                     timeouts={"model_wait_s": 0, "settle_s": 0, "start_s": 5, "stop_s": 1, "drain_s": 1},
                     lifecycle={"health_interval_s": 0.05, "probe_timeout_s": 0.5, "failure_threshold": 2,
                                "backoff_initial_s": 0.1, "backoff_max_s": 0.5, "vram_settle_s": 0.1,
                                "vram_margin_mib": 0, "queue_timeout_s": QUEUE_S, "script_idle_s": 0.5,
                                "llm_wait_max_s": 0.5, "switch_hold_s": 0.3, "deep_probe_interval_s": 0},
                     thermal={"interval_s": 0.1})


class PlannerMachine(RuleBasedStateMachine):
    rig_path: Path = None  # set by the test before the machine runs

    def __init__(self):
        super().__init__()
        RECENT.clear()
        self.loop = asyncio.new_event_loop()

        def capacity(needs):  # one LLM fits with half another's room: two on GPU 1 need an eviction,
            llm = max(n for p, n in needs.items() if p.startswith("llama-"))  # Whisper on GPU 2 a switch
            script = max(n for p, n in needs.items() if not p.startswith("llama-"))
            return max(llm, script) + min(llm, script) // 2
        self.m, self.fake = fake_manager(self.rig_path, capacity)
        self.m.modes.limit_s = LIMIT_S  # (the rig's is its budgets', minutes: a stuck GPU would pass unseen)
        self.requests: list[dict] = []
        self.violations: list[str] = []
        self.held: set[str] = set()
        self.leases: list[str] = []
        self.tasks: list[asyncio.Task] = []
        self.steps = 0
        self.loop.run_until_complete(self.m.start())
        self._run(self._until(lambda: self.m.booted.is_set(), 10))

    # ---- driving the loop ---------------------------------------------------------------------
    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    async def _until(self, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _spawn(self, coro) -> None:
        self.tasks.append(self.loop.create_task(coro))

    def _step(self, seconds: float = 0.02) -> None:
        self.steps += 1
        self._run(asyncio.sleep(seconds))

    # ---- rules --------------------------------------------------------------------------------
    @rule(name=st.sampled_from(MODELS), hold_s=st.sampled_from([0.0, 0.05, 0.3]))
    def request(self, name, hold_s):
        self._spawn(self._request(name, hold_s))
        self._step()

    async def _request(self, name: str, hold_s: float) -> None:
        record = {"name": name, "t0": time.monotonic(), "t1": None, "outcome": None}
        self.requests.append(record)
        try:
            lease = await self.m.acquire(name)
        except LlamarigError as e:
            record.update(t1=time.monotonic(), outcome=e.code)
            return
        record.update(t1=time.monotonic(), outcome="served")
        actor = lease.actor  # (a crash not seen yet is the proxy's to find: Lease.unreachable)
        if actor.state not in SERVING:
            self.violations.append(f"a request for {name} went to {actor.unit.program}, {actor.state.value}")
        try:
            await asyncio.sleep(hold_s)
        finally:
            lease.release()

    @rule(name=st.sampled_from(LLMS))
    def operator_stop(self, name):
        self._run(self._stop(name))
        self.held.add(name)
        self._step()

    async def _stop(self, name: str) -> None:
        self.m.stop_unit(name)  # (its command's reply is a future of this loop)

    @rule(name=st.sampled_from(LLMS), reset=st.booleans())
    def operator_start(self, name, reset):
        self._spawn(self._operator_start(name, reset))
        self._step()

    async def _operator_start(self, name: str, reset: bool) -> None:
        try:
            await (self.m.reset(name) if reset else self.m.start_unit(name))
        except LlamarigError:
            return  # refused (a lent GPU, the planner busy): still held
        self.held.discard(name)

    @rule(name=st.sampled_from(MODELS))
    def crash(self, name):
        self.fake.crash(self.m.actors[name].unit.program)
        self._step()

    @rule(ttl_s=st.sampled_from([0.5, 2.0]))
    def take_gpu(self, ttl_s):
        self._spawn(self._take(ttl_s))
        self._step()

    async def _take(self, ttl_s: float) -> None:
        try:
            lease = await self.m.take_gpu(f"harness-{len(self.leases)}", ttl_s)
        except LlamarigError:
            return
        self.leases.append(lease["lease_id"])

    @rule(i=st.integers(0, 3))
    def return_gpu(self, i):
        if self.leases:  # (what is drawn must not depend on timing: no precondition on leases)
            lease_id = self.leases.pop(i % len(self.leases))
            self._spawn(self.m.return_gpu(lease_id, "ended"))
        self._step()

    @rule(name=st.sampled_from(("worker", "spare1")))
    def reload(self, name):
        self._spawn(self._reload(name))
        self._step()

    async def _reload(self, name: str) -> None:
        try:
            await self.m.reload(name)
        except LlamarigError:
            return
        self.held.discard(name)  # a reload starts the model: the operator asked for it

    @rule(seconds=st.sampled_from([0.05, 0.3]))
    def supervisor_down(self, seconds):
        self.m.supervisor.down_until = time.monotonic() + seconds
        self._step()

    @rule(gpu=st.integers(1, 4), celsius=st.sampled_from([40, 80, 90, 100]))
    def heat(self, gpu, celsius):
        self.fake.celsius[gpu] = celsius  # read by the thermal loop within interval_s
        self._step()

    @rule(seconds=st.sampled_from([0.05, 0.2, 0.6]))
    def clock(self, seconds):
        self._step(seconds)

    # ---- what the planner promises ------------------------------------------------------------
    @invariant()
    def no_gpu_over_its_memory(self):
        over = {g: (self.fake.used(g), total) for g, total in self.fake.total.items() if self.fake.used(g) > total}
        assert not over, (f"GPU memory over capacity (used, total): {over}; running: {self._running()}; "
                          f"{self._story(over)}")

    @invariant()
    def an_operator_stop_holds(self):
        for name in self.held:
            for actor in self.m.planner.slots[name]:
                assert actor.state not in LOADING | SERVING, (
                    f"{actor.unit.program} is {actor.state.value} after an operator stop: {list(actor.history)[-3:]}")

    @invariant()
    def switches_end_within_their_limit(self):
        modes = self.m.modes
        for g in modes.gpus.values():
            if g.mode in TRANSITIONAL:
                assert time.monotonic() - g.since <= modes.limit_s + SLACK_S, f"GPU {g.index} stuck in {g.mode.value}"

    @invariant()
    def a_lent_gpu_runs_no_llm(self):
        for gpu, lease in self.m.planner.leases.items():
            for actor in self.m.all_actors():
                if actor.unit.is_llm and gpu in actor.unit.gpus:
                    assert actor.state in ENDED and not self.fake.running(actor.unit.program), (
                        f"GPU {gpu} is lent to {lease.holder} and {actor.unit.program} is {actor.state.value}")

    @invariant()
    def a_hot_gpu_gets_no_new_script_work(self):
        t = self.m.planner.thermal
        for gpu, lease in self.m.planner.leases.items():
            assert not t.hot(gpu) or t.since[gpu] >= lease.granted_at - SLACK_S, (
                f"GPU {gpu} was lent to {lease.holder} while {t.level(gpu).value}")
        for a in self._script_work():
            gpu = a.unit.gpus[0]
            began = max((x.at for x in a.history if x.source == "stopped"), default=0.0)
            assert not t.hot(gpu) or t.since[gpu] >= began - SLACK_S, (
                f"{a.unit.program} started on GPU {gpu} while {t.level(gpu).value}: {self._story([gpu])}")

    @invariant()
    def a_gpu_at_slowdown_sheds_its_script_work(self):
        t, now = self.m.planner.thermal, time.time()
        for gpu, level in t.levels.items():
            if level.value != "slowdown" or now - t.since[gpu] <= LIMIT_S + SLACK_S:
                continue
            assert gpu not in self.m.planner.leases, f"GPU {gpu} at slowdown is still lent"
            assert not [a for a in self._script_work() if a.unit.gpus[0] == gpu], (
                f"GPU {gpu} at slowdown still runs script work: {self._story([gpu])}")

    def _script_work(self) -> list:
        return [a for a in self.m.all_actors() if a.unit.script and a.state in LOADING | SERVING]

    @invariant()
    def requests_go_to_ready_servers(self):
        assert not self.violations, self.violations

    @invariant()
    def every_request_is_answered_within_its_deadline(self):
        now = time.monotonic()
        for r in self.requests:
            took = (r["t1"] or now) - r["t0"]
            assert took <= QUEUE_S + SLACK_S, f"a request for {r['name']} waited {took:.2f} s ({r['outcome']})"

    def _story(self, gpus) -> str:
        """How the units on `gpus` and those GPUs' modes got where they are (a long run's report)."""
        lines = [f"GPU {g}: " + " | ".join(f"{c.source}->{c.target} ({c.reason})"
                                           for c in list(self.m.modes.gpus[g].history)[-5:]) for g in gpus]
        for a in self.m.all_actors():
            if set(a.unit.gpus) & set(gpus):
                lines.append(f"{a.unit.program}: " + " | ".join(f"{t.source}->{t.target} ({t.reason})"
                                                                for t in list(a.history)[-10:]))
        return "\n".join(lines + ["recent log lines:"] + list(RECENT)[-50:])

    def _running(self) -> list[str]:
        return sorted(p for p in self.fake.programs if self.fake.running(p))

    def teardown(self):
        self._run(self._close())
        self.loop.close()

    async def _close(self) -> None:
        await self.m.close()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in self.tasks:  # (a spawned call that failed and ended unawaited would be logged "never
            if task.done() and not task.cancelled():  # retrieved" whenever the GC meets it: in a later test)
                task.exception()
