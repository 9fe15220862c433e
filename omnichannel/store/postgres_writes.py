"""The steps PostgreSQL's writers (:mod:`.postgres_sends`, :mod:`.postgres_statuses`) share.

Each runs on the connection of the write's transaction: the status locks, a message's row as the
aggregates count it (:class:`~.rollup.Facts`), its history read and appended to, its state folded
again and written back, and the aggregates' changes applied (last, in key order).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..message import DeliveryStatus
from . import StatusEntry
from .rollup import Facts, from_micros, micros
from .rollup_sql import POSTGRES_ADD_COUNTS, POSTGRES_ADD_LATENCIES, rows
from .status import fold_all

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .rollup import Deltas
    from .status import StatusState

__all__ = [
    "ENTRY_COLUMNS",
    "FACTS",
    "HISTORIES",
    "INSERT_ENTRY",
    "LOCK_MESSAGES",
    "WRITE_STATE",
    "append_entry",
    "apply_deltas",
    "entry_of",
    "facts_of",
    "lock_status",
    "lock_statuses",
    "read_history",
    "refold",
    "state_args",
    "unnest_args",
]

_STATUS_LOCK = 0x73746174  # the status locks' advisory lock class id ("stat"; migrations: "omni")
ENTRY_COLUMNS = "status, occurred_at, error_code, error_detail"
FACTS = (
    "created_at, channel, template, language, status, error_code, accepted_at, sent_at, delivered_at, read_at"
)
INSERT_ENTRY = (
    f"INSERT INTO message_statuses (message_id, {ENTRY_COLUMNS}) VALUES ($1,$2,$3,$4,$5) "
    "ON CONFLICT DO NOTHING"
)
WRITE_STATE = (
    "UPDATE messages SET status = $1, accepted_at = $2, sent_at = $3, delivered_at = $4, "
    "read_at = $5, failed_at = $6, error_code = $7, error_detail = $8, updated_at = $9 "
    "WHERE message_id = $10"
)
# Rows by id, one index look-up per id (a LATERAL subquery, kept apart by its FOR UPDATE or
# OFFSET 0), not ``= ANY($1)`` nor a plain join: asyncpg keeps statements prepared, and the plan
# PostgreSQL picks while a table is small (a sequential scan comparing every row with every id,
# or hashing the whole table) stays in use as it grows (90 ms for 500 ids among 20k rows).
# LOCK_MESSAGES locks the rows in the order of its ids: the caller sorts them.
LOCK_MESSAGES = (
    "SELECT m.* FROM unnest($1::text[]) AS k(wanted), LATERAL ("
    f"SELECT message_id, provider_message_id, {FACTS} FROM messages WHERE message_id = k.wanted "
    "FOR UPDATE) AS m"
)
HISTORIES = (
    "SELECT h.* FROM unnest($1::text[]) AS k(wanted), LATERAL ("
    f"SELECT message_id, {ENTRY_COLUMNS} FROM message_statuses WHERE message_id = k.wanted "
    "OFFSET 0) AS h"
)


def facts_of(row: Any) -> Facts:
    """A ``FACTS`` row as :class:`Facts` (times in microseconds)."""
    created, channel, template, language, status, code, *times = row
    return Facts(
        micros(created),
        channel,
        template,
        language,
        status,
        code,
        *(None if t is None else micros(t) for t in times),
    )


def entry_of(values: Sequence[Any]) -> StatusEntry:
    """``ENTRY_COLUMNS`` values as a :class:`StatusEntry`."""
    status, occurred_at, error_code, error_detail = values
    return StatusEntry(DeliveryStatus(status), occurred_at, error_code, error_detail)


def unnest_args(changes: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column (``unnest`` parameters)."""
    return [list(column) for column in zip(*changes, strict=True)]


def state_args(state: StatusState, now: datetime, message_id: str) -> tuple[Any, ...]:
    """``WRITE_STATE``'s parameters."""
    assert state.status is not None
    return (
        state.status.value,
        state.accepted_at,
        state.sent_at,
        state.delivered_at,
        state.read_at,
        state.failed_at,
        state.error_code,
        state.error_detail,
        now,
        message_id,
    )


async def lock_status(conn: Any, channel: str, provider_message_id: str) -> None:
    """Take the status lock of (``channel``, ``provider_message_id``)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        _STATUS_LOCK,
        f"{channel}\n{provider_message_id}",
    )


async def lock_statuses(conn: Any, keys: Sequence[str]) -> None:
    """Take the status locks of ``channel\\nprovider id`` keys in the order of their lock ids, so
    that batches locking several never deadlock."""
    hashes = await conn.fetch("SELECT DISTINCT hashtext(k) FROM unnest($1::text[]) AS k ORDER BY 1", keys)
    await conn.executemany("SELECT pg_advisory_xact_lock($1, $2)", [(_STATUS_LOCK, row[0]) for row in hashes])


async def read_history(conn: Any, message_id: str) -> list[StatusEntry]:
    """The message's status entries, oldest first."""
    rows = await conn.fetch(
        f"SELECT {ENTRY_COLUMNS} FROM message_statuses WHERE message_id = $1 ORDER BY occurred_at, id",
        message_id,
    )
    return [entry_of(row) for row in rows]


async def append_entry(conn: Any, message_id: str, entry: StatusEntry) -> None:
    """Add ``entry`` to the message's history (unless it has the same one already)."""
    await conn.execute(
        INSERT_ENTRY,
        message_id,
        entry.status.value,
        entry.occurred_at,
        entry.error_code,
        entry.error_detail,
    )


async def refold(conn: Any, message_id: str, now: datetime) -> StatusState:
    """Fold the message's whole history again (a handful of rows), write and return the result."""
    state = fold_all(await read_history(conn, message_id))
    await conn.execute(WRITE_STATE, *state_args(state, now, message_id))
    return state


async def apply_deltas(conn: Any, deltas: Deltas) -> None:
    """Apply the aggregates' changes (last in the transaction, in key order)."""
    counts, latencies = deltas.count_rows(), deltas.latency_rows()
    if counts:
        await conn.execute(POSTGRES_ADD_COUNTS, *unnest_args(rows(counts, from_micros)))
    if latencies:
        await conn.execute(POSTGRES_ADD_LATENCIES, *unnest_args(rows(latencies, from_micros)))
