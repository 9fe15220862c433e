"""The message store in a SQLite file (the embedded default), shared by the processes that open it.

Times are UTC epoch milliseconds. Every write is one ``BEGIN IMMEDIATE`` transaction, so two
processes never fold the same message at once; the file is in WAL mode. The schema is migrated
when the file is first opened (and by :meth:`SqliteMessageStore.upgrade`). A write that changes
a message also updates the aggregates (:mod:`omnichannel.store.rollup`) in its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from .._sqlite import open_sqlite
from ..clock import Clock, SystemClock
from ..errors import StoreError
from ..idempotency.sqlite import from_ms, to_ms
from ..message import DeliveryStatus
from . import MessageRecord, SendRecord, StatusEntry, StatusUpdate
from .batch import fold_by_message, lookup_of, lookups
from .migrations import MESSAGE_COLUMNS, SCHEMA_VERSION_TABLE, pending
from .rollup import Deltas, Facts, latency_bucket
from .rollup_sql import BUCKET_FUNCTION, SQLITE_ADD_COUNTS, SQLITE_ADD_LATENCIES, rebuild, rows
from .sends import Existing, Planned, Rules, plan, send_keys
from .status import fold_all

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .status import StatusState

__all__ = ["SqliteMessageStore"]

T = TypeVar("T")

_ENTRY_COLUMNS = "status, occurred_at, error_code, error_detail"
_FACTS = (
    "created_at, channel, template, language, status, error_code, accepted_at, sent_at, delivered_at, read_at"
)
_PENDING_COLUMNS = f"channel, provider_message_id, {_ENTRY_COLUMNS}, received_at"
_HAS_VERSIONS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
_INSERT_ENTRY = (
    f"INSERT INTO message_statuses (message_id, {_ENTRY_COLUMNS}) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING"
)
_INSERT_PENDING = (
    f"INSERT INTO pending_statuses ({_PENDING_COLUMNS}) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)
_WRITE_STATE = (
    "UPDATE messages SET status = ?, accepted_at = ?, sent_at = ?, delivered_at = ?, read_at = ?, "
    "failed_at = ?, error_code = ?, error_detail = ?, updated_at = ? WHERE message_id = ?"
)
_INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 17)})"
_UPDATE_SENT = (
    "UPDATE messages SET recipient = coalesce(?, recipient), "
    "provider_message_id = coalesce(?, provider_message_id), template = coalesce(?, template), "
    "language = coalesce(?, language), error_kind = coalesce(?, error_kind), status = ?, "
    "accepted_at = ?, sent_at = ?, delivered_at = ?, read_at = ?, failed_at = ?, error_code = ?, "
    "error_detail = ?, updated_at = ? WHERE message_id = ?"
)
_TAKE_PENDING = (
    f"INSERT INTO message_statuses (message_id, {_ENTRY_COLUMNS}) "
    f"SELECT ?, {_ENTRY_COLUMNS} FROM pending_statuses "
    "WHERE channel = ? AND provider_message_id = ? ORDER BY id ON CONFLICT DO NOTHING"
)
# The statuses waiting under a batch's [channel, provider id] keys (a JSON array), oldest first.
_PENDING_FOR = """
SELECT p.channel, p.provider_message_id, p.status, p.occurred_at, p.error_code, p.error_detail
FROM json_each(?) AS j JOIN pending_statuses p
  ON p.channel = json_extract(j.value, '$[0]') AND p.provider_message_id = json_extract(j.value, '$[1]')
ORDER BY p.id
"""
# Each lookup [message id, channel, provider id] of a batch (a JSON array) resolved as
# record_status does.
_RESOLVE = """
SELECT j.key, coalesce(
  (SELECT m.message_id FROM messages m WHERE m.message_id = json_extract(j.value, '$[0]')),
  (SELECT m.message_id FROM messages m WHERE m.channel = json_extract(j.value, '$[1]')
     AND m.provider_message_id = json_extract(j.value, '$[2]') ORDER BY m.created_at DESC LIMIT 1))
FROM json_each(?) AS j
"""


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else to_ms(moment)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


def _us(ms: int | None) -> int | None:
    return None if ms is None else ms * 1000


def _facts(row: Any) -> Facts:
    """A ``_FACTS`` row as :class:`Facts` (times in microseconds)."""
    created, channel, template, language, status, code, *times = row
    return Facts(created * 1000, channel, template, language, status, code, *(_us(t) for t in times))


def _stored_micros(moment: datetime) -> int:
    """A time as it is stored (milliseconds), in microseconds."""
    return to_ms(moment) * 1000


def _period(micros: int) -> int:
    return micros // 1000


def _entry(row: Any) -> StatusEntry:
    return StatusEntry(DeliveryStatus(row[0]), from_ms(row[1]), row[2], row[3])


def _record(row: Any) -> MessageRecord:
    (mid, channel, status, created, updated, *texts) = row[:12]
    times = [_dt(value) for value in row[12:]]
    return MessageRecord(
        mid, channel, DeliveryStatus(status), from_ms(created), from_ms(updated), *texts, *times
    )


def _stored(moment: datetime) -> datetime:
    """A time as the store keeps it (to the millisecond)."""
    return from_ms(to_ms(moment))


_RULES = Rules(stored=_stored, to_micros=_stored_micros, pending_by_row=True)


def _state_values(state: StatusState) -> tuple[Any, ...]:
    """status, the five times, error code and detail, as the columns hold them."""
    assert state.status is not None
    return (
        state.status.value,
        _ms(state.accepted_at),
        _ms(state.sent_at),
        _ms(state.delivered_at),
        _ms(state.read_at),
        _ms(state.failed_at),
        state.error_code,
        state.error_detail,
    )


def _insert_args(message: Planned, now: int) -> tuple[Any, ...]:
    status, accepted, sent, delivered, read, failed, code, detail = _state_values(message.state)
    return (
        message.message_id,
        message.channel,
        status,
        now,
        now,
        message.recipient,
        message.provider_message_id,
        message.template,
        message.language,
        message.error_kind,
        code,
        detail,
        accepted,
        sent,
        delivered,
        read,
        failed,
    )


def _update_args(message: Planned, now: int) -> tuple[Any, ...]:
    texts = message[2:7]
    return (*texts, *_state_values(message.state), now, message.message_id)


def _state_args(state: StatusState, now: int, message_id: str) -> tuple[Any, ...]:
    """The arguments of ``_WRITE_STATE``."""
    return (*_state_values(state), now, message_id)


_PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = ON")


class SqliteMessageStore:
    """A :class:`~omnichannel.store.MessageStore` in a SQLite file.

    :param path: the file; it and its folder are created on first use.
    :param clock: the time of ``created_at``/``updated_at``.
    :param busy_timeout_s: how long a statement waits for another process's write lock.
    :raises StoreError: from any method, when the file cannot be opened or stays locked.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Clock | None = None, busy_timeout_s: float = 5.0
    ) -> None:
        self.path = os.fspath(path)
        self._clock: Clock = clock or SystemClock()
        self._busy_timeout_ms = max(0, round(busy_timeout_s * 1000))
        self._db: aiosqlite.Connection | None = None
        self._closed = False
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection

    def __repr__(self) -> str:
        return f"<SqliteMessageStore {self.path!r}>"

    async def upgrade(self) -> int:
        """Apply the missing migrations (one ``BEGIN IMMEDIATE`` transaction); return the version."""
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

        async def run(db: aiosqlite.Connection) -> None:
            now = to_ms(self._clock.now())
            async with db.execute(
                f"SELECT provider_message_id, {_FACTS} FROM messages WHERE message_id = ?", (message_id,)
            ) as cursor:
                row = await cursor.fetchone()
            old = None if row is None else _facts(row[1:])
            await db.execute(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,NULL,NULL,NULL,NULL,NULL,NULL,NULL) "
                "ON CONFLICT (message_id) DO UPDATE SET "
                "recipient = coalesce(excluded.recipient, messages.recipient), "
                "provider_message_id = coalesce(excluded.provider_message_id, messages.provider_message_id), "
                "template = coalesce(excluded.template, messages.template), "
                "language = coalesce(excluded.language, messages.language), "
                "error_kind = coalesce(excluded.error_kind, messages.error_kind)",
                [
                    message_id,
                    channel,
                    status.value,
                    now,
                    now,
                    recipient,
                    provider_message_id,
                    template,
                    language,
                    error_kind,
                ],
            )
            await self._append(db, message_id, StatusEntry(status, at, error_code, error_detail))
            # The row as the upsert left it: the first send's channel and time, the latest ids.
            base = old or Facts(now * 1000, channel, None, None, status.value, None, None, None, None, None)
            base = base._replace(
                template=base.template if template is None else template,
                language=base.language if language is None else language,
            )
            pid = provider_message_id if row is None or provider_message_id is not None else row[0]
            if pid is not None:
                await db.execute(_TAKE_PENDING, (message_id, base.channel, pid))
                await db.execute(
                    "DELETE FROM pending_statuses WHERE channel = ? AND provider_message_id = ?",
                    (base.channel, pid),
                )
            state = await self._refold(db, message_id, now)
            deltas = Deltas()
            deltas.move(old, base.folded(state, _stored_micros))
            await self._add(db, deltas)

        await self._run("record_send", run, write=True)

    async def record_sends(self, sends: Sequence[SendRecord]) -> None:
        """See :meth:`MessageStore.record_sends`.

        One ``BEGIN IMMEDIATE`` transaction: the batch's existing rows read in one query, the
        statuses waiting for its keys in one, the histories of the existing messages in one (none
        when every message is new); the batch played in memory (:mod:`omnichannel.store.sends`);
        then one ``executemany`` per table: the new messages inserted whole, the others updated,
        the history rows, the waiting statuses deleted, the aggregates' changes.
        """
        batch = list(sends)
        if not batch:
            return

        async def run(db: aiosqlite.Connection) -> None:
            now = to_ms(self._clock.now())
            ids = json.dumps(list(dict.fromkeys(send.message_id for send in batch)))
            async with db.execute(
                f"SELECT message_id, provider_message_id, {_FACTS} FROM messages "
                "WHERE message_id IN (SELECT value FROM json_each(?))",
                (ids,),
            ) as cursor:
                existing = {row[0]: Existing(row[1], _facts(row[2:])) for row in await cursor.fetchall()}
            keys = send_keys(batch, existing, _RULES)
            waiting: dict[tuple[str, str], list[StatusEntry]] = {}
            wanted = list(dict.fromkeys(key for key in keys if key is not None))
            if wanted:
                async with db.execute(_PENDING_FOR, (json.dumps(wanted),)) as cursor:
                    for row in await cursor.fetchall():
                        waiting.setdefault((row[0], row[1]), []).append(_entry(row[2:]))
            histories: dict[str, list[StatusEntry]] = {}
            if existing:
                async with db.execute(
                    f"SELECT message_id, {_ENTRY_COLUMNS} FROM message_statuses "
                    "WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY id",
                    (json.dumps(sorted(existing)),),
                ) as cursor:
                    for row in await cursor.fetchall():
                        histories.setdefault(row[0], []).append(_entry(row[1:]))
            done = plan(
                batch,
                keys,
                now_micros=now * 1000,
                existing=existing,
                histories=histories,
                pending=waiting,
                rules=_RULES,
            )
            if done.inserts:
                await db.executemany(_INSERT_MESSAGE, [_insert_args(m, now) for m in done.inserts])
            if done.updates:
                await db.executemany(_UPDATE_SENT, [_update_args(m, now) for m in done.updates])
            if done.entries:
                await db.executemany(
                    _INSERT_ENTRY,
                    [
                        (mid, e.status.value, to_ms(e.occurred_at), e.error_code, e.error_detail)
                        for mid, e in done.entries
                    ],
                )
            if done.consumed:
                await db.executemany(
                    "DELETE FROM pending_statuses WHERE channel = ? AND provider_message_id = ?",
                    done.consumed,
                )
            await self._add(db, done.deltas)

        await self._run("record_sends", run, write=True)

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
        entry = StatusEntry(status, at, error_code, error_detail)

        async def run(db: aiosqlite.Connection) -> None:
            now = to_ms(self._clock.now())
            found = None
            if message_id is not None:
                found = await self._row(
                    db, f"SELECT message_id, {_FACTS} FROM messages WHERE message_id = ?", message_id
                )
            if found is None:
                found = await self._row(
                    db,
                    f"SELECT message_id, {_FACTS} FROM messages "
                    "WHERE channel = ? AND provider_message_id = ? ORDER BY created_at DESC LIMIT 1",
                    channel,
                    provider_message_id,
                )
            if found is None:
                await db.execute(
                    _INSERT_PENDING,
                    (channel, provider_message_id, status.value, to_ms(at), error_code, error_detail, now),
                )
                return
            old = _facts(found[1:])
            await self._append(db, found[0], entry)
            state = await self._refold(db, found[0], now)
            deltas = Deltas()
            deltas.move(old, old.folded(state, _stored_micros))
            await self._add(db, deltas)

        await self._run("record_status", run, write=True)

    async def record_statuses(self, updates: Sequence[StatusUpdate]) -> None:
        """See :meth:`MessageStore.record_statuses`.

        One ``BEGIN IMMEDIATE`` transaction: the batch's lookups resolved in one query, history and
        pending rows inserted in the batch's order, the touched messages folded from their
        histories (one query) and written back, the aggregates' changes summed and applied (one
        statement per table).
        """
        batch = list(updates)
        if not batch:
            return

        async def run(db: aiosqlite.Connection) -> None:
            now = to_ms(self._clock.now())
            wanted = lookups(batch)
            async with db.execute(_RESOLVE, (json.dumps(wanted),)) as cursor:
                found = {wanted[row[0]]: row[1] for row in await cursor.fetchall()}
            entries, waiting = [], []
            for update in batch:
                mid = found[lookup_of(update)]
                values = (update.status.value, to_ms(update.at), update.error_code, update.error_detail)
                if mid is None:
                    waiting.append((update.channel, update.provider_message_id, *values, now))
                else:
                    entries.append((mid, *values))
            if entries:
                await db.executemany(_INSERT_ENTRY, entries)
            if waiting:
                await db.executemany(_INSERT_PENDING, waiting)
            ids = sorted({mid for mid in found.values() if mid is not None})
            if not ids:
                return
            wanted_ids = json.dumps(ids)
            async with db.execute(
                f"SELECT message_id, {_FACTS} FROM messages "
                "WHERE message_id IN (SELECT value FROM json_each(?))",
                (wanted_ids,),
            ) as cursor:
                olds = {row[0]: _facts(row[1:]) for row in await cursor.fetchall()}
            async with db.execute(
                f"SELECT message_id, {_ENTRY_COLUMNS} FROM message_statuses "
                "WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY message_id, occurred_at, id",
                (wanted_ids,),
            ) as cursor:
                states = fold_by_message((row[0], _entry(row[1:])) for row in await cursor.fetchall())
            await db.executemany(_WRITE_STATE, [_state_args(states[mid], now, mid) for mid in ids])
            deltas = Deltas()
            for mid in ids:
                deltas.move(olds[mid], olds[mid].folded(states[mid], _stored_micros))
            await self._add(db, deltas)

        await self._run("record_statuses", run, write=True)

    async def get(self, message_id: str) -> MessageRecord | None:
        """See :meth:`MessageStore.get`."""

        async def run(db: aiosqlite.Connection) -> MessageRecord | None:
            async with db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)
            ) as cursor:
                row = await cursor.fetchone()
            return None if row is None else _record(row)

        return await self._run("get", run)

    async def history(self, message_id: str) -> list[StatusEntry]:
        """See :meth:`MessageStore.history`."""

        async def run(db: aiosqlite.Connection) -> list[StatusEntry]:
            return await self._entries(db, message_id)

        return await self._run("history", run)

    async def schema_version(self) -> int:
        """See :meth:`MessageStore.schema_version`: read from the file without migrating it (0 when
        there is no file yet, and none is created)."""
        async with self._lock:
            if self._closed:
                raise StoreError(f"message store {self.path!r} is closed")
            try:
                if self._db is not None:
                    return await self._version(self._db)
                if not os.path.exists(self.path):
                    return 0
                return await asyncio.to_thread(self._file_version)
            except sqlite3.Error as exc:
                raise StoreError(
                    f"message store {self.path!r}: schema_version failed ({type(exc).__name__}: {exc})"
                ) from exc

    async def rebuild_aggregates(self) -> None:
        """Recount the aggregates from ``messages`` (one write transaction): after rows were
        written around the store (a bulk load), or to repair them."""

        async def run(db: aiosqlite.Connection) -> None:
            for statement in rebuild("sqlite"):
                await db.execute(statement)

        await self._run("rebuild_aggregates", run, write=True)

    async def forget_details(self, before: datetime) -> int:
        """See :meth:`MessageStore.forget_details`."""
        cutoff = to_ms(before)

        async def run(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(
                "UPDATE messages SET recipient = NULL, error_detail = NULL "
                "WHERE created_at < ? AND (recipient IS NOT NULL OR error_detail IS NOT NULL)",
                (cutoff,),
            )
            await db.execute("DELETE FROM pending_statuses WHERE occurred_at < ?", (cutoff,))
            return cursor.rowcount

        return await self._run("forget_details", run, write=True)

    async def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        async with self._lock:
            self._closed = True
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    async def _one(db: aiosqlite.Connection, sql: str, *args: object) -> Any:
        row = await SqliteMessageStore._row(db, sql, *args)
        return None if row is None else row[0]

    @staticmethod
    async def _row(db: aiosqlite.Connection, sql: str, *args: object) -> Any:
        async with db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    @staticmethod
    async def _add(db: aiosqlite.Connection, deltas: Deltas) -> None:
        """Apply the aggregates' changes (last in the transaction)."""
        counts, latencies = deltas.count_rows(), deltas.latency_rows()
        if counts:
            await db.executemany(SQLITE_ADD_COUNTS, rows(counts, _period))
        if latencies:
            await db.executemany(SQLITE_ADD_LATENCIES, rows(latencies, _period))

    @staticmethod
    async def _version(db: aiosqlite.Connection) -> int:
        if await SqliteMessageStore._one(db, _HAS_VERSIONS) is None:
            return 0
        return int(await SqliteMessageStore._one(db, _VERSION))

    def _file_version(self) -> int:
        """The version in the file, on a connection of its own that creates nothing."""
        uri = Path(self.path).absolute().as_uri() + "?mode=rw"
        db = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout_ms / 1000)
        try:
            if db.execute(_HAS_VERSIONS).fetchone() is None:
                return 0
            return int(db.execute(_VERSION).fetchone()[0])
        finally:
            db.close()

    @staticmethod
    async def _entries(db: aiosqlite.Connection, message_id: str) -> list[StatusEntry]:
        async with db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM message_statuses WHERE message_id = ? ORDER BY occurred_at, id",
            (message_id,),
        ) as cursor:
            return [_entry(row) for row in await cursor.fetchall()]

    @staticmethod
    async def _append(db: aiosqlite.Connection, message_id: str, entry: StatusEntry) -> None:
        await db.execute(
            _INSERT_ENTRY,
            (message_id, entry.status.value, to_ms(entry.occurred_at), entry.error_code, entry.error_detail),
        )

    async def _refold(self, db: aiosqlite.Connection, message_id: str, now: int) -> StatusState:
        """Fold the message's whole history again (a handful of rows), write and return the result."""
        state = fold_all(await self._entries(db, message_id))
        await db.execute(_WRITE_STATE, _state_args(state, now, message_id))
        return state

    async def _open(self, db: aiosqlite.Connection) -> None:
        """A new connection: the bucket function the aggregates' SQL calls, then the migrations."""
        await db.create_function(BUCKET_FUNCTION, 1, latency_bucket, deterministic=True)
        await self._migrate(db)

    async def _migrate(self, db: aiosqlite.Connection) -> int:
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(SCHEMA_VERSION_TABLE["sqlite"])
            version = int(await self._one(db, _VERSION))
            for migration in pending(version):
                for statement in migration.sqlite:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (migration.version, to_ms(self._clock.now())),
                )
                version = migration.version
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            raise
        return version

    async def _run(
        self, operation: str, run: Callable[[aiosqlite.Connection], Awaitable[T]], *, write: bool = False
    ) -> T:
        """``run`` under the lock (in a ``BEGIN IMMEDIATE`` transaction if ``write``)."""
        async with self._lock:
            try:
                db = await self._connection()
                if db.in_transaction:  # left open by a cancelled operation
                    await db.execute("ROLLBACK")
                if not write:
                    return await run(db)
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await run(db)
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.Error as exc:
                raise StoreError(
                    f"message store {self.path!r}: {operation} failed ({type(exc).__name__}: {exc})"
                ) from exc

    async def _connection(self) -> aiosqlite.Connection:
        """The open connection (caller holds the lock); the first call creates and migrates the file."""
        if self._db is not None:
            return self._db
        if self._closed:
            raise StoreError(f"message store {self.path!r} is closed")
        try:
            db = await open_sqlite(
                self.path,
                busy_timeout_s=self._busy_timeout_ms / 1000,
                pragmas=(
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = FULL",
                    "PRAGMA foreign_keys = ON",
                ),
                then=self._open,
            )
        except OSError as exc:
            raise StoreError(
                f"message store {self.path!r} cannot be opened ({type(exc).__name__}: {exc})"
            ) from exc
        self._db = db
        return db
