"""What :meth:`~omnichannel.store.MessageStore.record_sends` does alike in both backends.

A batch is read once: the rows of its message ids that exist (:class:`Existing`), their
histories, and the statuses waiting for the (channel, provider id) keys its sends name. Then
:func:`plan` plays the sends in memory, in order, as ``record_send`` one after the other would:

- a message the batch creates takes its first send's channel; each text column (recipient,
  provider id, template, language, error kind) ends as the last non-``None`` value sent, else
  what the row had (``record_send``'s ``coalesce``);
- each send appends its status entry to the message's history, then moves the statuses waiting
  for its key there (oldest first), which then wait no more; an entry whose (status, time) the
  history has already is dropped (the first one is kept, as the history's unique key does);
- each message touched is folded once from its whole history (:func:`~.status.fold_all`), and its
  aggregates move once from what the row counted before the batch to what it counts after.

The backend then writes the result with one statement per table. The backends differ in the key
a send takes its waiting statuses by (:class:`Rules`): SQLite's ``record_send`` uses the row's
channel and provider id as the send leaves them, PostgreSQL's the send's own channel and provider
id (those it holds the status lock of).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import attrs

from . import SendRecord, StatusEntry
from .rollup import Deltas, Facts
from .status import StatusState, fold_all

__all__ = ["Existing", "PendingKey", "Planned", "Rules", "SendPlan", "plan", "send_keys"]

PendingKey = tuple[str, str]
"""(channel, provider message id): the key statuses wait under for their send."""


@attrs.frozen
class Rules:
    """How a backend stores what :func:`plan` computes."""

    stored: Callable[[datetime], datetime]
    """A status time as the backend keeps it (SQLite: to the millisecond)."""
    to_micros: Callable[[datetime], int]
    """A stored time in microseconds, as the aggregates count it."""
    pending_by_row: bool
    """Take waiting statuses by the row's channel and provider id (SQLite), not the send's."""


class Existing(NamedTuple):
    """A batch's message that exists already: its provider id and what the aggregates count."""

    provider_message_id: str | None
    facts: Facts


class Planned(NamedTuple):
    """A message as the batch leaves it: the text columns to write (``None``: keep the row's,
    for a message that exists) and its folded state."""

    message_id: str
    channel: str
    recipient: str | None
    provider_message_id: str | None
    template: str | None
    language: str | None
    error_kind: str | None
    state: StatusState


@attrs.define
class SendPlan:
    """What a batch writes: rows to insert and to update (each in message id order), history rows
    (in the order ``record_send`` would insert them), the waiting keys consumed, the aggregates'
    changes."""

    inserts: list[Planned]
    updates: list[Planned]
    entries: list[tuple[str, StatusEntry]]
    consumed: list[PendingKey]
    deltas: Deltas


def send_keys(
    sends: Sequence[SendRecord], existing: Mapping[str, Existing], rules: Rules
) -> list[PendingKey | None]:
    """The key each send takes its waiting statuses by (``None``: none), in the batch's order."""
    if not rules.pending_by_row:
        return [
            None if send.provider_message_id is None else (send.channel, send.provider_message_id)
            for send in sends
        ]
    rows: dict[str, tuple[str, str | None]] = {}  # message id: (channel, provider id) as left so far
    keys: list[PendingKey | None] = []
    for send in sends:
        row = rows.get(send.message_id)
        if row is None:
            old = existing.get(send.message_id)
            row = (send.channel, None) if old is None else (old.facts.channel, old.provider_message_id)
        if send.provider_message_id is not None:
            row = (row[0], send.provider_message_id)
        rows[send.message_id] = row
        channel, pid = row
        keys.append(None if pid is None else (channel, pid))
    return keys


class _Draft:
    """One message while the batch plays."""

    __slots__ = ("channel", "entries", "message_id", "old", "seen", "texts")

    def __init__(
        self, message_id: str, channel: str, old: Existing | None, history: list[StatusEntry]
    ) -> None:
        self.message_id = message_id
        self.channel = channel
        self.old = old
        self.entries = history
        self.seen = {(entry.status, entry.occurred_at) for entry in history}
        self.texts: list[str | None] = [None] * 5

    def append(self, entry: StatusEntry, out: list[tuple[str, StatusEntry]]) -> None:
        key = (entry.status, entry.occurred_at)
        if key not in self.seen:
            self.seen.add(key)
            self.entries.append(entry)
            out.append((self.message_id, entry))


def plan(
    sends: Sequence[SendRecord],
    keys: Sequence[PendingKey | None],
    *,
    now_micros: int,
    existing: Mapping[str, Existing],
    histories: Mapping[str, Sequence[StatusEntry]],
    pending: Mapping[PendingKey, Sequence[StatusEntry]],
    rules: Rules,
) -> SendPlan:
    """The batch played as ``record_send`` for each in turn (see the module docstring).

    :param keys: :func:`send_keys` of ``sends``.
    :param now_micros: the batch's time (a created message's ``created_at``), in microseconds.
    :param existing: the batch's messages that exist, by id.
    :param histories: the status entries of those messages (as stored).
    :param pending: the statuses waiting under the batch's keys, oldest first (as stored).
    """
    drafts: dict[str, _Draft] = {}
    waiting = dict(pending)
    entries: list[tuple[str, StatusEntry]] = []
    consumed: list[PendingKey] = []
    stored = rules.stored
    for send, key in zip(sends, keys, strict=True):
        draft = drafts.get(send.message_id)
        if draft is None:
            row = existing.get(send.message_id)
            draft = _Draft(
                send.message_id,
                send.channel if row is None else row.facts.channel,
                row,
                list(histories.get(send.message_id, ())),
            )
            drafts[send.message_id] = draft
        texts = draft.texts
        for index, value in enumerate(
            (send.recipient, send.provider_message_id, send.template, send.language, send.error_kind)
        ):
            if value is not None:
                texts[index] = value
        draft.append(StatusEntry(send.status, stored(send.at), send.error_code, send.error_detail), entries)
        if key is not None and key in waiting:
            for entry in waiting.pop(key):
                draft.append(entry, entries)
            consumed.append(key)
    inserts: list[Planned] = []
    updates: list[Planned] = []
    deltas = Deltas()
    for message_id in sorted(drafts):
        draft = drafts[message_id]
        state = fold_all(draft.entries)
        recipient, pid, template, language, error_kind = draft.texts
        planned = Planned(message_id, draft.channel, recipient, pid, template, language, error_kind, state)
        old = None if draft.old is None else draft.old.facts
        if old is None:
            inserts.append(planned)
            base = Facts(now_micros, draft.channel, template, language, "", None, None, None, None, None)
        else:
            updates.append(planned)
            base = old._replace(
                template=old.template if template is None else template,
                language=old.language if language is None else language,
            )
        deltas.move(old, base.folded(state, rules.to_micros))
    return SendPlan(inserts, updates, entries, consumed, deltas)
