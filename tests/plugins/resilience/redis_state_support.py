"""Fixtures and helpers of the Redis shared-state tests (``test_redis_state_*.py``).

These tests need a real Redis (``OMNICHANNEL_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``):
without one they fail on CI (``$CI`` set) and are skipped elsewhere. Time is virtual: the stores get a
:class:`FakeClock` and a ``now_ms`` that stands in for the server's ``TIME``. Outages are real: an
unreachable port, or a TCP :class:`Proxy` that is cut and restored.

A test module imports the fixtures it uses, and the fixtures those use, with a redundant alias
(``from redis_state_support import breakers as breakers``): pytest finds fixtures in the module's
namespace, and the alias tells ruff that the import is wanted.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from omnichannel.testing import FakeClock
from omnichannel_resilience.breaker import BreakerConfig
from omnichannel_resilience.redis_state import RedisBreakerStore, RedisLimiterStore

BASE_MS = 1_767_225_600_000  # virtual server time at clock.monotonic() == 0


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
