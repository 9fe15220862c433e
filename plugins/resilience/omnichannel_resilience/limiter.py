"""The in-memory rate limiter: GCRA per sender and per ``(sender, recipient)`` pair.

Semantics follow ``shared/resilience.md`` §0 (decision 8), §1.7 (rate limiter) and §4.3:

- :class:`Gcra`: one number per key, the theoretical arrival time (TAT). With the emission interval
  ``T = 1 / rate`` and the burst ``B``, a request at ``now`` computes ``new_tat = max(TAT, now) + T``
  and is admitted iff ``now >= new_tat - B·T``; otherwise it must wait ``new_tat - B·T - now``.
  An idle key admits ``B`` requests at once, then one every ``T``; over any window of ``w`` seconds
  at most ``B + rate·w`` requests are admitted.
- A key whose TAT is in the past is the same as an absent key, so it is forgotten (lazily, from
  the least recently updated end), and the number of tracked keys is capped: memory stays bounded
  with millions of recipients.
- :class:`Limiter`: acquires the sender key and the pair key atomically (if either refuses, neither
  is consumed). A wait up to ``max_wait_s`` is slept on the injected clock (the slot is reserved
  first, so waiters are served in arrival order, and a cancelled waiter gives its slot back); a longer
  wait raises :class:`RateLimitedError` with ``retry_after``, scope ``sender`` or ``recipient`` and
  certainty ``not_sent``, so the caller defers the message instead of holding a worker.
- Throttling answers from the provider slow the right key down (:meth:`Limiter.on_throttled`):
  130429 (scope ``sender``) pauses the sender, 131056 (scope ``recipient``) pauses only that pair
  with Meta's ``4^k`` seconds backoff per consecutive hit, reset by a success.
- Adaptive rate (``adaptive=True``, the spec's AIMD row): a sender throttle also halves that sender's
  rate (floor ``adaptive_floor_per_s``, 1/s), applied as a per-key rate override in the sender
  :class:`Gcra`; every ``adaptive_interval_s`` (10 s) without another one it grows back by
  ``adaptive_step`` (5 %) of the configured rate. The rate is a function of the last decrease and
  the clock, computed when asked (:meth:`Limiter.acquire`, :meth:`Limiter.current_rate`): no timer,
  no task. Pairs never adapt; senders at the configured rate carry no extra state or cost.

All times come from the injected :class:`~omnichannel.Clock`; decisions are short synchronous
sections under a lock, never held across a sleep.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import attrs

from omnichannel import Certainty, Clock, ErrorScope, InvalidField, RateLimitedError

__all__ = [
    "DEFAULT_MAX_KEYS",
    "WHATSAPP_PAIR",
    "WHATSAPP_PAIR_BURST",
    "WHATSAPP_PAIR_INTERVAL_S",
    "WHATSAPP_SENDER",
    "WHATSAPP_SENDER_BURST",
    "WHATSAPP_SENDER_MAX_MPS",
    "WHATSAPP_SENDER_UTILIZATION",
    "Gcra",
    "Limiter",
    "RateConfig",
    "pair_key",
]

logger = logging.getLogger(__name__)

_EPSILON = 1e-9
"""Float slack (seconds): sleeping exactly the advised wait must be enough to be admitted."""

DEFAULT_MAX_KEYS = 1_000_000
"""Default cap on the keys one :class:`Gcra` tracks at a time."""


def _positive_rate(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise InvalidField(attribute.name, f"must be a finite number > 0, got {value!r}")


def _burst(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidField(attribute.name, f"must be an integer >= 1, got {value!r}")


@attrs.frozen
class RateConfig:
    """A GCRA limit: ``rate_per_s`` sustained, ``burst`` requests at once from an idle key."""

    rate_per_s: float = attrs.field(validator=_positive_rate)
    burst: int = attrs.field(validator=_burst)

    @property
    def interval_s(self) -> float:
        """The emission interval ``T = 1 / rate_per_s``."""
        return 1.0 / self.rate_per_s

    @classmethod
    def every(cls, interval_s: float, burst: int) -> RateConfig:
        """One request every ``interval_s`` seconds, with ``burst`` (the spec's ``pair_interval``)."""
        if (
            isinstance(interval_s, bool)
            or not isinstance(interval_s, int | float)
            or not math.isfinite(interval_s)
            or not interval_s > 0
        ):
            raise InvalidField("interval_s", f"must be a finite number > 0, got {interval_s!r}")
        return cls(rate_per_s=1.0 / interval_s, burst=burst)


WHATSAPP_SENDER_MAX_MPS = 80
"""Meta's default throughput tier per business phone number (messages per second)."""
WHATSAPP_SENDER_UTILIZATION = 0.85
"""Headroom for inbound traffic (it counts too) and accounting error: effective 68 mps."""
WHATSAPP_SENDER_BURST = 10
"""Keeps any 1 s window at most 78 < 80."""
WHATSAPP_PAIR_INTERVAL_S = 6.0
"""About one message every 6 s from one business number to one user."""
WHATSAPP_PAIR_BURST = 5
"""Conservative next to Meta's tolerated bursts (~45)."""

WHATSAPP_SENDER = RateConfig(
    rate_per_s=WHATSAPP_SENDER_MAX_MPS * WHATSAPP_SENDER_UTILIZATION, burst=WHATSAPP_SENDER_BURST
)
"""The spec's default sender limit (§1.7): 68/s, burst 10."""
WHATSAPP_PAIR = RateConfig.every(WHATSAPP_PAIR_INTERVAL_S, WHATSAPP_PAIR_BURST)
"""The spec's default pair limit (§1.7): 1 per 6 s, burst 5."""


def pair_key(sender: str, recipient: str) -> str:
    """The key of a ``(sender, recipient)`` pair in the pair :class:`Gcra`."""
    return f"{sender}\x1f{recipient}"


class Gcra:
    """The generic cell rate algorithm over string keys, in memory.

    :param config: the rate and burst applied to every key.
    :param clock: the time source (``monotonic()``); ``now`` arguments default to it.
    :param max_keys: at most this many keys are tracked; beyond it, the least recently updated key
        is dropped (it then admits as if idle: the cap trades exactness for bounded memory).
    """

    def __init__(self, config: RateConfig, clock: Clock, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise InvalidField("max_keys", f"must be an integer >= 1, got {max_keys!r}")
        self.config = config
        self._clock = clock
        self._max_keys = max_keys
        self._interval = config.interval_s
        self._tolerance = config.burst * self._interval
        # key -> TAT, in order of last update (oldest first), so expired keys gather at the front.
        self._tat: dict[str, float] = {}
        # key -> emission interval, for the few keys whose rate differs from the config (adaptive).
        self._intervals: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of keys currently tracked (expired ones may linger until the next call)."""
        return len(self._tat)

    def tat(self, key: str) -> float | None:
        """The stored theoretical arrival time of ``key``, or ``None`` if it is not tracked."""
        return self._tat.get(key)

    def rate(self, key: str) -> float:
        """The rate (per second) applied to ``key``: its override if set, else the config's."""
        interval = self._intervals.get(key)
        return self.config.rate_per_s if interval is None else 1.0 / interval

    def set_rate(self, key: str, rate_per_s: float | None) -> None:
        """Apply ``rate_per_s`` to ``key`` instead of the config's rate; ``None`` removes the override.

        The burst (in requests) stays the config's. The stored TAT is kept: requests already admitted
        stay admitted, the new interval applies from the next one. Overrides are capped at
        ``max_keys`` (the oldest is dropped first).
        """
        if rate_per_s is not None and (
            isinstance(rate_per_s, bool)
            or not isinstance(rate_per_s, int | float)
            or not math.isfinite(rate_per_s)
            or not rate_per_s > 0
        ):
            raise InvalidField("rate_per_s", f"must be a finite number > 0, got {rate_per_s!r}")
        with self._lock:
            intervals = self._intervals
            intervals.pop(key, None)
            if rate_per_s is None or rate_per_s == self.config.rate_per_s:
                return
            while len(intervals) >= self._max_keys:
                del intervals[next(iter(intervals))]
            intervals[key] = 1.0 / rate_per_s

    def wait_time(self, key: str, now: float | None = None) -> float:
        """Seconds ``key`` must wait before one request is admitted at ``now``; consumes nothing."""
        with self._lock:
            now = self._now(now)
            return self._wait(key, now)

    def try_acquire(self, key: str, now: float | None = None) -> float:
        """Admit one request for ``key`` at ``now``: ``0.0`` if admitted (and consumed), else the wait.

        A refused request consumes nothing.
        """
        with self._lock:
            now = self._now(now)
            wait = self._wait(key, now)
            if wait == 0.0:
                self._consume(key, now)
            return wait

    def penalize(self, key: str, seconds: float, now: float | None = None) -> None:
        """Slow ``key`` down: its next request is admitted no earlier than ``now + seconds``.

        Never shortens an existing wait. After the pause the key admits one request, then one per
        interval (the burst is spent), which is what "slowing down" after a throttle needs.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidField("seconds", f"must be a finite number >= 0, got {seconds!r}")
        with self._lock:
            now = self._now(now)
            # Admitted at t iff t >= max(TAT, t) + T - B·T; the earliest t is now + seconds when
            # TAT = now + seconds + (B - 1)·T.
            interval = self._intervals.get(key, self._interval)
            penalized = now + seconds + self.config.burst * interval - interval
            current = self._tat.get(key)
            self._store(key, penalized if current is None else max(current, penalized))

    def refund(self, key: str, now: float | None = None) -> None:
        """Give back one request consumed earlier (a cancelled waiter, a refused partner key)."""
        with self._lock:
            now = self._now(now)
            current = self._tat.pop(key, None)
            interval = self._intervals.get(key, self._interval)
            if current is not None and current - interval > now:
                self._store(key, current - interval)

    def restore(self, key: str, expected: float, previous: float | None) -> bool:
        """Undo the last consumption of ``key`` exactly, if nothing changed its TAT since.

        :param expected: the TAT that consumption stored.
        :param previous: the TAT before it (``None``: the key was not tracked).
        :returns: whether it was undone; if not, :meth:`refund` gives one interval back instead.
        """
        with self._lock:
            if self._tat.get(key) != expected:
                return False
            if previous is None:
                del self._tat[key]
            else:
                self._tat[key] = previous
            return True

    # -- internals (called with the lock held) --------------------------------------------------

    def _now(self, now: float | None) -> float:
        clock_now = self._clock.monotonic()
        # Forget idle keys; never past a ``now`` given in the past (that would change its answers).
        self._sweep(clock_now if now is None else min(now, clock_now))
        return clock_now if now is None else now

    def _wait(self, key: str, now: float) -> float:
        tat = max(self._tat.get(key, now), now)
        if self._intervals and key in self._intervals:  # rare: keep the common path to one lookup
            interval = self._intervals[key]
            wait = tat + interval - self.config.burst * interval - now
        else:
            wait = tat + self._interval - self._tolerance - now
        return 0.0 if wait <= _EPSILON else wait

    def _consume(self, key: str, now: float) -> None:
        interval = self._intervals.get(key, self._interval) if self._intervals else self._interval
        self._store(key, max(self._tat.get(key, now), now) + interval)

    def _store(self, key: str, tat: float) -> None:
        self._tat.pop(key, None)
        while len(self._tat) >= self._max_keys:
            dropped = next(iter(self._tat))
            del self._tat[dropped]
            logger.warning("rate limiter tracks %d keys (the cap): forgetting %r", self._max_keys, dropped)
        self._tat[key] = tat

    def _sweep(self, now: float) -> None:
        # Amortised O(1): each key is popped once. Keys are in update order, so the front holds the
        # oldest TATs; a penalised key at the front may shield a few expired ones behind it until it
        # expires too, which the cap bounds anyway.
        tats = self._tat
        while tats:
            key = next(iter(tats))
            if tats[key] > now:
                break
            del tats[key]


def _require_positive(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise InvalidField(name, f"must be a finite number > 0, got {value!r}")


@attrs.frozen
class _Adaptation:
    """A sender below its configured rate: ``rate`` since ``since``, decreases coalesced until ``hold``."""

    rate: float
    since: float
    hold: float


_PAIR_BACKOFF_BASE = 4.0
_SENDER_THROTTLE_DEFAULT_S = 1.0
"""130429 without a ``retry_after``: pause the sender 1 s (§1.7 cooldowns)."""
_ACCOUNT_THROTTLE_DEFAULT_S = 60.0
"""4/17/32/613/80007/80008 (app or WABA scope) without a ``retry_after``: 60 s (§1.7 cooldowns)."""


_Reservation = tuple[float, tuple[float | None, float | None], tuple[float | None, float | None]]
"""A reservation that must be waited for: the wait, and both keys' TATs before and after it."""


class Limiter:
    """The sender and pair limits of one process, acquired together before every attempt.

    :param sender: the limit per sender (phone number id).
    :param pair: the limit per ``(sender, recipient)`` pair.
    :param clock: time source and sleeper.
    :param max_wait_s: the longest wait slept in place; longer waits raise :class:`RateLimitedError`.
    :param max_wait_pair_s: the longest wait slept for a pair (the spec's ``max_wait_pair``, 0 there:
        never hold a worker for one recipient); ``None``: the same as ``max_wait_s``.
    :param max_pair_backoff_s: cap of the ``4^k`` pair backoff after consecutive 131056.
    :param max_keys: cap on tracked keys, per limit (and on tracked pair throttle counters).
    :param adaptive: AIMD on sender throttles (the spec's ``adaptive``): each 130429 halves the
        sender's rate, then it grows back by steps (see :meth:`on_throttled`).
    :param adaptive_floor_per_s: the rate a sender never goes below (unless configured lower).
    :param adaptive_step: the additive increase, as a fraction of the configured rate (0 < x <= 1).
    :param adaptive_interval_s: seconds without a sender throttle between two increases.
    """

    def __init__(
        self,
        sender: RateConfig,
        pair: RateConfig,
        clock: Clock,
        max_wait_s: float,
        *,
        max_wait_pair_s: float | None = None,
        max_pair_backoff_s: float = 1024.0,
        max_keys: int = DEFAULT_MAX_KEYS,
        adaptive: bool = False,
        adaptive_floor_per_s: float = 1.0,
        adaptive_step: float = 0.05,
        adaptive_interval_s: float = 10.0,
    ) -> None:
        if not isinstance(adaptive, bool):
            raise InvalidField("adaptive", f"must be true or false, got {adaptive!r}")
        _require_positive("adaptive_floor_per_s", adaptive_floor_per_s)
        _require_positive("adaptive_step", adaptive_step)
        if adaptive_step > 1:
            raise InvalidField(
                "adaptive_step", f"must be <= 1 (a fraction of the rate), got {adaptive_step!r}"
            )
        _require_positive("adaptive_interval_s", adaptive_interval_s)
        for name, value in (("max_wait_s", max_wait_s), ("max_wait_pair_s", max_wait_pair_s)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InvalidField(name, f"must be a finite number >= 0, got {value!r}")
        if not max_pair_backoff_s >= 1:
            raise InvalidField("max_pair_backoff_s", f"must be >= 1, got {max_pair_backoff_s!r}")
        self.senders = Gcra(sender, clock, max_keys=max_keys)
        self.pairs = Gcra(pair, clock, max_keys=max_keys)
        self.max_wait_s = max_wait_s
        self.max_wait_pair_s = max_wait_s if max_wait_pair_s is None else max_wait_pair_s
        self.max_pair_backoff_s = max_pair_backoff_s
        self._clock = clock
        self._max_keys = max_keys
        self._pair_hits: dict[str, int] = {}
        self.adaptive = adaptive
        self.adaptive_floor_per_s = float(adaptive_floor_per_s)
        self.adaptive_step = float(adaptive_step)
        self.adaptive_interval_s = float(adaptive_interval_s)
        # sender -> its adaptation, only while below the configured rate; in order of last update.
        self._adapted: dict[str, _Adaptation] = {}
        self._lock = threading.Lock()

    async def acquire(self, sender: str, recipient: str) -> float:
        """Wait for a slot for one message from ``sender`` to ``recipient``, or refuse; returns the wait.

        :raises RateLimitedError: the wait exceeds ``max_wait_s`` (scope ``sender``) or
            ``max_wait_pair_s`` (scope ``recipient``); ``retry_after`` is the wait until both keys
            admit; certainty ``not_sent``; nothing is consumed.
        """
        pair = pair_key(sender, recipient)
        with self._lock:
            now = self._clock.monotonic()
            if self._adapted:
                self._adapted_rate(sender, now)
            reservation = self._reserve(sender, recipient, pair, now)
        if reservation is None:
            return 0.0
        wait, before, after = reservation
        try:
            await self._clock.sleep(wait)
        except BaseException:
            # Cancelled (or the sleeper failed): this waiter consumes no capacity.
            with self._lock:
                for gcra, key, previous, reserved in (
                    (self.senders, sender, before[0], after[0]),
                    (self.pairs, pair, before[1], after[1]),
                ):
                    if reserved is None or not gcra.restore(key, reserved, previous):
                        gcra.refund(key)
            raise
        return wait

    def _reserve(self, sender: str, recipient: str, pair: str, now: float) -> _Reservation | None:
        """Consume a slot of both keys (``None``: at once), or refuse; with ``self._lock`` held.

        One pass over the :class:`Gcra` internals under their locks: this runs before every attempt.
        """
        senders, pairs = self.senders, self.pairs
        with senders._lock, pairs._lock:
            senders._sweep(now)
            pairs._sweep(now)
            sender_wait = senders._wait(sender, now)
            pair_wait = pairs._wait(pair, now)
            if not sender_wait and not pair_wait:
                senders._consume(sender, now)
                pairs._consume(pair, now)
                return None
            wait = max(sender_wait, pair_wait)
            if sender_wait > self.max_wait_s + _EPSILON:
                raise self._refusal(ErrorScope.SENDER, sender, recipient, wait, self.max_wait_s)
            if pair_wait > self.max_wait_pair_s + _EPSILON:
                raise self._refusal(ErrorScope.RECIPIENT, sender, recipient, wait, self.max_wait_pair_s)
            # Reserve both slots at the admission time: later callers queue behind this one (FIFO).
            at = now + wait
            before = (senders._tat.get(sender), pairs._tat.get(pair))
            senders._consume(sender, at)
            pairs._consume(pair, at)
            return wait, before, (senders._tat.get(sender), pairs._tat.get(pair))

    def on_throttled(
        self, sender: str, recipient: str, scope: ErrorScope | None, retry_after: float | None
    ) -> float:
        """Slow down the key the provider's throttling answer is about; returns the pause applied.

        - ``sender`` (130429): the sender pauses ``retry_after`` (default 1 s). If ``adaptive``, its
          rate is also halved (not below ``adaptive_floor_per_s``), then grows by ``adaptive_step``
          times the configured rate every ``adaptive_interval_s`` without another sender throttle,
          back to the configured rate. Throttles arriving during the pause that followed a halving
          answer attempts sent at the old rate: they do not halve again (one decrease per episode,
          like TCP's once per window), but restart the increase clock.
        - ``recipient`` (131056): that pair pauses ``max(retry_after, 4^k)`` seconds, ``k`` the
          number of earlier consecutive hits on the pair (1, 4, 16, 64 ... capped); other recipients
          are unaffected.
        - ``account`` / ``app``: the sender pauses ``retry_after`` (default 60 s).
        - anything else: nothing to slow down (0).
        """
        floor = retry_after if retry_after is not None and retry_after > 0 else 0.0
        with self._lock:
            if scope is ErrorScope.RECIPIENT:
                key = pair_key(sender, recipient)
                hits = self._pair_hits.pop(key, 0)
                if len(self._pair_hits) >= self._max_keys:
                    del self._pair_hits[next(iter(self._pair_hits))]
                self._pair_hits[key] = hits + 1
                backoff = min(_PAIR_BACKOFF_BASE ** min(hits, 64), self.max_pair_backoff_s)
                pause = max(floor, backoff)
                self.pairs.penalize(key, pause)
                return pause
            if scope is ErrorScope.SENDER:
                pause = floor or _SENDER_THROTTLE_DEFAULT_S
                if self.adaptive:
                    self._decrease(sender, pause)  # first: the pause below uses the new interval
            elif scope in (ErrorScope.ACCOUNT, ErrorScope.APP):
                pause = floor or _ACCOUNT_THROTTLE_DEFAULT_S
            else:
                return 0.0
            self.senders.penalize(sender, pause)
            return pause

    def on_success(self, sender: str, recipient: str) -> None:
        """A message to the pair went out: its consecutive 131056 count starts again at 0."""
        if self._pair_hits:  # almost always empty: no lock on the happy path
            with self._lock:
                self._pair_hits.pop(pair_key(sender, recipient), None)

    def pair_hits(self, sender: str, recipient: str) -> int:
        """Consecutive 131056 answers for the pair since its last success."""
        return self._pair_hits.get(pair_key(sender, recipient), 0)

    def current_rate(self, sender: str) -> float:
        """The effective rate of ``sender`` now (msg/s): the configured one unless adapted down."""
        if not self._adapted:
            return self.senders.config.rate_per_s
        with self._lock:
            return self._adapted_rate(sender, self._clock.monotonic())

    def adapted_senders(self) -> dict[str, float]:
        """The senders currently below the configured rate, with their effective rates now."""
        with self._lock:
            now = self._clock.monotonic()
            rates = {sender: self._adapted_rate(sender, now) for sender in list(self._adapted)}
            return {sender: rate for sender, rate in rates.items() if sender in self._adapted}

    # -- adaptation (called with the lock held) -------------------------------------------------

    def _adapted_rate(self, sender: str, now: float) -> float:
        """The rate of ``sender`` at ``now``; applies it to the sender :class:`Gcra` (lazy AIMD)."""
        configured = self.senders.config.rate_per_s
        adaptation = self._adapted.get(sender)
        if adaptation is None:
            return configured
        steps = math.floor((now - adaptation.since) / self.adaptive_interval_s + _EPSILON)
        rate = adaptation.rate + max(steps, 0) * self.adaptive_step * configured
        if rate >= configured - _EPSILON:
            del self._adapted[sender]
            self.senders.set_rate(sender, None)
            return configured
        if self.senders.rate(sender) != rate:
            self.senders.set_rate(sender, rate)
        return rate

    def _decrease(self, sender: str, pause: float) -> None:
        now = self._clock.monotonic()
        current = self._adapted_rate(sender, now)
        previous = self._adapted.pop(sender, None)
        if previous is not None and now < previous.hold:
            adaptation = _Adaptation(rate=current, since=now, hold=previous.hold)
        else:
            configured = self.senders.config.rate_per_s
            rate = min(configured, max(self.adaptive_floor_per_s, current * 0.5))
            if rate >= configured:  # configured at or below the floor: nothing to adapt
                return
            adaptation = _Adaptation(rate=rate, since=now, hold=now + pause)
        while len(self._adapted) >= self._max_keys:
            evicted = next(iter(self._adapted))
            del self._adapted[evicted]
            self.senders.set_rate(evicted, None)
        self._adapted[sender] = adaptation
        self.senders.set_rate(sender, adaptation.rate)

    def _refusal(
        self, scope: ErrorScope, sender: str, recipient: str, wait: float, max_wait: float
    ) -> RateLimitedError:
        whom = f"sender {sender!r}" if scope is ErrorScope.SENDER else f"pair ({sender!r}, {recipient!r})"
        return RateLimitedError(
            f"local rate limit of {whom}: wait {wait:.3f} s exceeds max_wait {max_wait:.3f} s",
            retry_after=wait,
            scope=scope,
            certainty=Certainty.NOT_SENT,
        )
