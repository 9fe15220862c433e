"""Opening a SQLite file that several processes share (the key store and the message store).

Both stores own one plain ``sqlite3`` connection used only by a dedicated thread (their pool of
one worker guarantees that, so ``check_same_thread`` is off), in autocommit mode
(``isolation_level=None``: the stores write their own ``BEGIN``/``COMMIT``), with a busy
timeout. Switching a new file to WAL needs the file to itself and SQLite does not wait for it (no
busy handler), so the set-up statements are retried while another process does the same.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["connect_sqlite"]


def connect_sqlite(
    path: str,
    *,
    busy_timeout_s: float,
    set_up: Sequence[str],
    then: Callable[[sqlite3.Connection], object] | None = None,
) -> sqlite3.Connection:
    """Connect to ``path`` (creating its folder), run ``set_up`` (pragmas, ``CREATE … IF NOT
    EXISTS``; retried while the file is busy being set up), then ``then(db)`` (migrations); the
    connection is closed if any step fails. Blocking: call it on the store's thread.

    :raises OSError: the folder cannot be created.
    :raises sqlite3.Error: the file cannot be opened or set up.
    """
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        _set_up(db, set_up, busy_timeout_s)
        if then is not None:
            then(db)
    except BaseException:
        db.close()
        raise
    return db


def _set_up(db: sqlite3.Connection, statements: Sequence[str], busy_timeout_s: float) -> None:
    give_up = time.monotonic() + busy_timeout_s
    pause = 0.01
    while True:
        try:
            for statement in statements:
                db.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() + pause > give_up:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
