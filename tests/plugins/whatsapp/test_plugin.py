"""The wired WhatsApp plugin: through the service, the server and the CLI, against a local Graph API."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

import omnichannel_whatsapp
from omnichannel import (
    Buttons,
    DeliveryStatus,
    Media,
    Message,
    MessageValidationError,
    PermanentDeliveryError,
    PluginSettings,
    RateLimitedError,
    ReplyButton,
    SenderUnavailableError,
    ServiceConfig,
    StatusChanged,
    Template,
    Text,
)
from omnichannel.cli import cli
from omnichannel.server import make_app
from omnichannel.testing import ChannelPluginConformance, EventRecorder, make_service

PHONE_ID = "123"
WABA_ID = "999"
NOT_ON_WHATSAPP = "15550000001"
THROTTLED = "15550000002"

TEMPLATES = [
    {
        "id": "1",
        "name": "order_update",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "parameter_format": "POSITIONAL",
        "components": [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} ships today."}],
    },
    {
        "id": "2",
        "name": "order_update",
        "language": "pt_BR",
        "status": "APPROVED",
        "category": "UTILITY",
        "parameter_format": "POSITIONAL",
        "components": [{"type": "BODY", "text": "Oi {{1}}, pedido {{2}}."}],
    },
]


def graph_error(code: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"(#{code}) {message}",
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "A1",
        }
    }


class FakeGraph(ThreadingHTTPServer):
    """A stand-in for graph.facebook.com on loopback, in a thread (usable from sync and async code)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sent: list[dict[str, Any]] = []
        self.authorizations: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeGraph

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization", ""))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != f"/v23.0/{PHONE_ID}/messages":
            self._answer(400, graph_error(100, "Unsupported post request."))
        elif body["to"] == NOT_ON_WHATSAPP:
            self._answer(400, graph_error(131026, "Message undeliverable"))
        elif body["to"] == THROTTLED:
            self._answer(400, graph_error(130429, "Rate limit hit"))
        else:
            self.server.sent.append(body)
            wamid = f"wamid.TEST{len(self.server.sent)}"
            self._answer(
                200,
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                    "messages": [{"id": wamid, "message_status": "accepted"}],
                },
            )

    def do_GET(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization", ""))
        if self.path.startswith(f"/v23.0/{WABA_ID}/message_templates"):
            self._answer(200, {"data": TEMPLATES, "paging": {"cursors": {"before": "a", "after": "b"}}})
        elif self.path.startswith(f"/v23.0/{PHONE_ID}"):
            self._answer(
                200, {"verified_name": "Test Shop", "display_phone_number": "+1 555 0100", "id": PHONE_ID}
            )
        else:
            self._answer(400, graph_error(100, "Unsupported get request."))


@pytest.fixture(scope="module")
def graph() -> Iterator[FakeGraph]:
    server = FakeGraph()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _fresh(graph: FakeGraph) -> None:
    graph.sent.clear()
    graph.authorizations.clear()


def settings(graph_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "phone_number_id": PHONE_ID,
        "access_token": "EAAG-test-token",
        "base_url": graph_url,
        "app_secret": "app-secret",
        "verify_token": "verify-me",
        **extra,
    }


def whatsapp_service(graph_url: str, *plugins: object, **extra: Any):
    config = ServiceConfig(plugins={"whatsapp": PluginSettings(settings=settings(graph_url, **extra))})
    return make_service(("whatsapp", omnichannel_whatsapp), *plugins, config=config)


class TestWhatsAppConformance(ChannelPluginConformance):
    channel = "whatsapp"

    @pytest.fixture(autouse=True)
    def _graph(self, graph: FakeGraph) -> None:
        self.graph_url = graph.url

    def make_plugin(self) -> object:
        return omnichannel_whatsapp

    def service_config(self) -> ServiceConfig:
        return ServiceConfig(plugins={"plugin-under-test": PluginSettings(settings=settings(self.graph_url))})

    def valid_messages(self) -> list[Message]:
        return [
            Message("+16505551234", Text("hello"), channel="whatsapp", id="m-text"),
            Message(
                "+16505551234", Template("order_update", body=["Ann", "8899"]), channel="whatsapp", id="m-tpl"
            ),
            Message(
                "+16505551234",
                Media("image", url="https://example.com/a.jpg"),
                channel="whatsapp",
                id="m-img",
            ),
            Message(
                "+16505551234",
                Buttons("Confirm?", [ReplyButton("yes", "Yes")]),
                channel="whatsapp",
                id="m-buttons",
            ),
        ]

    def invalid_messages(self) -> list[Message]:
        return [
            Message("not a number", Text("hello"), channel="whatsapp"),
            Message("+16505551234", Text("x" * 4097), channel="whatsapp"),
        ]

    def failure_cases(self) -> list[tuple[Message, type[Exception]]]:
        return [
            (Message(f"+{NOT_ON_WHATSAPP}", Text("hi"), channel="whatsapp"), PermanentDeliveryError),
            (Message(f"+{THROTTLED}", Text("hi"), channel="whatsapp"), RateLimitedError),
        ]


async def test_a_send_returns_the_wamid_and_carries_our_id_for_the_webhooks(graph):
    async with whatsapp_service(graph.url) as service:
        receipt = await service.send(Message("+16505551234", Text("hello"), channel="whatsapp", id="m-1"))
    assert receipt.provider_message_id == "wamid.TEST1"
    assert receipt.provider_status == "accepted"
    [body] = graph.sent
    assert body["biz_opaque_callback_data"] == "m-1"
    assert body["to"] == "16505551234"
    assert graph.authorizations == ["Bearer EAAG-test-token"]


async def test_without_credentials_the_channel_says_what_to_set(graph):
    config = ServiceConfig(plugins={"whatsapp": PluginSettings(settings={"base_url": graph.url})})
    async with make_service(("whatsapp", omnichannel_whatsapp), config=config) as service:
        with pytest.raises(SenderUnavailableError) as info:
            await service.send(Message("+16505551234", Text("hello"), channel="whatsapp"))
    assert "plugins.whatsapp.phone_number_id" in str(info.value)
    assert "plugins.whatsapp.access_token" in str(info.value)
    assert graph.sent == []


async def test_a_template_that_does_not_match_is_refused_before_sending(graph):
    async with whatsapp_service(graph.url, waba_id=WABA_ID) as service:
        with pytest.raises(MessageValidationError) as info:
            await service.send(
                Message("+16505551234", Template("order_update", body=["Ann"]), channel="whatsapp")
            )
        assert info.value.problems == [
            "content.body: template 'order_update' (en_US) expects 2 positional parameters, got 1"
        ]
        with pytest.raises(MessageValidationError) as info:
            await service.send(
                Message("+16505551234", Template("order_update", "de", body=["Ann", "1"]), channel="whatsapp")
            )
        assert info.value.problems[0].startswith(
            "content.language: template 'order_update' exists in en_US, pt_BR"
        )
        assert graph.sent == []
        receipt = await service.send(
            Message("+16505551234", Template("order_update", body=["Ann", "8899"]), channel="whatsapp")
        )
    assert receipt.ok
    assert len(graph.sent) == 1


async def test_a_signed_status_webhook_becomes_a_status_changed_event(graph):
    events = EventRecorder()
    service = whatsapp_service(graph.url, events)
    status = {
        "id": "wamid.TEST1",
        "status": "delivered",
        "timestamp": "1749416400",
        "recipient_id": "16505551234",
        "biz_opaque_callback_data": "m-1",
    }
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": {"statuses": [status]}}]}],
        }
    ).encode()
    signature = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    async with TestClient(TestServer(make_app(service))) as client:
        refused = await client.post(
            "/webhooks/whatsapp", data=body, headers={"X-Hub-Signature-256": "sha256=00"}
        )
        assert refused.status == 403
        for _ in range(2):  # Meta retries: the second delivery is a duplicate
            answer = await client.post(
                "/webhooks/whatsapp", data=body, headers={"X-Hub-Signature-256": signature}
            )
            assert answer.status == 200
        handshake = await client.get(
            "/webhooks/whatsapp",
            params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "42"},
        )
        assert await handshake.text() == "42"
    [event] = events.of_type(StatusChanged)
    assert (event.message_id, event.provider_message_id, event.status) == (
        "m-1",
        "wamid.TEST1",
        DeliveryStatus.DELIVERED,
    )


def test_cli_lists_templates_and_checks_the_configuration(graph, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("OMNICHANNEL_CONFIG", "OMNICHANNEL_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "omnichannel.toml"
    config.write_text(
        "[plugins.whatsapp]\n"
        + "".join(f'{key} = "{value}"\n' for key, value in settings(graph.url, waba_id=WABA_ID).items())
    )
    runner = CliRunner()
    listed = runner.invoke(cli, ["--config", str(config), "whatsapp", "templates", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "NAME          LANGUAGE  STATUS    CATEGORY",
        "order_update  en_US     APPROVED  UTILITY",
        "order_update  pt_BR     APPROVED  UTILITY",
    ]
    checked = runner.invoke(cli, ["--config", str(config), "whatsapp", "check"])
    assert checked.exit_code == 0, checked.output
    assert checked.output == "ok: Test Shop (+1 555 0100), quality unknown\n"
    sent = runner.invoke(
        cli,
        ["--config", str(config), "send", "--channel", "whatsapp", "--to", "+16505551234", "--text", "hi"],
    )
    assert sent.exit_code == 0, sent.output
    assert sent.output.startswith("accepted on whatsapp: message ")
    shown = runner.invoke(cli, ["--config", str(config), "config", "show"])
    assert "EAAG-test-token" not in shown.output
    assert "app-secret" not in shown.output
