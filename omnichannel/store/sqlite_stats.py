"""How :mod:`omnichannel.store.analytics` queries a :class:`SqliteMessageStore`.

Times (``created_at`` and the aggregates' ``period``) are epoch milliseconds, so a latency in
microseconds is the difference times 1000.

The analytics' work is a coroutine whose only awaits are its ``fetch`` calls. Here ``fetch``
queries the connection at once and never suspends, so the store's thread runs the whole work
in one call (one round trip, one read snapshot): the coroutine is stepped once and finishes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..idempotency.sqlite import to_ms
from .analytics import Dialect, Fetch

if TYPE_CHECKING:
    import sqlite3

    from .sqlite import SqliteMessageStore

__all__ = ["DIALECT", "runner"]

T = TypeVar("T")

DIALECT = Dialect(
    time=to_ms,
    seconds=lambda later, earlier: f"(({later}) - ({earlier})) / 1000.0",
    sql_percentiles=False,
    micros=lambda later, earlier: f"(({later}) - ({earlier})) * 1000",
)


def runner(store: SqliteMessageStore) -> Callable[[Callable[[Fetch], Awaitable[T]]], Awaitable[T]]:
    """Runs analytics work on the store's thread, in one read transaction (one snapshot)."""

    async def run(work: Callable[[Fetch], Awaitable[T]]) -> T:
        def on(db: sqlite3.Connection) -> T:
            async def fetch(sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
                rows: list[tuple[Any, ...]] = db.execute(sql, tuple(args)).fetchall()
                return rows

            db.execute("BEGIN")  # deferred: a read snapshot, no write lock
            try:
                return _finish(work(fetch))
            finally:
                db.execute("COMMIT")

        return await store._run("stats", on)

    return run


def _finish(awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``, which must finish without suspending."""
    steps = awaitable.__await__()
    try:
        next(steps)
    except StopIteration as done:
        result: T = done.value
        return result
    steps.close()
    raise RuntimeError("SQLite analytics work awaited something other than its fetch")
