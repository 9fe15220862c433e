import asyncio
import os
import uuid
from collections.abc import Generator, Iterator

import pytest

pytest_plugins = ["omnichannel.testing"]

REDIS_URL = os.environ.get("OMNICHANNEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The Redis of the tests that need a real one."""


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """An empty working directory and no OMNICHANNEL_ variable from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("OMNICHANNEL_"):
            monkeypatch.delenv(name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Keep looptime (virtual loop time for ``@pytest.mark.looptime`` tests) from leaking loops.

    looptime 0.9 asks the event loop policy for a loop before every test; since pytest-asyncio
    1.4 a sync test has none, so the policy would create one that nobody closes, and its
    ``ResourceWarning`` would fail whichever test runs when it is collected.
    """
    if pyfuncitem.get_closest_marker("asyncio") is None:
        asyncio.set_event_loop(None)
    return (yield)


@pytest.fixture
def redis_url() -> str:
    """The test Redis (``$OMNICHANNEL_TEST_REDIS_URL``): if missing, a failure on CI, else a skip."""
    import redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        reason = f"no Redis at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the Redis tests must run")
        pytest.skip(f"{reason}; start one (or set OMNICHANNEL_TEST_REDIS_URL) to run this test")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone (``omnichannel-test:<hex>``); its keys are deleted afterwards."""
    import redis

    prefix = f"omnichannel-test:{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
