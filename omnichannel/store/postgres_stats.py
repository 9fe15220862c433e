"""How :mod:`omnichannel.store.analytics` queries a :class:`PostgresMessageStore`.

All the queries of one call run in one read-only ``REPEATABLE READ`` transaction (one snapshot).
A latency in microseconds is ``extract(epoch ...)`` (``numeric``, exact) times a million.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .analytics import Dialect, Fetch

if TYPE_CHECKING:
    from .postgres import PostgresMessageStore

__all__ = ["DIALECT", "numbered", "runner"]

T = TypeVar("T")

DIALECT = Dialect(
    time=lambda moment: moment,
    seconds=lambda later, earlier: f"extract(epoch FROM ({later}) - ({earlier}))::float8",
    sql_percentiles=True,
    micros=lambda later, earlier: f"(extract(epoch FROM ({later}) - ({earlier})) * 1000000)::bigint",
)


def numbered(sql: str) -> str:
    """``?`` placeholders as ``$1, $2, ...`` (the analytics SQL has no other ``?``)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${index}{part}" for index, part in enumerate(parts[1:], start=1))


def runner(store: PostgresMessageStore) -> Callable[[Callable[[Fetch], Awaitable[T]]], Awaitable[T]]:
    """Runs analytics work on one pooled connection, in a read-only snapshot."""

    async def run(work: Callable[[Fetch], Awaitable[T]]) -> T:
        async def on(conn: Any) -> T:
            async def fetch(sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
                return [tuple(row) for row in await conn.fetch(numbered(sql), *args)]

            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await work(fetch)

        return await store._run("stats", on)

    return run
