"""Sliding windows for the circuit breaker's rate mode (``shared/resilience.md`` §1.3.2, resilience4j).

A window aggregates the recorded outcomes (SUCCESS or FAILURE, each fast or slow) of the last
calls and answers with :class:`Totals`; the breaker turns them into percentages once the window
holds at least ``minimum_calls`` outcomes.

- :class:`CountWindow` keeps the last ``size`` outcomes in a ring: the newest evicts the oldest.
- :class:`TimeWindow` keeps 1-second buckets of the last ``size_s`` seconds of the injected
  monotonic clock. Buckets that fell out of the window are dropped on every read and write, so
  an idle window empties itself.

Both update running totals on each record, so reading them costs O(1) (plus the expired buckets).
They are not thread-safe: the breaker calls them with its lock held.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple, Protocol

__all__ = ["CountWindow", "SlidingWindow", "TimeWindow", "Totals"]


class Totals(NamedTuple):
    """What a window holds: recorded calls, how many of them failed, how many were slow."""

    calls: int
    failures: int
    slow: int

    def rates(self, minimum_calls: int) -> tuple[float, float] | None:
        """``(failure_rate, slow_call_rate)`` in percent; ``None`` below ``minimum_calls`` calls."""
        calls = self.calls
        if calls < minimum_calls or calls == 0:
            return None
        # Multiply first: 3 * 100 / 5 is exactly 60.0, 3 / 5 * 100 is not.
        return self.failures * 100 / calls, self.slow * 100 / calls


class SlidingWindow(Protocol):
    """The interface the breaker uses; ``minimum_calls`` is the least number of calls for a rate."""

    @property
    def minimum_calls(self) -> int: ...

    def record(self, now: float, *, failed: bool, slow: bool) -> Totals:
        """Add one outcome observed at ``now``; returns the totals including it."""
        ...

    def totals(self, now: float) -> Totals:
        """The totals as of ``now``."""
        ...

    def clear(self) -> None:
        """Forget every outcome."""
        ...


_FAILED = 1
_SLOW = 2


class CountWindow:
    """The last ``size`` recorded outcomes.

    ``minimum_calls`` is capped at ``size`` (as resilience4j does): a count window can never hold
    more calls than its size, so a larger minimum would mean "never trip".
    """

    __slots__ = ("_calls", "_failures", "_ring", "_slow", "minimum_calls", "size")

    def __init__(self, size: int, minimum_calls: int) -> None:
        self.size = size
        self.minimum_calls = min(minimum_calls, size)
        self._ring: deque[int] = deque(maxlen=size)  # one bit set per _FAILED / _SLOW
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def record(self, now: float, *, failed: bool, slow: bool) -> Totals:
        ring = self._ring
        if len(ring) == self.size:
            evicted = ring[0]  # the append below pushes it out
            self._failures -= evicted & _FAILED
            self._slow -= (evicted & _SLOW) >> 1
        else:
            self._calls += 1
        ring.append((_FAILED if failed else 0) | (_SLOW if slow else 0))
        self._failures += failed
        self._slow += slow
        return Totals(self._calls, self._failures, self._slow)

    def totals(self, now: float) -> Totals:
        return Totals(self._calls, self._failures, self._slow)

    def clear(self) -> None:
        self._ring.clear()
        self._calls = self._failures = self._slow = 0

    def __repr__(self) -> str:
        return f"<CountWindow size={self.size} {self.totals(0.0)}>"


class _Bucket:
    __slots__ = ("calls", "failures", "second", "slow")

    def __init__(self, second: int) -> None:
        self.second = second
        self.calls = 0
        self.failures = 0
        self.slow = 0


class TimeWindow:
    """The outcomes recorded in the last ``size_s`` seconds, in 1-second buckets.

    At ``now``, the window holds the buckets of seconds ``floor(now) - size_s + 1`` to
    ``floor(now)``: an outcome recorded at ``t`` drops out at ``floor(t) + size_s``, so it stays
    between ``size_s - 1`` and ``size_s`` seconds (resilience4j's partial aggregation).
    """

    __slots__ = ("_buckets", "_calls", "_failures", "_slow", "minimum_calls", "size_s")

    def __init__(self, size_s: int, minimum_calls: int) -> None:
        self.size_s = size_s
        self.minimum_calls = minimum_calls
        self._buckets: deque[_Bucket] = deque()
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def _expire(self, second: int) -> None:
        buckets = self._buckets
        oldest_kept = second - self.size_s + 1
        while buckets and buckets[0].second < oldest_kept:
            gone = buckets.popleft()
            self._calls -= gone.calls
            self._failures -= gone.failures
            self._slow -= gone.slow

    def record(self, now: float, *, failed: bool, slow: bool) -> Totals:
        second = math.floor(now)
        self._expire(second)
        buckets = self._buckets
        if buckets and buckets[-1].second == second:
            bucket = buckets[-1]
        else:
            bucket = _Bucket(second)
            buckets.append(bucket)
        bucket.calls += 1
        bucket.failures += failed
        bucket.slow += slow
        self._calls += 1
        self._failures += failed
        self._slow += slow
        return Totals(self._calls, self._failures, self._slow)

    def totals(self, now: float) -> Totals:
        self._expire(math.floor(now))
        return Totals(self._calls, self._failures, self._slow)

    def clear(self) -> None:
        self._buckets.clear()
        self._calls = self._failures = self._slow = 0

    def __repr__(self) -> str:
        return f"<TimeWindow size_s={self.size_s} buckets={len(self._buckets)}>"
