"""The circuit breaker's states, driven by a fake clock."""

from __future__ import annotations

import pytest

from server.domain import BackendUnavailableError
from server.triton.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_fails_fast_with_a_retry_delay() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 2.0, clock)
    for _ in range(2):
        breaker.before_call()
        breaker.failed()
    breaker.before_call()
    breaker.succeeded()  # a success resets the count
    for _ in range(3):
        breaker.before_call()
        breaker.failed()
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.5
    with pytest.raises(BackendUnavailableError) as refused:
        breaker.before_call()
    assert refused.value.retry_after_s == pytest.approx(1.5)


def test_half_opens_after_the_delay_with_one_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 2.0, clock)
    breaker.before_call()
    breaker.failed()
    clock.now += 2.0
    breaker.before_call()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(BackendUnavailableError):
        breaker.before_call()  # only one probe at a time
    breaker.failed()
    assert breaker.state.value == "open"  # .value: mypy narrows the property above for good
    clock.now += 2.0
    breaker.before_call()
    breaker.succeeded()
    assert breaker.state.value == "closed"
    breaker.before_call()


def test_a_probe_that_tells_nothing_lets_the_next_call_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.before_call()
    breaker.failed()
    clock.now += 1.0
    breaker.before_call()
    breaker.settled()  # e.g. the caller's image was bad
    breaker.before_call()
    assert breaker.state is BreakerState.HALF_OPEN


def test_held_open_by_health_it_fails_every_call_until_released() -> None:
    clock = Clock()
    breaker = CircuitBreaker(5, 2.0, clock)
    breaker.hold_open(True)  # Triton stopped answering its readiness checks
    assert breaker.state.value == BreakerState.OPEN.value
    clock.now += 60.0  # no half-open probe while held: every call fails at once
    with pytest.raises(BackendUnavailableError) as refused:
        breaker.before_call()
    assert refused.value.retry_after_s == 2.0
    breaker.hold_open(False)
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()
