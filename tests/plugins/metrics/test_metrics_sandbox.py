"""The metrics plugin end to end: real sends through the WhatsApp sandbox, scraped over HTTP.

The service (whatsapp + resilience + metrics) is served by ``omnichannel.server.make_app`` on a
loopback port, exactly as ``omnichannel serve`` serves it; the sandbox (``omnichannel_whatsapp.sandbox``)
runs on the same event loop, answers the Graph requests over a real socket, injects the faults, and
POSTs signed status webhooks back to the app's ``/webhooks/whatsapp``. ``/metrics`` is fetched over
HTTP and parsed by prometheus-client's own parser. The service runs on a ``FakeClock`` (retry waits
and the breaker's open time are virtual); the sandbox has a ``FakeClock`` of its own, so its webhook
delays pass at once without moving the service's time. Nothing sleeps: the test awaits the webhook
dispatcher's ``drain``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST

import omnichannel_whatsapp
from omnichannel import (
    DeliveryError,
    Message,
    OmniChannelService,
    PluginSettings,
    Receipt,
    SendLimited,
    ServiceConfig,
    Template,
    TemplateButton,
    Text,
)
from omnichannel.server import make_app
from omnichannel.testing import EventRecorder, FakeClock, make_service
from omnichannel_metrics import MetricsPlugin
from omnichannel_metrics.testing import Scrape
from omnichannel_resilience import ResiliencePlugin, runtime
from omnichannel_whatsapp.sandbox import Fault, Sandbox, SandboxSettings

ACCESS_TOKEN = "metrics-token"
APP_SECRET = "metrics-secret"
VERIFY_TOKEN = "metrics-verify"
WAIT_S = 10.0
"""The longest a test waits for the webhooks; only a broken dispatcher ever takes that long."""
LEGACY = {"profile": "legacy", "poll_interval_s": 3600.0}
"""The PHP service's numbers: 3 attempts (waits 1 s, 2 s, no jitter); the breaker opens after 5
failures in a row, stays open 60 s, closes after 2 successes. No local rate limits. The breaker
watcher polls once an hour: the test reports the breakers itself (``report_breakers``)."""
OPEN_S = 60.0

# ---------------------------------------------------------------- scraping


async def scrape(client: TestClient[Any, Any]) -> Scrape:
    answer = await client.get("/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return Scrape(await answer.text())


async def scrape_port(port: int | None) -> Scrape:
    assert port is not None
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as answer:
        assert answer.status == 200
        return Scrape(await answer.text())


# ---------------------------------------------------------------- the sandbox and the service


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    # Half the delivered messages are read (seeded): read moves, and less than delivered.
    settings = SandboxSettings(access_token=ACCESS_TOKEN, app_secret=APP_SECRET, read_probability=0.5, seed=1)
    async with Sandbox(settings, clock=FakeClock()) as served:
        yield served


def whatsapp_stack(
    sandbox: Sandbox,
    clock: FakeClock,
    *extra: object,
    resilience: dict[str, Any],
    metrics: PluginSettings | None = None,
) -> tuple[OmniChannelService, MetricsPlugin]:
    """whatsapp + resilience + metrics against ``sandbox`` (and ``extra`` plugins)."""
    whatsapp = {
        "phone_number_id": sandbox.settings.phone_number_id,
        "access_token": ACCESS_TOKEN,
        "app_secret": APP_SECRET,
        "verify_token": VERIFY_TOKEN,
        "base_url": sandbox.url,
    }
    config = ServiceConfig(
        plugins={
            "whatsapp": PluginSettings(settings=whatsapp),
            "resilience": PluginSettings(settings=resilience),
            "metrics": metrics or PluginSettings(settings={"port": 0}),
        }
    )
    plugin = MetricsPlugin()
    service = make_service(
        ("whatsapp", omnichannel_whatsapp),
        ("resilience", ResiliencePlugin(random.Random(11))),
        ("metrics", plugin),
        *extra,
        config=config,
        clock=clock,
    )
    return service, plugin


def order_update() -> Template:
    """The sandbox's seed template ``order_update`` (en_US) with every parameter it expects."""
    return Template(
        "order_update",
        "en_US",
        header=["#8899"],
        body=["Ann", "8899", "today"],
        buttons=[TemplateButton("url", 1, "8899")],
    )


def webhook_statuses(sandbox: Sandbox) -> dict[str, int]:
    """The statuses the sandbox reported by webhook, by status (its counters: the ground truth)."""
    return {s: sandbox.state.counters[f"statuses.{s}"] for s in ("sent", "delivered", "read", "failed")}


def text(to: str, message_id: str) -> Message:
    return Message(to, Text(f"hello {message_id}"), channel="whatsapp", id=message_id)


async def send(service: OmniChannelService, message: Message) -> Receipt:
    """The receipt of ``message``, sent or failed (a failure's receipt rides on its error)."""
    try:
        return await service.send(message)
    except DeliveryError as exc:
        receipt: Receipt = exc.receipt  # type: ignore[attr-defined]
        return receipt


# ---------------------------------------------------------------- the whole loop


async def test_metrics_follow_real_sends_their_webhooks_an_outage_and_the_recovery(sandbox: Sandbox) -> None:
    clock, events = FakeClock(), EventRecorder()
    service, metrics_plugin = whatsapp_stack(sandbox, clock, events, resilience=LEGACY)
    pnid = sandbox.settings.phone_number_id
    wa = f"channel=whatsapp sender={pnid}"
    recipients = [f"+1650555{i:04d}" for i in range(10)]
    gone = f"+{sandbox.settings.not_on_whatsapp[0]}"  # accepted, then failed by webhook (131026)

    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        sandbox.set_webhook_url(str(client.make_url("/webhooks/whatsapp")))

        # 1. Healthy: four texts and a template are accepted; a fifth text goes to a number that
        #    is not on WhatsApp. Then a permanent error (132000) and an outage of five 503s.
        receipts = [await send(service, text(recipients[i], f"ok-{i}")) for i in range(4)]
        template = Message(recipients[4], order_update(), channel="whatsapp", id="tpl")
        receipts += [await send(service, template), await send(service, text(gone, "gone"))]
        sandbox.faults.add(Fault("error", http_status=400, code=132000, remaining=1))
        sandbox.faults.add(Fault("error", http_status=503, code=2, remaining=5))
        outage = [text(recipients[5 + i], f"out-{i}") for i in range(4)]
        receipts += [await send(service, message) for message in outage]
        await sandbox.dispatcher.drain(WAIT_S)

        # What happened (the ground truth the metrics must tell).
        assert [r.ok for r in receipts] == [True] * 6 + [False] * 4
        failed = [(r.error.kind, r.error.code, r.attempts) for r in receipts[6:] if r.error]
        assert failed == [
            ("PermanentDeliveryError", 132000, 1),  # not retried
            ("TransientDeliveryError", 2, 3),  # 503, 503, 503: waits of 1 s and 2 s
            ("TransientDeliveryError", 2, 2),  # 503, 503: the fifth failure opens the breaker
            ("CircuitOpenError", None, 0),  # refused without a request
        ]
        assert sandbox.state.counters["accepted"] == 6
        assert sandbox.state.counters["fault.error"] == 6
        statuses = webhook_statuses(sandbox)
        assert statuses == {"sent": 5, "delivered": 5, "read": 3, "failed": 1}  # seeded: 3 of 5 read
        assert all(w.answer_status == 200 for w in sandbox.state.webhooks)

        during = await scrape(client)
        assert during.at(f"messages_sent_total {wa}") == 6
        assert during.by("messages_failed_total", "error") == {
            "PermanentDeliveryError": 1,
            "TransientDeliveryError": 2,
            "CircuitOpenError": 1,
        }
        assert during.at(f"messages_failed_total {wa} error=PermanentDeliveryError code=132000") == 1
        assert during.at(f"messages_failed_total {wa} error=TransientDeliveryError code=2") == 2
        assert during.at(f"messages_failed_total {wa} error=CircuitOpenError code=") == 1
        assert during.at("send_attempts_total channel=whatsapp") == 6 + 1 + 3 + 2 + 0
        assert during.at("retries_total channel=whatsapp error=TransientDeliveryError") == 2 + 1
        # The histogram: one observation per logical send, on the service's (virtual) clock.
        histogram = "send_duration_seconds"
        assert during.total(f"{histogram}_count") == len(receipts)
        assert during.at(f"{histogram}_count channel=whatsapp outcome=sent") == 6
        assert during.at(f"{histogram}_sum channel=whatsapp outcome=sent") == 0.0
        assert during.at(f"{histogram}_count channel=whatsapp outcome=failed") == 4
        assert during.at(f"{histogram}_sum channel=whatsapp outcome=failed") == (1.0 + 2.0) + 1.0
        bucket = f"{histogram}_bucket channel=whatsapp outcome=failed le="
        cumulative = {le: during.at(bucket + le) for le in ("0.5", "1.0", "2.5", "5.0")}
        assert cumulative == {"0.5": 2, "1.0": 3, "2.5": 3, "5.0": 4}
        # The webhooks, deduplicated by the plugin: one status each.
        assert during.by("message_status_total", "status") == statuses
        assert during.at("message_status_failures_total channel=whatsapp code=131026") == 1
        assert during.at("templates_used_total channel=whatsapp template=order_update language=en_US") == 1
        assert during.at("events_total event=StatusChanged") == sum(statuses.values())
        # The breaker: open (2), one move.
        assert during.at(f"circuit_breaker_state {wa}") == 2
        assert during.by("circuit_breaker_transitions_total", "to_state") == {"open": 1}

        # 2. The open time passes with nobody sending: reading the breakers reports it half-open.
        clock.advance(OPEN_S + 1)
        await runtime(service).report_breakers()
        probing = await scrape(client)
        assert probing.at(f"circuit_breaker_state {wa}") == 1
        assert probing.at(f"circuit_breaker_transitions_total {wa} from_state=open to_state=half_open") == 1

        # 3. Recovery: the three deferred messages are resent; two successes close the breaker.
        resent = [await send(service, message) for message in outage[1:]]
        assert [r.ok for r in resent] == [True] * 3
        await sandbox.dispatcher.drain(WAIT_S)
        after = await scrape(client)
        standalone = await scrape_port(metrics_plugin.port(service))

    assert after.at(f"circuit_breaker_state {wa}") == 0
    transitions = "omnichannel_circuit_breaker_transitions_total"
    moves = {
        (dict(labels)["from_state"], dict(labels)["to_state"]): value
        for (name, labels), value in after.samples.items()
        if name == transitions
    }
    assert moves == {("closed", "open"): 1, ("open", "half_open"): 1, ("half_open", "closed"): 1}
    assert after.at(f"messages_sent_total {wa}") == 6 + 3
    assert after.total("messages_failed_total") == 4  # failures are not undone by a later success
    assert after.at(f"{histogram}_count channel=whatsapp outcome=sent") == 9
    assert after.total(f"{histogram}_count") == len(receipts) + len(resent)
    assert after.at("send_attempts_total channel=whatsapp") == 12 + 3
    final = webhook_statuses(sandbox)
    assert after.by("message_status_total", "status") == final
    assert final == {"sent": 8, "delivered": 8, "read": 3, "failed": 1}
    # The standalone port serves the same registry (scraped at the same moment, nothing moved since).
    assert standalone.samples == after.samples
    # Bounded labels: no recipient, message id or wamid anywhere in the exposition.
    wamids = [m.wamid for m in sandbox.state.messages]
    forbidden = {*recipients, *(r.lstrip("+") for r in recipients), gone, gone.lstrip("+"), *wamids}
    forbidden |= {f"ok-{i}" for i in range(4)} | {"tpl", "gone"} | {m.id for m in outage}
    assert not {v for v in after.label_values() for word in forbidden if word in v}
    assert not any(word in after.text for word in forbidden)
    assert events.of_type(SendLimited) == []  # the legacy profile has no local limits
    assert after.series("omnichannel_rate_limiter_deferred_total") == []


async def test_rate_limiter_waits_and_deferrals_through_the_sandbox(sandbox: Sandbox) -> None:
    # Recommended profile: a burst of 10 per sender, then 68/s (waited for, up to 2 s); a burst of 5
    # per recipient, then one per 6 s, and a recipient over its budget is refused at once (deferred).
    clock, events = FakeClock(), EventRecorder()
    service, _ = whatsapp_stack(sandbox, clock, events, resilience={"poll_interval_s": 3600.0})
    hot = "+16505550100"
    wa = f"channel=whatsapp sender={sandbox.settings.phone_number_id}"
    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        hot_receipts = [await send(service, text(hot, f"hot-{i}")) for i in range(7)]
        others = [await send(service, text(f"+1650555{i:04d}", f"o-{i}")) for i in range(8)]
        metrics = await scrape(client)
    assert [r.ok for r in hot_receipts] == [True] * 5 + [False] * 2
    assert all(r.ok for r in others)
    limited = events.of_type(SendLimited)
    deferred = [e for e in limited if e.deferred]
    waits = [e.wait_s for e in limited if not e.deferred]
    assert [(e.limit, e.scope) for e in deferred] == [("rate", "recipient")] * 2
    assert waits  # the sender's burst ran out: the later attempts waited (virtual time)
    assert metrics.at(f"rate_limiter_deferred_total {wa} limit=rate scope=recipient") == 2
    assert metrics.at(f"rate_limiter_wait_seconds_count {wa}") == len(waits)
    assert metrics.at(f"rate_limiter_wait_seconds_sum {wa}") == pytest.approx(sum(waits))
    assert metrics.at(f"messages_failed_total {wa} error=RateLimitedError code=") == 2
    assert metrics.at("send_attempts_total channel=whatsapp") == 5 + 8  # the refusals made no attempt
    assert sandbox.state.counters["accepted"] == 13


async def test_disabled_no_metrics_route_and_sends_and_webhooks_work_the_same(
    sandbox: Sandbox,
) -> None:
    clock, events = FakeClock(), EventRecorder()
    disabled = PluginSettings(enabled=False, settings={"port": 0})
    service, metrics_plugin = whatsapp_stack(sandbox, clock, events, resilience=LEGACY, metrics=disabled)
    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        sandbox.set_webhook_url(str(client.make_url("/webhooks/whatsapp")))
        receipt = await send(service, text("+16505550001", "m-1"))
        await sandbox.dispatcher.drain(WAIT_S)
        answer = await client.get("/metrics")
        assert answer.status == 404
        assert (await answer.json())["error"]["type"] == "Not Found"
        assert metrics_plugin.port(service) is None  # no standalone server either
    assert receipt.ok
    assert [w.answer_status for w in sandbox.state.webhooks] == [200] * len(sandbox.state.webhooks)
    assert events.types().count("StatusChanged") == len(sandbox.state.webhooks)
    assert "metrics" not in service.state
