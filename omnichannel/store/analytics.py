"""Analytics over the message store: message stats and template performance for a time range.

Both functions aggregate in SQL on the store's own database (SQLite or PostgreSQL) and return
frozen attrs values that ``omnichannel.serde.make_converter().unstructure`` turns into JSON.

Definitions (a message is one row of ``messages``, in its current, folded state):

- the range is half-open, ``[start, end)``, on ``created_at`` (when the send was first recorded);
- *accepted*: the provider took the message: it has an ``accepted_at``, ``sent_at`` or
  ``delivered_at`` (so a message failed by the provider after acceptance counts; one failed at the
  send does not, nor a message still ``queued``);
- *delivered*: it has a ``delivered_at`` (status ``delivered`` or ``read``); *read*: a ``read_at``;
  *failed*: its current status is ``failed``;
- ``delivery_rate`` = delivered / accepted, ``read_rate`` = read / delivered (``None`` when the
  denominator is 0);
- latencies run from the send, ``coalesce(accepted_at, sent_at)``, to ``delivered_at`` and to
  ``read_at``, in seconds; p50/p95 are linear-interpolated percentiles (PostgreSQL's
  ``percentile_cont``; SQLite: the same formula over an ordered scan, two ``OFFSET`` look-ups)
  and ``None`` with no data;
- error codes: the messages with an ``error_code`` (kept after a later delivery), most frequent
  first, ties by code.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from ..message import DeliveryStatus

if TYPE_CHECKING:
    from . import MessageStore

__all__ = [
    "ErrorCount",
    "Latency",
    "MessageStats",
    "TemplatePerformance",
    "message_stats",
    "template_performance",
]

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


@attrs.frozen
class Dialect:
    """What differs between the backends' SQL."""

    time: Callable[[datetime], object]
    """A datetime as a query parameter."""
    seconds: Callable[[str, str], str]
    """SQL for ``later - earlier`` in seconds (a float)."""
    sql_percentiles: bool
    """``percentile_cont`` exists (else: an ordered scan)."""


Runner: TypeAlias = Callable[[Callable[[Fetch], Awaitable[Any]]], Awaitable[Any]]

_ACCEPTED = "(accepted_at IS NOT NULL OR sent_at IS NOT NULL OR delivered_at IS NOT NULL)"
_SEND = "coalesce(accepted_at, sent_at)"
_COUNTS = (
    f"count(*), sum(CASE WHEN {_ACCEPTED} THEN 1 ELSE 0 END), "
    "sum(CASE WHEN delivered_at IS NOT NULL THEN 1 ELSE 0 END), "
    "sum(CASE WHEN read_at IS NOT NULL THEN 1 ELSE 0 END), "
    "sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END)"
)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _check_range(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware datetimes")
    if not start < end:
        raise ValueError(f"empty time range: start {start.isoformat()} is not before end {end.isoformat()}")


def _where(
    dialect: Dialect, start: datetime, end: datetime, channel: str | None, template: str | None
) -> tuple[str, list[object]]:
    clauses = ["created_at >= ?", "created_at < ?"]
    args: list[object] = [dialect.time(start), dialect.time(end)]
    if channel is not None:
        clauses.append("channel = ?")
        args.append(channel)
    if template is not None:
        clauses.append("template = ?")
        args.append(template)
    return " AND ".join(clauses), args


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """``percentile_cont``: linear interpolation between the closest ranks of sorted values."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def _latency(
    fetch: Fetch, dialect: Dialect, where: str, args: list[object], end_column: str
) -> Latency:
    value = dialect.seconds(end_column, _SEND)
    source = f"FROM messages WHERE {where} AND {end_column} IS NOT NULL AND {_SEND} IS NOT NULL"
    if dialect.sql_percentiles:
        rows = await fetch(
            f"SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY {value}), "
            f"percentile_cont(0.95) WITHIN GROUP (ORDER BY {value}) {source}",
            args,
        )
        count, p50, p95 = rows[0]
        return Latency(int(count), None if p50 is None else float(p50), None if p95 is None else float(p95))
    # SQLite: sort once per look-up, read the (at most) two values each percentile needs.
    count = int((await fetch(f"SELECT count(*) {source}", args))[0][0])
    found: list[float | None] = []
    for fraction in (0.5, 0.95):
        if not count:
            found.append(None)
            continue
        position = fraction * (count - 1)
        rows = await fetch(
            f"SELECT {value} AS x {source} ORDER BY x LIMIT 2 OFFSET ?", [*args, math.floor(position)]
        )
        pair = [float(row[0]) for row in rows]
        found.append(percentile(pair, position - math.floor(position)))
    return Latency(count, found[0], found[1])


async def _groups(fetch: Fetch, column: str, where: str, args: list[object]) -> dict[str, int]:
    rows = await fetch(
        f"SELECT {column}, count(*) FROM messages WHERE {where} AND {column} IS NOT NULL "
        f"GROUP BY {column} ORDER BY count(*) DESC, {column}",
        args,
    )
    return {str(key): int(count) for key, count in rows}


async def _message_stats(
    fetch: Fetch,
    dialect: Dialect,
    *,
    start: datetime,
    end: datetime,
    channel: str | None,
    template: str | None,
    top_errors: int,
) -> MessageStats:
    where, args = _where(dialect, start, end, channel, template)
    total, accepted, delivered, read, failed = (
        int(value or 0) for value in (await fetch(f"SELECT {_COUNTS} FROM messages WHERE {where}", args))[0]
    )
    statuses = await _groups(fetch, "status", where, args)
    errors = await fetch(
        f"SELECT error_code, count(*) FROM messages WHERE {where} AND error_code IS NOT NULL "
        "GROUP BY error_code ORDER BY count(*) DESC, error_code LIMIT ?",
        [*args, top_errors],
    )
    return MessageStats(
        start=start,
        end=end,
        channel=channel,
        template=template,
        total=total,
        accepted=accepted,
        delivered=delivered,
        read=read,
        failed=failed,
        delivery_rate=_rate(delivered, accepted),
        read_rate=_rate(read, delivered),
        by_status={status.value: statuses.get(status.value, 0) for status in DeliveryStatus},
        by_channel=await _groups(fetch, "channel", where, args),
        by_template=await _groups(fetch, "template", where, args),
        by_error_code=[ErrorCount(str(code), int(count)) for code, count in errors],
        to_delivered=await _latency(fetch, dialect, where, args, "delivered_at"),
        to_read=await _latency(fetch, dialect, where, args, "read_at"),
    )


async def _template_performance(
    fetch: Fetch, dialect: Dialect, *, start: datetime, end: datetime, template: str | None, top_errors: int
) -> list[TemplatePerformance]:
    where, args = _where(dialect, start, end, None, template)
    where += " AND template IS NOT NULL"
    rows = await fetch(
        f"SELECT template, language, {_COUNTS} FROM messages WHERE {where} GROUP BY template, language",
        args,
    )
    errors: dict[tuple[str, str | None], list[ErrorCount]] = {}
    for name, language, code, count in await fetch(
        f"SELECT template, language, error_code, count(*) FROM messages WHERE {where} "
        "AND error_code IS NOT NULL GROUP BY template, language, error_code "
        "ORDER BY count(*) DESC, error_code",
        args,
    ):
        errors.setdefault((name, language), []).append(ErrorCount(str(code), int(count)))
    result = []
    for name, language, *counts in rows:
        total, sent, delivered, read, failed = (int(value or 0) for value in counts)
        result.append(
            TemplatePerformance(
                template=name,
                language=language,
                total=total,
                sent=sent,
                delivered=delivered,
                read=read,
                failed=failed,
                delivery_rate=_rate(delivered, sent),
                read_rate=_rate(read, delivered),
                failure_rate=_rate(failed, total),
                top_errors=errors.get((name, language), [])[:top_errors],
            )
        )
    # Sorted here: the backends disagree on where NULL languages go.
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
) -> MessageStats:
    """The stats of the messages created in ``[start, end)``, of ``channel``/``template`` if given.

    :raises ValueError: naive datetimes, or ``start >= end``.
    :raises TypeError: a store that is neither SQLite nor PostgreSQL.
    :raises StoreError: the database cannot answer.
    """
    _check_range(start, end)
    dialect, run = _backend(store)

    async def work(fetch: Fetch) -> MessageStats:
        return await _message_stats(
            fetch, dialect, start=start, end=end, channel=channel, template=template, top_errors=top_errors
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
