"""The rate limiter building block (shared/resilience.md §1.7; scenarios RL-xx), virtual time only."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnichannel import Certainty, ErrorScope, InvalidField, RateLimitedError
from omnichannel.testing import FakeClock
from omnichannel_resilience.limiter import (
    WHATSAPP_PAIR,
    WHATSAPP_SENDER,
    Gcra,
    Limiter,
    RateConfig,
    pair_key,
)

SENDER_T = 1 / 68


def admitted_in_one_instant(gcra: Gcra, key: str, tries: int) -> int:
    return sum(gcra.try_acquire(key) == 0.0 for _ in range(tries))


# -- RateConfig ---------------------------------------------------------------------------------


def test_whatsapp_defaults() -> None:
    assert RateConfig(rate_per_s=68.0, burst=10) == WHATSAPP_SENDER
    assert WHATSAPP_PAIR.burst == 5
    assert WHATSAPP_PAIR.interval_s == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"rate_per_s": 0, "burst": 1}, "rate_per_s", "must be a finite number > 0, got 0"),
        ({"rate_per_s": -1.5, "burst": 1}, "rate_per_s", "must be a finite number > 0, got -1.5"),
        ({"rate_per_s": float("inf"), "burst": 1}, "rate_per_s", "must be a finite number > 0, got inf"),
        ({"rate_per_s": "5", "burst": 1}, "rate_per_s", "must be a finite number > 0, got '5'"),
        ({"rate_per_s": True, "burst": 1}, "rate_per_s", "must be a finite number > 0, got True"),
        ({"rate_per_s": 1.0, "burst": 0}, "burst", "must be an integer >= 1, got 0"),
        ({"rate_per_s": 1.0, "burst": 2.5}, "burst", "must be an integer >= 1, got 2.5"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidField) as raised:
        RateConfig(**kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert str(raised.value) == problem


def test_every_validates_interval() -> None:
    with pytest.raises(InvalidField) as raised:
        RateConfig.every(0, 5)
    assert raised.value.field == "interval_s"


def test_limiter_validation() -> None:
    clock = FakeClock()
    with pytest.raises(InvalidField) as raised:
        Limiter(WHATSAPP_SENDER, WHATSAPP_PAIR, clock, max_wait_s=-1)
    assert raised.value.field == "max_wait_s"
    with pytest.raises(InvalidField) as raised:
        Gcra(WHATSAPP_SENDER, clock, max_keys=0)
    assert raised.value.field == "max_keys"


# -- Gcra ---------------------------------------------------------------------------------------


def test_burst_then_exact_wait() -> None:
    """RL-01: first 10 immediate, the 11th after 1/68 s, and refusals consume nothing."""
    clock = FakeClock()
    gcra = Gcra(WHATSAPP_SENDER, clock)
    assert admitted_in_one_instant(gcra, "s", 10) == 10
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T)
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T)  # the refusal did not consume
    clock.advance(SENDER_T / 2)
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T / 2)
    clock.advance(SENDER_T / 2)
    assert gcra.try_acquire("s") == 0.0
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T)


def test_steady_rate_after_burst() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=2.0, burst=3), clock)
    assert admitted_in_one_instant(gcra, "s", 5) == 3
    admitted = 0
    for _ in range(20):  # 10 s in 0.5 s steps: exactly one per step
        clock.advance(0.5)
        admitted += admitted_in_one_instant(gcra, "s", 5)
    assert admitted == 20


def test_one_second_window_at_whatsapp_defaults() -> None:
    """RL-01: any 1 s window holds at most 78 admissions (burst 10 + 68)."""
    clock = FakeClock()
    gcra = Gcra(WHATSAPP_SENDER, clock)
    times: list[float] = []
    while clock.monotonic() <= 3.0:
        wait = gcra.try_acquire("s")
        if wait == 0.0:
            times.append(clock.monotonic())
        else:
            clock.advance(wait)
    assert max(sum(t <= start + 1.0 for t in times[i:]) for i, start in enumerate(times)) <= 78


def test_explicit_now_argument() -> None:
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), FakeClock())
    assert gcra.try_acquire("k", now=100.0) == 0.0
    assert gcra.try_acquire("k", now=100.25) == pytest.approx(0.75)
    assert gcra.try_acquire("k", now=101.0) == 0.0


def test_keys_are_independent() -> None:
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), FakeClock())
    assert gcra.try_acquire("a") == 0.0
    assert gcra.try_acquire("a") == pytest.approx(1.0)
    assert gcra.try_acquire("b") == 0.0


def test_penalize_sets_the_next_admission() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=10.0, burst=5), clock)
    gcra.penalize("s", 3.0)
    assert gcra.try_acquire("s") == pytest.approx(3.0)
    clock.advance(3.0)
    assert gcra.try_acquire("s") == 0.0
    assert gcra.try_acquire("s") == pytest.approx(0.1)  # burst spent: one per interval after the pause


def test_penalize_never_shortens_a_wait() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), clock)
    gcra.penalize("s", 10.0)
    gcra.penalize("s", 1.0)
    assert gcra.try_acquire("s") == pytest.approx(10.0)


def test_refund_gives_one_slot_back() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=2), clock)
    assert admitted_in_one_instant(gcra, "s", 2) == 2
    gcra.refund("s")
    assert gcra.try_acquire("s") == 0.0
    assert gcra.try_acquire("s") == pytest.approx(1.0)


def test_idle_keys_are_forgotten() -> None:
    """RL-09: 100,000 distinct recipients, then idle past their TAT: the state is reclaimed."""
    clock = FakeClock()
    gcra = Gcra(WHATSAPP_PAIR, clock)
    for i in range(100_000):
        assert gcra.try_acquire(f"r{i}") == 0.0
    assert len(gcra) == 100_000
    clock.advance(6.0)  # one pair interval: every TAT is now in the past
    assert gcra.try_acquire("other") == 0.0
    assert len(gcra) == 1


def test_live_keys_are_kept() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), clock)
    assert gcra.try_acquire("a") == 0.0
    clock.advance(0.5)
    assert gcra.try_acquire("b") == 0.0
    assert gcra.tat("a") == pytest.approx(1.0)
    clock.advance(0.5)
    assert gcra.try_acquire("c") == 0.0
    assert gcra.tat("a") is None  # expired at 1.0, forgotten
    assert gcra.tat("b") == pytest.approx(1.5)


def test_cap_on_tracked_keys() -> None:
    gcra = Gcra(RateConfig(rate_per_s=0.001, burst=1), FakeClock(), max_keys=3)
    for key in "abcd":
        assert gcra.try_acquire(key) == 0.0
    assert len(gcra) == 3
    assert gcra.tat("a") is None  # the least recently updated key went first
    assert gcra.tat("d") is not None


@given(
    rate=st.floats(min_value=0.1, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=120),
)
def test_property_admissions_bounded_over_any_window(rate: float, burst: int, gaps: list[float]) -> None:
    """RL-01: over any window of ``w`` seconds, admissions never exceed ``burst + rate·w``."""
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=rate, burst=burst), clock)
    times: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        if gcra.try_acquire("k") == 0.0:
            times.append(clock.monotonic())
    # The fullest window starts and ends on admissions: check every such pair.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-6


# -- Limiter ------------------------------------------------------------------------------------


def make_limiter(
    clock: FakeClock,
    *,
    sender: RateConfig = WHATSAPP_SENDER,
    pair: RateConfig = WHATSAPP_PAIR,
    max_wait_s: float = 2.0,
    max_wait_pair_s: float | None = 0.0,
) -> Limiter:
    return Limiter(sender, pair, clock, max_wait_s, max_wait_pair_s=max_wait_pair_s)


async def test_acquire_sleeps_short_sender_waits() -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    for i in range(10):
        await limiter.acquire("s", f"r{i}")
    assert clock.sleeps == []
    await limiter.acquire("s", "r10")
    assert clock.sleeps == [pytest.approx(SENDER_T)]
    assert clock.monotonic() == pytest.approx(SENDER_T)


async def test_acquire_raises_beyond_max_wait() -> None:
    """RL-03: a wait beyond max_wait → RateLimitedError(retry_after), scope sender, not_sent."""
    clock = FakeClock()
    limiter = make_limiter(clock, sender=RateConfig(rate_per_s=1.0, burst=1), max_wait_s=0.5)
    await limiter.acquire("s", "a")
    with pytest.raises(RateLimitedError) as raised:
        await limiter.acquire("s", "b")
    error = raised.value
    assert error.scope is ErrorScope.SENDER
    assert error.certainty is Certainty.NOT_SENT
    assert error.retry_after == pytest.approx(1.0)
    assert clock.sleeps == []  # the worker is free at once
    clock.advance(1.0)
    await limiter.acquire("s", "b")  # the refusal consumed nothing


async def test_pair_defers_without_blocking_other_recipients() -> None:
    """RL-02: pair_burst 1 → the 2nd and 3rd for A are refused; B goes out at once."""
    clock = FakeClock()
    limiter = make_limiter(clock, pair=RateConfig.every(6.0, 1))
    await limiter.acquire("s", "A")
    with pytest.raises(RateLimitedError) as raised:
        await limiter.acquire("s", "A")
    assert raised.value.scope is ErrorScope.RECIPIENT
    assert raised.value.retry_after == pytest.approx(6.0)
    assert raised.value.certainty is Certainty.NOT_SENT
    await limiter.acquire("s", "B")
    await limiter.acquire("other-sender", "A")
    assert clock.sleeps == []


async def test_pair_refusal_does_not_consume_the_sender() -> None:
    """RL-05: a hot recipient does not burn the sender's rate."""
    clock = FakeClock()
    limiter = make_limiter(clock, sender=RateConfig(rate_per_s=1.0, burst=2), pair=RateConfig.every(6.0, 1))
    await limiter.acquire("s", "A")
    for _ in range(5):
        with pytest.raises(RateLimitedError):
            await limiter.acquire("s", "A")
    await limiter.acquire("s", "B")  # the sender's second token is still there
    assert clock.sleeps == []


async def test_sender_refusal_does_not_consume_the_pair() -> None:
    clock = FakeClock()
    limiter = make_limiter(
        clock, sender=RateConfig(rate_per_s=1.0, burst=1), pair=RateConfig.every(6.0, 2), max_wait_s=0.5
    )
    await limiter.acquire("s", "A")
    with pytest.raises(RateLimitedError) as raised:
        await limiter.acquire("s", "A")
    assert raised.value.scope is ErrorScope.SENDER
    clock.advance(1.0)
    await limiter.acquire("s", "A")  # the pair's second token is still there


async def test_pair_wait_within_max_wait_is_slept() -> None:
    clock = FakeClock()
    limiter = make_limiter(clock, pair=RateConfig(rate_per_s=1.0, burst=1), max_wait_pair_s=None)
    await limiter.acquire("s", "A")
    await limiter.acquire("s", "A")
    assert clock.sleeps == [pytest.approx(1.0)]


async def test_concurrent_waiters_reserve_successive_slots() -> None:
    """Each waiter reserves its slot before sleeping: concurrent waiters wait 1, 2, 3 s (FIFO)."""
    clock = FakeClock()
    limiter = make_limiter(clock, sender=RateConfig(rate_per_s=1.0, burst=1), max_wait_s=5.0)
    await limiter.acquire("s", "r0")
    gate = asyncio.Event()
    sleeps: list[float] = []

    async def gated_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await gate.wait()

    clock.sleep = gated_sleep  # type: ignore[method-assign]
    tasks = [asyncio.create_task(limiter.acquire("s", f"r{i}")) for i in range(1, 4)]
    await asyncio.sleep(0)
    assert sleeps == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]
    assert limiter.senders.wait_time("s") == pytest.approx(4.0)
    gate.set()
    await asyncio.gather(*tasks)


async def test_cancelled_waiter_consumes_nothing() -> None:
    """RL-04: cancelling a waiter gives its reserved slot back."""
    clock = FakeClock()
    limiter = make_limiter(clock, sender=RateConfig(rate_per_s=1.0, burst=1), max_wait_s=5.0)
    await limiter.acquire("s", "r0")
    before = limiter.senders.tat("s")
    gate = asyncio.Event()

    async def blocked_sleep(seconds: float) -> None:
        await gate.wait()

    clock.sleep = blocked_sleep  # type: ignore[method-assign]
    task = asyncio.create_task(limiter.acquire("s", "r1"))
    await asyncio.sleep(0)
    assert limiter.senders.tat("s") == pytest.approx(2.0)  # reserved
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.senders.tat("s") == before
    assert limiter.pairs.tat(pair_key("s", "r1")) is None


async def test_throttled_sender_pauses_the_sender() -> None:
    """130429 → the sender key: retry_after is honoured, default 1 s."""
    clock = FakeClock()
    limiter = make_limiter(clock, max_wait_s=0.0)
    assert limiter.on_throttled("s", "A", ErrorScope.SENDER, 3.0) == 3.0
    with pytest.raises(RateLimitedError) as raised:
        await limiter.acquire("s", "B")
    assert raised.value.scope is ErrorScope.SENDER
    assert raised.value.retry_after == pytest.approx(3.0)
    await limiter.acquire("other", "B")
    clock.advance(3.0)
    await limiter.acquire("s", "B")
    assert limiter.on_throttled("s", "A", ErrorScope.SENDER, None) == 1.0


async def test_throttled_account_and_unscoped() -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    assert limiter.on_throttled("s", "A", ErrorScope.APP, None) == 60.0
    assert limiter.senders.wait_time("s") == pytest.approx(60.0)
    assert limiter.on_throttled("t", "A", ErrorScope.MESSAGE, 5.0) == 0.0
    assert limiter.on_throttled("t", "A", None, 5.0) == 0.0
    assert limiter.senders.wait_time("t") == 0.0


async def test_pair_backoff_is_4_to_the_k_and_success_resets_it() -> None:
    """131056 → that pair only, 1, 4, 16, 64 s on consecutive hits; a success starts over."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    pauses = [limiter.on_throttled("s", "A", ErrorScope.RECIPIENT, None) for _ in range(4)]
    assert pauses == [1.0, 4.0, 16.0, 64.0]
    assert limiter.pair_hits("s", "A") == 4
    with pytest.raises(RateLimitedError) as raised:
        await limiter.acquire("s", "A")
    assert raised.value.scope is ErrorScope.RECIPIENT
    assert raised.value.retry_after == pytest.approx(64.0)
    await limiter.acquire("s", "B")  # other recipients are unaffected
    clock.advance(64.0)
    await limiter.acquire("s", "A")
    limiter.on_success("s", "A")
    assert limiter.pair_hits("s", "A") == 0
    assert limiter.on_throttled("s", "A", ErrorScope.RECIPIENT, None) == 1.0


async def test_pair_backoff_respects_retry_after_and_cap() -> None:
    clock = FakeClock()
    limiter = Limiter(WHATSAPP_SENDER, WHATSAPP_PAIR, clock, 0.0, max_pair_backoff_s=100.0)
    assert limiter.on_throttled("s", "A", ErrorScope.RECIPIENT, 30.0) == 30.0  # 4^0 = 1 < 30
    pauses = [limiter.on_throttled("s", "A", ErrorScope.RECIPIENT, None) for _ in range(4)]
    assert pauses == [4.0, 16.0, 64.0, 100.0]
