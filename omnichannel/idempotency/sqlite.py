"""Idempotency keys in a SQLite file (the default store), shared by the processes that open it.

One table, ``idempotency_keys``, one row per key; times are UTC epoch milliseconds.

Group commit. The store owns one plain ``sqlite3`` connection, used only by one dedicated thread
(a one-worker pool). A call on the event loop queues an operation and awaits its future; the
flusher (``_batch.Batcher``) hands every operation queued so far to the thread in one call, which
runs them in order in **one** ``BEGIN IMMEDIATE … COMMIT`` transaction, then resolves all their
futures on the loop at once (one ``call_soon_threadsafe`` per batch). While a batch runs, new
operations queue up for the next one, so fifty workers cost one transaction and one round trip
to the thread per round, not fifty of each (:attr:`SqliteKeyStore.batches` counts them). A batch
of reads only (``get``, ``open``) opens no write transaction.

Inside the transaction an operation writes one statement at most (``settle_many`` of several
keys: a savepoint around its statements), so an operation that fails (a constraint, a trigger)
is undone alone and only its caller gets a :class:`KeyStoreError`; if the transaction itself
fails (the file stays locked past the busy timeout, ``COMMIT`` fails, SQLite rolls the
transaction back) every operation of the batch fails and nothing of it is kept.

A claim of a key never seen is one ``INSERT … ON CONFLICT DO NOTHING RETURNING``; an existing key
is read and decided as in :class:`MemoryKeyStore`, under the write lock ``BEGIN IMMEDIATE`` took,
so two processes claiming the same key through the same file cannot both be granted (a process
waits up to ``busy_timeout_s`` for the other's lock).

The file is in WAL mode with ``synchronous=NORMAL``: a ``sent`` row survives a crash of the
process once ``complete`` returns (a power cut may lose the last commits; the WAL keeps the file
consistent).

Cancellation: a caller cancelled while its operation is still queued takes it out of the queue,
except the writes that record an outcome (``complete``, ``release``, ``settle``), which are
applied anyway: they state what happened. A claim granted in a batch whose caller was cancelled
meanwhile is given back (the key returns to what it was), since that caller never learned it may
send. :meth:`SqliteKeyStore.close` runs what is queued, then closes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from .._sqlite import connect_sqlite
from ..clock import Clock, SystemClock
from ..errors import KeyStoreError
from ._batch import CLOSE, Batcher, Op, Outcome
from .keys import Claim, KeyRecord, KeyState, Settlement

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SqliteKeyStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    lease_until INTEGER,
    channel TEXT,
    provider_message_id TEXT,
    error TEXT
)
"""
_COLUMNS = "key, state, owner, attempts, updated_at, lease_until, channel, provider_message_id, error"
_HELD = "key = ? AND state = 'in_flight' AND owner = ?"
_INSERT_FRESH = (
    f"INSERT INTO idempotency_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (key) DO NOTHING RETURNING key"
)
_REPLACE = f"INSERT OR REPLACE INTO idempotency_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
_SELECT = f"SELECT {_COLUMNS} FROM idempotency_keys WHERE key = ?"
_EXPIRE = (
    "UPDATE idempotency_keys SET state = 'uncertain', lease_until = NULL, error = 'lease expired' "
    "WHERE key = ?"
)
_COMPLETE = (
    "UPDATE idempotency_keys SET state = 'sent', updated_at = ?, lease_until = NULL, "
    f"channel = ?, provider_message_id = ? WHERE {_HELD}"
)
_RELEASE = (
    f"UPDATE idempotency_keys SET state = ?, updated_at = ?, lease_until = NULL, error = ? WHERE {_HELD}"
)
_FORGET = f"DELETE FROM idempotency_keys WHERE {_HELD}"
_SETTLE = (
    "UPDATE idempotency_keys SET state = ?, updated_at = ?, lease_until = NULL, channel = ?, "
    "provider_message_id = ?, error = ? WHERE key = ? AND state IN ('in_flight', 'uncertain')"
)

Row = tuple[str, str, str, int, int, int | None, str | None, str | None, str | None]

# Operation kinds. A cancelled caller's queued operation is dropped unless it records an outcome.
_CLAIM: Final = "claim"
_COMPLETE_OP: Final = "complete"
_RELEASE_OP: Final = "release"
_SETTLE_OP: Final = "settle"
_GET: Final = "get"
_OPEN: Final = "open"
_UNCLAIM: Final = "unclaim"  # the store's own: give back a claim whose caller was cancelled
_READS = frozenset({_GET, _OPEN})
_DROPPABLE = frozenset({_CLAIM, _GET, _OPEN})


def to_ms(moment: datetime) -> int:
    """``moment`` as UTC epoch milliseconds."""
    return round(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """UTC epoch milliseconds as an aware ``datetime``."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def _record(row: Row) -> KeyRecord:
    key, state, owner, attempts, updated_at, lease_until, channel, provider_message_id, error = row
    return KeyRecord(
        key,
        KeyState(state),
        owner,
        attempts,
        from_ms(updated_at),
        lease_until=None if lease_until is None else from_ms(lease_until),
        channel=channel,
        provider_message_id=provider_message_id,
        error=error,
    )


class SqliteKeyStore:
    """A :class:`~omnichannel.idempotency.KeyStore` in a SQLite file, with group commit.

    :param path: the file; it and its folder are created on first use (:meth:`open`, or lazily).
    :param clock: the time of leases and ``updated_at`` (every process sharing the file must agree).
    :param busy_timeout_s: how long a transaction waits for another process's write lock.
    :raises KeyStoreError: from any method, when the file cannot be opened or stays locked.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Clock | None = None, busy_timeout_s: float = 5.0
    ) -> None:
        self.path = os.fspath(path)
        self._clock: Clock = clock or SystemClock()
        self._busy_timeout_s = max(0.0, busy_timeout_s)
        self.batches = 0
        """Batches run so far (each one transaction at most, however many operations it held)."""
        self._batcher = Batcher(
            self._dispatch,
            droppable=_DROPPABLE,
            orphaned=self._orphaned,
            where=f"idempotency key store {self.path!r}",
        )
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # the store's thread's alone

    def __repr__(self) -> str:
        return f"<SqliteKeyStore {self.path!r}>"

    async def open(self) -> None:
        """Open the file and create the table if needed (the other methods do it when called first)."""
        await self._batcher.submit(_OPEN, "", ())

    async def claim(self, key: str, *, owner: str, lease_s: float, resend_uncertain: bool = False) -> Claim:
        """See :meth:`KeyStore.claim`; decided in the batch's ``BEGIN IMMEDIATE`` transaction."""
        args = (owner, to_ms(self._clock.now()), round(lease_s * 1000), resend_uncertain)
        result: Claim = await self._batcher.submit(_CLAIM, key, args)
        return result

    async def complete(self, key: str, *, owner: str, channel: str, provider_message_id: str | None) -> None:
        """See :meth:`KeyStore.complete`; a late owner changes nothing."""
        args = (owner, to_ms(self._clock.now()), channel, provider_message_id)
        await self._batcher.submit(_COMPLETE_OP, key, args)

    async def release(
        self, key: str, *, owner: str, error: str, final: bool, uncertain: bool = False
    ) -> None:
        """See :meth:`KeyStore.release`; a late owner changes nothing."""
        state = KeyState.FAILED.value if final else KeyState.UNCERTAIN.value if uncertain else None
        await self._batcher.submit(_RELEASE_OP, key, (owner, to_ms(self._clock.now()), state, error))

    async def settle(
        self, key: str, *, channel: str, provider_message_id: str | None, error: str | None = None
    ) -> bool:
        """See :meth:`KeyStore.settle`; never creates a row."""
        return await self.settle_many([Settlement(key, channel, provider_message_id, error)]) == 1

    async def settle_many(self, settlements: Sequence[Settlement]) -> int:
        """See :meth:`KeyStore.settle_many`; all or none, in the batch's transaction."""
        if not settlements:
            return 0
        about = settlements[0].key if len(settlements) == 1 else ""
        args = (to_ms(self._clock.now()), tuple(settlements))
        changed: int = await self._batcher.submit(_SETTLE_OP, about, args)
        return changed

    async def get(self, key: str) -> KeyRecord | None:
        """See :meth:`KeyStore.get`."""
        record: KeyRecord | None = await self._batcher.submit(_GET, key, ())
        return record

    async def close(self) -> None:
        """Run the operations already queued, then close the file; the store cannot be used afterwards."""
        if not self._batcher.used:  # never opened: nothing to close
            self._batcher.mark_closed()
            return
        await self._batcher.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- the event loop's side ---------------------------------------------------------------------

    def _dispatch(self, batch: list[Op]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnichannel-keys")
        loop = self._batcher.loop
        assert loop is not None
        self._pool.submit(self._run_batch, batch, loop)

    def _orphaned(self, op: Op, result: Any) -> None:
        """A claim granted to a caller cancelled before it learned that it may send: give it back."""
        if op.kind == _CLAIM and result.granted:
            owner, attempts = result.record.owner, result.record.attempts
            self._batcher.put(Op(_UNCLAIM, op.key, (owner, attempts, op.undo), None))

    def _error(self, op: Op, exc: BaseException) -> KeyStoreError:
        if op.kind == _SETTLE_OP and not op.key:
            about = f" of {len(op.args[1])} keys"
        else:
            about = f" of key {op.key!r}" if op.key else ""
        error = KeyStoreError(
            f"idempotency key store {self.path!r}: {op.kind}{about} failed ({type(exc).__name__}: {exc})"
        )
        error.__cause__ = exc
        return error

    # -- the store's thread ------------------------------------------------------------------------

    def _run_batch(self, batch: list[Op], loop: asyncio.AbstractEventLoop) -> None:
        try:
            outcomes = self._execute(batch)
        except BaseException as exc:  # a bug: still answer every caller, keep the flusher going
            outcomes = [(False, self._error(op, exc)) for op in batch]
        self.batches += 1
        # The loop may be closed (it was stopped with work queued): nobody waits for these any more,
        # and the next loop to use the store starts afresh.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._batcher.resolve, batch, outcomes)

    def _execute(self, batch: list[Op]) -> list[Outcome]:
        closing = batch[-1].kind == CLOSE
        work = batch[:-1] if closing else batch
        outcomes = self._transaction(work) if work else []
        if closing:
            outcomes.append((True, None))
            db, self._db = self._db, None
            if db is not None:
                try:
                    db.close()
                except sqlite3.Error as exc:
                    outcomes[-1] = (False, self._error(batch[-1], exc))
        return outcomes

    def _transaction(self, work: list[Op]) -> list[Outcome]:
        try:
            db = self._connection()
        except (OSError, sqlite3.Error) as exc:
            error = KeyStoreError(
                f"idempotency key store {self.path!r} cannot be opened ({type(exc).__name__}: {exc})"
            )
            error.__cause__ = exc
            return [(False, error) for _ in work]
        writes = any(op.kind not in _READS for op in work)
        if writes:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                return [(False, self._error(op, exc)) for op in work]
        outcomes: list[Outcome] = []
        for op in work:
            try:
                outcomes.append((True, self._apply(db, op)))
            except sqlite3.Error as exc:
                if writes and not db.in_transaction:  # SQLite rolled the whole transaction back
                    return [(False, self._error(each, exc)) for each in work]
                outcomes.append((False, self._error(op, exc)))
            except Exception as exc:
                outcomes.append((False, exc))
        if writes:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                return [(False, self._error(op, exc)) for op in work]
        return outcomes

    def _apply(self, db: sqlite3.Connection, op: Op) -> Any:
        """One operation: at most one write, or a savepoint around several, so that a failed one is
        undone alone (SQLite rolls a failed statement back)."""
        kind, key, args = op.kind, op.key, op.args
        if kind == _CLAIM:
            return self._claim(db, op)
        if kind == _COMPLETE_OP:
            owner, now, channel, provider_message_id = args
            db.execute(_COMPLETE, (now, channel, provider_message_id, key, owner))
            return None
        if kind == _RELEASE_OP:
            owner, now, state, error = args
            if state is None:
                db.execute(_FORGET, (key, owner))
            else:
                db.execute(_RELEASE, (state, now, error, key, owner))
            return None
        if kind == _SETTLE_OP:
            now, settlements = args
            if len(settlements) == 1:
                return self._settle(db, now, settlements[0])
            # Several statements: a savepoint keeps them all or none.
            db.execute("SAVEPOINT settle_many")
            try:
                changed = sum(self._settle(db, now, each) for each in settlements)
            except BaseException:
                if db.in_transaction:  # else SQLite rolled the whole transaction back
                    db.execute("ROLLBACK TO settle_many")
                    db.execute("RELEASE settle_many")
                raise
            db.execute("RELEASE settle_many")
            return changed
        if kind == _GET:
            row = db.execute(_SELECT, (key,)).fetchone()
            return None if row is None else _record(row)
        if kind == _UNCLAIM:
            owner, attempts, previous = args
            row = db.execute(_SELECT, (key,)).fetchone()
            if (
                row is not None
                and row[1] == KeyState.IN_FLIGHT.value
                and (row[2], row[3]) == (owner, attempts)
            ):
                if previous is None:
                    db.execute("DELETE FROM idempotency_keys WHERE key = ?", (key,))
                else:
                    db.execute(_REPLACE, previous)
            return None
        return None  # _OPEN: the connection is open by now

    @staticmethod
    def _settle(db: sqlite3.Connection, now: int, settlement: Settlement) -> int:
        state = KeyState.SENT.value if settlement.error is None else KeyState.FAILED.value
        values = (
            state,
            now,
            settlement.channel,
            settlement.provider_message_id,
            settlement.error,
            settlement.key,
        )
        changed: int = db.execute(_SETTLE, values).rowcount
        return changed

    @staticmethod
    def _claim(db: sqlite3.Connection, op: Op) -> Claim:
        key = op.key
        owner, now, lease_ms, resend_uncertain = op.args
        # A key never seen (a campaign's every row): one statement.
        fresh: Row = (key, KeyState.IN_FLIGHT.value, owner, 1, now, now + lease_ms, None, None, None)
        if db.execute(_INSERT_FRESH, fresh).fetchall():
            return Claim(True, _record(fresh))
        row: Row = db.execute(_SELECT, (key,)).fetchone()
        record = _record(row)
        expired = False
        if record.state is KeyState.IN_FLIGHT:
            assert row[5] is not None
            if row[5] > now:
                return Claim(False, record)
            # The holder's lease ran out (it crashed?): it may have sent the message.
            record = KeyRecord(
                key,
                KeyState.UNCERTAIN,
                record.owner,
                record.attempts,
                record.updated_at,
                error="lease expired",
            )
            expired = True
        if record.state in (KeyState.SENT, KeyState.FAILED) or (
            record.state is KeyState.UNCERTAIN and not resend_uncertain
        ):
            if expired:
                db.execute(_EXPIRE, (key,))
            return Claim(False, record)
        granted: Row = (
            key,
            KeyState.IN_FLIGHT.value,
            owner,
            record.attempts + 1,
            now,
            now + lease_ms,
            None,
            None,
            None,
        )
        db.execute(_REPLACE, granted)
        op.undo = row
        return Claim(True, _record(granted))

    def _connection(self) -> sqlite3.Connection:
        """The open connection; the first call creates the folder, the file and the table."""
        if self._db is None:
            self._db = connect_sqlite(
                self.path,
                busy_timeout_s=self._busy_timeout_s,
                set_up=("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", _SCHEMA),
            )
        return self._db
