"""The rate limiter's admissions (shared/resilience.md §1.7; RL-02..RL-05), virtual time only.

:class:`Limiter` against the sender and pair limits: short waits slept, longer ones refused with
``retry_after``, reservations given back on cancel, and the pauses that throttling answers set.
"""

from __future__ import annotations

import asyncio

import pytest
from limiter_support import SENDER_T, make_limiter

from omnichannel import Certainty, ErrorScope, RateLimitedError
from omnichannel.testing import FakeClock
from omnichannel_resilience.limiter import WHATSAPP_PAIR, WHATSAPP_SENDER, Limiter, RateConfig, pair_key

# -- Limiter ------------------------------------------------------------------------------------


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
