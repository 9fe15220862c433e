"""``Worker``: consumes the command queue and gives every message a fate.

Per message (see ``docs/queue.md``):

* it is decoded; a body that is no command goes to the dead-letter queue (``poison_payload``);
* a ``SendMessage`` claims its message's idempotency key before sending (a key already ``sent``
  is acked without sending), then completes or releases it;
* a ``SendBulk`` is split into one ``SendMessage`` per recipient, published to the queue;
* any other command runs its handler.

The outcome becomes a fate (``fates.Fate``): *sent* (ack), *defer* or *reconcile* (republished
to a delay queue, acked once the broker confirmed it), *dead letter* (copied to the dead-letter
queue with its reason, then acked) or *park* (moved to the sender's parked queue, then acked;
see ``parking``). The message is acked only after its fate is recorded, so a crash redelivers
it and the key store keeps it from being sent twice.

A send whose outcome is uncertain (it may have reached the provider) follows
``ambiguous_policy`` (shared/resilience.md §1.10): ``reconcile`` waits ``reconcile_window_s``
for a status webhook to settle the key, then resends once; ``retry`` resends at once;
``dead_letter`` never resends. Every resend of an uncertain key emits ``PossibleDuplicateSend``,
and every queue message's recorded fate a ``MessageSettled`` (the metrics of fates).
"""

from __future__ import annotations

import asyncio
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
    UnknownChannelError,
)
from ..events import MessageSettled, PossibleDuplicateSend, SenderParked, SenderResumed
from ..idempotency import KeyState
from .fates import (
    DLQ_HEADERS,
    FIRST_PUBLISHED_HEADER,
    PARK_HEADERS,
    RECONCILE_HEADER,
    REPLAYED_HEADER,
    Decision,
    Fate,
    Settled,
    age_s,
    classify,
    defer_delay,
    expiry,
    one_line,
)
from .parking import (
    ControlMessage,
    ParkedSenders,
    announce,
    control_exchange_name,
    index_sender,
    move_parked,
    parked_queue_name,
    read_index,
    unindex_sender,
)
from .transport import AmqpTransport

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

    from ..config import AmqpConfig
    from ..idempotency import Claim, KeyStore
    from ..message import Message
    from ..service import OmniChannelService

__all__ = ["DLQ_HEADERS", "Decision", "Fate", "Settled", "Worker", "defer_delay"]

log = logging.getLogger("omnichannel.amqp")

_RESEND = "resend"
"""An ambiguous-policy verdict: send the uncertain key again (a possible duplicate)."""


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
        self.parked = ParkedSenders(service.clock, config.park_probe_s)
        """The senders this worker parks (``parked.counts()``: messages parked, by sender)."""
        self.possible_duplicates = 0
        """Uncertain keys this worker sent again."""
        self._changed = asyncio.Condition()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._moving: dict[str, bool] = {}
        """Senders whose parked messages this worker is moving back; True: move again after."""
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._control: AbstractQueue | None = None
        self._control_tag: str | None = None
        self._stopping = False

    async def start(self) -> None:
        """Declare the queues, learn the parked senders and start consuming.

        :raises CommandError: when the broker cannot be reached.
        """
        await self.transport.declare(self.config.queue)
        await self.transport.declare(self.config.dead_letter_queue)
        exchange = control_exchange_name(self.config.queue)
        await self.transport.declare_fanout(exchange)
        connection = await self.transport.connection()
        self._channel = await connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self.config.prefetch)
        # Bound before the index is read: a resume sent meanwhile is not missed.
        # Named by us: a server-named (amq.gen-...) queue cannot be declared again on reconnection.
        name = f"{exchange}.{self.owner}.{uuid.uuid4().hex[:8]}"
        self._control = await self._channel.declare_queue(name, exclusive=True, auto_delete=True)
        await self._control.bind(exchange)
        self._control_tag = await self._control.consume(self._on_control, no_ack=True)
        for entry in (await read_index(self.transport)).values():
            await self._park(entry.channel, entry.sender, entry.reason or "sender_unavailable", entry.error)
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
        for queue, tag in ((self._queue, self._consumer_tag), (self._control, self._control_tag)):
            if queue is not None and tag is not None:
                try:
                    await queue.cancel(tag)
                except Exception:  # the channel is gone: the broker requeues its messages itself
                    log.debug("could not cancel the consumer", exc_info=True)
        self._consumer_tag = self._control_tag = None
        pending = self._in_flight | self._background
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout_s or self.config.stop_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("worker %s: %d tasks stopped unfinished", self.owner, len(pending))
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

    async def wait_idle(self) -> None:
        """Wait until no message is in flight and no parked messages are being moved."""
        while pending := self._in_flight | self._background:
            await asyncio.wait(pending)

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
        decision = await self._decide(incoming.body, deliveries, headers)
        # A replay allows one resend of an uncertain key: it does not travel on.
        headers.pop(REPLAYED_HEADER, None)
        if decision.reconcile_round is not None:
            headers[RECONCILE_HEADER] = decision.reconcile_round
        delay_s = None
        if decision.fate in (Fate.DEFER, Fate.RECONCILE):
            delay_s = decision.delay_s or defer_delay(self.config.delays, deliveries, decision.retry_after)
            queue = await self.transport.declare_delay_queue(delay_s)
            headers = {k: v for k, v in headers.items() if k not in PARK_HEADERS}
            headers.update({"x-deliveries": deliveries, "x-error": decision.error or ""})
            await self._republish(incoming, queue, headers)
        elif decision.fate is Fate.DEAD_LETTER:
            headers = {k: v for k, v in headers.items() if k not in DLQ_HEADERS}
            headers.update({"x-deliveries": deliveries, "x-failed-at": self._now_iso()})
            headers.update(_reason_headers(decision))
            await self._republish(incoming, self.config.dead_letter_queue, headers)
            log.warning(
                "worker %s: message %s dead-lettered (%s): %s",
                self.owner,
                incoming.message_id,
                decision.reason,
                decision.error,
            )
        elif decision.fate is Fate.PARK:
            assert decision.sender is not None
            await self._index(decision.sender)
            queue = parked_queue_name(self.config.queue, decision.sender)
            await self.transport.declare(queue)
            # Not a delivery of its own: x-deliveries stays, so parking costs it no attempt.
            headers = {k: v for k, v in headers.items() if k not in PARK_HEADERS}
            headers.update({"x-failed-at": self._now_iso()})
            headers.update(_reason_headers(decision))
            await self._republish(incoming, queue, headers)
        await incoming.ack()
        if decision.fate is Fate.PARK:
            assert decision.sender is not None
            parking = self.parked.get(decision.sender)
            if parking is not None:
                parking.messages += 1
            else:  # resumed while it was being parked: it must not stay behind
                self._move_back(decision.sender)
        self.counts[decision.fate] += 1
        # A message's fate (a command that only ran, such as a SendBulk fan-out, is not one).
        if decision.key is not None or decision.fate is not Fate.SENT:
            await self.service.emit(
                MessageSettled(
                    incoming.message_id,
                    decision.channel or "",
                    decision.fate.value,
                    decision.reason,
                    age_s(headers, self._now_ms()),
                    occurred_at=self.service.clock.now(),
                )
            )
        async with self._changed:
            self.settled.append(Settled(incoming.message_id, decision, deliveries, delay_s))
            self._changed.notify_all()

    async def _republish(
        self, incoming: AbstractIncomingMessage, queue: str, headers: dict[str, Any]
    ) -> None:
        message_id = incoming.message_id or uuid.uuid4().hex
        await self.transport.publish(incoming.body, queue=queue, message_id=message_id, headers=headers)

    def _now_ms(self) -> int:
        return round(self.service.clock.now().timestamp() * 1000)

    def _now_iso(self) -> str:
        return self.service.clock.now().isoformat()

    async def _decide(self, body: bytes, deliveries: int, headers: dict[str, Any]) -> Decision:
        expired = expiry(headers, self._now_ms(), self.config.message_ttl_s)
        if expired is not None:
            return expired
        bus = self.service.bus
        try:
            command = bus.decode(body)
        except CommandError as exc:
            return Decision(Fate.DEAD_LETTER, "poison_payload", one_line(exc))
        if isinstance(command, SendMessage):
            return await self._send(command.message, deliveries, headers)
        if isinstance(command, SendBulk):
            await self.transport.declare(self.config.queue)
            # Each message keeps the bulk command's age (message_ttl_s).
            stamp = {FIRST_PUBLISHED_HEADER: headers[FIRST_PUBLISHED_HEADER]}  # set by expiry()
            for message in command.messages():
                body = bus.encode(SendMessage(message))
                await self.transport.publish(
                    body, queue=self.config.queue, message_id=message.id, headers=stamp
                )
            return Decision(Fate.SENT)
        try:
            await bus.execute(command)
        except Exception as exc:
            return Decision(Fate.DEAD_LETTER, "command_failed", one_line(exc))
        return Decision(Fate.SENT)

    # ------------------------------------------------------------ parked senders

    def _route(self, message: Message) -> tuple[str, ...]:
        if message.channel is not None:
            return (message.channel,)
        return message.route or self.service.config.default_route

    def _sender_of(self, message: Message, channel: str) -> str:
        try:
            return self.service.sender_of(message, channel)
        except Exception:  # a broken sender_id hook must not make every message poison
            log.exception("worker %s: no sender for message %s on %r", self.owner, message.id, channel)
            return channel

    def _parked_target(self, message: Message) -> tuple[str, str] | None:
        """``(channel, sender)`` when every channel of the message's route has a parked sender."""
        targets = [(channel, self._sender_of(message, channel)) for channel in self._route(message)]
        if targets and all(sender in self.parked for _, sender in targets):
            return targets[0]
        return None

    async def _send(self, message: Message, deliveries: int, headers: dict[str, Any]) -> Decision:
        probe = None
        if self.parked:
            target = self._parked_target(message)
            if target is not None:
                channel, probe = target
                parking = self.parked.get(probe)
                assert parking is not None
                if not self.parked.take_probe(probe):
                    error = f"sender {probe!r} is parked" + (f" ({parking.error})" if parking.error else "")
                    return Decision(Fate.PARK, parking.reason, error, channel=channel, sender=probe)
                log.info("worker %s: probing parked sender %r with message %s", self.owner, probe, message.id)
        try:
            decision = await self._attempt(message, deliveries, headers)
        except BaseException:
            if probe is not None:
                self.parked.end_probe(probe, again_now=True)
            raise
        if probe is not None:
            self.parked.end_probe(probe, again_now=not _reached(decision))
        # Where it was going, for the record (DLQ headers, MessageSettled).
        channel = decision.channel or next(iter(self._route(message)), "")
        decision = attrs.evolve(decision, channel=channel, key=message.key)
        if decision.fate in (Fate.PARK, Fate.DEAD_LETTER):
            decision = attrs.evolve(decision, sender=decision.sender or self._sender_of(message, channel))
        if decision.fate is Fate.PARK:
            assert decision.sender is not None
            reason = decision.reason or "sender_unavailable"
            await self._park(channel, decision.sender, reason, decision.error, mine=True)
        elif probe is not None and _sender_works(decision):
            await self._resume(probe, "probe", mine=True)
        return decision

    async def _park(
        self, channel: str | None, sender: str, reason: str, error: str | None, *, mine: bool = False
    ) -> None:
        """Park ``sender`` in this worker; ``mine``: this worker saw it fail (it tells the others)."""
        if not self.parked.park(channel, sender, reason, error, indexed=not mine):
            return
        log.warning("worker %s: parking sender %r (%s): %s", self.owner, sender, reason, error)
        await self.service.emit(
            SenderParked(channel or "", sender, reason, error, occurred_at=self.service.clock.now())
        )
        if mine:
            message = ControlMessage("park", sender, channel, reason, error, origin=self.owner)
            try:
                await announce(self.transport, message)
            except CommandError:  # the others find out by themselves, one failed send each
                log.warning("worker %s: could not announce the parking of %r", self.owner, sender)

    async def _index(self, sender: str) -> None:
        """Record ``sender`` in the index before its first message is parked (so that ``sender
        list`` shows every sender with parked messages)."""
        parking = self.parked.get(sender)
        if parking is None or parking.indexed:
            return
        await index_sender(
            self.transport,
            ControlMessage("park", sender, parking.channel, parking.reason, parking.error, origin=self.owner),
        )
        parking.indexed = True

    async def _resume(self, sender: str, trigger: str, *, mine: bool = False) -> None:
        parking = self.parked.resume(sender)
        if parking is None:
            return
        log.info("worker %s: sender %r resumed (%s)", self.owner, sender, trigger)
        await self.service.emit(
            SenderResumed(parking.channel or "", sender, trigger, occurred_at=self.service.clock.now())
        )
        if mine:  # this worker's probe: tell the others and clear the index, as `sender resume` does
            message = ControlMessage("resume", sender, parking.channel, origin=self.owner, trigger="probe")
            self._in_background(self._unpark_everywhere(message), f"omnichannel-resume-{sender}")
        self._move_back(sender)

    async def _unpark_everywhere(self, message: ControlMessage) -> None:
        try:
            await announce(self.transport, message)
            await unindex_sender(self.transport, message.sender)
        except Exception:  # the others keep it parked until their own probe or `sender resume`
            log.exception("worker %s: could not announce the resume of %r", self.owner, message.sender)

    def _move_back(self, sender: str) -> None:
        """Move the parked messages of ``sender`` back to the queue, in the background.

        Moves of one sender run one at a time; a request during a move runs another after it,
        so that a message parked while the sender was being resumed does not stay behind."""
        if sender in self._moving:
            self._moving[sender] = True
            return
        self._moving[sender] = False

        async def move() -> None:
            try:
                await move_parked(self.transport, sender)
                while self._moving.get(sender):
                    self._moving[sender] = False
                    await move_parked(self.transport, sender)
            except Exception:  # they stay parked; `omnichannel sender resume` moves them
                log.exception("worker %s: could not move the parked messages of %r", self.owner, sender)
            finally:
                self._moving.pop(sender, None)

        self._in_background(move(), f"omnichannel-unpark-{sender}")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_control(self, incoming: AbstractIncomingMessage) -> None:
        message = ControlMessage.decode(incoming.body)
        if message is None or message.origin == self.owner:
            return
        if message.action == "park":
            reason = message.reason or "sender_unavailable"
            await self._park(message.channel, message.sender, reason, message.error)
        else:
            await self._resume(message.sender, message.trigger)

    # ------------------------------------------------------------ keys and the ambiguous policy

    async def _attempt(self, message: Message, deliveries: int, headers: dict[str, Any]) -> Decision:
        """Claim the key, send, record the outcome; resend an uncertain key as the policy says."""
        key = message.key
        reconcile_round = _int(headers.get(RECONCILE_HEADER))
        replayed = bool(headers.get(REPLAYED_HEADER))
        resend = False
        while True:
            try:
                claim = await self.keys.claim(
                    key, owner=self.owner, lease_s=self.config.lease_s, resend_uncertain=resend
                )
            except KeyStoreError as exc:  # nothing was sent: try again later
                return self._transient(exc, deliveries)
            if not claim.granted:
                refused = self._refused(claim, key, deliveries, reconcile_round, replayed, resend)
                if refused is not None:
                    return refused
                resend = True
                continue
            if resend:
                self.possible_duplicates += 1
                channel = next(iter(self._route(message)), "")
                log.warning("worker %s: resending %s, whose key %r is uncertain", self.owner, message.id, key)
                await self.service.emit(
                    PossibleDuplicateSend(message.id, channel, key, occurred_at=self.service.clock.now())
                )
            decision = await self._send_claimed(message, key, deliveries, reconcile_round, resend)
            if decision is None:  # uncertain, and the policy resends at once
                resend = True
                continue
            if resend:
                decision = attrs.evolve(
                    decision,
                    reason="resent_uncertain" if decision.fate is Fate.SENT else decision.reason,
                    reconcile_round=decision.reconcile_round or 2,
                )
            return decision

    def _refused(
        self, claim: Claim, key: str, deliveries: int, reconcile_round: int, replayed: bool, resend: bool
    ) -> Decision | None:
        """The fate of a message whose claim was refused; ``None``: claim again, resending."""
        record = claim.record
        state = record.state if record is not None else KeyState.IN_FLIGHT
        error = record.error if record is not None else None
        if state is KeyState.SENT:
            return Decision(Fate.RECONCILED if reconcile_round == 1 else Fate.ALREADY_SENT)
        if state is KeyState.FAILED:  # e.g. settled by a "failed" status webhook
            return Decision(Fate.DEAD_LETTER, "failed_before", error)
        if state is KeyState.IN_FLIGHT or resend:  # another worker sends it now: look again later
            return self._transient(CommandError(f"key {key!r} is held by another worker"), deliveries)
        # Uncertain: an earlier attempt may have reached the provider (or its worker died mid-send).
        if replayed or self.config.ambiguous_policy == "retry":
            return None
        if self.config.ambiguous_policy == "reconcile":
            if reconcile_round == 0:
                return self._reconcile(error)
            if reconcile_round == 1:
                return None
        return Decision(Fate.DEAD_LETTER, "ambiguous_policy", error)

    async def _send_claimed(
        self, message: Message, key: str, deliveries: int, reconcile_round: int, resent: bool
    ) -> Decision | None:
        """Send ``message`` under a granted claim; ``None``: uncertain, resend at once."""
        try:
            receipt = await self.service.send(message)
        except DeliveryError as exc:
            uncertain = exc.certainty is Certainty.UNKNOWN
            # Not final: a dead-lettered or parked message that is retried after a fix may send again.
            await self.keys.release(
                key, owner=self.owner, error=one_line(exc), final=False, uncertain=uncertain
            )
            if not uncertain:
                return classify(exc, deliveries, self.config.max_deliveries)
            policy = self.config.ambiguous_policy
            if policy == "retry":
                return None if not resent else self._transient(exc, deliveries)
            if policy == "reconcile" and not resent and reconcile_round < 2:
                reconcile = self._reconcile(one_line(exc))
                return attrs.evolve(reconcile, code=exc.code, http_status=exc.http_status)
            return Decision(
                Fate.DEAD_LETTER,
                "ambiguous_policy",
                one_line(exc),
                code=exc.code,
                http_status=exc.http_status,
            )
        except asyncio.CancelledError:
            await self.keys.release(
                key, owner=self.owner, error="the worker stopped during the send", final=False, uncertain=True
            )
            raise
        except Exception as exc:  # raised before the channel was called: nothing left
            await self.keys.release(key, owner=self.owner, error=one_line(exc), final=False)
            invalid = isinstance(exc, MessageValidationError | UnknownChannelError)
            return Decision(
                Fate.DEAD_LETTER, "invalid_message" if invalid else "command_failed", one_line(exc)
            )
        await self.keys.complete(
            key, owner=self.owner, channel=receipt.channel, provider_message_id=receipt.provider_message_id
        )
        return Decision(Fate.SENT)

    def _reconcile(self, error: str | None) -> Decision:
        return Decision(
            Fate.RECONCILE,
            "uncertain",
            error,
            delay_s=self.config.reconcile_window_s,
            reconcile_round=1,
        )

    def _transient(self, exc: Exception, deliveries: int) -> Decision:
        if deliveries >= self.config.max_deliveries:
            return Decision(Fate.DEAD_LETTER, "retries_exhausted", one_line(exc))
        return Decision(Fate.DEFER, error=one_line(exc))


def _reason_headers(decision: Decision) -> dict[str, Any]:
    headers = {
        "x-reason": decision.reason or "unknown",
        "x-error": decision.error,
        "x-code": decision.code,
        "x-http-status": decision.http_status,
        "x-idempotency-key": decision.key,
        "x-channel": decision.channel,
        "x-sender": decision.sender,
        "x-attempts": decision.attempts,
    }
    return {k: v for k, v in headers.items() if v is not None and v != ""}


def _reached(decision: Decision) -> bool:
    """Whether the attempt behind ``decision`` reached the provider (a probe that did not
    says nothing about the sender)."""
    if decision.fate in (Fate.ALREADY_SENT, Fate.RECONCILED):
        return False
    return decision.reason not in ("failed_before", "invalid_message", "command_failed")


def _sender_works(decision: Decision) -> bool:
    """Whether a probe's outcome shows the sender can send: it was accepted, or the provider
    answered about the message itself (a permanent error that is not the sender's)."""
    return decision.fate is Fate.SENT or decision.reason in ("permanent_error", "unknown_error_code")


def _int(value: object) -> int:
    if isinstance(value, int | str | bytes):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0
