"""The retry building block (shared/resilience.md §1.5, §1.6, §1.8; scenarios RT-xx, BU-xx), virtual time."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnichannel import (
    Certainty,
    CircuitOpenError,
    InvalidField,
    PermanentDeliveryError,
    RateLimitedError,
    SenderUnavailableError,
    TransientDeliveryError,
)
from omnichannel.testing import FakeClock
from omnichannel_resilience.retry import (
    RetryBudget,
    RetryConfig,
    call_with_retries,
    jittered_delays,
    retryable,
)

LEGACY = RetryConfig(3, 1.0, 2.0, 10.0, jitter="none", deadline_s=None)  # the PHP service's numbers


class Flaky:
    """An inner sender that raises the given errors in order, then returns ``"wamid.OK"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "wamid.OK"


def always(exc_factory: Callable[[], BaseException]) -> Callable[[], Awaitable[str]]:
    async def send() -> str:
        send.calls += 1  # type: ignore[attr-defined]
        raise exc_factory()

    send.calls = 0  # type: ignore[attr-defined]
    return send


def transient(**kwargs: object) -> TransientDeliveryError:
    return TransientDeliveryError("upstream 503", channel="whatsapp", http_status=503, **kwargs)  # type: ignore[arg-type]


async def test_legacy_gives_up_after_three_attempts_with_the_last_error() -> None:  # RT-01
    clock = FakeClock()
    errors = [transient(), transient(), transient()]
    sender = Flaky(*errors)
    with pytest.raises(TransientDeliveryError) as raised:
        await call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0))
    assert raised.value is errors[2]
    assert sender.calls == 3
    assert clock.sleeps == [1.0, 2.0]
    assert clock.monotonic() == 3.0


async def test_success_on_second_attempt() -> None:
    clock = FakeClock()
    sender = Flaky(transient())
    result = await call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0))
    assert result == "wamid.OK"
    assert sender.calls == 2
    assert clock.sleeps == [1.0]


async def test_full_jitter_is_seeded_and_bounded() -> None:  # RT-02, RT-13
    clock = FakeClock()
    sender = Flaky(transient(), transient(), transient())
    with pytest.raises(TransientDeliveryError):
        await call_with_retries(sender, config=RetryConfig(), clock=clock, rng=random.Random(0))
    expected_rng = random.Random(0)
    assert clock.sleeps == [expected_rng.uniform(0, 1.0), expected_rng.uniform(0, 2.0)]
    assert 0 < clock.sleeps[0] <= 1.0  # primed correctly: the first wait is not the priming 0


@pytest.mark.parametrize(
    "error",
    [
        PermanentDeliveryError("template does not exist", code=132001),
        SenderUnavailableError("token expired", code=190),
        ValueError("a bug"),
        transient(certainty=Certainty.UNKNOWN),
    ],
)
async def test_not_retryable_errors_are_raised_after_one_call(error: Exception) -> None:  # RT-04, RT-14
    clock = FakeClock()
    sender = Flaky(error)
    with pytest.raises(type(error)) as raised:
        await call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0))
    assert raised.value is error
    assert sender.calls == 1
    assert clock.sleeps == []


async def test_unknown_certainty_retried_when_the_policy_allows() -> None:
    clock = FakeClock()
    sender = Flaky(transient(certainty=Certainty.UNKNOWN))
    result = await call_with_retries(
        sender, config=LEGACY, clock=clock, rng=random.Random(0), retry_unknown=True
    )
    assert result == "wamid.OK"
    assert clock.sleeps == [1.0]


async def test_circuit_open_is_never_retried_in_process() -> None:  # RT-08
    clock = FakeClock()
    error = CircuitOpenError("breaker open", retry_after=42.0)
    sender = Flaky(transient(), error)
    with pytest.raises(CircuitOpenError) as raised:
        await call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0))
    assert raised.value is error
    assert sender.calls == 2
    assert clock.sleeps == [1.0]


async def test_retry_after_is_a_floor_never_jittered_below() -> None:  # RT-06
    clock = FakeClock()
    sender = Flaky(RateLimitedError("throttled", code=130429, retry_after=7.0))
    result = await call_with_retries(sender, config=RetryConfig(), clock=clock, rng=random.Random(0))
    assert result == "wamid.OK"
    assert clock.sleeps == [7.0]


async def test_retry_after_below_the_computed_delay_keeps_the_delay() -> None:
    clock = FakeClock()
    sender = Flaky(transient(), RateLimitedError("throttled", retry_after=0.5))
    await call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0))
    assert clock.sleeps == [1.0, 2.0]


async def test_retry_after_longer_than_in_process_cap_gives_up_at_once() -> None:  # RT-06
    clock = FakeClock()
    error = RateLimitedError("throttled", retry_after=120.0)
    sender = Flaky(error)
    with pytest.raises(RateLimitedError) as raised:
        await call_with_retries(sender, config=RetryConfig(), clock=clock, rng=random.Random(0))
    assert raised.value is error
    assert sender.calls == 1
    assert clock.sleeps == []


async def test_explicit_in_process_cap() -> None:
    clock = FakeClock()
    config = RetryConfig(jitter="none", max_retry_after_in_process_s=30.0)
    sender = Flaky(RateLimitedError("throttled", retry_after=20.0))
    await call_with_retries(sender, config=config, clock=clock, rng=random.Random(0))
    assert clock.sleeps == [20.0]


async def test_deadline_stops_retries_before_sleeping() -> None:  # RT-07
    clock = FakeClock()
    config = RetryConfig(max_attempts=5, jitter="none", deadline_s=6.0, min_attempt_time_s=1.0)
    errors = [transient() for _ in range(5)]

    async def slow_failure() -> str:
        clock.advance(0.5)  # each attempt takes 0.5 s of virtual time
        raise errors.pop(0)

    with pytest.raises(TransientDeliveryError):
        await call_with_retries(slow_failure, config=config, clock=clock, rng=random.Random(0))
    # t=0.5 fail, sleep 1 → t=2.0 fail, sleep 2 → t=4.5 fail; 4.5 + 4 + 1 > 6 → give up
    assert clock.sleeps == [1.0, 2.0]
    assert len(errors) == 2
    assert clock.monotonic() == 4.5


async def test_budget_exhausted_means_no_retry() -> None:  # BU-01
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_window=0, window_s=10.0, clock=clock)
    error = transient()
    sender = Flaky(error)
    with pytest.raises(TransientDeliveryError) as raised:
        await call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0), budget=budget)
    assert raised.value is error
    assert sender.calls == 1
    assert clock.sleeps == []


async def test_budget_floor_allows_three_retries_then_defers() -> None:  # BU-02
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    senders = [Flaky(transient()) for _ in range(4)]
    for sender in senders[:3]:
        assert await call_with_retries(
            sender, config=LEGACY, clock=clock, rng=random.Random(0), budget=budget
        )
        assert sender.calls == 2
    with pytest.raises(TransientDeliveryError):
        await call_with_retries(senders[3], config=LEGACY, clock=clock, rng=random.Random(0), budget=budget)
    assert senders[3].calls == 1


def test_budget_ratio_and_window() -> None:  # BU-01, BU-03
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_window=3, window_s=10.0, clock=clock)
    for _ in range(100):
        budget.record_attempt()
    granted = 0
    while budget.can_retry():
        budget.record_retry()
        granted += 1
    assert granted == 20
    clock.advance(10.0)  # everything slides out of the window
    assert budget.allowed() == 3
    assert budget.can_retry()


def test_budget_buckets_slide_out_one_by_one() -> None:  # BU-03
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_window=3, window_s=10.0, clock=clock)
    for _ in range(50):
        budget.record_attempt()
    clock.advance(5.0)
    for _ in range(50):
        budget.record_attempt()
    assert budget.allowed() == 20
    clock.advance(5.0)  # the first second's bucket leaves the window, the sixth's stays
    assert budget.allowed() == 10
    clock.advance(4.5)
    assert budget.allowed() == 10
    clock.advance(0.5)
    assert budget.allowed() == 3


async def test_cancelled_during_sleep_propagates_and_stops() -> None:  # RT-09
    clock = FakeClock()
    sender = Flaky(transient(), transient())

    async def cancel_on_retry(attempt: int, delay: float, exc: BaseException) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(
            sender, config=LEGACY, clock=clock, rng=random.Random(0), on_retry=cancel_on_retry
        )
    assert sender.calls == 1


async def test_task_cancelled_in_sleep_makes_no_further_attempt() -> None:  # RT-09
    gate = asyncio.Event()

    class BlockingClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            gate.set()
            await asyncio.Event().wait()  # a 30 s sleep that never ends by itself

    clock = BlockingClock()
    sender = Flaky(transient(), transient())
    task = asyncio.create_task(call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0)))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sender.calls == 1
    assert clock.sleeps == [1.0]


async def test_cancelled_error_from_the_sender_is_never_retried() -> None:
    clock = FakeClock()
    sender = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(sender, config=LEGACY, clock=clock, rng=random.Random(0))
    assert sender.calls == 1
    assert clock.sleeps == []


async def test_on_retry_gets_attempt_numbers_and_delays_before_each_sleep() -> None:
    clock = FakeClock()
    errors = [transient(), transient(), transient()]
    seen: list[tuple[int, float, BaseException, int]] = []

    async def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
        seen.append((attempt, delay, exc, len(clock.sleeps)))

    with pytest.raises(TransientDeliveryError):
        await call_with_retries(
            Flaky(*errors), config=LEGACY, clock=clock, rng=random.Random(0), on_retry=on_retry
        )
    assert seen == [(1, 1.0, errors[0], 0), (2, 2.0, errors[1], 1)]


async def test_sync_or_raising_on_retry_keeps_retrying(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    seen: list[int] = []

    def on_retry(attempt: int, delay: float, exc: BaseException) -> None:  # RT-10
        seen.append(attempt)
        raise RuntimeError("metrics backend down")

    with caplog.at_level(logging.ERROR):
        result = await call_with_retries(
            Flaky(transient(), transient()),
            config=LEGACY,
            clock=clock,
            rng=random.Random(0),
            on_retry=on_retry,
        )
    assert result == "wamid.OK"
    assert seen == [1, 2]
    assert clock.sleeps == [1.0, 2.0]
    assert "on_retry handler failed" in caplog.text


async def test_concurrent_deliveries_share_no_counters() -> None:  # RT-11
    clock = FakeClock()
    senders = [always(transient) for _ in range(20)]
    results = await asyncio.gather(
        *(call_with_retries(s, config=LEGACY, clock=clock, rng=random.Random(0)) for s in senders),
        return_exceptions=True,
    )
    assert all(isinstance(r, TransientDeliveryError) for r in results)
    assert [s.calls for s in senders] == [3] * 20  # type: ignore[attr-defined]


def test_max_delay_applies_before_jitter() -> None:  # RT-03
    config = RetryConfig(max_attempts=6)
    delays = jittered_delays(config, random.Random(0))
    next(delays)
    waits = [delays.send(transient()) for _ in range(5)]
    expected_rng = random.Random(0)
    assert waits == [expected_rng.uniform(0, d) for d in (1.0, 2.0, 4.0, 8.0, 10.0)]


@given(
    seed=st.integers(0, 2**32),
    jitter=st.sampled_from(["full", "equal", "none"]),
    initial=st.floats(0.01, 5.0),
    multiplier=st.floats(1.0, 4.0),
    retry_after=st.none() | st.floats(0.0, 60.0),
)
def test_jitter_bounds(
    seed: int, jitter: str, initial: float, multiplier: float, retry_after: float | None
) -> None:
    config = RetryConfig(
        max_attempts=10,
        initial_delay_s=initial,
        multiplier=multiplier,
        max_delay_s=10.0,
        jitter=jitter,  # type: ignore[arg-type]
    )
    delays = jittered_delays(config, random.Random(seed))
    next(delays)
    for n in range(1, 10):
        capped = min(initial * multiplier ** (n - 1), 10.0)
        wait = delays.send(RateLimitedError("throttled", retry_after=retry_after))
        floor = retry_after or 0.0
        low = {"full": 0.0, "equal": capped / 2, "none": capped}[jitter]
        assert max(low, floor) - 1e-9 <= wait <= max(capped, floor) + 1e-9


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (transient(), True),
        (RateLimitedError("throttled"), True),
        (transient(certainty=Certainty.UNKNOWN), False),
        (CircuitOpenError("open"), False),
        (PermanentDeliveryError("bad"), False),
        (SenderUnavailableError("token"), False),
        (ValueError("bug"), False),
        (asyncio.CancelledError(), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_retryable(error: BaseException, expected: bool) -> None:
    assert retryable(error) is expected


def test_retryable_unknown_policy() -> None:
    assert retryable(transient(certainty=Certainty.UNKNOWN), retry_unknown=True)
    assert not retryable(CircuitOpenError("open", certainty=Certainty.UNKNOWN), retry_unknown=True)


def test_defaults() -> None:
    config = RetryConfig()
    assert (config.max_attempts, config.initial_delay_s, config.multiplier, config.max_delay_s) == (
        3,
        1.0,
        2.0,
        10.0,
    )
    assert config.jitter == "full"
    assert config.deadline_s == 30.0


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"max_attempts": 0}, "max_attempts", "must be an integer >= 1, got 0"),
        ({"max_attempts": 2.5}, "max_attempts", "must be an integer >= 1, got 2.5"),
        ({"initial_delay_s": 0}, "initial_delay_s", "must be > 0, got 0"),
        ({"multiplier": 0.5}, "multiplier", "must be >= 1, got 0.5"),
        ({"max_delay_s": -1}, "max_delay_s", "must be > 0, got -1"),
        ({"max_delay_s": 0.5}, "max_delay_s", "must be >= initial_delay_s (1.0), got 0.5"),
        ({"jitter": "decorrelated"}, "jitter", "must be one of 'full', 'equal', 'none', got 'decorrelated'"),
        ({"max_retry_after_in_process_s": 0}, "max_retry_after_in_process_s", "must be > 0, got 0"),
        ({"deadline_s": -5}, "deadline_s", "must be > 0, got -5"),
        ({"min_attempt_time_s": -1}, "min_attempt_time_s", "must be >= 0, got -1"),
    ],
)
def test_config_validation(kwargs: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidField) as raised:
        RetryConfig(**kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert str(raised.value) == problem


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": 1.5}, "ratio"),
        ({"min_retries_per_window": -1}, "min_retries_per_window"),
        ({"window_s": 0}, "window_s"),
    ],
)
def test_budget_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidField) as raised:
        RetryBudget(clock=FakeClock(), **kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
