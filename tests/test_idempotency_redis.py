"""RedisKeyStore beyond the contract: key layout, TTLs, server time, clients and outages."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from omnichannel import ConfigError, OmniChannelError
from omnichannel.idempotency import KeyState, KeyStoreError, RedisKeyStore


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
