"""Operating and observing the circuit breaker, on virtual time.

Admin actions (shared/resilience.md §1.3.2 rows 16-18, CB-18), transition and threshold reports (CB-19),
independent breakers (CB-22) and snapshots.
"""

from __future__ import annotations

import logging

import pytest
from breaker_support import fail, make, opened, succeed

from omnichannel import CircuitOpenError
from omnichannel.testing import FakeClock
from omnichannel_resilience.breaker import BreakerConfig, BreakerSnapshot, CircuitBreaker, Outcome, State

# -- admin (rows 16-18, CB-18) -------------------------------------------------------------------------


def test_force_open_refuses_until_reset() -> None:
    breaker, clock, seen = make()
    breaker.force_open()
    assert breaker.state.gauge == 2
    clock.advance(600)
    assert breaker.state is State.FORCED_OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 60.0
    breaker.reset()
    assert breaker.state is State.CLOSED
    assert seen == [(State.CLOSED, State.FORCED_OPEN), (State.FORCED_OPEN, State.CLOSED)]


def test_disable_admits_all_and_records_nothing() -> None:
    breaker, _, _ = opened()
    breaker.disable()
    assert breaker.state.gauge == 0
    fail(breaker, 50)
    snap = breaker.snapshot()
    assert (snap.state, snap.failures) == (State.DISABLED, 0)


def test_metrics_only_records_without_transition() -> None:
    breaker, _, seen = make()
    breaker.metrics_only()
    fail(breaker, 50)
    snap = breaker.snapshot()
    assert (snap.state, snap.failures) == (State.METRICS_ONLY, 50)
    succeed(breaker)
    assert breaker.snapshot().failures == 0
    assert seen == [(State.CLOSED, State.METRICS_ONLY)]


def test_metrics_only_reports_the_failure_threshold_once() -> None:
    kinds: list[str] = []
    breaker = CircuitBreaker("x", BreakerConfig(), FakeClock(), on_threshold=kinds.append)
    breaker.metrics_only()
    fail(breaker, 12)
    succeed(breaker)
    fail(breaker, 5)
    assert kinds == ["failure_threshold"]
    assert breaker.state is State.METRICS_ONLY
    breaker.metrics_only()  # a new phase re-arms the report
    fail(breaker, 5)
    assert kinds == ["failure_threshold", "failure_threshold"]


def test_threshold_is_reported_before_the_transition() -> None:
    events: list[object] = []
    breaker = CircuitBreaker(
        "x",
        BreakerConfig(),
        FakeClock(),
        on_transition=lambda prev, cur: events.append((prev, cur)),
        on_threshold=events.append,
    )
    fail(breaker, 5)
    assert events == ["failure_threshold", (State.CLOSED, State.OPEN)]


def test_reset_clears_counters_and_makes_old_permits_stale() -> None:
    breaker, _, _ = make()
    late = breaker.acquire()
    fail(breaker, 4)
    breaker.reset()
    late.record(Outcome.FAILURE)
    snap = breaker.snapshot()
    assert (snap.state, snap.failures, snap.generation) == (State.CLOSED, 0, 1)


# -- on_transition --------------------------------------------------------------------------------------


def test_full_cycle_reports_each_transition_once() -> None:  # CB-19
    breaker, clock, seen = make()
    fail(breaker, 5)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(60)
    _ = breaker.state
    succeed(breaker, 2)
    assert seen == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]


def test_listener_error_is_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    def boom(previous: State, current: State) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker("x", BreakerConfig(failure_threshold=1), FakeClock(), on_transition=boom)
    with caplog.at_level(logging.ERROR):
        fail(breaker)
    assert breaker.state is State.OPEN
    assert "listener" in caplog.text


def test_breakers_are_independent() -> None:  # CB-22
    clock = FakeClock()
    a = CircuitBreaker("whatsapp:1", BreakerConfig(), clock)
    b = CircuitBreaker("whatsapp:2", BreakerConfig(), clock)
    fail(a, 5)
    assert (a.state, b.state) == (State.OPEN, State.CLOSED)


# -- snapshot -------------------------------------------------------------------------------------------


def test_consecutive_snapshot_has_no_rates() -> None:
    breaker, _, _ = make()
    fail(breaker, 3)
    snap = breaker.snapshot()
    assert (snap.mode, snap.failure_rate, snap.slow_call_rate, snap.calls_in_window) == (
        "consecutive",
        None,
        None,
        0,
    )


def test_snapshot_without_the_rate_fields_keeps_working() -> None:
    snap = BreakerSnapshot("x", State.CLOSED, 0, 0, 0, None, 0, 0, 0)
    assert (snap.mode, snap.failure_rate, snap.slow_call_rate, snap.calls_in_window) == (
        "consecutive",
        None,
        None,
        0,
    )
