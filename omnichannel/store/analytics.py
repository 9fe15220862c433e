"""Analytics over the message store: message stats and template performance for a time range.

Both functions read the store's own database (SQLite or PostgreSQL) and return frozen attrs
values that ``omnichannel.serde.make_converter().unstructure`` turns into JSON.

Definitions (a message is one row of ``messages``, in its current, folded state):

- the range is half-open, ``[start, end)``, on ``created_at`` (when the send was first recorded);
- *accepted*: the provider took the message: it has an ``accepted_at``, ``sent_at`` or
  ``delivered_at`` (so a message failed by the provider after acceptance counts; one failed at the
  send does not, nor a message still ``queued``);
- *delivered*: status ``delivered`` or ``read`` (it has a ``delivered_at``); *read*: status
  ``read`` (a ``read_at``); *failed*: its current status is ``failed``;
- ``delivery_rate`` = delivered / accepted, ``read_rate`` = read / delivered (``None`` when the
  denominator is 0);
- latencies run from the send, ``coalesce(accepted_at, sent_at)``, to ``delivered_at`` and to
  ``read_at``, in seconds; p50/p95 are linear-interpolated percentiles (``percentile_cont``) and
  ``None`` with no data; a status stamped before the send counts as 0 (providers stamp whole
  seconds, WhatsApp among them, so a delivery within the send's second looks up to 1 s early);
- error codes: the messages with an ``error_code`` (kept after a later delivery), most frequent
  first, ties by code; an empty template, language or error code counts as none.

How (see :mod:`omnichannel.store.rollup`): the counts come from the aggregate tables, whole UTC
days from the day rows and the whole hours left from the hour rows, plus the partial hours at
the range's ends counted from ``messages``: exact, and a bounded number of rows read whatever
the range. The percentiles are exact (every latency of the range read and sorted) when the range
holds at most :data:`EXACT_LIMIT` messages; above that they come from the merged latency
histograms and are approximate, within :data:`~omnichannel.store.rollup.RELATIVE_ERROR` (2.6 %)
plus 0.5 ms, flagged by ``Latency.approximate``. ``exact=True``/``False`` forces either way.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from ..message import DeliveryStatus
from .rollup import DAY, HOUR, from_micros, histogram_percentiles, latency_bucket, micros

if TYPE_CHECKING:
    from . import MessageStore

__all__ = [
    "EXACT_LIMIT",
    "ErrorCount",
    "Latency",
    "MessageStats",
    "TemplatePerformance",
    "message_stats",
    "template_performance",
]

EXACT_LIMIT = 100_000
"""Up to this many messages in the range, the percentiles are exact (a scan of the range)."""

Fetch: TypeAlias = Callable[[str, Sequence[object]], Awaitable[list[tuple[Any, ...]]]]
"""Runs one query (``?`` placeholders) and returns its rows."""


@attrs.frozen
class ErrorCount:
    """How many messages carry an error code."""

    code: str
    count: int


@attrs.frozen
class Latency:
    """Seconds from the send to an event: how many messages, the median and the 95th percentile."""

    count: int
    p50: float | None
    p95: float | None
    approximate: bool = False
    """The percentiles come from the latency histograms: within 2.6 % (plus 0.5 ms) of the exact
    values (the count is exact)."""


@attrs.frozen
class MessageStats:
    """The messages created in ``[start, end)`` (of ``channel``/``template`` when given)."""

    start: datetime
    end: datetime
    channel: str | None
    template: str | None
    total: int
    accepted: int
    delivered: int
    read: int
    failed: int
    delivery_rate: float | None
    read_rate: float | None
    by_status: dict[str, int]
    """Every status, zeros included, in status order."""
    by_channel: dict[str, int]
    by_template: dict[str, int]
    """Templated messages only."""
    by_error_code: list[ErrorCount]
    """The most frequent codes (``top_errors`` of them)."""
    to_delivered: Latency
    to_read: Latency


@attrs.frozen
class TemplatePerformance:
    """One template in one language over the range."""

    template: str
    language: str | None
    total: int
    sent: int
    """Accepted by the provider (see the module docstring)."""
    delivered: int
    read: int
    failed: int
    delivery_rate: float | None
    read_rate: float | None
    failure_rate: float | None
    """failed / total."""
    top_errors: list[ErrorCount]


def _no_micros(later: str, earlier: str) -> str:
    raise NotImplementedError("this dialect cannot compute latencies in microseconds")


@attrs.frozen
class Dialect:
    """What differs between the backends' SQL."""

    time: Callable[[datetime], object]
    """A datetime as a query parameter (a ``created_at`` or an aggregate's ``period``)."""
    seconds: Callable[[str, str], str]
    """SQL for ``later - earlier`` in seconds (a float)."""
    sql_percentiles: bool
    """``percentile_cont`` exists (no longer used: percentiles are computed here)."""
    micros: Callable[[str, str], str] = _no_micros
    """SQL for ``later - earlier`` in integer microseconds."""


Runner: TypeAlias = Callable[[Callable[[Fetch], Awaitable[Any]]], Awaitable[Any]]
Group: TypeAlias = tuple[str, str | None, str | None, str, str | None, bool]
"""(channel, template, language, status, error code, accepted): messages alike for the counts."""

_ACCEPTED = "(accepted_at IS NOT NULL OR sent_at IS NOT NULL OR delivered_at IS NOT NULL)"
_SEND = "coalesce(accepted_at, sent_at)"
_DELIVERED = (DeliveryStatus.DELIVERED.value, DeliveryStatus.READ.value)
_FRACTIONS = (0.5, 0.95)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _check_range(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware datetimes")
    if not start < end:
        raise ValueError(f"empty time range: start {start.isoformat()} is not before end {end.isoformat()}")


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """``percentile_cont``: linear interpolation between the closest ranks of sorted values."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ---------------------------------------------------------------- which rows answer a range


@attrs.frozen
class Plan:
    """Where the messages of ``[start, end)`` are counted."""

    segments: tuple[tuple[int, datetime, datetime], ...]
    """(span, from, to): the aggregate rows of that span with ``from <= period < to``."""
    edges: tuple[tuple[datetime, datetime], ...]
    """``[from, to)`` ranges of ``created_at`` read from ``messages`` (partial hours)."""


def plan(start: datetime, end: datetime) -> Plan:
    """Whole UTC days from the day rows, the whole hours left from the hour rows, the rest (at
    most an hour at each end) from ``messages``."""
    s, e = micros(start), micros(end)
    hour, day = HOUR * 1_000_000, DAY * 1_000_000
    h0, h1 = -(-s // hour) * hour, e // hour * hour
    if h0 >= h1:
        return Plan((), ((start, end),))
    d0, d1 = -(-s // day) * day, e // day * day
    spans: list[tuple[int, int, int]] = []
    if d0 < d1:
        spans += [(HOUR, h0, d0), (DAY, d0, d1), (HOUR, d1, h1)]
    else:
        spans.append((HOUR, h0, h1))
    edges = [(start, from_micros(h0))] if s < h0 else []
    if h1 < e:
        edges.append((from_micros(h1), end))
    segments = tuple((span, from_micros(lo), from_micros(hi)) for span, lo, hi in spans if lo < hi)
    return Plan(segments, tuple(edges))


def _filters(channel: str | None, template: str | None) -> tuple[str, list[object]]:
    clauses, args = "", list[object]()
    if channel is not None:
        clauses += " AND channel = ?"
        args.append(channel)
    if template is not None:  # '' is no template, in both tables
        clauses += " AND template = ? AND template <> ''"
        args.append(template)
    return clauses, args


def _ranges(
    dialect: Dialect, column: str, ranges: Iterable[tuple[datetime, datetime]]
) -> tuple[str, list[object]]:
    clauses, args = [], []
    for low, high in ranges:
        clauses.append(f"({column} >= ? AND {column} < ?)")
        args += [dialect.time(low), dialect.time(high)]
    return "(" + " OR ".join(clauses) + ")", args


def _segments(
    dialect: Dialect, segments: Iterable[tuple[int, datetime, datetime]]
) -> tuple[str, list[object]]:
    clauses, args = [], []
    for span, low, high in segments:
        clauses.append("(span = ? AND period >= ? AND period < ?)")
        args += [span, dialect.time(low), dialect.time(high)]
    return "(" + " OR ".join(clauses) + ")", args


# ---------------------------------------------------------------- counts


def _none(text: str | None) -> str | None:
    return text or None


async def _groups(
    fetch: Fetch, dialect: Dialect, found: Plan, channel: str | None, template: str | None
) -> dict[Group, int]:
    """The range's messages counted by :data:`Group`: aggregates plus partial hours."""
    where, args = _filters(channel, template)
    rows: list[tuple[Any, ...]] = []
    if found.segments:
        segments, segment_args = _segments(dialect, found.segments)
        rows += await fetch(
            "SELECT channel, template, language, status, error_code, accepted, sum(messages) "
            f"FROM message_counts WHERE {segments}{where} "
            "GROUP BY channel, template, language, status, error_code, accepted",
            [*segment_args, *args],
        )
    if found.edges:
        edges, edge_args = _ranges(dialect, "created_at", found.edges)
        rows += await fetch(
            "SELECT channel, template, language, status, error_code, "
            f"CASE WHEN {_ACCEPTED} THEN 1 ELSE 0 END, count(*) FROM messages WHERE {edges}{where} "
            "GROUP BY channel, template, language, status, error_code, 6",
            [*edge_args, *args],
        )
    groups: dict[Group, int] = {}
    for channel_, template_, language, status, code, accepted, count in rows:
        key = (channel_, _none(template_), _none(language), status, _none(code), bool(accepted))
        groups[key] = groups.get(key, 0) + int(count)
    return {key: count for key, count in groups.items() if count}


@attrs.frozen
class _Tally:
    total: int = 0
    accepted: int = 0
    delivered: int = 0
    read: int = 0
    failed: int = 0

    def plus(self, group: Group, count: int) -> _Tally:
        status = group[3]
        return _Tally(
            self.total + count,
            self.accepted + (count if group[5] else 0),
            self.delivered + (count if status in _DELIVERED else 0),
            self.read + (count if status == DeliveryStatus.READ.value else 0),
            self.failed + (count if status == DeliveryStatus.FAILED.value else 0),
        )


def _ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Most frequent first, ties by key."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _by(groups: dict[Group, int], index: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for group, count in groups.items():
        key = group[index]
        if key is not None:
            counts[str(key)] = counts.get(str(key), 0) + count
    return dict(_ranked(counts))


def _errors(counts: dict[str, int], top: int) -> list[ErrorCount]:
    return [ErrorCount(code, count) for code, count in _ranked(counts)[: max(top, 0)]]


# ---------------------------------------------------------------- latencies


async def _latency_values(
    fetch: Fetch,
    dialect: Dialect,
    ranges: Iterable[tuple[datetime, datetime]],
    channel: str | None,
    template: str | None,
) -> tuple[list[int], list[int]]:
    """The send-to-delivered and send-to-read latencies (µs) of the messages in ``ranges``."""
    where, args = _filters(channel, template)
    span, span_args = _ranges(dialect, "created_at", ranges)
    rows = await fetch(
        f"SELECT {dialect.micros('delivered_at', _SEND)}, {dialect.micros('read_at', _SEND)} "
        f"FROM messages WHERE {span}{where} AND {_SEND} IS NOT NULL "
        "AND (delivered_at IS NOT NULL OR read_at IS NOT NULL)",
        [*span_args, *args],
    )
    return (
        [int(row[0]) for row in rows if row[0] is not None],
        [int(row[1]) for row in rows if row[1] is not None],
    )


def _exact(values: list[int]) -> Latency:
    ordered = sorted(max(value, 0) / 1e6 for value in values)
    return Latency(len(ordered), percentile(ordered, _FRACTIONS[0]), percentile(ordered, _FRACTIONS[1]))


def _approximate(histogram: dict[int, int]) -> Latency:
    count, (p50, p95) = histogram_percentiles(histogram, _FRACTIONS)
    return Latency(count, p50, p95, approximate=count > 0)


async def _latencies(
    fetch: Fetch,
    dialect: Dialect,
    found: Plan,
    *,
    start: datetime,
    end: datetime,
    channel: str | None,
    template: str | None,
    exact: bool,
) -> tuple[Latency, Latency]:
    if exact:
        delivered, read = await _latency_values(fetch, dialect, [(start, end)], channel, template)
        return _exact(delivered), _exact(read)
    histograms: dict[str, dict[int, int]] = {"delivered": {}, "read": {}}
    if found.segments:
        where, args = _filters(channel, template)
        segments, segment_args = _segments(dialect, found.segments)
        for kind, bucket, count in await fetch(
            f"SELECT kind, bucket, sum(messages) FROM message_latencies WHERE {segments}{where} "
            "GROUP BY kind, bucket",
            [*segment_args, *args],
        ):
            histograms[kind][int(bucket)] = histograms[kind].get(int(bucket), 0) + int(count)
    if found.edges:
        values = await _latency_values(fetch, dialect, found.edges, channel, template)
        for histogram, kind_values in zip(histograms.values(), values, strict=True):
            for value in kind_values:
                bucket = latency_bucket(value)
                histogram[bucket] = histogram.get(bucket, 0) + 1
    return _approximate(histograms["delivered"]), _approximate(histograms["read"])


# ---------------------------------------------------------------- the two queries


async def _message_stats(
    fetch: Fetch,
    dialect: Dialect,
    *,
    start: datetime,
    end: datetime,
    channel: str | None,
    template: str | None,
    top_errors: int,
    exact: bool | None = None,
) -> MessageStats:
    found = plan(start, end)
    groups = await _groups(fetch, dialect, found, channel, template)
    tally, statuses = _Tally(), dict.fromkeys((s.value for s in DeliveryStatus), 0)
    codes: dict[str, int] = {}
    for group, count in groups.items():
        tally = tally.plus(group, count)
        statuses[group[3]] = statuses.get(group[3], 0) + count
        if group[4] is not None:
            codes[group[4]] = codes.get(group[4], 0) + count
    to_delivered, to_read = await _latencies(
        fetch,
        dialect,
        found,
        start=start,
        end=end,
        channel=channel,
        template=template,
        exact=tally.total <= EXACT_LIMIT if exact is None else exact,
    )
    return MessageStats(
        start=start,
        end=end,
        channel=channel,
        template=template,
        total=tally.total,
        accepted=tally.accepted,
        delivered=tally.delivered,
        read=tally.read,
        failed=tally.failed,
        delivery_rate=_rate(tally.delivered, tally.accepted),
        read_rate=_rate(tally.read, tally.delivered),
        by_status=statuses,
        by_channel=_by(groups, 0),
        by_template=_by(groups, 1),
        by_error_code=_errors(codes, top_errors),
        to_delivered=to_delivered,
        to_read=to_read,
    )


async def _template_performance(
    fetch: Fetch, dialect: Dialect, *, start: datetime, end: datetime, template: str | None, top_errors: int
) -> list[TemplatePerformance]:
    groups = await _groups(fetch, dialect, plan(start, end), None, template)
    tallies: dict[tuple[str, str | None], _Tally] = {}
    codes: dict[tuple[str, str | None], dict[str, int]] = {}
    for group, count in groups.items():
        name, language, code = group[1], group[2], group[4]
        if name is None:
            continue
        tallies[name, language] = tallies.get((name, language), _Tally()).plus(group, count)
        if code is not None:
            mine = codes.setdefault((name, language), {})
            mine[code] = mine.get(code, 0) + count
    result = [
        TemplatePerformance(
            template=name,
            language=language,
            total=tally.total,
            sent=tally.accepted,
            delivered=tally.delivered,
            read=tally.read,
            failed=tally.failed,
            delivery_rate=_rate(tally.delivered, tally.accepted),
            read_rate=_rate(tally.read, tally.delivered),
            failure_rate=_rate(tally.failed, tally.total),
            top_errors=_errors(codes.get((name, language), {}), top_errors),
        )
        for (name, language), tally in tallies.items()
    ]
    return sorted(result, key=lambda row: (row.template, row.language is not None, row.language or ""))


def _backend(store: MessageStore) -> tuple[Dialect, Runner]:
    from .sqlite import SqliteMessageStore

    if isinstance(store, SqliteMessageStore):
        from .sqlite_stats import DIALECT, runner

        return DIALECT, runner(store)
    from .postgres import PostgresMessageStore

    if isinstance(store, PostgresMessageStore):
        from .postgres_stats import DIALECT as PG_DIALECT
        from .postgres_stats import runner as pg_runner

        return PG_DIALECT, pg_runner(store)
    raise TypeError(f"analytics need a SQLite or PostgreSQL message store, not {type(store).__name__}")


async def message_stats(
    store: MessageStore,
    *,
    start: datetime,
    end: datetime,
    channel: str | None = None,
    template: str | None = None,
    top_errors: int = 10,
    exact: bool | None = None,
) -> MessageStats:
    """The stats of the messages created in ``[start, end)``, of ``channel``/``template`` if given.

    :param exact: exact percentiles (a scan of the range's latencies) or approximate ones (the
        histograms); default: exact up to :data:`EXACT_LIMIT` messages in the range.
    :raises ValueError: naive datetimes, or ``start >= end``.
    :raises TypeError: a store that is neither SQLite nor PostgreSQL.
    :raises StoreError: the database cannot answer.
    """
    _check_range(start, end)
    dialect, run = _backend(store)

    async def work(fetch: Fetch) -> MessageStats:
        return await _message_stats(
            fetch,
            dialect,
            start=start,
            end=end,
            channel=channel,
            template=template,
            top_errors=top_errors,
            exact=exact,
        )

    result: MessageStats = await run(work)
    return result


async def template_performance(
    store: MessageStore,
    *,
    start: datetime,
    end: datetime,
    template: str | None = None,
    top_errors: int = 3,
) -> list[TemplatePerformance]:
    """One row per template and language of the messages created in ``[start, end)``.

    Sorted by template, then language. Raises as :func:`message_stats`.
    """
    _check_range(start, end)
    dialect, run = _backend(store)

    async def work(fetch: Fetch) -> list[TemplatePerformance]:
        return await _template_performance(
            fetch, dialect, start=start, end=end, template=template, top_errors=top_errors
        )

    result: list[TemplatePerformance] = await run(work)
    return result
