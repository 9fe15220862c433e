"""The circuit breaker's state machine in consecutive mode, on virtual time.

Outcome classification (shared/resilience.md §1.4), states and gauge numbers (§1.3.1), the transition
table (§1.3.2), concurrency (§1.3.3) and slow calls; scenarios CB-01..CB-17, CB-21.
"""

from __future__ import annotations

import asyncio

import pytest
from breaker_support import fail, half_open, make, opened, succeed

from omnichannel import (
    CircuitOpenError,
    ErrorScope,
    PermanentDeliveryError,
    RateLimitedError,
    SenderUnavailableError,
    TransientDeliveryError,
)
from omnichannel.testing import FakeClock
from omnichannel_resilience.breaker import BreakerConfig, CircuitBreaker, Outcome, State, classify

# -- classification (§1.4) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (None, Outcome.SUCCESS),
        (RateLimitedError("130429", retry_after=2.0), Outcome.THROTTLED),
        (RateLimitedError("131056", scope=ErrorScope.RECIPIENT), Outcome.THROTTLED),
        (CircuitOpenError("open", retry_after=3.0), Outcome.IGNORED),
        (asyncio.CancelledError(), Outcome.IGNORED),
        (KeyboardInterrupt(), Outcome.IGNORED),
        (SystemExit(1), Outcome.IGNORED),
        (GeneratorExit(), Outcome.IGNORED),
        (TransientDeliveryError("503"), Outcome.FAILURE),
        (TransientDeliveryError("132015 template paused", scope=ErrorScope.MESSAGE), Outcome.SUCCESS),
        (TransientDeliveryError("131000", scope=ErrorScope.SENDER), Outcome.FAILURE),
        (SenderUnavailableError("190 token expired", scope=ErrorScope.SENDER), Outcome.FAILURE),
        (PermanentDeliveryError("132001", scope=ErrorScope.MESSAGE), Outcome.SUCCESS),
        (PermanentDeliveryError("131026", scope=ErrorScope.RECIPIENT), Outcome.SUCCESS),
        (PermanentDeliveryError("unknown 4xx"), Outcome.SUCCESS),
        (PermanentDeliveryError("account locked", scope=ErrorScope.ACCOUNT), Outcome.FAILURE),
        (PermanentDeliveryError("sender", scope=ErrorScope.SENDER), Outcome.FAILURE),
        (ConnectionResetError(), Outcome.FAILURE),
        (TimeoutError(), Outcome.FAILURE),
        (ValueError("bug"), Outcome.FAILURE),
    ],
)
def test_classify(exc: BaseException | None, expected: Outcome) -> None:
    assert classify(exc) is expected


# -- states and numbers (§1.3.1) ----------------------------------------------------------------------


def test_gauge_numbers() -> None:
    assert [s.gauge for s in State] == [0, 1, 2, 2, 0, 0]
    assert State.HALF_OPEN.value == "half_open"


def test_new_breaker_is_closed_with_zero_counters() -> None:  # CB-01
    breaker, _, seen = make()
    snap = breaker.snapshot()
    assert (snap.state, snap.gauge, snap.failures, snap.in_flight, snap.generation) == (
        State.CLOSED,
        0,
        0,
        0,
        0,
    )
    assert snap.open_remaining_s is None
    succeed(breaker)
    assert breaker.state is State.CLOSED
    assert seen == []


# -- transition table (§1.3.2) ------------------------------------------------------------------------


def test_row1_closed_admits_without_limit() -> None:
    breaker, _, _ = make()
    permits = [breaker.acquire() for _ in range(100)]
    assert all(not p.probe and p.generation == 0 for p in permits)


def test_rows2_3_five_failures_open_once() -> None:  # CB-02
    breaker, _, seen = make()
    fail(breaker, 4)
    assert breaker.snapshot().failures == 4
    assert breaker.state is State.CLOSED
    fail(breaker)
    snap = breaker.snapshot()
    assert (snap.state, snap.gauge, snap.open_count, snap.generation) == (State.OPEN, 2, 1, 1)
    assert snap.open_remaining_s == 60.0
    assert seen == [(State.CLOSED, State.OPEN)]
    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_row4_success_resets_consecutive_failures() -> None:  # CB-03
    breaker, _, _ = make()
    fail(breaker, 4)
    succeed(breaker)
    fail(breaker, 4)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().failures == 4


@pytest.mark.parametrize("outcome", [Outcome.IGNORED, Outcome.THROTTLED])
def test_row5_ignored_and_throttled_do_not_count(outcome: Outcome) -> None:
    breaker, _, _ = make()
    fail(breaker, 4)
    for _ in range(20):
        breaker.acquire().record(outcome)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().failures == 4


def test_row6_open_refuses_with_retry_after() -> None:  # CB-04
    breaker, clock, _ = opened()
    clock.advance(0.001)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(60 - 0.001)
    clock.advance(29.999)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(30.0)
    assert breaker.snapshot().not_permitted == 2


def test_row7_boundary_is_inclusive() -> None:  # CB-05
    breaker, clock, seen = opened()
    clock.advance(59.999)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(0.001)
    permit = breaker.acquire()
    assert permit.probe
    assert breaker.state is State.HALF_OPEN
    assert seen == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_row7_state_computed_on_read_without_traffic() -> None:  # CB-06
    breaker, clock, seen = opened()
    clock.advance(600)
    assert breaker.state.gauge == 1
    assert breaker.snapshot().state is State.HALF_OPEN
    assert breaker.state is State.HALF_OPEN
    # Reported once, however often it is read; and the idle sender stays half-open.
    assert seen == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_rows8_9_single_probe_permit() -> None:
    breaker, _, _ = half_open()
    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 1.0
    assert breaker.snapshot().in_flight == 1
    probe.record(Outcome.SUCCESS)
    assert breaker.snapshot().in_flight == 0
    assert breaker.acquire().probe


def test_rows10_11_two_probe_successes_close() -> None:  # CB-08
    breaker, _, seen = half_open()
    succeed(breaker)
    snap = breaker.snapshot()
    assert (snap.state, snap.probe_successes, snap.in_flight) == (State.HALF_OPEN, 1, 0)
    succeed(breaker)
    snap = breaker.snapshot()
    assert (snap.state, snap.failures, snap.probe_successes, snap.open_count) == (State.CLOSED, 0, 0, 0)
    assert seen[-1] == (State.HALF_OPEN, State.CLOSED)


def test_row12_probe_failure_reopens() -> None:  # CB-09
    breaker, clock, seen = half_open()
    succeed(breaker)
    clock.advance(5)
    fail(breaker)
    snap = breaker.snapshot()
    assert (snap.state, snap.probe_successes, snap.open_count) == (State.OPEN, 0, 2)
    assert snap.open_remaining_s == 60.0
    assert seen[-1] == (State.HALF_OPEN, State.OPEN)


@pytest.mark.parametrize("outcome", [Outcome.IGNORED, Outcome.THROTTLED])
def test_row13_ignored_probe_releases_permit(outcome: Outcome) -> None:  # CB-10
    breaker, _, _ = half_open()
    breaker.acquire().record(outcome)
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot().probe_successes == 0
    assert breaker.acquire().probe


def test_row14_hanging_probe_reopens_after_guard() -> None:  # CB-12
    breaker, clock, seen = half_open()
    hanging = breaker.acquire()
    clock.advance(19.999)
    assert breaker.state is State.HALF_OPEN
    clock.advance(0.001)
    assert breaker.state is State.OPEN
    assert breaker.snapshot().open_remaining_s == 60.0
    assert seen[-1] == (State.HALF_OPEN, State.OPEN)
    # The hanging probe finally succeeds: stale, changes nothing.
    hanging.record(Outcome.SUCCESS)
    assert breaker.state is State.OPEN


def test_row14_guard_counts_from_each_probe_admission() -> None:
    breaker, clock, _ = half_open()
    clock.advance(50)  # idle half-open: no guard running
    assert breaker.state is State.HALF_OPEN
    probe = breaker.acquire()
    clock.advance(19)
    probe.record(Outcome.SUCCESS)
    assert breaker.state is State.HALF_OPEN


def test_row15_stale_failure_does_not_extend_open() -> None:  # CB-13
    breaker, clock, seen = make()
    late = breaker.acquire()
    fail(breaker, 5)
    clock.advance(10)
    late.record(Outcome.FAILURE)
    snap = breaker.snapshot()
    assert (snap.open_count, snap.open_remaining_s) == (1, 50.0)
    assert seen == [(State.CLOSED, State.OPEN)]


def test_row15_stale_success_during_open_does_not_close() -> None:  # CB-13
    breaker, _, _ = make()
    late = breaker.acquire()
    fail(breaker, 5)
    late.record(Outcome.SUCCESS)
    assert breaker.state is State.OPEN


def test_row15_stale_success_in_half_open_is_not_a_probe() -> None:  # CB-14
    breaker, clock, _ = make()
    late = [breaker.acquire() for _ in range(3)]
    fail(breaker, 5)
    clock.advance(60)
    probe = breaker.acquire()
    for permit in late:
        permit.record(Outcome.SUCCESS)
    snap = breaker.snapshot()
    assert (snap.state, snap.probe_successes, snap.in_flight) == (State.HALF_OPEN, 0, 1)
    probe.record(Outcome.SUCCESS)
    assert breaker.snapshot().probe_successes == 1


def test_row15_old_probe_release_does_not_free_new_slot() -> None:
    breaker, clock, _ = half_open()
    old_probe = breaker.acquire()
    clock.advance(20)  # guard re-opens (nobody looks)
    clock.advance(60)  # next half-open phase, due 60 s after the guard fired
    new_probe = breaker.acquire()
    old_probe.release()
    assert breaker.snapshot().in_flight == 1
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    new_probe.record(Outcome.SUCCESS)
    assert breaker.snapshot().in_flight == 0


def test_lazy_reads_date_transitions_when_they_were_due() -> None:
    breaker, clock, seen = half_open()
    breaker.acquire()  # hangs
    clock.advance(70)  # guard due at +20, re-open until +80
    snap = breaker.snapshot()
    assert (snap.state, snap.open_remaining_s) == (State.OPEN, 10.0)
    assert seen[-1] == (State.HALF_OPEN, State.OPEN)


def test_settling_twice_is_a_no_op() -> None:
    breaker, _, _ = half_open()
    probe = breaker.acquire()
    probe.record(Outcome.SUCCESS)
    probe.record(Outcome.SUCCESS)
    probe.release()
    assert probe.settled
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot().probe_successes == 1


def test_open_backoff_multiplier() -> None:  # CB-17
    config = BreakerConfig(open_backoff_multiplier=2.0, max_open_s=200.0)
    breaker, clock, _ = make(config)
    fail(breaker, 5)
    waits = []
    for _ in range(4):
        waits.append(breaker.snapshot().open_remaining_s)
        clock.advance(waits[-1] or 0)
        fail(breaker)
    assert waits == [60.0, 120.0, 200.0, 200.0]
    clock.advance(200)
    succeed(breaker, 2)
    fail(breaker, 5)
    assert breaker.snapshot().open_remaining_s == 60.0


# -- concurrency (§1.3.3) -----------------------------------------------------------------------------


async def test_concurrent_half_open_admits_one_probe() -> None:  # CB-07
    breaker, _, _ = half_open()
    release = asyncio.get_running_loop().create_future()
    calls = 0

    async def send() -> str:
        nonlocal calls
        with breaker.acquire():
            calls += 1
            await release
            return "sent"

    probe = asyncio.create_task(send())
    await asyncio.sleep(0)
    others = await asyncio.gather(*(send() for _ in range(50)), return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, CircuitOpenError) and r.retry_after == 1.0 for r in others)
    release.set_result(None)
    assert await probe == "sent"
    assert breaker.snapshot().probe_successes == 1


async def test_cancelled_probe_releases_its_permit() -> None:  # CB-11
    breaker, _, _ = half_open()
    started = asyncio.Event()

    async def send() -> None:
        with breaker.acquire():
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(send())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = breaker.snapshot()
    assert (snap.state, snap.in_flight, snap.probe_successes) == (State.HALF_OPEN, 0, 0)
    assert breaker.acquire().probe


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(0)])
def test_base_exceptions_are_reraised_and_not_counted(exc: BaseException) -> None:  # CB-16
    breaker, _, _ = make()
    fail(breaker, 4)
    with pytest.raises(type(exc)), breaker.acquire():
        raise exc
    assert breaker.snapshot().failures == 4


async def test_many_concurrent_failures_open_once() -> None:  # CB-21
    breaker, _, seen = make()

    async def send() -> None:
        permit = breaker.acquire()
        await asyncio.sleep(0)
        permit.record(Outcome.FAILURE)

    await asyncio.gather(*(send() for _ in range(1000)))
    assert breaker.state is State.OPEN
    assert seen == [(State.CLOSED, State.OPEN)]


def test_context_manager_classifies() -> None:
    breaker, _, _ = make()
    for _ in range(10):
        with pytest.raises(RateLimitedError), breaker.acquire():
            raise RateLimitedError("130429")
        with pytest.raises(PermanentDeliveryError), breaker.acquire():
            raise PermanentDeliveryError("132001", scope=ErrorScope.MESSAGE)
    assert breaker.state is State.CLOSED
    for _ in range(5):
        with pytest.raises(TransientDeliveryError), breaker.acquire():
            raise TransientDeliveryError("503")
    assert breaker.state is State.OPEN


# -- slow calls in consecutive mode ----------------------------------------------------------------------


def slow_success(breaker: CircuitBreaker, clock: FakeClock, took: float) -> None:
    permit = breaker.acquire()
    clock.advance(took)
    permit.record(Outcome.SUCCESS)


def test_slow_success_is_a_success_by_default() -> None:
    breaker, clock, _ = make()
    fail(breaker, 4)
    slow_success(breaker, clock, 600.0)
    assert breaker.snapshot().failures == 0


def test_count_slow_as_failure_in_closed() -> None:
    breaker, clock, seen = make(BreakerConfig(count_slow_as_failure=True, slow_call_duration_s=5.0))
    for _ in range(4):
        slow_success(breaker, clock, 6.0)
    assert breaker.snapshot().failures == 4
    slow_success(breaker, clock, 5.0)  # not slow: > threshold, strictly
    assert breaker.snapshot().failures == 0
    for _ in range(5):
        slow_success(breaker, clock, 5.001)
    assert seen == [(State.CLOSED, State.OPEN)]


def test_count_slow_as_failure_in_half_open() -> None:
    breaker, clock, _ = make(BreakerConfig(count_slow_as_failure=True))
    fail(breaker, 5)
    clock.advance(60)
    slow_success(breaker, clock, 1.0)
    slow_success(breaker, clock, 6.0)  # a slow probe re-opens
    snap = breaker.snapshot()
    assert (snap.state, snap.open_count) == (State.OPEN, 2)
