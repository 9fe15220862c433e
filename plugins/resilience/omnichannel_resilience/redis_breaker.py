"""Circuit breakers shared by every worker through Redis (``shared/resilience.md`` §1.3.4).

Design:

- One hash per breaker, ``{prefix}:cb:{name}``, with the fields of the in-memory breaker
  (``state``, ``gen``, ``open_until_ms``, ``open_count``, ``consecutive_failures``,
  ``probe_successes``, ``updated_ms``) plus one field ``p:<lease>`` per half-open probe lease. A missing
  hash is CLOSED with zero counters, so an evicted or deleted key is harmless and is recreated on the
  next write. Every write refreshes the key's TTL; creating a store writes nothing.
- Every decision that changes state (a half-open admission, an outcome, an admin action, and the
  time-driven OPEN → HALF_OPEN / half-open timeout transitions found on the way) is one Lua script
  (``lua/breaker_*.lua``), so check and change happen in one step across the fleet. Time is the
  server's ``TIME`` in milliseconds; tests pass virtual time through ``now_ms``. The transition table
  is the one of :class:`~omnichannel_resilience.breaker.CircuitBreaker` (consecutive mode only).
- The happy path costs no round trip: CLOSED (and DISABLED / METRICS_ONLY) and OPEN admissions read a
  local copy of the state refreshed at most every ``poll_interval_s``, so a trip on one worker reaches
  the others within one interval. HALF_OPEN admission always asks Redis: the probe limit holds
  fleet-wide. A probe lease expires after ``probe_lease_ttl_s``, so a worker that dies holding one
  cannot wedge the breaker. Failures always go to Redis (they add up across workers); a success in
  CLOSED is written only when the local copy shows failures to reset.
- Permits carry the generation they were admitted under; the record script ignores stale ones
  (fencing), so a slow worker cannot close a breaker that another one re-opened.
- ``on_transition`` runs in the process whose script made the transition, once per transition.
- Redis errors never fail a send: the store falls back to an in-memory
  :class:`~omnichannel_resilience.breaker.CircuitBreaker` per name, counts :attr:`storage_errors`, sets
  :attr:`degraded`, logs one warning per outage (without credentials), tries Redis again after
  ``storage_retry_s`` and then adopts the shared state, a shared OPEN included.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from omnichannel import CircuitOpenError, Clock, InvalidField, OmniChannelError

from ._redis import Backend, NowMs, connect, glob_escape, lua, non_negative, now_arg, positive, text
from .breaker import BreakerConfig, BreakerSnapshot, CircuitBreaker, Outcome, Permit, State
from .state import AdminAction, OnTransition

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = ["RedisBreakerStore", "RedisPermit"]

logger = logging.getLogger(__name__)

_ADMIN_TARGETS: dict[str, State] = {
    "force_open": State.FORCED_OPEN,
    "disable": State.DISABLED,
    "metrics_only": State.METRICS_ONLY,
    "reset": State.CLOSED,
}


class RedisPermit:
    """Admission of one attempt by a :class:`RedisBreakerStore`; settle it with ``store.record``."""

    __slots__ = ("admitted_at", "generation", "lease", "settled")

    def __init__(self, generation: int, lease: str | None, admitted_at: float) -> None:
        self.generation = generation
        """The shared breaker generation this attempt was admitted under."""
        self.lease = lease
        """The half-open probe lease this attempt holds, or ``None``."""
        self.admitted_at = admitted_at
        """``clock.monotonic()`` at admission."""
        self.settled = False

    @property
    def probe(self) -> bool:
        return self.lease is not None

    def __repr__(self) -> str:
        return f"<RedisPermit gen={self.generation} lease={self.lease} settled={self.settled}>"


class _Reply:
    """What every breaker script returns: a status, the state afterwards and the transitions made."""

    __slots__ = (
        "failures",
        "generation",
        "in_flight",
        "now_ms",
        "open_count",
        "open_until_ms",
        "probe_successes",
        "state",
        "status",
        "transitions",
    )

    def __init__(self, raw: Sequence[object]) -> None:
        self.status = text(raw[0])
        self.state = State(text(raw[1]))
        self.generation = int(text(raw[2]))
        self.failures = int(text(raw[3]))
        self.open_until_ms = int(text(raw[4]))
        self.now_ms = int(text(raw[5]))
        self.probe_successes = int(text(raw[6]))
        self.in_flight = int(text(raw[7]))
        self.open_count = int(text(raw[8]))
        names = [State(text(value)) for value in raw[9:]]
        self.transitions = list(zip(names[::2], names[1::2], strict=True))

    @property
    def open_remaining_s(self) -> float:
        return max(self.open_until_ms - self.now_ms, 0) / 1000


class _Cached:
    """This process's copy of a breaker's shared state, and when it was read."""

    __slots__ = ("failures", "fetched_at", "generation", "open_remaining_s", "server_ms", "state")

    def __init__(self, reply: _Reply, fetched_at: float) -> None:
        self.state = reply.state
        self.generation = reply.generation
        self.failures = reply.failures
        self.open_remaining_s = reply.open_remaining_s
        self.server_ms = reply.now_ms
        self.fetched_at = fetched_at


class RedisBreakerStore:
    """Circuit breakers whose state lives in Redis, shared by every worker (a ``BreakerStore``).

    :param url: the Redis URL (ignored when ``client`` is given).
    :param config: the consecutive-mode thresholds and durations, the same in every worker.
    :param clock: ``monotonic()`` for the local cache and the retry timer; never for breaker time.
    :param on_transition: called ``(name, previous, current)`` for the transitions this process makes.
    :param prefix: namespace of the keys (``{prefix}:cb:{name}``).
    :param poll_interval_s: how stale the local copy used for CLOSED/OPEN admission may be.
    :param probe_lease_ttl_s: a probe lease not settled within this is reclaimed
        (default ``config.half_open_max_s + 2``).
    :param storage_retry_s: after a Redis error, local state is used for this long before retrying.
    :param state_ttl_s: TTL of a breaker key, refreshed on every write
        (default ``max(10 * config.max_open_s, 3600)``).
    :param now_ms: virtual server time in ms, for tests; production uses Redis ``TIME``.
    :param client: a ``redis.asyncio.Redis`` to use instead of ``url`` (not closed by :meth:`close`).
    :raises InvalidField: a bad argument, or ``config.mode`` other than ``consecutive``.
    """

    def __init__(
        self,
        url: str | None,
        config: BreakerConfig,
        clock: Clock,
        on_transition: OnTransition | None = None,
        *,
        prefix: str = "omnichannel",
        poll_interval_s: float = 1.0,
        probe_lease_ttl_s: float | None = None,
        storage_retry_s: float = 5.0,
        state_ttl_s: float | None = None,
        now_ms: NowMs | None = None,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        mode = getattr(config, "mode", "consecutive")
        if getattr(mode, "value", mode) != "consecutive":  # a str or an enum of str
            raise InvalidField(
                "mode", f"shared state in Redis supports the consecutive mode only, got {mode!r}"
            )
        non_negative("poll_interval_s", poll_interval_s)
        non_negative("storage_retry_s", storage_retry_s)
        lease_ttl_s = config.half_open_max_s + 2 if probe_lease_ttl_s is None else probe_lease_ttl_s
        positive("probe_lease_ttl_s", lease_ttl_s)
        ttl_s = max(10 * config.max_open_s, 3600.0) if state_ttl_s is None else state_ttl_s
        positive("state_ttl_s", ttl_s)
        self.config = config
        self.prefix = prefix
        self.poll_interval_s = poll_interval_s
        self.probe_lease_ttl_s = lease_ttl_s
        self.state_ttl_s = ttl_s
        self._clock = clock
        self._on_transition = on_transition
        self._now_ms = now_ms
        self._redis, self._owns_client, self.where, self._errors = connect(url, client)
        self._backend = Backend("circuit breaker store", self.where, clock, storage_retry_s)
        self._acquire_script: AsyncScript = self._redis.register_script(
            lua("breaker_common", "breaker_acquire")
        )
        self._record_script: AsyncScript = self._redis.register_script(
            lua("breaker_common", "breaker_record")
        )
        self._admin_script: AsyncScript = self._redis.register_script(lua("breaker_common", "breaker_admin"))
        self._config_args = [
            str(config.failure_threshold),
            str(round(config.open_s * 1000)),
            str(config.success_threshold),
            str(config.half_open_permits),
            str(round(config.half_open_max_s * 1000)),
            repr(float(config.open_backoff_multiplier)),
            str(round(config.max_open_s * 1000)),
            str(max(1, round(ttl_s * 1000))),
        ]
        self._lease_ttl_ms = str(max(1, round(lease_ttl_s * 1000)))
        self._cache: dict[str, _Cached] = {}
        self._local: dict[str, CircuitBreaker] = {}
        self._not_permitted: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<RedisBreakerStore {self.where} prefix={self.prefix!r} degraded={self.degraded}>"

    @property
    def storage_errors(self) -> int:
        """Redis errors since the store was created (``storage_errors_total``)."""
        return self._backend.errors

    @property
    def degraded(self) -> bool:
        """Whether the last Redis call failed and local state is in use (``storage_degraded``)."""
        return self._backend.degraded

    def key(self, name: str) -> str:
        """The Redis key of breaker ``name``."""
        return f"{self.prefix}:cb:{name}"

    # -- the BreakerStore protocol -------------------------------------------------------------------

    async def acquire(self, name: str) -> object:
        """Admit one attempt through breaker ``name``: a :class:`RedisPermit` (or, degraded, a ``Permit``).

        :raises CircuitOpenError: open (``retry_after`` until half-open), forced open (``open_s``),
            or half-open with every probe slot taken (``half_open_retry_hint_s``).
        """
        now = self._clock.monotonic()
        if not self._backend.usable():
            return self._local_breaker(name).acquire()
        cached = self._cache.get(name)
        if cached is not None and now - cached.fetched_at < self.poll_interval_s:
            if cached.state.admits_all:
                return RedisPermit(cached.generation, None, now)
            if cached.state is State.OPEN:
                remaining = cached.open_remaining_s - (now - cached.fetched_at)
                if remaining > 0:
                    raise self._refusal(name, State.OPEN, remaining)
            elif cached.state is State.FORCED_OPEN:
                raise self._refusal(name, State.FORCED_OPEN, 0.0)
        lease = secrets.token_hex(8)
        reply = await self._call(self._acquire_script, name, ["acquire", lease, self._lease_ttl_ms])
        if reply is None:
            return self._local_breaker(name).acquire()
        if reply.status == "refused":
            raise self._refusal(name, reply.state, reply.open_remaining_s)
        return RedisPermit(reply.generation, lease if reply.status == "probe" else None, now)

    async def record(self, name: str, token: object, outcome: Outcome) -> None:
        """Settle ``token`` with ``outcome``; twice is a no-op, a stale generation changes nothing."""
        if isinstance(token, Permit):
            token.record(outcome)  # admitted by the local fallback breaker
            return
        if not isinstance(token, RedisPermit):
            raise TypeError(f"not a permit of this store: {token!r}")
        if token.settled:
            return
        token.settled = True
        if token.lease is None and self._nothing_to_write(name, token, outcome):
            return
        args = [str(token.generation), token.lease or "", outcome.value]
        reply = await self._call(self._record_script, name, args)
        if reply is None and outcome is Outcome.FAILURE:
            self._record_local_failure(name)

    async def snapshot(self, name: str) -> BreakerSnapshot:
        """Breaker ``name`` now, from Redis (``open_remaining_s`` from server time); local when degraded."""
        reply = await self._call(self._acquire_script, name, ["read", "", self._lease_ttl_ms])
        if reply is None:
            return self._local_breaker(name).snapshot()
        return BreakerSnapshot(
            name=name,
            state=reply.state,
            failures=reply.failures,
            probe_successes=reply.probe_successes,
            in_flight=reply.in_flight,
            open_remaining_s=reply.open_remaining_s if reply.state is State.OPEN else None,
            open_count=reply.open_count,
            generation=reply.generation,
            not_permitted=self._not_permitted.get(name, 0),
        )

    async def snapshots(self) -> list[BreakerSnapshot]:
        """Every breaker under this prefix in Redis, sorted by name (the local ones when degraded)."""
        names: list[str] = []
        if self._backend.usable():
            start = len(self.key(""))
            try:
                async for key in self._redis.scan_iter(match=glob_escape(self.key("")) + "*", _type="HASH"):
                    names.append(text(key)[start:])
            except self._errors as exc:
                self._backend.failed(exc)
                self._cache.clear()
            else:
                self._adopt_if_back()
        if self._backend.degraded:
            return [self._local[name].snapshot() for name in sorted(self._local)]
        return [await self.snapshot(name) for name in sorted(set(names))]

    async def admin(self, name: str, action: AdminAction) -> BreakerSnapshot:
        """Apply an operator action fleet-wide: ``force_open``, ``disable``, ``metrics_only`` or ``reset``.

        :raises InvalidField: an unknown action.
        :raises OmniChannelError: Redis is unreachable (an operator action is never applied locally only).
        """
        target = _ADMIN_TARGETS.get(action)
        if target is None:
            raise InvalidField("action", f"must be one of {', '.join(_ADMIN_TARGETS)}, got {action!r}")
        await self._call(self._admin_script, name, [target.value], required=True)
        return await self.snapshot(name)

    async def close(self) -> None:
        """Close the client this store created (a client passed in stays open)."""
        self._cache.clear()
        self._local.clear()
        if self._owns_client:
            await self._redis.aclose()

    # -- internals -------------------------------------------------------------------------------------

    async def _call(
        self, script: AsyncScript, name: str, args: list[str], *, required: bool = False
    ) -> _Reply | None:
        """Run a breaker script; ``None`` when Redis is unusable (the caller falls back to local state)."""
        if not required and not self._backend.usable():
            return None
        now_ms = now_arg(self._now_ms, integer=True)
        try:
            raw = await script(keys=[self.key(name)], args=[now_ms, *self._config_args, *args])
        except self._errors as exc:
            self._backend.failed(exc)
            self._cache.clear()  # not trusted after the outage, even if younger than poll_interval_s
            if required:
                raise OmniChannelError(
                    f"circuit breaker {name!r}: the shared state at {self.where} is unreachable "
                    f"({type(exc).__name__})"
                ) from exc
            return None
        self._adopt_if_back()
        reply = _Reply(raw)
        cached = self._cache.get(name)
        if cached is None or reply.now_ms >= cached.server_ms:
            self._cache[name] = _Cached(reply, self._clock.monotonic())
        for previous, current in reply.transitions:
            self._notify(name, previous, current)
        return reply

    def _adopt_if_back(self) -> None:
        if self._backend.worked():
            # Back from an outage: forget what we knew locally and adopt the shared state.
            self._cache.clear()
            self._local.clear()

    def _nothing_to_write(self, name: str, token: RedisPermit, outcome: Outcome) -> bool:
        """Whether a non-probe outcome would change nothing in Redis, judged from the local copy."""
        if outcome is not Outcome.SUCCESS and outcome is not Outcome.FAILURE:
            return True  # rows 5 and 13 without a probe slot to give back
        cached = self._cache.get(name)
        if cached is None or cached.generation != token.generation:
            return False
        if cached.state is State.DISABLED:
            return True
        # Row 4 only resets a non-zero count; failures always go to Redis so they add up.
        return outcome is Outcome.SUCCESS and cached.failures == 0 and cached.state.admits_all

    def _refusal(self, name: str, state: State, remaining_s: float) -> CircuitOpenError:
        self._not_permitted[name] = self._not_permitted.get(name, 0) + 1
        if state is State.OPEN:
            return CircuitOpenError(f"circuit breaker {name!r} is open", retry_after=remaining_s)
        if state is State.HALF_OPEN:
            return CircuitOpenError(
                f"circuit breaker {name!r} is half-open and its probe slots are taken",
                retry_after=self.config.half_open_retry_hint_s,
            )
        return CircuitOpenError(f"circuit breaker {name!r} is forced open", retry_after=self.config.open_s)

    def _local_breaker(self, name: str) -> CircuitBreaker:
        breaker = self._local.get(name)
        if breaker is None:
            notify = self._on_transition
            callback = None if notify is None else (lambda prev, cur: notify(name, prev, cur))
            breaker = self._local[name] = CircuitBreaker(name, self.config, self._clock, callback)
        return breaker

    def _record_local_failure(self, name: str) -> None:
        """Count a failure Redis could not take in the local fallback breaker."""
        try:
            permit = self._local_breaker(name).acquire()
        except CircuitOpenError:
            return  # already open locally
        permit.record(Outcome.FAILURE)

    def _notify(self, name: str, previous: State, current: State) -> None:
        if self._on_transition is None:
            return
        try:
            self._on_transition(name, previous, current)
        except Exception:
            logger.exception("on_transition listener of circuit breaker %r failed", name)
