"""Events: what happened, delivered to every ``on_event`` listener.

Outbound events come from the send pipeline (``MessageSent``,
``DeliveryFailed``, ``TemplateUsed``); inbound ones from channel webhooks
(``StatusChanged``, ``InboundMessage``); middleware reports what it did
(``RetryScheduled``, ``CircuitStateChanged``, ``SendLimited``) so that metrics and logs can see
it without importing the middleware; queue workers report what they decided about uncertain
sends and unusable senders (``PossibleDuplicateSend``, ``SenderParked``, ``SenderResumed``); the
service reports its own life (``ServiceStarted``, ``ServiceStopping``, ``ListenerFailed``).

Every event is a frozen attrs class with an ``occurred_at`` UTC timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs

from .message import Content, DeliveryStatus, ErrorInfo, Message, Receipt, Template

__all__ = [
    "CircuitStateChanged",
    "DeliveryFailed",
    "Event",
    "InboundMessage",
    "ListenerFailed",
    "MessageSent",
    "MessageSettled",
    "PossibleDuplicateSend",
    "RetryScheduled",
    "SendLimited",
    "SenderParked",
    "SenderResumed",
    "ServiceStarted",
    "ServiceStopping",
    "StatusChanged",
    "TemplateUsed",
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class Event:
    """Base class of all events."""

    occurred_at: datetime = attrs.field(factory=_utcnow)


@attrs.frozen
class MessageSent(Event):
    """The provider accepted a message (``receipt.provider_message_id`` is its id)."""

    message: Message
    receipt: Receipt


@attrs.frozen
class DeliveryFailed(Event):
    """A message could not be delivered; ``receipt.error`` says why."""

    message: Message
    receipt: Receipt


@attrs.frozen
class TemplateUsed(Event):
    """A template message was accepted by ``channel``."""

    message: Message
    channel: str
    template: Template


@attrs.frozen
class StatusChanged(Event):
    """A channel reported a new status for a message it accepted earlier (from a webhook).

    ``message_id`` is what the provider echoed back of the send: the message's idempotency key
    (its id unless the caller gave a key; WhatsApp's ``biz_opaque_callback_data``), else
    ``None`` and the message is found by ``provider_message_id``. The core settles that key in
    the key store (an uncertain send the provider vouched for is not sent again).
    """

    channel: str
    provider_message_id: str
    status: DeliveryStatus
    message_id: str | None = None
    recipient: str | None = None
    error: ErrorInfo | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen, hash=False)
    """Channel-specific extras (e.g. WhatsApp's pricing and conversation); never metric labels."""


@attrs.frozen
class InboundMessage(Event):
    """Someone sent us a message on ``channel``."""

    channel: str
    sender: str
    content: Content
    provider_message_id: str
    reply_to: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen, hash=False)
    """Channel-specific extras: the raw kind of message, a reply's button id, a location, ..."""


@attrs.frozen
class RetryScheduled(Event):
    """A middleware will try ``message_id`` again after ``delay_s`` (attempt ``attempt`` failed)."""

    message_id: str
    channel: str
    attempt: int
    delay_s: float
    error: ErrorInfo


@attrs.frozen
class CircuitStateChanged(Event):
    """A circuit breaker for ``(channel, sender)`` moved from ``previous`` to ``current``.

    States are ``closed``, ``half_open``, ``open`` (plus admin states a breaker may add).
    """

    channel: str
    sender: str
    previous: str
    current: str


@attrs.frozen
class SendLimited(Event):
    """A middleware held an attempt of ``message_id`` back: it waited ``wait_s`` for a local limit,
    or refused it (``deferred``) so that it is sent later.

    ``limit`` names the limit (``rate``: a rate limit; ``in_flight``: a cap on attempts in flight);
    ``scope`` says whose limit refused (``sender``, ``recipient``), ``None`` for a wait.
    """

    message_id: str
    channel: str
    sender: str
    limit: str
    wait_s: float
    deferred: bool
    scope: str | None = None


@attrs.frozen
class PossibleDuplicateSend(Event):
    """A worker sends ``message_id`` again although an earlier attempt may have reached the
    provider (its outcome was uncertain and nothing settled it): the recipient may get it twice.

    ``key`` is the message's idempotency key; ``channel`` the first channel of its route.
    """

    message_id: str
    channel: str
    key: str


@attrs.frozen
class SenderParked(Event):
    """A worker parks the messages of ``(channel, sender)``: the sender cannot send (a revoked
    token, a locked account, ...) until an operator or a successful probe resumes it.

    ``reason`` is the parking reason (``sender_unavailable``, ``sender_error``); ``error`` the
    error that made it park (``ErrorClass: detail``, never a secret), when this worker saw one.
    """

    channel: str
    sender: str
    reason: str
    error: str | None = None


@attrs.frozen
class MessageSettled(Event):
    """A queue worker recorded the fate of one queue message (and acked it).

    ``fate`` is the worker's: ``sent``, ``already_sent`` (its key was sent before: a duplicate
    suppressed), ``reconciled`` (a status webhook settled its uncertain key), ``defer``,
    ``reconcile`` (both deferrals), ``dead_letter`` or ``parked``; ``reason`` the dead letter's,
    parking's or resend's reason. ``age_s`` is the time since the command was first published
    (``x-first-published``): for a final fate, how long delivery took. ``channel`` is the first
    channel of the message's route (empty for a command that is not a send).
    """

    message_id: str | None
    channel: str
    fate: str
    reason: str | None = None
    age_s: float | None = None


@attrs.frozen
class SenderResumed(Event):
    """A worker sends the messages of ``(channel, sender)`` again.

    ``trigger`` says why: ``operator`` (``omnichannel sender resume``) or ``probe`` (a probe
    message was sent, by this worker or another).
    """

    channel: str
    sender: str
    trigger: str = "operator"


@attrs.frozen
class ListenerFailed(Event):
    """An ``on_event`` listener raised while handling an event of type ``event_type``."""

    event_type: str
    plugin_name: str
    error: ErrorInfo


@attrs.frozen
class ServiceStarted(Event):
    """The service has started: its HTTP session and plugin resources are ready."""


@attrs.frozen
class ServiceStopping(Event):
    """The service is about to stop; listeners may flush what they buffer."""
