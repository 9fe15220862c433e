"""The SQL of :class:`~omnichannel.store.sqlite.SqliteMessageStore` and its rows: the statements,
the conversions between rows and the store's values, and the helpers its thread calls (plain
``sqlite3``, inside the operation's transaction). Times are UTC epoch milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..idempotency.sqlite import from_ms, to_ms
from ..message import DeliveryStatus
from . import MessageRecord, StatusEntry
from .migrations import MESSAGE_COLUMNS
from .rollup import Facts
from .rollup_sql import SQLITE_ADD_COUNTS, SQLITE_ADD_LATENCIES, rows
from .sends import Rules
from .status import fold_all

if TYPE_CHECKING:
    import sqlite3
    from datetime import datetime

    from .rollup import Deltas
    from .sends import Planned
    from .status import StatusState

__all__ = [
    "ENTRY_COLUMNS",
    "FACTS",
    "INSERT_ENTRY",
    "INSERT_MESSAGE",
    "INSERT_PENDING",
    "PENDING_FOR",
    "RESOLVE",
    "RULES",
    "TAKE_PENDING",
    "UPDATE_SENT",
    "VERSION",
    "WRITE_STATE",
    "add_deltas",
    "append_entry",
    "entry_of",
    "facts_of",
    "fetch_one",
    "fetch_rows",
    "history_of",
    "insert_args",
    "read_version",
    "record_of",
    "refold",
    "state_args",
    "stored_micros",
    "update_args",
]

ENTRY_COLUMNS = "status, occurred_at, error_code, error_detail"
FACTS = (
    "created_at, channel, template, language, status, error_code, accepted_at, sent_at, delivered_at, read_at"
)
_PENDING_COLUMNS = f"channel, provider_message_id, {ENTRY_COLUMNS}, received_at"
_HAS_VERSIONS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
INSERT_ENTRY = (
    f"INSERT INTO message_statuses (message_id, {ENTRY_COLUMNS}) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING"
)
INSERT_PENDING = (
    f"INSERT INTO pending_statuses ({_PENDING_COLUMNS}) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)
WRITE_STATE = (
    "UPDATE messages SET status = ?, accepted_at = ?, sent_at = ?, delivered_at = ?, read_at = ?, "
    "failed_at = ?, error_code = ?, error_detail = ?, updated_at = ? WHERE message_id = ?"
)
INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 17)})"
UPDATE_SENT = (
    "UPDATE messages SET recipient = coalesce(?, recipient), "
    "provider_message_id = coalesce(?, provider_message_id), template = coalesce(?, template), "
    "language = coalesce(?, language), error_kind = coalesce(?, error_kind), status = ?, "
    "accepted_at = ?, sent_at = ?, delivered_at = ?, read_at = ?, failed_at = ?, error_code = ?, "
    "error_detail = ?, updated_at = ? WHERE message_id = ?"
)
TAKE_PENDING = (
    f"INSERT INTO message_statuses (message_id, {ENTRY_COLUMNS}) "
    f"SELECT ?, {ENTRY_COLUMNS} FROM pending_statuses "
    "WHERE channel = ? AND provider_message_id = ? ORDER BY id ON CONFLICT DO NOTHING"
)
# The statuses waiting under a batch's [channel, provider id] keys (a JSON array), oldest first.
PENDING_FOR = """
SELECT p.channel, p.provider_message_id, p.status, p.occurred_at, p.error_code, p.error_detail
FROM json_each(?) AS j JOIN pending_statuses p
  ON p.channel = json_extract(j.value, '$[0]') AND p.provider_message_id = json_extract(j.value, '$[1]')
ORDER BY p.id
"""
# Each lookup [message id, channel, provider id] of a batch (a JSON array) resolved as
# record_status does.
RESOLVE = """
SELECT j.key, coalesce(
  (SELECT m.message_id FROM messages m WHERE m.message_id = json_extract(j.value, '$[0]')),
  (SELECT m.message_id FROM messages m WHERE m.channel = json_extract(j.value, '$[1]')
     AND m.provider_message_id = json_extract(j.value, '$[2]') ORDER BY m.created_at DESC LIMIT 1))
FROM json_each(?) AS j
"""


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else to_ms(moment)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


def _us(ms: int | None) -> int | None:
    return None if ms is None else ms * 1000


def facts_of(row: Any) -> Facts:
    """A ``FACTS`` row as :class:`Facts` (times in microseconds)."""
    created, channel, template, language, status, code, *times = row
    return Facts(created * 1000, channel, template, language, status, code, *(_us(t) for t in times))


def stored_micros(moment: datetime) -> int:
    """A time as it is stored (milliseconds), in microseconds."""
    return to_ms(moment) * 1000


def _period(micros: int) -> int:
    return micros // 1000


def entry_of(row: Any) -> StatusEntry:
    return StatusEntry(DeliveryStatus(row[0]), from_ms(row[1]), row[2], row[3])


def record_of(row: Any) -> MessageRecord:
    (mid, channel, status, created, updated, *texts) = row[:12]
    times = [_dt(value) for value in row[12:]]
    return MessageRecord(
        mid, channel, DeliveryStatus(status), from_ms(created), from_ms(updated), *texts, *times
    )


def _stored(moment: datetime) -> datetime:
    """A time as the store keeps it (to the millisecond)."""
    return from_ms(to_ms(moment))


RULES = Rules(stored=_stored, to_micros=stored_micros, pending_by_row=True)


def _state_values(state: StatusState) -> tuple[Any, ...]:
    """status, the five times, error code and detail, as the columns hold them."""
    assert state.status is not None
    return (
        state.status.value,
        _ms(state.accepted_at),
        _ms(state.sent_at),
        _ms(state.delivered_at),
        _ms(state.read_at),
        _ms(state.failed_at),
        state.error_code,
        state.error_detail,
    )


def insert_args(message: Planned, now: int) -> tuple[Any, ...]:
    status, accepted, sent, delivered, read, failed, code, detail = _state_values(message.state)
    return (
        message.message_id,
        message.channel,
        status,
        now,
        now,
        message.recipient,
        message.provider_message_id,
        message.template,
        message.language,
        message.error_kind,
        code,
        detail,
        accepted,
        sent,
        delivered,
        read,
        failed,
    )


def update_args(message: Planned, now: int) -> tuple[Any, ...]:
    texts = message[2:7]
    return (*texts, *_state_values(message.state), now, message.message_id)


def state_args(state: StatusState, now: int, message_id: str) -> tuple[Any, ...]:
    """The arguments of ``WRITE_STATE``."""
    return (*_state_values(state), now, message_id)


def fetch_rows(db: sqlite3.Connection, sql: str, *args: object) -> list[Any]:
    return db.execute(sql, args).fetchall()


def fetch_one(db: sqlite3.Connection, sql: str, *args: object) -> Any:
    row = db.execute(sql, args).fetchone()
    return None if row is None else row[0]


def read_version(db: sqlite3.Connection) -> int:
    if fetch_one(db, _HAS_VERSIONS) is None:
        return 0
    return int(fetch_one(db, VERSION))


def history_of(db: sqlite3.Connection, message_id: str) -> list[StatusEntry]:
    sql = f"SELECT {ENTRY_COLUMNS} FROM message_statuses WHERE message_id = ? ORDER BY occurred_at, id"
    return [entry_of(row) for row in fetch_rows(db, sql, message_id)]


def append_entry(db: sqlite3.Connection, message_id: str, entry: StatusEntry) -> None:
    db.execute(
        INSERT_ENTRY,
        (message_id, entry.status.value, to_ms(entry.occurred_at), entry.error_code, entry.error_detail),
    )


def refold(db: sqlite3.Connection, message_id: str, now: int) -> StatusState:
    """Fold the message's whole history again (a handful of rows), write and return the result."""
    state = fold_all(history_of(db, message_id))
    db.execute(WRITE_STATE, state_args(state, now, message_id))
    return state


def add_deltas(db: sqlite3.Connection, deltas: Deltas) -> None:
    """Apply the aggregates' changes (last in the transaction)."""
    counts, latencies = deltas.count_rows(), deltas.latency_rows()
    if counts:
        db.executemany(SQLITE_ADD_COUNTS, rows(counts, _period))
    if latencies:
        db.executemany(SQLITE_ADD_LATENCIES, rows(latencies, _period))
