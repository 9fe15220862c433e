"""The metrics plugin, unit level: events and sends through a ``RecordingChannel`` become metrics.

Every check reads the plugin's own exposition (``omnichannel_metrics.exposition``, what ``/metrics``
serves) through prometheus-client's parser, so it tests the names, labels and values a scraper sees.
The service runs on a ``FakeClock``: send durations are virtual time, exact to the float.
"""

from __future__ import annotations

import json
import platform
import random
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST

import omnichannel
from omnichannel import (
    CircuitStateChanged,
    ConfigError,
    DeliveryFailed,
    DeliveryStatus,
    ErrorInfo,
    Event,
    ListenerFailed,
    Message,
    MessageSent,
    MessageSettled,
    OmniChannelService,
    PermanentDeliveryError,
    PluginSettings,
    PossibleDuplicateSend,
    Receipt,
    RetryScheduled,
    Sender,
    SenderParked,
    SenderResumed,
    SendLimited,
    ServiceConfig,
    StatusChanged,
    Template,
    TemplateUsed,
    Text,
    TransientDeliveryError,
    hookimpl,
)
from omnichannel.plugins import in_rollout
from omnichannel.server import make_app
from omnichannel.testing import EventRecorder, FakeClock, RecordingChannel, make_service
from omnichannel_metrics import MetricsPlugin, exposition
from omnichannel_metrics.testing import Key, Scrape, sample_key
from omnichannel_resilience import ResiliencePlugin

CHANNEL = "recording"
SENDER = "recording"
"""``RecordingChannel`` answers no ``sender_id``: the sender is the channel's name."""
LEGACY_NO_WAIT = {"profile": "legacy", "poll_interval_s": 3600.0}
"""Legacy profile: 3 attempts, delays 1 s then 2 s (no jitter), breaker after 5 failures."""

# ---------------------------------------------------------------- reading the exposition


def scrape(service: OmniChannelService) -> Scrape:
    return Scrape(exposition(service).decode())


def metrics_service(*plugins: object, settings: Mapping[str, Any] | None = None, **sections: Any) -> Any:
    """A service with ``plugins`` and the metrics plugin, ``[plugins.metrics]`` = ``settings``."""
    config = ServiceConfig(
        plugins={
            "metrics": PluginSettings(settings=dict(settings or {})),
            **{name: PluginSettings(settings=value) for name, value in sections.items()},
        }
    )
    return make_service(*plugins, ("metrics", MetricsPlugin()), config=config, clock=FakeClock())


def text(recipient: str = "+16505550001", message_id: str = "m-1") -> Message:
    return Message(recipient, Text("hello"), channel=CHANNEL, id=message_id)


def receipt(
    attempts: int = 1, error: ErrorInfo | None = None, status: DeliveryStatus | None = None
) -> Receipt:
    return Receipt(
        message_id="m-1",
        channel=CHANNEL,
        status=status or (DeliveryStatus.FAILED if error else DeliveryStatus.ACCEPTED),
        provider_message_id=None if error else "rec-1",
        attempts=attempts,
        error=error,
    )


# ---------------------------------------------------------------- one event, the metrics it moves

TEMPLATE = Template("order_update", "en_US")
PERMANENT = ErrorInfo("PermanentDeliveryError", "template does not exist", code=132000, http_status=400)
UNDELIVERABLE = ErrorInfo("PermanentDeliveryError", "(#131026) Message undeliverable", code=131026)
TRANSIENT = ErrorInfo("TransientDeliveryError", "Service temporarily unavailable", code=2, retryable=True)
INVALID = ErrorInfo("MessageValidationError", "recipient: must not be empty")
CS = f"channel={CHANNEL} sender={SENDER}"
LIMITED = f"channel={CHANNEL} sender=15550001"


def k(spec: str) -> Key:
    """``"messages_sent_total channel=x sender=y"``: the key of ``omnichannel_messages_sent_total{...}``."""
    return Scrape("").key(spec)


def status(value: DeliveryStatus, error: ErrorInfo | None = None) -> StatusChanged:
    return StatusChanged(CHANNEL, "rec-1", value, message_id="m-1", recipient="16505550001", error=error)


EVENT_CASES = [
    pytest.param(
        MessageSent(text(), receipt(attempts=2)),
        {k(f"messages_sent_total {CS}"): 1, k(f"send_attempts_total channel={CHANNEL}"): 2},
        id="MessageSent",
    ),
    pytest.param(
        DeliveryFailed(text(), receipt(attempts=1, error=PERMANENT)),
        {
            k(f"messages_failed_total {CS} error=PermanentDeliveryError code=132000"): 1,
            k(f"send_attempts_total channel={CHANNEL}"): 1,
        },
        id="DeliveryFailed-with-code",
    ),
    pytest.param(
        DeliveryFailed(text(), receipt(attempts=0, error=INVALID)),
        {k(f"messages_failed_total {CS} error=MessageValidationError code="): 1},
        id="DeliveryFailed-never-sent-no-code",
    ),
    pytest.param(
        DeliveryFailed(text(), receipt(attempts=1, status=DeliveryStatus.FAILED)),
        {
            k(f"messages_failed_total {CS} error=DeliveryError code="): 1,
            k(f"send_attempts_total channel={CHANNEL}"): 1,
        },
        id="DeliveryFailed-without-error-info",
    ),
    *[
        pytest.param(
            status(value),
            {k(f"message_status_total channel={CHANNEL} status={value}"): 1},
            id=f"StatusChanged-{value}",
        )
        for value in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ)
    ],
    pytest.param(
        status(DeliveryStatus.FAILED, UNDELIVERABLE),
        {
            k(f"message_status_total channel={CHANNEL} status=failed"): 1,
            k(f"message_status_failures_total channel={CHANNEL} code=131026"): 1,
        },
        id="StatusChanged-failed-with-code",
    ),
    pytest.param(
        RetryScheduled("m-1", CHANNEL, 1, 1.5, TRANSIENT),
        {k(f"retries_total channel={CHANNEL} error=TransientDeliveryError"): 1},
        id="RetryScheduled",
    ),
    pytest.param(
        CircuitStateChanged(CHANNEL, "15550001", "closed", "open"),
        {
            k(f"circuit_breaker_state {LIMITED}"): 2,
            k(f"circuit_breaker_transitions_total {LIMITED} from_state=closed to_state=open"): 1,
        },
        id="CircuitStateChanged",
    ),
    pytest.param(
        SendLimited("m-1", CHANNEL, "15550001", "rate", 0.25, False),
        {
            k(f"rate_limiter_wait_seconds_count {LIMITED}"): 1,
            k(f"rate_limiter_wait_seconds_sum {LIMITED}"): 0.25,
        },
        id="SendLimited-wait",
    ),
    pytest.param(
        SendLimited("m-1", CHANNEL, "15550001", "rate", 0.0, True, "recipient"),
        {k(f"rate_limiter_deferred_total {LIMITED} limit=rate scope=recipient"): 1},
        id="SendLimited-deferred-rate",
    ),
    pytest.param(
        SendLimited("m-1", CHANNEL, "15550001", "in_flight", 0.0, True),
        {k(f"rate_limiter_deferred_total {LIMITED} limit=in_flight scope="): 1},
        id="SendLimited-deferred-in-flight-no-scope",
    ),
    pytest.param(
        ListenerFailed("MessageSent", "audit-log", ErrorInfo("KeyError", "'m-1'")),
        {k("listener_failures_total plugin=audit-log"): 1},
        id="ListenerFailed",
    ),
    pytest.param(
        TemplateUsed(Message("+16505550001", TEMPLATE, channel=CHANNEL, id="m-1"), CHANNEL, TEMPLATE),
        {k(f"templates_used_total channel={CHANNEL} template=order_update language=en_US"): 1},
        id="TemplateUsed",
    ),
    pytest.param(
        PossibleDuplicateSend("m-1", CHANNEL, "campaign-7:+16505550001"),
        {k(f"possible_duplicate_sends_total channel={CHANNEL}"): 1},
        id="PossibleDuplicateSend",
    ),
    pytest.param(
        PossibleDuplicateSend("m-1", "pigeon", "k"),
        {k("possible_duplicate_sends_total channel=unknown"): 1},
        id="PossibleDuplicateSend-unknown-channel",
    ),
    pytest.param(
        SenderParked(CHANNEL, "15550001", "sender_unavailable", "SenderUnavailableError: token revoked"),
        {k(f"sender_parked {LIMITED}"): 1},
        id="SenderParked",
    ),
    pytest.param(
        MessageSettled("m-1", CHANNEL, "dead_letter", "unknown_error_code"),
        {
            k(f"message_fate_total channel={CHANNEL} fate=dead_letter"): 1,
            k(f"dead_letter_total channel={CHANNEL} reason=unknown_error_code"): 1,
        },
        id="MessageSettled-dead-letter",
    ),
    pytest.param(
        MessageSettled("m-1", CHANNEL, "already_sent"),
        {
            k(f"message_fate_total channel={CHANNEL} fate=sent"): 1,
            k(f"idempotency_hits_total channel={CHANNEL} state=sent"): 1,
        },
        id="MessageSettled-already-sent",
    ),
    pytest.param(
        MessageSettled("m-1", CHANNEL, "reconciled"),
        {
            k(f"message_fate_total channel={CHANNEL} fate=sent"): 1,
            k(f"ambiguous_outcomes_total channel={CHANNEL} resolution=webhook"): 1,
        },
        id="MessageSettled-reconciled",
    ),
    pytest.param(
        MessageSettled("m-1", CHANNEL, "sent", "resent_uncertain"),
        {
            k(f"message_fate_total channel={CHANNEL} fate=sent"): 1,
            k(f"ambiguous_outcomes_total channel={CHANNEL} resolution=resent"): 1,
        },
        id="MessageSettled-resent",
    ),
    pytest.param(
        MessageSettled("m-1", CHANNEL, "reconcile", "uncertain"),
        {k(f"message_fate_total channel={CHANNEL} fate=deferred"): 1},
        id="MessageSettled-reconcile-window",
    ),
    pytest.param(
        MessageSettled("m-1", "", "parked", "sender_unavailable"),
        {k("message_fate_total channel=unknown fate=parked"): 1},
        id="MessageSettled-parked",
    ),
]


async def test_the_legacy_php_names_follow_the_whatsapp_breaker_and_failures() -> None:
    whatsapp = RecordingChannel("whatsapp")
    async with metrics_service(whatsapp) as service:
        await service.emit(CircuitStateChanged("whatsapp", "106540352242922", "closed", "open"))
        await service.emit(CircuitStateChanged(CHANNEL, "s1", "closed", "open"))  # not whatsapp
        whatsapp.fail_next(1, PermanentDeliveryError("bad", code=131026))
        with pytest.raises(PermanentDeliveryError):
            await service.send(Message("+16505550001", Text("hi"), channel="whatsapp"))
        metrics = scrape(service)
    # The legacy alerts: whatsapp_circuit_breaker_state == 2; rate(whatsapp_errors_total[5m]) > 0.05.
    assert metrics.get("whatsapp_circuit_breaker_state", sender="106540352242922") == 2
    assert metrics.get("whatsapp_circuit_breaker_state", sender="s1") is None
    assert metrics.get("whatsapp_errors_total") == 1


async def test_the_legacy_names_can_be_turned_off() -> None:
    async with metrics_service(RecordingChannel("whatsapp"), settings={"legacy_names": False}) as service:
        await service.emit(CircuitStateChanged("whatsapp", "s", "closed", "open"))
        text = exposition(service).decode()
    assert "whatsapp_circuit_breaker_state" not in text
    assert "whatsapp_errors_total" not in text


async def test_the_delivery_histogram_takes_final_fates_from_their_first_publish() -> None:
    async with metrics_service(RecordingChannel()) as service:
        await service.emit(MessageSettled("m-1", CHANNEL, "sent", age_s=0.3))
        await service.emit(MessageSettled("m-2", CHANNEL, "defer", age_s=0.3))  # not final
        await service.emit(MessageSettled("m-3", CHANNEL, "dead_letter", "expired", age_s=90_000.0))
        metrics = scrape(service)
    delivery = "omnichannel_message_delivery_seconds"
    assert metrics.get(f"{delivery}_count", channel=CHANNEL, fate="sent") == 1
    assert metrics.get(f"{delivery}_bucket", channel=CHANNEL, fate="sent", le="0.5") == 1
    assert metrics.get(f"{delivery}_sum", channel=CHANNEL, fate="dead_letter") == 90_000.0
    assert metrics.get(f"{delivery}_count", channel=CHANNEL, fate="deferred") is None


async def test_the_parked_gauge_returns_to_0_when_the_sender_resumes() -> None:
    async with metrics_service(RecordingChannel()) as service:
        await service.emit(SenderParked(CHANNEL, "s1", "sender_unavailable"))
        await service.emit(SenderParked(CHANNEL, "s2", "sender_unavailable"))
        await service.emit(SenderResumed(CHANNEL, "s1", trigger="probe"))
        metrics = scrape(service)
    assert metrics.get("omnichannel_sender_parked", channel=CHANNEL, sender="s1") == 0
    assert metrics.get("omnichannel_sender_parked", channel=CHANNEL, sender="s2") == 1


@pytest.mark.parametrize(("event", "expected"), EVENT_CASES)
async def test_each_event_moves_its_metrics_with_their_labels_and_nothing_else(
    event: Event, expected: dict[Key, float]
) -> None:
    async with metrics_service(RecordingChannel()) as service:
        before = scrape(service)
        await service.emit(event)
        after = scrape(service)
    events_key = sample_key("omnichannel_events_total", event=type(event).__name__)
    assert after.moved_since(before) == {**expected, events_key: 1}


@pytest.mark.parametrize(
    ("state", "gauge"),
    [("closed", 0), ("half_open", 1), ("open", 2), ("forced_open", 2), ("disabled", 0), ("metrics_only", 0)],
)
async def test_the_breaker_gauge_is_0_closed_1_half_open_2_open(state: str, gauge: float) -> None:
    async with metrics_service(RecordingChannel()) as service:
        await service.emit(CircuitStateChanged(CHANNEL, "s1", "closed", "open"))
        assert scrape(service).get("omnichannel_circuit_breaker_state", channel=CHANNEL, sender="s1") == 2
        await service.emit(CircuitStateChanged(CHANNEL, "s1", "open", state))
        await service.emit(CircuitStateChanged(CHANNEL, "s2", "closed", "half_open"))  # its own series
        metrics = scrape(service)
    assert metrics.get("omnichannel_circuit_breaker_state", channel=CHANNEL, sender="s1") == gauge
    assert metrics.get("omnichannel_circuit_breaker_state", channel=CHANNEL, sender="s2") == 1
    transitions = "omnichannel_circuit_breaker_transitions_total"
    assert metrics.get(transitions, channel=CHANNEL, sender="s1", from_state="open", to_state=state) == 1
    assert metrics.get(transitions, channel=CHANNEL, sender="s1", from_state="closed", to_state="open") == 1


async def test_a_listener_that_raises_is_counted_by_plugin() -> None:
    class Broken:
        @hookimpl
        def on_event(self, event: Event) -> None:
            if isinstance(event, MessageSent):
                raise RuntimeError(f"cannot store {event.message.id}")

    async with metrics_service(RecordingChannel(), ("audit", Broken())) as service:
        await service.send(text(message_id="m-7"))
        await service.send(text(message_id="m-8"))
        metrics = scrape(service)
    assert metrics.get("omnichannel_listener_failures_total", plugin="audit") == 2
    assert metrics.get("omnichannel_events_total", event="ListenerFailed") == 2
    assert metrics.get("omnichannel_messages_sent_total", channel=CHANNEL, sender=SENDER) == 2


# ---------------------------------------------------------------- the send wrapper: one logical send


@pytest.mark.parametrize("metrics_first", [True, False], ids=["metrics-registered-first", "resilience-first"])
async def test_one_duration_per_logical_send_however_many_attempts_resilience_makes(
    metrics_first: bool,
) -> None:
    channel, clock = RecordingChannel(), FakeClock()
    metrics_plugin = ("metrics", MetricsPlugin())
    resilience = ("resilience", ResiliencePlugin(random.Random(1)))
    order = (metrics_plugin, resilience) if metrics_first else (resilience, metrics_plugin)
    config = ServiceConfig(plugins={"resilience": PluginSettings(settings=LEGACY_NO_WAIT)})
    async with make_service(channel, *order, config=config, clock=clock) as service:
        channel.fail_next(2, TransientDeliveryError("down", code=2))  # then the third attempt passes
        sent = await service.send(text(message_id="m-sent"))
        channel.fail_next(3, TransientDeliveryError("down", code=2))
        with pytest.raises(TransientDeliveryError) as failed:
            await service.send(text(message_id="m-failed"))
        metrics = scrape(service)
    assert (sent.attempts, failed.value.receipt.attempts) == (3, 3)  # type: ignore[attr-defined]
    assert clock.sleeps == [1.0, 2.0, 1.0, 2.0]
    histogram = "omnichannel_send_duration_seconds"
    for outcome in ("sent", "failed"):
        # One observation each, of the whole send: both waits (1 s + 2 s), not one per attempt.
        assert metrics.get(f"{histogram}_count", channel=CHANNEL, outcome=outcome) == 1
        assert metrics.get(f"{histogram}_sum", channel=CHANNEL, outcome=outcome) == 3.0
        assert metrics.get(f"{histogram}_bucket", channel=CHANNEL, outcome=outcome, le="2.5") == 0
        assert metrics.get(f"{histogram}_bucket", channel=CHANNEL, outcome=outcome, le="5.0") == 1
    assert metrics.get("omnichannel_send_attempts_total", channel=CHANNEL) == 6
    assert metrics.get("omnichannel_retries_total", channel=CHANNEL, error="TransientDeliveryError") == 4
    assert metrics.get("omnichannel_messages_sent_total", channel=CHANNEL, sender=SENDER) == 1
    assert metrics.at(f"messages_failed_total {CS} error=TransientDeliveryError code=2") == 1


async def test_a_failed_receipt_returned_by_the_channel_is_timed_as_failed() -> None:
    class FailedReceipt(RecordingChannel):
        @hookimpl
        def send(self, payload: Any) -> Sender:
            async def deliver() -> Receipt:
                return Receipt(payload.message_id, CHANNEL, DeliveryStatus.FAILED, error=PERMANENT)

            return deliver

    async with metrics_service(FailedReceipt()) as service:
        with pytest.raises(omnichannel.DeliveryError):
            await service.send(text())
        metrics = scrape(service)
    assert metrics.series("omnichannel_messages_failed_total")  # counted as failed ...
    histogram = "omnichannel_send_duration_seconds_count"
    assert metrics.get(histogram, channel=CHANNEL, outcome="sent") is None  # ... so not timed as sent
    assert metrics.get(histogram, channel=CHANNEL, outcome="failed") == 1


# ---------------------------------------------------------------- bounded labels


async def test_provider_codes_beyond_max_codes_become_other_per_channel() -> None:
    async with metrics_service(
        RecordingChannel(), RecordingChannel("other"), settings={"max_codes": 2}
    ) as service:
        for code in (1, 2, 3, 1, 4, "2"):
            error = ErrorInfo("PermanentDeliveryError", "no", code=code)
            await service.emit(DeliveryFailed(text(), receipt(error=error)))
        # Status failures share the channel's budget of codes: 131026 is a third code, so 'other'.
        await service.emit(StatusChanged(CHANNEL, "rec-1", DeliveryStatus.FAILED, error=UNDELIVERABLE))
        # Another channel has a budget of its own.
        await service.emit(StatusChanged("other", "o-1", DeliveryStatus.FAILED, error=UNDELIVERABLE))
        metrics = scrape(service)
    failed = {
        s["code"]: metrics.get("omnichannel_messages_failed_total", **s)
        for s in metrics.series("omnichannel_messages_failed_total")
    }
    assert failed == {"1": 2, "2": 2, "other": 2}
    status = {
        (s["channel"], s["code"]): metrics.get("omnichannel_message_status_failures_total", **s)
        for s in metrics.series("omnichannel_message_status_failures_total")
    }
    assert status == {(CHANNEL, "other"): 1, ("other", "131026"): 1}


_LABELS = "channel sender error code outcome le status template language from_state to_state limit scope"
ALLOWED_LABELS = {*_LABELS.split(), "event", "plugin", "version", "python"}


async def test_no_label_value_is_a_recipient_a_message_id_or_free_text() -> None:
    channel = RecordingChannel()

    class Nosy:  # a listener whose error message carries a message id and a recipient
        @hookimpl
        def on_event(self, event: Event) -> None:
            if isinstance(event, DeliveryFailed):
                raise ValueError(f"{event.message.id} to {event.message.recipient}")

    recipients = [f"+1650555{i:04d}" for i in range(12)]
    ids = [f"msg-{i:02d}-7f3a" for i in range(12)]
    messages = [
        Message(r, Text(f"hi {r}"), channel=CHANNEL, id=i) for r, i in zip(recipients, ids, strict=True)
    ]
    config = {"resilience": LEGACY_NO_WAIT}
    async with metrics_service(
        channel, ("resilience", ResiliencePlugin(random.Random(3))), ("nosy", Nosy()), **config
    ) as service:
        await service.send(messages[0])
        channel.fail_next(1, TransientDeliveryError(f"timeout sending to {recipients[1]}", code="E1"))
        await service.send(messages[1])
        channel.fail_next(1, PermanentDeliveryError(f"{recipients[2]} is not on the channel", code=131026))
        await service.send_many([messages[2]])
        await service.send(Message(recipients[3], TEMPLATE, channel=CHANNEL, id=ids[3]))
        channel.fail_next(6, TransientDeliveryError("outage"))  # 2 messages x 3 attempts: opens the breaker
        await service.send_many(messages[4:7])
        await service.send_many([Message("", Text("no recipient"), channel=CHANNEL, id=ids[7])])
        for i in (8, 9):
            failed = StatusChanged(CHANNEL, f"wamid.{ids[i]}", DeliveryStatus.FAILED, error=UNDELIVERABLE)
            await service.emit(attrs.evolve(failed, message_id=ids[i], recipient=recipients[i].lstrip("+")))
        await service.emit(SendLimited(ids[10], CHANNEL, SENDER, "rate", 0.5, False))
        await service.emit(SendLimited(ids[11], CHANNEL, SENDER, "rate", 0.0, True, "recipient"))
        metrics = scrape(service)
        sent_ids = [p.message_id for p in channel.payloads]
    # The run was varied: sends, failures with codes, retries, a breaker move, statuses, limits, listeners.
    names = {name for name, _ in metrics.samples}
    varied = "messages_sent messages_failed retries templates_used circuit_breaker_transitions message_status"
    for moved in [*varied.split(), "rate_limiter_deferred", "listener_failures"]:
        assert f"omnichannel_{moved}_total" in names, moved
    assert {"omnichannel_rate_limiter_wait_seconds_count", "omnichannel_send_duration_seconds_count"} <= names
    forbidden = {*recipients, *(r.lstrip("+") for r in recipients), *ids, *sent_ids, "rec-1", "wamid"}
    for name, labels in metrics.samples:
        for label, value in labels:
            assert label in ALLOWED_LABELS, (name, label)
            assert not any(word in value for word in forbidden), (name, label, value)
            assert " " not in value, (name, label, value)  # no detail or message text
    assert not any(word in metrics.text for word in forbidden)  # nowhere in the exposition


async def test_a_send_to_an_unknown_channel_adds_no_label_value_of_its_own() -> None:
    async with metrics_service(RecordingChannel()) as service:
        for i in range(3):
            with pytest.raises(omnichannel.UnknownChannelError):
                await service.send(Message("+16505550001", Text("hi"), channel=f"typo {i}"))
        metrics = scrape(service)
    values = {dict(labels).get(label) for _, labels in metrics.samples for label in ("channel", "sender")}
    assert values - {None} <= {CHANNEL, "unknown", ""}  # one "unknown" series, not one per typo


async def test_build_info_names_the_version_and_python() -> None:
    async with metrics_service() as service:
        metrics = scrape(service)
    assert metrics.series("omnichannel_build_info") == [
        {"python": platform.python_version(), "version": omnichannel.__version__}
    ]
    assert metrics.at(f"build_info python={platform.python_version()} version={omnichannel.__version__}") == 1


async def test_the_prefix_names_every_metric() -> None:
    async with metrics_service(RecordingChannel(), settings={"prefix": "acme"}) as service:
        await service.send(text())
        metrics = scrape(service)
    assert metrics.get("acme_messages_sent_total", channel=CHANNEL, sender=SENDER) == 1
    assert all(name.startswith("acme_") for name, _ in metrics.samples)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"prefix": "1omnichannel"}, "prefix"),
        ({"prefix": "omni-channel"}, "prefix"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"port": "metrics"}, "port"),
        ({"path": "metrics"}, "path"),
        ({"latency_buckets": []}, "latency_buckets"),
        ({"latency_buckets": [0.5, 0.1]}, "latency_buckets"),
        ({"latency_buckets": [0.1, 0.1]}, "latency_buckets"),
        ({"latency_buckets": [0, 1]}, "latency_buckets"),
        ({"max_codes": 0}, "max_codes"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_key(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        metrics_service(settings=settings)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"plugins.metrics.{path}: "), info.value.errors


async def test_custom_buckets_are_the_histograms() -> None:
    async with metrics_service(RecordingChannel(), settings={"latency_buckets": [0.5, 2]}) as service:
        await service.send(text())
        metrics = scrape(service)
    bounds = [s["le"] for s in metrics.series("omnichannel_send_duration_seconds_bucket")]
    assert bounds == ["0.5", "2.0", "+Inf"]


# ---------------------------------------------------------------- serving


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        return answer.status, answer.headers["Content-Type"], await answer.text()


async def test_the_standalone_server_on_port_0_serves_the_exposition_and_stops_with_the_service() -> None:
    metrics_plugin = MetricsPlugin()
    config = ServiceConfig(plugins={"metrics": PluginSettings(settings={"port": 0, "path": "/prom"})})
    service = make_service(RecordingChannel(), ("metrics", metrics_plugin), config=config)
    assert metrics_plugin.port(service) is None  # not before start-up
    async with service:
        port = metrics_plugin.port(service)
        assert isinstance(port, int)
        assert port > 0
        await service.send(text())
        status, content_type, body = await get(f"http://127.0.0.1:{port}/prom")
        assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
        assert Scrape(body).samples == scrape(service).samples
        assert Scrape(body).get("omnichannel_messages_sent_total", channel=CHANNEL, sender=SENDER) == 1
        assert (await get(f"http://127.0.0.1:{port}/metrics"))[0] == 404  # only the configured path
        status, content_type, body = await get(f"http://127.0.0.1:{port}/health")  # a worker's probe
        assert (status, content_type) == (200, "application/json; charset=utf-8")
        assert json.loads(body) == {"status": "ok", "degraded": [], "plugins": {}}
    assert metrics_plugin.port(service) is None
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"http://127.0.0.1:{port}/prom")


async def test_without_a_port_only_serve_has_the_route_at_the_configured_path() -> None:
    metrics_plugin = MetricsPlugin()
    config = ServiceConfig(plugins={"metrics": PluginSettings(settings={"path": "/internal/metrics"})})
    service = make_service(RecordingChannel(), ("metrics", metrics_plugin), config=config)
    assert [(r.method, r.path) for r in service.routes()] == [("GET", "/internal/metrics")]
    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        assert metrics_plugin.port(service) is None
        await service.send(text())
        answer = await client.get("/internal/metrics")
        assert (answer.status, answer.headers["Content-Type"]) == (200, CONTENT_TYPE_LATEST)
        body = Scrape(await answer.text())
    assert body.at(f"messages_sent_total {CS}") == 1
    assert body.at(f"send_duration_seconds_count channel={CHANNEL} outcome=sent") == 1


# ---------------------------------------------------------------- disabled, rolled out


def scripted_run(channel: RecordingChannel) -> list[Message]:
    channel.script(None, TransientDeliveryError("down", code=2), None)
    return [
        text("+16505550001", "m-1"),
        text("+16505550002", "m-2"),
        Message("+16505550003", TEMPLATE, channel=CHANNEL, id="m-3"),
    ]


async def run_and_record(
    *plugins: object, config: ServiceConfig | None = None
) -> tuple[list[Any], list[Event], OmniChannelService]:
    channel, events = RecordingChannel(), EventRecorder()
    messages = scripted_run(channel)
    named = (("recording", channel), *plugins, ("events", events))
    async with make_service(*named, config=config, clock=FakeClock()) as service:
        receipts = await service.send_many(messages, concurrency=1)
    return receipts, events.events, service


async def test_disabled_it_changes_nothing_receipts_and_events_are_those_of_a_service_without_it() -> None:
    without = await run_and_record()
    # Even its bad settings are not read: a disabled plugin's section is never checked.
    disabled = ServiceConfig(plugins={"metrics": PluginSettings(enabled=False, settings={"port": 70000})})
    metrics_plugin = MetricsPlugin()
    receipts, events, service = await run_and_record(("metrics", metrics_plugin), config=disabled)
    assert receipts == without[0]
    assert [r.status for r in receipts] == ["accepted", "failed", "accepted"]
    assert events == without[1]
    assert [p.name for p in service.plugins()] == [p.name for p in without[2].plugins()]
    assert "metrics" not in service.state
    assert service.routes() == []
    assert metrics_plugin.port(service) is None


async def test_rollout_0_leaves_sends_untimed_but_the_listener_still_counts() -> None:
    # Observed: rollout applies to the send pipeline only. The wrapper is left out for every
    # recipient (no duration at all); the on_event listener, like every listener, sees every event.
    config = ServiceConfig(plugins={"metrics": PluginSettings(rollout=0)})
    receipts, events, service = await run_and_record(("metrics", MetricsPlugin()), config=config)
    assert [r.status for r in receipts] == ["accepted", "failed", "accepted"]
    metrics = scrape(service)
    assert metrics.series("omnichannel_send_duration_seconds_count") == []
    assert metrics.get("omnichannel_messages_sent_total", channel=CHANNEL, sender=SENDER) == 2
    assert metrics.at(f"messages_failed_total {CS} error=TransientDeliveryError code=2") == 1
    assert metrics.at(f"templates_used_total channel={CHANNEL} template=order_update language=en_US") == 1
    assert metrics.get("omnichannel_events_total", event="MessageSent") == 2
    # Nothing else changed either: the same receipts and events as without the plugin.
    without = await run_and_record()
    assert (receipts, events) == without[:2]


async def test_a_partial_rollout_times_only_the_recipients_in_it() -> None:
    recipients = [f"+1650555{i:04d}" for i in range(40)]
    timed = [r for r in recipients if in_rollout(50, "metrics", r)]
    assert 0 < len(timed) < len(recipients)
    config = ServiceConfig(plugins={"metrics": PluginSettings(rollout=50)})
    async with make_service(RecordingChannel(), ("metrics", MetricsPlugin()), config=config) as service:
        for i, recipient in enumerate(recipients):
            await service.send(text(recipient, f"m-{i}"))
        metrics = scrape(service)
    assert metrics.at(f"send_duration_seconds_count channel={CHANNEL} outcome=sent") == len(timed)
    assert metrics.get("omnichannel_messages_sent_total", channel=CHANNEL, sender=SENDER) == len(recipients)
