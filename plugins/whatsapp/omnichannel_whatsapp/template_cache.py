"""Where the fetched templates are kept: in this process, or in Redis for every worker.

Both caches hold the raw list of one account's templates under one key, for
``ttl_s`` seconds. A Redis that cannot be reached never stops a send: it reads
as a miss, and is tried again after a pause.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from omnichannel import Clock, ConfigError, PluginError, SystemClock, printable_url

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["MemoryTemplateCache", "RedisTemplateCache", "TemplateCache"]

log = logging.getLogger("omnichannel.whatsapp")


class TemplateCache(Protocol):
    """Where the raw template list of an account is kept between fetches."""

    async def get(self, key: str) -> Sequence[dict[str, Any]] | None:
        """The stored list, or ``None`` when there is none (or it expired).

        As long as the stored list does not change, the same (read-only) object comes
        back, so that a reader can keep what it derived from it.
        """
        ...

    async def put(self, key: str, templates: Sequence[dict[str, Any]]) -> None:
        """Store ``templates`` for the cache's time to live."""
        ...

    async def clear(self, key: str) -> None:
        """Forget the stored list, so that the next read fetches again."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryTemplateCache:
    """A cache inside this process; entries expire ``ttl_s`` seconds after ``put`` (0: never stored)."""

    def __init__(self, ttl_s: float, clock: Clock) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, tuple[dict[str, Any], ...]]] = {}

    async def get(self, key: str) -> Sequence[dict[str, Any]] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, templates = entry
        if self._clock.monotonic() >= expires_at:
            del self._entries[key]
            return None
        return templates

    async def put(self, key: str, templates: Sequence[dict[str, Any]]) -> None:
        if self._ttl_s > 0:
            self._entries[key] = (self._clock.monotonic() + self._ttl_s, tuple(templates))

    async def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    async def close(self) -> None:
        self._entries.clear()


class RedisTemplateCache:
    """A cache in Redis, shared by every process that uses the same ``url`` and ``prefix``.

    The list is stored as JSON under ``prefix + key`` with a server-side time to
    live, so it expires once for everybody. When Redis cannot be reached, a
    warning is logged once per outage and reads are misses, except that this
    process keeps its own copy of what it stored: an outage costs one Graph
    fetch per process per ``ttl_s``, not one per send. While Redis is down it is
    tried again at most every ``retry_after_s`` seconds.

    :raises PluginError: when the ``redis`` package is not installed.
    :raises ConfigError: when ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        url: str,
        ttl_s: float,
        prefix: str = "omnichannel:whatsapp:templates:",
        *,
        clock: Clock | None = None,
        timeout_s: float = 1.0,
        retry_after_s: float = 5.0,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError as exc:
            raise PluginError(
                "whatsapp",
                "redis_url is set but the 'redis' package is not installed; "
                "install it with: pip install 'omnichannel[redis]'",
            ) from exc
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        try:
            # Short timeouts and a single retry: a dead Redis must not hold a send for long.
            self._redis: redis.asyncio.Redis = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise ConfigError([f"plugins.whatsapp.redis_url: {exc}"]) from exc
        self._errors: tuple[type[Exception], ...] = (RedisError, OSError)
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._where = printable_url(url)
        self._clock = clock or SystemClock()
        self._retry_after_s = retry_after_s
        self._local = MemoryTemplateCache(ttl_s, self._clock)
        self._last_raw: bytes | str | None = None
        self._last_decoded: Sequence[dict[str, Any]] = ()
        self._down = False
        self._retry_at = 0.0

    def _usable(self) -> bool:
        return not self._down or self._clock.monotonic() >= self._retry_at

    def _failed(self, exc: Exception) -> None:
        if not self._down:
            log.warning(
                "whatsapp: template cache at %s is unreachable (%s: %s); "
                "using this process's own copy until it is back",
                self._where,
                type(exc).__name__,
                exc,
            )
        self._down = True
        self._retry_at = self._clock.monotonic() + self._retry_after_s

    def _worked(self) -> None:
        if self._down:
            log.info("whatsapp: template cache at %s is reachable again", self._where)
            self._down = False

    async def get(self, key: str) -> Sequence[dict[str, Any]] | None:
        if self._ttl_s <= 0:
            return None
        if not self._usable():
            return await self._local.get(key)
        try:
            raw = await self._redis.get(self._prefix + key)
        except self._errors as exc:
            self._failed(exc)
            return await self._local.get(key)
        self._worked()
        if raw is None:
            return None
        if raw == self._last_raw:
            return self._last_decoded  # unchanged: the same object, so readers keep what they derived
        try:
            templates = json.loads(raw)
        except ValueError:
            templates = None
        if not isinstance(templates, list) or not all(isinstance(t, dict) for t in templates):
            log.warning(
                "whatsapp: ignoring a malformed template list in %s at %r", self._where, self._prefix + key
            )
            return None
        self._last_raw, self._last_decoded = raw, tuple(templates)
        return self._last_decoded

    async def put(self, key: str, templates: Sequence[dict[str, Any]]) -> None:
        if self._ttl_s <= 0:
            return
        await self._local.put(key, templates)
        if not self._usable():
            return
        value = json.dumps(list(templates), separators=(",", ":"))
        try:
            await self._redis.set(self._prefix + key, value, px=max(1, round(self._ttl_s * 1000)))
        except self._errors as exc:
            self._failed(exc)
        else:
            self._worked()

    async def clear(self, key: str) -> None:
        await self._local.clear(key)
        if not self._usable():
            return
        try:
            await self._redis.delete(self._prefix + key)
        except self._errors as exc:
            self._failed(exc)
        else:
            self._worked()

    async def close(self) -> None:
        await self._local.close()
        await self._redis.aclose()
