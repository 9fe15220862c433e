"""How :mod:`omnichannel.store.analytics` queries a :class:`SqliteMessageStore`.

Times (``created_at`` and the aggregates' ``period``) are epoch milliseconds, so a latency in
microseconds is the difference times 1000.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..idempotency.sqlite import to_ms
from .analytics import Dialect, Fetch

if TYPE_CHECKING:
    import aiosqlite

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
    """Runs analytics work on the store's connection, in one read transaction (one snapshot)."""

    async def run(work: Callable[[Fetch], Awaitable[T]]) -> T:
        async def on(db: aiosqlite.Connection) -> T:
            async def fetch(sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
                async with db.execute(sql, tuple(args)) as cursor:
                    return [tuple(row) for row in await cursor.fetchall()]

            await db.execute("BEGIN")  # deferred: a read snapshot, no write lock
            try:
                return await work(fetch)
            finally:
                await db.execute("COMMIT")

        return await store._run("stats", on)

    return run
