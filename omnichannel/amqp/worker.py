"""``Worker``: consumes the command queue and gives every message a fate.

Per message (see ``docs/queue.md``):

* it is decoded; a body that is no command goes to the dead-letter queue (``poison_payload``);
* a ``SendMessage`` claims its message's idempotency key before sending (a key already ``sent``
  is acked without sending), then completes or releases it;
* a ``SendBulk`` is split into one ``SendMessage`` per recipient, published to the queue;
* any other command runs its handler.

The outcome becomes a fate: *sent* (ack), *defer* (republished to a delay queue with
``x-deliveries`` + 1, acked once the broker confirmed it) or *dead letter* (copied to the
dead-letter queue with its reason, then acked). The message is acked only after its fate is
recorded, so a crash redelivers it and the key store keeps it from being sent twice.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs

from ..campaigns.runner import default_owner
from ..commands import SendBulk, SendMessage
from ..errors import (
    Certainty,
    CommandError,
    DeliveryError,
    KeyStoreError,
    MessageValidationError,
    SenderUnavailableError,
    UnknownChannelError,
)
from ..idempotency import KeyState
from .transport import AmqpTransport

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

    from ..config import AmqpConfig
    from ..idempotency import KeyStore
    from ..message import Message
    from ..service import OmniChannelService

__all__ = ["Decision", "Fate", "Settled", "Worker", "defer_delay"]

log = logging.getLogger("omnichannel.amqp")

DLQ_HEADERS = ("x-reason", "x-error", "x-code", "x-http-status")


class Fate(enum.StrEnum):
    """What the worker did with one queue message."""

    SENT = "sent"
    """Sent now (or the command ran): acked."""
    ALREADY_SENT = "already_sent"
    """Its key was sent before: acked without sending."""
    DEFER = "defer"
    """Republished to a delay queue, to come back later."""
    DEAD_LETTER = "dead_letter"
    """Copied to the dead-letter queue with its reason."""


@attrs.frozen
class Decision:
    """A fate and, for a deferred or dead-lettered message, why."""

    fate: Fate
    reason: str | None = None
    """Dead letter: ``poison_payload``, ``permanent_error``, ``retries_exhausted``,
    ``sender_unavailable``, ``uncertain``, ``failed_before``, ``invalid_message``, ``command_failed``."""
    error: str | None = None
    """``ErrorClass: detail`` (never a secret: errors are written to be shown)."""
    code: int | str | None = None
    http_status: int | None = None
    retry_after: float | None = None


@attrs.frozen
class Settled:
    """One message whose fate is recorded (``Worker.settled``, for tests and monitoring)."""

    message_id: str | None
    decision: Decision
    deliveries: int
    delay_s: float | None = None


def defer_delay(delays: tuple[float, ...], deliveries: int, retry_after: float | None) -> float:
    """The wait before the next delivery: ``retry_after`` rounded up to a step of ``delays``
    (the last step when it is longer), else the step of this delivery (the last one repeats)."""
    if retry_after is not None and retry_after > 0:
        return next((d for d in delays if d >= retry_after), delays[-1])
    return delays[min(max(deliveries, 1), len(delays)) - 1]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def classify(exc: DeliveryError, deliveries: int, max_deliveries: int) -> Decision:
    """The fate of a message whose send raised ``exc`` on its ``deliveries``-th delivery."""
    common: dict[str, Any] = {"error": _one_line(exc), "code": exc.code, "http_status": exc.http_status}
    if exc.certainty is Certainty.UNKNOWN:
        # It may have been delivered: never resent blindly (resilience §1.10, no reconcile yet).
        return Decision(Fate.DEAD_LETTER, "uncertain", **common)
    if isinstance(exc, SenderUnavailableError):
        return Decision(Fate.DEAD_LETTER, "sender_unavailable", **common)  # PARK is future work
    if exc.retryable:
        if deliveries >= max_deliveries:
            return Decision(Fate.DEAD_LETTER, "retries_exhausted", **common)
        return Decision(Fate.DEFER, retry_after=exc.retry_after, **common)
    return Decision(Fate.DEAD_LETTER, "permanent_error", **common)


class Worker:
    """Runs the commands of the ``[amqp]`` queue.

    :param service: a started service (its bus decodes and runs the commands).
    :param config: the ``[amqp]`` settings.
    :param keys: the idempotency key store, shared by every worker (not closed here).
    :param owner: this worker's name in the key store (default ``host:pid:random``).
    """

    def __init__(
        self,
        service: OmniChannelService,
        config: AmqpConfig,
        keys: KeyStore,
        *,
        owner: str | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.keys = keys
        self.owner = owner or default_owner()
        self.transport = AmqpTransport(config)
        self.counts: Counter[Fate] = Counter()
        self.settled: list[Settled] = []
        """Every message settled so far, in order."""
        self._changed = asyncio.Condition()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._stopping = False

    async def start(self) -> None:
        """Declare the queues and start consuming.

        :raises CommandError: when the broker cannot be reached.
        """
        await self.transport.declare(self.config.queue)
        await self.transport.declare(self.config.dead_letter_queue)
        connection = await self.transport.connection()
        self._channel = await connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self.config.prefetch)
        self._queue = await self._channel.declare_queue(self.config.queue, durable=True)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("worker %s: consuming %r on %s", self.owner, self.config.queue, self.transport.where)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then stop gracefully."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop consuming, let in-flight messages finish for up to ``timeout_s`` (default
        ``stop_timeout_s``), return the others to the queue, and close the connection."""
        self._stopping = True
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except Exception:  # the channel is gone: the broker requeues its messages itself
                log.debug("could not cancel the consumer", exc_info=True)
            self._consumer_tag = None
        pending = set(self._in_flight)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout_s or self.config.stop_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("worker %s: %d messages returned to the queue unfinished", self.owner, len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
        await self.transport.close()

    async def wait_settled(self, count: int) -> list[Settled]:
        """Wait until ``count`` messages are settled (tests: bound it with ``asyncio.wait_for``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.settled) >= count)
            return list(self.settled)

    # ------------------------------------------------------------ one message

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            async with self._semaphore:
                if self._stopping:
                    await incoming.nack(requeue=True)
                    return
                await self._handle(incoming)
        except asyncio.CancelledError:
            await self._requeue(incoming)
            raise
        except Exception:
            # The fate could not be recorded (the broker went away?): not acked, so it comes back.
            log.exception("worker %s: message %s not settled", self.owner, incoming.message_id)
            await self._requeue(incoming)
        finally:
            self._in_flight.discard(task)

    async def _requeue(self, incoming: AbstractIncomingMessage) -> None:
        try:
            await incoming.nack(requeue=True)
        except Exception:  # the channel is closed: the broker requeues it anyway
            log.debug("could not nack message %s", incoming.message_id, exc_info=True)

    async def _handle(self, incoming: AbstractIncomingMessage) -> None:
        headers = dict(incoming.headers or {})
        deliveries = _int(headers.get("x-deliveries")) + 1
        decision = await self._decide(incoming.body, deliveries)
        delay_s = None
        if decision.fate is Fate.DEFER:
            delay_s = defer_delay(self.config.delays, deliveries, decision.retry_after)
            queue = await self.transport.declare_delay_queue(delay_s)
            headers = {k: v for k, v in headers.items() if k not in DLQ_HEADERS}
            headers.update({"x-deliveries": deliveries, "x-error": decision.error or ""})
            await self._republish(incoming, queue, headers)
        elif decision.fate is Fate.DEAD_LETTER:
            headers.update({"x-deliveries": deliveries, "x-reason": decision.reason or "unknown"})
            extra = {
                "x-error": decision.error,
                "x-code": decision.code,
                "x-http-status": decision.http_status,
            }
            headers.update({k: v for k, v in extra.items() if v is not None})
            await self._republish(incoming, self.config.dead_letter_queue, headers)
            log.warning(
                "worker %s: message %s dead-lettered (%s): %s",
                self.owner,
                incoming.message_id,
                decision.reason,
                decision.error,
            )
        await incoming.ack()
        self.counts[decision.fate] += 1
        async with self._changed:
            self.settled.append(Settled(incoming.message_id, decision, deliveries, delay_s))
            self._changed.notify_all()

    async def _republish(
        self, incoming: AbstractIncomingMessage, queue: str, headers: dict[str, Any]
    ) -> None:
        message_id = incoming.message_id or uuid.uuid4().hex
        await self.transport.publish(incoming.body, queue=queue, message_id=message_id, headers=headers)

    async def _decide(self, body: bytes, deliveries: int) -> Decision:
        bus = self.service.bus
        try:
            command = bus.decode(body)
        except CommandError as exc:
            return Decision(Fate.DEAD_LETTER, "poison_payload", _one_line(exc))
        if isinstance(command, SendMessage):
            return await self._send(command.message, deliveries)
        if isinstance(command, SendBulk):
            await self.transport.declare(self.config.queue)
            for message in command.messages():
                body = bus.encode(SendMessage(message))
                await self.transport.publish(body, queue=self.config.queue, message_id=message.id)
            return Decision(Fate.SENT)
        try:
            await bus.execute(command)
        except Exception as exc:
            return Decision(Fate.DEAD_LETTER, "command_failed", _one_line(exc))
        return Decision(Fate.SENT)

    async def _send(self, message: Message, deliveries: int) -> Decision:
        key = message.key
        try:
            claim = await self.keys.claim(key, owner=self.owner, lease_s=self.config.lease_s)
        except KeyStoreError as exc:  # nothing was sent: try again later
            return self._transient(exc, deliveries)
        if not claim.granted:
            state = claim.record.state if claim.record is not None else KeyState.IN_FLIGHT
            error = claim.record.error if claim.record is not None else None
            if state is KeyState.SENT:
                return Decision(Fate.ALREADY_SENT)
            if state is KeyState.IN_FLIGHT:  # another worker sends it now: look again later
                return self._transient(CommandError(f"key {key!r} is held by another worker"), deliveries)
            reason = "uncertain" if state is KeyState.UNCERTAIN else "failed_before"
            return Decision(Fate.DEAD_LETTER, reason, error)
        try:
            receipt = await self.service.send(message)
        except DeliveryError as exc:
            uncertain = exc.certainty is Certainty.UNKNOWN
            # Not final: a dead-lettered message that is retried after a fix may send again.
            await self.keys.release(
                key, owner=self.owner, error=_one_line(exc), final=False, uncertain=uncertain
            )
            return classify(exc, deliveries, self.config.max_deliveries)
        except asyncio.CancelledError:
            await self.keys.release(
                key, owner=self.owner, error="the worker stopped during the send", final=False, uncertain=True
            )
            raise
        except Exception as exc:  # raised before the channel was called: nothing left
            await self.keys.release(key, owner=self.owner, error=_one_line(exc), final=False)
            invalid = isinstance(exc, MessageValidationError | UnknownChannelError)
            return Decision(
                Fate.DEAD_LETTER, "invalid_message" if invalid else "command_failed", _one_line(exc)
            )
        await self.keys.complete(
            key, owner=self.owner, channel=receipt.channel, provider_message_id=receipt.provider_message_id
        )
        return Decision(Fate.SENT)

    def _transient(self, exc: Exception, deliveries: int) -> Decision:
        if deliveries >= self.config.max_deliveries:
            return Decision(Fate.DEAD_LETTER, "retries_exhausted", _one_line(exc))
        return Decision(Fate.DEFER, error=_one_line(exc))


def _int(value: object) -> int:
    if isinstance(value, int | str | bytes):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0
