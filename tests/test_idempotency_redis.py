"""RedisKeyStore beyond the contract: key layout, TTLs, server time, clients and outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

import omnichannel.idempotency.redis as redis_module
from omnichannel import ConfigError, OmniChannelError
from omnichannel.idempotency import KeyState, KeyStoreError, RedisKeyStore, Settlement

LEASE = 30.0


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisKeyStore]:
    store = RedisKeyStore(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_one_hash_per_key_with_a_ttl_refreshed_on_write(redis_url: str, redis_prefix: str) -> None:
    now = [1_800_000_000_000]
    store = RedisKeyStore(redis_url, prefix=redis_prefix, ttl_s=100, now_ms=lambda: now[0])
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await store.claim("campaign-1:+15550001", owner="w1", lease_s=30)
        key = f"{redis_prefix}:idem:campaign-1:+15550001"
        assert store.redis_key("campaign-1:+15550001") == key
        assert await client.hgetall(key) == {  # type: ignore[misc]
            "state": "in_flight",
            "owner": "w1",
            "attempts": "1",
            "updated_at": "1800000000000",
            "lease_until": "1800000030000",
        }
        assert 90_000 < await client.pttl(key) <= 100_000
        await client.pexpire(key, 5_000)
        await store.complete("campaign-1:+15550001", owner="w1", channel="whatsapp", provider_message_id="w")
        assert 90_000 < await client.pttl(key) <= 100_000  # refreshed
        await store.claim("other", owner="w1", lease_s=30)
        await store.release("other", owner="w1", error="x", final=False)
        assert await client.exists(f"{redis_prefix}:idem:other") == 0  # forgotten: no hash left
    finally:
        await client.aclose()
        await store.close()


async def test_a_lease_longer_than_the_ttl_keeps_its_key(redis_url: str, redis_prefix: str) -> None:
    store = RedisKeyStore(redis_url, prefix=redis_prefix, ttl_s=1)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await store.claim("k", owner="w1", lease_s=60)
        assert await client.pttl(store.redis_key("k")) > 50_000
    finally:
        await client.aclose()
        await store.close()


async def test_leases_run_on_server_time(redis_url: str, redis_prefix: str) -> None:
    store = RedisKeyStore(redis_url, prefix=redis_prefix)  # no now_ms: Redis TIME
    try:
        await store.claim("k", owner="w1", lease_s=0.05)
        await asyncio.sleep(0.1)
        refused = await store.claim("k", owner="w2", lease_s=30)
        assert refused.record is not None
        assert (refused.granted, refused.record.state) == (False, KeyState.UNCERTAIN)
    finally:
        await store.close()


@pytest.mark.parametrize("decode_responses", [True, False])
async def test_a_client_of_either_decoding(redis_url: str, redis_prefix: str, decode_responses: bool) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=decode_responses)
    store = RedisKeyStore("ignored", prefix=redis_prefix, client=client)
    try:
        claim = await store.claim("k", owner="wörker", lease_s=30)
        assert claim.granted
        await store.complete("k", owner="wörker", channel="whatsapp", provider_message_id="wamid.é")
        record = await store.get("k")
        assert record is not None
        assert (record.state, record.owner, record.provider_message_id) == (
            KeyState.SENT,
            "wörker",
            "wamid.é",
        )
        await store.close()  # leaves the caller's client open
        assert await client.ping()
    finally:
        await client.aclose()


async def test_an_unreachable_redis_raises_without_the_password() -> None:
    store = RedisKeyStore("redis://:s3cret@127.0.0.1:1/0", timeout_s=0.5)
    try:
        for call in (
            store.open(),
            store.claim("k", owner="w1", lease_s=30),
            store.complete("k", owner="w1", channel="c", provider_message_id=None),
            store.release("k", owner="w1", error="e", final=True),
            store.settle("k", channel="c", provider_message_id=None),
            store.settle_many([Settlement("k", "c", None), Settlement("j", "c", None)]),
            store.get("k"),
        ):
            with pytest.raises(KeyStoreError, match=r"Redis redis://127\.0\.0\.1:1/0") as caught:
                await call
            assert isinstance(caught.value, OmniChannelError)
            assert "s3cret" not in str(caught.value)
    finally:
        await store.close()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="not a Redis URL"):
        RedisKeyStore("http://:pw@example.com")
    with pytest.raises(ConfigError, match="ttl_s must be a number > 0"):
        RedisKeyStore("redis://localhost", ttl_s=0)


# -- batches ------------------------------------------------------------------------------------------


async def test_concurrent_callers_share_round_trips(store: RedisKeyStore, client: aioredis.Redis) -> None:
    async def send(i: int) -> None:
        assert (await store.claim(f"k{i}", owner="w", lease_s=LEASE)).granted
        await store.complete(f"k{i}", owner="w", channel="whatsapp", provider_message_id=f"wamid.{i}")

    await asyncio.gather(*(send(i) for i in range(50)))
    assert store.batches == 2  # 50 claims in one pipeline, 50 completions in another
    for i in (0, 49):
        assert await client.hget(store.redis_key(f"k{i}"), "state") == "sent"  # type: ignore[misc]


async def test_an_operation_that_fails_fails_alone(store: RedisKeyStore, client: aioredis.Redis) -> None:
    await client.set(store.redis_key("poison"), "not a hash")
    a, poison, b = await asyncio.gather(
        store.claim("a", owner="w", lease_s=LEASE),
        store.claim("poison", owner="w", lease_s=LEASE),
        store.claim("b", owner="w", lease_s=LEASE),
        return_exceptions=True,
    )
    assert store.batches == 1
    assert isinstance(poison, KeyStoreError)
    assert "claim of key 'poison' failed at Redis" in str(poison)
    assert "WRONGTYPE" in str(poison)
    for granted in (a, b):
        assert not isinstance(granted, BaseException)
        assert granted.granted


async def test_settle_many_is_one_round_trip(store: RedisKeyStore, client: aioredis.Redis) -> None:
    for i in range(20):
        await store.claim(f"k{i}", owner="w", lease_s=LEASE)
    before = store.batches
    settlements = [Settlement(f"k{i}", "whatsapp", f"wamid.{i}") for i in range(40)]  # 20 never seen
    assert await store.settle_many(settlements) == 20
    assert store.batches - before == 1
    assert await client.exists(store.redis_key("k20")) == 0  # no key created
    assert 47 * 3600_000 < await client.pttl(store.redis_key("k0")) <= 48 * 3600_000


async def test_a_settle_many_with_a_broken_key_raises_after_settling_the_others(
    store: RedisKeyStore, client: aioredis.Redis
) -> None:
    for key in ("a", "b"):
        await store.claim(key, owner="w", lease_s=LEASE)
    await client.set(store.redis_key("poison"), "not a hash")
    with pytest.raises(KeyStoreError, match=r"settle of 3 keys failed at Redis .*WRONGTYPE"):
        await store.settle_many([Settlement(key, "whatsapp", None) for key in ("a", "poison", "b")])
    # Each key is one script: the others were settled, and settling them again changes nothing.
    for key in ("a", "b"):
        record = await store.get(key)
        assert record is not None
        assert record.state is KeyState.SENT
    assert (
        await store.settle_many([Settlement("a", "whatsapp", None), Settlement("b", "whatsapp", None)]) == 0
    )


async def test_scripts_flushed_from_the_server_are_loaded_again(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scripts the server has never seen, as after a restart (without flushing the shared server's).
    monkeypatch.setattr(redis_module, "_PRELUDE", f"-- {uuid.uuid4().hex}\n" + redis_module._PRELUDE)
    store = RedisKeyStore(redis_url, prefix=redis_prefix)
    store._loaded = True  # as if loaded before the restart
    try:
        claims = await asyncio.gather(*(store.claim(f"k{i}", owner="w", lease_s=LEASE) for i in range(5)))
        assert all(claim.granted for claim in claims)
        assert await store.settle("k0", channel="whatsapp", provider_message_id=None)
    finally:
        await store.close()


async def test_a_new_key_claimed_for_a_cancelled_caller_is_given_back(
    store: RedisKeyStore, client: aioredis.Redis
) -> None:
    task = asyncio.create_task(store.claim("k", owner="w", lease_s=LEASE))
    for _ in range(2):  # queued, then the pipeline is on its way
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(2):  # the give-back goes in the pipeline after the claim's
        await store.release("other", owner="w", error="", final=False)
    assert await client.exists(store.redis_key("k")) == 0
    assert (await store.claim("k", owner="w2", lease_s=LEASE)).granted


async def test_close_sends_what_is_queued_first(redis_url: str, redis_prefix: str) -> None:
    store = RedisKeyStore(redis_url, prefix=redis_prefix)
    tasks = [asyncio.create_task(store.claim(f"k{i}", owner="w", lease_s=LEASE)) for i in range(10)]
    await asyncio.sleep(0)
    await store.close()
    assert all(task.done() and task.result().granted for task in tasks)
    with pytest.raises(KeyStoreError, match="is closed"):
        await store.claim("k", owner="w", lease_s=LEASE)
    with pytest.raises(KeyStoreError, match="is closed"):
        await store.get("k0")
