"""The metrics of one service, in their own prometheus-client registry, and what moves them.

Every name starts with the configured prefix (``omnichannel``) and every label is bounded: a
channel, a sender (one per configured account), an error class, a provider code (at most
``max_codes`` per channel, then ``other``), a status, a breaker state, a limit, an event class, a
plugin. Never a recipient, a message id or free text. docs/plugins/metrics.md lists them all.

The values are plain numbers (:mod:`omnichannel_metrics.families`) that one custom collector turns
into prometheus-client families when the registry is scraped: a send moves its series without a
lock or a prometheus-client call.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from omnichannel import (
    CircuitStateChanged,
    DeliveryFailed,
    Event,
    ListenerFailed,
    Message,
    MessageSent,
    MessageSettled,
    PossibleDuplicateSend,
    RetryScheduled,
    SenderParked,
    SenderResumed,
    SendLimited,
    StatusChanged,
    TemplateUsed,
    __version__,
)

from .config import MetricsConfig
from .families import CounterFamily, Family, GaugeFamily, HistogramFamily

if TYPE_CHECKING:
    from omnichannel import OmniChannelService

__all__ = ["BREAKER_STATES", "Instruments"]

BREAKER_STATES = {
    "closed": 0,
    "half_open": 1,
    "open": 2,
    "forced_open": 2,
    "disabled": 0,
    "metrics_only": 0,
}
"""``circuit_breaker_state`` values: 0 closed, 1 half-open, 2 open (the legacy alert fires on 2)."""

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0)
LEGACY_CHANNEL = "whatsapp"
LEGACY_STATE = "whatsapp_circuit_breaker_state"
LEGACY_ERRORS = "whatsapp_errors_total"
"""The legacy PHP service's series (its alerts: state == 2 for 5 m; rate of errors > 0.05/s)."""
DELIVERY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
"""Publish to final fate, through deferrals, parking and reconcile windows: seconds to a day."""

_FATES = {
    "sent": "sent",
    "already_sent": "sent",
    "reconciled": "sent",
    "defer": "deferred",
    "reconcile": "deferred",
    "dead_letter": "dead_letter",
    "parked": "parked",
}
"""A worker's fate as ``message_fate_total`` counts it (resilience.md §2.4)."""
_RESOLUTIONS = {
    ("reconciled", None): "webhook",
    ("sent", "resent_uncertain"): "resent",
    ("dead_letter", "ambiguous_policy"): "dead_letter",
}
"""(fate, reason) of the end of an uncertain send, as ``ambiguous_outcomes_total`` names it."""
"""Seconds an attempt waited for a rate limit (waits beyond ``max_wait_sender_s`` are deferrals)."""


class Instruments:
    """The metrics of one service; :meth:`record` turns events into observations."""

    def __init__(self, config: MetricsConfig, service: OmniChannelService) -> None:
        self.config = config
        self._service = service
        self._codes: dict[str, set[str]] = {}
        # A channel no plugin provides is counted as "unknown" (channels are bound at start-up).
        self._channels = frozenset(service.channels)
        p = config.prefix
        families: list[Family] = []

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> CounterFamily:
            families.append(family := CounterFamily(f"{p}_{name}", doc, labels))
            return family

        def histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: Iterable[float]
        ) -> HistogramFamily:
            families.append(family := HistogramFamily(f"{p}_{name}", doc, labels, tuple(buckets)))
            return family

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> GaugeFamily:
            families.append(family := GaugeFamily(f"{p}_{name}", doc, labels))
            return family

        self.sent = counter("messages_sent_total", "Messages the provider accepted.", ("channel", "sender"))
        self.failed = counter(
            "messages_failed_total",
            "Messages that failed, by error class and provider code ('' when the provider gave none).",
            ("channel", "sender", "error", "code"),
        )
        self.attempts = counter(
            "send_attempts_total",
            "Attempts made for sent and failed messages (retries included).",
            ("channel",),
        )
        self.retries = counter(
            "retries_total",
            "Retries scheduled by middleware, by the error that caused them.",
            ("channel", "error"),
        )
        self.duration = histogram(
            "send_duration_seconds",
            "Time of one logical send, retries and waits included, by outcome (sent, failed).",
            ("channel", "outcome"),
            config.latency_buckets,
        )
        self.statuses = counter(
            "message_status_total",
            "Status updates from the provider's webhooks (sent, delivered, read, failed).",
            ("channel", "status"),
        )
        self.status_failures = counter(
            "message_status_failures_total",
            "Messages the provider reported failed after accepting them, by provider code.",
            ("channel", "code"),
        )
        self.templates = counter(
            "templates_used_total",
            "Template messages sent, by template and language.",
            ("channel", "template", "language"),
        )
        self.breaker_state = gauge(
            "circuit_breaker_state",
            "Circuit breaker per (channel, sender): 0 closed, 1 half-open, 2 open (forced open too).",
            ("channel", "sender"),
        )
        self.breaker_transitions = counter(
            "circuit_breaker_transitions_total",
            "Circuit breaker moves, by the states it left and entered.",
            ("channel", "sender", "from_state", "to_state"),
        )
        self.limit_wait = histogram(
            "rate_limiter_wait_seconds",
            "Time an attempt waited for a local rate limit.",
            ("channel", "sender"),
            WAIT_BUCKETS,
        )
        self.deferred = counter(
            "rate_limiter_deferred_total",
            "Attempts refused by a local limit (rate, in_flight), to be sent later, by the scope refusing.",
            ("channel", "sender", "limit", "scope"),
        )
        self.possible_duplicates = counter(
            "possible_duplicate_sends_total",
            "Uncertain sends a queue worker sent again with nothing to settle them: possible duplicates.",
            ("channel",),
        )
        self.parked = gauge(
            "sender_parked",
            "1 while a queue worker parks the messages of (channel, sender), 0 once resumed.",
            ("channel", "sender"),
        )
        self.fates = counter(
            "message_fate_total",
            "Queue messages whose fate a worker recorded: sent, deferred, dead_letter, parked.",
            ("channel", "fate"),
        )
        self.dead_letters = counter(
            "dead_letter_total", "Queue messages dead-lettered, by reason.", ("channel", "reason")
        )
        self.idempotency_hits = counter(
            "idempotency_hits_total",
            "Queue messages not sent because their idempotency key was sent already.",
            ("channel", "state"),
        )
        self.ambiguous = counter(
            "ambiguous_outcomes_total",
            "Uncertain sends, by how they ended: webhook (settled), resent, dead_letter.",
            ("channel", "resolution"),
        )
        self.delivery = histogram(
            "message_delivery_seconds",
            "From a command's first publish to its message's final fate (sent, dead_letter).",
            ("channel", "fate"),
            DELIVERY_BUCKETS,
        )
        self.events = counter(
            "events_total", "Events dispatched to the listeners, by event class.", ("event",)
        )
        self.legacy_state: GaugeFamily | None = None
        self.legacy_errors: CounterFamily | None = None
        if config.legacy_names and p != "whatsapp":  # the PHP service's names (resilience.md §2)
            families.append(
                state := GaugeFamily(
                    LEGACY_STATE, "Legacy name of circuit_breaker_state for whatsapp (0/1/2).", ("sender",)
                )
            )
            families.append(errors := CounterFamily(LEGACY_ERRORS, "Legacy name: failed whatsapp sends.", ()))
            self.legacy_state, self.legacy_errors = state, errors
        self.listener_failures = counter(
            "listener_failures_total", "Event listeners that raised, by plugin.", ("plugin",)
        )
        build = gauge(
            "build_info", "Always 1; the labels say which omnichannel and Python run.", ("version", "python")
        )
        build.set((__version__, platform.python_version()), 1)
        self.families: tuple[Family, ...] = tuple(families)
        """Every metric, in the order of the exposition."""
        self.registry = CollectorRegistry()
        """The service's prometheus-client registry (what ``/metrics`` serves)."""
        self.registry.register(self)
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            MessageSent: self._sent,
            DeliveryFailed: self._failed,
            StatusChanged: self._status,
            RetryScheduled: self._retry,
            CircuitStateChanged: self._breaker,
            SendLimited: self._limited,
            ListenerFailed: self._listener_failed,
            TemplateUsed: self._template,
            PossibleDuplicateSend: self._possible_duplicate,
            MessageSettled: self._settled,
            SenderParked: self._parked,
            SenderResumed: self._resumed,
        }

    # ------------------------------------------------------------ the registry's collector

    def collect(self) -> list[Metric]:
        """Every family with its series now (prometheus-client's ``Collector`` protocol)."""
        return [family.collect() for family in self.families]

    def describe(self) -> list[Metric]:
        """Every family without series: the names the registry reserves for them."""
        return [family.empty() for family in self.families]

    # ------------------------------------------------------------ observations

    def observe_send(self, channel: str, outcome: str, seconds: float) -> None:
        """One logical send took ``seconds`` and ended ``sent`` or ``failed``."""
        self.duration.observe((channel, outcome), seconds)

    def record(self, event: Event) -> None:
        """Count ``event`` and move the metrics it concerns."""
        kind = type(event)
        self.events.inc((kind.__name__,))
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(event)

    def code(self, channel: str, code: object) -> str:
        """The label value of a provider code: itself, ``''`` for none, ``other`` past ``max_codes``."""
        if code is None:
            return ""
        value = str(code)
        seen = self._codes.setdefault(channel, set())
        if value in seen:
            return value
        if len(seen) >= self.config.max_codes:
            return "other"
        seen.add(value)
        return value

    # ------------------------------------------------------------ per event

    def _labels(self, message: Message, channel: str) -> tuple[str, str]:
        """``(channel, sender)``: ``unknown`` and ``''`` for a channel no plugin provides, so that
        a caller's typo does not become a series of its own."""
        if channel not in self._channels:
            return "unknown", ""
        return channel, self._service.sender_of(message, channel)

    def _sent(self, event: MessageSent) -> None:
        receipt = event.receipt
        labels = self._labels(event.message, receipt.channel)
        self.sent.inc(labels)
        self.attempts.inc(labels[:1], receipt.attempts)

    def _failed(self, event: DeliveryFailed) -> None:
        receipt, error = event.receipt, event.receipt.error
        channel, sender = self._labels(event.message, receipt.channel)
        kind = error.kind if error is not None else "DeliveryError"
        code = self.code(channel, error.code if error is not None else None)
        self.failed.inc((channel, sender, kind, code))
        if self.legacy_errors is not None and channel == LEGACY_CHANNEL:
            self.legacy_errors.inc(())
        if receipt.attempts:
            self.attempts.inc((channel,), receipt.attempts)

    def _status(self, event: StatusChanged) -> None:
        self.statuses.inc((event.channel, str(event.status)))
        if event.error is not None:
            self.status_failures.inc((event.channel, self.code(event.channel, event.error.code)))

    def _retry(self, event: RetryScheduled) -> None:
        self.retries.inc((event.channel, event.error.kind))

    def _breaker(self, event: CircuitStateChanged) -> None:
        self.breaker_state.set((event.channel, event.sender), BREAKER_STATES.get(event.current, 0))
        if self.legacy_state is not None and event.channel == LEGACY_CHANNEL:
            self.legacy_state.set((event.sender,), BREAKER_STATES.get(event.current, 0))
        self.breaker_transitions.inc((event.channel, event.sender, event.previous, event.current))

    def _limited(self, event: SendLimited) -> None:
        if event.deferred:
            self.deferred.inc((event.channel, event.sender, event.limit, event.scope or ""))
        else:
            self.limit_wait.observe((event.channel, event.sender), event.wait_s)

    def _listener_failed(self, event: ListenerFailed) -> None:
        self.listener_failures.inc((event.plugin_name,))

    def _channel(self, channel: str) -> str:
        return channel if channel in self._channels else "unknown"

    def _possible_duplicate(self, event: PossibleDuplicateSend) -> None:
        self.possible_duplicates.inc((self._channel(event.channel),))

    def _settled(self, event: MessageSettled) -> None:
        channel, fate = self._channel(event.channel), _FATES.get(event.fate, event.fate)
        self.fates.inc((channel, fate))
        if event.fate == "dead_letter":
            self.dead_letters.inc((channel, event.reason or "unknown"))
        elif event.fate == "already_sent":
            self.idempotency_hits.inc((channel, "sent"))
        resolution = _RESOLUTIONS.get((event.fate, event.reason))
        if resolution is not None:
            self.ambiguous.inc((channel, resolution))
        if fate in ("sent", "dead_letter") and event.age_s is not None:
            self.delivery.observe((channel, fate), event.age_s)

    def _parked(self, event: SenderParked) -> None:
        self.parked.set((self._channel(event.channel), event.sender), 1)

    def _resumed(self, event: SenderResumed) -> None:
        self.parked.set((self._channel(event.channel), event.sender), 0)

    def _template(self, event: TemplateUsed) -> None:
        template = event.template
        self.templates.inc((event.channel, template.name, template.language))
