"""The message store: every message sent and what happened to it afterwards.

A message is not done when the provider accepts it: it is done when we know it was delivered and
read, or why it failed. The store keeps one record per message (its current state, its times,
its error) and the history of the status updates that moved it, behind one async interface:
:class:`MessageStore`. SQLite is the embedded default (a file, no set-up); PostgreSQL is for
production. Schema migrations run on start-up and with ``omnichannel db upgrade``.

Status only moves forward: ``queued`` < ``accepted`` < ``sent`` < ``delivered`` < ``read``. A
``failed`` status is final, except that a later ``delivered`` or ``read`` proves the message
arrived after all (providers do report a failure and then a delivery). So duplicated and
out-of-order webhooks give the same final state (``omnichannel.store.status.fold``). A status for
a message the store does not know yet (the webhook outran the send's record) is kept and applied
when the send is recorded.

Next to the messages the store keeps aggregates, updated in the same transactions: counts and
send-to-delivered/read latency histograms per UTC hour and day (:mod:`omnichannel.store.rollup`),
so that :mod:`omnichannel.store.analytics` over a month reads aggregate rows (tens of thousands
for a million messages), not every message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

from ..errors import StoreError
from ..message import DeliveryStatus

__all__ = [
    "MessageRecord",
    "MessageStore",
    "SendRecord",
    "StatusEntry",
    "StatusUpdate",
    "StoreError",
    "open_message_store",
]


@attrs.frozen
class StatusEntry:
    """One status update of a message, as it arrived."""

    status: DeliveryStatus
    occurred_at: datetime
    """When the provider says it happened (its timestamp), else when we learned it."""
    error_code: str | None = None
    error_detail: str | None = None


@attrs.frozen
class StatusUpdate:
    """One status update from the provider, for :meth:`MessageStore.record_statuses` (the
    keyword arguments of :meth:`MessageStore.record_status`)."""

    channel: str
    provider_message_id: str
    status: DeliveryStatus
    at: datetime
    message_id: str | None = None
    error_code: str | None = None
    error_detail: str | None = None


@attrs.frozen
class SendRecord:
    """One send's outcome, for :meth:`MessageStore.record_sends` (the keyword arguments of
    :meth:`MessageStore.record_send`)."""

    message_id: str
    channel: str
    status: DeliveryStatus
    at: datetime
    recipient: str | None = None
    provider_message_id: str | None = None
    template: str | None = None
    language: str | None = None
    error_kind: str | None = None
    error_code: str | None = None
    error_detail: str | None = None


@attrs.frozen
class MessageRecord:
    """A message and where it stands."""

    message_id: str
    channel: str
    status: DeliveryStatus
    created_at: datetime
    """When the send was recorded."""
    updated_at: datetime
    recipient: str | None = None
    """Kept until the retention age drops it."""
    provider_message_id: str | None = None
    template: str | None = None
    language: str | None = None
    error_kind: str | None = None
    error_code: str | None = None
    error_detail: str | None = None
    accepted_at: datetime | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    failed_at: datetime | None = None


class MessageStore(Protocol):
    """Where messages and their statuses are kept (SQLite or PostgreSQL)."""

    async def upgrade(self) -> int:
        """Apply the schema migrations not applied yet; return the schema version."""

    async def schema_version(self) -> int:
        """The schema version applied to the database, without upgrading it (0 for an empty
        database); compare with ``omnichannel.store.migrations.LATEST_VERSION``."""

    async def record_send(
        self,
        *,
        message_id: str,
        channel: str,
        status: DeliveryStatus,
        at: datetime,
        recipient: str | None = None,
        provider_message_id: str | None = None,
        template: str | None = None,
        language: str | None = None,
        error_kind: str | None = None,
        error_code: str | None = None,
        error_detail: str | None = None,
    ) -> None:
        """The send's outcome: ``queued``, ``accepted`` (with the provider's id) or ``failed``.

        Statuses that arrived earlier for the provider's id are applied now.
        """

    async def record_sends(self, sends: Sequence[SendRecord]) -> None:
        """Many sends in one transaction: the same messages, histories, pending statuses applied
        and aggregates as :meth:`record_send` for each in turn (a message id sent twice: the later
        send is applied over the earlier), at a fraction of the cost; every message the batch
        creates or changes gets the batch's time. An empty batch does nothing."""

    async def record_status(
        self,
        *,
        channel: str,
        provider_message_id: str,
        status: DeliveryStatus,
        at: datetime,
        message_id: str | None = None,
        error_code: str | None = None,
        error_detail: str | None = None,
    ) -> None:
        """A status update from the provider; kept (and applied later) if the message is unknown."""

    async def record_statuses(self, updates: Sequence[StatusUpdate]) -> None:
        """Many status updates in one transaction: the same final state and history as
        :meth:`record_status` for each in turn (duplicates kept once, unknown messages pending),
        at a fraction of the cost. An empty batch does nothing."""

    async def get(self, message_id: str) -> MessageRecord | None:
        """The message's record, or ``None``."""

    async def history(self, message_id: str) -> list[StatusEntry]:
        """The message's status updates, oldest first (duplicates kept once)."""

    async def forget_details(self, before: datetime) -> int:
        """Retention: drop the recipient and error details of messages created before ``before``,
        and statuses still waiting for a send recorded before it; counts and times stay (the
        analytics still count them). Returns the number of messages changed."""

    async def close(self) -> None:
        """Release connections."""


from .factory import open_message_store  # noqa: E402  (after the types the backends import)
