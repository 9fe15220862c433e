"""What :meth:`~omnichannel.store.MessageStore.record_statuses` does alike in both backends.

A batch is resolved once: every distinct (message id, channel, provider id) *lookup* is mapped to
its message (or to none: the update is kept as pending), then the history rows are inserted in the
batch's order (so duplicates keep the first, as one ``record_status`` after the other would), and
only the messages touched are folded again, from their whole histories.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import StatusEntry, StatusUpdate
from .status import StatusState, fold_all

__all__ = ["Lookup", "fold_by_message", "lock_keys", "lookup_of", "lookups"]

Lookup = tuple[str | None, str, str]
"""(message id or ``None``, channel, provider message id): how ``record_status`` finds a message."""


def lookup_of(update: StatusUpdate) -> Lookup:
    return (update.message_id, update.channel, update.provider_message_id)


def lookups(updates: Sequence[StatusUpdate]) -> list[Lookup]:
    """The batch's distinct lookups, in first-seen order."""
    return list(dict.fromkeys(lookup_of(update) for update in updates))


def lock_keys(updates: Sequence[StatusUpdate]) -> list[str]:
    """The distinct ``channel\\nprovider id`` keys of the status locks, sorted."""
    return sorted({f"{update.channel}\n{update.provider_message_id}" for update in updates})


def fold_by_message(rows: Iterable[tuple[str, StatusEntry]]) -> dict[str, StatusState]:
    """Each message's entries folded: ``{message_id: state}``."""
    grouped: dict[str, list[StatusEntry]] = {}
    for message_id, entry in rows:
        grouped.setdefault(message_id, []).append(entry)
    return {message_id: fold_all(entries) for message_id, entries in grouped.items()}
