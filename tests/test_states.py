"""The state table: closed, every non-resting state has a timeout and a way out."""
from llamarig.backend.lifecycle.states import (ON_TIMEOUT, RESTING, TRANSITIONS, IllegalTransition, State,
                                               check_transition, timeout_for)
from llamarig.shared.rig import TimeoutsConfig

import pytest


def test_every_state_has_transitions_and_is_reachable():
    assert set(TRANSITIONS) == set(State)
    reachable = {State.STOPPED}
    for targets in TRANSITIONS.values():
        reachable |= targets
    assert reachable == set(State)


def test_every_non_resting_state_times_out_into_a_legal_state():
    t = TimeoutsConfig()
    for s in set(State) - RESTING:
        assert timeout_for(s, t, None) is not None, s
        assert ON_TIMEOUT[s] in TRANSITIONS[s], s


def test_ready_times_out_only_with_keep_alive():
    t = TimeoutsConfig()
    assert timeout_for(State.READY, t, None) is None
    assert timeout_for(State.READY, t, 30) == 30
    assert ON_TIMEOUT[State.READY] == State.DRAINING


def test_illegal_transitions_are_refused():
    with pytest.raises(IllegalTransition):
        check_transition("m", State.STOPPED, State.READY)
    with pytest.raises(IllegalTransition):
        check_transition("m", State.DRAINING, State.BUSY)  # a draining model takes no new request
