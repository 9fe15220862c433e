"""``omnichannel demo``: the framework doing its job against the WhatsApp sandbox, with no account.

It starts the sandbox and ``omnichannel serve``'s web app in this process, sends
a template campaign through the command bus and the full send pipeline (every
installed plugin takes part: resilience and metrics when present), injects an
outage in the middle and shows what happened to each message, lets the status
webhooks come back through the real, signed webhook route, and ends with a table
of what was sent, delivered, read and failed. When the message-store plugin is
installed, the demo keeps its messages in a temporary SQLite file and prints the
store's own report (``GET /stats``) too; then every plugin's health section (``GET /health``).
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs
import click
from aiohttp import web

from omnichannel import (
    CircuitStateChanged,
    DeliveryFailed,
    DeliveryStatus,
    Event,
    MessageSent,
    OmniChannelService,
    PluginSettings,
    Receipt,
    RetryScheduled,
    SendBulk,
    ServiceConfig,
    StatusChanged,
    Template,
    TemplateButton,
    hookimpl,
    make_app,
)

from .sandbox import Fault, Sandbox, SandboxSettings
from .templates import TemplateInfo, parse_template

if TYPE_CHECKING:
    from collections.abc import Sequence

CAMPAIGN = 12
"""Recipients of the demo campaign."""
OUTAGE = 3
"""Requests the sandbox fails (503, Graph code 2) in the middle of the campaign."""
NOT_ON_WHATSAPP = "15550000404"
STATUS_RANK = {
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.READ: 3,
}


@attrs.define
class Tracker:
    """A listener plugin: the furthest status of every message of the campaign, by the
    message's idempotency key (what status webhooks carry back)."""

    echo: Any = None
    """Where retries and breaker moves are shown as they happen (``None``: not shown)."""
    status: dict[str, DeliveryStatus] = attrs.field(factory=dict)
    reasons: dict[str, str] = attrs.field(factory=dict)
    webhooks: int = 0
    retries: int = 0

    @hookimpl
    def on_event(self, event: Event) -> None:
        if isinstance(event, RetryScheduled):
            # Emitted by the resilience plugin: the message is not failed, it is tried again.
            self.retries += 1
            if self.echo is not None:
                error = event.error
                self.echo(
                    f"  retry     {event.message_id[-8:]}  attempt {event.attempt} failed: {error.kind} "
                    f"(code {error.code}); trying again in {event.delay_s:.2f} s"
                )
        elif isinstance(event, CircuitStateChanged) and self.echo is not None:
            self.echo(f"  breaker   {event.channel}:{event.sender}  {event.previous} -> {event.current}")
        elif isinstance(event, MessageSent):
            # A resend that succeeds after a failure: the message is on its way after all.
            if self.status.get(event.message.key) in (None, DeliveryStatus.FAILED):
                self.status[event.message.key] = DeliveryStatus.ACCEPTED
                self.reasons.pop(event.message.key, None)
        elif isinstance(event, DeliveryFailed) and event.receipt.error is not None:
            self.status[event.message.key] = DeliveryStatus.FAILED
            self.reasons[event.message.key] = event.receipt.error.kind
        elif isinstance(event, StatusChanged) and event.message_id is not None:
            self.webhooks += 1
            self._advance(event)

    def _advance(self, event: StatusChanged) -> None:
        assert event.message_id is not None
        current = self.status.get(event.message_id)
        if event.status is DeliveryStatus.FAILED:
            self.status[event.message_id] = DeliveryStatus.FAILED
            self.reasons[event.message_id] = f"code {event.error.code}" if event.error else "failed"
        elif current is not DeliveryStatus.FAILED and STATUS_RANK.get(event.status, 0) > STATUS_RANK.get(
            current or DeliveryStatus.ACCEPTED, 0
        ):
            self.status[event.message_id] = event.status


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _demo_template(templates: Sequence[dict[str, Any]]) -> Template:
    """A template message that fits the first approved, positional template with a body."""
    infos = [parse_template(t) for t in templates]
    info = next(
        i
        for i in infos
        if i.status == "APPROVED" and i.parameter_format == "POSITIONAL" and i.body_parameters
    )
    return _fill(info)


def _fill(info: TemplateInfo) -> Template:
    samples = ["Ann", "8899", "today", "Lisbon", "2", "blue"]
    count = info.body_parameters if isinstance(info.body_parameters, int) else len(info.body_parameters)
    header = ["#8899"] * (info.header_parameters if isinstance(info.header_parameters, int) else 0)
    buttons = [
        TemplateButton("url" if kind == "URL" else "quick_reply", index, "8899")
        for index, kind, takes in info.buttons
        if takes and kind in ("URL", "QUICK_REPLY")
    ]
    return Template(info.name, info.language, header=header, body=samples[:count], buttons=buttons)


def _line(receipt: Receipt, phase: str) -> str:
    if receipt.ok:
        attempts = f"  (attempt {receipt.attempts})" if receipt.attempts > 1 else ""
        return f"  {phase:<9} {receipt.message_id[-8:]}  accepted  {receipt.provider_message_id}{attempts}"
    error = receipt.error
    assert error is not None
    retry = "retryable" if error.retryable else "final"
    return f"  {phase:<9} {receipt.message_id[-8:]}  FAILED    {error.kind} (code {error.code}, {retry})"


async def run_demo(echo: Any = click.echo) -> dict[str, int]:
    """Run the demo; return the final count of messages by status."""
    started = time.monotonic()
    host = "127.0.0.1"
    port = _free_port(host)
    settings = SandboxSettings(
        webhook_url=f"http://{host}:{port}/webhooks/whatsapp",
        not_on_whatsapp=(NOT_ON_WHATSAPP,),
        read_probability=0.7,
        seed=7,
    )
    tracker = Tracker(echo=echo)
    folder = tempfile.TemporaryDirectory(prefix="omnichannel-demo-")
    store_url = f"sqlite:///{folder.name}/messages.sqlite3"
    async with Sandbox(settings) as sandbox:
        config = ServiceConfig(
            plugins={
                "whatsapp": PluginSettings(
                    settings={
                        "base_url": sandbox.url,
                        "phone_number_id": settings.phone_number_id,
                        "waba_id": settings.waba_id,
                        "access_token": settings.access_token,
                        "app_secret": settings.app_secret,
                        "verify_token": "demo-verify-token",
                    }
                ),
                # Short waits, so that the retries of the outage do not slow the demo down.
                "resilience": PluginSettings(
                    settings={"retry": {"initial_delay_s": 0.1, "max_delay_s": 1.0}}
                ),
                # Kept for the demo's life only (the default is a file in the working directory).
                "store": PluginSettings(settings={"url": store_url}),
            }
        )
        service = OmniChannelService(config, plugins=[("demo-tracker", tracker)])
        names = ", ".join(p.name for p in service.plugins() if not p.builtin and p.name != "demo-tracker")
        echo(f"omnichannel demo: WhatsApp sandbox at {sandbox.url}, webhooks to {settings.webhook_url}")
        echo(f"plugins: {names}")
        metrics: list[str] = []
        report: list[str] = []
        health: list[str] = []
        runner = web.AppRunner(make_app(service, manage_service=False))
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            async with service:
                await _campaign(service, sandbox, tracker, echo)
                echo("waiting for the status webhooks ...")
                await sandbox.dispatcher.drain(timeout_s=20)
                metrics = await _scrape(service, f"http://{host}:{port}/metrics")
                report = await _stats(service, f"http://{host}:{port}/stats")
                health = await _health(service, f"http://{host}:{port}/health")
        finally:
            await runner.cleanup()
            folder.cleanup()
    counts = Counter(str(status) for status in tracker.status.values())
    _summary(tracker, counts, echo)
    if report:
        echo("\nmessage store (GET /stats, the store plugin)")
        for line in report:
            echo(f"  {line}")
    if health:
        echo("\nhealth (GET /health)")
        for line in health:
            echo(f"  {line}")
    if metrics:
        echo("\nmetrics (GET /metrics, the metrics plugin)")
        for line in metrics:
            echo(f"  {line}")
    echo(f"done in {time.monotonic() - started:.1f} s")
    return dict(counts)


async def _campaign(service: OmniChannelService, sandbox: Sandbox, tracker: Tracker, echo: Any) -> None:
    template = _demo_template(sandbox.state.templates)
    recipients = [f"+1555010{i:04d}" for i in range(CAMPAIGN - 1)] + [f"+{NOT_ON_WHATSAPP}"]
    half = CAMPAIGN // 2
    echo(f"\nsending template {template.name!r} ({template.language}) to {CAMPAIGN} recipients")
    first = await service.bus.dispatch(SendBulk(recipients[:half], template, channel="whatsapp"))
    for receipt in first.receipts:
        echo(_line(receipt, "sent"))

    echo(f"\noutage: the sandbox now fails the next {OUTAGE} requests with 503 (Graph code 2)")
    sandbox.faults.add(Fault(kind="error", http_status=503, code=2, remaining=OUTAGE))
    bulk = SendBulk(recipients[half:], template, channel="whatsapp")
    second = await service.bus.dispatch(bulk)
    for receipt in second.receipts:
        echo(_line(receipt, "outage"))
    # The same message (id and idempotency key) again, for each transient failure.
    retry = [
        attrs.evolve(message, id=receipt.message_id)
        for message, receipt in zip(bulk.messages(), second.receipts, strict=True)
        if receipt.error is not None and receipt.error.retryable
    ]
    if retry:
        echo(
            f"\nthe framework classified {len(retry)} failure(s) as transient (retryable, nothing was "
            "delivered); the outage is over, so they are sent again:"
        )
        sandbox.faults.clear()
        for receipt in await service.send_many(retry):
            echo(_line(receipt, "retried"))


_SHOWN_METRICS = (
    "omnichannel_messages_sent_total",
    "omnichannel_messages_failed_total",
    "omnichannel_retries_total",
    "omnichannel_message_status_total",
    "omnichannel_circuit_breaker_state",
)


async def _scrape(service: OmniChannelService, url: str) -> list[str]:
    """A few lines of the demo's own ``/metrics`` (none when the metrics plugin is not there)."""
    async with service.http.get(url) as response:
        if response.status != 200:
            return []
        text = await response.text()
    return [line for line in text.splitlines() if line.startswith(_SHOWN_METRICS)]


async def _health(service: OmniChannelService, url: str) -> list[str]:
    """One line per plugin section of ``GET /health``: its state and the breakers it reports."""
    async with service.http.get(url) as response:
        document = await response.json()
    lines = []
    for name, section in document["plugins"].items():
        state = "degraded" if name in document["degraded"] else "ok"
        breakers = ", ".join(f"{b['breaker']} {b['state']}" for b in section.get("breakers", ()))
        lines.append(f"{name}: {state}" + (f" (breakers: {breakers})" if breakers else ""))
    return lines


async def _stats(service: OmniChannelService, url: str) -> list[str]:
    """The store's report of the campaign (nothing when the store plugin is not there)."""
    async with service.http.get(url) as response:
        if response.status != 200:
            return []
        document = await response.json()
    stats = document["messages"]

    def rate(name: str) -> str:
        value = stats[name]
        return "-" if value is None else f"{value * 100:.0f}%"

    def latency(name: str) -> str:
        p50, p95 = stats[name]["p50"], stats[name]["p95"]
        return "-" if p50 is None else f"p50 {p50:.2f} s, p95 {p95:.2f} s"

    lines = [
        f"messages {stats['total']}, delivered {stats['delivered']}, read {stats['read']}, "
        f"failed {stats['failed']}",
        f"delivery rate {rate('delivery_rate')}, read rate {rate('read_rate')}",
        f"send to delivered {latency('to_delivered')}; send to read {latency('to_read')}",
    ]
    errors = ", ".join(f"{e['code']} x{e['count']}" for e in stats["by_error_code"])
    if errors:
        lines.append(f"error codes: {errors}")
    for row in document["templates"]:
        lines.append(
            f"template {row['template']} ({row['language']}): {row['total']} sent, "
            f"{row['delivered']} delivered, {row['read']} read, {row['failed']} failed"
        )
    return lines


def _summary(tracker: Tracker, counts: Counter[str], echo: Any) -> None:
    echo("\nsummary")
    rows = [
        ("accepted, no status yet", counts.get("accepted", 0)),
        ("sent", counts.get("sent", 0)),
        ("delivered", counts.get("delivered", 0)),
        ("read", counts.get("read", 0)),
        ("failed", counts.get("failed", 0)),
    ]
    for label, number in rows:
        echo(f"  {label:<24} {number:>3}")
    reasons = Counter(tracker.reasons.values())
    for reason, number in sorted(reasons.items()):
        echo(f"    failed: {reason:<18} {number:>3}")
    echo(f"  status webhooks received {tracker.webhooks:>3}")


@click.command("demo")
def demo_command() -> None:
    """Show the framework at work against a local WhatsApp sandbox (no account needed)."""
    asyncio.run(run_demo())
