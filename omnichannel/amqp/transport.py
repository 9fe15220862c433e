"""``AmqpTransport``: the command bus publishes commands to RabbitMQ for workers to run.

Every publish waits for the broker's confirm: ``submit`` returns only once the
broker holds the message (persistent, on a durable queue), and raises
``CommandError`` otherwise; a command is never dropped silently.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..commands import SendMessage
from ..errors import CommandError
from ..urls import printable_url
from .fates import FIRST_PUBLISHED_HEADER

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractRobustConnection

    from ..commands import CommandBus
    from ..config import AmqpConfig

__all__ = ["AmqpTransport", "Published", "delay_queue_name", "first_published"]

CONNECT_TIMEOUT_S = 10.0


@attrs.frozen
class Published:
    """What ``submit`` returns: the command is in ``queue`` as message ``message_id``."""

    queue: str
    message_id: str


def first_published(now_s: float | None = None) -> dict[str, int]:
    """The header of a command's first publish (``message_ttl_s`` counts from it)."""
    moment = time.time() if now_s is None else now_s
    return {FIRST_PUBLISHED_HEADER: round(moment * 1000)}


def delay_queue_name(queue: str, delay_s: float) -> str:
    """The queue where a message of ``queue`` waits ``delay_s`` seconds: ``<queue>.delay.<ms>``."""
    return f"{queue}.delay.{_milliseconds(delay_s)}"


def _milliseconds(delay_s: float) -> int:
    return max(1, round(delay_s * 1000))


class AmqpTransport:
    """Publishes commands to the ``[amqp]`` queue (see ``docs/queue.md``).

    The connection opens on first use (``connect_robust``: it reconnects by itself later)
    and closes with ``close()``; the transport is also an async context manager.

    :param config: the ``[amqp]`` settings.
    """

    def __init__(self, config: AmqpConfig) -> None:
        self.config = config
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AmqpTransport({printable_url(self.config.url.reveal())!r}, queue={self.config.queue!r})"

    async def __aenter__(self) -> AmqpTransport:
        await self.channel()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def where(self) -> str:
        """The broker's URL without user and password, for messages and logs."""
        return printable_url(self.config.url.reveal())

    async def connection(self) -> AbstractRobustConnection:
        """The open connection (opened now if needed).

        :raises CommandError: when the broker cannot be reached.
        """
        import aio_pika

        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                try:
                    self._connection = await aio_pika.connect_robust(
                        self.config.url.reveal(), timeout=CONNECT_TIMEOUT_S
                    )
                except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
                    raise CommandError(
                        f"cannot connect to the AMQP broker at {self.where}: {type(exc).__name__}: {exc}"
                    ) from None
            return self._connection

    async def channel(self) -> AbstractChannel:
        """The publishing channel (publisher confirms on; an unroutable message raises)."""
        if self._channel is None or self._channel.is_closed:
            connection = await self.connection()
            self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._declared.clear()
        return self._channel

    async def declare(self, queue: str, arguments: Mapping[str, Any] | None = None) -> None:
        """Declare the durable ``queue`` once per channel."""
        if queue in self._declared:
            return
        channel = await self.channel()
        await channel.declare_queue(queue, durable=True, arguments=dict(arguments or {}))
        self._declared.add(queue)

    async def depth(self, queue: str) -> int:
        """Messages ready in the durable ``queue`` (declared first if missing; unacked ones not counted).

        :raises CommandError: when the broker refuses or cannot be reached.
        """
        import aio_pika

        channel = await self.channel()
        try:
            declared = await channel.declare_queue(queue, durable=True)
        except (aio_pika.exceptions.AMQPError, OSError) as exc:
            raise CommandError(
                f"the AMQP broker at {self.where} did not declare {queue!r}: {type(exc).__name__}: {exc}"
            ) from None
        self._declared.add(queue)
        return declared.declaration_result.message_count or 0

    async def declare_fanout(self, exchange: str) -> None:
        """Declare the durable fanout ``exchange`` once per channel (the workers' control exchange)."""
        import aio_pika

        if exchange in self._declared:
            return
        channel = await self.channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        self._declared.add(exchange)

    async def declare_delay_queue(self, delay_s: float) -> str:
        """Declare the queue where messages wait ``delay_s`` then return to the main queue."""
        name = delay_queue_name(self.config.queue, delay_s)
        await self.declare(
            name,
            {
                "x-message-ttl": _milliseconds(delay_s),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.config.queue,
            },
        )
        return name

    async def publish(
        self,
        body: bytes,
        *,
        queue: str,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
        exchange: str | None = None,
    ) -> None:
        """Publish ``body`` as a persistent message to the declared ``queue`` and wait for the confirm.

        With ``exchange`` (a declared fanout exchange), publish to it instead: every queue bound
        to it gets a copy, and a message no queue takes is dropped (``queue`` only names it in
        errors).

        :raises CommandError: when the broker refuses or cannot be reached.
        """
        import aio_pika

        channel = await self.channel()
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers=dict(headers or {}),
        )
        try:
            if exchange is None:
                confirmation = await channel.default_exchange.publish(
                    message, routing_key=queue, mandatory=True
                )
            else:
                target = await channel.get_exchange(exchange, ensure=False)
                confirmation = await target.publish(message, routing_key="", mandatory=False)
        except (aio_pika.exceptions.AMQPError, aio_pika.exceptions.PublishError, OSError) as exc:
            raise CommandError(
                f"the AMQP broker at {self.where} did not accept the message for {queue!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if confirmation is not None and type(confirmation).__name__ != "Ack":
            raise CommandError(f"the AMQP broker at {self.where} refused the message for {queue!r}")

    async def submit(self, command: object, bus: CommandBus) -> Published:
        """Publish ``bus.encode(command)`` to the main queue; return once the broker confirmed it."""
        body = bus.encode(command)
        message_id = command.message.id if isinstance(command, SendMessage) else uuid.uuid4().hex
        await self.declare(self.config.queue)
        await self.publish(body, queue=self.config.queue, message_id=message_id, headers=first_published())
        return Published(self.config.queue, message_id)

    async def close(self) -> None:
        """Close the channel and the connection (a later use opens them again)."""
        channel, self._channel = self._channel, None
        connection, self._connection = self._connection, None
        self._declared.clear()
        if channel is not None and not channel.is_closed:
            await channel.close()
        if connection is not None and not connection.is_closed:
            await connection.close()
