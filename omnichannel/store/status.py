"""The status state machine: a pure fold of status entries into a message's state.

The state is a function of the *set* of entries seen, whatever their order or repetition:

- ``status``: the highest-ranked of ``delivered``/``read`` seen; else ``failed`` if any failed; else
  the highest-ranked of ``queued``/``accepted``/``sent``. So, in effect, ``queued`` < ``accepted`` <
  ``sent`` < ``failed`` < ``delivered`` < ``read``: a failure is final unless a delivery proves
  otherwise.
- each ``<status>_at``: the earliest ``occurred_at`` of that status. A ``read`` implies a delivery:
  ``delivered_at`` is the earliest ``delivered`` *or* ``read`` time (so a read message always has
  one). No other time is implied.
- ``error_code``/``error_detail``: those of the earliest ``failed`` entry (ties broken by code, then
  detail). They stay after a later delivery, as does ``failed_at``: what happened is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from ..message import DeliveryStatus
from . import StatusEntry

__all__ = ["ORDER", "RANK", "StatusState", "fold", "fold_all"]

RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.QUEUED: 0,
    DeliveryStatus.ACCEPTED: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.DELIVERED: 3,
    DeliveryStatus.READ: 4,
}
"""The forward statuses, lowest first (``failed`` is outside: see the module docstring)."""

ORDER: dict[DeliveryStatus, int] = {
    DeliveryStatus.QUEUED: 0,
    DeliveryStatus.ACCEPTED: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.FAILED: 3,
    DeliveryStatus.DELIVERED: 4,
    DeliveryStatus.READ: 5,
}
"""The order in which the folded ``status`` moves: it never goes down in it."""

_FIELD = {status: f"{status.value}_at" for status in DeliveryStatus}
"""Each status's time field (``read`` -> ``read_at``)."""


def _earliest(current: datetime | None, moment: datetime) -> datetime:
    return moment if current is None or moment < current else current


@attrs.frozen
class StatusState:
    """What the entries folded so far say; :attr:`status` is ``None`` before any entry."""

    queued_at: datetime | None = None
    accepted_at: datetime | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    failed_at: datetime | None = None
    error_code: str | None = None
    error_detail: str | None = None

    def at(self, status: DeliveryStatus) -> datetime | None:
        """The earliest time of ``status`` (``delivered`` includes reads)."""
        value: datetime | None = getattr(self, _FIELD[status])
        return value

    @property
    def status(self) -> DeliveryStatus | None:
        """Where the message stands (see the module docstring)."""
        # Written out: a batch of sends asks this several times per message.
        if self.read_at is not None:
            return DeliveryStatus.READ
        if self.delivered_at is not None:
            return DeliveryStatus.DELIVERED
        if self.failed_at is not None:
            return DeliveryStatus.FAILED
        if self.sent_at is not None:
            return DeliveryStatus.SENT
        if self.accepted_at is not None:
            return DeliveryStatus.ACCEPTED
        if self.queued_at is not None:
            return DeliveryStatus.QUEUED
        return None


_FIELDS = tuple(field.name for field in attrs.fields(StatusState))


def fold(state: StatusState, entry: StatusEntry) -> StatusState:
    """``state`` with ``entry`` applied; commutative, associative and idempotent in the entries."""
    name = _FIELD[entry.status]
    # A dict of the fields and one constructor call, not attrs.evolve: the store folds every
    # message of every batch (evolve inspects the class's fields on each call).
    values: dict[str, Any] = {field: getattr(state, field) for field in _FIELDS}
    values[name] = _earliest(values[name], entry.occurred_at)
    if entry.status is DeliveryStatus.READ:
        values["delivered_at"] = _earliest(state.delivered_at, entry.occurred_at)
    elif entry.status is DeliveryStatus.FAILED:
        mine = (entry.occurred_at, entry.error_code or "", entry.error_detail or "")
        if state.failed_at is None or mine < (
            state.failed_at,
            state.error_code or "",
            state.error_detail or "",
        ):
            values["error_code"] = entry.error_code
            values["error_detail"] = entry.error_detail
    return StatusState(**values)


def fold_all(entries: Iterable[StatusEntry], state: StatusState | None = None) -> StatusState:
    """Every entry folded into ``state`` (default: the empty state)."""
    result = state if state is not None else StatusState()
    for entry in entries:
        result = fold(result, entry)
    return result
