"""Plumbing shared by the Redis stores: the client, the Lua sources and the degraded-mode switch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING

from omnichannel import Clock, InvalidField, PluginError, printable_url

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger("omnichannel_resilience.redis_state")

NowMs = Callable[[], int | float]
"""A replacement for the server's ``TIME`` in milliseconds (tests only; production passes none)."""


def connect(
    url: str | None, client: redis.asyncio.Redis | None, *, timeout_s: float = 1.0
) -> tuple[redis.asyncio.Redis, bool, str, tuple[type[Exception], ...]]:
    """``(client, owned, where, errors)``: the client to use, whether we created it, a printable
    location without credentials, and the exceptions that mean "Redis is unavailable".

    :raises PluginError: the ``redis`` package is not installed.
    :raises InvalidField: neither ``url`` nor ``client``, or a malformed ``url``.
    """
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError
    except ImportError as exc:  # pragma: no cover - the test environment has redis
        raise PluginError(
            "resilience",
            "shared state in Redis needs the 'redis' package; "
            "install it with: pip install 'omnichannel[redis]'",
        ) from exc
    errors: tuple[type[Exception], ...] = (RedisError, OSError)
    if client is not None:
        kwargs = client.connection_pool.connection_kwargs
        where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        return client, False, where, errors
    if not url:
        raise InvalidField("url", "a Redis URL (or a client) is required for shared state")
    try:
        # Short timeouts and a single retry: a dead Redis must not hold a send for long.
        created: redis.asyncio.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
        )
    except ValueError as exc:
        raise InvalidField("url", f"not a Redis URL: {printable_url(url)!r} ({exc})") from exc
    return created, True, printable_url(url), errors


def lua(*names: str) -> str:
    """The concatenated sources of ``lua/<name>.lua``."""
    folder = resources.files("omnichannel_resilience").joinpath("lua")
    return "\n".join(folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in names)


def text(value: object) -> str:
    """A reply element as ``str``, whatever the client's ``decode_responses``."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def glob_escape(value: str) -> str:
    """``value`` as a literal inside a SCAN ``MATCH`` pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in value)


def non_negative(field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidField(field, f"must be a number >= 0, got {value!r}")


def positive(field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidField(field, f"must be a number > 0, got {value!r}")


class Backend:
    """Whether Redis is usable now; counts errors and logs once per outage.

    After an error Redis is skipped (the caller uses its local fallback) until ``retry_s`` of
    ``clock.monotonic()`` have passed; the next call then tries it again.
    """

    def __init__(self, what: str, where: str, clock: Clock, retry_s: float) -> None:
        self._what = what
        self._where = where
        self._clock = clock
        self._retry_s = retry_s
        self._retry_at = 0.0
        self.errors = 0
        self.degraded = False

    def usable(self) -> bool:
        return not self.degraded or self._clock.monotonic() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.degraded:
            # Never the exception's repr of the URL: redis-py messages name host and port only.
            logger.warning(
                "%s: Redis at %s is unreachable (%s: %s); using this process's local state until it is back",
                self._what,
                self._where,
                type(exc).__name__,
                exc,
            )
        self.degraded = True
        self._retry_at = self._clock.monotonic() + self._retry_s

    def worked(self) -> bool:
        """Redis answered; ``True`` if that ends an outage (the caller adopts the shared state)."""
        if not self.degraded:
            return False
        logger.info("%s: Redis at %s is reachable again; using the shared state", self._what, self._where)
        self.degraded = False
        return True


def now_arg(now_ms: NowMs | None, *, integer: bool) -> str:
    """The ``now`` argument of every script: ``''`` (server ``TIME``) unless a test injects time."""
    if now_ms is None:
        return ""
    value = now_ms()
    return str(int(value)) if integer else repr(float(value))
