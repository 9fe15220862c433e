"""WhatsApp templates: the template caches, ``MemoryTemplateCache`` and ``RedisTemplateCache``."""

from __future__ import annotations

import json
import logging
import sys
import uuid

import pytest
from templates_support import KNOWN, ORDER_UPDATE, PLAIN, RAW, SHIPPING_NAMED, WABA, FakeGraph

from omnichannel import ConfigError, PluginError
from omnichannel.testing import FakeClock
from omnichannel_whatsapp.templates import (
    MemoryTemplateCache,
    RedisTemplateCache,
    TemplateRegistry,
    parse_template,
)

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"


# ---------------------------------------------------------------- MemoryTemplateCache


async def test_memory_cache_expires_after_ttl(fake_clock):
    cache = MemoryTemplateCache(60, fake_clock)
    await cache.put("k", [PLAIN])

    fake_clock.advance(59.9)
    assert list(await cache.get("k")) == [PLAIN]
    fake_clock.advance(0.1)
    assert await cache.get("k") is None


async def test_memory_cache_keys_are_separate_and_clear_forgets(fake_clock):
    cache = MemoryTemplateCache(60, fake_clock)
    await cache.put("a", [PLAIN])
    await cache.put("b", [ORDER_UPDATE])
    await cache.clear("a")
    assert await cache.get("a") is None
    assert list(await cache.get("b")) == [ORDER_UPDATE]
    await cache.close()
    assert await cache.get("b") is None


async def test_memory_cache_keeps_its_own_read_only_copy(fake_clock):
    cache = MemoryTemplateCache(60, fake_clock)
    stored = [PLAIN]
    await cache.put("k", stored)
    stored.append(ORDER_UPDATE)
    got = await cache.get("k")
    assert got == (PLAIN,)
    # The same object until the next put: readers may keep what they derived from it.
    assert await cache.get("k") is got


async def test_memory_cache_with_ttl_zero_stores_nothing(fake_clock):
    cache = MemoryTemplateCache(0, fake_clock)
    await cache.put("k", [PLAIN])
    assert await cache.get("k") is None


def test_memory_cache_rejects_a_negative_ttl(fake_clock):
    with pytest.raises(ValueError, match=r"^ttl_s must be >= 0, got -1$"):
        MemoryTemplateCache(-1, fake_clock)


# ---------------------------------------------------------------- RedisTemplateCache


@pytest.fixture
def cache_prefix(redis_prefix):
    """A template cache prefix of this test alone (the cache appends the WABA id)."""
    return redis_prefix + ":"


@pytest.fixture
async def raw_redis(redis_url):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_redis_cache_round_trip_with_a_server_side_ttl(redis_url, cache_prefix, raw_redis):
    cache = RedisTemplateCache(redis_url, 30, prefix=cache_prefix)
    try:
        assert await cache.get(WABA) is None
        await cache.put(WABA, RAW)
        assert list(await cache.get(WABA)) == RAW
        assert 0 < await raw_redis.pttl(cache_prefix + WABA) <= 30_000
        assert json.loads(await raw_redis.get(cache_prefix + WABA)) == RAW
    finally:
        await cache.close()


async def test_redis_cache_default_prefix(redis_url, raw_redis):
    key = f"test-{uuid.uuid4().hex}"
    cache = RedisTemplateCache(redis_url, 5)
    try:
        await cache.put(key, [PLAIN])
        assert await raw_redis.exists(f"omnichannel:whatsapp:templates:{key}") == 1
    finally:
        await cache.clear(key)
        await cache.close()


async def test_two_processes_share_one_fetched_list(redis_url, cache_prefix):
    first_graph, second_graph = FakeGraph(RAW), FakeGraph(RAW)
    first_cache = RedisTemplateCache(redis_url, 60, prefix=cache_prefix)
    second_cache = RedisTemplateCache(redis_url, 60, prefix=cache_prefix)
    try:
        first = TemplateRegistry(first_graph, WABA, first_cache)
        second = TemplateRegistry(second_graph, WABA, second_cache)

        assert await first.templates() == KNOWN
        assert await second.templates() == KNOWN
        assert await second.find("shipping_named", "en_US") == parse_template(SHIPPING_NAMED)
        assert first_graph.calls
        assert second_graph.calls == []

        # One process learns the templates changed (a webhook) and clears: both fetch again.
        await first_cache.clear(WABA)
        assert await second_cache.get(WABA) is None
        await second.templates()
        assert len(second_graph.calls) == len(first_graph.calls)
    finally:
        await first_cache.close()
        await second_cache.close()


async def test_redis_cache_treats_a_malformed_value_as_a_miss(redis_url, cache_prefix, raw_redis, caplog):
    await raw_redis.set(cache_prefix + WABA, b"{not json", px=10_000)
    cache = RedisTemplateCache(redis_url, 30, prefix=cache_prefix)
    try:
        assert await cache.get(WABA) is None
    finally:
        await cache.close()
    assert "whatsapp: ignoring a malformed template list in redis://" in caplog.text
    assert f" at '{cache_prefix}{WABA}'" in caplog.text


async def test_redis_cache_with_ttl_zero_stores_nothing(redis_url, cache_prefix, raw_redis):
    cache = RedisTemplateCache(redis_url, 0, prefix=cache_prefix)
    try:
        await cache.put(WABA, RAW)
        assert await cache.get(WABA) is None
        assert await raw_redis.exists(cache_prefix + WABA) == 0
    finally:
        await cache.close()


async def test_unreachable_redis_reads_as_a_miss_and_warns_once(caplog):
    clock = FakeClock()
    cache = RedisTemplateCache(UNREACHABLE_REDIS_URL, 60, clock=clock, retry_after_s=5)
    graph = FakeGraph(RAW)
    registry = TemplateRegistry(graph, WABA, cache)
    try:
        with caplog.at_level(logging.WARNING, logger="omnichannel.whatsapp"):
            assert await cache.get(WABA) is None
            # Sending goes on: the registry fetches from the Graph API instead.
            assert await registry.templates() == KNOWN
            # This process's own copy spares the next sends a fetch each.
            assert await registry.templates() == KNOWN
            clock.advance(5)
            await cache.clear(WABA)
            assert await cache.get(WABA) is None
    finally:
        await cache.close()
    warnings = [r for r in caplog.records if r.name == "omnichannel.whatsapp"]
    assert len(warnings) == 1
    assert (
        warnings[0]
        .getMessage()
        .startswith("whatsapp: template cache at redis://127.0.0.1:1/0 is unreachable (ConnectionError: ")
    )
    assert len(graph.calls) == len(graph.pages)


async def test_unreachable_redis_log_line_hides_the_password(caplog):
    cache = RedisTemplateCache("redis://user:hunter2@127.0.0.1:1/3", 60)
    try:
        with caplog.at_level(logging.WARNING, logger="omnichannel.whatsapp"):
            assert await cache.get(WABA) is None
    finally:
        await cache.close()
    assert "redis://127.0.0.1:1/3 is unreachable" in caplog.text
    assert "hunter2" not in caplog.text


def test_redis_cache_rejects_a_url_that_is_not_redis():
    with pytest.raises(ConfigError) as info:
        RedisTemplateCache("http://127.0.0.1:6379", 60)
    assert info.value.errors == [
        "plugins.whatsapp.redis_url: Redis URL must specify one of the following schemes "
        "(redis://, rediss://, unix://)"
    ]


def test_redis_cache_without_the_redis_package(monkeypatch):
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(PluginError) as info:
        RedisTemplateCache("redis://127.0.0.1:6379/0", 60)
    assert str(info.value) == (
        "plugin 'whatsapp': redis_url is set but the 'redis' package is not installed; "
        "install it with: pip install 'omnichannel[redis]'"
    )


async def test_the_registry_parses_a_cached_list_once(fake_clock, monkeypatch):
    import omnichannel_whatsapp.templates as templates_module

    calls = []
    real_parse = templates_module.parse_template

    def counting_parse(data):
        calls.append(data["name"])
        return real_parse(data)

    monkeypatch.setattr(templates_module, "parse_template", counting_parse)
    cache = MemoryTemplateCache(60, fake_clock)
    await cache.put(WABA, RAW)
    registry = TemplateRegistry(_never_fetch, WABA, cache)
    first = await registry.templates()
    parsed_once = len(calls)
    for _ in range(5):
        assert await registry.templates() is first
    assert len(calls) == parsed_once == len(RAW)
    await cache.put(WABA, RAW[:1])  # a new list: parsed again
    assert len(await registry.templates()) == 1
    assert len(calls) == parsed_once + 1


async def _never_fetch(path, params):
    raise AssertionError("the cache holds the templates; nothing is fetched")
