"""How :class:`~.postgres.PostgresMessageStore` records sends (``record_send``, ``record_sends``).

Each function runs in the write's transaction, under the locks :mod:`.postgres` describes. A send
moves the statuses waiting in ``pending_statuses`` for its (channel, provider id) to its history.
A batch is read once, played in memory by :mod:`.sends`, then written with one statement per
table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import StatusEntry
from .migrations import MESSAGE_COLUMNS
from .postgres_writes import (
    ENTRY_COLUMNS,
    FACTS,
    HISTORIES,
    LOCK_MESSAGES,
    append_entry,
    apply_deltas,
    entry_of,
    facts_of,
    lock_status,
    lock_statuses,
    refold,
    state_args,
    unnest_args,
)
from .rollup import Deltas, Facts, micros
from .sends import Existing, Planned, Rules, SendPlan, plan, send_keys

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from . import SendRecord

__all__ = ["Raced", "lock_sends", "write_send", "write_sends"]

_INSERT_MESSAGES = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[], "
    "$3::text[], $4::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], "
    "$9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], "
    "$15::timestamptz[], $16::timestamptz[]) ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
)
_UPDATE_SENT = (
    "UPDATE messages SET recipient = coalesce($1, recipient), "
    "provider_message_id = coalesce($2, provider_message_id), template = coalesce($3, template), "
    "language = coalesce($4, language), error_kind = coalesce($5, error_kind), status = $6, "
    "accepted_at = $7, sent_at = $8, delivered_at = $9, read_at = $10, failed_at = $11, "
    "error_code = $12, error_detail = $13, updated_at = $14 WHERE message_id = $15"
)
_INSERT_ENTRIES = (
    f"INSERT INTO message_statuses (message_id, {ENTRY_COLUMNS}) SELECT * FROM unnest($1::text[], "
    "$2::text[], $3::timestamptz[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING"
)
_TAKE_PENDING = (
    f"INSERT INTO message_statuses (message_id, {ENTRY_COLUMNS}) "
    f"SELECT $1, {ENTRY_COLUMNS} FROM pending_statuses "
    "WHERE channel = $2 AND provider_message_id = $3 ORDER BY id ON CONFLICT DO NOTHING"
)
# The statuses waiting under (channel, provider id) keys, oldest first.
_WAITING = (
    "SELECT p.channel, p.provider_message_id, p.status, p.occurred_at, p.error_code, p.error_detail "
    "FROM unnest($1::text[], $2::text[]) AS k(ch, pid), LATERAL (SELECT * FROM pending_statuses "
    "WHERE channel = k.ch AND provider_message_id = k.pid OFFSET 0) AS p ORDER BY p.id"
)
_RULES = Rules(stored=lambda moment: moment, to_micros=micros, pending_by_row=False)


class Raced(Exception):
    """A message of the batch was created by another writer after the batch read its rows."""


async def write_send(conn: Any, send: SendRecord, now: datetime) -> None:
    """``record_send`` in its transaction (``now``: the time of ``created_at``/``updated_at``)."""
    if send.provider_message_id is not None:
        await lock_status(conn, send.channel, send.provider_message_id)
    # Insert, or else lock the existing row and read what the aggregates count of it (a
    # concurrent first send of the same id makes the insert wait, then find its row).
    old = None
    if not await conn.fetchval(
        f"INSERT INTO messages ({MESSAGE_COLUMNS}) "
        "VALUES ($1,$2,$3,$4,$4,$5,$6,$7,$8,$9,NULL,NULL,NULL,NULL,NULL,NULL,NULL) "
        "ON CONFLICT (message_id) DO NOTHING RETURNING true",
        send.message_id,
        send.channel,
        send.status.value,
        now,
        send.recipient,
        send.provider_message_id,
        send.template,
        send.language,
        send.error_kind,
    ):
        row = await conn.fetchrow(
            f"SELECT {FACTS} FROM messages WHERE message_id = $1 FOR UPDATE", send.message_id
        )
        old = facts_of(row)
        await conn.execute(
            "UPDATE messages SET recipient = coalesce($2, recipient), "
            "provider_message_id = coalesce($3, provider_message_id), "
            "template = coalesce($4, template), language = coalesce($5, language), "
            "error_kind = coalesce($6, error_kind) WHERE message_id = $1",
            send.message_id,
            send.recipient,
            send.provider_message_id,
            send.template,
            send.language,
            send.error_kind,
        )
    await append_entry(
        conn, send.message_id, StatusEntry(send.status, send.at, send.error_code, send.error_detail)
    )
    if send.provider_message_id is not None:
        await conn.execute(_TAKE_PENDING, send.message_id, send.channel, send.provider_message_id)
        await conn.execute(
            "DELETE FROM pending_statuses WHERE channel = $1 AND provider_message_id = $2",
            send.channel,
            send.provider_message_id,
        )
    state = await refold(conn, send.message_id, now)
    base = old or Facts(
        micros(now), send.channel, None, None, send.status.value, None, None, None, None, None
    )
    base = base._replace(
        template=base.template if send.template is None else send.template,
        language=base.language if send.language is None else send.language,
    )
    deltas = Deltas()
    deltas.move(old, base.folded(state, micros))
    await apply_deltas(conn, deltas)


async def lock_sends(conn: Any, batch: Sequence[SendRecord]) -> None:
    """Take the status locks of the batch's (channel, provider id) keys, as ``record_statuses``."""
    keys = sorted(
        {f"{s.channel}\n{s.provider_message_id}" for s in batch if s.provider_message_id is not None}
    )
    if keys:
        await lock_statuses(conn, keys)


async def write_sends(conn: Any, batch: Sequence[SendRecord], now: datetime) -> None:
    """``record_sends`` after :func:`lock_sends`; :class:`Raced` if a new message exists."""
    ids = sorted({send.message_id for send in batch})
    rows = await conn.fetch(LOCK_MESSAGES, ids)
    existing = {row[0]: Existing(row[1], facts_of(row[2:])) for row in rows}
    keys = send_keys(batch, existing, _RULES)
    wanted = list(dict.fromkeys(key for key in keys if key is not None))
    waiting: dict[tuple[str, str], list[StatusEntry]] = {}
    if wanted:
        for row in await conn.fetch(_WAITING, [key[0] for key in wanted], [key[1] for key in wanted]):
            waiting.setdefault((row[0], row[1]), []).append(entry_of(row[2:]))
    histories: dict[str, list[StatusEntry]] = {}
    if existing:
        for row in await conn.fetch(HISTORIES, sorted(existing)):
            histories.setdefault(row[0], []).append(entry_of(row[1:]))
    done = plan(
        batch,
        keys,
        now_micros=micros(now),
        existing=existing,
        histories=histories,
        pending=waiting,
        rules=_RULES,
    )
    await _write_plan(conn, done, now)


async def _write_plan(conn: Any, done: SendPlan, now: datetime) -> None:
    if done.inserts:
        created = await conn.fetch(_INSERT_MESSAGES, *_insert_columns(done.inserts, now))
        if len(created) != len(done.inserts):
            raise Raced
    if done.updates:
        await conn.executemany(
            _UPDATE_SENT,
            [(*m[2:7], *state_args(m.state, now, m.message_id)) for m in done.updates],
        )
    if done.entries:
        entries = [
            (mid, e.status.value, e.occurred_at, e.error_code, e.error_detail) for mid, e in done.entries
        ]
        await conn.execute(_INSERT_ENTRIES, *unnest_args(entries))
    if done.consumed:
        await conn.execute(
            "DELETE FROM pending_statuses WHERE (channel, provider_message_id) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))",
            [key[0] for key in done.consumed],
            [key[1] for key in done.consumed],
        )
    await apply_deltas(conn, done.deltas)


def _insert_columns(messages: list[Planned], now: datetime) -> list[list[Any]]:
    """The new messages as ``_INSERT_MESSAGES``'s parameters (one list per column)."""
    rows = []
    for m in messages:
        state = m.state
        assert state.status is not None
        rows.append(
            (
                m.message_id,
                m.channel,
                state.status.value,
                m.recipient,
                m.provider_message_id,
                m.template,
                m.language,
                m.error_kind,
                state.error_code,
                state.error_detail,
                state.accepted_at,
                state.sent_at,
                state.delivered_at,
                state.read_at,
                state.failed_at,
            )
        )
    columns = unnest_args(rows)
    return [*columns[:3], [now] * len(messages), *columns[3:]]
