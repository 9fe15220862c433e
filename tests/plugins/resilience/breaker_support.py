"""Helpers of the circuit breaker tests (``test_breaker_transitions.py``, ``test_breaker_admin.py``).

A breaker on a :class:`FakeClock` that records its transitions, the outcomes that drive it, and the
breaker driven to OPEN or HALF_OPEN with the default config.
"""

from __future__ import annotations

from omnichannel.testing import FakeClock
from omnichannel_resilience.breaker import BreakerConfig, CircuitBreaker, Outcome, State

Transitions = list[tuple[State, State]]


def make(config: BreakerConfig | None = None) -> tuple[CircuitBreaker, FakeClock, Transitions]:
    clock = FakeClock()
    seen: Transitions = []
    breaker = CircuitBreaker(
        "whatsapp:106540352242922",
        config or BreakerConfig(),
        clock,
        on_transition=lambda prev, cur: seen.append((prev, cur)),
    )
    return breaker, clock, seen


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.acquire().record(Outcome.FAILURE)


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.acquire().record(Outcome.SUCCESS)


def opened() -> tuple[CircuitBreaker, FakeClock, Transitions]:
    breaker, clock, seen = make()
    fail(breaker, 5)
    assert breaker.state is State.OPEN
    return breaker, clock, seen


def half_open() -> tuple[CircuitBreaker, FakeClock, Transitions]:
    breaker, clock, seen = opened()
    clock.advance(60)
    assert breaker.state is State.HALF_OPEN
    return breaker, clock, seen
