"""Where breaker and rate-limit state lives: the store interfaces and the in-memory stores.

The middleware talks to a :class:`BreakerStore` and a :class:`LimiterStore`; it does not know
whether their state lives in this process (:class:`MemoryBreakerStore`, :class:`MemoryLimiterStore`,
the default) or in Redis, shared by every worker (``omnichannel_resilience.redis_state``).

Every method is a coroutine so that a shared store can do I/O; the memory stores never await
anything, so on the happy path they cost one coroutine call each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from omnichannel import Clock, ErrorScope

from .breaker import BreakerConfig, BreakerSnapshot, CircuitBreaker, Outcome, Permit, State
from .limiter import Limiter

__all__ = [
    "AdminAction",
    "BreakerStore",
    "LimiterStore",
    "MemoryBreakerStore",
    "MemoryLimiterStore",
    "OnTransition",
]

AdminAction = Literal["force_open", "disable", "metrics_only", "reset"]
"""What an operator can do to a breaker (``omnichannel breaker open|disable|...|close``)."""

OnTransition = Callable[[str, State, State], None]
"""``on_transition(breaker_name, previous, current)``; called once per transition, in order."""


class BreakerStore(Protocol):
    """The circuit breakers of one service, by name (``<channel>:<sender>``)."""

    async def acquire(self, name: str) -> object:
        """Admit one attempt through breaker ``name``: a token to settle with :meth:`record`.

        :raises CircuitOpenError: the breaker refuses (open, forced open, probe slots taken).
        """

    async def record(self, name: str, token: object, outcome: Outcome) -> None:
        """Settle the attempt ``token`` admitted; ``Outcome.IGNORED`` gives a probe slot back."""

    async def snapshot(self, name: str) -> BreakerSnapshot:
        """The breaker's state now (a breaker nobody used is CLOSED with zero counters)."""

    async def snapshots(self) -> list[BreakerSnapshot]:
        """Every breaker this store knows, sorted by name."""

    async def admin(self, name: str, action: AdminAction) -> BreakerSnapshot:
        """Apply an operator action to breaker ``name``; returns its state afterwards."""

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""


class LimiterStore(Protocol):
    """The sender and pair rate limits of one service."""

    async def acquire(self, sender: str, recipient: str) -> float:
        """Wait for a slot (at most the configured bound) or raise ``RateLimitedError``; the wait (s)."""

    async def on_throttled(
        self, sender: str, recipient: str, scope: ErrorScope | None, retry_after: float | None
    ) -> float:
        """The provider throttled us about ``scope``: slow that key down; returns the pause applied."""

    async def on_success(self, sender: str, recipient: str) -> None:
        """A message from ``sender`` to ``recipient`` went out."""

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""


class MemoryBreakerStore:
    """Breakers in this process's memory, created on first use."""

    def __init__(
        self, config: BreakerConfig, clock: Clock, on_transition: OnTransition | None = None
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``, created CLOSED if new."""
        breaker = self._breakers.get(name)
        if breaker is None:
            notify = self._on_transition
            callback = None if notify is None else (lambda prev, cur: notify(name, prev, cur))
            breaker = self._breakers[name] = CircuitBreaker(name, self.config, self._clock, callback)
        return breaker

    async def acquire(self, name: str) -> object:
        breaker = self._breakers.get(name)
        return (breaker or self.breaker(name)).acquire()

    async def record(self, name: str, token: object, outcome: Outcome) -> None:
        permit: Permit = token  # type: ignore[assignment]  # what acquire() returned
        permit.record(outcome)

    async def snapshot(self, name: str) -> BreakerSnapshot:
        return self.breaker(name).snapshot()

    async def snapshots(self) -> list[BreakerSnapshot]:
        return [self._breakers[name].snapshot() for name in sorted(self._breakers)]

    async def admin(self, name: str, action: AdminAction) -> BreakerSnapshot:
        breaker = self.breaker(name)
        getattr(breaker, action)()
        return breaker.snapshot()

    async def close(self) -> None:
        self._breakers.clear()


class MemoryLimiterStore:
    """The rate limits of this process (a :class:`~omnichannel_resilience.limiter.Limiter`)."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def acquire(self, sender: str, recipient: str) -> float:
        return await self.limiter.acquire(sender, recipient)

    async def on_throttled(
        self, sender: str, recipient: str, scope: ErrorScope | None, retry_after: float | None
    ) -> float:
        return self.limiter.on_throttled(sender, recipient, scope, retry_after)

    async def on_success(self, sender: str, recipient: str) -> None:
        self.limiter.on_success(sender, recipient)

    async def close(self) -> None:
        return None
