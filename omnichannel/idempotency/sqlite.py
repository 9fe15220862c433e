"""Idempotency keys in a SQLite file (the default store), shared by the processes that open it.

One table, ``idempotency_keys``, one row per key; times are UTC epoch milliseconds. A claim is
one ``BEGIN IMMEDIATE`` transaction (read, expired lease → ``uncertain``, grant), so two processes
claiming the same key through the same file cannot both be granted. The file is in WAL mode with
``synchronous=NORMAL``: a ``sent`` row survives a crash of the process once ``complete``
returns (a power cut may lose the last commits; the WAL keeps the file consistent). A claim of a
key never seen is one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (one round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import aiosqlite
import attrs

from .._sqlite import open_sqlite
from ..clock import Clock, SystemClock
from ..errors import KeyStoreError
from .keys import Claim, KeyRecord, KeyState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["SqliteKeyStore"]

T = TypeVar("T")

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

Row = tuple[str, str, str, int, int, int | None, str | None, str | None, str | None]


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
    """A :class:`~omnichannel.idempotency.KeyStore` in a SQLite file.

    :param path: the file; it and its folder are created on first use (:meth:`open`, or lazily).
    :param clock: the time of leases and ``updated_at`` (every process sharing the file must agree).
    :param busy_timeout_s: how long a statement waits for another process's write lock.
    :raises KeyStoreError: from any method, when the file cannot be opened or stays locked.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Clock | None = None, busy_timeout_s: float = 5.0
    ) -> None:
        self.path = os.fspath(path)
        self._clock: Clock = clock or SystemClock()
        self._busy_timeout_ms = max(0, round(busy_timeout_s * 1000))
        self._db: aiosqlite.Connection | None = None
        self._closed = False
        # One connection carries one transaction at a time: every operation takes this lock.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SqliteKeyStore {self.path!r}>"

    async def open(self) -> None:
        """Open the file and create the table if needed (the other methods do it when called first)."""
        async with self._lock:
            await self._connection()

    async def claim(self, key: str, *, owner: str, lease_s: float, resend_uncertain: bool = False) -> Claim:
        """See :meth:`KeyStore.claim`; one ``BEGIN IMMEDIATE`` transaction."""

        async def run(db: aiosqlite.Connection) -> Claim:
            now = to_ms(self._clock.now())
            # A key never seen (a campaign's every row): one atomic statement, one round trip.
            fresh: Row = (
                key,
                KeyState.IN_FLIGHT.value,
                owner,
                1,
                now,
                now + round(lease_s * 1000),
                None,
                None,
                None,
            )
            async with db.execute(
                f"INSERT INTO idempotency_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (key) DO NOTHING RETURNING key",
                fresh,
            ) as cursor:
                if await cursor.fetchone() is not None:
                    return Claim(True, _record(fresh))
            # The key exists: decide under the write lock.
            try:
                await db.execute("BEGIN IMMEDIATE")
                claim = await self._claim(db, key, owner, now, round(lease_s * 1000), resend_uncertain)
                await db.execute("COMMIT")
            except BaseException:
                # Queued after whatever is still running on aiosqlite's thread (a cancelled BEGIN too).
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
            return claim

        return await self._run("claim", key, run)

    async def complete(self, key: str, *, owner: str, channel: str, provider_message_id: str | None) -> None:
        """See :meth:`KeyStore.complete`; a late owner changes nothing."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE idempotency_keys SET state = 'sent', updated_at = ?, lease_until = NULL, "
                f"channel = ?, provider_message_id = ? WHERE {_HELD}",
                (to_ms(self._clock.now()), channel, provider_message_id, key, owner),
            )

        await self._run("complete", key, run)

    async def release(
        self, key: str, *, owner: str, error: str, final: bool, uncertain: bool = False
    ) -> None:
        """See :meth:`KeyStore.release`; a late owner changes nothing."""

        async def run(db: aiosqlite.Connection) -> None:
            if not final and not uncertain:
                await db.execute(f"DELETE FROM idempotency_keys WHERE {_HELD}", (key, owner))
                return
            state = KeyState.FAILED if final else KeyState.UNCERTAIN
            await db.execute(
                "UPDATE idempotency_keys SET state = ?, updated_at = ?, lease_until = NULL, error = ? "
                f"WHERE {_HELD}",
                (state.value, to_ms(self._clock.now()), error, key, owner),
            )

        await self._run("release", key, run)

    async def get(self, key: str) -> KeyRecord | None:
        """See :meth:`KeyStore.get`."""

        async def run(db: aiosqlite.Connection) -> KeyRecord | None:
            row = await self._row(db, key)
            return None if row is None else _record(row)

        return await self._run("get", key, run)

    async def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        async with self._lock:
            self._closed = True
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    # -- internals ---------------------------------------------------------------------------------

    async def _claim(
        self, db: aiosqlite.Connection, key: str, owner: str, now: int, lease_ms: int, resend_uncertain: bool
    ) -> Claim:
        row = await self._row(db, key)
        record = None if row is None else _record(row)
        if record is not None and record.state is KeyState.IN_FLIGHT:
            lease_until = row[5] if row is not None else None
            assert lease_until is not None
            if lease_until > now:
                return Claim(False, record)
            # The holder's lease ran out (it crashed?): it may have sent the message.
            await db.execute(
                "UPDATE idempotency_keys SET state = 'uncertain', lease_until = NULL, "
                "error = 'lease expired' WHERE key = ?",
                (key,),
            )
            record = attrs.evolve(record, state=KeyState.UNCERTAIN, lease_until=None, error="lease expired")
        if record is not None and (
            record.state in (KeyState.SENT, KeyState.FAILED)
            or (record.state is KeyState.UNCERTAIN and not resend_uncertain)
        ):
            return Claim(False, record)
        attempts = record.attempts + 1 if record is not None else 1
        granted: Row = (key, KeyState.IN_FLIGHT.value, owner, attempts, now, now + lease_ms, None, None, None)
        await db.execute(
            f"INSERT OR REPLACE INTO idempotency_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", granted
        )
        return Claim(True, _record(granted))

    @staticmethod
    async def _row(db: aiosqlite.Connection, key: str) -> Row | None:
        async with db.execute(f"SELECT {_COLUMNS} FROM idempotency_keys WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else (*row,)

    async def _run(self, operation: str, key: str, run: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """``run`` on the connection, under the lock; SQLite errors become :class:`KeyStoreError`."""
        async with self._lock:
            db = await self._connection()
            try:
                if db.in_transaction:  # left open by a cancelled claim
                    await db.execute("ROLLBACK")
                return await run(db)
            except sqlite3.Error as exc:
                raise KeyStoreError(
                    f"idempotency key store {self.path!r}: {operation} of key {key!r} failed "
                    f"({type(exc).__name__}: {exc})"
                ) from exc

    async def _connection(self) -> aiosqlite.Connection:
        """The open connection (caller holds the lock); the first call creates the file and table."""
        if self._db is not None:
            return self._db
        if self._closed:
            raise KeyStoreError(f"idempotency key store {self.path!r} is closed")
        try:
            db = await open_sqlite(
                self.path,
                busy_timeout_s=self._busy_timeout_ms / 1000,
                pragmas=("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", _SCHEMA),
            )
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(
                f"idempotency key store {self.path!r} cannot be opened ({type(exc).__name__}: {exc})"
            ) from exc
        self._db = db
        return db
