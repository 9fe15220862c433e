"""The message store in a SQLite file (the embedded default), shared by the processes that open it.

Times are UTC epoch milliseconds. Every write is one ``BEGIN IMMEDIATE`` transaction, so two
processes never fold the same message at once; the file is in WAL mode with ``synchronous =
FULL`` (a commit is on disk when the call returns). The schema is migrated when the file is first
opened (and by :meth:`SqliteMessageStore.upgrade`). A write that changes a message also updates
the aggregates (:mod:`omnichannel.store.rollup`) in its transaction.

One thread, one round trip. The store owns one plain ``sqlite3`` connection, used only by a
dedicated thread (a one-worker pool, as :class:`~omnichannel.idempotency.sqlite.SqliteKeyStore`).
Each operation hands that thread one synchronous function that runs the whole operation, its
transaction begun and ended there: one hop from the event loop and back per call, however many
statements (a ``record_sends`` batch used to be about eleven hops to aiosqlite's thread). The
thread runs operations one at a time in call order. A caller cancelled while its operation is
queued takes it out; once it started, it runs to its end (committed, or rolled back on an error),
so a cancelled caller never leaves a transaction open. :meth:`SqliteMessageStore.close` lets the
operations already called finish, then closes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from .._sqlite import connect_sqlite
from ..clock import Clock, SystemClock
from ..errors import StoreError
from ..idempotency.sqlite import to_ms
from ..message import DeliveryStatus
from . import MessageRecord, SendRecord, StatusEntry, StatusUpdate
from .batch import fold_by_message, lookup_of, lookups
from .migrations import MESSAGE_COLUMNS, SCHEMA_VERSION_TABLE, pending
from .rollup import Deltas, Facts, latency_bucket
from .rollup_sql import BUCKET_FUNCTION, rebuild
from .sends import Existing, plan, send_keys
from .sqlite_sql import (
    ENTRY_COLUMNS,
    FACTS,
    INSERT_ENTRY,
    INSERT_MESSAGE,
    INSERT_PENDING,
    PENDING_FOR,
    RESOLVE,
    RULES,
    TAKE_PENDING,
    UPDATE_SENT,
    VERSION,
    WRITE_STATE,
    add_deltas,
    append_entry,
    entry_of,
    facts_of,
    fetch_one,
    fetch_rows,
    history_of,
    insert_args,
    read_version,
    record_of,
    refold,
    state_args,
    stored_micros,
    update_args,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from concurrent.futures import Future

__all__ = ["SqliteMessageStore"]

T = TypeVar("T")
P = ParamSpec("P")

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
        self._busy_timeout_s = max(0.0, busy_timeout_s)
        self._db: sqlite3.Connection | None = None  # the store's thread's alone
        self._pool: ThreadPoolExecutor | None = None  # that thread, started by the first operation
        self._closed = False
        self._closing: Future[None] | None = None

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

        def run(db: sqlite3.Connection) -> None:
            now = to_ms(self._clock.now())
            row = db.execute(
                f"SELECT provider_message_id, {FACTS} FROM messages WHERE message_id = ?", (message_id,)
            ).fetchone()
            old = None if row is None else facts_of(row[1:])
            db.execute(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,NULL,NULL,NULL,NULL,NULL,NULL,NULL) "
                "ON CONFLICT (message_id) DO UPDATE SET "
                "recipient = coalesce(excluded.recipient, messages.recipient), "
                "provider_message_id = coalesce(excluded.provider_message_id, messages.provider_message_id), "
                "template = coalesce(excluded.template, messages.template), "
                "language = coalesce(excluded.language, messages.language), "
                "error_kind = coalesce(excluded.error_kind, messages.error_kind)",
                (
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
                ),
            )
            append_entry(db, message_id, StatusEntry(status, at, error_code, error_detail))
            # The row as the upsert left it: the first send's channel and time, the latest ids.
            base = old or Facts(now * 1000, channel, None, None, status.value, None, None, None, None, None)
            base = base._replace(
                template=base.template if template is None else template,
                language=base.language if language is None else language,
            )
            pid = provider_message_id if row is None or provider_message_id is not None else row[0]
            if pid is not None:
                db.execute(TAKE_PENDING, (message_id, base.channel, pid))
                db.execute(
                    "DELETE FROM pending_statuses WHERE channel = ? AND provider_message_id = ?",
                    (base.channel, pid),
                )
            state = refold(db, message_id, now)
            deltas = Deltas()
            deltas.move(old, base.folded(state, stored_micros))
            add_deltas(db, deltas)

        await self._run("record_send", run, write=True)

    async def record_sends(self, sends: Sequence[SendRecord]) -> None:
        """See :meth:`MessageStore.record_sends`.

        One ``BEGIN IMMEDIATE`` transaction (one call to the store's thread): the batch's existing
        rows read in one query, the statuses waiting for its keys in one, the histories of the
        existing messages in one (none when every message is new); the batch played in memory
        (:mod:`omnichannel.store.sends`); then one ``executemany`` per table: the new messages
        inserted whole, the others updated, the history rows, the waiting statuses deleted, the
        aggregates' changes.
        """
        batch = list(sends)
        if not batch:
            return

        def run(db: sqlite3.Connection) -> None:
            now = to_ms(self._clock.now())
            ids = json.dumps(list(dict.fromkeys(send.message_id for send in batch)))
            existing = {
                row[0]: Existing(row[1], facts_of(row[2:]))
                for row in fetch_rows(
                    db,
                    f"SELECT message_id, provider_message_id, {FACTS} FROM messages "
                    "WHERE message_id IN (SELECT value FROM json_each(?))",
                    ids,
                )
            }
            keys = send_keys(batch, existing, RULES)
            waiting: dict[tuple[str, str], list[StatusEntry]] = {}
            wanted = list(dict.fromkeys(key for key in keys if key is not None))
            if wanted:
                for row in fetch_rows(db, PENDING_FOR, json.dumps(wanted)):
                    waiting.setdefault((row[0], row[1]), []).append(entry_of(row[2:]))
            histories: dict[str, list[StatusEntry]] = {}
            if existing:
                for row in fetch_rows(
                    db,
                    f"SELECT message_id, {ENTRY_COLUMNS} FROM message_statuses "
                    "WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY id",
                    json.dumps(sorted(existing)),
                ):
                    histories.setdefault(row[0], []).append(entry_of(row[1:]))
            done = plan(
                batch,
                keys,
                now_micros=now * 1000,
                existing=existing,
                histories=histories,
                pending=waiting,
                rules=RULES,
            )
            if done.inserts:
                db.executemany(INSERT_MESSAGE, [insert_args(m, now) for m in done.inserts])
            if done.updates:
                db.executemany(UPDATE_SENT, [update_args(m, now) for m in done.updates])
            if done.entries:
                db.executemany(
                    INSERT_ENTRY,
                    [
                        (mid, e.status.value, to_ms(e.occurred_at), e.error_code, e.error_detail)
                        for mid, e in done.entries
                    ],
                )
            if done.consumed:
                db.executemany(
                    "DELETE FROM pending_statuses WHERE channel = ? AND provider_message_id = ?",
                    done.consumed,
                )
            add_deltas(db, done.deltas)

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

        def run(db: sqlite3.Connection) -> None:
            now = to_ms(self._clock.now())
            found = None
            if message_id is not None:
                found = db.execute(
                    f"SELECT message_id, {FACTS} FROM messages WHERE message_id = ?", (message_id,)
                ).fetchone()
            if found is None:
                found = db.execute(
                    f"SELECT message_id, {FACTS} FROM messages "
                    "WHERE channel = ? AND provider_message_id = ? ORDER BY created_at DESC LIMIT 1",
                    (channel, provider_message_id),
                ).fetchone()
            if found is None:
                db.execute(
                    INSERT_PENDING,
                    (channel, provider_message_id, status.value, to_ms(at), error_code, error_detail, now),
                )
                return
            old = facts_of(found[1:])
            append_entry(db, found[0], entry)
            state = refold(db, found[0], now)
            deltas = Deltas()
            deltas.move(old, old.folded(state, stored_micros))
            add_deltas(db, deltas)

        await self._run("record_status", run, write=True)

    async def record_statuses(self, updates: Sequence[StatusUpdate]) -> None:
        """See :meth:`MessageStore.record_statuses`.

        One ``BEGIN IMMEDIATE`` transaction (one call to the store's thread): the batch's lookups
        resolved in one query, history and pending rows inserted in the batch's order, the touched
        messages folded from their histories (one query) and written back, the aggregates' changes
        summed and applied (one statement per table).
        """
        batch = list(updates)
        if not batch:
            return

        def run(db: sqlite3.Connection) -> None:
            now = to_ms(self._clock.now())
            wanted = lookups(batch)
            found = {wanted[row[0]]: row[1] for row in fetch_rows(db, RESOLVE, json.dumps(wanted))}
            entries, waiting = [], []
            for update in batch:
                mid = found[lookup_of(update)]
                values = (update.status.value, to_ms(update.at), update.error_code, update.error_detail)
                if mid is None:
                    waiting.append((update.channel, update.provider_message_id, *values, now))
                else:
                    entries.append((mid, *values))
            if entries:
                db.executemany(INSERT_ENTRY, entries)
            if waiting:
                db.executemany(INSERT_PENDING, waiting)
            ids = sorted({mid for mid in found.values() if mid is not None})
            if not ids:
                return
            wanted_ids = json.dumps(ids)
            olds = {
                row[0]: facts_of(row[1:])
                for row in fetch_rows(
                    db,
                    f"SELECT message_id, {FACTS} FROM messages "
                    "WHERE message_id IN (SELECT value FROM json_each(?))",
                    wanted_ids,
                )
            }
            states = fold_by_message(
                (row[0], entry_of(row[1:]))
                for row in fetch_rows(
                    db,
                    f"SELECT message_id, {ENTRY_COLUMNS} FROM message_statuses "
                    "WHERE message_id IN (SELECT value FROM json_each(?)) "
                    "ORDER BY message_id, occurred_at, id",
                    wanted_ids,
                )
            )
            db.executemany(WRITE_STATE, [state_args(states[mid], now, mid) for mid in ids])
            deltas = Deltas()
            for mid in ids:
                deltas.move(olds[mid], olds[mid].folded(states[mid], stored_micros))
            add_deltas(db, deltas)

        await self._run("record_statuses", run, write=True)

    async def get(self, message_id: str) -> MessageRecord | None:
        """See :meth:`MessageStore.get`."""

        def run(db: sqlite3.Connection) -> MessageRecord | None:
            row = db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)
            ).fetchone()
            return None if row is None else record_of(row)

        return await self._run("get", run)

    async def history(self, message_id: str) -> list[StatusEntry]:
        """See :meth:`MessageStore.history`."""
        return await self._run("history", lambda db: history_of(db, message_id))

    async def schema_version(self) -> int:
        """See :meth:`MessageStore.schema_version`: read from the file without migrating it (0 when
        there is no file yet, and none is created)."""
        return await self._submit(self._schema_version)

    async def rebuild_aggregates(self) -> None:
        """Recount the aggregates from ``messages`` (one write transaction): after rows were
        written around the store (a bulk load), or to repair them."""

        def run(db: sqlite3.Connection) -> None:
            for statement in rebuild("sqlite"):
                db.execute(statement)

        await self._run("rebuild_aggregates", run, write=True)

    async def forget_details(self, before: datetime) -> int:
        """See :meth:`MessageStore.forget_details`."""
        cutoff = to_ms(before)

        def run(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE messages SET recipient = NULL, error_detail = NULL "
                "WHERE created_at < ? AND (recipient IS NOT NULL OR error_detail IS NOT NULL)",
                (cutoff,),
            )
            db.execute("DELETE FROM pending_statuses WHERE occurred_at < ?", (cutoff,))
            return cursor.rowcount

        return await self._run("forget_details", run, write=True)

    async def close(self) -> None:
        """Finish the operations already called, then close the file; the store cannot be used
        afterwards."""
        self._closed = True
        if self._closing is None:
            if self._pool is None:  # never used
                return
            self._closing = self._pool.submit(self._shut)  # after what is queued
            self._pool.shutdown(wait=False)
        # Shielded: a cancelled close still closes the file.
        await asyncio.shield(asyncio.wrap_future(self._closing))

    # -- the event loop's side ---------------------------------------------------------------------

    async def _run(self, operation: str, run: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """``run`` on the store's thread (in a ``BEGIN IMMEDIATE`` transaction if ``write``)."""
        return await self._submit(self._call, operation, run, write)

    async def _submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One round trip to the store's thread, where operations run one at a time in call order.

        A caller cancelled while its call is queued takes it out; once it started, it runs to its
        end (its transaction committed or rolled back there), whatever became of the caller.
        """
        if self._closed:
            raise StoreError(f"message store {self.path!r} is closed")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnichannel-store")
        return await asyncio.wrap_future(self._pool.submit(fn, *args, **kwargs))

    # -- the store's thread ------------------------------------------------------------------------

    def _call(self, operation: str, run: Callable[[sqlite3.Connection], T], write: bool) -> T:
        try:
            db = self._connection()
            return _in_transaction(db, run) if write else run(db)
        except sqlite3.Error as exc:
            raise StoreError(
                f"message store {self.path!r}: {operation} failed ({type(exc).__name__}: {exc})"
            ) from exc

    def _connection(self) -> sqlite3.Connection:
        """The open connection; the first call creates and migrates the file."""
        if self._db is None:
            try:
                self._db = connect_sqlite(
                    self.path, busy_timeout_s=self._busy_timeout_s, set_up=_PRAGMAS, then=self._open
                )
            except OSError as exc:
                raise StoreError(
                    f"message store {self.path!r} cannot be opened ({type(exc).__name__}: {exc})"
                ) from exc
        return self._db

    def _open(self, db: sqlite3.Connection) -> None:
        """A new connection: the bucket function the aggregates' SQL calls, then the migrations."""
        db.create_function(BUCKET_FUNCTION, 1, latency_bucket, deterministic=True)
        self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> int:
        return _in_transaction(db, self._apply_migrations)

    def _apply_migrations(self, db: sqlite3.Connection) -> int:
        db.execute(SCHEMA_VERSION_TABLE["sqlite"])
        version = int(fetch_one(db, VERSION))
        for migration in pending(version):
            for statement in migration.sqlite:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (migration.version, to_ms(self._clock.now())),
            )
            version = migration.version
        return version

    def _schema_version(self) -> int:
        try:
            if self._db is not None:
                return read_version(self._db)
            if not os.path.exists(self.path):
                return 0
            # On a connection of its own that creates nothing.
            uri = Path(self.path).absolute().as_uri() + "?mode=rw"
            db = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout_s)
            try:
                return read_version(db)
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreError(
                f"message store {self.path!r}: schema_version failed ({type(exc).__name__}: {exc})"
            ) from exc

    def _shut(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work(db)`` in one ``BEGIN IMMEDIATE … COMMIT``, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return result
