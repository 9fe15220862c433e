"""The message store in PostgreSQL (production), through an asyncpg pool created on first use.

Every write is one transaction. A status takes a transaction-scoped advisory lock on its
(channel, provider message id) and then the message's row (``SELECT ... FOR UPDATE``); a send
with a provider id takes the same advisory lock first, so a status that outruns its send is either
seen by the send (pending) or finds the committed message. Migrations run under an advisory lock.
A write that changes a message updates the aggregates (:mod:`omnichannel.store.rollup`) last in
its transaction, in key order, so concurrent writers wait for each other's aggregate rows in one
order and never deadlock.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ..clock import Clock, SystemClock
from ..errors import StoreError
from ..message import DeliveryStatus
from ..urls import printable_url
from . import MessageRecord, SendRecord, StatusEntry, StatusUpdate
from .batch import fold_by_message, lock_keys, lookup_of, lookups
from .migrations import MESSAGE_COLUMNS, SCHEMA_VERSION_TABLE, pending
from .rollup import Deltas, Facts, from_micros, micros
from .rollup_sql import POSTGRES_ADD_COUNTS, POSTGRES_ADD_LATENCIES, rebuild, rows
from .sends import Existing, Planned, Rules, SendPlan, plan, send_keys
from .status import fold_all

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .status import StatusState

__all__ = ["PostgresMessageStore", "check_schema"]

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_MIGRATION_LOCK = 0x6F6D6E69  # advisory lock class ids ("omni", "stat"), keyed by hashtext(...)
_STATUS_LOCK = 0x73746174
_REPLAYS = 10
_ENTRY_COLUMNS = "status, occurred_at, error_code, error_detail"
_FACTS = (
    "created_at, channel, template, language, status, error_code, accepted_at, sent_at, delivered_at, read_at"
)
_PENDING_COLUMNS = f"channel, provider_message_id, {_ENTRY_COLUMNS}, received_at"
_INSERT_ENTRY = (
    f"INSERT INTO message_statuses (message_id, {_ENTRY_COLUMNS}) VALUES ($1,$2,$3,$4,$5) "
    "ON CONFLICT DO NOTHING"
)
_INSERT_PENDING = (
    f"INSERT INTO pending_statuses ({_PENDING_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING"
)
_WRITE_STATE = (
    "UPDATE messages SET status = $1, accepted_at = $2, sent_at = $3, delivered_at = $4, "
    "read_at = $5, failed_at = $6, error_code = $7, error_detail = $8, updated_at = $9 "
    "WHERE message_id = $10"
)
_INSERT_MESSAGES = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[], "
    "$3::text[], $4::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], "
    "$9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], "
    "$15::timestamptz[], $16::timestamptz[]) ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
)
_UPDATE_SENT = (
    "UPDATE messages SET recipient = coalesce($1, recipient), "
    "provider_message_id = coalesce($2, provider_message_id), template = coalesce($3, template), "
    "language = coalesce($4, language), error_kind = coalesce($5, error_kind), status = $6, "
    "accepted_at = $7, sent_at = $8, delivered_at = $9, read_at = $10, failed_at = $11, "
    "error_code = $12, error_detail = $13, updated_at = $14 WHERE message_id = $15"
)
_INSERT_ENTRIES = (
    f"INSERT INTO message_statuses (message_id, {_ENTRY_COLUMNS}) SELECT * FROM unnest($1::text[], "
    "$2::text[], $3::timestamptz[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING"
)
_TAKE_PENDING = (
    f"INSERT INTO message_statuses (message_id, {_ENTRY_COLUMNS}) "
    f"SELECT $1, {_ENTRY_COLUMNS} FROM pending_statuses "
    "WHERE channel = $2 AND provider_message_id = $3 ORDER BY id ON CONFLICT DO NOTHING"
)
# Rows by id, one index look-up per id (a LATERAL subquery, kept apart by its FOR UPDATE or
# OFFSET 0), not ``= ANY($1)`` nor a plain join: asyncpg keeps statements prepared, and the plan
# PostgreSQL picks while a table is small (a sequential scan comparing every row with every id,
# or hashing the whole table) stays in use as it grows (90 ms for 500 ids among 20k rows).
# _LOCK_MESSAGES locks the rows in the order of its ids: the caller sorts them.
_LOCK_MESSAGES = (
    "SELECT m.* FROM unnest($1::text[]) AS k(wanted), LATERAL ("
    f"SELECT message_id, provider_message_id, {_FACTS} FROM messages WHERE message_id = k.wanted "
    "FOR UPDATE) AS m"
)
_HISTORIES = (
    "SELECT h.* FROM unnest($1::text[]) AS k(wanted), LATERAL ("
    f"SELECT message_id, {_ENTRY_COLUMNS} FROM message_statuses WHERE message_id = k.wanted "
    "OFFSET 0) AS h"
)
# The statuses waiting under (channel, provider id) keys, oldest first.
_WAITING = (
    "SELECT p.channel, p.provider_message_id, p.status, p.occurred_at, p.error_code, p.error_detail "
    "FROM unnest($1::text[], $2::text[]) AS k(ch, pid), LATERAL (SELECT * FROM pending_statuses "
    "WHERE channel = k.ch AND provider_message_id = k.pid OFFSET 0) AS p ORDER BY p.id"
)
_RULES = Rules(stored=lambda moment: moment, to_micros=micros, pending_by_row=False)
# Each lookup (message id, channel, provider id) of a batch resolved as record_status does.
_RESOLVE = """
SELECT k.i, coalesce(
  (SELECT m.message_id FROM messages m WHERE m.message_id = k.mid),
  (SELECT m.message_id FROM messages m WHERE m.channel = k.ch AND m.provider_message_id = k.pid
   ORDER BY m.created_at DESC LIMIT 1))
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(mid, ch, pid, i)
"""


def _facts(row: Any) -> Facts:
    """A ``_FACTS`` row as :class:`Facts` (times in microseconds)."""
    created, channel, template, language, status, code, *times = row
    return Facts(
        micros(created),
        channel,
        template,
        language,
        status,
        code,
        *(None if t is None else micros(t) for t in times),
    )


def _columns(changes: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column (``unnest`` parameters)."""
    return [list(column) for column in zip(*changes, strict=True)]


def _state_args(state: StatusState, now: datetime, message_id: str) -> tuple[Any, ...]:
    assert state.status is not None
    return (
        state.status.value,
        state.accepted_at,
        state.sent_at,
        state.delivered_at,
        state.read_at,
        state.failed_at,
        state.error_code,
        state.error_detail,
        now,
        message_id,
    )


class _Raced(Exception):
    """A message of the batch was created by another writer after the batch read its rows."""


def _insert_columns(messages: list[Planned], now: datetime) -> list[list[Any]]:
    """The new messages as ``_INSERT_MESSAGES``'s parameters (one list per column)."""
    rows = []
    for m in messages:
        state = m.state
        assert state.status is not None
        rows.append(
            (
                m.message_id,
                m.channel,
                state.status.value,
                m.recipient,
                m.provider_message_id,
                m.template,
                m.language,
                m.error_kind,
                state.error_code,
                state.error_detail,
                state.accepted_at,
                state.sent_at,
                state.delivered_at,
                state.read_at,
                state.failed_at,
            )
        )
    columns = _columns(rows)
    return [*columns[:3], [now] * len(messages), *columns[3:]]


def check_schema(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier; else :class:`ValueError`."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema {schema!r} must be a lower-case identifier ([a-z_][a-z0-9_]*, 63 at most)")
    return schema


class PostgresMessageStore:
    """A :class:`~omnichannel.store.MessageStore` in PostgreSQL.

    :param dsn: the ``postgresql://`` URL (asyncpg's options allowed).
    :param clock: the time of ``created_at``/``updated_at``.
    :param schema: put the tables in this schema (created by :meth:`upgrade`); default: the
        connection's ``search_path`` (usually ``public``).
    :param pool_size: the most connections the pool opens.
    :param connect_timeout_s: how long opening a connection may take.
    :raises StoreError: from any method, when PostgreSQL cannot answer.
    """

    def __init__(
        self,
        dsn: str,
        *,
        clock: Clock | None = None,
        schema: str | None = None,
        pool_size: int = 10,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.schema = None if schema is None else check_schema(schema)
        self._clock: Clock = clock or SystemClock()
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._pool: Any = None
        self._migrated = False
        self._closed = False
        self._opening = asyncio.Lock()
        self._asyncpg: Any = importlib.import_module("asyncpg")

    def __repr__(self) -> str:
        return f"<PostgresMessageStore {printable_url(self.dsn)!r} schema={self.schema!r}>"

    async def upgrade(self) -> int:
        """Apply the missing migrations (one transaction, advisory lock); return the version."""
        await self._connected()
        return await self._run("upgrade", self._migrate)

    async def record_send(
        self,
        *,
        message_id: str,
        channel: str,
        status: DeliveryStatus,
        at: datetime,
        recipient: str | None = None,
        provider_message_id: str | None = None,
        template: str | None = None,
        language: str | None = None,
        error_kind: str | None = None,
        error_code: str | None = None,
        error_detail: str | None = None,
    ) -> None:
        """See :meth:`MessageStore.record_send`."""

        async def run(conn: Any) -> None:
            now = self._clock.now()
            if provider_message_id is not None:
                await self._lock_status(conn, channel, provider_message_id)
            # Insert, or else lock the existing row and read what the aggregates count of it (a
            # concurrent first send of the same id makes the insert wait, then find its row).
            old = None
            if not await conn.fetchval(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) "
                "VALUES ($1,$2,$3,$4,$4,$5,$6,$7,$8,$9,NULL,NULL,NULL,NULL,NULL,NULL,NULL) "
                "ON CONFLICT (message_id) DO NOTHING RETURNING true",
                message_id,
                channel,
                status.value,
                now,
                recipient,
                provider_message_id,
                template,
                language,
                error_kind,
            ):
                row = await conn.fetchrow(
                    f"SELECT {_FACTS} FROM messages WHERE message_id = $1 FOR UPDATE", message_id
                )
                old = _facts(row)
                await conn.execute(
                    "UPDATE messages SET recipient = coalesce($2, recipient), "
                    "provider_message_id = coalesce($3, provider_message_id), "
                    "template = coalesce($4, template), language = coalesce($5, language), "
                    "error_kind = coalesce($6, error_kind) WHERE message_id = $1",
                    message_id,
                    recipient,
                    provider_message_id,
                    template,
                    language,
                    error_kind,
                )
            await self._append(conn, message_id, StatusEntry(status, at, error_code, error_detail))
            if provider_message_id is not None:
                await conn.execute(_TAKE_PENDING, message_id, channel, provider_message_id)
                await conn.execute(
                    "DELETE FROM pending_statuses WHERE channel = $1 AND provider_message_id = $2",
                    channel,
                    provider_message_id,
                )
            state = await self._refold(conn, message_id, now)
            base = old or Facts(micros(now), channel, None, None, status.value, None, None, None, None, None)
            base = base._replace(
                template=base.template if template is None else template,
                language=base.language if language is None else language,
            )
            deltas = Deltas()
            deltas.move(old, base.folded(state, micros))
            await self._add(conn, deltas)

        await self._run("record_send", run, write=True)

    async def record_sends(self, sends: Sequence[SendRecord]) -> None:
        """See :meth:`MessageStore.record_sends`.

        One transaction: the status locks of the batch's (channel, provider id) keys in lock-id
        order (as :meth:`record_statuses`); the rows of its messages that exist locked in id
        order, the statuses waiting for its keys and the existing messages' histories read (one
        query each); the batch played in memory (:mod:`omnichannel.store.sends`); then one
        statement per table: the new messages inserted whole (``unnest``, in id order), the
        others updated, the history rows, the waiting statuses deleted, the aggregates' changes.
        A message another writer creates meanwhile (its insert then finds the row) makes the
        batch read and play again, from a savepoint.
        """
        batch = list(sends)
        if not batch:
            return

        async def run(conn: Any) -> None:
            now = self._clock.now()
            keys = sorted(
                {f"{s.channel}\n{s.provider_message_id}" for s in batch if s.provider_message_id is not None}
            )
            if keys:
                hashes = await conn.fetch(
                    "SELECT DISTINCT hashtext(k) FROM unnest($1::text[]) AS k ORDER BY 1", keys
                )
                await conn.executemany(
                    "SELECT pg_advisory_xact_lock($1, $2)", [(_STATUS_LOCK, row[0]) for row in hashes]
                )
            # Each replay follows a message that another writer committed meanwhile: a few at most.
            for _ in range(_REPLAYS):
                try:
                    async with conn.transaction():  # a savepoint
                        await self._write_sends(conn, batch, now)
                    return
                except _Raced:
                    continue
            raise StoreError(
                f"message store {printable_url(self.dsn)!r}: record_sends found new messages created "
                f"by other writers {_REPLAYS} times in a row; try the batch again"
            )

        await self._run("record_sends", run, write=True)

    async def _write_sends(self, conn: Any, batch: list[SendRecord], now: datetime) -> None:
        """:meth:`record_sends` after the status locks; :class:`_Raced` if a new message exists."""
        ids = sorted({send.message_id for send in batch})
        rows = await conn.fetch(_LOCK_MESSAGES, ids)
        existing = {row[0]: Existing(row[1], _facts(list(row)[2:])) for row in rows}
        keys = send_keys(batch, existing, _RULES)
        wanted = list(dict.fromkeys(key for key in keys if key is not None))
        waiting: dict[tuple[str, str], list[StatusEntry]] = {}
        if wanted:
            for row in await conn.fetch(_WAITING, [key[0] for key in wanted], [key[1] for key in wanted]):
                waiting.setdefault((row[0], row[1]), []).append(
                    StatusEntry(DeliveryStatus(row[2]), row[3], row[4], row[5])
                )
        histories: dict[str, list[StatusEntry]] = {}
        if existing:
            for row in await conn.fetch(_HISTORIES, sorted(existing)):
                histories.setdefault(row[0], []).append(
                    StatusEntry(DeliveryStatus(row[1]), row[2], row[3], row[4])
                )
        done = plan(
            batch,
            keys,
            now_micros=micros(now),
            existing=existing,
            histories=histories,
            pending=waiting,
            rules=_RULES,
        )
        await self._write_plan(conn, done, now)

    async def _write_plan(self, conn: Any, done: SendPlan, now: datetime) -> None:
        if done.inserts:
            created = await conn.fetch(_INSERT_MESSAGES, *_insert_columns(done.inserts, now))
            if len(created) != len(done.inserts):
                raise _Raced
        if done.updates:
            await conn.executemany(
                _UPDATE_SENT,
                [(*m[2:7], *_state_args(m.state, now, m.message_id)) for m in done.updates],
            )
        if done.entries:
            entries = [
                (mid, e.status.value, e.occurred_at, e.error_code, e.error_detail) for mid, e in done.entries
            ]
            await conn.execute(_INSERT_ENTRIES, *_columns(entries))
        if done.consumed:
            await conn.execute(
                "DELETE FROM pending_statuses WHERE (channel, provider_message_id) IN "
                "(SELECT * FROM unnest($1::text[], $2::text[]))",
                [key[0] for key in done.consumed],
                [key[1] for key in done.consumed],
            )
        await self._add(conn, done.deltas)

    async def record_status(
        self,
        *,
        channel: str,
        provider_message_id: str,
        status: DeliveryStatus,
        at: datetime,
        message_id: str | None = None,
        error_code: str | None = None,
        error_detail: str | None = None,
    ) -> None:
        """See :meth:`MessageStore.record_status`."""

        async def run(conn: Any) -> None:
            now = self._clock.now()
            await self._lock_status(conn, channel, provider_message_id)
            found = None
            if message_id is not None:
                found = await conn.fetchrow(
                    f"SELECT message_id, {_FACTS} FROM messages WHERE message_id = $1 FOR UPDATE", message_id
                )
            if found is None:
                found = await conn.fetchrow(
                    f"SELECT message_id, {_FACTS} FROM messages WHERE channel = $1 "
                    "AND provider_message_id = $2 ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
                    channel,
                    provider_message_id,
                )
            if found is None:
                await conn.execute(
                    _INSERT_PENDING,
                    channel,
                    provider_message_id,
                    status.value,
                    at,
                    error_code,
                    error_detail,
                    now,
                )
                return
            old = _facts(list(found)[1:])
            await self._append(conn, found[0], StatusEntry(status, at, error_code, error_detail))
            state = await self._refold(conn, found[0], now)
            deltas = Deltas()
            deltas.move(old, old.folded(state, micros))
            await self._add(conn, deltas)

        await self._run("record_status", run, write=True)

    async def record_statuses(self, updates: Sequence[StatusUpdate]) -> None:
        """See :meth:`MessageStore.record_statuses`.

        One transaction: the batch's status locks, in the order of their lock ids (so parallel
        batches never deadlock); its lookups resolved in one query; the messages' rows locked in
        id order; history and pending rows inserted in the batch's order; the touched messages
        folded from their histories (one query) and written back; the aggregates' changes summed
        and applied (one statement per table).
        """
        batch = list(updates)
        if not batch:
            return

        async def run(conn: Any) -> None:
            now = self._clock.now()
            hashes = await conn.fetch(
                "SELECT DISTINCT hashtext(k) FROM unnest($1::text[]) AS k ORDER BY 1", lock_keys(batch)
            )
            await conn.executemany(
                "SELECT pg_advisory_xact_lock($1, $2)", [(_STATUS_LOCK, row[0]) for row in hashes]
            )
            wanted = lookups(batch)
            rows = await conn.fetch(
                _RESOLVE, [w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted]
            )
            found = {wanted[row[0] - 1]: row[1] for row in rows}
            ids = sorted({mid for mid in found.values() if mid is not None})
            olds: dict[str, Facts] = {}
            if ids:
                locked = await conn.fetch(_LOCK_MESSAGES, ids)
                olds = {row[0]: _facts(list(row)[2:]) for row in locked}
            entries, waiting = [], []
            for update in batch:
                mid = found[lookup_of(update)]
                values = (update.status.value, update.at, update.error_code, update.error_detail)
                if mid is None:
                    waiting.append((update.channel, update.provider_message_id, *values, now))
                else:
                    entries.append((mid, *values))
            if entries:
                await conn.executemany(_INSERT_ENTRY, entries)
            if waiting:
                await conn.executemany(_INSERT_PENDING, waiting)
            if not ids:
                return
            history = await conn.fetch(_HISTORIES, ids)
            states = fold_by_message(
                (row[0], StatusEntry(DeliveryStatus(row[1]), row[2], row[3], row[4])) for row in history
            )
            await conn.executemany(_WRITE_STATE, [_state_args(states[mid], now, mid) for mid in ids])
            deltas = Deltas()
            for mid in ids:
                deltas.move(olds[mid], olds[mid].folded(states[mid], micros))
            await self._add(conn, deltas)

        await self._run("record_statuses", run, write=True)

    async def get(self, message_id: str) -> MessageRecord | None:
        """See :meth:`MessageStore.get`."""

        async def run(conn: Any) -> MessageRecord | None:
            row = await conn.fetchrow(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = $1", message_id
            )
            if row is None:
                return None
            values = list(row)
            values[2] = DeliveryStatus(values[2])
            return MessageRecord(*values)

        return await self._run("get", run)

    async def history(self, message_id: str) -> list[StatusEntry]:
        """See :meth:`MessageStore.history`."""
        return await self._run("history", lambda conn: self._entries(conn, message_id))

    async def schema_version(self) -> int:
        """See :meth:`MessageStore.schema_version`: read without migrating (0 when the schema or
        its ``schema_version`` table does not exist; neither is created)."""
        pool = await self._connected(migrate=False)

        async def run(conn: Any) -> int:
            if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
                return 0
            return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

        return await self._run("schema_version", run, pool=pool)

    async def rebuild_aggregates(self) -> None:
        """Recount the aggregates from ``messages`` (one transaction, under the migration lock):
        after rows were written around the store (a bulk load), or to repair them."""

        async def run(conn: Any) -> None:
            await self._lock_migrations(conn)
            for statement in rebuild("postgres"):
                await conn.execute(statement)

        await self._run("rebuild_aggregates", run, write=True)

    async def forget_details(self, before: datetime) -> int:
        """See :meth:`MessageStore.forget_details`."""

        async def run(conn: Any) -> int:
            result = await conn.execute(
                "UPDATE messages SET recipient = NULL, error_detail = NULL "
                "WHERE created_at < $1 AND (recipient IS NOT NULL OR error_detail IS NOT NULL)",
                before,
            )
            await conn.execute("DELETE FROM pending_statuses WHERE occurred_at < $1", before)
            return int(result.split()[-1])  # "UPDATE <count>"

        return await self._run("forget_details", run, write=True)

    async def close(self) -> None:
        """Close the pool; the store cannot be used afterwards."""
        async with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    async def _lock_status(conn: Any, channel: str, provider_message_id: str) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            _STATUS_LOCK,
            f"{channel}\n{provider_message_id}",
        )

    @staticmethod
    async def _entries(conn: Any, message_id: str) -> list[StatusEntry]:
        rows = await conn.fetch(
            f"SELECT {_ENTRY_COLUMNS} FROM message_statuses WHERE message_id = $1 ORDER BY occurred_at, id",
            message_id,
        )
        return [StatusEntry(DeliveryStatus(row[0]), row[1], row[2], row[3]) for row in rows]

    @staticmethod
    async def _append(conn: Any, message_id: str, entry: StatusEntry) -> None:
        await conn.execute(
            _INSERT_ENTRY,
            message_id,
            entry.status.value,
            entry.occurred_at,
            entry.error_code,
            entry.error_detail,
        )

    async def _refold(self, conn: Any, message_id: str, now: datetime) -> StatusState:
        """Fold the message's whole history again (a handful of rows), write and return the result."""
        state = fold_all(await self._entries(conn, message_id))
        await conn.execute(_WRITE_STATE, *_state_args(state, now, message_id))
        return state

    @staticmethod
    async def _add(conn: Any, deltas: Deltas) -> None:
        """Apply the aggregates' changes (last in the transaction, in key order)."""
        counts, latencies = deltas.count_rows(), deltas.latency_rows()
        if counts:
            await conn.execute(POSTGRES_ADD_COUNTS, *_columns(rows(counts, from_micros)))
        if latencies:
            await conn.execute(POSTGRES_ADD_LATENCIES, *_columns(rows(latencies, from_micros)))

    async def _lock_migrations(self, conn: Any) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _MIGRATION_LOCK, self.schema or "public"
        )

    async def _migrate(self, conn: Any) -> int:
        async with conn.transaction():
            await self._lock_migrations(conn)
            if self.schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(SCHEMA_VERSION_TABLE["postgres"])
            version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
            for migration in pending(version):
                for statement in migration.postgres:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", migration.version)
                version = migration.version
        return version

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (OSError, self._asyncpg.PostgresError, self._asyncpg.InterfaceError)

    async def _run(
        self, operation: str, run: Callable[[Any], Awaitable[T]], *, write: bool = False, pool: Any = None
    ) -> T:
        """``run`` on a pooled connection (in a transaction if ``write``); errors become StoreError."""
        if pool is None:
            pool = await self._connected()
        try:
            async with pool.acquire() as conn:
                if not write:
                    return await run(conn)
                async with conn.transaction():
                    return await run(conn)
        except self._errors() as exc:
            raise StoreError(
                f"message store {printable_url(self.dsn)!r}: {operation} failed ({type(exc).__name__}: {exc})"
            ) from exc

    async def _connected(self, *, migrate: bool = True) -> Any:
        """The pool; the first call creates it, the first with ``migrate`` migrates the schema."""
        async with self._opening:
            if self._closed:
                raise StoreError(f"message store {printable_url(self.dsn)!r} is closed")
            if self._pool is None:
                self._pool = await self._create_pool()
            if migrate and not self._migrated:
                try:
                    async with self._pool.acquire() as conn:
                        await self._migrate(conn)
                except BaseException as exc:
                    pool, self._pool = self._pool, None
                    await pool.close()
                    if isinstance(exc, self._errors()):
                        raise StoreError(
                            f"message store {printable_url(self.dsn)!r} cannot be opened or migrated "
                            f"({type(exc).__name__}: {exc})"
                        ) from exc
                    raise
                self._migrated = True
            return self._pool

    async def _create_pool(self) -> Any:
        settings = {} if self.schema is None else {"search_path": self.schema}
        try:
            return await self._asyncpg.create_pool(
                self.dsn,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._connect_timeout_s,
                server_settings=settings,
            )
        except self._errors() as exc:
            where = printable_url(self.dsn)
            raise StoreError(
                f"message store {where!r} cannot be opened ({type(exc).__name__}: {exc})"
            ) from exc
