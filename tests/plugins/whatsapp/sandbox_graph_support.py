"""Shared by the sandbox Graph API tests (``test_sandbox_graph_*.py``, ``test_sandbox_limits.py``).

A sandbox Graph API on a loopback port, a client session to call it, and Meta's shapes.

The fixtures are ``fixture_<name>`` functions registered with ``name=`` (as pytest's docs suggest):
a test module imports them (``# noqa: F401``) and its tests request them by name, without the
arguments shadowing the imports (ruff F811).
"""

from __future__ import annotations

import re

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from omnichannel import (
    Buttons,
    CurrencyParam,
    DateTimeParam,
    ListMenu,
    ListRow,
    ListSection,
    Media,
    MediaParam,
    ReplyButton,
    Secret,
    Template,
    TemplateButton,
    Text,
)
from omnichannel.testing import FakeClock
from omnichannel_whatsapp.client import GraphClient
from omnichannel_whatsapp.config import WhatsAppConfig
from omnichannel_whatsapp.sandbox.graph import graph_routes
from omnichannel_whatsapp.sandbox.seed import load_templates
from omnichannel_whatsapp.sandbox.state import SandboxSettings, SandboxState

SETTINGS = SandboxSettings()
TOKEN = SETTINGS.access_token
PNID = SETTINGS.phone_number_id
WABA = SETTINGS.waba_id
TO = "16505551234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRACE = re.compile(r"[A-Za-z0-9_-]{23}")
UNSUPPORTED = (
    "Unsupported {method} request. Object with ID '{id}' does not exist, cannot be loaded due to missing "
    "permissions, or does not support this operation. Please read the Graph API documentation at "
    "https://developers.facebook.com/docs/graph-api"
)


class Graph:
    """A sandbox Graph API on a loopback port, and a client session to call it."""

    def __init__(self, state: SandboxState, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.state = state
        self.server = server
        self.http = http

    def url(self, path: str) -> str:
        return str(self.server.make_url(f"/v23.0/{path.lstrip('/')}"))

    async def request(self, method, path, *, headers=AUTH, **kwargs):
        async with self.http.request(method, self.url(path), headers=headers, **kwargs) as response:
            return response.status, await response.json()

    async def send(self, body, *, headers=AUTH, phone_number_id=PNID):
        return await self.request("POST", f"{phone_number_id}/messages", json=body, headers=headers)

    def client(self, **overrides) -> GraphClient:
        settings = {
            "phone_number_id": PNID,
            "waba_id": WABA,
            "access_token": Secret(TOKEN),
            "base_url": str(self.server.make_url("")),
            **overrides,
        }
        return GraphClient(self.http, WhatsAppConfig(**settings))


async def start_graph(state: SandboxState, **routes):
    app = web.Application()
    app.add_routes(graph_routes(state, **routes))
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.fixture(name="clock")
def fixture_clock():
    return FakeClock()


@pytest.fixture(name="state")
def fixture_state(clock):
    sandbox = SandboxState(SandboxSettings(), clock=clock)
    sandbox.templates = load_templates(None)
    return sandbox


@pytest.fixture(name="graph")
async def fixture_graph(state):
    server = await start_graph(state)
    async with aiohttp.ClientSession() as http:
        yield Graph(state, server, http)
    await server.close()


def text_body(to=TO, **extra):
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}, **extra}


def error(code, message, *, details=None, subcode=None, error_type="OAuthException"):
    """Meta's envelope, without the random ``fbtrace_id``."""
    body = {"message": message, "type": error_type, "code": code}
    if subcode is not None:
        body["error_subcode"] = subcode
    if details is not None:
        body["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return body


def without_trace(answer):
    inner = dict(answer["error"])
    trace = inner.pop("fbtrace_id")
    assert TRACE.fullmatch(trace), trace
    assert list(answer) == ["error"]
    return inner


# Every kind of message the plugin builds: each is accepted, and each template is in the registry.
MESSAGES = {
    "text": Text("Your order shipped https://shop.example", preview_url=True),
    "image link": Media("image", url="https://cdn.example/a.jpg", caption="New"),
    "image id": Media("image", media_id="1234567890123456"),
    "video": Media("video", url="https://cdn.example/v.mp4", caption="Tour"),
    "audio": Media("audio", media_id="555"),
    "sticker": Media("sticker", url="https://cdn.example/s.webp"),
    "document": Media("document", media_id="1234", filename="invoice.pdf", caption="Your invoice"),
    "template positional": Template(
        "order_update",
        header=["#8899"],
        body=["Pablo", CurrencyParam("$12.50", "USD", 12500), "today"],
        buttons=[TemplateButton("url", 1, "8899")],
    ),
    "template pt_BR": Template(
        "order_update",
        language="pt_BR",
        header=["#8899"],
        body=["Pablo", "8899", "hoje"],
        buttons=[TemplateButton("url", 1, "8899"), TemplateButton("quick_reply", 0, "stop")],
    ),
    "template named": Template("welcome", body={"first_name": "Ann"}),
    "template image header": Template(
        "appointment_reminder",
        header=[MediaParam("image", link="https://cdn.example/clinic.jpg")],
        body=["Ann", DateTimeParam("March 3"), "10:30"],
    ),
    "template without parameters": Template("hello_world"),
    "template authentication": Template(
        "verification_code", body=["482913"], buttons=[TemplateButton("url", 0, "482913")]
    ),
    "buttons": Buttons(
        "Confirm?", [ReplyButton("yes", "Yes"), ReplyButton("no", "No")], header="Order 8899", footer="Thanks"
    ),
    "list": ListMenu(
        "Pick a slot",
        "Slots",
        [
            ListSection([ListRow("am", "Morning"), ListRow("pm", "Evening", "after 5 pm")], title="Today"),
            ListSection([ListRow("tomorrow", "Tomorrow")], title="Later"),
        ],
    ),
}


# Meta's error messages, shared by the send-body and the template errors.
INVALID = "(#100) Invalid parameter"
NOT_VALID = "(#131009) Parameter value is not valid"
