"""Parked senders: messages of a sender that cannot send wait in ``<queue>.parked.<sender>``.

A worker that gets a ``SenderUnavailableError`` (a revoked token, a locked account, ...) moves
the message to the sender's parked queue and *parks the sender*: it moves that sender's
further messages there without sending them, until the sender is resumed. The broker keeps
the state that outlives a worker:

* ``<queue>.parked.<sender>``: the parked messages, unchanged, with the headers ``x-reason``,
  ``x-error``, ``x-code``, ``x-http-status``, ``x-sender`` and ``x-channel``;
* ``<queue>.parked``: the index, one message per parking of a sender (the body is a
  :class:`ControlMessage`); ``omnichannel sender list`` and starting workers read it;
* ``<queue>.control``: a fanout exchange to which every worker binds a queue of its own: a
  worker that parks a sender tells the others (``park``); ``omnichannel sender resume`` (or a
  worker whose probe succeeded) tells them to stop parking it (``resume``).

:func:`resume_sender` announces the resume, removes the sender from the index and moves its
parked messages back to the main queue, unchanged (same idempotency keys: a message that was
sent meanwhile is not sent again). Every step is safe to repeat.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import attrs

from .fates import PARK_HEADERS
from .transport import AmqpTransport

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

    from ..clock import Clock
    from ..config import AmqpConfig

__all__ = [
    "ControlMessage",
    "ParkedSender",
    "ParkedSenders",
    "control_exchange_name",
    "list_parked",
    "parked_index_name",
    "parked_queue_name",
    "resume_parked",
    "resume_sender",
]

log = logging.getLogger("omnichannel.amqp")


def parked_queue_name(queue: str, sender: str) -> str:
    """The queue where the parked messages of ``sender`` wait: ``<queue>.parked.<sender>``."""
    return f"{queue}.parked.{sender}"


def parked_index_name(queue: str) -> str:
    """The index of parked senders: ``<queue>.parked``."""
    return f"{queue}.parked"


def control_exchange_name(queue: str) -> str:
    """The fanout exchange that carries ``park``/``resume`` to every worker: ``<queue>.control``."""
    return f"{queue}.control"


@attrs.frozen
class ControlMessage:
    """A ``park`` or ``resume`` of one sender (on the control exchange, and in the index)."""

    action: str
    """``park`` or ``resume``."""
    sender: str
    channel: str | None = None
    reason: str | None = None
    error: str | None = None
    origin: str | None = None
    """The worker (or ``cli``) that sent it; a worker ignores its own messages."""
    trigger: str = "operator"
    """``resume`` only: ``operator`` or ``probe``."""

    def encode(self) -> bytes:
        """The message's JSON body."""
        return json.dumps(attrs.asdict(self)).encode()

    @classmethod
    def decode(cls, body: bytes) -> ControlMessage | None:
        """The message in ``body``, or ``None`` if it is not one (it is then ignored)."""
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("action") not in ("park", "resume"):
            return None
        text = {k: v for k, v in data.items() if isinstance(v, str)}
        if not text.get("sender"):
            return None
        return cls(
            text["action"],
            text["sender"],
            text.get("channel"),
            text.get("reason"),
            text.get("error"),
            text.get("origin"),
            text.get("trigger", "operator"),
        )


@attrs.frozen
class ParkedSender:
    """A parked sender, as ``omnichannel sender list`` shows it."""

    sender: str
    channel: str | None
    reason: str | None
    error: str | None
    queue: str
    messages: int
    """Messages waiting in its parked queue."""


# ---------------------------------------------------------------- broker operations


async def _reader(transport: AmqpTransport) -> AbstractChannel:
    """A channel of its own for reading: closing it returns what it got and did not ack."""
    connection = await transport.connection()
    return await connection.channel()


async def _get_all(channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
    source = await channel.get_queue(queue, ensure=False)
    messages: list[AbstractIncomingMessage] = []
    while (incoming := await source.get(no_ack=False, fail=False)) is not None:
        messages.append(incoming)
    return messages


async def announce(transport: AmqpTransport, message: ControlMessage) -> None:
    """Publish ``message`` on the control exchange (to the workers running now).

    :raises CommandError: when the broker refuses or cannot be reached.
    """
    exchange = control_exchange_name(transport.config.queue)
    await transport.declare_fanout(exchange)
    body = message.encode()
    await transport.publish(body, queue=exchange, message_id=message.sender, exchange=exchange)


async def index_sender(transport: AmqpTransport, message: ControlMessage) -> None:
    """Record in the index that ``message.sender`` is parked (confirmed by the broker)."""
    index = parked_index_name(transport.config.queue)
    await transport.declare(index)
    await transport.publish(message.encode(), queue=index, message_id=message.sender)


async def read_index(transport: AmqpTransport) -> dict[str, ControlMessage]:
    """The parked senders of the index, by sender (the last entry of each); they stay in it."""
    index = parked_index_name(transport.config.queue)
    await transport.declare(index)
    channel = await _reader(transport)
    try:
        entries = [ControlMessage.decode(m.body) for m in await _get_all(channel, index)]
    finally:
        await channel.close()
    return {e.sender: e for e in entries if e is not None}


async def unindex_sender(transport: AmqpTransport, sender: str) -> int:
    """Remove ``sender`` from the index; the number of entries removed."""
    index = parked_index_name(transport.config.queue)
    await transport.declare(index)
    channel = await _reader(transport)
    removed = 0
    try:
        for incoming in await _get_all(channel, index):
            entry = ControlMessage.decode(incoming.body)
            if entry is None or entry.sender == sender:  # a broken entry goes too
                await incoming.ack()
                removed += 1
    finally:
        await channel.close()
    return removed


async def move_parked(transport: AmqpTransport, sender: str) -> list[str]:
    """Move the parked messages of ``sender`` back to the main queue, unchanged but for the park
    headers; each is removed from the parked queue only once the broker confirmed its copy.

    :return: the ids of the messages moved.
    """
    import aio_pika

    config = transport.config
    source = parked_queue_name(config.queue, sender)
    await transport.declare(config.queue)
    channel = await _reader(transport)
    moved: list[str] = []
    try:
        try:  # passive: a sender that was never parked gets no queue
            queue = await channel.declare_queue(source, passive=True)
        except aio_pika.exceptions.ChannelClosed:  # not found (the broker closed the channel)
            return moved
        while (incoming := await queue.get(no_ack=False, fail=False)) is not None:
            headers: dict[str, Any] = {
                k: v for k, v in (incoming.headers or {}).items() if k not in PARK_HEADERS
            }
            message_id = incoming.message_id or ""
            await transport.publish(incoming.body, queue=config.queue, message_id=message_id, headers=headers)
            await incoming.ack()
            moved.append(message_id)
    finally:
        await channel.close()
    return moved


async def resume_sender(
    transport: AmqpTransport, sender: str, *, origin: str = "cli", trigger: str = "operator"
) -> list[str]:
    """Resume ``sender``: tell the running workers, remove it from the index, then move its
    parked messages back to the main queue (see the module docstring).

    :return: the ids of the messages moved (workers that had parked it may move some too).
    :raises CommandError: when the broker cannot be reached.
    """
    index = await read_index(transport)
    channel = index[sender].channel if sender in index else None
    await announce(transport, ControlMessage("resume", sender, channel, origin=origin, trigger=trigger))
    await unindex_sender(transport, sender)
    return await move_parked(transport, sender)


async def resume_parked(config: AmqpConfig, sender: str) -> list[str]:
    """``omnichannel sender resume``: :func:`resume_sender` on a connection of its own.

    :return: the ids of the messages moved back to the main queue.
    :raises CommandError: when the broker cannot be reached.
    """
    async with AmqpTransport(config) as transport:
        return await resume_sender(transport, sender)


async def list_parked(config: AmqpConfig) -> list[ParkedSender]:
    """The parked senders of the index and how many messages each has waiting.

    :raises CommandError: when the broker cannot be reached.
    """
    async with AmqpTransport(config) as transport:
        index = await read_index(transport)
        channel = await _reader(transport)
        parked: list[ParkedSender] = []
        try:
            for sender, entry in sorted(index.items()):
                name = parked_queue_name(config.queue, sender)
                queue = await channel.declare_queue(name, durable=True)
                count = queue.declaration_result.message_count or 0
                parked.append(ParkedSender(sender, entry.channel, entry.reason, entry.error, name, count))
        finally:
            await channel.close()
        return parked


# ---------------------------------------------------------------- one worker's view


@attrs.define
class _Parking:
    channel: str | None
    reason: str
    error: str | None
    probe_at: float
    probing: bool = False
    indexed: bool = False
    messages: int = 0


class ParkedSenders:
    """The senders one worker parks, in memory; with probes every ``probe_s`` (0: none).

    All changes are synchronous, so they are atomic on the event loop.
    """

    def __init__(self, clock: Clock, probe_s: float) -> None:
        self._clock = clock
        self._probe_s = probe_s
        self._senders: dict[str, _Parking] = {}

    def __bool__(self) -> bool:
        return bool(self._senders)

    def __contains__(self, sender: object) -> bool:
        return sender in self._senders

    def get(self, sender: str) -> _Parking | None:
        """How ``sender`` is parked, if it is."""
        return self._senders.get(sender)

    def park(
        self, channel: str | None, sender: str, reason: str, error: str | None, *, indexed: bool
    ) -> bool:
        """Park ``sender``; whether it was not parked before."""
        if sender in self._senders:
            return False
        probe_at = self._clock.monotonic() + self._probe_s
        self._senders[sender] = _Parking(channel, reason, error, probe_at, indexed=indexed)
        return True

    def resume(self, sender: str) -> _Parking | None:
        """Stop parking ``sender``; how it was parked, or ``None`` if it was not."""
        return self._senders.pop(sender, None)

    def take_probe(self, sender: str) -> bool:
        """Whether the next message of the parked ``sender`` may go through as a probe (one at
        a time, once ``probe_s`` passed since it was parked or since the last probe)."""
        parking = self._senders.get(sender)
        if parking is None or self._probe_s <= 0 or parking.probing:
            return False
        if self._clock.monotonic() < parking.probe_at:
            return False
        parking.probing = True
        return True

    def end_probe(self, sender: str, *, again_now: bool) -> None:
        """The probe of ``sender`` ended without resuming it: the next one after ``probe_s``, or at
        once when this one did not reach the provider (``again_now``)."""
        parking = self._senders.get(sender)
        if parking is not None:
            parking.probing = False
            if not again_now:
                parking.probe_at = self._clock.monotonic() + self._probe_s

    def counts(self) -> dict[str, int]:
        """Messages this worker parked, by parked sender (since it parked the sender)."""
        return {sender: parking.messages for sender, parking in self._senders.items()}
