"""How :class:`~.postgres.PostgresMessageStore` records statuses (``record_status``,
``record_statuses``).

Each function runs in the write's transaction, under the locks :mod:`.postgres` describes. A
status whose message is not there yet waits in ``pending_statuses`` until its send is recorded
(:mod:`.postgres_sends`). A batch is resolved and folded as :mod:`.batch` describes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import StatusEntry
from .batch import fold_by_message, lock_keys, lookup_of, lookups
from .postgres_writes import (
    ENTRY_COLUMNS,
    FACTS,
    HISTORIES,
    INSERT_ENTRY,
    LOCK_MESSAGES,
    WRITE_STATE,
    append_entry,
    apply_deltas,
    entry_of,
    facts_of,
    lock_status,
    lock_statuses,
    refold,
    state_args,
)
from .rollup import Deltas, Facts, micros

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from . import StatusUpdate

__all__ = ["write_status", "write_statuses"]

_INSERT_PENDING = (
    f"INSERT INTO pending_statuses (channel, provider_message_id, {ENTRY_COLUMNS}, received_at) "
    "VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING"
)
# Each lookup (message id, channel, provider id) of a batch resolved as record_status does.
_RESOLVE = """
SELECT k.i, coalesce(
  (SELECT m.message_id FROM messages m WHERE m.message_id = k.mid),
  (SELECT m.message_id FROM messages m WHERE m.channel = k.ch AND m.provider_message_id = k.pid
   ORDER BY m.created_at DESC LIMIT 1))
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(mid, ch, pid, i)
"""


async def write_status(conn: Any, update: StatusUpdate, now: datetime) -> None:
    """``record_status`` in its transaction (``now``: the time of ``updated_at``)."""
    await lock_status(conn, update.channel, update.provider_message_id)
    found = None
    if update.message_id is not None:
        found = await conn.fetchrow(
            f"SELECT message_id, {FACTS} FROM messages WHERE message_id = $1 FOR UPDATE", update.message_id
        )
    if found is None:
        found = await conn.fetchrow(
            f"SELECT message_id, {FACTS} FROM messages WHERE channel = $1 "
            "AND provider_message_id = $2 ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
            update.channel,
            update.provider_message_id,
        )
    if found is None:
        await conn.execute(
            _INSERT_PENDING,
            update.channel,
            update.provider_message_id,
            update.status.value,
            update.at,
            update.error_code,
            update.error_detail,
            now,
        )
        return
    old = facts_of(found[1:])
    await append_entry(
        conn, found[0], StatusEntry(update.status, update.at, update.error_code, update.error_detail)
    )
    state = await refold(conn, found[0], now)
    deltas = Deltas()
    deltas.move(old, old.folded(state, micros))
    await apply_deltas(conn, deltas)


async def write_statuses(conn: Any, batch: Sequence[StatusUpdate], now: datetime) -> None:
    """``record_statuses`` (of a batch that is not empty) in its transaction."""
    await lock_statuses(conn, lock_keys(batch))
    wanted = lookups(batch)
    rows = await conn.fetch(_RESOLVE, [w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted])
    found = {wanted[row[0] - 1]: row[1] for row in rows}
    ids = sorted({mid for mid in found.values() if mid is not None})
    olds: dict[str, Facts] = {}
    if ids:
        locked = await conn.fetch(LOCK_MESSAGES, ids)
        olds = {row[0]: facts_of(row[2:]) for row in locked}
    entries, waiting = [], []
    for update in batch:
        mid = found[lookup_of(update)]
        values = (update.status.value, update.at, update.error_code, update.error_detail)
        if mid is None:
            waiting.append((update.channel, update.provider_message_id, *values, now))
        else:
            entries.append((mid, *values))
    if entries:
        await conn.executemany(INSERT_ENTRY, entries)
    if waiting:
        await conn.executemany(_INSERT_PENDING, waiting)
    if not ids:
        return
    history = await conn.fetch(HISTORIES, ids)
    states = fold_by_message((row[0], entry_of(row[1:])) for row in history)
    await conn.executemany(WRITE_STATE, [state_args(states[mid], now, mid) for mid in ids])
    deltas = Deltas()
    for mid in ids:
        deltas.move(olds[mid], olds[mid].folded(states[mid], micros))
    await apply_deltas(conn, deltas)
