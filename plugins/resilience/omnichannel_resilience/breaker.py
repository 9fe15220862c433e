"""The circuit breaker: one per ``(channel, sender)``, consecutive mode, in memory.

Semantics follow ``shared/resilience.md`` §1.3 (states, transition table, concurrency model)
and §1.4 (what counts as failure):

- Outcomes are three-way (plus throttling): :func:`classify` maps an attempt's exception to
  SUCCESS, FAILURE, IGNORED or THROTTLED. IGNORED and THROTTLED never count; they only give a
  half-open permit back.
- Half-open is a *permit*, not a state check: at most ``half_open_permits`` probes are in flight.
- Every transition increments a generation number. A :class:`Permit` carries the generation it was
  admitted under; outcomes from an older generation change nothing (no transition, no new
  ``open_until``, no released slot of a newer half-open phase).
- The state is computed on read: ``OPEN`` becomes ``HALF_OPEN`` as soon as
  ``clock.monotonic() >= open_until``, whether a call arrives or someone reads :attr:`state`.

All state changes are short synchronous sections guarded by a re-entrant lock that is never held
across I/O, so the breaker is safe on one event loop and from a thread pool alike.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import attrs

from omnichannel import (
    CircuitOpenError,
    Clock,
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
    "CircuitBreaker",
    "Outcome",
    "Permit",
    "State",
    "classify",
]

logger = logging.getLogger(__name__)


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


def classify(exc: BaseException | None) -> Outcome:
    """The breaker outcome of an attempt that raised ``exc`` (``None``: it returned normally).

    - ``None`` → SUCCESS.
    - :class:`RateLimitedError` → THROTTLED (checked before its base class, transient).
    - :class:`CircuitOpenError`, and anything that is not an :class:`Exception`
      (``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``) → IGNORED.
    - :class:`TransientDeliveryError`, :class:`SenderUnavailableError` → FAILURE.
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
    if isinstance(exc, TransientDeliveryError | SenderUnavailableError):
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


@attrs.frozen
class BreakerConfig:
    """``resilience.circuit_breaker.*`` in consecutive mode; the defaults are the legacy profile (§1.3).

    :param failure_threshold: consecutive recorded failures that open the breaker.
    :param open_s: how long it stays open before admitting a probe (legacy "timeout").
    :param success_threshold: consecutive probe successes that close it.
    :param half_open_permits: probes admitted concurrently in half-open.
    :param half_open_max_s: a probe outstanding this long without a decision re-opens the breaker.
    :param half_open_retry_hint_s: ``retry_after`` given to callers refused while probes run.
    :param open_backoff_multiplier: > 1 grows the open time on each re-open without a close in between.
    :param max_open_s: cap for the grown open time.
    """

    failure_threshold: int = attrs.field(default=5, validator=_at_least_one)
    open_s: float = attrs.field(default=60.0, validator=_positive)
    success_threshold: int = attrs.field(default=2, validator=_at_least_one)
    half_open_permits: int = attrs.field(default=1, validator=_at_least_one)
    half_open_max_s: float = attrs.field(default=20.0, validator=_positive)
    half_open_retry_hint_s: float = attrs.field(default=1.0, validator=_positive)
    open_backoff_multiplier: float = attrs.field(default=1.0, validator=_multiplier)
    max_open_s: float = attrs.field(default=60.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_open_s < self.open_s:
            raise InvalidField("max_open_s", f"must be >= open_s ({self.open_s}), got {self.max_open_s}")

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
    """Consecutive recorded failures (CLOSED / METRICS_ONLY)."""
    probe_successes: int
    in_flight: int
    """Half-open probes admitted and not yet settled."""
    open_remaining_s: float | None
    """Seconds until OPEN turns HALF_OPEN; ``None`` when not OPEN."""
    open_count: int
    generation: int
    not_permitted: int
    """Calls refused since the breaker was created."""

    @property
    def gauge(self) -> int:
        return self.state.gauge


class Permit:
    """Admission of one attempt; settle it exactly once with :meth:`record` or :meth:`release`.

    Also a context manager: on exit the exception (or its absence) is classified and recorded,
    unless the permit was settled inside the block. Settling twice is a no-op.
    """

    __slots__ = ("_breaker", "_settled", "admitted_at", "generation", "probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, admitted_at: float, *, probe: bool) -> None:
        self._breaker = breaker
        self.generation = generation
        """The breaker generation this attempt was admitted under."""
        self.admitted_at = admitted_at
        """``clock.monotonic()`` at admission."""
        self.probe = probe
        """Whether this permit holds one of the half-open probe slots."""
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    def record(self, outcome: Outcome) -> None:
        """Report the attempt's outcome (and give back a half-open slot)."""
        if self._settled:
            return
        self._settled = True
        self._breaker._settle(self, outcome)

    def release(self) -> None:
        """Give the permit back without any outcome (cancelled, or never attempted)."""
        self.record(Outcome.IGNORED)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.record(classify(exc))

    def __repr__(self) -> str:
        return f"<Permit gen={self.generation} probe={self.probe} settled={self._settled}>"


class CircuitBreaker:
    """A consecutive-mode circuit breaker (§1.3.2), in memory.

    :param name: the breaker's key, e.g. ``whatsapp:106540352242922``.
    :param config: thresholds and durations.
    :param clock: only ``monotonic()`` is used.
    :param on_transition: called ``(previous, current)`` once per transition, in order; an
        exception it raises is logged and never changes the breaker or the caller's outcome.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Clock,
        on_transition: Callable[[State, State], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.RLock()
        self._state = State.CLOSED
        self._generation = 0
        self._failures = 0
        self._probe_successes = 0
        self._probes: list[float] = []  # admission times of the half-open probes in flight
        self._open_count = 0
        self._open_until = 0.0
        self._not_permitted = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    # -- reading ------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; time-driven transitions happen here too (§0 item 5)."""
        with self._lock:
            self._refresh(self._clock.monotonic())
            return self._state

    @property
    def generation(self) -> int:
        with self._lock:
            self._refresh(self._clock.monotonic())
            return self._generation

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            now = self._clock.monotonic()
            self._refresh(now)
            return BreakerSnapshot(
                name=self.name,
                state=self._state,
                failures=self._failures,
                probe_successes=self._probe_successes,
                in_flight=len(self._probes),
                open_remaining_s=self._open_until - now if self._state is State.OPEN else None,
                open_count=self._open_count,
                generation=self._generation,
                not_permitted=self._not_permitted,
            )

    # -- admission ----------------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """Admit one attempt or raise :class:`CircuitOpenError` (rows 1, 6-9).

        ``retry_after`` on the error is the time until half-open (OPEN), the half-open retry hint
        (all probe slots taken), or ``open_s`` (FORCED_OPEN: an operator has to act).
        """
        with self._lock:
            now = self._clock.monotonic()
            self._refresh(now)
            state = self._state
            if state.admits_all:
                return Permit(self, self._generation, now, probe=False)
            if state is State.HALF_OPEN and len(self._probes) < self.config.half_open_permits:
                self._probes.append(now)
                return Permit(self, self._generation, now, probe=True)
            self._not_permitted += 1
            if state is State.OPEN:
                retry_after = self._open_until - now
                detail = f"circuit breaker {self.name!r} is open"
            elif state is State.HALF_OPEN:
                retry_after = self.config.half_open_retry_hint_s
                detail = f"circuit breaker {self.name!r} is half-open and its probe slots are taken"
            else:
                retry_after = self.config.open_s
                detail = f"circuit breaker {self.name!r} is forced open"
            raise CircuitOpenError(detail, retry_after=retry_after)

    # -- admin --------------------------------------------------------------------------------------

    def force_open(self) -> None:
        """Refuse every call until :meth:`reset` (row 16)."""
        self._admin(State.FORCED_OPEN)

    def disable(self) -> None:
        """Admit every call and record nothing (row 17)."""
        self._admin(State.DISABLED)

    def metrics_only(self) -> None:
        """Admit every call, keep counting, never transition (row 17)."""
        self._admin(State.METRICS_ONLY)

    def reset(self) -> None:
        """Admin close: back to CLOSED with all counters cleared (row 18)."""
        self._admin(State.CLOSED)

    def _admin(self, target: State) -> None:
        with self._lock:
            self._refresh(self._clock.monotonic())
            self._clear_counters()
            self._open_count = 0
            self._transition(target)

    # -- internals (called with the lock held) -------------------------------------------------------

    def _clear_counters(self) -> None:
        self._failures = 0
        self._probe_successes = 0
        self._probes.clear()

    def _transition(self, target: State) -> None:
        previous = self._state
        self._state = target
        self._generation += 1
        if previous is target:
            return
        if self._on_transition is not None:
            try:
                self._on_transition(previous, target)
            except Exception:
                logger.exception("on_transition listener of circuit breaker %r failed", self.name)

    def _open(self, now: float) -> None:
        self._open_count += 1
        self._open_until = now + self.config.open_duration(self._open_count)
        self._clear_counters()
        self._transition(State.OPEN)

    def _refresh(self, now: float) -> None:
        """Time-driven transitions: rows 7 and 14, each dated when it became due (reads are lazy)."""
        while True:
            if self._state is State.OPEN and now >= self._open_until:
                self._clear_counters()
                self._transition(State.HALF_OPEN)
                continue
            if self._state is State.HALF_OPEN and self._probes:
                deadline = self._probes[0] + self.config.half_open_max_s
                if now >= deadline:
                    logger.warning("circuit breaker %r re-opens: half_open_timeout", self.name)
                    self._open(deadline)
                    continue
            return

    def _settle(self, permit: Permit, outcome: Outcome) -> None:
        with self._lock:
            now = self._clock.monotonic()
            self._refresh(now)
            if permit.generation != self._generation:
                return  # row 15: stale, never a transition nor a released slot of a newer phase
            state = self._state
            if state is State.HALF_OPEN:
                self._settle_probe(permit, outcome, now)
            elif state in (State.CLOSED, State.METRICS_ONLY):
                if outcome is Outcome.SUCCESS:
                    self._failures = 0  # row 4
                elif outcome is Outcome.FAILURE:
                    self._failures += 1  # row 2
                    if state is State.CLOSED and self._failures >= self.config.failure_threshold:
                        self._open(now)  # row 3
            # DISABLED records nothing; OPEN/FORCED_OPEN never issue permits of their generation.

    def _settle_probe(self, permit: Permit, outcome: Outcome, now: float) -> None:
        self._probes.remove(permit.admitted_at)
        if outcome is Outcome.FAILURE:
            self._open(now)  # row 12
            return
        if outcome is Outcome.SUCCESS:
            self._probe_successes += 1
            if self._probe_successes >= self.config.success_threshold:
                self._clear_counters()  # row 11
                self._open_count = 0
                self._transition(State.CLOSED)
                return
        # rows 10 and 13: still half-open, the slot is free again.
