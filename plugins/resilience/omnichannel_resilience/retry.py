"""In-process retries on python-backoff, with a retry budget and a per-message deadline.

Semantics follow ``shared/resilience.md`` §0 (decisions 6 and 7), §1.5 (retry policy), §1.6 (retry
budget) and §1.8 (deadlines):

- :class:`RetryConfig`: ``max_attempts`` counts attempts in total (the first included). The delay
  before attempt ``n + 1`` is ``min(initial_delay_s * multiplier^(n-1), max_delay_s)``, jittered
  *after* the cap, and a server-given ``retry_after`` is a floor that jitter never goes below.
- :func:`retryable`: only :class:`TransientDeliveryError` (including :class:`RateLimitedError`) is
  retried in-process; never :class:`CircuitOpenError`, never an outcome of certainty ``unknown``
  unless the caller opts in, never ``CancelledError`` or anything that is not an :class:`Exception`.
- :class:`RetryBudget`: Envoy-style; retries may add at most ``ratio`` on top of first attempts in a
  sliding window, with a floor of ``min_retries_per_window``.
- :func:`call_with_retries`: gives up (re-raising the last error unchanged) when the error is not
  retryable, attempts are exhausted, the budget is exhausted, the next wait exceeds
  ``max_retry_after_in_process_s`` or would leave less than ``min_attempt_time_s`` before the
  deadline. The caller then defers the message through the queue. :func:`retry_after` is the same
  loop for a caller that made the first attempt itself (the middleware, on its fast path).

All times come from the injected :class:`~omnichannel.Clock` and all randomness from the injected
:class:`random.Random`, so tests are exact on virtual time.
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Literal, TypeVar

import attrs
import backoff
from backoff.types import Details

from omnichannel import (
    Certainty,
    CircuitOpenError,
    Clock,
    DeliveryError,
    InvalidField,
    TransientDeliveryError,
)

__all__ = [
    "Jitter",
    "OnRetry",
    "RetryBudget",
    "RetryConfig",
    "call_with_retries",
    "jittered_delays",
    "retry_after",
    "retryable",
    "worth_retrying",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Jitter = Literal["full", "equal", "none"]
_JITTERS: frozenset[str] = frozenset({"full", "equal", "none"})

OnRetry = Callable[[int, float, BaseException], Awaitable[None] | None]
"""``on_retry(attempt, delay_s, exc)``: attempt ``attempt`` failed with ``exc``; sleeping ``delay_s``."""


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidField(attribute.name, f"must be an integer >= 1, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not _is_number(value) or not value > 0:
        raise InvalidField(attribute.name, f"must be > 0, got {value!r}")


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(instance, attribute, value)


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not _is_number(value) or not value >= 0:
        raise InvalidField(attribute.name, f"must be >= 0, got {value!r}")


def _multiplier(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not _is_number(value) or not value >= 1:
        raise InvalidField(attribute.name, f"must be >= 1, got {value!r}")


def _jitter(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in _JITTERS:
        raise InvalidField(attribute.name, f"must be one of 'full', 'equal', 'none', got {value!r}")


@attrs.frozen
class RetryConfig:
    """``resilience.retry.*`` (§1.5). Attempt counts and delays are the legacy profile's numbers.

    ``jitter`` defaults to ``full`` (the spec's recommendation: many workers retry against the same
    per-number limit); the legacy profile and deterministic tests use ``none``.
    """

    max_attempts: int = attrs.field(default=3, validator=_at_least_one)
    """Attempts in total, the first included (backoff's ``max_tries``)."""
    initial_delay_s: float = attrs.field(default=1.0, validator=_positive)
    """The delay before the second attempt, before jitter."""
    multiplier: float = attrs.field(default=2.0, validator=_multiplier)
    max_delay_s: float = attrs.field(default=10.0, validator=_positive)
    """Cap on the computed delay, applied *before* jitter (so jitter survives at the cap)."""
    jitter: Jitter = attrs.field(default="full", validator=_jitter)
    """``full`` = U(0, d); ``equal`` = d/2 + U(0, d/2); ``none`` = d."""
    max_retry_after_in_process_s: float | None = attrs.field(default=None, validator=_positive_or_none)
    """Longer waits (server-given or computed) give up in-process so the message is deferred.
    ``None``: ``max_delay_s``."""
    deadline_s: float | None = attrs.field(default=30.0, validator=_positive_or_none)
    """Per message, in-process: attempts plus sleeps of one delivery. ``None``: no deadline."""
    min_attempt_time_s: float = attrs.field(default=1.0, validator=_non_negative)
    """Do not start an attempt with less time than this left before the deadline."""

    def __attrs_post_init__(self) -> None:
        if self.max_delay_s < self.initial_delay_s:
            raise InvalidField(
                "max_delay_s",
                f"must be >= initial_delay_s ({self.initial_delay_s!r}), got {self.max_delay_s!r}",
            )

    @property
    def max_in_process_wait_s(self) -> float:
        """The longest wait slept in-process (``max_retry_after_in_process_s`` or ``max_delay_s``)."""
        if self.max_retry_after_in_process_s is None:
            return self.max_delay_s
        return self.max_retry_after_in_process_s


def retryable(exc: BaseException, *, retry_unknown: bool = False) -> bool:
    """Whether ``exc`` may be retried in-process (§1.4, §1.5, §1.10).

    - anything that is not an :class:`Exception` (``CancelledError``, ``KeyboardInterrupt``) → no;
    - :class:`CircuitOpenError` → no: an open breaker ends the in-process loop (defer with its
      ``retry_after``);
    - :class:`TransientDeliveryError` (including :class:`RateLimitedError`) → yes, unless its
      certainty is ``unknown`` (a resend may duplicate) and ``retry_unknown`` is false;
    - everything else → no.
    """
    if not isinstance(exc, Exception):
        return False
    if isinstance(exc, CircuitOpenError):
        return False
    if isinstance(exc, TransientDeliveryError):
        return retry_unknown or exc.certainty is not Certainty.UNKNOWN
    return False


def _server_floor(exc: BaseException | None) -> float:
    if isinstance(exc, DeliveryError) and exc.retry_after is not None and exc.retry_after > 0:
        return float(exc.retry_after)
    return 0.0


def jittered_delays(config: RetryConfig, rng: random.Random) -> Generator[float, BaseException | None, None]:
    """A python-backoff wait generator: capped exponential delays, our jitter, ``retry_after`` as a floor.

    It follows backoff's protocol: a bare priming ``yield`` first (backoff sends ``None`` and
    discards what comes back; §4.2 item 21), then each ``send(exc)`` returns the wait after the
    failure ``exc``, ``max(jitter(min(initial * multiplier^(n-1), max_delay)), exc.retry_after)``.
    """
    exc = yield 0.0  # priming value, discarded
    base = float(config.initial_delay_s)
    while True:
        capped = min(base, config.max_delay_s)
        if config.jitter == "full":
            jittered = rng.uniform(0.0, capped)
        elif config.jitter == "equal":
            jittered = capped / 2 + rng.uniform(0.0, capped / 2)
        else:
            jittered = capped
        exc = yield max(jittered, _server_floor(exc))
        if base < config.max_delay_s:  # stop growing at the cap (no float overflow on long runs)
            base *= config.multiplier


class RetryBudget:
    """Envoy-style retry budget for one sender (§1.6), on ``clock.monotonic()``.

    First attempts deposit, retries withdraw. A retry is allowed while
    ``retries_in_window < max(min_retries_per_window, floor(ratio * first_attempts_in_window))``.
    The window is kept as :data:`BUCKETS` counters of ``window_s / BUCKETS`` seconds each (the
    spec's ten one-second buckets): memory does not grow with traffic, a first attempt costs one
    increment, and a bucket leaves the window as a whole.
    """

    BUCKETS = 10

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_window: int = 3,
        window_s: float = 10.0,
        *,
        clock: Clock,
    ) -> None:
        if not _is_number(ratio) or not 0 <= ratio <= 1:
            raise InvalidField("ratio", f"must be between 0 and 1, got {ratio!r}")
        floor = min_retries_per_window
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise InvalidField("min_retries_per_window", f"must be an integer >= 0, got {floor!r}")
        if not _is_number(window_s) or not window_s > 0:
            raise InvalidField("window_s", f"must be > 0, got {window_s!r}")
        self.ratio = ratio
        self.min_retries_per_window = min_retries_per_window
        self.window_s = window_s
        self._clock = clock
        self._width = window_s / self.BUCKETS
        # Per bucket: the number of the period it counts, first attempts, retries.
        self._period = [-1] * self.BUCKETS
        self._attempts = [0] * self.BUCKETS
        self._retries = [0] * self.BUCKETS
        self._lock = threading.Lock()

    def _bucket(self, now: float | None = None) -> tuple[int, int]:
        """The current period and its bucket, emptied if it held an older period."""
        period = int((self._clock.monotonic() if now is None else now) // self._width)
        index = period % self.BUCKETS
        if self._period[index] != period:
            self._period[index] = period
            self._attempts[index] = self._retries[index] = 0
        return period, index

    def _totals(self) -> tuple[int, int]:
        period, _ = self._bucket()
        live = [i for i, p in enumerate(self._period) if period - p < self.BUCKETS]
        return sum(self._attempts[i] for i in live), sum(self._retries[i] for i in live)

    def _allowed(self, attempts: int) -> int:
        return max(self.min_retries_per_window, int(self.ratio * attempts))

    def allowed(self) -> int:
        """How many retries the current window allows in total."""
        with self._lock:
            return self._allowed(self._totals()[0])

    def can_retry(self) -> bool:
        """Whether one more retry fits in the window (does not withdraw; see :meth:`record_retry`)."""
        with self._lock:
            attempts, retries = self._totals()
            return retries < self._allowed(attempts)

    def record_attempt(self, now: float | None = None) -> None:
        """A first attempt of a message reached the network.

        :param now: ``clock.monotonic()``, when the caller just read it.
        """
        with self._lock:
            self._attempts[self._bucket(now)[1]] += 1

    def record_retry(self) -> None:
        """A later attempt (in-process retry or queue redelivery) was granted."""
        with self._lock:
            self._retries[self._bucket()[1]] += 1

    def try_acquire(self) -> bool:
        """:meth:`can_retry` and :meth:`record_retry` as one atomic step."""
        with self._lock:
            attempts, retries = self._totals()
            if retries >= self._allowed(attempts):
                return False
            self._retries[self._bucket()[1]] += 1
            return True


def _no_wait() -> Generator[float, Any, None]:
    """backoff's wait generator: always 0, so backoff's own ``asyncio.sleep`` is a bare yield."""
    while True:
        yield 0.0


async def call_with_retries(
    sender: Callable[[], Awaitable[T]],
    *,
    config: RetryConfig,
    clock: Clock,
    rng: random.Random,
    budget: RetryBudget | None = None,
    on_retry: OnRetry | None = None,
    retry_unknown: bool = False,
    stop: Callable[[BaseException], bool] | None = None,
    deadline: float | None = None,
) -> T:
    """Await ``sender()`` up to ``config.max_attempts`` times; return its result or re-raise its last error.

    The error that ends the loop is re-raised unchanged (the same object), whatever the reason:
    not :func:`retryable`, attempts exhausted, budget exhausted, wait too long for in-process, or
    the deadline. ``CancelledError`` (during an attempt or a sleep) propagates at once and no
    further attempt is made. ``on_retry(attempt, delay_s, exc)`` is awaited before each sleep; an
    exception it raises is logged and does not stop the retries. ``stop(exc)`` returning true ends
    the loop after a retryable error too (the middleware: this failure opened the breaker).
    ``deadline`` (``clock.monotonic()`` time) is the caller's, when it already computed
    ``now + config.deadline_s``.
    """
    if deadline is None and config.deadline_s is not None:
        deadline = clock.monotonic() + config.deadline_s
    if budget is not None:
        budget.record_attempt()
    # The first attempt runs on its own: most sends succeed, and they should not pay for building
    # backoff's machinery. A failure worth retrying is handed to backoff as its first try (replayed).
    try:
        return await sender()
    except Exception as exc:
        if not worth_retrying(exc, config, retry_unknown=retry_unknown):
            raise
        first = exc
    return await retry_after(
        first,
        sender,
        config=config,
        clock=clock,
        rng=rng,
        budget=budget,
        on_retry=on_retry,
        retry_unknown=retry_unknown,
        stop=stop,
        deadline=deadline,
    )


def worth_retrying(exc: Exception, config: RetryConfig, *, retry_unknown: bool = False) -> bool:
    """Whether the failure of a first attempt goes on to :func:`retry_after` (else it is re-raised)."""
    return config.max_attempts > 1 and retryable(exc, retry_unknown=retry_unknown)


async def retry_after(
    first: Exception,
    sender: Callable[[], Awaitable[T]],
    *,
    config: RetryConfig,
    clock: Clock,
    rng: random.Random,
    budget: RetryBudget | None = None,
    on_retry: OnRetry | None = None,
    retry_unknown: bool = False,
    stop: Callable[[BaseException], bool] | None = None,
    deadline: float | None = None,
) -> T:
    """The retries of :func:`call_with_retries` after its first attempt failed with ``first``.

    For a caller that made the first attempt itself (and recorded it in ``budget``): the loop
    goes on exactly as :func:`call_with_retries` would, ``first`` counting as attempt 1, and
    ``sender()`` makes each later attempt. ``deadline`` is ``clock.monotonic()`` time, ``None``
    for none.
    """
    # Why backoff does not sleep itself: python-backoff 3.0 sleeps with ``asyncio.sleep`` and has no
    # sleep or clock injection (§1.5, §4.2 item 23), and its ``giveup`` runs *before* the wait
    # generator is asked for the next delay, so giveup could not see that delay. We therefore drive
    # our own wait generator (:func:`jittered_delays`, backoff's protocol) from ``giveup``, which
    # decides with the delay in hand (deadline, in-process cap, budget), and give backoff a generator
    # that always yields 0. ``on_backoff`` then awaits ``on_retry`` and ``clock.sleep(delay)``;
    # backoff's own ``asyncio.sleep(0)`` is only a yield to the loop. backoff still owns the loop:
    # attempt counting (``max_tries``), handler order, re-raising the give-up exception unchanged, and
    # letting ``CancelledError`` (not an ``Exception``) through. ``max_time`` is not used: it reads
    # ``time.monotonic``, not our clock.
    replay: Exception | None = first
    max_wait = config.max_in_process_wait_s
    delays = jittered_delays(config, rng)
    next(delays)  # prime
    tries = 0
    pending_delay = 0.0

    def on_try(details: Details) -> None:
        nonlocal tries
        tries = details["tries"]

    def giveup(exc: Exception) -> bool:
        nonlocal pending_delay
        if not retryable(exc, retry_unknown=retry_unknown) or (stop is not None and stop(exc)):
            return True
        if tries >= config.max_attempts:
            return True  # backoff's max_tries would stop here too; do not draw a delay or spend budget
        delay = delays.send(exc)
        if delay > max_wait:
            return True
        if deadline is not None and clock.monotonic() + delay + config.min_attempt_time_s > deadline:
            return True
        if budget is not None and not budget.try_acquire():
            return True
        pending_delay = delay
        return False

    async def before_sleep(details: Details) -> None:
        exc = details.get("exception")
        assert exc is not None  # on_exception always passes the exception to on_backoff
        if on_retry is not None:
            try:
                result = on_retry(details["tries"], pending_delay, exc)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_retry handler failed; retrying anyway")
        await clock.sleep(pending_delay)

    @backoff.on_exception(
        _no_wait,
        Exception,
        max_tries=config.max_attempts,
        jitter=None,
        giveup=giveup,
        on_try=on_try,
        on_backoff=before_sleep,
        logger=None,
    )
    async def attempt() -> T:
        nonlocal replay
        if replay is not None:
            replayed, replay = replay, None
            raise replayed  # the first try, already made
        return await sender()

    return await attempt()
