"""The restart policy on its own: backoff, the circuit opening, and its half-open try."""
from llamarig.backend.lifecycle.policy import RestartPolicy
from llamarig.shared.rig import LifecycleConfig


def _policy(**config) -> RestartPolicy:
    return RestartPolicy(LifecycleConfig(backoff_initial_s=1, backoff_max_s=4, circuit_restarts=3, **config))


def test_backoff_doubles_up_to_its_cap_then_the_circuit_opens():
    policy = _policy()
    assert [policy.next_delay() for _ in range(4)] == [1, 2, 4, None]
    assert policy.is_open and policy.count() == 3


def test_a_failed_half_open_try_opens_the_circuit_again_whatever_the_count():
    policy = _policy(circuit_window_s=0.001)  # the failures have left the window by the try
    while policy.next_delay() is not None:
        pass
    policy.half_open = True  # the cooldown's one start
    assert policy.next_delay() is None and policy.is_open and not policy.half_open


def test_the_open_reason_says_when_the_try_comes_and_how_to_reset():
    reason = _policy(circuit_cooldown_s=300).open_reason("start failed", "m")
    assert "one start will be tried in 300 s (circuit_cooldown_s)" in reason and "`llamarig reset m`" in reason
    assert "will be tried" not in _policy(circuit_cooldown_s=0).open_reason("start failed", "m")
