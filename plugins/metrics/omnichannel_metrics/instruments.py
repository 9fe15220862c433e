"""The metrics of one service, in their own prometheus-client registry, and what moves them.

Every name starts with the configured prefix (``omnichannel``) and every label is bounded: a
channel, a sender (one per configured account), an error class, a provider code (at most
``max_codes`` per channel, then ``other``), a status, a breaker state, a limit, an event class, a
plugin. Never a recipient, a message id or free text. docs/plugins/metrics.md lists them all.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from omnichannel import (
    CircuitStateChanged,
    DeliveryFailed,
    Event,
    ListenerFailed,
    MessageSent,
    RetryScheduled,
    SendLimited,
    StatusChanged,
    TemplateUsed,
    __version__,
)

from .config import MetricsConfig

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
"""Seconds an attempt waited for a rate limit (waits beyond ``max_wait_sender_s`` are deferrals)."""


class Instruments:
    """The metrics of one service; :meth:`record` turns events into observations."""

    def __init__(self, config: MetricsConfig, service: OmniChannelService) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self._service = service
        self._codes: dict[str, set[str]] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._event_counts: dict[type[Event], Any] = {}
        p = config.prefix

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"{p}_{name}", doc, labels, registry=self.registry)

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
        self.duration = Histogram(
            f"{p}_send_duration_seconds",
            "Time of one logical send, retries and waits included, by outcome (sent, failed).",
            ("channel", "outcome"),
            buckets=config.latency_buckets,
            registry=self.registry,
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
        self.breaker_state = Gauge(
            f"{p}_circuit_breaker_state",
            "Circuit breaker per (channel, sender): 0 closed, 1 half-open, 2 open (forced open too).",
            ("channel", "sender"),
            registry=self.registry,
        )
        self.breaker_transitions = counter(
            "circuit_breaker_transitions_total",
            "Circuit breaker moves, by the states it left and entered.",
            ("channel", "sender", "from_state", "to_state"),
        )
        self.limit_wait = Histogram(
            f"{p}_rate_limiter_wait_seconds",
            "Time an attempt waited for a local rate limit.",
            ("channel", "sender"),
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.deferred = counter(
            "rate_limiter_deferred_total",
            "Attempts refused by a local limit (rate, in_flight), to be sent later, by the scope refusing.",
            ("channel", "sender", "limit", "scope"),
        )
        self.events = counter(
            "events_total", "Events dispatched to the listeners, by event class.", ("event",)
        )
        self.listener_failures = counter(
            "listener_failures_total", "Event listeners that raised, by plugin.", ("plugin",)
        )
        build = Gauge(
            f"{p}_build_info",
            "Always 1; the labels say which omnichannel and Python run.",
            ("version", "python"),
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            MessageSent: self._sent,
            DeliveryFailed: self._failed,
            StatusChanged: self._status,
            RetryScheduled: self._retry,
            CircuitStateChanged: self._breaker,
            SendLimited: self._limited,
            ListenerFailed: self._listener_failed,
            TemplateUsed: self._template,
        }

    # ------------------------------------------------------------ observations

    def observe_send(self, channel: str, outcome: str, seconds: float) -> None:
        """One logical send took ``seconds`` and ended ``sent`` or ``failed``."""
        self._child(self.duration, channel, outcome).observe(seconds)

    def record(self, event: Event) -> None:
        """Count ``event`` and move the metrics it concerns."""
        kind = type(event)
        counted = self._event_counts.get(kind)
        if counted is None:
            counted = self._event_counts[kind] = self.events.labels(kind.__name__)
        counted.inc()
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(event)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: prometheus-client's look-up costs a microsecond a call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

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

    def _labels(self, event: MessageSent | DeliveryFailed) -> tuple[str, str]:
        """``(channel, sender)``: ``unknown`` and ``''`` for a channel no plugin provides, so that
        a caller's typo does not become a series of its own."""
        channel = event.receipt.channel
        if self._service.channel_info(channel) is None:
            return "unknown", ""
        return channel, self._service.sender_of(event.message, channel)

    def _sent(self, event: MessageSent) -> None:
        channel, sender = self._labels(event)
        self._child(self.sent, channel, sender).inc()
        self._child(self.attempts, channel).inc(event.receipt.attempts)

    def _failed(self, event: DeliveryFailed) -> None:
        receipt, error = event.receipt, event.receipt.error
        channel, sender = self._labels(event)
        kind = error.kind if error is not None else "DeliveryError"
        code = self.code(channel, error.code if error is not None else None)
        self._child(self.failed, channel, sender, kind, code).inc()
        if receipt.attempts:
            self._child(self.attempts, channel).inc(receipt.attempts)

    def _status(self, event: StatusChanged) -> None:
        self._child(self.statuses, event.channel, str(event.status)).inc()
        if event.error is not None:
            self.status_failures.labels(event.channel, self.code(event.channel, event.error.code)).inc()

    def _retry(self, event: RetryScheduled) -> None:
        self._child(self.retries, event.channel, event.error.kind).inc()

    def _breaker(self, event: CircuitStateChanged) -> None:
        self.breaker_state.labels(event.channel, event.sender).set(BREAKER_STATES.get(event.current, 0))
        self.breaker_transitions.labels(event.channel, event.sender, event.previous, event.current).inc()

    def _limited(self, event: SendLimited) -> None:
        if event.deferred:
            self.deferred.labels(event.channel, event.sender, event.limit, event.scope or "").inc()
        else:
            self.limit_wait.labels(event.channel, event.sender).observe(event.wait_s)

    def _listener_failed(self, event: ListenerFailed) -> None:
        self.listener_failures.labels(event.plugin_name).inc()

    def _template(self, event: TemplateUsed) -> None:
        template = event.template
        self._child(self.templates, event.channel, template.name, template.language).inc()
