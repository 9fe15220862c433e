"""Rate limits shared by every worker through Redis (``shared/resilience.md`` §1.7, backend ``redis``).

Design:

- The same GCRA as :class:`~omnichannel_resilience.limiter.Gcra`, one TAT per key, stored as
  milliseconds of server time with a ``PX`` expiry at the moment the TAT passes (an expired key is
  the same as an idle one, so memory stays bounded with millions of recipients).
- Keys: ``{prefix}:rl:{<sender>}:s`` for the sender, ``{prefix}:rl:{<sender>}:p:<recipient>`` for the
  pair and ``{prefix}:rl:{<sender>}:h:<recipient>`` for the pair's consecutive-throttle counter. The
  ``{<sender>}`` hash tag keeps the keys of one decision in one Redis Cluster slot.
- :meth:`RedisLimiterStore.acquire` is one Lua script (``lua/limiter_acquire.lua``) with server
  ``TIME``: if either wait exceeds its bound nothing is consumed and :class:`RateLimitedError` is raised
  exactly like the local limiter does; otherwise both keys are reserved at ``now + wait`` (waiters queue
  in arrival order) and the wait is slept on the injected clock. A cancelled waiter gives its
  reservation back (best effort, ``lua/limiter_refund.lua``).
- Throttling answers (:meth:`RedisLimiterStore.on_throttled`) push the right key back in Redis, so
  every worker slows down; the pair's ``4^k`` backoff counter lives in Redis and a success deletes it
  (only when this process saw it exist, so the happy path costs one round trip per message).
- Redis errors never fail a send: the store falls back to a local
  :class:`~omnichannel_resilience.limiter.Limiter` at ``rate / expected_workers`` (burst divided too),
  never the full rate on every worker, counts :attr:`backend_errors`, sets :attr:`degraded` and tries
  Redis again after ``storage_retry_s``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from omnichannel import Certainty, Clock, ErrorScope, InvalidField, RateLimitedError

from ._redis import Backend, NowMs, connect, lua, non_negative, now_arg, text
from .limiter import Limiter, RateConfig

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = ["RedisLimiterStore"]

_SENDER_DEFAULT_S = 1.0
_ACCOUNT_DEFAULT_S = 60.0
_PAIR_HITS_TTL_S = 3600.0
"""A pair's throttle counter outlives its pause by this long; quiet longer, it starts again at k = 0."""
_MAX_TRACKED_HITS = 100_000


def _scaled(config: RateConfig, workers: int) -> RateConfig:
    return RateConfig(rate_per_s=config.rate_per_s / workers, burst=max(1, config.burst // workers))


class RedisLimiterStore:
    """Sender and pair rate limits whose state lives in Redis, shared by every worker (a ``LimiterStore``).

    :param url: the Redis URL (ignored when ``client`` is given).
    :param sender: the limit per sender, fleet-wide.
    :param pair: the limit per ``(sender, recipient)`` pair, fleet-wide.
    :param clock: sleeps the admitted waits; ``monotonic()`` for the retry timer and the fallback.
    :param max_wait_s: the longest sender wait slept in place; longer raises :class:`RateLimitedError`.
    :param max_wait_pair_s: the longest pair wait slept in place (0: never hold a worker for a pair).
    :param prefix: namespace of the keys.
    :param expected_workers: how many workers share the limits; the local fallback gets this share.
    :param storage_retry_s: after a Redis error, the local fallback is used for this long.
    :param max_pair_backoff_s: cap of the ``4^k`` pair backoff.
    :param now_ms: virtual server time in ms, for tests; production uses Redis ``TIME``.
    :param client: a ``redis.asyncio.Redis`` to use instead of ``url`` (not closed by :meth:`close`).
    """

    def __init__(
        self,
        url: str | None,
        sender: RateConfig,
        pair: RateConfig,
        clock: Clock,
        max_wait_s: float,
        *,
        max_wait_pair_s: float = 0.0,
        prefix: str = "omnichannel",
        expected_workers: int = 1,
        storage_retry_s: float = 5.0,
        max_pair_backoff_s: float = 1024.0,
        now_ms: NowMs | None = None,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        for field, value in (("max_wait_s", max_wait_s), ("max_wait_pair_s", max_wait_pair_s)):
            non_negative(field, value)
            if not math.isfinite(value):
                raise InvalidField(field, f"must be a finite number >= 0, got {value!r}")
        non_negative("storage_retry_s", storage_retry_s)
        workers = expected_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidField("expected_workers", f"must be an integer >= 1, got {expected_workers!r}")
        self.sender = sender
        self.pair = pair
        self.max_wait_s = max_wait_s
        self.max_wait_pair_s = max_wait_pair_s
        self.prefix = prefix
        self.expected_workers = expected_workers
        self.max_pair_backoff_s = max_pair_backoff_s
        self.local = Limiter(
            _scaled(sender, expected_workers),
            _scaled(pair, expected_workers),
            clock,
            max_wait_s,
            max_wait_pair_s=max_wait_pair_s,
            max_pair_backoff_s=max_pair_backoff_s,
        )
        """The fallback used while Redis is unreachable: this worker's share of the limits."""
        self._clock = clock
        self._now_ms = now_ms
        self._redis, self._owns_client, self.where, self._errors = connect(url, client)
        self._backend = Backend("rate limiter store", self.where, clock, storage_retry_s)
        self._acquire_script: AsyncScript = self._redis.register_script(lua("limiter_acquire"))
        self._refund_script: AsyncScript = self._redis.register_script(lua("limiter_refund"))
        self._penalize_script: AsyncScript = self._redis.register_script(lua("limiter_penalize"))
        s_interval, p_interval = sender.interval_s * 1000, pair.interval_s * 1000
        self._s_interval, self._p_interval = repr(s_interval), repr(p_interval)
        self._s_tolerance, self._p_tolerance = repr(s_interval * sender.burst), repr(p_interval * pair.burst)
        self._max_waits = (repr(max_wait_s * 1000.0), repr(max_wait_pair_s * 1000.0))
        # Pairs whose throttle counter this process saw in Redis: on_success deletes only those.
        self._hits: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"<RedisLimiterStore {self.where} prefix={self.prefix!r} degraded={self.degraded}>"

    @property
    def backend_errors(self) -> int:
        """Redis errors since the store was created (``rate_limiter_backend_errors_total``)."""
        return self._backend.errors

    @property
    def degraded(self) -> bool:
        """Whether the last Redis call failed and the local fallback is in use."""
        return self._backend.degraded

    def sender_key(self, sender: str) -> str:
        return f"{self.prefix}:rl:{{{sender}}}:s"

    def pair_key(self, sender: str, recipient: str) -> str:
        return f"{self.prefix}:rl:{{{sender}}}:p:{recipient}"

    def hits_key(self, sender: str, recipient: str) -> str:
        return f"{self.prefix}:rl:{{{sender}}}:h:{recipient}"

    # -- the LimiterStore protocol -----------------------------------------------------------------

    async def acquire(self, sender: str, recipient: str) -> float:
        """Wait for a slot for one message from ``sender`` to ``recipient``, or refuse; returns the wait.

        :raises RateLimitedError: the sender wait exceeds ``max_wait_s`` (scope ``sender``) or the pair
            wait exceeds ``max_wait_pair_s`` (scope ``recipient``); ``retry_after`` is the wait until
            both keys admit; certainty ``not_sent``; nothing is consumed.
        """
        raw = await self._run(
            self._acquire_script,
            [self.sender_key(sender), self.pair_key(sender, recipient), self.hits_key(sender, recipient)],
            [self._s_interval, self._s_tolerance, self._p_interval, self._p_tolerance, *self._max_waits],
        )
        if raw is None:
            return await self.local.acquire(sender, recipient)
        verdict, wait = text(raw[0]), float(text(raw[1])) / 1000
        if int(text(raw[2])):
            self._saw_hits(sender, recipient)
        if verdict == "sender":
            raise self._refusal(ErrorScope.SENDER, sender, recipient, wait, self.max_wait_s)
        if verdict == "recipient":
            raise self._refusal(ErrorScope.RECIPIENT, sender, recipient, wait, self.max_wait_pair_s)
        if wait <= 0:
            return 0.0
        try:
            await self._clock.sleep(wait)
        except BaseException:
            # Cancelled (or the sleeper failed): give the reservation back so it consumes no capacity.
            await self._run(
                self._refund_script,
                [self.sender_key(sender), self.pair_key(sender, recipient)],
                [self._s_interval, self._p_interval, *(text(value) for value in raw[3:7])],
            )
            raise
        return wait

    async def on_throttled(
        self, sender: str, recipient: str, scope: ErrorScope | None, retry_after: float | None
    ) -> float:
        """Slow down the key the provider's throttling answer is about, fleet-wide; returns the pause.

        Same rules as :meth:`Limiter.on_throttled <omnichannel_resilience.limiter.Limiter.on_throttled>`:
        ``sender`` pauses the sender ``retry_after`` (default 1 s), ``account``/``app`` 60 s,
        ``recipient`` pauses the pair ``max(retry_after, 4^k)`` s, anything else 0.
        """
        floor = retry_after if retry_after is not None and retry_after > 0 else 0.0
        if scope is ErrorScope.RECIPIENT:
            keys = [self.pair_key(sender, recipient), self.hits_key(sender, recipient)]
            args = [self._p_interval, self._p_tolerance, repr(floor * 1000), "pair"]
        elif scope is ErrorScope.SENDER or scope in (ErrorScope.ACCOUNT, ErrorScope.APP):
            default = _SENDER_DEFAULT_S if scope is ErrorScope.SENDER else _ACCOUNT_DEFAULT_S
            keys = [self.sender_key(sender)]
            args = [self._s_interval, self._s_tolerance, repr((floor or default) * 1000), "fixed"]
        else:
            return 0.0
        args += [repr(self.max_pair_backoff_s * 1000), repr(_PAIR_HITS_TTL_S * 1000)]
        raw = await self._run(self._penalize_script, keys, args)
        if raw is None:
            return self.local.on_throttled(sender, recipient, scope, retry_after)
        if scope is ErrorScope.RECIPIENT:
            self._saw_hits(sender, recipient)
        return float(text(raw)) / 1000

    async def on_success(self, sender: str, recipient: str) -> None:
        """A message to the pair went out: its consecutive-throttle count starts again at 0."""
        self.local.on_success(sender, recipient)
        pair = f"{sender}\x1f{recipient}"
        if pair not in self._hits or not self._backend.usable():
            return
        try:
            await self._redis.delete(self.hits_key(sender, recipient))
        except self._errors as exc:
            self._backend.failed(exc)
            return
        self._backend.worked()
        self._hits.pop(pair, None)

    async def close(self) -> None:
        """Close the client this store created (a client passed in stays open)."""
        if self._owns_client:
            await self._redis.aclose()

    # -- internals -------------------------------------------------------------------------------

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        """Run a limiter script; ``None`` when Redis is unusable (the caller uses the local limiter)."""
        if not self._backend.usable():
            return None
        try:
            raw = await script(keys=keys, args=[now_arg(self._now_ms, integer=False), *args])
        except self._errors as exc:
            self._backend.failed(exc)
            return None
        self._backend.worked()
        return raw

    def _saw_hits(self, sender: str, recipient: str) -> None:
        hits = self._hits
        if len(hits) >= _MAX_TRACKED_HITS:
            del hits[next(iter(hits))]
        hits[f"{sender}\x1f{recipient}"] = None

    def _refusal(
        self, scope: ErrorScope, sender: str, recipient: str, wait: float, max_wait: float
    ) -> RateLimitedError:
        whom = f"sender {sender!r}" if scope is ErrorScope.SENDER else f"pair ({sender!r}, {recipient!r})"
        return RateLimitedError(
            f"shared rate limit of {whom}: wait {wait:.3f} s exceeds max_wait {max_wait:.3f} s",
            retry_after=wait,
            scope=scope,
            certainty=Certainty.NOT_SENT,
        )
