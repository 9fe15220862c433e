"""Opening a SQLite file that several processes share (the key store and the message store).

WAL mode, a busy timeout, the parent folder created, and two things SQLite and aiosqlite leave to
the caller: switching a new file to WAL needs the file to itself and SQLite does not wait for it
(no busy handler), so the set-up is retried while another process does the same; and aiosqlite
stops its thread after a failed connect and reports that to the loop, so we wait for the thread
(else it may report to a closed loop).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiosqlite

__all__ = ["open_sqlite"]


async def open_sqlite(
    path: str,
    *,
    busy_timeout_s: float,
    pragmas: Sequence[str],
    then: Callable[[aiosqlite.Connection], Awaitable[object]] | None = None,
) -> aiosqlite.Connection:
    """Connect to ``path`` (autocommit), apply ``pragmas`` (retried while the file is busy being set
    up), then ``then(db)`` (a schema or migrations); the connection is closed if any step fails.

    :raises OSError: the folder cannot be created.
    :raises sqlite3.Error: the file cannot be opened or set up.
    """
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connecting = aiosqlite.connect(path, isolation_level=None)
    try:
        db = await connecting
    except sqlite3.Error:
        thread = getattr(connecting, "_thread", None)
        if thread is not None:
            await asyncio.to_thread(thread.join, 1.0)
        raise
    try:
        await db.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
        await _set_up(db, pragmas, busy_timeout_s)
        if then is not None:
            await then(db)
    except BaseException:
        await db.close()
        raise
    return db


async def _set_up(db: aiosqlite.Connection, pragmas: Sequence[str], busy_timeout_s: float) -> None:
    give_up = asyncio.get_running_loop().time() + busy_timeout_s
    pause = 0.01
    while True:
        try:
            for pragma in pragmas:
                await db.execute(pragma)
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or asyncio.get_running_loop().time() + pause > give_up:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
