"""Idempotency keys in Redis, shared by every worker.

One hash per key, ``{prefix}:idem:{key}``, with the fields of :class:`KeyRecord` (times in UTC epoch
milliseconds). Every change is one Lua script, so check and change happen in one step across the
fleet; leases are judged on the server's ``TIME`` (tests inject time through ``now_ms``). Every
write sets the key's TTL (``ttl_s``, at least the lease): a key older than that is forgotten and
may be sent again, so ``ttl_s`` must exceed the redelivery horizon. A Redis error raises
:class:`KeyStoreError`: a worker that cannot claim must not send.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..clock import Clock, SystemClock
from ..errors import ConfigError, KeyStoreError
from ..urls import printable_url
from .keys import Claim, KeyRecord, KeyState
from .sqlite import from_ms

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = ["RedisKeyStore"]

NowMs = Callable[[], int | float]
"""A replacement for the server's ``TIME`` in milliseconds (tests only)."""

# Shared prelude. KEYS[1] the hash; ARGV[1] now in ms ('' = server TIME); ARGV[2] TTL in ms.
# A script returns {granted or 0, field, value, field, value, ...} (the hash afterwards).
_PRELUDE = """
local key = KEYS[1]
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl = tonumber(ARGV[2])
local function fmt(n) return string.format('%d', n) end
local function reply(granted)
  local out = {granted}
  for _, v in ipairs(redis.call('HGETALL', key)) do table.insert(out, v) end
  return out
end
local function held(owner)
  local h = redis.call('HMGET', key, 'state', 'owner')
  return h[1] == 'in_flight' and h[2] == owner
end
"""

# ARGV[3] owner, ARGV[4] lease in ms, ARGV[5] '1' to resend an uncertain key.
_CLAIM = """
local state = redis.call('HGET', key, 'state')
if state == 'in_flight' then
  if (tonumber(redis.call('HGET', key, 'lease_until')) or 0) > now then return reply(0) end
  -- The holder's lease ran out (it crashed?): it may have sent the message.
  redis.call('HSET', key, 'state', 'uncertain', 'error', 'lease expired')
  redis.call('HDEL', key, 'lease_until')
  redis.call('PEXPIRE', key, ttl)
  state = 'uncertain'
end
if state == 'sent' or state == 'failed' or (state == 'uncertain' and ARGV[5] ~= '1') then
  return reply(0)
end
local attempts = (tonumber(redis.call('HGET', key, 'attempts')) or 0) + 1
local lease = tonumber(ARGV[4])
redis.call('DEL', key)
redis.call('HSET', key, 'state', 'in_flight', 'owner', ARGV[3], 'attempts', fmt(attempts),
           'updated_at', fmt(now), 'lease_until', fmt(now + lease))
redis.call('PEXPIRE', key, math.max(ttl, lease))
return reply(1)
"""

# ARGV[3] owner, ARGV[4] channel, ARGV[5] provider message id, ARGV[6] '1' if there is one.
_COMPLETE = """
if not held(ARGV[3]) then return reply(0) end
redis.call('HSET', key, 'state', 'sent', 'updated_at', fmt(now), 'channel', ARGV[4])
if ARGV[6] == '1' then
  redis.call('HSET', key, 'provider_message_id', ARGV[5])
end
redis.call('HDEL', key, 'lease_until')
redis.call('PEXPIRE', key, ttl)
return reply(1)
"""

# ARGV[3] owner, ARGV[4] the new state ('' = forget the key), ARGV[5] error.
_RELEASE = """
if not held(ARGV[3]) then return reply(0) end
if ARGV[4] == '' then
  redis.call('DEL', key)
  return reply(1)
end
redis.call('HSET', key, 'state', ARGV[4], 'updated_at', fmt(now), 'error', ARGV[5])
redis.call('HDEL', key, 'lease_until')
redis.call('PEXPIRE', key, ttl)
return reply(1)
"""


def _text(value: object) -> str:
    """A reply element as ``str``, whatever the client's ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(key: str, fields: Sequence[object]) -> KeyRecord | None:
    """The record of a flat ``[field, value, ...]`` reply (``None`` for an empty hash)."""
    if not fields:
        return None
    values = {_text(name): _text(value) for name, value in zip(fields[::2], fields[1::2], strict=True)}
    lease_until = values.get("lease_until")
    return KeyRecord(
        key,
        KeyState(values["state"]),
        values["owner"],
        int(values["attempts"]),
        from_ms(int(values["updated_at"])),
        lease_until=None if lease_until is None else from_ms(int(lease_until)),
        channel=values.get("channel"),
        provider_message_id=values.get("provider_message_id"),
        error=values.get("error"),
    )


class RedisKeyStore:
    """A :class:`~omnichannel.idempotency.KeyStore` in Redis.

    :param url: the Redis URL (ignored when ``client`` is given).
    :param clock: kept for symmetry with the other stores; lease time is the Redis server's.
    :param prefix: namespace of the keys (``{prefix}:idem:{key}``).
    :param ttl_s: how long a key is kept after its last write (default 48 h).
    :param timeout_s: connect and socket timeout of the client this store creates.
    :param now_ms: virtual server time in ms, for tests; production uses Redis ``TIME``.
    :param client: a ``redis.asyncio.Redis`` to use instead of ``url`` (not closed by :meth:`close`).
    :raises KeyStoreError: the ``redis`` package is missing.
    :raises ConfigError: a malformed ``url`` or ``ttl_s``.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        prefix: str = "omnichannel",
        ttl_s: float = 48 * 3600,
        timeout_s: float = 2.0,
        now_ms: NowMs | None = None,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError
        except ImportError as exc:
            raise KeyStoreError(
                "the Redis key store needs the 'redis' package; "
                "install it with: pip install 'omnichannel[redis]'"
            ) from exc
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
            raise ConfigError([f"key_store: ttl_s must be a number > 0, got {ttl_s!r}"])
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._clock: Clock = clock or SystemClock()
        self._now_ms = now_ms
        self._ttl_ms = str(max(1, round(ttl_s * 1000)))
        self._errors: tuple[type[Exception], ...] = (RedisError, OSError)
        self._owns_client = client is None
        if client is None:
            try:
                client = aioredis.Redis.from_url(
                    url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
                )
            except ValueError as exc:
                raise ConfigError([f"key_store: not a Redis URL: {printable_url(url)!r} ({exc})"]) from exc
            self.where = printable_url(url)
        else:
            kwargs = client.connection_pool.connection_kwargs
            self.where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        self._redis: redis.asyncio.Redis = client
        self._claim: AsyncScript = client.register_script(_PRELUDE + _CLAIM)
        self._complete: AsyncScript = client.register_script(_PRELUDE + _COMPLETE)
        self._release: AsyncScript = client.register_script(_PRELUDE + _RELEASE)

    def __repr__(self) -> str:
        return f"<RedisKeyStore {self.where} prefix={self.prefix!r}>"

    def redis_key(self, key: str) -> str:
        """The Redis key of idempotency key ``key``."""
        return f"{self.prefix}:idem:{key}"

    async def open(self) -> None:
        """Check that Redis answers (the other methods connect when first called)."""
        try:
            await self._redis.ping()
        except self._errors as exc:
            raise self._unreachable("open", None, exc) from exc

    async def claim(self, key: str, *, owner: str, lease_s: float, resend_uncertain: bool = False) -> Claim:
        """See :meth:`KeyStore.claim`; one script, judged on server time."""
        lease_ms = str(max(0, round(lease_s * 1000)))
        granted, record = await self._call(
            self._claim, "claim", key, [owner, lease_ms, "1" if resend_uncertain else "0"]
        )
        return Claim(granted, record)

    async def complete(self, key: str, *, owner: str, channel: str, provider_message_id: str | None) -> None:
        """See :meth:`KeyStore.complete`; a late owner changes nothing."""
        has_id = "0" if provider_message_id is None else "1"
        await self._call(self._complete, "complete", key, [owner, channel, provider_message_id or "", has_id])

    async def release(
        self, key: str, *, owner: str, error: str, final: bool, uncertain: bool = False
    ) -> None:
        """See :meth:`KeyStore.release`; a late owner changes nothing."""
        state = KeyState.FAILED.value if final else KeyState.UNCERTAIN.value if uncertain else ""
        await self._call(self._release, "release", key, [owner, state, error])

    async def get(self, key: str) -> KeyRecord | None:
        """See :meth:`KeyStore.get`."""
        try:
            fields = await self._redis.hgetall(self.redis_key(key))
        except self._errors as exc:
            raise self._unreachable("get", key, exc) from exc
        flat = [item for pair in fields.items() for item in pair]
        return _record(key, flat)

    async def close(self) -> None:
        """Close the client this store created (a client passed in stays open)."""
        if self._owns_client:
            await self._redis.aclose()

    async def _call(
        self, script: AsyncScript, operation: str, key: str, args: list[str]
    ) -> tuple[bool, KeyRecord | None]:
        now = "" if self._now_ms is None else str(int(self._now_ms()))
        try:
            raw = await script(keys=[self.redis_key(key)], args=[now, self._ttl_ms, *args])
        except self._errors as exc:
            raise self._unreachable(operation, key, exc) from exc
        return bool(int(_text(raw[0]))), _record(key, raw[1:])

    def _unreachable(self, operation: str, key: str | None, exc: BaseException) -> KeyStoreError:
        # redis-py's messages name host and port, never the password.
        about = "" if key is None else f" of key {key!r}"
        return KeyStoreError(
            f"idempotency key store: {operation}{about} failed at Redis {self.where} "
            f"({type(exc).__name__}: {exc}); do not send what could not be claimed"
        )
