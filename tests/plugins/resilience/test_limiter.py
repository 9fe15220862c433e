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


# -- Adaptive sender rate (AIMD) ----------------------------------------------------------------


def make_adaptive(clock: FakeClock, *, sender: RateConfig = WHATSAPP_SENDER, **kwargs: object) -> Limiter:
    return Limiter(sender, WHATSAPP_PAIR, clock, 2.0, max_wait_pair_s=0.0, adaptive=True, **kwargs)  # type: ignore[arg-type]


async def spacing(limiter: Limiter, clock: FakeClock, sender: str, count: int) -> list[float]:
    """The sleeps of ``count`` back-to-back acquires from ``sender`` (distinct recipients)."""
    start = len(clock.sleeps)
    for i in range(count):
        await limiter.acquire(sender, f"spacing-{clock.monotonic()}-{i}")
    return clock.sleeps[start:]


async def test_adaptive_130429_halves_the_sender_rate() -> None:
    """RL-06: 130429 halves the rate: the gauge value and the admission spacing (1/34 s, not 1/68)."""
    clock = FakeClock()
    limiter = make_adaptive(clock)
    assert limiter.current_rate("s") == 68.0
    assert limiter.on_throttled("s", "A", ErrorScope.SENDER, None) == 1.0  # the pause is unchanged
    assert limiter.current_rate("s") == pytest.approx(34.0)
    assert limiter.adapted_senders() == {"s": pytest.approx(34.0)}
    assert await spacing(limiter, clock, "s", 3) == [
        pytest.approx(1.0),  # the pause, then one every 1/34 s
        pytest.approx(1 / 34),
        pytest.approx(1 / 34),
    ]
    # Only that sender adapts, and never the pairs.
    assert limiter.current_rate("other") == 68.0
    assert limiter.senders.rate("other") == 68.0
    assert limiter.pairs.rate(pair_key("s", "A")) == WHATSAPP_PAIR.rate_per_s


async def test_adaptive_repeated_130429_floors_at_one_per_second() -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock)
    rates = []
    for _ in range(8):
        limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
        rates.append(limiter.current_rate("s"))
        clock.advance(1.0)  # past the 1 s pause: the next one is a new episode
    assert rates == pytest.approx([34.0, 17.0, 8.5, 4.25, 2.125, 1.0625, 1.0, 1.0])
    # The last pause is over: one at once, then one per second.
    assert await spacing(limiter, clock, "s", 3) == [pytest.approx(1.0)] * 2


async def test_adaptive_throttles_of_one_episode_halve_once() -> None:
    """Answers to attempts already in flight (during the pause) do not halve again."""
    clock = FakeClock()
    limiter = make_adaptive(clock)
    for _ in range(30):
        limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == pytest.approx(34.0)
    clock.advance(0.999)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == pytest.approx(34.0)
    clock.advance(0.001)  # the pause is over: still throttled means still too fast
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == pytest.approx(17.0)


async def test_adaptive_recovers_in_five_percent_steps() -> None:
    """RL-06: +5 % of 68/s (3.4/s) every 10 s without 130429, back to 68/s after 100 s.

    60 s after the halving the rate is 34 + 6 x 3.4 = 54.4/s: the spec's AIMD row (x 0.5, then +5 %
    per 10 s) restores the full rate after 10 steps, 100 s.
    """
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    observed = []
    for step in range(11):
        clock.advance(10.0 - 0.001 if step else 0.0)
        before_step = limiter.current_rate("s")
        clock.advance(0.001 if step else 0.0)
        observed.append(limiter.current_rate("s"))
        if step:
            assert before_step == pytest.approx(observed[-2])  # no change inside an interval
    assert observed == pytest.approx([34.0 + 3.4 * k for k in range(11)])
    assert observed[6] == pytest.approx(54.4)  # 60 s
    assert observed[10] == 68.0
    assert limiter.adapted_senders() == {}
    assert limiter.senders.rate("s") == 68.0  # the override is gone


async def test_adaptive_spacing_follows_the_increase_lazily() -> None:
    """No timer: the sender Gcra picks the grown rate up at the next acquire."""
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    clock.advance(50.0)  # 5 steps: 34 + 17 = 51/s, and idle long enough to have the burst back
    sleeps = await spacing(limiter, clock, "s", 12)
    assert sleeps == [pytest.approx(1 / 51), pytest.approx(1 / 51)]  # the burst (10) went at once
    assert limiter.senders.rate("s") == pytest.approx(51.0)


async def test_adaptive_throttle_during_recovery_halves_the_current_rate() -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    clock.advance(30.0)
    assert limiter.current_rate("s") == pytest.approx(44.2)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, 2.0)
    assert limiter.current_rate("s") == pytest.approx(22.1)
    clock.advance(9.999)  # the increase clock restarted at the last throttle
    assert limiter.current_rate("s") == pytest.approx(22.1)
    clock.advance(0.001)
    assert limiter.current_rate("s") == pytest.approx(25.5)


@pytest.mark.parametrize(
    "scope", [ErrorScope.RECIPIENT, ErrorScope.ACCOUNT, ErrorScope.APP, ErrorScope.MESSAGE, None]
)
async def test_adaptive_only_sender_scope_adapts(scope: ErrorScope | None) -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", scope, None)
    assert limiter.current_rate("s") == 68.0
    assert limiter.adapted_senders() == {}
    assert limiter.senders.rate("s") == 68.0


async def test_not_adaptive_by_default() -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    assert limiter.adaptive is False
    assert limiter.on_throttled("s", "A", ErrorScope.SENDER, None) == 1.0
    assert limiter.current_rate("s") == 68.0
    assert limiter.adapted_senders() == {}
    assert await spacing(limiter, clock, "s", 3) == [
        pytest.approx(1.0),
        pytest.approx(SENDER_T),
        pytest.approx(SENDER_T),
    ]


async def test_adaptive_configured_rate_below_the_floor_does_not_adapt() -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock, sender=RateConfig(rate_per_s=0.5, burst=1))
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == 0.5
    assert limiter.adapted_senders() == {}


async def test_adaptive_custom_parameters() -> None:
    clock = FakeClock()
    limiter = make_adaptive(
        clock,
        sender=RateConfig(rate_per_s=100.0, burst=1),
        adaptive_floor_per_s=40.0,
        adaptive_step=0.25,
        adaptive_interval_s=2.0,
    )
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == 50.0
    clock.advance(1.0)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == 40.0  # 25 is below the floor
    clock.advance(2.0)
    assert limiter.current_rate("s") == 65.0
    clock.advance(4.0)
    assert limiter.current_rate("s") == 100.0


async def test_adapted_senders_are_bounded() -> None:
    clock = FakeClock()
    limiter = Limiter(WHATSAPP_SENDER, WHATSAPP_PAIR, clock, 2.0, max_keys=2, adaptive=True)
    for sender in ("a", "b", "c"):
        limiter.on_throttled(sender, "A", ErrorScope.SENDER, None)
    assert set(limiter.adapted_senders()) == {"b", "c"}
    assert limiter.current_rate("a") == 68.0  # forgotten: back at the configured rate
    assert limiter.senders.rate("a") == 68.0


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"adaptive": "yes"}, "adaptive", "must be true or false, got 'yes'"),
        ({"adaptive_floor_per_s": 0}, "adaptive_floor_per_s", "must be a finite number > 0, got 0"),
        (
            {"adaptive_floor_per_s": float("nan")},
            "adaptive_floor_per_s",
            "must be a finite number > 0, got nan",
        ),
        ({"adaptive_step": 0.0}, "adaptive_step", "must be a finite number > 0, got 0.0"),
        ({"adaptive_step": 1.5}, "adaptive_step", "must be <= 1 (a fraction of the rate), got 1.5"),
        ({"adaptive_step": True}, "adaptive_step", "must be a finite number > 0, got True"),
        ({"adaptive_interval_s": -10}, "adaptive_interval_s", "must be a finite number > 0, got -10"),
        (
            {"adaptive_interval_s": float("inf")},
            "adaptive_interval_s",
            "must be a finite number > 0, got inf",
        ),
    ],
)
def test_adaptive_validation(kwargs: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidField) as raised:
        Limiter(WHATSAPP_SENDER, WHATSAPP_PAIR, FakeClock(), 2.0, **kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert str(raised.value) == problem


# -- Gcra per-key rate --------------------------------------------------------------------------


def test_gcra_per_key_rate_override() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=10.0, burst=2), clock)
    gcra.set_rate("slow", 2.0)
    assert gcra.rate("slow") == 2.0
    assert gcra.rate("fast") == 10.0
    assert admitted_in_one_instant(gcra, "slow", 5) == 2  # the burst count is the config's
    assert gcra.try_acquire("slow") == pytest.approx(0.5)
    assert admitted_in_one_instant(gcra, "fast", 5) == 2
    assert gcra.try_acquire("fast") == pytest.approx(0.1)
    gcra.refund("slow")
    assert gcra.tat("slow") == pytest.approx(0.5)
    gcra.set_rate("slow", None)
    assert gcra.rate("slow") == 10.0
    gcra.set_rate("fast", 10.0)  # the config's rate: no override kept
    assert gcra._intervals == {}


def test_gcra_override_validation_and_cap() -> None:
    gcra = Gcra(RateConfig(rate_per_s=10.0, burst=1), FakeClock(), max_keys=2)
    with pytest.raises(InvalidField) as raised:
        gcra.set_rate("k", 0.0)
    assert raised.value.field == "rate_per_s"
    for key in "abc":
        gcra.set_rate(key, 1.0)
    assert [gcra.rate(key) for key in "abc"] == [10.0, 1.0, 1.0]
