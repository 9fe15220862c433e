"""Idempotency keys in Redis, shared by every worker.

One hash per key, ``{prefix}:idem:{key}``, with the fields of :class:`KeyRecord` (times in UTC epoch
milliseconds). Every change of a key is one Lua script on that key alone, so check and change
happen in one step across the fleet; leases are judged on the server's ``TIME`` (tests inject time
through ``now_ms``). Every write sets the key's TTL (``ttl_s``, at least the lease): a key older
than that is forgotten and may be sent again, so ``ttl_s`` must exceed the redelivery horizon. A
Redis error raises :class:`KeyStoreError`: a worker that cannot claim must not send.

Writes go in batches (see ``_batch``): what the workers queue while a pipeline is out goes in the
next one, one ``EVALSHA`` per operation (per key for :meth:`RedisKeyStore.settle_many`), all in
one round trip. Each script stays atomic and fails alone (its caller gets the error); a lost
connection fails the whole pipeline. ``get`` is a plain ``HGETALL``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from ..clock import Clock, SystemClock
from ..errors import ConfigError, KeyStoreError
from ..urls import printable_url
from ._batch import CLOSE, Batcher, Op, Outcome
from .keys import Claim, KeyRecord, KeyState, Settlement
from .sqlite import from_ms

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = ["RedisKeyStore"]

NowMs = Callable[[], int | float]
"""A replacement for the server's ``TIME`` in milliseconds (tests only)."""

_CLAIM_OP: Final = "claim"
_COMPLETE_OP: Final = "complete"
_RELEASE_OP: Final = "release"
_SETTLE_OP: Final = "settle"
_UNCLAIM_OP: Final = "unclaim"  # the store's own: give back a claim whose caller was cancelled

# Shared prelude. KEYS[1] the hash; ARGV[1] now in ms ('' = server TIME); ARGV[2] TTL in ms.
# A refused claim returns {0, field, value, field, value, ...} (the hash), a granted one {1,
# attempts, now, lease_until} (the client knows the rest; replies are parsed in Python, element by
# element); the others {1 if they changed the key else 0}.
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
return {1, fmt(attempts), fmt(now), fmt(now + lease)}
"""

# ARGV[3] owner, ARGV[4] channel, ARGV[5] provider message id, ARGV[6] '1' if there is one.
_COMPLETE = """
if not held(ARGV[3]) then return {0} end
redis.call('HSET', key, 'state', 'sent', 'updated_at', fmt(now), 'channel', ARGV[4])
if ARGV[6] == '1' then
  redis.call('HSET', key, 'provider_message_id', ARGV[5])
end
redis.call('HDEL', key, 'lease_until')
redis.call('PEXPIRE', key, ttl)
return {1}
"""

# ARGV[3] owner, ARGV[4] the new state ('' = forget the key), ARGV[5] error.
_RELEASE = """
if not held(ARGV[3]) then return {0} end
if ARGV[4] == '' then
  redis.call('DEL', key)
  return {1}
end
redis.call('HSET', key, 'state', ARGV[4], 'updated_at', fmt(now), 'error', ARGV[5])
redis.call('HDEL', key, 'lease_until')
redis.call('PEXPIRE', key, ttl)
return {1}
"""

# ARGV[3] 'sent' or 'failed', ARGV[4] channel, ARGV[5] provider message id, ARGV[6] '1' if there
# is one, ARGV[7] error ('failed' only). A key in another state, or absent, is left alone.
_SETTLE = """
local state = redis.call('HGET', key, 'state')
if state ~= 'in_flight' and state ~= 'uncertain' then return {0} end
redis.call('HSET', key, 'state', ARGV[3], 'updated_at', fmt(now), 'channel', ARGV[4])
if ARGV[6] == '1' then
  redis.call('HSET', key, 'provider_message_id', ARGV[5])
else
  redis.call('HDEL', key, 'provider_message_id')
end
if ARGV[3] == 'failed' then
  redis.call('HSET', key, 'error', ARGV[7])
else
  redis.call('HDEL', key, 'error')
end
redis.call('HDEL', key, 'lease_until')
redis.call('PEXPIRE', key, ttl)
return {1}
"""

# ARGV[3] owner, ARGV[4] attempts: give back a new key's claim whose caller was cancelled.
_UNCLAIM = """
if held(ARGV[3]) and redis.call('HGET', key, 'attempts') == ARGV[4] then
  redis.call('DEL', key)
  return {1}
end
return {0}
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
    """A :class:`~omnichannel.idempotency.KeyStore` in Redis, its writes pipelined in batches.

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
            from redis.exceptions import NoScriptError, RedisError
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
        self._no_script: type[Exception] = NoScriptError
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
        self._scripts: dict[str, AsyncScript] = {
            kind: client.register_script(_PRELUDE + body)
            for kind, body in (
                (_CLAIM_OP, _CLAIM),
                (_COMPLETE_OP, _COMPLETE),
                (_RELEASE_OP, _RELEASE),
                (_SETTLE_OP, _SETTLE),
                (_UNCLAIM_OP, _UNCLAIM),
            )
        }
        self._loaded = False  # the scripts are known to the server (else loaded before a batch)
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Pipelines sent so far (each one round trip, however many operations it held)."""
        self._batcher = Batcher(
            self._dispatch,
            droppable=frozenset({_CLAIM_OP}),
            orphaned=self._orphaned,
            where=f"idempotency key store at Redis {self.where}",
        )

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
        args = (self._now(), owner, lease_ms, "1" if resend_uncertain else "0")
        claim: Claim = await self._batcher.submit(_CLAIM_OP, key, args)
        return claim

    async def complete(self, key: str, *, owner: str, channel: str, provider_message_id: str | None) -> None:
        """See :meth:`KeyStore.complete`; a late owner changes nothing."""
        has_id = "0" if provider_message_id is None else "1"
        args = (self._now(), owner, channel, provider_message_id or "", has_id)
        await self._batcher.submit(_COMPLETE_OP, key, args)

    async def release(
        self, key: str, *, owner: str, error: str, final: bool, uncertain: bool = False
    ) -> None:
        """See :meth:`KeyStore.release`; a late owner changes nothing."""
        state = KeyState.FAILED.value if final else KeyState.UNCERTAIN.value if uncertain else ""
        await self._batcher.submit(_RELEASE_OP, key, (self._now(), owner, state, error))

    async def settle(
        self, key: str, *, channel: str, provider_message_id: str | None, error: str | None = None
    ) -> bool:
        """See :meth:`KeyStore.settle`; never creates a key."""
        return await self.settle_many([Settlement(key, channel, provider_message_id, error)]) == 1

    async def settle_many(self, settlements: Sequence[Settlement]) -> int:
        """See :meth:`KeyStore.settle_many`: one script per key, all in one pipeline (one round trip).

        Each key's change is atomic; if one of them fails (:class:`KeyStoreError`), the others
        may have been made: settling again is harmless.
        """
        if not settlements:
            return 0
        about = settlements[0].key if len(settlements) == 1 else ""
        changed: int = await self._batcher.submit(_SETTLE_OP, about, (self._now(), tuple(settlements)))
        return changed

    async def get(self, key: str) -> KeyRecord | None:
        """See :meth:`KeyStore.get`."""
        if self._batcher.closed:
            raise KeyStoreError(f"idempotency key store at Redis {self.where} is closed")
        try:
            fields = await self._redis.hgetall(self.redis_key(key))
        except self._errors as exc:
            raise self._unreachable("get", key, exc) from exc
        flat = [item for pair in fields.items() for item in pair]
        return _record(key, flat)

    async def close(self) -> None:
        """Send what is queued, then close the client this store created (a client passed in
        stays open)."""
        try:
            if self._batcher.used:
                await self._batcher.close()
            else:
                self._batcher.mark_closed()
        finally:
            if self._owns_client:
                await self._redis.aclose()

    # -- batches -----------------------------------------------------------------------------------

    def _now(self) -> str:
        return "" if self._now_ms is None else str(int(self._now_ms()))

    def _dispatch(self, batch: list[Op]) -> None:
        assert self._batcher.loop is not None
        task = self._batcher.loop.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[Op]) -> None:
        try:
            outcomes = await self._execute(batch)
        except BaseException as exc:  # the loop is stopping, or a bug: still answer every caller
            self._batcher.resolve(batch, [(False, self._failed(op, exc)) for op in batch])
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        self._batcher.resolve(batch, outcomes)

    async def _execute(self, batch: list[Op]) -> list[Outcome]:
        closing = batch[-1].kind == CLOSE
        work = batch[:-1] if closing else batch
        calls: list[tuple[int, str, str, tuple[str, ...]]] = []  # op, script, Redis key, ARGV
        for index, op in enumerate(work):
            if op.kind == _SETTLE_OP:
                now, settlements = op.args
                for each in settlements:
                    state = KeyState.SENT.value if each.error is None else KeyState.FAILED.value
                    has_id = "0" if each.provider_message_id is None else "1"
                    argv = (now, self._ttl_ms, state, each.channel, each.provider_message_id or "", has_id)
                    calls.append((index, _SETTLE_OP, self.redis_key(each.key), (*argv, each.error or "")))
            else:
                now, *rest = op.args
                calls.append((index, op.kind, self.redis_key(op.key), (now, self._ttl_ms, *rest)))
        outcomes: list[Outcome] = [(True, None) for _ in batch]
        if not calls:
            return outcomes
        try:
            replies = await self._pipeline(calls)
        except self._errors as exc:
            return [(False, self._failed(op, exc)) for op in work] + outcomes[len(work) :]
        for (index, _, _, _), reply in zip(calls, replies, strict=True):
            op = work[index]
            if not outcomes[index][0]:
                continue
            if isinstance(reply, Exception):
                outcomes[index] = (False, self._failed(op, reply))
            elif op.kind == _CLAIM_OP:
                outcomes[index] = (True, self._claimed(op, reply))
            elif op.kind == _SETTLE_OP:
                outcomes[index] = (True, (outcomes[index][1] or 0) + int(_text(reply[0])))
        return outcomes

    @staticmethod
    def _claimed(op: Op, reply: list[Any]) -> Claim:
        if int(_text(reply[0])) == 0:
            return Claim(False, _record(op.key, reply[1:]))
        attempts, now, lease_until = (int(_text(value)) for value in reply[1:])
        owner = op.args[1]
        record = KeyRecord(
            op.key, KeyState.IN_FLIGHT, owner, attempts, from_ms(now), lease_until=from_ms(lease_until)
        )
        return Claim(True, record)

    async def _pipeline(self, calls: list[tuple[int, str, str, tuple[str, ...]]]) -> list[Any]:
        """Every call's reply (an exception for a call that failed alone), in one round trip."""
        if not self._loaded:
            for script in self._scripts.values():
                await self._redis.script_load(script.script)
            self._loaded = True
        replies = await self._send(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, self._no_script)]
        if missing:  # Redis restarted or its scripts were flushed: those calls did not run
            for script in self._scripts.values():
                await self._redis.script_load(script.script)
            for i, reply in zip(missing, await self._send([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    async def _send(self, calls: list[tuple[int, str, str, tuple[str, ...]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, kind, redis_key, argv in calls:
                pipe.evalsha(self._scripts[kind].sha, 1, redis_key, *argv)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def _orphaned(self, op: Op, result: Any) -> None:
        """A claim of a new key granted to a caller cancelled before it learned that it may send:
        give it back (a key claimed again keeps its lease, which expires into ``uncertain``)."""
        if op.kind == _CLAIM_OP and result.granted and result.record.attempts == 1:
            args = (op.args[0], result.record.owner, "1")
            self._batcher.put(Op(_UNCLAIM_OP, op.key, args, None))

    def _failed(self, op: Op, exc: BaseException) -> KeyStoreError:
        if op.kind == _SETTLE_OP and not op.key:
            return self._unreachable(op.kind, None, exc, about=f" of {len(op.args[1])} keys")
        return self._unreachable(op.kind, op.key or None, exc)

    def _unreachable(
        self, operation: str, key: str | None, exc: BaseException, *, about: str = ""
    ) -> KeyStoreError:
        # redis-py's messages name host and port, never the password.
        about = about or ("" if key is None else f" of key {key!r}")
        error = KeyStoreError(
            f"idempotency key store: {operation}{about} failed at Redis {self.where} "
            f"({type(exc).__name__}: {exc}); do not send what could not be claimed"
        )
        error.__cause__ = exc
        return error
