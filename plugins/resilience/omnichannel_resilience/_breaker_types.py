"""The circuit breaker's vocabulary: outcomes, states, configuration and snapshots.

Everything here is a value or a pure function, shared by the in-memory breaker
(:mod:`omnichannel_resilience.breaker`, their public home, which re-exports them) and the Redis
store (:mod:`omnichannel_resilience.redis_breaker`):

- :class:`Outcome` and :func:`classify`: what one attempt tells the breaker (§1.4).
- :class:`State`: the breaker states and their gauge values (§1.3).
- :class:`BreakerConfig`: ``resilience.circuit_breaker.*``, validated, in both modes.
- :class:`BreakerSnapshot`: a breaker's state at one instant.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, Literal

import attrs

from omnichannel import (
    CircuitOpenError,
    ErrorScope,
    InvalidField,
    PermanentDeliveryError,
    RateLimitedError,
    SenderUnavailableError,
    TransientDeliveryError,
)

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "Mode",
    "Outcome",
    "State",
    "ThresholdKind",
    "WindowType",
    "classify",
]

# One logger for everything the breaker says, as docs/plugins/resilience.md lists it.
logger = logging.getLogger("omnichannel_resilience.breaker")


class Outcome(enum.Enum):
    """What one attempt tells the breaker about the endpoint (§1.1)."""

    SUCCESS = "success"
    """The endpoint answered correctly and in time, even if it rejected this message."""
    FAILURE = "failure"
    """The endpoint or the path to it is unhealthy, or the sender can no longer use it."""
    IGNORED = "ignored"
    """The attempt says nothing about the endpoint: our cancellation, local limits, an open breaker."""
    THROTTLED = "throttled"
    """The provider refused because of a rate limit: never opens the breaker."""


# Scopes of a permanent error that are about the sender rather than the message (§1.4, "sender unusable").
_SENDER_SCOPES = frozenset({ErrorScope.SENDER, ErrorScope.ACCOUNT, ErrorScope.APP})
_MESSAGE_SCOPES = frozenset({ErrorScope.MESSAGE, ErrorScope.RECIPIENT})


def classify(exc: BaseException | None) -> Outcome:
    """The breaker outcome of an attempt that raised ``exc`` (``None``: it returned normally).

    - ``None`` → SUCCESS.
    - :class:`RateLimitedError` → THROTTLED (checked before its base class, transient).
    - :class:`CircuitOpenError`, and anything that is not an :class:`Exception`
      (``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``) → IGNORED.
    - :class:`TransientDeliveryError` → FAILURE, except with scope ``message``/``recipient`` (a
      paused template): SUCCESS, the endpoint answered in time.
    - :class:`SenderUnavailableError` → FAILURE.
    - :class:`PermanentDeliveryError` about the message or recipient (or without a scope) → SUCCESS:
      the endpoint works. With scope ``sender``/``account``/``app`` it is a FAILURE, like
      :class:`SenderUnavailableError`.
    - Any other :class:`Exception` → FAILURE.
    """
    if exc is None:
        return Outcome.SUCCESS
    if not isinstance(exc, Exception):
        return Outcome.IGNORED
    if isinstance(exc, RateLimitedError):
        return Outcome.THROTTLED
    if isinstance(exc, CircuitOpenError):
        return Outcome.IGNORED
    if isinstance(exc, TransientDeliveryError):
        # "Not now" about this message (a paused template) says the endpoint works.
        return Outcome.SUCCESS if exc.scope in _MESSAGE_SCOPES else Outcome.FAILURE
    if isinstance(exc, SenderUnavailableError):
        return Outcome.FAILURE
    if isinstance(exc, PermanentDeliveryError):
        return Outcome.FAILURE if exc.scope in _SENDER_SCOPES else Outcome.SUCCESS
    return Outcome.FAILURE


class State(enum.Enum):
    """Breaker states; the value is the name used in events, :attr:`gauge` the exported number."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"
    FORCED_OPEN = "forced_open"
    """Admin "isolate": refuses everything, records nothing, never moves on its own."""
    DISABLED = "disabled"
    """Admin: admits everything, records nothing."""
    METRICS_ONLY = "metrics_only"
    """Admin / shadow roll-out: admits everything, records outcomes, never transitions."""

    @property
    def gauge(self) -> int:
        """The value of ``omnichannel_circuit_breaker_state``: 0 closed, 1 half-open, 2 open (§0 item 11)."""
        return _GAUGE[self]

    @property
    def admits_all(self) -> bool:
        return self in (State.CLOSED, State.DISABLED, State.METRICS_ONLY)


_GAUGE = {
    State.CLOSED: 0,
    State.HALF_OPEN: 1,
    State.OPEN: 2,
    State.FORCED_OPEN: 2,
    State.DISABLED: 0,
    State.METRICS_ONLY: 0,
}


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidField(attribute.name, f"must be an integer >= 1, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidField(attribute.name, f"must be > 0, got {value!r}")


def _multiplier(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
        raise InvalidField(attribute.name, f"must be >= 1, got {value!r}")


def _percent(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise InvalidField(attribute.name, f"must be > 0 and <= 100, got {value!r}")


def _boolean(_: object, attribute: attrs.Attribute[Any], value: bool) -> None:
    if not isinstance(value, bool):
        raise InvalidField(attribute.name, f"must be true or false, got {value!r}")


def _one_of(*choices: str) -> Callable[[object, attrs.Attribute[Any], str], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            expected = " or ".join(repr(c) for c in choices)
            raise InvalidField(attribute.name, f"must be {expected}, got {value!r}")

    return check


Mode = Literal["consecutive", "rate"]
WindowType = Literal["count", "time"]
ThresholdKind = Literal["failure_threshold", "failure_rate", "slow_call_rate"]
"""Which threshold was crossed: consecutive failures, or the failure / slow-call rate of the window."""


@attrs.frozen
class BreakerConfig:
    """``resilience.circuit_breaker.*``; the defaults are the legacy profile, consecutive mode (§1.3).

    Both modes:

    :param mode: ``"consecutive"`` (legacy) or ``"rate"`` (sliding window, resilience4j).
    :param open_s: how long it stays open before admitting a probe (legacy "timeout").
    :param half_open_max_s: a probe outstanding this long without a decision re-opens the breaker.
    :param half_open_retry_hint_s: ``retry_after`` given to callers refused while probes run.
    :param open_backoff_multiplier: > 1 grows the open time on each re-open without a close in between.
    :param max_open_s: cap for the grown open time.
    :param slow_call_duration_s: a call is slow when admission to outcome takes longer than this.

    Consecutive mode:

    :param failure_threshold: consecutive recorded failures that open the breaker.
    :param success_threshold: consecutive probe successes that close it.
    :param half_open_permits: probes admitted concurrently in half-open.
    :param count_slow_as_failure: a slow SUCCESS counts as a FAILURE (an error in rate mode,
        where ``slow_call_rate_threshold`` does this job).

    Rate mode:

    :param window_type: ``"count"`` (the last ``window_size`` calls) or ``"time"`` (the last
        ``window_size`` seconds, in 1 s buckets).
    :param window_size: calls or seconds, see ``window_type``.
    :param minimum_calls: no rate (and no trip) while the window holds fewer calls; capped at
        ``window_size`` for a count window.
    :param failure_rate_threshold: percent in (0, 100]; opens at ``failure_rate >= threshold``.
    :param slow_call_rate_threshold: percent in (0, 100]; opens at ``slow_call_rate >= threshold``.
    :param permitted_calls_in_half_open: probes admitted concurrently in half-open; the decision
        comes after ``min(minimum_calls, permitted_calls_in_half_open)`` recorded probe outcomes.
    """

    failure_threshold: int = attrs.field(default=5, validator=_at_least_one)
    open_s: float = attrs.field(default=60.0, validator=_positive)
    success_threshold: int = attrs.field(default=2, validator=_at_least_one)
    half_open_permits: int = attrs.field(default=1, validator=_at_least_one)
    half_open_max_s: float = attrs.field(default=20.0, validator=_positive)
    half_open_retry_hint_s: float = attrs.field(default=1.0, validator=_positive)
    open_backoff_multiplier: float = attrs.field(default=1.0, validator=_multiplier)
    max_open_s: float = attrs.field(default=60.0, validator=_positive)
    mode: Mode = attrs.field(default="consecutive", validator=_one_of("consecutive", "rate"))
    window_type: WindowType = attrs.field(default="count", validator=_one_of("count", "time"))
    window_size: int = attrs.field(default=100, validator=_at_least_one)
    minimum_calls: int = attrs.field(default=20, validator=_at_least_one)
    failure_rate_threshold: float = attrs.field(default=50.0, validator=_percent)
    slow_call_duration_s: float = attrs.field(default=5.0, validator=_positive)
    slow_call_rate_threshold: float = attrs.field(default=100.0, validator=_percent)
    permitted_calls_in_half_open: int = attrs.field(default=10, validator=_at_least_one)
    count_slow_as_failure: bool = attrs.field(default=False, validator=_boolean)

    def __attrs_post_init__(self) -> None:
        if self.max_open_s < self.open_s:
            raise InvalidField("max_open_s", f"must be >= open_s ({self.open_s}), got {self.max_open_s}")
        if self.mode == "rate" and self.count_slow_as_failure:
            raise InvalidField(
                "count_slow_as_failure",
                "applies to consecutive mode only; rate mode uses slow_call_rate_threshold",
            )
        if self.mode == "consecutive" and self.half_open_permits > self.success_threshold:
            logger.warning(
                "circuit breaker config: half_open_permits (%d) > success_threshold (%d); "
                "probes beyond success_threshold can only re-open the breaker",
                self.half_open_permits,
                self.success_threshold,
            )

    def open_duration(self, open_count: int) -> float:
        """How long the ``open_count``-th open in a row lasts: ``min(open_s * mult^(n-1), max_open_s)``."""
        grown = self.open_s * self.open_backoff_multiplier ** max(open_count - 1, 0)
        return float(min(grown, self.max_open_s))


@attrs.frozen
class BreakerSnapshot:
    """A breaker's state at one instant, for ``omnichannel breaker status`` and metrics."""

    name: str
    state: State
    failures: int
    """Consecutive recorded failures (CLOSED / METRICS_ONLY); always 0 in rate mode."""
    probe_successes: int
    in_flight: int
    """Half-open probes admitted and not yet settled."""
    open_remaining_s: float | None
    """Seconds until OPEN turns HALF_OPEN; ``None`` when not OPEN."""
    open_count: int
    generation: int
    not_permitted: int
    """Calls refused since the breaker was created."""
    mode: str = "consecutive"
    failure_rate: float | None = None
    """Rate mode: percent of failed calls in the current window; ``None`` below its minimum calls."""
    slow_call_rate: float | None = None
    """Rate mode: percent of slow calls in the current window; ``None`` below its minimum calls."""
    calls_in_window: int = 0
    """Rate mode: calls recorded in the current window (CLOSED, HALF_OPEN; kept through OPEN)."""

    @property
    def gauge(self) -> int:
        return self.state.gauge
