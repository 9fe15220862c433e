"""The message store in PostgreSQL (production), through an asyncpg pool created on first use.

Every write is one transaction. A status takes a transaction-scoped advisory lock on its
(channel, provider message id) and then the message's row (``SELECT ... FOR UPDATE``); a send
with a provider id takes the same advisory lock first, so a status that outruns its send is either
seen by the send (pending) or finds the committed message. Migrations run under an advisory lock.
A write that changes a message updates the aggregates (:mod:`omnichannel.store.rollup`) last in
its transaction, in key order, so concurrent writers wait for each other's aggregate rows in one
order and never deadlock.

This module holds the store: its pool, migrations, reads and retention. The writers are functions
of the write's connection: :mod:`.postgres_sends` and :mod:`.postgres_statuses`, over the steps
they share (:mod:`.postgres_writes`); :mod:`.postgres_stats` runs the analytics.
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
from . import MessageRecord, SendRecord, StatusUpdate
from .migrations import LATEST_VERSION, MESSAGE_COLUMNS, SCHEMA_VERSION_TABLE, pending
from .postgres_sends import Raced, lock_sends, write_send, write_sends
from .postgres_statuses import write_status, write_statuses
from .postgres_writes import read_history
from .rollup_sql import rebuild

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from . import StatusEntry

__all__ = ["PostgresMessageStore", "check_schema"]

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_MIGRATION_LOCK = 0x6F6D6E69  # the migrations' advisory lock class id ("omni"; status locks: "stat")
_REPLAYS = 10


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
        send = SendRecord(
            message_id=message_id,
            channel=channel,
            status=status,
            at=at,
            recipient=recipient,
            provider_message_id=provider_message_id,
            template=template,
            language=language,
            error_kind=error_kind,
            error_code=error_code,
            error_detail=error_detail,
        )
        await self._run("record_send", lambda conn: write_send(conn, send, self._clock.now()), write=True)

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
            await lock_sends(conn, batch)
            # Each replay follows a message that another writer committed meanwhile: a few at most.
            for _ in range(_REPLAYS):
                try:
                    async with conn.transaction():  # a savepoint
                        await self._write_sends(conn, batch, now)
                    return
                except Raced:
                    continue
            raise StoreError(
                f"message store {printable_url(self.dsn)!r}: record_sends found new messages created "
                f"by other writers {_REPLAYS} times in a row; try the batch again"
            )

        await self._run("record_sends", run, write=True)

    # An attribute rather than a call in record_sends, so that a test can count or fail the plays.
    _write_sends = staticmethod(write_sends)

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
        update = StatusUpdate(
            channel=channel,
            provider_message_id=provider_message_id,
            status=status,
            at=at,
            message_id=message_id,
            error_code=error_code,
            error_detail=error_detail,
        )
        await self._run(
            "record_status", lambda conn: write_status(conn, update, self._clock.now()), write=True
        )

    async def record_statuses(self, updates: Sequence[StatusUpdate]) -> None:
        """See :meth:`MessageStore.record_statuses`.

        One transaction: the batch's status locks, in the order of their lock ids (so parallel
        batches never deadlock); its lookups resolved in one query; the messages' rows locked in
        id order; history and pending rows inserted in the batch's order; the touched messages
        folded from their histories (one query) and written back; the aggregates' changes summed
        and applied (one statement per table).
        """
        batch = list(updates)
        if batch:
            await self._run(
                "record_statuses", lambda conn: write_statuses(conn, batch, self._clock.now()), write=True
            )

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
        return await self._run("history", lambda conn: read_history(conn, message_id))

    async def schema_version(self) -> int:
        """See :meth:`MessageStore.schema_version`: read without migrating (0 when the schema or
        its ``schema_version`` table does not exist; neither is created)."""
        pool = await self._connected(migrate=False)
        return await self._run("schema_version", _read_version, pool=pool)

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
                        # Read first: a current schema needs no DDL, so a role without CREATE
                        # on the schema can run the service once `db upgrade` was run.
                        if await _read_version(conn) < LATEST_VERSION:
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


async def _read_version(conn: Any) -> int:
    """The schema's version, read without writing (0 when it has no ``schema_version`` table)."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
