"""Breaker state shared through Redis (resilience.md §1.3.4; RB-01..RB-10).

The store's basics, the RB scenarios across workers and outages, admin actions and snapshots. These
tests need a real Redis (see ``redis_state_support``); time is virtual except in RB-08, which is about
the server clock.
"""

from __future__ import annotations

import asyncio
import logging
import types

import pytest
from redis_state_support import BASE_MS
from redis_state_support import breakers as breakers  # fixture
from redis_state_support import clock as clock  # fixture
from redis_state_support import limiters as limiters  # fixture
from redis_state_support import prefix as prefix  # fixture
from redis_state_support import proxy as proxy  # fixture
from redis_state_support import raw_redis as raw_redis  # fixture

from omnichannel import CircuitOpenError, InvalidField, OmniChannelError
from omnichannel.testing import FakeClock
from omnichannel_resilience.breaker import BreakerConfig, Outcome, Permit, State
from omnichannel_resilience.limiter import RateConfig
from omnichannel_resilience.redis_state import RedisPermit

NAME = "whatsapp:106540352242922"


async def fail(store, name=NAME, times=1):
    for _ in range(times):
        await store.record(name, await store.acquire(name), Outcome.FAILURE)


async def succeed(store, name=NAME):
    await store.record(name, await store.acquire(name), Outcome.SUCCESS)


# ---------------------------------------------------------------- breaker: basics


async def test_a_new_breaker_is_closed_and_a_success_writes_nothing(breakers, raw_redis):
    store = breakers()
    snap = await store.snapshot(NAME)
    assert (snap.state, snap.failures, snap.generation, snap.open_count, snap.open_remaining_s) == (
        State.CLOSED,
        0,
        0,
        0,
        None,
    )
    token = await store.acquire(NAME)
    assert isinstance(token, RedisPermit)
    assert (token.generation, token.lease, token.probe) == (0, None, False)
    await store.record(NAME, token, Outcome.SUCCESS)
    assert await raw_redis.exists(store.key(NAME)) == 0
    assert not store.degraded
    assert store.storage_errors == 0


async def test_failures_are_written_with_a_ttl_and_a_success_resets_them(breakers, raw_redis):
    store = breakers(state_ttl_s=120)
    await fail(store, times=3)
    stored = await raw_redis.hgetall(store.key(NAME))
    assert stored == {
        "state": "closed",
        "gen": "0",
        "open_until_ms": "0",
        "open_count": "0",
        "consecutive_failures": "3",
        "probe_successes": "0",
        "updated_ms": str(BASE_MS),
    }
    assert 119_000 < await raw_redis.pttl(store.key(NAME)) <= 120_000
    await succeed(store)
    assert (await store.snapshot(NAME)).failures == 0
    # Ignored and throttled outcomes of a closed breaker never reach Redis.
    await store.record(NAME, await store.acquire(NAME), Outcome.IGNORED)
    await store.record(NAME, await store.acquire(NAME), Outcome.THROTTLED)
    assert (await store.snapshot(NAME)).failures == 0


async def test_settling_a_permit_twice_counts_once(breakers):
    store = breakers()
    token = await store.acquire(NAME)
    await store.record(NAME, token, Outcome.FAILURE)
    await store.record(NAME, token, Outcome.FAILURE)
    assert (await store.snapshot(NAME)).failures == 1
    assert token.settled


async def test_rate_mode_is_refused(breakers):
    with pytest.raises(InvalidField, match="consecutive mode only") as info:
        breakers(types.SimpleNamespace(mode="rate"))
    assert info.value.field == "mode"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"poll_interval_s": -1}, "poll_interval_s"),
        ({"probe_lease_ttl_s": 0}, "probe_lease_ttl_s"),
        ({"storage_retry_s": -0.5}, "storage_retry_s"),
        ({"state_ttl_s": 0}, "state_ttl_s"),
        ({"url": None}, "url"),
    ],
)
async def test_bad_arguments_name_the_field(breakers, kwargs, field):
    with pytest.raises(InvalidField) as info:
        breakers(**kwargs)
    assert info.value.field == field


async def test_closed_admission_within_the_poll_interval_costs_no_round_trip(breakers, clock, proxy):
    store = breakers(url=proxy.url)
    await succeed(store)  # reads the state: CLOSED
    await proxy.stop()
    clock.advance(0.999)
    token = await store.acquire(NAME)
    assert isinstance(token, RedisPermit)  # from the local copy: Redis was not asked
    await store.record(NAME, token, Outcome.SUCCESS)  # nothing to reset: not written either
    assert not store.degraded
    clock.advance(0.001)
    assert isinstance(await store.acquire(NAME), Permit)  # stale copy: Redis asked, down, local breaker
    assert store.degraded


# ---------------------------------------------------------------- breaker: RB scenarios


async def test_rb01_failures_of_two_workers_add_up_and_the_trip_reaches_the_other(breakers, clock):
    first, second = breakers(), breakers()
    await fail(first, times=3)
    await fail(second, times=2)  # the fifth failure of the fleet trips it
    assert second.transitions == [(NAME, State.CLOSED, State.OPEN)]
    assert first.transitions == []
    with pytest.raises(CircuitOpenError):
        await second.acquire(NAME)
    # The first worker's copy says CLOSED for at most one poll interval...
    clock.advance(0.5)
    assert isinstance(await first.acquire(NAME), RedisPermit)
    # ...then it asks Redis and sees the shared OPEN.
    clock.advance(0.5)
    with pytest.raises(CircuitOpenError) as info:
        await first.acquire(NAME)
    assert info.value.retry_after == pytest.approx(59.0)
    # Refused from its copy, without a round trip, until the copy is stale again.
    clock.advance(0.25)
    with pytest.raises(CircuitOpenError) as info:
        await first.acquire(NAME)
    assert info.value.retry_after == pytest.approx(58.75)
    assert (await first.snapshot(NAME)).not_permitted == 2


async def test_rb02_a_new_worker_while_open_changes_nothing(breakers, clock, raw_redis):
    first = breakers()
    await fail(first, times=5)
    key = first.key(NAME)
    stored, ttl = await raw_redis.hgetall(key), await raw_redis.pttl(key)
    clock.advance(10)
    late = breakers()
    snap = await late.snapshot(NAME)
    assert (snap.state, snap.open_remaining_s, snap.open_count, snap.generation) == (State.OPEN, 50.0, 1, 1)
    with pytest.raises(CircuitOpenError) as info:
        await late.acquire(NAME)
    assert info.value.retry_after == pytest.approx(50.0)
    assert await raw_redis.hgetall(key) == stored
    assert await raw_redis.pttl(key) <= ttl  # not extended


@pytest.mark.parametrize("permits", [1, 2])
async def test_rb03_the_probe_limit_holds_across_the_fleet(breakers, clock, permits):
    config = BreakerConfig(half_open_permits=permits, success_threshold=max(permits, 2))
    workers = [breakers(config) for _ in range(3)]
    await fail(workers[0], times=5)
    clock.advance(60)
    results = await asyncio.gather(
        *(worker.acquire(NAME) for worker in workers for _ in range(20)), return_exceptions=True
    )
    probes = [r for r in results if isinstance(r, RedisPermit)]
    refusals = [r for r in results if isinstance(r, CircuitOpenError)]
    assert len(probes) == permits
    assert all(probe.probe for probe in probes)
    assert len(refusals) == 60 - permits
    assert {r.retry_after for r in refusals} == {config.half_open_retry_hint_s}
    assert (await workers[1].snapshot(NAME)).in_flight == permits


async def test_rb04_a_dead_probers_lease_expires(breakers, clock):
    config = BreakerConfig(half_open_max_s=20)
    dead, alive = breakers(config, probe_lease_ttl_s=5), breakers(config, probe_lease_ttl_s=5)
    await fail(dead, times=5)
    clock.advance(60)
    lost = await dead.acquire(NAME)
    assert lost.probe
    clock.advance(4.999)
    with pytest.raises(CircuitOpenError):
        await alive.acquire(NAME)
    clock.advance(0.001)
    probe = await alive.acquire(NAME)
    assert probe.probe
    # The expired lease's late outcome changes nothing; the live probe's counts.
    await dead.record(NAME, lost, Outcome.SUCCESS)
    assert (await alive.snapshot(NAME)).probe_successes == 0
    await alive.record(NAME, probe, Outcome.SUCCESS)
    await succeed(alive)
    assert (await alive.snapshot(NAME)).state is State.CLOSED
    assert alive.transitions == [(NAME, State.HALF_OPEN, State.CLOSED)]


async def test_an_unsettled_probe_reopens_after_half_open_max_by_default(breakers, clock):
    store = breakers(BreakerConfig(half_open_max_s=20, open_backoff_multiplier=2, max_open_s=600))
    assert store.probe_lease_ttl_s == 22
    await fail(store, times=5)
    clock.advance(60)
    await store.acquire(NAME)
    clock.advance(19.999)
    assert (await store.snapshot(NAME)).state is State.HALF_OPEN
    clock.advance(0.001)
    snap = await store.snapshot(NAME)
    assert (snap.state, snap.open_count, snap.open_remaining_s, snap.in_flight) == (State.OPEN, 2, 120.0, 0)


async def test_an_ignored_probe_gives_its_slot_back(breakers, clock):
    store = breakers()
    await fail(store, times=5)
    clock.advance(60)
    probe = await store.acquire(NAME)
    with pytest.raises(CircuitOpenError):
        await store.acquire(NAME)
    await store.record(NAME, probe, Outcome.IGNORED)
    assert (await store.acquire(NAME)).probe
    assert (await store.snapshot(NAME)).state is State.HALF_OPEN


async def test_rb05_generation_fencing(breakers, clock):
    config = BreakerConfig(half_open_permits=2)
    first, second = breakers(config), breakers(config)
    early = await first.acquire(NAME)  # admitted while CLOSED, generation 0
    await fail(second, times=5)
    await first.record(NAME, early, Outcome.FAILURE)  # stale: no second open
    snap = await second.snapshot(NAME)
    assert (snap.open_count, snap.generation, snap.open_remaining_s) == (1, 1, 60.0)
    clock.advance(60)
    slow, fast = await first.acquire(NAME), await second.acquire(NAME)
    assert slow.generation == fast.generation == 2
    await second.record(NAME, fast, Outcome.FAILURE)  # re-opens: generation 3
    clock.advance(1)
    await first.record(NAME, slow, Outcome.SUCCESS)  # stale: cannot count towards closing
    snap = await first.snapshot(NAME)
    assert (snap.state, snap.generation, snap.probe_successes, snap.open_remaining_s) == (
        State.OPEN,
        3,
        0,
        59.0,
    )
    assert first.transitions == [(NAME, State.OPEN, State.HALF_OPEN)]
    assert second.transitions == [(NAME, State.CLOSED, State.OPEN), (NAME, State.HALF_OPEN, State.OPEN)]


async def test_rb06_unreachable_redis_degrades_to_local_state(breakers, clock, caplog):
    store = breakers(url="redis://user:s3cret@127.0.0.1:1/0", storage_retry_s=5)
    with caplog.at_level(logging.WARNING, logger="omnichannel_resilience"):
        token = await store.acquire(NAME)
        assert isinstance(token, Permit)
        await store.record(NAME, token, Outcome.FAILURE)
        await fail(store, times=4)
    assert store.degraded
    assert store.storage_errors == 1  # Redis is not retried before storage_retry_s
    with pytest.raises(CircuitOpenError):
        await store.acquire(NAME)
    assert (await store.snapshot(NAME)).state is State.OPEN
    assert [s.name for s in await store.snapshots()] == [NAME]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "127.0.0.1:1" in warnings[0].getMessage()
    assert "s3cret" not in caplog.text
    assert store.transitions == [(NAME, State.CLOSED, State.OPEN)]
    clock.advance(5)
    with pytest.raises(CircuitOpenError):
        await store.acquire(NAME)  # tried Redis again, still down, local state still OPEN
    assert store.storage_errors == 2
    with pytest.raises(OmniChannelError, match="unreachable"):
        await store.admin(NAME, "reset")


async def test_rb06_back_from_an_outage_a_worker_adopts_the_shared_open(breakers, clock, proxy):
    cut_off = breakers(url=proxy.url, storage_retry_s=5)
    other = breakers()
    await succeed(cut_off)  # connected and cached: CLOSED
    await proxy.stop()
    clock.advance(1)
    token = await cut_off.acquire(NAME)  # Redis down: admitted by the local breaker
    assert isinstance(token, Permit)
    assert cut_off.degraded
    assert cut_off.storage_errors >= 1
    await cut_off.record(NAME, token, Outcome.SUCCESS)
    await fail(other, times=5)  # meanwhile the fleet trips the shared breaker
    await proxy.start()
    clock.advance(4)
    assert isinstance(await cut_off.acquire(NAME), Permit)  # not retried before storage_retry_s
    clock.advance(1)
    with pytest.raises(CircuitOpenError) as info:
        await cut_off.acquire(NAME)
    assert info.value.retry_after == pytest.approx(55.0)
    assert not cut_off.degraded
    assert (await cut_off.snapshot(NAME)).state is State.OPEN


async def test_rb06_a_failure_redis_cannot_take_counts_locally(breakers, clock, proxy):
    store = breakers(url=proxy.url)
    token = await store.acquire(NAME)
    await proxy.stop()
    await store.record(NAME, token, Outcome.FAILURE)
    assert store.degraded
    assert (await store.snapshot(NAME)).failures == 1


async def test_rb07_a_deleted_key_is_closed_and_recreated(breakers, clock, raw_redis):
    store = breakers()
    await fail(store, times=5)
    await raw_redis.delete(store.key(NAME))
    clock.advance(1)
    token = await store.acquire(NAME)
    assert isinstance(token, RedisPermit)
    await store.record(NAME, token, Outcome.FAILURE)
    snap = await store.snapshot(NAME)
    assert (snap.state, snap.failures) == (State.CLOSED, 1)
    assert await raw_redis.pttl(store.key(NAME)) > 0
    # A permit from before the deletion is still counted: a missing key is CLOSED.
    await raw_redis.delete(store.key(NAME))
    stale_copy = await store.acquire(NAME)
    await store.record(NAME, stale_copy, Outcome.FAILURE)
    assert (await store.snapshot(NAME)).failures == 1


async def test_rb08_workers_with_skewed_clocks_agree_because_only_server_time_counts(breakers):
    early, late = FakeClock(), FakeClock()
    late.advance(30)
    first = breakers(clock=early, now_ms=None)
    second = breakers(clock=late, now_ms=None)
    await fail(first, times=5)
    mine, theirs = await first.snapshot(NAME), await second.snapshot(NAME)
    assert 59 < theirs.open_remaining_s <= 60
    assert abs(mine.open_remaining_s - theirs.open_remaining_s) < 1
    with pytest.raises(CircuitOpenError) as info:
        await second.acquire(NAME)
    assert 59 < info.value.retry_after <= 60


async def test_rb09_open_until_has_millisecond_precision(breakers, clock, raw_redis):
    store = breakers(BreakerConfig(open_s=1.5, max_open_s=1.5), poll_interval_s=0)
    await fail(store, times=5)
    assert await raw_redis.hget(store.key(NAME), "open_until_ms") == str(BASE_MS + 1500)
    assert (await store.snapshot(NAME)).open_remaining_s == 1.5
    clock.advance(1.499)
    with pytest.raises(CircuitOpenError) as info:
        await store.acquire(NAME)
    assert info.value.retry_after == pytest.approx(0.001)
    clock.advance(0.001)
    assert (await store.acquire(NAME)).probe


@pytest.mark.parametrize("decode", [True, False])
async def test_rb10_works_with_either_decode_responses(breakers, clock, redis_url, decode):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=decode)
    try:
        store = breakers(client=client)
        await fail(store, times=5)
        clock.advance(60)
        assert [(s.name, s.state) for s in await store.snapshots()] == [(NAME, State.HALF_OPEN)]
        await succeed(store)
        await succeed(store)
        assert (await store.snapshot(NAME)).state is State.CLOSED
        assert store.transitions == [
            (NAME, State.CLOSED, State.OPEN),
            (NAME, State.OPEN, State.HALF_OPEN),
            (NAME, State.HALF_OPEN, State.CLOSED),
        ]
        await store.close()
        assert await client.ping()  # a client passed in is not closed by the store
    finally:
        await client.aclose()


# ---------------------------------------------------------------- breaker: admin and snapshots


async def test_admin_actions_apply_to_every_worker(breakers, clock):
    operator, worker = breakers(), breakers(poll_interval_s=0)
    snap = await operator.admin(NAME, "force_open")
    assert (snap.state, snap.gauge) == (State.FORCED_OPEN, 2)
    clock.advance(600)
    with pytest.raises(CircuitOpenError) as info:
        await worker.acquire(NAME)
    assert info.value.retry_after == 60.0

    assert (await operator.admin(NAME, "disable")).state is State.DISABLED
    await fail(worker, times=10)
    assert (await worker.snapshot(NAME)).failures == 0  # records nothing

    assert (await operator.admin(NAME, "metrics_only")).state is State.METRICS_ONLY
    await fail(worker, times=10)
    snap = await worker.snapshot(NAME)
    assert (snap.state, snap.failures) == (State.METRICS_ONLY, 10)  # counts, never opens

    snap = await operator.admin(NAME, "reset")
    assert (snap.state, snap.failures, snap.open_count) == (State.CLOSED, 0, 0)
    assert [(prev, cur) for _, prev, cur in operator.transitions] == [
        (State.CLOSED, State.FORCED_OPEN),
        (State.FORCED_OPEN, State.DISABLED),
        (State.DISABLED, State.METRICS_ONLY),
        (State.METRICS_ONLY, State.CLOSED),
    ]
    with pytest.raises(InvalidField, match="must be one of"):
        await operator.admin(NAME, "half_open")


async def test_snapshots_lists_the_breakers_under_the_prefix_sorted(breakers, limiters, prefix, raw_redis):
    store = breakers()
    await fail(store, "whatsapp:2")
    await fail(store, "whatsapp:1", times=5)
    limiter = limiters(RateConfig(10, 5), RateConfig(10, 5))
    await limiter.acquire("whatsapp:1", "+33600000000")
    other = breakers(prefix=prefix + "[x]")  # glob characters in a prefix are literal
    try:
        await fail(other, "whatsapp:3")
        assert [(s.name, s.state, s.failures) for s in await store.snapshots()] == [
            ("whatsapp:1", State.OPEN, 0),
            ("whatsapp:2", State.CLOSED, 1),
        ]
        assert [s.name for s in await other.snapshots()] == ["whatsapp:3"]
    finally:
        await raw_redis.delete(other.key("whatsapp:3"))
