"""Breaker and limiter state shared through Redis (resilience.md §1.3.4, §1.7; RB-01..RB-10, RL-07, RL-08).

These tests need a real Redis (``OMNICHANNEL_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``):
without one they fail on CI (``$CI`` set) and are skipped elsewhere. Time is virtual: the stores get a
:class:`FakeClock` and a ``now_ms`` that stands in for the server's ``TIME`` (except RB-08, which is
about the server clock). Outages are real: an unreachable port, or a TCP proxy that is cut and restored.
"""

from __future__ import annotations

import asyncio
import logging
import types
from urllib.parse import urlsplit

import pytest

from omnichannel import CircuitOpenError, ErrorScope, InvalidField, OmniChannelError, RateLimitedError
from omnichannel.testing import FakeClock
from omnichannel_resilience.breaker import BreakerConfig, Outcome, Permit, State
from omnichannel_resilience.limiter import RateConfig
from omnichannel_resilience.redis_state import RedisBreakerStore, RedisLimiterStore, RedisPermit

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"
BASE_MS = 1_767_225_600_000  # virtual server time at clock.monotonic() == 0
NAME = "whatsapp:106540352242922"


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
async def raw_redis(redis_url):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def prefix(redis_prefix):
    return redis_prefix


@pytest.fixture
def clock():
    return FakeClock()


def virtual_ms(clock):
    """Server time that follows ``clock`` (what Redis ``TIME`` would say if it ran on virtual time)."""
    return lambda: BASE_MS + round(clock.monotonic() * 1000)


@pytest.fixture
async def breakers(redis_url, prefix, clock):
    """``make(config=None, **kwargs)``: a breaker store on the test Redis; all closed afterwards.

    Each store gets ``.transitions``, the ``(name, previous, current)`` it reported.
    """
    made = []

    def make(config=None, **kwargs):
        seen = []
        kwargs.setdefault("now_ms", virtual_ms(clock))
        kwargs.setdefault("prefix", prefix)
        url = kwargs.pop("url", redis_url)
        store = RedisBreakerStore(
            url,
            config or BreakerConfig(),
            kwargs.pop("clock", clock),
            lambda name, prev, cur: seen.append((name, prev, cur)),
            **kwargs,
        )
        store.transitions = seen
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def limiters(redis_url, prefix, clock):
    """``make(sender, pair, max_wait_s=0.0, **kwargs)``: a limiter store on the test Redis."""
    made = []

    def make(sender, pair, max_wait_s=0.0, **kwargs):
        kwargs.setdefault("now_ms", virtual_ms(clock))
        kwargs.setdefault("prefix", prefix)
        url = kwargs.pop("url", redis_url)
        store = RedisLimiterStore(url, sender, pair, kwargs.pop("clock", clock), max_wait_s, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


class Proxy:
    """A TCP proxy to the test Redis that can be cut (connections refused) and restored: a real outage."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._host, self._port, self._path = parts.hostname, parts.port or 6379, parts.path
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self._host, self._port)
        self._writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
async def proxy(redis_url):
    proxy = Proxy(redis_url)
    await proxy.start()
    yield proxy
    if proxy._server is not None:
        await proxy.stop()


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
