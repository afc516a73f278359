"""The unit actor: a command is handled whole before `send` returns, one sent from inside a
handler right after it; the state's deadline follows the state; a planned command is refused
when its condition no longer holds. An actor on its own, with no supervisord (nothing here
starts a server)."""
from __future__ import annotations

import asyncio
import collections
import time

from helpers import model_entry, write_rig
from llamarig.backend.lifecycle.actor import UnitActor
from llamarig.backend.lifecycle.commands import Acquire, Condition, JobDone, Replaced, Reset, Start, Stop
from llamarig.backend.lifecycle.jobs import Deps, Events
from llamarig.backend.lifecycle.states import State
from llamarig.backend.lifecycle.units import units_from_rig
from llamarig.backend.llama_http import ServerHttp
from llamarig.shared.errors import SupervisorError
from llamarig.shared.rig import load_rig


class NoSupervisor:
    """Stops find no process; the actor's stop job then checks that the port is free."""

    def info(self, program):
        raise SupervisorError("supervisor_not_running", "no supervisord in this test")

    async def run(self, method, *args):
        raise SupervisorError("supervisor_not_running", "no supervisord in this test")


async def _ready_actor(tmp_path, models, keep_alive_s: float) -> UnitActor:
    rig = load_rig(write_rig(tmp_path, {"m": model_entry(models["gguf"], [0], warm=False,
                                                          keep_alive_s=keep_alive_s)}))
    deps = Deps(rig, NoSupervisor(), ServerHttp(), lambda unit: None, lambda unit: None, Events())
    actor = UnitActor(units_from_rig(rig)[0], deps)
    actor.state = State.READY  # as if loaded: this test is about commands, not loading
    return actor


async def test_an_acquire_is_answered_before_send_returns(tmp_path, models):
    actor = await _ready_actor(tmp_path, models, 300)
    command = Acquire()
    actor.send(command)
    assert command.reply.done() and actor.state == State.BUSY
    command.reply.result().release()
    assert actor.state == State.READY and actor.inflight == 0
    for _ in range(60):  # more requests than the history holds
        command = Acquire()
        actor.send(command)
        command.reply.result().release()
    assert actor.history == collections.deque()  # requests are not life events
    actor.close()


async def test_a_command_sent_by_a_handler_is_handled_after_it_before_send_returns(tmp_path, models):
    actor = await _ready_actor(tmp_path, models, 300)
    actor.state = State.FAILED
    actor.send(Reset())  # its handler sends a Start, which must wait for the reset to finish
    assert actor.state == State.VERIFYING and actor.history[-1].reason == "operator reset"
    assert not actor.policy.count() and not actor.refused
    actor.close()


async def test_the_keep_alive_deadline_follows_states_changed_by_senders(tmp_path, models):
    actor = await _ready_actor(tmp_path, models, 0.3)
    command = Acquire()
    actor.send(command)
    await asyncio.sleep(0.6)  # longer than keep_alive: busy has no deadline
    assert actor.state == State.BUSY
    released = time.time()  # the clock of the history's entries
    command.reply.result().release()  # ready again: the 0.3 s deadline is armed from now
    await actor.wait_until(frozenset({State.DRAINING, State.STOPPING, State.STOPPED}), 5)
    unloaded = next(t for t in actor.history if t.target == State.DRAINING.value)
    assert unloaded.reason == "idle for 0.3 s (keep_alive): unloading"
    assert 0.25 <= unloaded.at - released < 2
    assert (await actor.wait_until(frozenset({State.STOPPED}), 15)) == State.STOPPED
    actor.close()


async def test_a_process_replaced_outside_is_waited_for_unless_the_unit_started_it(tmp_path, models):
    actor = await _ready_actor(tmp_path, models, 300)
    actor.process_since = time.monotonic()
    actor.send(Replaced("pid 10 -> 11", actor.process_since - 1))  # read before this unit's own start
    assert actor.state == State.READY
    actor.send(Replaced("pid 11 -> 12", actor.process_since + 1))
    assert actor.state == State.STARTING and actor.history[-1].reason.startswith(
        "restarted outside llamarig (pid 11 -> 12)")
    actor.close()


async def test_a_planned_start_is_refused_once_an_operator_stopped_the_unit(tmp_path, models):
    actor = await _ready_actor(tmp_path, models, 300)
    actor.state = State.STOPPED
    waiting = Acquire()
    actor.send(waiting)  # a request waits: the planner is asked for a load, and reads the memory
    assert not waiting.reply.done() and actor.waiters
    actor.send(Stop("operator stop", operator=True))  # meanwhile an operator stops the model
    assert isinstance(waiting.reply.exception(), Exception)
    start = Start("on-demand load", conditions=frozenset({Condition.WAITING, Condition.NOT_HELD}))
    actor.send(start)
    assert start.reply.result() is False and actor.state == State.STOPPED and actor.operator_held
    actor.close()


async def test_a_planners_stop_after_an_operators_keeps_the_hold_and_a_failed_stop_restarts_nothing(tmp_path, models):
    """Found by the planner harness: an operator's stop, then a GPU switch's stop (not the
    operator's) cleared the hold, the stop failed (supervisord away) and the unit restarted."""
    actor = await _ready_actor(tmp_path, models, 300)
    actor.send(Stop("operator stop", operator=True, drain=False))
    actor.send(Stop("GPU 0 switched to whisper", drain=True))
    assert actor.operator_held
    actor.send(JobDone("stop", actor.epoch, False, "stop failed: supervisord unreachable"))
    assert actor.state == State.FAILED and actor._timer is None and not actor.claims_memory  # no restart due
    actor.close()


async def test_a_failed_stop_does_not_restart_the_unit_its_stopper_wanted_the_memory_of(tmp_path, models):
    """Found by the planner harness: a placement stopped to give its GPU back failed to stop,
    restarted after its backoff and took the memory the planner had given to an LLM."""
    actor = await _ready_actor(tmp_path, models, 300)
    actor.send(Stop("GPU 2 goes back to its LLMs", drain=False))
    actor.send(JobDone("stop", actor.epoch, False, "stop failed: supervisord unreachable"))
    assert actor.state == State.FAILED and actor._timer is None and not actor.operator_held
    actor.send(Start("on-demand load"))  # a start afterwards is a start again: its failures restart it
    assert not actor.stop_wanted
    actor.close()


async def test_an_eviction_is_refused_once_a_request_came(tmp_path, models):
    actor = await _ready_actor(tmp_path, models, 300)
    request = Acquire()
    actor.send(request)  # after the planner read it idle
    evict = Stop("evicted", conditions=frozenset({Condition.IDLE}))
    actor.send(evict)
    assert evict.reply.result() is False and actor.state == State.BUSY
    request.reply.result().release()
    actor.close()


def test_no_command_handler_awaits():
    """The hand-off runs a handler in the sender's stead, whole: that holds only while no
    handler awaits (slow work belongs in jobs)."""
    import inspect

    handlers = [f for name, f in vars(UnitActor).items() if name.startswith("_on_")]
    assert len(handlers) >= 9
    assert [f.__name__ for f in handlers if inspect.iscoroutinefunction(f)] == []
