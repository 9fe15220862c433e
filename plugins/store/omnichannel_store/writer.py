"""Group commit: the events that arrive while the store is busy are written together.

Every listener call waits until its event is in the store (nothing is lost when the process
stops right after a send or a webhook's answer), but concurrent sends and webhooks share one
write: while a batch is being written, the next events queue up, and the next batch takes them
all (up to ``max_batch``). The batch's sends are recorded first, in one ``record_sends``
transaction, then its statuses in one ``record_statuses`` transaction, so a status whose send is
in the same batch applies at once.

A batch that fails is written again one event at a time, so that only the events the store
refuses fail (each with its own error); the others are kept.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeAlias

import attrs

from omnichannel import DeliveryFailed, DeliveryStatus, MessageSent, StatusChanged, Template
from omnichannel.store import SendRecord, StatusUpdate

if TYPE_CHECKING:
    from omnichannel import ErrorInfo, Message
    from omnichannel.store import MessageStore

__all__ = ["GroupWriter", "Recorded", "record", "record_batch"]

Recorded: TypeAlias = MessageSent | DeliveryFailed | StatusChanged
"""The events the store keeps."""


class GroupWriter:
    """Writes events to ``store`` in batches; :meth:`write` returns once its event is written.

    :param max_batch: the most events one batch writes.
    """

    def __init__(self, store: MessageStore, *, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queued: list[tuple[Recorded, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, event: Recorded) -> None:
        """Queue ``event`` and wait until it is written.

        :raises Exception: what the store raised for this event.
        """
        done = asyncio.get_running_loop().create_future()
        self._queued.append((event, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="omnichannel-store-writer")
        await done

    async def drain(self) -> None:
        """Wait until every queued event is written (before the store is closed)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued[: self.max_batch], self._queued[self.max_batch :]
            try:
                await record_batch(self.store, [event for event, _ in batch])
            except Exception:
                await self._one_by_one(batch)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _one_by_one(self, batch: list[tuple[Recorded, asyncio.Future[None]]]) -> None:
        for event, done in batch:
            try:
                await record(self.store, event)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(None)


async def record_batch(store: MessageStore, events: list[Recorded]) -> None:
    """Write ``events``: their sends in one transaction, then their statuses in another."""
    sends = [send for event in events if (send := _send(event)) is not None]
    statuses = [_update(event) for event in events if isinstance(event, StatusChanged)]
    if len(sends) == 1:
        await store.record_send(**attrs.asdict(sends[0], recurse=False))
    elif sends:
        await store.record_sends(sends)
    if len(statuses) == 1:
        await store.record_status(**attrs.asdict(statuses[0], recurse=False))
    elif statuses:
        await store.record_statuses(statuses)


async def record(store: MessageStore, event: Recorded) -> None:
    """Write what ``event`` says to ``store``."""
    if isinstance(event, StatusChanged):
        await store.record_status(**attrs.asdict(_update(event), recurse=False))
    elif (send := _send(event)) is not None:
        await store.record_send(**attrs.asdict(send, recurse=False))


def _send(event: Recorded) -> SendRecord | None:
    """The send record of a ``MessageSent``/``DeliveryFailed`` (``None`` for a status, or a send
    that failed before any channel was chosen: there is nothing to track)."""
    if isinstance(event, StatusChanged):
        return None
    receipt = event.receipt
    template, language = _template(event.message)
    if isinstance(event, MessageSent):
        queued = receipt.status is DeliveryStatus.QUEUED
        return SendRecord(
            message_id=receipt.message_id,
            channel=receipt.channel,
            status=DeliveryStatus.QUEUED if queued else DeliveryStatus.ACCEPTED,
            at=event.occurred_at,
            recipient=event.message.recipient,
            provider_message_id=receipt.provider_message_id,
            template=template,
            language=language,
        )
    if not receipt.channel:
        return None
    return SendRecord(
        message_id=receipt.message_id,
        channel=receipt.channel,
        status=DeliveryStatus.FAILED,
        at=event.occurred_at,
        recipient=event.message.recipient,
        provider_message_id=receipt.provider_message_id,
        template=template,
        language=language,
        error_kind=receipt.error.kind if receipt.error else None,
        error_code=_code(receipt.error),
        error_detail=receipt.error.detail if receipt.error else None,
    )


def _update(event: StatusChanged) -> StatusUpdate:
    return StatusUpdate(
        channel=event.channel,
        provider_message_id=event.provider_message_id,
        status=event.status,
        at=event.occurred_at,
        message_id=event.message_id,
        error_code=_code(event.error),
        error_detail=event.error.detail if event.error else None,
    )


def _template(message: Message) -> tuple[str | None, str | None]:
    content = message.content
    return (content.name, content.language) if isinstance(content, Template) else (None, None)


def _code(error: ErrorInfo | None) -> str | None:
    return None if error is None or error.code is None else str(error.code)
