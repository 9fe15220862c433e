"""The aggregate tables' SQL (see :mod:`omnichannel.store.rollup`): schema, backfill and deltas.

The backfill recounts ``messages``: the hour rows from the messages, then the day rows from the
hour rows. Both backends compute a latency's bucket with ``omnichannel_latency_bucket(µs)``: a
SQL function on PostgreSQL (created by the migration, ``width_bucket`` over :data:`BOUNDS`), a
Python function (:func:`~omnichannel.store.rollup.latency_bucket`) that the SQLite store
registers on its connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .rollup import BOUNDS, DAY, HOUR, CountKey, LatencyKey

__all__ = [
    "BUCKET_FUNCTION",
    "COUNT_COLUMNS",
    "LATENCY_COLUMNS",
    "POSTGRES_ADD_COUNTS",
    "POSTGRES_ADD_LATENCIES",
    "SQLITE_ADD_COUNTS",
    "SQLITE_ADD_LATENCIES",
    "backfill",
    "postgres_schema",
    "rebuild",
    "rows",
    "sqlite_schema",
]

BUCKET_FUNCTION = "omnichannel_latency_bucket"
_COUNT_KEY = "span, period, channel, template, language, status, error_code, accepted"
_LATENCY_KEY = "span, period, channel, template, kind, bucket"
COUNT_COLUMNS = f"{_COUNT_KEY}, messages"
LATENCY_COLUMNS = f"{_LATENCY_KEY}, messages"
_ACCEPTED = (
    "CASE WHEN accepted_at IS NOT NULL OR sent_at IS NOT NULL OR delivered_at IS NOT NULL THEN 1 ELSE 0 END"
)
_SEND = "coalesce(accepted_at, sent_at)"


def _tables(time: str, suffix: str) -> tuple[str, str]:
    counts = f"""
CREATE TABLE message_counts (
    span INTEGER NOT NULL,
    period {time} NOT NULL,
    channel TEXT NOT NULL,
    template TEXT NOT NULL,
    language TEXT NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    messages BIGINT NOT NULL,
    PRIMARY KEY ({_COUNT_KEY})
){suffix}"""
    latencies = f"""
CREATE TABLE message_latencies (
    span INTEGER NOT NULL,
    period {time} NOT NULL,
    channel TEXT NOT NULL,
    template TEXT NOT NULL,
    kind TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    messages BIGINT NOT NULL,
    PRIMARY KEY ({_LATENCY_KEY})
){suffix}"""
    return counts, latencies


def _backfill(
    hour_of: Callable[[str], str], day_of: Callable[[str], str], micros: Callable[[str, str], str]
) -> tuple[str, ...]:
    def latencies(kind: str, column: str) -> str:
        return (
            f"SELECT created_at, channel, coalesce(template, '') AS template, '{kind}' AS kind, "
            f"{BUCKET_FUNCTION}({micros(column, _SEND)}) AS bucket FROM messages "
            f"WHERE {column} IS NOT NULL AND {_SEND} IS NOT NULL"
        )

    return (
        f"INSERT INTO message_counts ({COUNT_COLUMNS}) "
        f"SELECT {HOUR}, {hour_of('created_at')}, channel, coalesce(template, ''), coalesce(language, ''), "
        f"status, coalesce(error_code, ''), {_ACCEPTED}, count(*) FROM messages "
        "GROUP BY 2, 3, 4, 5, 6, 7, 8",
        f"INSERT INTO message_latencies ({LATENCY_COLUMNS}) "
        f"SELECT {HOUR}, {hour_of('created_at')}, channel, template, kind, bucket, count(*) "
        f"FROM ({latencies('delivered', 'delivered_at')} UNION ALL {latencies('read', 'read_at')}) AS l "
        "GROUP BY 2, 3, 4, 5, 6",
        f"INSERT INTO message_counts ({COUNT_COLUMNS}) "
        f"SELECT {DAY}, {day_of('period')}, channel, template, language, status, error_code, accepted, "
        f"sum(messages) FROM message_counts WHERE span = {HOUR} GROUP BY 2, 3, 4, 5, 6, 7, 8",
        f"INSERT INTO message_latencies ({LATENCY_COLUMNS}) "
        f"SELECT {DAY}, {day_of('period')}, channel, template, kind, bucket, sum(messages) "
        f"FROM message_latencies WHERE span = {HOUR} GROUP BY 2, 3, 4, 5, 6",
    )


def _sqlite_floor(span: int) -> Callable[[str], str]:
    width = span * 1000
    return lambda column: f"({column} - (({column} % {width}) + {width}) % {width})"


def _postgres_floor(span: int) -> Callable[[str], str]:
    return lambda column: f"to_timestamp(floor(extract(epoch FROM {column}) / {span}) * {span})"


_SQLITE_BACKFILL = _backfill(
    _sqlite_floor(HOUR), _sqlite_floor(DAY), lambda later, earlier: f"(({later}) - ({earlier})) * 1000"
)
_POSTGRES_BACKFILL = (
    *_backfill(
        _postgres_floor(HOUR),
        _postgres_floor(DAY),
        lambda later, earlier: f"(extract(epoch FROM ({later}) - ({earlier})) * 1000000)::bigint",
    ),
    "ANALYZE message_counts, message_latencies",  # the planner's estimates, before autovacuum's
)

_BOUNDS = "ARRAY[" + ",".join(map(str, BOUNDS)) + "]::bigint[]"
_POSTGRES_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {BUCKET_FUNCTION}(micros bigint) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT CASE WHEN micros >= 0 THEN width_bucket(micros, {_BOUNDS})
            ELSE -1 - width_bucket(-micros, {_BOUNDS}) END
$$"""


def sqlite_schema() -> tuple[str, ...]:
    """Migration 2 on SQLite: the tables (clustered on their keys), backfilled."""
    return (*_tables("INTEGER", " WITHOUT ROWID"), *_SQLITE_BACKFILL)


def postgres_schema() -> tuple[str, ...]:
    """Migration 2 on PostgreSQL: the bucket function and the tables, backfilled."""
    return (_POSTGRES_FUNCTION, *_tables("TIMESTAMPTZ", ""), *_POSTGRES_BACKFILL)


def backfill(backend: str) -> tuple[str, ...]:
    """The statements that fill empty aggregate tables from ``messages`` (``sqlite``/``postgres``)."""
    return _SQLITE_BACKFILL if backend == "sqlite" else _POSTGRES_BACKFILL


def rebuild(backend: str) -> tuple[str, ...]:
    """The statements that recount the aggregates from ``messages``. PostgreSQL empties the tables
    with ``TRUNCATE``: writers wait until the rebuild commits (row by row, a ``DELETE`` could
    deadlock with them)."""
    if backend == "sqlite":
        return ("DELETE FROM message_counts", "DELETE FROM message_latencies", *_SQLITE_BACKFILL)
    return ("TRUNCATE message_counts, message_latencies", *_POSTGRES_BACKFILL)


SQLITE_ADD_COUNTS = (
    f"INSERT INTO message_counts ({COUNT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
    f"ON CONFLICT ({_COUNT_KEY}) DO UPDATE SET messages = messages + excluded.messages"
)
SQLITE_ADD_LATENCIES = (
    f"INSERT INTO message_latencies ({LATENCY_COLUMNS}) VALUES (?,?,?,?,?,?,?) "
    f"ON CONFLICT ({_LATENCY_KEY}) DO UPDATE SET messages = messages + excluded.messages"
)
POSTGRES_ADD_COUNTS = (
    f"INSERT INTO message_counts AS t ({COUNT_COLUMNS}) "
    "SELECT * FROM unnest($1::integer[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], "
    "$6::text[], $7::text[], $8::integer[], $9::bigint[]) "
    f"ON CONFLICT ({_COUNT_KEY}) DO UPDATE SET messages = t.messages + excluded.messages"
)
POSTGRES_ADD_LATENCIES = (
    f"INSERT INTO message_latencies AS t ({LATENCY_COLUMNS}) "
    "SELECT * FROM unnest($1::integer[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], "
    "$6::integer[], $7::bigint[]) "
    f"ON CONFLICT ({_LATENCY_KEY}) DO UPDATE SET messages = t.messages + excluded.messages"
)


def rows(
    changes: Sequence[tuple[CountKey, int]] | Sequence[tuple[LatencyKey, int]],
    period: Callable[[int], Any],
) -> list[tuple[Any, ...]]:
    """Delta rows as statement parameters, the period (µs) through ``period``."""
    return [(key[0], period(key[1]), *key[2:], delta) for key, delta in changes]
