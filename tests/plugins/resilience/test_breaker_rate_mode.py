"""The circuit breaker's rate mode (shared/resilience.md §1.3.2, scenarios CR-xx, CB-18), on virtual time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnichannel import CircuitOpenError
from omnichannel.testing import FakeClock
from omnichannel_resilience.breaker import BreakerConfig, CircuitBreaker, Outcome, State, ThresholdKind
from omnichannel_resilience.windows import CountWindow, TimeWindow, Totals

S, F = Outcome.SUCCESS, Outcome.FAILURE
LETTERS = {"S": S, "F": F, "I": Outcome.IGNORED, "T": Outcome.THROTTLED}

Events = list[Any]


def rate(**kwargs: Any) -> BreakerConfig:
    return BreakerConfig(mode="rate", **kwargs)


def make(config: BreakerConfig) -> tuple[CircuitBreaker, FakeClock, Events]:
    """A breaker whose transitions and threshold reports land, in order, in one list."""
    clock = FakeClock()
    events: Events = []
    breaker = CircuitBreaker(
        "whatsapp:106540352242922",
        config,
        clock,
        on_transition=lambda prev, cur: events.append((prev, cur)),
        on_threshold=events.append,
    )
    return breaker, clock, events


def call(breaker: CircuitBreaker, clock: FakeClock, outcome: Outcome, took: float = 0.0) -> None:
    permit = breaker.acquire()
    clock.advance(took)
    permit.record(outcome)


def run(breaker: CircuitBreaker, clock: FakeClock, outcomes: str) -> None:
    for letter in outcomes:
        call(breaker, clock, LETTERS[letter])


def tripped(config: BreakerConfig) -> tuple[CircuitBreaker, FakeClock, Events]:
    """A breaker that the failures of one full window just opened; ``events`` starts empty."""
    breaker, clock, events = make(config)
    run(breaker, clock, "F" * min(config.minimum_calls, config.window_size))
    assert breaker.state is State.OPEN
    events.clear()
    return breaker, clock, events


def half_open(config: BreakerConfig) -> tuple[CircuitBreaker, FakeClock, Events]:
    breaker, clock, events = tripped(config)
    clock.advance(config.open_s)
    assert breaker.state is State.HALF_OPEN
    events.clear()
    return breaker, clock, events


# -- windows -----------------------------------------------------------------------------------------


def test_totals_rates_are_exact_and_absent_below_minimum() -> None:
    assert Totals(5, 3, 1).rates(5) == (60.0, 20.0)
    assert Totals(4, 3, 1).rates(5) is None
    assert Totals(0, 0, 0).rates(1) is None


def test_count_window_evicts_the_oldest() -> None:
    window = CountWindow(3, minimum_calls=10)
    assert window.minimum_calls == 3  # capped at the size
    for failed, slow in [(True, True), (False, False), (False, True)]:
        window.record(0.0, failed=failed, slow=slow)
    assert window.totals(0.0) == Totals(3, 1, 2)
    assert window.record(0.0, failed=False, slow=False) == Totals(3, 0, 1)
    window.clear()
    assert window.totals(0.0) == Totals(0, 0, 0)


def test_time_window_buckets_expire_on_read_and_write() -> None:
    window = TimeWindow(10, minimum_calls=1)
    window.record(0.5, failed=True, slow=False)
    window.record(0.9, failed=True, slow=True)
    window.record(3.0, failed=False, slow=False)
    assert window.totals(9.999) == Totals(3, 2, 1)
    assert window.totals(10.0) == Totals(1, 0, 0)  # second 0 left the window
    assert window.record(13.0, failed=True, slow=False) == Totals(1, 1, 0)  # second 3 left on write
    assert window.totals(100.0) == Totals(0, 0, 0)


# -- CLOSED: count window (CR-01) ----------------------------------------------------------------------


def test_cr01_count_window_opens_at_60_percent() -> None:
    config = rate(window_size=5, minimum_calls=5, failure_rate_threshold=50.0)
    breaker, clock, events = make(config)
    run(breaker, clock, "FFFS")
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate, snap.slow_call_rate, snap.calls_in_window) == (
        State.CLOSED,
        None,
        None,
        4,
    )
    run(breaker, clock, "S")
    snap = breaker.snapshot()
    # The window that tripped stays visible while OPEN (resilience4j keeps it too).
    assert (snap.state, snap.failure_rate, snap.slow_call_rate, snap.calls_in_window) == (
        State.OPEN,
        60.0,
        0.0,
        5,
    )
    assert (snap.mode, snap.failures, snap.open_remaining_s, snap.open_count) == ("rate", 0, 60.0, 1)
    assert events == ["failure_rate", (State.CLOSED, State.OPEN)]
    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_trip_is_logged_with_the_rates(caplog: pytest.LogCaptureFixture) -> None:
    breaker, clock, _ = make(rate(window_size=5, minimum_calls=5))
    with caplog.at_level(logging.WARNING):
        run(breaker, clock, "FFFSS")
    assert "opens: failure_rate 60.0%, slow_call_rate 0.0%" in caplog.text


def test_rate_exactly_at_threshold_trips_and_just_below_does_not() -> None:
    breaker, clock, _ = make(rate(window_size=4, minimum_calls=4, failure_rate_threshold=50.0))
    run(breaker, clock, "SSSF")
    assert breaker.snapshot().failure_rate == 25.0
    run(breaker, clock, "F")  # window S,S,F,F
    assert breaker.state is State.OPEN


def test_count_window_slides() -> None:
    breaker, clock, _ = make(rate(window_size=4, minimum_calls=4, failure_rate_threshold=75.0))
    run(breaker, clock, "FFSS")
    for window, expected in [("F,S,S,F", 50.0), ("S,S,F,F", 50.0)]:
        run(breaker, clock, "F")
        assert breaker.snapshot().failure_rate == expected, window
    run(breaker, clock, "F")  # S,F,F,F
    assert breaker.state is State.OPEN


def test_minimum_calls_is_capped_at_the_count_window_size() -> None:
    breaker, clock, _ = make(rate(window_size=5, minimum_calls=20))
    run(breaker, clock, "FFFF")
    assert breaker.state is State.CLOSED
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN


def test_ignored_and_throttled_are_not_recorded() -> None:
    breaker, clock, _ = make(rate(window_size=5, minimum_calls=5))
    run(breaker, clock, "FF" + "IT" * 20)
    snap = breaker.snapshot()
    assert (snap.state, snap.calls_in_window) == (State.CLOSED, 2)


def test_defaults_window_100_minimum_20_threshold_50() -> None:
    breaker, clock, _ = make(rate())
    run(breaker, clock, "SF" * 9 + "S")
    assert breaker.snapshot().failure_rate is None
    run(breaker, clock, "F")  # 20 calls, 50 %
    assert breaker.state is State.OPEN
    breaker, clock, _ = make(rate())
    run(breaker, clock, "SSF" * 200)
    snap = breaker.snapshot()
    assert (snap.state, snap.calls_in_window) == (State.CLOSED, 100)
    assert snap.failure_rate == pytest.approx(100 / 3, abs=1)


# -- CLOSED: time window (CR-02) -----------------------------------------------------------------------


def time_config(**kwargs: Any) -> BreakerConfig:
    return rate(window_type="time", window_size=10, minimum_calls=5, failure_rate_threshold=50.0, **kwargs)


def test_cr02_failures_older_than_the_window_drop_out() -> None:
    breaker, clock, _ = make(time_config())
    clock.advance(0.5)
    run(breaker, clock, "FFFF")
    clock.advance(9.0)  # t = 9.5: still in
    assert breaker.snapshot().calls_in_window == 4
    clock.advance(0.5)  # t = 10: second 0 left
    assert breaker.snapshot().calls_in_window == 0
    run(breaker, clock, "F")
    assert breaker.state is State.CLOSED


def test_cr02_failures_spread_over_30_s_never_trip() -> None:
    breaker, clock, _ = make(time_config())
    seen = []
    for _ in range(10):
        run(breaker, clock, "F")
        seen.append(breaker.snapshot().calls_in_window)
        clock.advance(3.0)
    assert breaker.state is State.CLOSED
    assert max(seen) == 4
    assert breaker.snapshot().failure_rate is None


def test_cr02_a_burst_within_the_window_trips() -> None:
    breaker, clock, _ = make(time_config())
    for _ in range(5):
        run(breaker, clock, "F")
        clock.advance(2.0)
    assert breaker.state is State.OPEN


# -- slow calls (CR-03) ---------------------------------------------------------------------------------


def slow_config(**kwargs: Any) -> BreakerConfig:
    return rate(
        window_size=4,
        minimum_calls=4,
        slow_call_duration_s=5.0,
        slow_call_rate_threshold=50.0,
        **kwargs,
    )


def test_cr03_slow_successes_alone_open_it() -> None:
    breaker, clock, events = make(slow_config())
    call(breaker, clock, S, took=6.0)
    call(breaker, clock, S)
    call(breaker, clock, S, took=6.0)
    snap = breaker.snapshot()
    assert (snap.state, snap.calls_in_window, snap.slow_call_rate) == (State.CLOSED, 3, None)
    call(breaker, clock, S)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate, snap.slow_call_rate) == (State.OPEN, 0.0, 50.0)
    assert events == ["slow_call_rate", (State.CLOSED, State.OPEN)]


def test_slow_is_strictly_longer_than_the_threshold() -> None:
    breaker, clock, _ = make(slow_config())
    for _ in range(4):
        call(breaker, clock, S, took=5.0)
    snap = breaker.snapshot()
    assert (snap.state, snap.slow_call_rate) == (State.CLOSED, 0.0)


def test_slow_failures_count_for_both_rates() -> None:
    breaker, clock, events = make(slow_config(failure_rate_threshold=50.0))
    call(breaker, clock, F, took=6.0)
    call(breaker, clock, F, took=6.0)
    run(breaker, clock, "SS")
    assert breaker.snapshot().failure_rate == 50.0
    assert events == ["failure_rate", "slow_call_rate", (State.CLOSED, State.OPEN)]


# -- HALF_OPEN (CR-04) ------------------------------------------------------------------------------------


def probe_config(**kwargs: Any) -> BreakerConfig:
    defaults: dict[str, Any] = {
        "window_size": 5,
        "minimum_calls": 10,
        "permitted_calls_in_half_open": 4,
        "failure_rate_threshold": 50.0,
    }
    return rate(**{**defaults, **kwargs})


def test_cr04_below_threshold_after_min_outcomes_closes() -> None:
    breaker, clock, events = half_open(probe_config())
    run(breaker, clock, "SFS")  # a probe failure does not re-open by itself
    snap = breaker.snapshot()
    assert (snap.state, snap.calls_in_window, snap.failure_rate, snap.probe_successes) == (
        State.HALF_OPEN,
        3,
        None,
        2,
    )
    run(breaker, clock, "S")  # 4 = min(10, 4) outcomes, 25 %
    snap = breaker.snapshot()
    assert (snap.state, snap.calls_in_window, snap.failure_rate, snap.open_count) == (
        State.CLOSED,
        0,
        None,
        0,
    )
    assert events == [(State.HALF_OPEN, State.CLOSED)]


def test_cr04_at_threshold_reopens() -> None:
    breaker, clock, events = half_open(probe_config())
    run(breaker, clock, "SFSF")
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate, snap.open_count, snap.open_remaining_s) == (
        State.OPEN,
        50.0,
        2,
        60.0,
    )
    assert events == [(State.HALF_OPEN, State.OPEN)]


def test_cr04_decides_after_minimum_calls_when_fewer_than_permitted() -> None:
    breaker, clock, _ = half_open(
        probe_config(window_size=3, minimum_calls=3, permitted_calls_in_half_open=10)
    )
    run(breaker, clock, "SS")
    assert breaker.state is State.HALF_OPEN
    run(breaker, clock, "F")  # 33 % after min(3, 10) outcomes
    assert breaker.state is State.CLOSED


def test_half_open_slow_probes_reopen() -> None:
    breaker, clock, _ = half_open(slow_config(permitted_calls_in_half_open=2))
    call(breaker, clock, S, took=6.0)
    call(breaker, clock, S)
    assert breaker.state is State.OPEN


def test_half_open_admits_permitted_concurrent_probes() -> None:
    breaker, _, _ = half_open(probe_config())
    probes = [breaker.acquire() for _ in range(4)]
    assert all(p.probe for p in probes)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 1.0
    probes[0].release()  # IGNORED: slot back, nothing recorded
    probes[1].record(Outcome.THROTTLED)
    snap = breaker.snapshot()
    assert (snap.in_flight, snap.calls_in_window) == (2, 0)
    assert breaker.acquire().probe


def test_half_open_guard_applies_in_rate_mode() -> None:
    breaker, clock, events = half_open(probe_config())
    hanging = breaker.acquire()
    clock.advance(20.0)
    assert breaker.state is State.OPEN
    assert events == [(State.HALF_OPEN, State.OPEN)]
    hanging.record(S)  # stale
    assert breaker.snapshot().open_count == 2


def test_stale_outcomes_are_not_probe_outcomes() -> None:
    config = probe_config()
    breaker, clock, _ = make(config)
    late = [breaker.acquire() for _ in range(4)]
    run(breaker, clock, "FFFFF")
    clock.advance(60)
    for permit in late:
        permit.record(F)
    snap = breaker.snapshot()
    assert (snap.state, snap.calls_in_window) == (State.HALF_OPEN, 0)


async def test_cancelled_probe_releases_its_permit() -> None:
    breaker, _, _ = half_open(probe_config(permitted_calls_in_half_open=1, minimum_calls=1))
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
    assert (snap.state, snap.in_flight, snap.calls_in_window) == (State.HALF_OPEN, 0, 0)


async def test_concurrent_half_open_admits_permitted_probes() -> None:
    breaker, _, _ = half_open(probe_config(permitted_calls_in_half_open=3, minimum_calls=3))
    release = asyncio.get_running_loop().create_future()
    calls = 0

    async def send() -> None:
        nonlocal calls
        with breaker.acquire():
            calls += 1
            await release

    tasks = [asyncio.create_task(send()) for _ in range(50)]
    await asyncio.sleep(0)
    assert calls == 3
    release.set_result(None)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 47
    assert breaker.state is State.CLOSED


# -- admin (CB-18) ------------------------------------------------------------------------------------------


def test_metrics_only_publishes_each_threshold_once() -> None:
    breaker, clock, events = make(slow_config(failure_rate_threshold=50.0))
    breaker.metrics_only()
    run(breaker, clock, "FFFF" * 10)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate, snap.calls_in_window) == (State.METRICS_ONLY, 100.0, 4)
    for _ in range(8):
        call(breaker, clock, S, took=6.0)
    assert events == [(State.CLOSED, State.METRICS_ONLY), "failure_rate", "slow_call_rate"]
    breaker.metrics_only()  # a new phase re-arms the reports
    run(breaker, clock, "FFFF")
    assert events[-1] == "failure_rate"


def test_admin_states_clear_the_window() -> None:
    breaker, clock, _ = make(rate(window_size=5, minimum_calls=5))
    run(breaker, clock, "FFFF")
    breaker.disable()
    run(breaker, clock, "FFFF")
    assert breaker.snapshot().calls_in_window == 0
    breaker.reset()
    run(breaker, clock, "FFFF")
    assert breaker.state is State.CLOSED
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN
    breaker.force_open()
    assert breaker.snapshot().calls_in_window == 0


def test_threshold_listener_error_is_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    def boom(kind: ThresholdKind) -> None:
        raise RuntimeError("listener bug")

    config = rate(window_size=2, minimum_calls=2)
    breaker = CircuitBreaker("x", config, FakeClock(), on_threshold=boom)
    with caplog.at_level(logging.ERROR):
        breaker.acquire().record(F)
        breaker.acquire().record(F)
    assert breaker.state is State.OPEN
    assert "on_threshold listener" in caplog.text


# -- property: the count window agrees with a tiny reference model ------------------------------------------


@attrs.define
class Reference:
    """Rate mode, count window, one call at a time: what the breaker should decide."""

    config: BreakerConfig
    state: State = State.CLOSED
    window: list[tuple[bool, bool]] = attrs.Factory(list)
    minimum: int = 0

    def __attrs_post_init__(self) -> None:
        self.minimum = min(self.config.minimum_calls, self.config.window_size)

    def rates(self) -> tuple[float, float] | None:
        calls = len(self.window)
        if calls < self.minimum:
            return None
        return sum(f for f, _ in self.window) * 100 / calls, sum(s for _, s in self.window) * 100 / calls

    def crossed(self) -> bool | None:
        rates = self.rates()
        if rates is None:
            return None
        return (
            rates[0] >= self.config.failure_rate_threshold or rates[1] >= self.config.slow_call_rate_threshold
        )

    def record(self, failed: bool, slow: bool) -> None:
        self.window.append((failed, slow))
        if self.state is State.CLOSED:
            self.window = self.window[-self.config.window_size :]
            if self.crossed():
                self.state = State.OPEN
        elif (decision := self.crossed()) is not None:
            self.state = State.OPEN if decision else State.CLOSED
            if not decision:
                self.window, self.minimum = [], min(self.config.minimum_calls, self.config.window_size)

    def wait(self) -> None:
        if self.state is State.OPEN:
            self.state = State.HALF_OPEN
            permitted = self.config.permitted_calls_in_half_open
            self.window, self.minimum = [], min(self.config.minimum_calls, permitted)


# Failures twice as likely as the other outcomes, so that the breaker often trips and probes.
outcomes = st.sampled_from([S, F, F, Outcome.IGNORED, Outcome.THROTTLED])
steps = st.lists(st.one_of(st.tuples(outcomes, st.booleans()), st.just("wait")), max_size=120)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 8),
    minimum=st.integers(1, 10),
    permitted=st.integers(1, 5),
    failure_threshold=st.sampled_from([10.0, 33.4, 50.0, 75.0, 100.0]),
    slow_threshold=st.sampled_from([25.0, 50.0, 100.0]),
    ops=steps,
)
def test_count_window_matches_reference_model(
    size: int,
    minimum: int,
    permitted: int,
    failure_threshold: float,
    slow_threshold: float,
    ops: list[Any],
) -> None:
    config = rate(
        window_size=size,
        minimum_calls=minimum,
        permitted_calls_in_half_open=permitted,
        failure_rate_threshold=failure_threshold,
        slow_call_rate_threshold=slow_threshold,
    )
    breaker, clock, _ = make(config)
    model = Reference(config)
    for op in ops:
        if op == "wait":
            clock.advance(config.open_s)
            model.wait()
        elif model.state is State.OPEN:
            with pytest.raises(CircuitOpenError):
                breaker.acquire()
        else:
            outcome, slow = op
            call(breaker, clock, outcome, took=6.0 if slow else 0.0)
            if outcome in (S, F):
                model.record(outcome is F, slow)
        snap = breaker.snapshot()
        assert snap.state is model.state
        rates = model.rates()
        assert (snap.failure_rate, snap.slow_call_rate) == (rates or (None, None))
        assert snap.calls_in_window == len(model.window)
