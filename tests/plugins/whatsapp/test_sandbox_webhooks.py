"""The WhatsApp sandbox's status webhooks (webhooks.py): signed, duplicated, reordered, retried.

Everything runs on real loopback sockets. Where time matters the sandbox runs on a
``FakeClock`` (its sleeps return at once), and tests wait with ``dispatcher.drain()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sandbox_runtime_support import (
    RECIPIENT,
    SECRET,
    fixture_http,  # noqa: F401  (the fixture)
    send,
    settings,
    stand_in_graph,
    text_body,
)

from omnichannel import Secret
from omnichannel.testing import FakeClock
from omnichannel_whatsapp.sandbox import Sandbox
from omnichannel_whatsapp.sandbox.webhooks import ERROR_HREF
from omnichannel_whatsapp.webhook import verify_signature


def template_body(to: str = RECIPIENT) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"}},
        "biz_opaque_callback_data": "m-tpl",
    }


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


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
