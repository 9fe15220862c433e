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

This module holds the state machine (:class:`CircuitBreaker` and its :class:`Permit`). The values
it reads and reports (:class:`Outcome`, :func:`classify`, :class:`State`, :class:`BreakerConfig`,
:class:`BreakerSnapshot`) are defined in ``_breaker_types`` (with the Redis store as their
other user) and imported from here, their public home.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from omnichannel import CircuitOpenError, Clock

from ._breaker_types import (
    BreakerConfig,
    BreakerSnapshot,
    Outcome,
    State,
    ThresholdKind,
    classify,
)
from ._breaker_types import Mode as Mode
from ._breaker_types import WindowType as WindowType
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
