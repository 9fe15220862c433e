"""The fate of a queue message: what the worker decided, and the headers that carry it.

Every message ends *sent* (``SENT``, ``ALREADY_SENT``, ``RECONCILED``), *dead-lettered* (with a
reason) or *parked*; on the way it may be deferred (``DEFER``, ``RECONCILE``) any number of
times. See ``docs/queue.md`` for the table of outcomes.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from ..errors import Certainty, DeliveryError, ErrorScope, SenderUnavailableError
from ..message import Receipt

__all__ = [
    "DLQ_HEADERS",
    "FIRST_PUBLISHED_HEADER",
    "PARK_HEADERS",
    "RECONCILE_HEADER",
    "REPLAYED_HEADER",
    "Decision",
    "Fate",
    "Settled",
    "age_s",
    "classify",
    "defer_delay",
    "expiry",
    "parks_sender",
]

DLQ_HEADERS = (
    "x-reason",
    "x-error",
    "x-code",
    "x-http-status",
    "x-idempotency-key",
    "x-channel",
    "x-sender",
    "x-attempts",
    "x-failed-at",
)
"""Why, where and when a message was dead-lettered (or parked): resilience.md §1.11. Dropped
again when it is retried (``dlq retry``) or resumed."""
PARK_HEADERS = DLQ_HEADERS
"""What a parked message carries (the same record), dropped again when it is resumed."""
FIRST_PUBLISHED_HEADER = "x-first-published"
"""When the command was first published (UTC epoch milliseconds): ``message_ttl_s`` counts from
it, through deferrals and parking; ``dlq retry`` starts it again."""
RECONCILE_HEADER = "x-reconcile"
"""The reconcile round of a message whose send was uncertain: 1 = it waited the reconcile
window; 2 = its uncertain key was resent once (another uncertain outcome dead-letters it)."""
REPLAYED_HEADER = "x-replayed"
"""Set by ``dlq retry``: an operator replayed it, so an ``uncertain`` key may be resent once."""


class Fate(enum.StrEnum):
    """What the worker did with one queue message."""

    SENT = "sent"
    """Sent now (or the command ran): acked."""
    ALREADY_SENT = "already_sent"
    """Its key was sent before: acked without sending."""
    DEFER = "defer"
    """Republished to a delay queue, to come back later."""
    RECONCILE = "reconcile"
    """Its send was uncertain: republished to wait ``reconcile_window_s`` for a status webhook to
    settle its key (a deferral)."""
    RECONCILED = "reconciled"
    """Back from the reconcile window, its key was settled as sent (by a webhook): acked without
    sending."""
    DEAD_LETTER = "dead_letter"
    """Copied to the dead-letter queue with its reason."""
    PARK = "parked"
    """Its sender cannot send: moved to the sender's parked queue until it is resumed."""


@attrs.frozen
class Decision:
    """A fate and, for a deferred, parked or dead-lettered message, why."""

    fate: Fate
    reason: str | None = None
    """Dead letter: ``poison_payload``, ``permanent_error``, ``unknown_error_code``,
    ``retries_exhausted``, ``ambiguous_policy``, ``failed_before``, ``invalid_message``,
    ``command_failed``, ``expired``.
    Park: ``sender_unavailable``. Reconcile: ``uncertain``. Sent: ``resent_uncertain`` when an
    uncertain key was resent (a possible duplicate)."""
    error: str | None = None
    """``ErrorClass: detail`` (never a secret: errors are written to be shown)."""
    code: int | str | None = None
    http_status: int | None = None
    retry_after: float | None = None
    delay_s: float | None = None
    """A deferral's wait when it is not taken from ``delays`` (the reconcile window)."""
    reconcile_round: int | None = None
    """The ``x-reconcile`` header to republish the message with (see ``RECONCILE_HEADER``)."""
    channel: str | None = None
    sender: str | None = None
    """The channel and sender of the send (park: whose parked queue takes the message)."""
    key: str | None = None
    """The message's idempotency key (a send's dead letter or parking)."""
    attempts: int | None = None
    """Attempts of the last delivery's send (retries included), when it reached the channel."""


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


def one_line(exc: BaseException) -> str:
    """``ErrorClass: detail`` on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def parks_sender(exc: DeliveryError) -> bool:
    """Whether ``exc`` says the *sender* cannot send (PARK): a ``SenderUnavailableError``, or a
    non-transient error about the sender or its account, whose outcome is certain."""
    if exc.certainty is Certainty.UNKNOWN:
        return False
    if isinstance(exc, SenderUnavailableError):
        return True
    return exc.scope in (ErrorScope.SENDER, ErrorScope.ACCOUNT) and not exc.retryable


def classify(exc: DeliveryError, deliveries: int, max_deliveries: int) -> Decision:
    """The fate of a message whose send raised ``exc`` (of a certain outcome) on its
    ``deliveries``-th delivery: park, defer or dead letter. Uncertain outcomes follow the
    ambiguous policy (``Worker``), not this."""
    receipt = getattr(exc, "receipt", None)  # the failure's receipt, set by service.send
    common: dict[str, Any] = {
        "error": one_line(exc),
        "code": exc.code,
        "http_status": exc.http_status,
        "channel": exc.channel,
        "attempts": receipt.attempts if isinstance(receipt, Receipt) else None,
    }
    if parks_sender(exc):
        return Decision(Fate.PARK, "sender_unavailable", **common)
    if exc.retryable:
        if deliveries >= max_deliveries:
            return Decision(Fate.DEAD_LETTER, "retries_exhausted", **common)
        return Decision(Fate.DEFER, retry_after=exc.retry_after, **common)
    # A code the channel does not know: dead-lettered apart, so that new codes get noticed.
    reason = "unknown_error_code" if exc.unknown_code else "permanent_error"
    return Decision(Fate.DEAD_LETTER, reason, **common)


def expiry(headers: dict[str, Any], now_ms: int, ttl_s: float) -> Decision | None:
    """Dead letter ``expired`` when the message was first published more than ``ttl_s`` ago.

    A message without its first-publish time (from an older producer) starts counting now:
    the header is added to ``headers``, which travel on with the message.
    """
    age = age_s(headers, now_ms)
    if age is None:
        headers[FIRST_PUBLISHED_HEADER] = now_ms
        return None
    if age <= ttl_s:
        return None
    error = f"first published {age:.0f} s ago, more than message_ttl_s = {ttl_s:g}"
    return Decision(Fate.DEAD_LETTER, "expired", error)


def age_s(headers: dict[str, Any], now_ms: int) -> float | None:
    """Seconds since the command was first published (``x-first-published``), if it says."""
    first = headers.get(FIRST_PUBLISHED_HEADER)
    return max(now_ms - first, 0) / 1000 if isinstance(first, int) else None
