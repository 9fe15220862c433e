"""Pre-aggregated counts and latency histograms: what a message contributes, and the buckets.

A stats query over a long range must not read every message. So the store keeps, next to
``messages``, two aggregate tables (schema version 2, :mod:`omnichannel.store.rollup_sql`):

- ``message_counts``: how many messages per (span, period, channel, template, language, status,
  error code, accepted);
- ``message_latencies``: how many messages per (span, period, channel, template, kind, bucket),
  ``kind`` being ``delivered`` (send to delivered) or ``read`` (send to read).

Each is kept at two spans: the UTC hour (``span`` 3600) and the UTC day (86400) of the message's
``created_at`` (``period`` is the start of it). A query reads whole days from the day rows, the
whole hours left at its ends from the hour rows, and only the partial hours at its very ends
from ``messages`` (:mod:`omnichannel.store.analytics`). A missing template, language or error
code is stored as ``''`` (a key column cannot be ``NULL`` and stay unique), so an empty one counts
as none.

Every write that creates a message or changes its folded state subtracts the message's old
:class:`Facts` and adds its new ones (:class:`Deltas`), in the same transaction, after the
message's row: the deltas of a whole batch are summed in memory first and applied with one
statement per table, in key order (so concurrent writers lock aggregate rows in the same order
and never deadlock).

Latency buckets are fixed and log-spaced: :data:`BOUNDS` are integer microseconds,
``round(1000 * 1.05 ** k)``, from 1 ms to about 300 years; bucket ``k`` >= 1 holds
``[BOUNDS[k-1], BOUNDS[k])``, bucket 0 ``[0, 1 ms)``, and a negative latency (a provider's clock
behind ours) goes to the mirror bucket ``-1 - k``. Percentiles from the merged histogram replace
each rank with the middle of its bucket, then interpolate as ``percentile_cont`` does, so they
are within :data:`RELATIVE_ERROR` (2.6 %) of the exact value, plus at most 0.5 ms for latencies
under a millisecond. Never change the bounds without a migration that rebuilds the histograms.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import NamedTuple

from .status import StatusState

__all__ = [
    "BOUNDS",
    "DAY",
    "HOUR",
    "KINDS",
    "RELATIVE_ERROR",
    "SPANS",
    "CountKey",
    "Deltas",
    "Facts",
    "LatencyKey",
    "bucket_middle",
    "from_micros",
    "histogram_percentiles",
    "latency_bucket",
    "micros",
]

HOUR = 3600
DAY = 86400
SPANS = (HOUR, DAY)
"""The aggregates' spans, in seconds."""
KINDS = ("delivered", "read")
"""The latency kinds: from the send to ``delivered_at`` and to ``read_at``."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _bounds() -> tuple[int, ...]:
    bounds, k = [], 0
    while (bound := round(1000 * 1.05**k)) <= 10**16:
        bounds.append(bound)
        k += 1
    return tuple(bounds)


BOUNDS: tuple[int, ...] = _bounds()
"""The buckets' lower bounds in microseconds (see the module docstring); never change them."""

RELATIVE_ERROR: float = max((high - low) / (2 * low) for low, high in pairwise(BOUNDS))
"""Half the widest bucket, relative to its lower bound: the approximate percentiles' error bound
(about 0.0255) above 1 ms."""


def micros(moment: datetime) -> int:
    """``moment`` as integer microseconds since the epoch."""
    return (moment - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    """Microseconds since the epoch as an aware UTC ``datetime``."""
    return _EPOCH + timedelta(microseconds=value)


def latency_bucket(latency_us: int) -> int:
    """The bucket of a latency in microseconds (negative latencies in the mirror buckets)."""
    if latency_us >= 0:
        return bisect.bisect_right(BOUNDS, latency_us)
    return -1 - bisect.bisect_right(BOUNDS, -latency_us)


def bucket_middle(bucket: int) -> float:
    """The middle of a bucket, in seconds (the last, open, bucket: its lower bound)."""
    if bucket < 0:
        return -bucket_middle(-1 - bucket)
    if bucket == 0:
        return BOUNDS[0] / 2e6
    if bucket >= len(BOUNDS):
        return BOUNDS[-1] / 1e6
    return (BOUNDS[bucket - 1] + BOUNDS[bucket]) / 2e6


def histogram_percentiles(
    histogram: Mapping[int, int], fractions: Iterable[float]
) -> tuple[int, list[float | None]]:
    """The number of latencies in ``histogram`` (bucket -> count) and, for each fraction,
    ``percentile_cont`` with every value replaced by the middle of its bucket (negative
    latencies, a status stamped before the send, count as 0: see the analytics)."""
    cells = sorted((bucket, count) for bucket, count in histogram.items() if count > 0)
    total = sum(count for _, count in cells)

    def value(rank: int) -> float:
        seen = 0
        for bucket, count in cells:
            seen += count
            if rank < seen:
                return max(bucket_middle(bucket), 0.0)
        raise AssertionError("rank beyond the histogram")  # pragma: no cover

    found: list[float | None] = []
    for fraction in fractions:
        if not total:
            found.append(None)
            continue
        position = fraction * (total - 1)
        low = math.floor(position)
        below, above = value(low), value(min(low + 1, total - 1))
        found.append(below + (above - below) * (position - low))
    return total, found


CountKey = tuple[int, int, str, str, str, str, str, int]
"""(span, period µs, channel, template, language, status, error code, accepted 0/1)."""
LatencyKey = tuple[int, int, str, str, str, int]
"""(span, period µs, channel, template, kind, bucket)."""


class Facts(NamedTuple):
    """What the aggregates count of one message; times in microseconds since the epoch."""

    created: int
    channel: str
    template: str | None
    language: str | None
    status: str
    error_code: str | None
    accepted_at: int | None
    sent_at: int | None
    delivered_at: int | None
    read_at: int | None

    def folded(self, state: StatusState, to_micros: Callable[[datetime], int]) -> Facts:
        """These facts with the folded ``state`` (its times through ``to_micros``, the backend's
        rounding of a stored time)."""
        assert state.status is not None

        def time(moment: datetime | None) -> int | None:
            return None if moment is None else to_micros(moment)

        return self._replace(
            status=state.status.value,
            error_code=state.error_code,
            accepted_at=time(state.accepted_at),
            sent_at=time(state.sent_at),
            delivered_at=time(state.delivered_at),
            read_at=time(state.read_at),
        )

    def latencies(self) -> list[tuple[str, int]]:
        """(kind, bucket) of each latency the message has."""
        send = self.accepted_at if self.accepted_at is not None else self.sent_at
        if send is None:
            return []
        found = []
        if self.delivered_at is not None:
            found.append(("delivered", latency_bucket(self.delivered_at - send)))
        if self.read_at is not None:
            found.append(("read", latency_bucket(self.read_at - send)))
        return found


class Deltas:
    """The changes to the aggregates of one transaction, summed per row."""

    def __init__(self) -> None:
        self.counts: dict[CountKey, int] = {}
        self.latencies: dict[LatencyKey, int] = {}

    def move(self, old: Facts | None, new: Facts | None) -> None:
        """A message's contribution changes from ``old`` to ``new`` (``None``: none)."""
        if old == new:
            return
        if old is not None:
            self._add(old, -1)
        if new is not None:
            self._add(new, 1)

    def _add(self, facts: Facts, sign: int) -> None:
        accepted = int(
            facts.accepted_at is not None or facts.sent_at is not None or facts.delivered_at is not None
        )
        template = facts.template or ""
        latencies = facts.latencies()
        for span in SPANS:
            width = span * 1_000_000
            period = facts.created - facts.created % width
            key = (
                span,
                period,
                facts.channel,
                template,
                facts.language or "",
                facts.status,
                facts.error_code or "",
                accepted,
            )
            self.counts[key] = self.counts.get(key, 0) + sign
            for kind, bucket in latencies:
                cell = (span, period, facts.channel, template, kind, bucket)
                self.latencies[cell] = self.latencies.get(cell, 0) + sign

    def count_rows(self) -> list[tuple[CountKey, int]]:
        """The non-zero count changes, in key order."""
        return sorted((key, delta) for key, delta in self.counts.items() if delta)

    def latency_rows(self) -> list[tuple[LatencyKey, int]]:
        """The non-zero histogram changes, in key order."""
        return sorted((key, delta) for key, delta in self.latencies.items() if delta)
