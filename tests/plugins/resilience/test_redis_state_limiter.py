"""Limiter state shared through Redis (resilience.md §1.7; RL-07, RL-08).

One sender limit for the whole fleet, waits and refusals, throttling answers shared between workers, and
the fallback to this worker's share while Redis is down. These tests need a real Redis (see
``redis_state_support``); time is virtual.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis_state_support import BASE_MS
from redis_state_support import clock as clock  # fixture
from redis_state_support import limiters as limiters  # fixture
from redis_state_support import prefix as prefix  # fixture
from redis_state_support import proxy as proxy  # fixture
from redis_state_support import raw_redis as raw_redis  # fixture

from omnichannel import ErrorScope, InvalidField, RateLimitedError
from omnichannel.testing import FakeClock
from omnichannel_resilience.limiter import RateConfig

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"


# ---------------------------------------------------------------- limiter


SENDER = "106540352242922"


async def test_rl07_three_workers_share_one_sender_limit(limiters, clock, raw_redis):
    sender = RateConfig(rate_per_s=10, burst=5)
    pair = RateConfig(rate_per_s=1000, burst=1000)
    workers = [limiters(sender, pair) for _ in range(3)]
    admitted = 0
    refusals = []
    for step in range(41):  # 0 .. 2.0 s of virtual time, every 50 ms
        if step:
            clock.advance(0.05)
        for worker in workers:
            for attempt in range(4):
                try:
                    await worker.acquire(SENDER, f"+336{step:04d}{attempt}")
                except RateLimitedError as exc:
                    refusals.append(exc)
                else:
                    admitted += 1
    assert admitted == 5 + 10 * 2  # burst + rate x T, exactly
    assert {(r.scope, r.certainty.value) for r in refusals} == {(ErrorScope.SENDER, "not_sent")}
    key = workers[0].sender_key(SENDER)
    assert 0 < await raw_redis.pttl(key) <= 600  # expires when its TAT passes
    before = await raw_redis.get(key)
    with pytest.raises(RateLimitedError) as info:
        await workers[1].acquire(SENDER, "+33611111111")
    assert info.value.retry_after == pytest.approx(0.1)
    assert await raw_redis.get(key) == before  # a refusal consumes nothing


async def test_waits_within_max_wait_are_slept_in_arrival_order(limiters, clock):
    store = limiters(RateConfig(10, 1), RateConfig(1000, 1000), max_wait_s=0.5, now_ms=lambda: BASE_MS)
    for i in range(6):
        await store.acquire(SENDER, f"+3360000000{i}")
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(RateLimitedError) as info:
        await store.acquire(SENDER, "+33611111111")
    assert info.value.retry_after == pytest.approx(0.6)


async def test_a_pair_refusal_defers_only_that_recipient_and_keeps_the_sender_slot(limiters, raw_redis):
    store = limiters(RateConfig(10, 5), RateConfig.every(6.0, 1), max_wait_s=1.0)
    await store.acquire(SENDER, "+33600000001")
    sender_tat = await raw_redis.get(store.sender_key(SENDER))
    with pytest.raises(RateLimitedError) as info:
        await store.acquire(SENDER, "+33600000001")
    assert (info.value.scope, info.value.retry_after) == (ErrorScope.RECIPIENT, pytest.approx(6.0))
    assert await raw_redis.get(store.sender_key(SENDER)) == sender_tat
    await store.acquire(SENDER, "+33600000002")  # no head-of-line blocking


async def test_a_cancelled_waiter_gives_its_reservation_back(limiters, raw_redis):
    class BlockingClock(FakeClock):
        async def sleep(self, seconds):
            self.sleeps.append(seconds)
            await asyncio.Event().wait()

    blocking = BlockingClock()
    store = limiters(RateConfig(10, 1), RateConfig(1000, 1000), max_wait_s=1.0, clock=blocking)
    await store.acquire(SENDER, "+33600000001")
    tat = await raw_redis.get(store.sender_key(SENDER))
    waiter = asyncio.create_task(store.acquire(SENDER, "+33600000002"))
    while not blocking.sleeps:
        await asyncio.sleep(0)
    assert await raw_redis.get(store.sender_key(SENDER)) != tat
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await raw_redis.get(store.sender_key(SENDER)) == tat
    assert await raw_redis.exists(store.pair_key(SENDER, "+33600000002")) == 0


async def test_throttling_answers_slow_the_right_key_for_every_worker(limiters, clock, raw_redis):
    sender, pair = RateConfig(10, 5), RateConfig(1000, 1000)
    first, second = limiters(sender, pair), limiters(sender, pair)
    assert await first.on_throttled(SENDER, "+1", ErrorScope.SENDER, None) == 1.0
    with pytest.raises(RateLimitedError) as info:
        await second.acquire(SENDER, "+2")
    assert (info.value.scope, info.value.retry_after) == (ErrorScope.SENDER, pytest.approx(1.0))
    assert await first.on_throttled(SENDER, "+1", ErrorScope.ACCOUNT, None) == 60.0
    assert await first.on_throttled(SENDER, "+1", ErrorScope.APP, 90) == 90.0
    assert await first.on_throttled(SENDER, "+1", None, None) == 0.0

    other = "999"
    pauses = [await first.on_throttled(other, "+1", ErrorScope.RECIPIENT, None) for _ in range(2)]
    pauses.append(await second.on_throttled(other, "+1", ErrorScope.RECIPIENT, 2.0))
    assert pauses == [1.0, 4.0, 16.0]  # 4^k with the count shared in Redis
    assert await raw_redis.pttl(first.hits_key(other, "+1")) > 0
    with pytest.raises(RateLimitedError) as info:
        await first.acquire(other, "+1")
    assert (info.value.scope, info.value.retry_after) == (ErrorScope.RECIPIENT, pytest.approx(16.0))
    await first.acquire(other, "+2")  # other recipients are unaffected
    clock.advance(16)
    await second.acquire(other, "+1")  # saw the counter in Redis...
    await second.on_success(other, "+1")  # ...so its success resets it
    assert await raw_redis.exists(first.hits_key(other, "+1")) == 0
    assert await first.on_throttled(other, "+1", ErrorScope.RECIPIENT, None) == 1.0


async def test_rl08_unreachable_redis_falls_back_to_this_workers_share(limiters, clock, caplog):
    store = limiters(
        RateConfig(rate_per_s=30, burst=6),
        RateConfig(1000, 1000),
        url=UNREACHABLE_REDIS_URL,
        expected_workers=3,
    )
    with caplog.at_level(logging.WARNING, logger="omnichannel_resilience"):
        await store.acquire(SENDER, "+1")
        await store.acquire(SENDER, "+2")  # local burst 6 / 3
        with pytest.raises(RateLimitedError) as info:
            await store.acquire(SENDER, "+3")
    assert info.value.retry_after == pytest.approx(0.1)  # local rate 30 / 3 per second
    assert store.degraded
    assert store.backend_errors == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert await store.on_throttled(SENDER, "+4", ErrorScope.RECIPIENT, None) == 1.0
    await store.on_success(SENDER, "+4")
    assert store.local.pair_hits(SENDER, "+4") == 0


async def test_rl08_back_from_an_outage_the_shared_limit_applies_again(limiters, clock, proxy):
    sender, pair = RateConfig(10, 2), RateConfig(1000, 1000)
    frozen = lambda: BASE_MS  # noqa: E731 - server time stands still: only the outage ends
    cut_off = limiters(sender, pair, url=proxy.url, storage_retry_s=5, now_ms=frozen)
    other = limiters(sender, pair, now_ms=frozen)
    await proxy.stop()
    await cut_off.acquire(SENDER, "+1")
    assert cut_off.degraded
    await other.acquire(SENDER, "+2")
    await other.acquire(SENDER, "+3")  # the shared burst is spent
    await proxy.start()
    clock.advance(5)
    with pytest.raises(RateLimitedError):
        await cut_off.acquire(SENDER, "+4")
    assert not cut_off.degraded


@pytest.mark.parametrize("decode", [True, False])
async def test_the_limiter_works_with_either_decode_responses(limiters, redis_url, decode):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=decode)
    try:
        store = limiters(RateConfig(10, 1), RateConfig(1000, 1000), max_wait_s=1.0, client=client)
        await store.acquire(SENDER, "+1")
        await store.acquire(SENDER, "+2")
        assert await store.on_throttled(SENDER, "+1", ErrorScope.RECIPIENT, None) == 1.0
        await store.close()
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"expected_workers": 0}, "expected_workers"),
        ({"max_wait_s": -1}, "max_wait_s"),
        ({"max_wait_pair_s": float("inf")}, "max_wait_pair_s"),
        ({"url": None}, "url"),
    ],
)
async def test_limiter_arguments_are_validated(limiters, kwargs, field):
    with pytest.raises(InvalidField) as info:
        limiters(RateConfig(10, 1), RateConfig(10, 1), **kwargs)
    assert info.value.field == field
