"""The message store's schema, as an ordered list of migrations (one SQL script per backend).

Both backends hold the same logical schema: ``messages`` (one row per message, its current state),
``message_statuses`` (every status entry of a message, duplicates dropped by a unique key),
``pending_statuses`` (statuses that arrived before their message's send was recorded, keyed by
channel and provider message id), the aggregates ``message_counts`` and ``message_latencies``
(version 2, backfilled from ``messages``: :mod:`omnichannel.store.rollup`) and
``schema_version``. SQLite keeps times as UTC epoch milliseconds, PostgreSQL as
``timestamptz``; SQLite's migrations may call ``omnichannel_latency_bucket``, which the store
registers on its connection. A backend's ``upgrade()`` applies the migrations
newer than the recorded version in one transaction, holding a lock that makes a second process
wait (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``pg_advisory_xact_lock``), so a migration runs
once however many processes upgrade at once. ``schema_version()`` reads the applied version
without upgrading; :data:`LATEST_VERSION` is the one this code brings.
"""

from __future__ import annotations

import attrs

from .rollup_sql import postgres_schema, sqlite_schema

__all__ = [
    "LATEST",
    "LATEST_VERSION",
    "MESSAGE_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION_TABLE",
    "Migration",
    "pending",
]


@attrs.frozen
class Migration:
    """One schema step: its version and its statements for each backend."""

    version: int
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


MESSAGE_COLUMNS = (
    "message_id, channel, status, created_at, updated_at, recipient, provider_message_id, template, "
    "language, error_kind, error_code, error_detail, accepted_at, sent_at, delivered_at, read_at, failed_at"
)
"""The ``messages`` columns in :class:`~omnichannel.store.MessageRecord` order."""

SCHEMA_VERSION_TABLE = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at INTEGER NOT NULL)"
    ),
    "postgres": (
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ),
}


def _messages(time: str) -> str:
    return f"""
CREATE TABLE messages (
    message_id TEXT PRIMARY KEY NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    recipient TEXT,
    provider_message_id TEXT,
    template TEXT,
    language TEXT,
    error_kind TEXT,
    error_code TEXT,
    error_detail TEXT,
    accepted_at {time},
    sent_at {time},
    delivered_at {time},
    read_at {time},
    failed_at {time}
)"""


def _statuses(time: str, key: str) -> str:
    return f"""
CREATE TABLE message_statuses (
    id {key},
    message_id TEXT NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    occurred_at {time} NOT NULL,
    error_code TEXT,
    error_detail TEXT,
    UNIQUE (message_id, status, occurred_at)
)"""


def _pending(time: str, key: str) -> str:
    return f"""
CREATE TABLE pending_statuses (
    id {key},
    channel TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    occurred_at {time} NOT NULL,
    error_code TEXT,
    error_detail TEXT,
    received_at {time} NOT NULL,
    UNIQUE (channel, provider_message_id, status, occurred_at)
)"""


_INDEXES = (
    "CREATE INDEX messages_provider_id ON messages (channel, provider_message_id)",
    "CREATE INDEX messages_created_at ON messages (created_at)",
)


def _initial(time: str, key: str) -> tuple[str, ...]:
    return (_messages(time), _statuses(time, key), _pending(time, key), *_INDEXES)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        sqlite=_initial("INTEGER", "INTEGER PRIMARY KEY"),
        postgres=_initial("TIMESTAMPTZ", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    ),
    Migration(2, sqlite=sqlite_schema(), postgres=postgres_schema()),
)
"""Every migration, oldest first; append, never edit one that shipped."""

LATEST_VERSION = MIGRATIONS[-1].version
"""The schema version this code brings (``omnichannel db status`` compares it with
``schema_version()``)."""
LATEST = LATEST_VERSION
"""The former name of :data:`LATEST_VERSION`."""


def pending(current: int) -> list[Migration]:
    """The migrations newer than ``current``, oldest first."""
    return [migration for migration in MIGRATIONS if migration.version > current]
