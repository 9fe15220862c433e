"""The dead-letter queue: list, retry (back to the main queue, same body and key) and purge.

Listing and retrying read the queue without acking what they keep: closing the channel
returns those messages to the queue, in order.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import attrs

from .fates import DLQ_HEADERS, FIRST_PUBLISHED_HEADER, RECONCILE_HEADER, REPLAYED_HEADER
from .transport import AmqpTransport, first_published

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

    from ..config import AmqpConfig

__all__ = ["DeadLetter", "list_dead_letters", "purge_dead_letters", "retry_dead_letters"]


@attrs.frozen
class DeadLetter:
    """One message of the dead-letter queue."""

    message_id: str | None
    reason: str | None
    error: str | None
    code: int | str | None
    deliveries: int
    command: str | None
    """The command's wire name (``send_message``), when the body is a command envelope."""
    body: str
    http_status: int | None = None
    idempotency_key: str | None = None
    channel: str | None = None
    sender: str | None = None
    attempts: int | None = None
    """Attempts of the last delivery's send (retries included), when it reached the channel."""
    failed_at: str | None = None
    """When the worker dead-lettered it (ISO 8601, UTC)."""
    first_published_ms: int | None = None
    """When the command was first published (UTC epoch milliseconds; ``message_ttl_s`` counts from it)."""


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _dead_letter(incoming: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(incoming.headers or {})
    body = incoming.body.decode(errors="replace")
    try:
        envelope = json.loads(body)
        command = envelope.get("command") if isinstance(envelope, dict) else None
    except ValueError:
        command = None
    code = headers.get("x-code")
    return DeadLetter(
        incoming.message_id,
        _text(headers.get("x-reason")),
        _text(headers.get("x-error")),
        code if isinstance(code, int) else _text(code),
        _number(headers.get("x-deliveries")) or 0,
        command if isinstance(command, str) else None,
        body,
        http_status=_number(headers.get("x-http-status")),
        idempotency_key=_text(headers.get("x-idempotency-key")),
        channel=_text(headers.get("x-channel")),
        sender=_text(headers.get("x-sender")),
        attempts=_number(headers.get("x-attempts")),
        failed_at=_text(headers.get("x-failed-at")),
        first_published_ms=_number(headers.get(FIRST_PUBLISHED_HEADER)),
    )


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _drain(transport: AmqpTransport, limit: int | None) -> list[AbstractIncomingMessage]:
    """Get (without acking) up to ``limit`` messages of the dead-letter queue."""
    await transport.declare(transport.config.dead_letter_queue)
    channel = await transport.channel()
    queue = await channel.get_queue(transport.config.dead_letter_queue, ensure=False)
    messages: list[AbstractIncomingMessage] = []
    while limit is None or len(messages) < limit:
        incoming = await queue.get(no_ack=False, fail=False)
        if incoming is None:
            break
        messages.append(incoming)
    return messages


async def list_dead_letters(config: AmqpConfig, *, limit: int | None = None) -> list[DeadLetter]:
    """The messages of the dead-letter queue, oldest first (they stay in the queue).

    :raises CommandError: when the broker cannot be reached.
    """
    async with AmqpTransport(config) as transport:
        return [_dead_letter(m) for m in await _drain(transport, limit)]


async def retry_dead_letters(config: AmqpConfig, ids: Collection[str] | None = None) -> list[str]:
    """Move dead letters back to the main queue: those whose message id is in ``ids``, or all.

    The body is unchanged (so is the idempotency key: a message sent meanwhile is not sent
    again); the dead-letter headers are dropped, the delivery count and the reconcile round
    start again, and the header ``x-replayed`` lets the worker resend a key left ``uncertain``
    once (a replay is an operator's decision to take that risk).

    :return: the ids of the messages moved.
    :raises CommandError: when the broker cannot be reached.
    """
    moved: list[str] = []
    async with AmqpTransport(config) as transport:
        await transport.declare(config.queue)
        for incoming in await _drain(transport, None):
            if ids is not None and incoming.message_id not in ids:
                continue
            dropped = (*DLQ_HEADERS, "x-deliveries", RECONCILE_HEADER)
            headers: dict[str, Any] = {k: v for k, v in (incoming.headers or {}).items() if k not in dropped}
            headers[REPLAYED_HEADER] = 1
            headers.update(first_published())  # a replay gets a new message_ttl_s
            message_id = incoming.message_id or ""
            await transport.publish(incoming.body, queue=config.queue, message_id=message_id, headers=headers)
            await incoming.ack()
            moved.append(message_id)
    return moved


async def purge_dead_letters(config: AmqpConfig) -> int:
    """Delete every message of the dead-letter queue; return how many there were."""
    async with AmqpTransport(config) as transport:
        await transport.declare(config.dead_letter_queue)
        channel = await transport.channel()
        queue = await channel.get_queue(config.dead_letter_queue, ensure=False)
        result = await queue.purge()
        return int(result.message_count or 0)
