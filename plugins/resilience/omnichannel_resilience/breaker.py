"""The circuit breaker: one per ``(channel, sender)``, in memory, in consecutive or rate mode.

Semantics follow ``shared/resilience.md`` §1.3 (states, transition table, concurrency model)
and §1.4 (what counts as failure):

- Outcomes are three-way (plus throttling): :func:`classify` maps an attempt's exception to
  SUCCESS, FAILURE, IGNORED or THROTTLED. IGNORED and THROTTLED never count; they only give a
  half-open permit back.
- Half-open is a *permit*, not a state check: at most ``half_open_permits`` probes are in flight
  (``permitted_calls_in_half_open`` in rate mode).
- Every transition increments a generation number. A :class:`Permit` carries the generation it was
  admitted under; outcomes from an older generation change nothing (no transition, no new
  ``open_until``, no released slot of a newer half-open phase).
- The state is computed on read: ``OPEN`` becomes ``HALF_OPEN`` as soon as
  ``clock.monotonic() >= open_until``, whether a call arrives or someone reads :attr:`state`.

Two modes (``BreakerConfig.mode``). ``consecutive`` (default, legacy): ``failure_threshold``
consecutive failures open it, ``success_threshold`` probe successes close it, one probe failure
re-opens it. ``rate`` (resilience4j): CLOSED records SUCCESS/FAILURE and slowness (``duration >
slow_call_duration_s``, from admission) in a sliding window (:mod:`omnichannel_resilience.windows`)
and opens once it holds ``minimum_calls`` calls and a rate reaches its threshold; HALF_OPEN admits
``permitted_calls_in_half_open`` probes and, after ``min(minimum_calls, permitted)`` outcomes,
closes below both thresholds or re-opens at or above either. METRICS_ONLY records without
transitions and reports each crossed threshold once (log, ``on_threshold``). Generation fencing,
cancellation and the ``half_open_max_s`` guard apply in both modes.

All state changes are short synchronous sections guarded by a re-entrant lock that is never held
across I/O, so the breaker is safe on one event loop and from a thread pool alike. Listeners
(``on_transition``, ``on_threshold``) run inside that section: they must not block.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

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

from .windows import CountWindow, SlidingWindow, TimeWindow

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "CircuitBreaker",
    "Outcome",
    "Permit",
    "State",
    "ThresholdKind",
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
    """A circuit breaker in consecutive or rate mode (§1.3.2), in memory.

    :param name: the breaker's key, e.g. ``whatsapp:106540352242922``.
    :param config: mode, thresholds and durations.
    :param clock: only ``monotonic()`` is used.
    :param on_transition: called ``(previous, current)`` once per transition, in order; an
        exception it raises is logged and never changes the breaker or the caller's outcome.
    :param on_threshold: called with the :data:`ThresholdKind` crossed, just before the transition
        to OPEN it causes in CLOSED, and once per kind per METRICS_ONLY phase (where nothing
        transitions). Errors are logged like those of ``on_transition``.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Clock,
        on_transition: Callable[[State, State], None] | None = None,
        *,
        on_threshold: Callable[[ThresholdKind], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._on_threshold = on_threshold
        self._lock = threading.RLock()
        self._state = State.CLOSED
        self._generation = 0
        self._failures = 0
        self._probe_successes = 0
        self._probes: list[float] = []  # admission times of the half-open probes in flight
        self._open_count = 0
        self._open_until = 0.0
        self._not_permitted = 0
        # Decided once: the consecutive happy path must not pay for rate mode.
        self._rate = config.mode == "rate"
        self._slow_as_failure = config.count_slow_as_failure
        self._probe_limit = config.permitted_calls_in_half_open if self._rate else config.half_open_permits
        self._closed_window: SlidingWindow = (
            TimeWindow(config.window_size, config.minimum_calls)
            if config.window_type == "time"
            else CountWindow(config.window_size, config.minimum_calls)
        )
        permitted = config.permitted_calls_in_half_open
        self._half_open_window = CountWindow(permitted, min(config.minimum_calls, permitted))
        self._window: SlidingWindow = self._closed_window  # the window of the current phase (rate mode)
        self._published: set[ThresholdKind] = set()  # thresholds reported in this METRICS_ONLY phase

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
            failure_rate = slow_call_rate = None
            calls = 0
            if self._rate:
                window = self._window
                totals = window.totals(now)
                calls = totals.calls
                rates = totals.rates(window.minimum_calls)
                if rates is not None:
                    failure_rate, slow_call_rate = rates
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
                mode=self.config.mode,
                failure_rate=failure_rate,
                slow_call_rate=slow_call_rate,
                calls_in_window=calls,
            )

    # -- admission ----------------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """Admit one attempt or raise :class:`CircuitOpenError` (rows 1, 6-9).

        ``retry_after`` on the error is the time until half-open (OPEN), the half-open retry hint
        (all probe slots taken), or ``open_s`` (FORCED_OPEN: an operator has to act).
        """
        with self._lock:
            now = self._clock.monotonic()
            if self._state is State.CLOSED:  # the hot path: nothing moves a closed breaker by time
                return Permit(self, self._generation, now, probe=False)
            self._refresh(now)
            state = self._state
            if state.admits_all:
                return Permit(self, self._generation, now, probe=False)
            if state is State.HALF_OPEN and len(self._probes) < self._probe_limit:
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
            self._use_window(self._closed_window)
            self._published.clear()
            self._open_count = 0
            self._transition(target)

    # -- internals (called with the lock held) -------------------------------------------------------

    def _clear_counters(self) -> None:
        self._failures = 0
        self._probe_successes = 0
        self._probes.clear()

    def _use_window(self, window: SlidingWindow) -> None:
        window.clear()
        self._window = window

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

    def _publish(self, kind: ThresholdKind) -> None:
        if self._on_threshold is not None:
            try:
                self._on_threshold(kind)
            except Exception:
                logger.exception("on_threshold listener of circuit breaker %r failed", self.name)

    def _open(self, now: float) -> None:
        # Rate mode keeps the window that tripped until HALF_OPEN, so a snapshot shows why (r4j).
        self._open_count += 1
        self._open_until = now + self.config.open_duration(self._open_count)
        self._clear_counters()
        self._transition(State.OPEN)

    def _close(self) -> None:
        self._clear_counters()  # row 11
        self._use_window(self._closed_window)
        self._open_count = 0
        self._transition(State.CLOSED)

    def _refresh(self, now: float) -> None:
        """Time-driven transitions: rows 7 and 14, each dated when it became due (reads are lazy)."""
        while True:
            if self._state is State.OPEN and now >= self._open_until:
                self._clear_counters()
                self._use_window(self._half_open_window)
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
            if (
                outcome is Outcome.SUCCESS
                and self._state is State.CLOSED
                and permit.generation == self._generation
                and not self._rate
                and not self._slow_as_failure
            ):
                self._failures = 0  # row 4, the hot path
                return
            now = self._clock.monotonic()
            self._refresh(now)
            if permit.generation != self._generation:
                return  # row 15: stale, never a transition nor a released slot of a newer phase
            if (
                self._slow_as_failure
                and outcome is Outcome.SUCCESS
                and now - permit.admitted_at > self.config.slow_call_duration_s
            ):
                outcome = Outcome.FAILURE
            state = self._state
            if state is State.HALF_OPEN:
                if self._rate:
                    self._settle_rate_probe(permit, outcome, now)
                else:
                    self._settle_probe(permit, outcome, now)
            elif state in (State.CLOSED, State.METRICS_ONLY):
                if self._rate:
                    self._settle_rate(permit, outcome, now, state)
                elif outcome is Outcome.SUCCESS:
                    self._failures = 0  # row 4
                elif outcome is Outcome.FAILURE:
                    self._failures += 1  # row 2
                    if self._failures >= self.config.failure_threshold:
                        why = f"{self._failures} consecutive failures"
                        self._exceeded(("failure_threshold",), state, now, why)  # row 3
            # DISABLED records nothing; OPEN/FORCED_OPEN never issue permits of their generation.

    def _settle_probe(self, permit: Permit, outcome: Outcome, now: float) -> None:
        self._probes.remove(permit.admitted_at)
        if outcome is Outcome.FAILURE:
            self._open(now)  # row 12
            return
        if outcome is Outcome.SUCCESS:
            self._probe_successes += 1
            if self._probe_successes >= self.config.success_threshold:
                self._close()  # row 11
                return
        # rows 10 and 13: still half-open, the slot is free again.

    # -- rate mode -----------------------------------------------------------------------------------

    def _record(self, permit: Permit, outcome: Outcome, now: float) -> tuple[float, float] | None:
        """Put a SUCCESS/FAILURE into the current window; the window's rates afterwards, if any."""
        window = self._window
        slow = now - permit.admitted_at > self.config.slow_call_duration_s
        totals = window.record(now, failed=outcome is Outcome.FAILURE, slow=slow)
        return totals.rates(window.minimum_calls)

    def _crossed(self, rates: tuple[float, float]) -> tuple[ThresholdKind, ...]:
        crossed: tuple[ThresholdKind, ...] = ()
        if rates[0] >= self.config.failure_rate_threshold:
            crossed += ("failure_rate",)
        if rates[1] >= self.config.slow_call_rate_threshold:
            crossed += ("slow_call_rate",)
        return crossed

    def _exceeded(self, kinds: tuple[ThresholdKind, ...], state: State, now: float, why: str) -> None:
        """Thresholds ``kinds`` were crossed in CLOSED (open, row 3) or METRICS_ONLY (report once)."""
        if state is State.CLOSED:
            if self._rate:
                logger.warning("circuit breaker %r opens: %s", self.name, why)
            for kind in kinds:
                self._publish(kind)
            self._open(now)
            return
        fresh = tuple(kind for kind in kinds if kind not in self._published)
        if fresh:
            self._published.update(fresh)
            logger.warning("circuit breaker %r (metrics only) would open: %s", self.name, why)
            for kind in fresh:
                self._publish(kind)

    def _settle_rate(self, permit: Permit, outcome: Outcome, now: float, state: State) -> None:
        if outcome is not Outcome.SUCCESS and outcome is not Outcome.FAILURE:
            return  # row 5
        rates = self._record(permit, outcome, now)
        if rates is not None and (crossed := self._crossed(rates)):
            self._exceeded(crossed, state, now, _why(rates))

    def _settle_rate_probe(self, permit: Permit, outcome: Outcome, now: float) -> None:
        self._probes.remove(permit.admitted_at)
        if outcome is not Outcome.SUCCESS and outcome is not Outcome.FAILURE:
            return  # row 13: the slot is free again
        if outcome is Outcome.SUCCESS:
            self._probe_successes += 1
        rates = self._record(permit, outcome, now)
        if rates is None:
            return  # fewer than min(minimum_calls, permitted) outcomes: no decision yet
        if self._crossed(rates):
            logger.warning("circuit breaker %r re-opens: %s", self.name, _why(rates))
            self._open(now)
        else:
            self._close()


def _why(rates: tuple[float, float]) -> str:
    return f"failure_rate {rates[0]:.1f}%, slow_call_rate {rates[1]:.1f}%"
