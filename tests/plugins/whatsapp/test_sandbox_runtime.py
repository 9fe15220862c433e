"""The WhatsApp sandbox's runtime: faults, status webhooks, the control API, the server and the CLI.

Everything runs on real loopback sockets. Where time matters the sandbox runs on a
``FakeClock`` (its sleeps return at once), and tests wait with ``dispatcher.drain()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import omnichannel_whatsapp
from omnichannel import (
    DeliveryStatus,
    Message,
    PluginSettings,
    Secret,
    ServiceConfig,
    StatusChanged,
    Text,
    TransientDeliveryError,
)
from omnichannel.server import make_app
from omnichannel.testing import EventRecorder, FakeClock, make_service
from omnichannel_whatsapp.sandbox import (
    Fault,
    FaultPlan,
    InvalidFault,
    Sandbox,
    SandboxSettings,
    SandboxState,
    sandbox_command,
)
from omnichannel_whatsapp.sandbox.webhooks import ERROR_HREF
from omnichannel_whatsapp.webhook import verify_signature

RECIPIENT = "16505551234"
SECRET = "sandbox-test-secret"


# ---------------------------------------------------------------- helpers


def stand_in_graph(state: SandboxState) -> list[web.RouteDef]:
    """A minimal send endpoint, standing in for graph.py's routes."""

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        to = body["to"]
        record = state.accept(body, "".join(ch for ch in to if ch.isdigit()))
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": record.recipient}],
                "messages": [{"id": record.wamid}],
            }
        )

    return [web.post("/{version}/{phone_number_id}/messages", send)]


def text_body(to: str = RECIPIENT, callback: str | None = "m-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}
    if callback is not None:
        body["biz_opaque_callback_data"] = callback
    return {**body, **extra}


def template_body(to: str = RECIPIENT) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"}},
        "biz_opaque_callback_data": "m-tpl",
    }


def settings(**changes: Any) -> SandboxSettings:
    return SandboxSettings(**{"app_secret": SECRET, **changes})


async def send(
    http: aiohttp.ClientSession, sandbox: Sandbox, body: dict[str, Any] | None = None
) -> aiohttp.ClientResponse:
    url = f"{sandbox.url}/v23.0/{sandbox.settings.phone_number_id}/messages"
    answer = await http.post(
        url, json=body or text_body(), headers={"Authorization": f"Bearer {sandbox.settings.access_token}"}
    )
    await answer.read()
    return answer


class Receiver:
    """A webhook endpoint: records each POST (raw body, headers) and answers from a script."""

    def __init__(self, fail_first: int = 0, token: str = "verify-me") -> None:
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        self.fail_first = fail_first
        """Answer 500 to the first N deliveries of each distinct body."""
        self.token = token
        self._seen: dict[bytes, int] = {}
        self.server: TestServer | None = None

    async def notify(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append((body, dict(request.headers)))
        self._seen[body] = self._seen.get(body, 0) + 1
        if self._seen[body] <= self.fail_first:
            return web.json_response({"error": "not now"}, status=500)
        return web.json_response({"status": "ok"})

    async def verify(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("hub.mode") == "subscribe" and query.get("hub.verify_token") == self.token:
            return web.Response(text=query["hub.challenge"])
        return web.Response(status=403)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/webhooks/whatsapp"))

    def statuses(self) -> list[tuple[str, str]]:
        found = []
        for body, _ in self.posts:
            for entry in json.loads(body)["entry"]:
                for change in entry["changes"]:
                    found += [(s["id"], s["status"]) for s in change["value"].get("statuses", [])]
        return found

    def status_objects(self) -> list[dict[str, Any]]:
        return [json.loads(body)["entry"][0]["changes"][0]["value"]["statuses"][0] for body, _ in self.posts]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks/whatsapp", recv.notify)
    app.router.add_get("/webhooks/whatsapp", recv.verify)
    recv.server = TestServer(app, host="127.0.0.1")
    await recv.server.start_server()
    try:
        yield recv
    finally:
        await recv.server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------- faults


async def test_a_burst_of_three_503_then_the_api_recovers(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        fault_id = sandbox.faults.add(Fault("error", http_status=503, code=2, remaining=3))
        answers = [await send(http, sandbox) for _ in range(4)]
        assert [a.status for a in answers] == [503, 503, 503, 200]
        error = (await answers[0].json())["error"]
        assert error["code"] == 2
        assert error["type"] == "OAuthException"
        assert error["message"] == "(#2) Service temporarily unavailable"
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert error["fbtrace_id"].startswith("A")
        assert sandbox.state.counters["fault.error"] == 3
        assert fault_id not in sandbox.faults.faults  # the burst is spent
        assert len(sandbox.state.messages) == 1  # only the fourth reached the Graph routes


async def test_an_error_fault_can_carry_a_retry_after_and_other_codes(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(
            Fault("error", http_status=429, code=130429, retry_after_s=2, is_transient=True, remaining=1)
        )
        sandbox.faults.add(Fault("error", http_status=500, code=131000, message="Boom", remaining=1))
        first, second = await send(http, sandbox), await send(http, sandbox)
        assert first.status == 429
        assert first.headers["Retry-After"] == "2"
        assert (await first.json())["error"]["is_transient"] is True
        assert (await first.json())["error"]["message"] == "(#130429) Rate limit hit"
        assert second.status == 500
        assert (await second.json())["error"]["message"] == "(#131000) Boom"


async def statuses_under(seed: int, http: aiohttp.ClientSession, count: int = 24) -> list[int]:
    async with Sandbox(settings(seed=seed), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("error", http_status=500, code=131000, probability=0.5))
        return [(await send(http, sandbox)).status for _ in range(count)]


async def test_probability_faults_are_reproducible_with_a_seed(http):
    first = await statuses_under(7, http)
    assert first == await statuses_under(7, http)
    assert set(first) == {200, 500}
    assert first != await statuses_under(8, http)


def test_fault_plan_windows_bursts_and_order():
    clock = FakeClock()
    plan = FaultPlan(SandboxState(SandboxSettings(), clock=clock))
    windowed = plan.add(Fault("error", until_s=10.0))
    burst = plan.add(Fault("drop", remaining=2))
    assert plan.decide() == Fault("error", until_s=10.0)  # the first added wins
    clock.advance(10.0)
    assert windowed not in plan.faults
    assert [plan.decide(), plan.decide(), plan.decide()] == [
        Fault("drop", remaining=2),
        Fault("drop", remaining=1),
        None,
    ]
    assert burst not in plan.faults
    plan.add(Fault("latency", latency_s=1, probability=0.0))
    assert plan.decide() is None
    assert plan.clear() == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "boom"}, "kind"),
        ({}, "kind"),
        ({"kind": "error", "probability": 2}, "probability"),
        ({"kind": "error", "http_status": 200}, "http_status"),
        ({"kind": "error", "code": "2"}, "code"),
        ({"kind": "error", "remaining": 0}, "remaining"),
        ({"kind": "latency", "latency_s": -1}, "latency_s"),
        ({"kind": "error", "colour": "red"}, "colour"),
        ([1, 2], "body"),
    ],
)
def test_a_bad_fault_description_names_the_field(data, field):
    with pytest.raises(InvalidFault) as info:
        Fault.from_json(data)
    assert info.value.field == field


def test_a_fault_from_json_with_a_duration():
    fault = Fault.from_json({"kind": "error", "http_status": 500, "code": 131000, "for_s": 5}, now=100.0)
    assert fault == Fault("error", http_status=500, code=131000, until_s=105.0)


async def test_a_latency_fault_waits_on_the_sandbox_clock(http):
    clock = FakeClock()
    async with Sandbox(settings(), clock=clock, graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("latency", latency_s=2.5, remaining=1))
        answer = await send(http, sandbox)
        assert answer.status == 200
        assert clock.sleeps == [2.5]
        assert clock.monotonic() == 2.5
        assert sandbox.state.counters["fault.latency"] == 1
        assert len(sandbox.state.messages) == 1


async def test_a_real_latency_fault_delays_the_answer(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("latency", latency_s=0.1))
        started = time.monotonic()
        assert (await send(http, sandbox)).status == 200
        assert time.monotonic() - started >= 0.1


async def test_a_timeout_fault_never_answers_and_the_sandbox_still_stops_at_once(http):
    sandbox = Sandbox(settings(), graph=stand_in_graph)
    await sandbox.start()
    try:
        sandbox.faults.add(Fault("timeout"))
        url = f"{sandbox.url}/v23.0/{sandbox.settings.phone_number_id}/messages"
        with pytest.raises(TimeoutError):
            await http.post(url, json=text_body(), timeout=aiohttp.ClientTimeout(total=0.2))
        assert sandbox.state.counters["fault.timeout"] == 1
        # the control API is never faulted
        async with http.get(f"{sandbox.url}/_sandbox/health") as health:
            assert health.status == 200
    finally:
        started = time.monotonic()
        await sandbox.stop()
    assert time.monotonic() - started < 1.0
    assert sandbox.state.messages == []


async def test_a_drop_fault_closes_the_connection_without_an_answer(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("drop", remaining=1))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await send(http, sandbox)
        assert sandbox.state.counters["fault.drop"] == 1
        assert (await send(http, sandbox)).status == 200


# ---------------------------------------------------------------- control API


async def test_the_control_api_adds_removes_and_clears_faults_and_resets(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        control = f"{sandbox.url}/_sandbox"
        async with http.get(f"{control}/health") as answer:
            assert await answer.json() == {"status": "ok"}

        async with http.post(f"{control}/faults", json={"kind": "error", "code": 133004}) as answer:
            assert answer.status == 201
            first = (await answer.json())["id"]
        async with http.post(f"{control}/faults", json={"kind": "drop", "probability": 0.0}) as answer:
            second = (await answer.json())["id"]
        async with http.get(f"{control}/faults") as answer:
            listed = (await answer.json())["faults"]
        assert list(listed) == [first, second]
        assert listed[first]["code"] == 133004

        failed = await send(http, sandbox)
        assert (failed.status, (await failed.json())["error"]["code"]) == (503, 133004)

        async with http.delete(f"{control}/faults/{first}") as answer:
            assert answer.status == 200
        async with http.delete(f"{control}/faults/{first}") as answer:
            assert answer.status == 404
            assert (await answer.json())["error"]["field"] == "id"
        assert (await send(http, sandbox)).status == 200
        assert (await send(http, sandbox, text_body(callback="m-2"))).status == 200

        async with http.get(f"{control}/messages", params={"since": "1"}) as answer:
            page = await answer.json()
        assert page["next"] == 2
        assert [(m["index"], m["body"]["biz_opaque_callback_data"]) for m in page["messages"]] == [(1, "m-2")]
        assert page["messages"][0]["wamid"].startswith("wamid.")
        async with http.get(f"{control}/stats") as answer:
            stats = await answer.json()
        assert stats["counters"]["fault.error"] == 1
        assert stats["messages"] == 2
        assert stats["faults"] == 1

        async with http.delete(f"{control}/faults") as answer:
            assert await answer.json() == {"removed": 1}
        sandbox.faults.add(Fault("error"))
        async with http.post(f"{control}/reset") as answer:
            assert answer.status == 200
        assert sandbox.state.messages == []
        assert sandbox.state.webhooks == []
        assert not sandbox.state.counters
        assert len(sandbox.faults) == 0
        assert (await send(http, sandbox)).status == 200


async def test_the_control_api_answers_bad_input_with_400_naming_the_field(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        control = f"{sandbox.url}/_sandbox"
        cases = [
            ({"kind": "boom"}, "kind"),
            ({"kind": "error", "probability": "often"}, "probability"),
            ({"kind": "error", "until": 3}, "until"),
            ("not json", "body"),
        ]
        for data, field in cases:
            raw = data.encode() if isinstance(data, str) else json.dumps(data).encode()
            async with http.post(f"{control}/faults", data=raw) as answer:
                assert answer.status == 400
                error = (await answer.json())["error"]
                assert error["field"] == field
                assert field in error["message"]
        async with http.get(f"{control}/messages", params={"since": "x"}) as answer:
            assert answer.status == 400
            assert (await answer.json())["error"]["field"] == "since"
        async with http.post(f"{control}/drain", json={"timeout_s": -1}) as answer:
            assert (await answer.json())["error"]["field"] == "timeout_s"
        async with http.post(f"{control}/handshake", json={}) as answer:
            assert (await answer.json())["error"]["field"] == "verify_token"
        assert len(sandbox.faults) == 0


# ---------------------------------------------------------------- webhooks


def assert_signed(body: bytes, headers: dict[str, str], secret: str = SECRET) -> None:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected
    verify_signature(body, headers["X-Hub-Signature-256"], Secret(secret))  # the plugin's own check
    assert headers["Content-Type"] == "application/json"
    assert body == json.dumps(json.loads(body), ensure_ascii=True).encode()


async def test_the_status_ladder_is_signed_and_carries_the_callback_data(http, receiver):
    clock = FakeClock()
    config = settings(webhook_url=receiver.url, read_probability=1.0, delivered_after_s=3, read_after_s=10)
    async with Sandbox(config, clock=clock, graph=stand_in_graph) as sandbox:
        answer = await send(http, sandbox)
        wamid = (await answer.json())["messages"][0]["id"]
        await sandbox.dispatcher.drain(timeout_s=5)
        assert receiver.statuses() == [(wamid, "sent"), (wamid, "delivered"), (wamid, "read")]
        assert clock.sleeps == [3, 7]
        for body, headers in receiver.posts:
            assert_signed(body, headers)
            notification = json.loads(body)
            assert notification["object"] == "whatsapp_business_account"
            assert notification["entry"][0]["id"] == sandbox.settings.waba_id
            value = notification["entry"][0]["changes"][0]["value"]
            assert value["metadata"]["phone_number_id"] == sandbox.settings.phone_number_id
        sent, delivered, read = receiver.status_objects()
        start = int(sandbox.state.messages[0].received_at.timestamp())
        assert [s["timestamp"] for s in (sent, delivered, read)] == [
            str(start),
            str(start + 3),
            str(start + 10),
        ]
        for status in (sent, delivered, read):
            assert status["recipient_id"] == RECIPIENT
            assert status["biz_opaque_callback_data"] == "m-1"
        assert sent["pricing"] == {
            "billable": False,
            "pricing_model": "PMP",
            "type": "free_customer_service",
            "category": "service",
        }
        assert "expiration_timestamp" in sent["conversation"]
        assert "expiration_timestamp" not in delivered["conversation"]
        assert sent["conversation"]["id"] == delivered["conversation"]["id"]
        assert "pricing" not in read
        assert "conversation" not in read
        records = sandbox.state.webhooks
        assert [(r.statuses, r.answer_status) for r in records] == [
            ([(wamid, "sent")], 200),
            ([(wamid, "delivered")], 200),
            ([(wamid, "read")], 200),
        ]
        assert sandbox.state.counters["webhooks.sent"] == 3
        assert sandbox.dispatcher.pending == 0


async def test_unread_messages_stop_at_delivered_and_templates_are_billed(http, receiver):
    sandbox = Sandbox(
        settings(webhook_url=receiver.url, read_probability=0.0), clock=FakeClock(), graph=stand_in_graph
    )
    sandbox.state.templates = [{"name": "order_update", "language": "en_US", "category": "MARKETING"}]
    async with sandbox:
        await send(http, sandbox, template_body())
        await sandbox.dispatcher.drain(timeout_s=5)
    assert [s for _, s in receiver.statuses()] == ["sent", "delivered"]
    sent = receiver.status_objects()[0]
    assert sent["pricing"]["category"] == "marketing"
    assert sent["pricing"]["billable"] is True
    assert sent["conversation"]["origin"] == {"type": "marketing"}


async def test_recipients_not_on_whatsapp_or_outside_the_window_fail_by_webhook(http, receiver):
    config = settings(webhook_url=receiver.url, read_probability=0.0)
    async with Sandbox(config, clock=FakeClock(), graph=stand_in_graph) as sandbox:
        missing = sandbox.settings.not_on_whatsapp[0]
        closed = sandbox.settings.outside_window[0]
        assert (await send(http, sandbox, text_body(missing, callback="m-404"))).status == 200
        await sandbox.dispatcher.drain(timeout_s=5)
        await send(http, sandbox, text_body(closed, callback="m-424"))
        await sandbox.dispatcher.drain(timeout_s=5)
        await send(http, sandbox, template_body(closed))
        await sandbox.dispatcher.drain(timeout_s=5)
    statuses = receiver.status_objects()
    assert [(s["recipient_id"], s["status"]) for s in statuses] == [
        (missing, "failed"),
        (closed, "failed"),
        (closed, "sent"),
        (closed, "delivered"),
    ]
    gone, late = statuses[0], statuses[1]
    assert gone["biz_opaque_callback_data"] == "m-404"
    assert gone["errors"] == [
        {
            "code": 131026,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": {"details": "Message Undeliverable."},
            "href": ERROR_HREF,
        }
    ]
    assert "pricing" not in gone
    assert "conversation" not in gone
    assert late["errors"][0]["code"] == 131047
    assert late["errors"][0]["title"] == "Re-engagement message"
    assert "24 hours" in late["errors"][0]["error_data"]["details"]


async def test_every_webhook_can_be_duplicated_and_pairs_reordered(http, receiver):
    config = settings(
        webhook_url=receiver.url, read_probability=1.0, duplicate_probability=1.0, reorder_probability=1.0
    )
    async with Sandbox(config, clock=FakeClock(), graph=stand_in_graph) as sandbox:
        await send(http, sandbox)
        await sandbox.dispatcher.drain(timeout_s=5)
        wamid = sandbox.state.messages[0].wamid
    # sent is held back until delivered is out; read follows; every one twice, byte for byte
    assert receiver.statuses() == [
        (wamid, "delivered"),
        (wamid, "delivered"),
        (wamid, "sent"),
        (wamid, "sent"),
        (wamid, "read"),
        (wamid, "read"),
    ]
    bodies = [body for body, _ in receiver.posts]
    assert bodies[0] == bodies[1]
    assert bodies[2] == bodies[3]
    sent = receiver.status_objects()[2]
    assert int(sent["timestamp"]) <= int(receiver.status_objects()[0]["timestamp"])


async def seeded_run(seed: int, http: aiohttp.ClientSession, url: str) -> list[tuple[int, str]]:
    config = settings(
        webhook_url=url, seed=seed, read_probability=0.5, duplicate_probability=0.3, reorder_probability=0.3
    )
    async with Sandbox(config, clock=FakeClock(), graph=stand_in_graph) as sandbox:
        for n in range(12):
            await send(http, sandbox, text_body(callback=f"m-{n}"))
            await sandbox.dispatcher.drain(timeout_s=5)
        index = {m.wamid: i for i, m in enumerate(sandbox.state.messages)}
        return [(index[wamid], status) for r in sandbox.state.webhooks for wamid, status in r.statuses]


def has_duplicates_and_reordering(run: list[tuple[int, str]]) -> tuple[bool, bool]:
    rank = {"sent": 1, "delivered": 2, "read": 3}
    duplicates = any(a == b for a, b in itertools.pairwise(run))
    reordered = any(a[0] == b[0] and rank[a[1]] > rank[b[1]] for a, b in itertools.pairwise(run))
    return duplicates, reordered


async def test_duplicates_and_reordering_are_reproducible_with_a_seed(http, receiver):
    first = await seeded_run(3, http, receiver.url)
    assert first == await seeded_run(3, http, receiver.url)
    assert has_duplicates_and_reordering(first) == (True, True)
    assert first != await seeded_run(4, http, receiver.url)


async def test_failed_deliveries_are_retried_with_exponential_back_off(http, receiver):
    receiver.fail_first = 2
    clock = FakeClock()
    config = settings(webhook_url=receiver.url, read_probability=0.0, delivered_after_s=0.5)
    async with Sandbox(config, clock=clock, graph=stand_in_graph) as sandbox:
        await send(http, sandbox)
        await sandbox.dispatcher.drain(timeout_s=5)
        wamid = sandbox.state.messages[0].wamid
        by_status: dict[str, list[int | None]] = {}
        for record in sandbox.state.webhooks:
            [(_, status)] = record.statuses
            by_status.setdefault(status, []).append(record.answer_status)
        assert by_status == {"sent": [500, 500, 200], "delivered": [500, 500, 200]}
        assert sandbox.state.webhooks[0].error == "answered HTTP 500"
        counters = sandbox.state.counters
        assert (counters["webhooks.sent"], counters["webhooks.failed"], counters["webhooks.retried"]) == (
            2,
            4,
            4,
        )
    assert sorted(clock.sleeps) == [0.5, 1.0, 1.0, 2.0, 2.0]
    # every attempt carries the same bytes and signature
    assert len({body for body, _ in receiver.posts}) == 2
    assert sorted(set(receiver.statuses())) == [(wamid, "delivered"), (wamid, "sent")]


async def test_an_unreachable_receiver_is_retried_then_given_up(http):
    url = f"http://127.0.0.1:{free_port()}/webhooks/whatsapp"
    config = settings(webhook_url=url, not_on_whatsapp=(RECIPIENT,))
    async with Sandbox(config, clock=FakeClock(), graph=stand_in_graph) as sandbox:
        sandbox.dispatcher.max_attempts = 3
        await send(http, sandbox)
        await sandbox.dispatcher.drain(timeout_s=5)
        records = sandbox.state.webhooks
        assert len(records) == 3
        assert all(r.answer_status is None and r.error for r in records)
        assert sandbox.state.counters["webhooks.gave_up"] == 1
        assert sandbox.state.counters["webhooks.failed"] == 3


async def test_stopping_cancels_pending_webhooks(http, receiver):
    config = settings(webhook_url=receiver.url, delivered_after_s=60)
    async with Sandbox(config, graph=stand_in_graph) as sandbox:
        await send(http, sandbox)
        for _ in range(100):
            if receiver.posts:
                break
            await asyncio.sleep(0.01)
        assert sandbox.dispatcher.pending == 1  # delivered is a minute away
        with pytest.raises(TimeoutError):
            await sandbox.dispatcher.drain(timeout_s=0.05)
    assert sandbox.dispatcher.pending == 0
    assert receiver.statuses() == [(sandbox.state.messages[0].wamid, "sent")]


async def test_no_webhook_url_sends_none_and_it_can_be_set_later(http, receiver):
    async with Sandbox(settings(read_probability=0.0), clock=FakeClock(), graph=stand_in_graph) as sandbox:
        await send(http, sandbox)
        assert sandbox.dispatcher.pending == 0
        sandbox.set_webhook_url(receiver.url)
        await send(http, sandbox)
        await sandbox.dispatcher.drain(timeout_s=5)
    assert [s for _, s in receiver.statuses()] == ["sent", "delivered"]


async def test_the_verification_handshake(http, receiver):
    async with Sandbox(settings(webhook_url=receiver.url), graph=stand_in_graph) as sandbox:
        assert await sandbox.dispatcher.handshake("verify-me") is True
        assert await sandbox.dispatcher.handshake("wrong") is False
        async with http.post(
            f"{sandbox.url}/_sandbox/handshake", json={"verify_token": "verify-me"}
        ) as answer:
            assert await answer.json() == {"ok": True}
        assert sandbox.state.counters["handshake.ok"] == 2
        assert sandbox.state.counters["handshake.failed"] == 1


async def test_the_control_api_shows_webhooks_and_drains(http, receiver):
    config = settings(webhook_url=receiver.url, read_probability=0.0)
    async with Sandbox(config, clock=FakeClock(), graph=stand_in_graph) as sandbox:
        await send(http, sandbox)
        async with http.post(f"{sandbox.url}/_sandbox/drain", json={"timeout_s": 5}) as answer:
            assert await answer.json() == {"drained": True, "pending_webhooks": 0}
        async with http.get(f"{sandbox.url}/_sandbox/webhooks", params={"since": 1}) as answer:
            page = await answer.json()
    assert page["next"] == 2
    [shown] = page["webhooks"]
    assert shown["statuses"] == [[sandbox.state.messages[0].wamid, "delivered"]]
    assert shown["answer_status"] == 200
    assert shown["body"]["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] == "delivered"


# ---------------------------------------------------------------- the server


async def test_the_sandbox_starts_quickly_on_a_free_port_and_stops_cleanly(http):
    sandbox = Sandbox(graph=stand_in_graph)
    with pytest.raises(RuntimeError):
        _ = sandbox.url
    started = time.monotonic()
    await sandbox.start()
    assert time.monotonic() - started < 0.5
    url = sandbox.url
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    assert port > 0
    assert sandbox.settings.port == port
    assert sandbox.plugin_settings()["base_url"] == url
    assert sandbox.dispatcher.running
    async with http.get(f"{url}/_sandbox/health") as answer:
        assert answer.status == 200
    await sandbox.stop()
    assert not sandbox.dispatcher.running
    assert sandbox.dispatcher.http is None or sandbox.dispatcher.http.closed
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"{url}/_sandbox/health")
    await sandbox.stop()  # twice is harmless
    with pytest.raises(RuntimeError):
        await sandbox.start()


async def test_a_taken_port_fails_to_start_cleanly():
    async with Sandbox(graph=stand_in_graph) as first:
        port = first.settings.port
        second = Sandbox(SandboxSettings(port=port), graph=stand_in_graph)
        with pytest.raises(OSError, match="address already in use"):
            await second.start()
        assert not second.started


# ---------------------------------------------------------------- end to end, with the real Graph routes


async def test_end_to_end_the_plugin_sends_and_gets_its_statuses_back():
    events = EventRecorder()
    async with Sandbox(SandboxSettings(read_probability=1.0), clock=FakeClock()) as sandbox:
        plugin = sandbox.plugin_settings(verify_token="verify-me")
        config = ServiceConfig(plugins={"whatsapp": PluginSettings(settings=plugin)})
        service = make_service(("whatsapp", omnichannel_whatsapp), events, config=config)
        server = TestServer(make_app(service), host="127.0.0.1")
        await server.start_server()
        try:
            sandbox.set_webhook_url(str(server.make_url("/webhooks/whatsapp")))
            assert await sandbox.dispatcher.handshake("verify-me")
            receipt = await service.send(
                Message(f"+{RECIPIENT}", Text("hello"), channel="whatsapp", id="m-1")
            )
            [accepted] = sandbox.state.messages
            assert receipt.provider_message_id == accepted.wamid
            assert accepted.body["biz_opaque_callback_data"] == "m-1"
            await sandbox.dispatcher.drain(timeout_s=5)
            assert all(r.answer_status == 200 for r in sandbox.state.webhooks)
            changes = events.of_type(StatusChanged)
            assert [(e.message_id, e.provider_message_id, e.status) for e in changes] == [
                ("m-1", accepted.wamid, DeliveryStatus.SENT),
                ("m-1", accepted.wamid, DeliveryStatus.DELIVERED),
                ("m-1", accepted.wamid, DeliveryStatus.READ),
            ]
            assert changes[0].details["pricing"]["pricing_model"] == "PMP"

            # an outage: the plugin sees a transient error, then the API is back
            sandbox.faults.add(Fault("error", http_status=503, code=2, remaining=1))
            with pytest.raises(TransientDeliveryError):
                await service.send(Message(f"+{RECIPIENT}", Text("again"), channel="whatsapp", id="m-2"))
            assert (
                await service.send(Message(f"+{RECIPIENT}", Text("again"), channel="whatsapp", id="m-3"))
            ).ok
            await sandbox.dispatcher.drain(timeout_s=5)
            assert {e.message_id for e in events.of_type(StatusChanged)} == {"m-1", "m-3"}

            # a recipient that is not on WhatsApp: accepted, then failed by webhook
            gone = sandbox.settings.not_on_whatsapp[0]
            await service.send(Message(f"+{gone}", Text("hi"), channel="whatsapp", id="m-404"))
            await sandbox.dispatcher.drain(timeout_s=5)
            [failed] = [e for e in events.of_type(StatusChanged) if e.message_id == "m-404"]
            assert failed.status is DeliveryStatus.FAILED
            assert failed.error is not None
            assert "131026" in failed.error.detail
        finally:
            await server.close()


def test_the_command_prints_the_settings_and_stops_on_sigint(tmp_path):
    code = "from omnichannel_whatsapp.sandbox import sandbox_command; sandbox_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--access-token", "tok-1", "--error-rate", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or lines[-1].strip() != "Stop with Ctrl-C.":
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "no output"
            lines.append(line)
        text = "".join(lines)
        url = lines[0].split(" on ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        assert "[plugins.whatsapp]" in text
        assert f'base_url = "{url}"' in text
        assert 'access_token = "tok-1"' in text
        assert f'phone_number_id = "{SandboxSettings().phone_number_id}"' in text
        assert f'waba_id = "{SandboxSettings().waba_id}"' in text
        faults = get_json(f"{url}/_sandbox/faults")["faults"]
        assert [f["probability"] for f in faults.values()] == [0.5]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def test_the_command_is_a_click_command():
    assert sandbox_command.name == "sandbox"
    names = {p.name for p in sandbox_command.params}
    assert {
        "host",
        "port",
        "seed_file",
        "webhook_url",
        "app_secret",
        "access_token",
        "throughput",
        "latency_ms",
        "error_rate",
        "seed",
    } <= names
