"""The sandbox's Graph API (graph.py), limits (limits.py) and templates (seed.py), over real sockets."""

from __future__ import annotations

import hashlib
import json
import re

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from omnichannel import (
    Buttons,
    ConfigError,
    CurrencyParam,
    DateTimeParam,
    ListMenu,
    ListRow,
    ListSection,
    Media,
    MediaParam,
    Message,
    PermanentDeliveryError,
    RateLimitedError,
    ReplyButton,
    Secret,
    SenderUnavailableError,
    Template,
    TemplateButton,
    Text,
)
from omnichannel.testing import FakeClock
from omnichannel_whatsapp.client import GraphClient, SendResult
from omnichannel_whatsapp.config import WhatsAppConfig
from omnichannel_whatsapp.payload import build_payload
from omnichannel_whatsapp.sandbox.graph import GraphError, MediaStore, graph_error_response, graph_routes
from omnichannel_whatsapp.sandbox.limits import Limits
from omnichannel_whatsapp.sandbox.seed import load_templates, normalize_templates
from omnichannel_whatsapp.sandbox.state import SandboxSettings, SandboxState
from omnichannel_whatsapp.templates import (
    MemoryTemplateCache,
    TemplateRegistry,
    check_template,
    parse_template,
)
from omnichannel_whatsapp.validation import validate_message

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


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def state(clock):
    sandbox = SandboxState(SandboxSettings(), clock=clock)
    sandbox.templates = load_templates(None)
    return sandbox


@pytest.fixture
async def graph(state):
    server = await start_graph(state)
    async with aiohttp.ClientSession() as http:
        yield Graph(state, server, http)
    await server.close()


def text_body(to=TO, **extra):
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}, **extra}


def template_body(name, language="en_US", components=None):
    template = {"name": name, "language": {"code": language}}
    if components is not None:
        template["components"] = components
    return {"messaging_product": "whatsapp", "to": TO, "type": "template", "template": template}


def params(*values, kind="text"):
    return [{"type": "text", "text": v} if kind == "text" else v for v in values]


ORDER_UPDATE = [
    {"type": "header", "parameters": params("#8899")},
    {"type": "body", "parameters": params("Pablo", "8899", "today")},
    {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "8899"}]},
]


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


# ---------------------------------------------------------------- success, for every kind of message

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


@pytest.mark.parametrize("content", MESSAGES.values(), ids=MESSAGES.keys())
async def test_every_message_the_plugin_builds_is_accepted_with_metas_success_shape(graph, content):
    message = Message("+16505551234", content, id="m-1", reply_to="wamid.HBgLMTY1MDU")
    assert validate_message(message) == []
    body = build_payload(message).body

    status, answer = await graph.send(body)

    assert status == 200
    record = graph.state.messages[-1]
    expected_message = {"id": record.wamid}
    if isinstance(content, Template):
        expected_message["message_status"] = "accepted"
    assert answer == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": TO, "wa_id": TO}],
        "messages": [expected_message],
    }
    assert record.wamid.startswith("wamid.")
    assert record.body == body
    assert record.recipient == TO
    assert graph.state.counters == {"requests": 1, "accepted": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"type": "location", "location": {"latitude": 37.48, "longitude": -122.14, "name": "HQ"}},
        {"type": "contacts", "contacts": [{"name": {"formatted_name": "Ann Lee", "first_name": "Ann"}}]},
        {"type": "reaction", "reaction": {"message_id": "wamid.HBgL", "emoji": "\N{THUMBS UP SIGN}"}},
        {"type": "reaction", "reaction": {"message_id": "wamid.HBgL", "emoji": ""}},
        {
            "type": "interactive",
            "interactive": {
                "type": "cta_url",
                "body": {"text": "See the offer"},
                "action": {
                    "name": "cta_url",
                    "parameters": {"display_text": "Open", "url": "https://x.example"},
                },
            },
        },
        {
            "type": "template",
            "template": {
                "name": "order_update",
                "language": {"code": "en_US", "policy": "deterministic"},
                "components": [
                    {"type": "HEADER", "parameters": [{"type": "text", "text": "#1"}]},
                    {
                        "type": "BODY",
                        "parameters": [
                            {"type": "text", "text": "Ann"},
                            {
                                "type": "currency",
                                "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": 1000},
                            },
                            {"type": "date_time", "date_time": {"fallback_value": "today"}},
                        ],
                    },
                    {
                        "type": "button",
                        "sub_type": "URL",
                        "index": 1,
                        "parameters": [{"type": "text", "text": "1"}],
                    },
                ],
            },
        },
    ],
    ids=["location", "contacts", "reaction", "reaction removed", "cta_url", "template any case"],
)
async def test_other_message_kinds_are_accepted(graph, body):
    status, answer = await graph.send({"messaging_product": "whatsapp", "to": TO, **body})

    assert status == 200, answer
    assert answer["contacts"] == [{"input": TO, "wa_id": TO}]


async def test_the_input_is_echoed_and_the_wa_id_is_digits(graph):
    status, answer = await graph.send(text_body(to="+1 (650) 555-1234"))

    assert status == 200
    assert answer["contacts"] == [{"input": "+1 (650) 555-1234", "wa_id": TO}]
    assert graph.state.messages[-1].recipient == TO


async def test_a_business_scoped_user_id_is_answered_with_user_id(graph):
    body = text_body()
    del body["to"]
    body["recipient"] = "US.13491208655302741"

    status, answer = await graph.send(body)

    assert status == 200
    assert answer["contacts"] == [{"input": "US.13491208655302741", "user_id": "US.13491208655302741"}]


async def test_the_type_defaults_to_text_and_unknown_keys_are_tolerated(graph):
    body = text_body(future_field={"x": 1})
    del body["type"]

    status, _ = await graph.send(body)

    assert status == 200


async def test_mark_as_read_answers_success_and_records_no_message(graph):
    body = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.HBgL"}

    status, answer = await graph.send({**body, "typing_indicator": {"type": "text"}})

    assert (status, answer) == (200, {"success": True})
    assert graph.state.messages == []
    assert graph.state.counters["accepted"] == 0


async def test_wamids_are_unique(graph):
    ids = set()
    for _ in range(5):
        _, answer = await graph.send(text_body())
        ids.add(answer["messages"][0]["id"])
    assert len(ids) == 5


# ---------------------------------------------------------------- errors: auth and objects


async def test_a_missing_token_is_104(graph):
    status, answer = await graph.send(text_body(), headers={})

    assert status == 401
    assert without_trace(answer) == error(104, "An access token is required to request this resource.")
    assert graph.state.counters == {"requests": 1, "error.104": 1}


@pytest.mark.parametrize("header", ["Bearer wrong-token", "Bearer", "Basic abc", f"Bearer {TOKEN}x"])
async def test_a_wrong_token_is_190(graph, header):
    status, answer = await graph.send(text_body(), headers={"Authorization": header})

    assert status == 401
    assert without_trace(answer) == error(190, "Invalid OAuth access token - Cannot parse access token")
    assert graph.state.messages == []


async def test_the_token_may_come_as_access_token_parameter(graph):
    status, _ = await graph.request(
        "POST", f"{PNID}/messages", params={"access_token": TOKEN}, json=text_body(), headers={}
    )

    assert status == 200


async def test_an_unknown_phone_number_id_is_100_subcode_33(graph):
    status, answer = await graph.send(text_body(), phone_number_id="123")

    assert status == 400
    assert without_trace(answer) == error(
        100, UNSUPPORTED.format(method="post", id="123"), subcode=33, error_type="GraphMethodException"
    )


async def test_fbtrace_ids_are_random_per_error_and_follow_the_seed(clock):
    async def traces():
        state = SandboxState(SandboxSettings(seed=7), clock=clock)
        server = await start_graph(state)
        try:
            async with aiohttp.ClientSession() as http:
                graph = Graph(state, server, http)
                return [
                    (await graph.send(text_body(), headers={}))[1]["error"]["fbtrace_id"] for _ in range(3)
                ]
        finally:
            await server.close()

    first, second = await traces(), await traces()

    assert first == second
    assert len(set(first)) == 3


async def test_error_answers_carry_the_trace_header(graph):
    async with graph.http.post(graph.url(f"{PNID}/messages"), json=text_body()) as response:
        body = await response.json()
        assert response.headers["x-fb-trace-id"] == body["error"]["fbtrace_id"]
        assert response.headers["WWW-Authenticate"].startswith('OAuth "Facebook Platform" "invalid_token"')


# ---------------------------------------------------------------- errors: the send body

INVALID = "(#100) Invalid parameter"
NOT_VALID = "(#131009) Parameter value is not valid"
MISSING = "(#131008) Required parameter is missing"
TYPES = "AUDIO, CONTACTS, DOCUMENT, IMAGE, INTERACTIVE, LOCATION, REACTION, STICKER, TEMPLATE, TEXT, VIDEO"


def interactive(kind, action, **extra):
    return {
        "type": "interactive",
        "interactive": {"type": kind, "body": {"text": "Pick"}, "action": action, **extra},
    }


def reply_buttons(*titles):
    return {
        "buttons": [{"type": "reply", "reply": {"id": f"id-{i}", "title": t}} for i, t in enumerate(titles)]
    }


BODY_ERRORS = {
    "no messaging_product": (
        {"to": TO, "type": "text", "text": {"body": "hi"}},
        error(100, "(#100) The parameter messaging_product is required."),
    ),
    "wrong messaging_product": (
        {"messaging_product": "sms", "to": TO, "text": {"body": "hi"}},
        error(100, '(#100) Param messaging_product must be one of {WHATSAPP} - got "sms".'),
    ),
    "no to": (
        {"messaging_product": "whatsapp", "type": "text", "text": {"body": "hi"}},
        error(100, "(#100) The parameter to is required."),
    ),
    "to not a number": (
        text_body(to="ann@example.com"),
        error(
            100,
            INVALID,
            details="Param to must be a phone number with its country code, such as 16505551234, "
            "got 'ann@example.com'",
        ),
    ),
    "recipient is the sender": (
        text_body(to=SETTINGS.display_phone_number),
        error(
            131021,
            "(#131021) Recipient cannot be sender",
            details="Sender and recipient phone number is the same.",
        ),
    ),
    "unknown type": (
        {**text_body(), "type": "fax"},
        error(100, f'(#100) Param type must be one of {{{TYPES}}} - got "fax".'),
    ),
    "no text object": (
        {"messaging_product": "whatsapp", "to": TO, "type": "text"},
        error(100, "(#100) The parameter text['body'] is required."),
    ),
    "empty text body": (
        {**text_body(), "text": {"body": ""}},
        error(100, "(#100) The parameter text['body'] is required."),
    ),
    "text too long": (
        {**text_body(), "text": {"body": "x" * 4097}},
        error(100, "(#100) Param text['body'] must be at most 4096 characters long."),
    ),
    "callback data too long": (
        text_body(biz_opaque_callback_data="x" * 513),
        error(100, "(#100) Param biz_opaque_callback_data must be at most 512 characters long."),
    ),
    "context without message_id": (
        text_body(context={}),
        error(100, "(#100) The parameter context['message_id'] is required."),
    ),
    "media with id and link": (
        {"type": "image", "image": {"id": "1", "link": "https://x.example/a.jpg"}},
        error(100, INVALID, details="Param image must contain either id or link, not both"),
    ),
    "media with neither": (
        {"type": "video", "video": {"caption": "c"}},
        error(131008, MISSING, details="Param video requires either id or link"),
    ),
    "media link not a URL": (
        {"type": "image", "image": {"link": "ftp://x"}},
        error(131009, NOT_VALID, details="Param image['link'] must be a valid http(s) URL, got 'ftp://x'"),
    ),
    "caption on audio": (
        {"type": "audio", "audio": {"id": "1", "caption": "c"}},
        error(100, '(#100) Unexpected key "caption" on param "audio".'),
    ),
    "caption too long": (
        {"type": "image", "image": {"id": "1", "caption": "c" * 1025}},
        error(100, "(#100) Param image['caption'] must be at most 1024 characters long."),
    ),
    "interactive body too long": (
        {"type": "interactive", "interactive": {"type": "button", "body": {"text": "b" * 1025}}},
        error(131009, NOT_VALID, details="Body text length invalid. Min length: 1, Max length: 1024"),
    ),
    "interactive without body": (
        {"type": "interactive", "interactive": {"type": "button", "action": reply_buttons("Yes")}},
        error(100, "(#100) The parameter interactive['body'] is required."),
    ),
    "button title too long": (
        interactive("button", reply_buttons("A title of 21 chars..")),
        error(131009, NOT_VALID, details="Button title length invalid. Min length: 1, Max length: 20"),
    ),
    "four buttons": (
        interactive("button", reply_buttons("A", "B", "C", "D")),
        error(
            131009, NOT_VALID, details="Invalid buttons count. Min allowed buttons: 1, Max allowed buttons: 3"
        ),
    ),
    "repeated button titles": (
        interactive("button", reply_buttons("Yes", "Yes")),
        error(131009, NOT_VALID, details="Button title is not unique: Yes"),
    ),
    "header text too long": (
        interactive("button", reply_buttons("Yes"), header={"type": "text", "text": "h" * 61}),
        error(131009, NOT_VALID, details="Header text length invalid. Min length: 1, Max length: 60"),
    ),
    "eleven rows": (
        interactive(
            "list",
            {
                "button": "Pick",
                "sections": [{"title": "A", "rows": [{"id": str(i), "title": str(i)} for i in range(11)]}],
            },
        ),
        error(131009, NOT_VALID, details="Total row count exceed max allowed count: 10"),
    ),
    "untitled sections": (
        interactive(
            "list",
            {
                "button": "Pick",
                "sections": [{"rows": [{"id": "a", "title": "A"}]}, {"rows": [{"id": "b", "title": "B"}]}],
            },
        ),
        error(100, "(#100) The parameter interactive['action']['sections'][0]['title'] is required."),
    ),
    "unknown interactive type": (
        interactive("carrousel", {}),
        error(
            100,
            "(#100) Param interactive['type'] must be one of {ADDRESS_MESSAGE, BUTTON, "
            "CALL_PERMISSION_REQUEST, CAROUSEL, CATALOG_MESSAGE, CTA_URL, FLOW, LIST, "
            'LOCATION_REQUEST_MESSAGE, PRODUCT, PRODUCT_LIST, VOICE_CALL} - got "carrousel".',
        ),
    ),
    "location without longitude": (
        {"type": "location", "location": {"latitude": 1}},
        error(100, "(#100) The parameter location['longitude'] is required."),
    ),
    "contact without a name": (
        {"type": "contacts", "contacts": [{"phones": []}]},
        error(100, "(#100) The parameter contacts[0]['name'] is required."),
    ),
    "reaction without message_id": (
        {"type": "reaction", "reaction": {"emoji": "x"}},
        error(100, "(#100) The parameter reaction['message_id'] is required."),
    ),
}


@pytest.mark.parametrize(("body", "expected"), BODY_ERRORS.values(), ids=BODY_ERRORS.keys())
async def test_invalid_bodies_get_metas_error(graph, body, expected):
    partial = "messaging_product" not in body and "to" not in body
    full = {"messaging_product": "whatsapp", "to": TO, **body} if partial else body

    status, answer = await graph.send(full)

    assert without_trace(answer) == expected
    assert status == 400
    assert graph.state.messages == []
    assert graph.state.counters[f"error.{expected['code']}"] == 1


async def test_a_body_that_is_not_a_json_object_lacks_messaging_product(graph):
    status, answer = await graph.request("POST", f"{PNID}/messages", data=b"[1, 2]")

    assert status == 400
    assert without_trace(answer) == error(100, "(#100) The parameter messaging_product is required.")


# ---------------------------------------------------------------- errors: templates

TEMPLATE_ERRORS = {
    "unknown name": (
        template_body("order_updates"),
        404,
        error(
            132001,
            "(#132001) Template name does not exist in the translation",
            details="template name (order_updates) does not exist in en_US",
        ),
    ),
    "unknown language": (
        template_body("order_update", "en"),
        404,
        error(
            132001,
            "(#132001) Template name does not exist in the translation",
            details="template name (order_update) does not exist in en",
        ),
    ),
    "rejected": (
        template_body("limited_offer", components=[{"type": "body", "parameters": params("Ann")}]),
        404,
        error(
            132001,
            "(#132001) Template name does not exist in the translation",
            details="template name (limited_offer) does not exist in en_US",
        ),
    ),
    "paused": (
        template_body("spring_sale", components=[{"type": "body", "parameters": params("20%", "Sunday")}]),
        400,
        error(
            132015,
            "(#132015) Template is Paused",
            details="Template is paused due to low quality so it cannot be sent in a template message.",
        ),
    ),
    "disabled": (
        template_body("winter_clearance"),
        400,
        error(
            132016,
            "(#132016) Template is Disabled",
            details="Template has been paused too many times due to low quality "
            "and is now permanently disabled.",
        ),
    ),
    "body count": (
        template_body(
            "order_update",
            components=[ORDER_UPDATE[0], {"type": "body", "parameters": params("Pablo")}, ORDER_UPDATE[2]],
        ),
        400,
        error(
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            details="body: number of localizable_params (1) does not match the expected number of params (3)",
        ),
    ),
    "params for a template without any": (
        template_body("hello_world", components=[{"type": "body", "parameters": params("x")}]),
        400,
        error(
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            details="body: number of localizable_params (1) does not match the expected number of params (0)",
        ),
    ),
    "missing media header": (
        template_body(
            "appointment_reminder", components=[{"type": "body", "parameters": params("A", "B", "C")}]
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="header: Format mismatch, expected IMAGE, received UNKNOWN",
        ),
    ),
    "wrong media header": (
        template_body(
            "appointment_reminder",
            components=[
                {
                    "type": "header",
                    "parameters": [{"type": "video", "video": {"link": "https://x.example/v.mp4"}}],
                },
                {"type": "body", "parameters": params("A", "B", "C")},
            ],
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="header: Format mismatch, expected IMAGE, received VIDEO",
        ),
    ),
    "named parameters to a positional template": (
        template_body(
            "order_update",
            components=[
                ORDER_UPDATE[0],
                {"type": "body", "parameters": [{"type": "text", "parameter_name": "a", "text": "x"}] * 3},
                ORDER_UPDATE[2],
            ],
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="body: Format mismatch, expected POSITIONAL, received NAMED",
        ),
    ),
    "positional parameters to a named template": (
        template_body("welcome", components=[{"type": "body", "parameters": params("Ann")}]),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="body: Format mismatch, expected NAMED, received POSITIONAL",
        ),
    ),
    "wrong parameter name": (
        template_body(
            "welcome",
            components=[
                {"type": "body", "parameters": [{"type": "text", "parameter_name": "name", "text": "A"}]}
            ],
        ),
        400,
        error(
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            details="body: parameter names (name) do not match the expected parameter names (first_name)",
        ),
    ),
    "url button parameter missing": (
        template_body("order_update", components=ORDER_UPDATE[:2]),
        400,
        error(
            131008,
            "(#131008) Required parameter is missing",
            details="buttons: Button at index 1 of type Url requires a parameter",
        ),
    ),
    "button of the wrong kind": (
        template_body(
            "order_update",
            components=[
                *ORDER_UPDATE,
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "0",
                    "parameters": [{"type": "text", "text": "x"}],
                },
            ],
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="buttons: Button at index 0 of type QuickReply: "
            "Format mismatch, expected QUICK_REPLY, received URL",
        ),
    ),
    "button that does not exist": (
        template_body(
            "order_update",
            components=[
                *ORDER_UPDATE,
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": 5,
                    "parameters": [{"type": "payload", "payload": "x"}],
                },
            ],
        ),
        400,
        error(131009, NOT_VALID, details="buttons: Button at index 5 does not exist in the template"),
    ),
    "new line in a parameter": (
        template_body(
            "order_update",
            components=[
                ORDER_UPDATE[0],
                {"type": "body", "parameters": params("Pa\nblo", "1", "2")},
                ORDER_UPDATE[2],
            ],
        ),
        400,
        error(
            132018,
            "(#132018) There's an issue with the parameters in your template",
            details="body: Param text cannot have new-line/tab characters or more than 4 consecutive spaces",
        ),
    ),
    "five spaces in a parameter": (
        template_body(
            "order_update",
            components=[{"type": "header", "parameters": params("#1     2")}, *ORDER_UPDATE[1:]],
        ),
        400,
        error(
            132018,
            "(#132018) There's an issue with the parameters in your template",
            details="header: Param text cannot have new-line/tab characters "
            "or more than 4 consecutive spaces",
        ),
    ),
    "authentication code too long": (
        template_body(
            "verification_code",
            components=[
                {"type": "body", "parameters": params("1234567890123456")},
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": 0,
                    "parameters": [{"type": "text", "text": "1"}],
                },
            ],
        ),
        400,
        error(
            132018,
            "(#132018) There's an issue with the parameters in your template",
            details="body: Parameter at index 0 exceeds the parameter length limit 15",
        ),
    ),
    "text parameter without text": (
        template_body(
            "welcome",
            components=[{"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name"}]}],
        ),
        400,
        error(100, INVALID, details="Parameter 'text' is mandatory for component parameter type 'text'"),
    ),
    "no template name": (
        {**template_body("x"), "template": {"language": {"code": "en_US"}}},
        400,
        error(100, "(#100) The parameter template['name'] is required."),
    ),
    "no language code": (
        {**template_body("x"), "template": {"name": "x", "language": {}}},
        400,
        error(100, "(#100) The parameter template['language']['code'] is required."),
    ),
}


@pytest.mark.parametrize(("body", "status", "expected"), TEMPLATE_ERRORS.values(), ids=TEMPLATE_ERRORS.keys())
async def test_template_errors_are_metas(graph, body, status, expected):
    got_status, answer = await graph.send(body)

    assert without_trace(answer) == expected
    assert got_status == status
    assert graph.state.messages == []
    assert graph.state.counters[f"error.{expected['code']}"] == 1


async def test_template_changes_in_the_state_apply_at_once(graph):
    ok = template_body("order_update", components=ORDER_UPDATE)
    assert (await graph.send(ok))[0] == 200

    order_update = next(t for t in graph.state.templates if t["name"] == "order_update")
    order_update["status"] = "PAUSED"
    assert (await graph.send(ok))[1]["error"]["code"] == 132015

    graph.state.templates = [t for t in graph.state.templates if t is not order_update]
    assert (await graph.send(ok))[1]["error"]["code"] == 132001

    graph.state.templates.insert(0, {**order_update, "status": "APPROVED"})
    assert (await graph.send(ok))[0] == 200


# ---------------------------------------------------------------- template listing and paging


async def test_templates_page_by_page_follow_paging_next(graph):
    status, page = await graph.request("GET", f"{WABA}/message_templates", params={"limit": "2"})
    names = []
    pages = 0
    while True:
        assert status == 200
        pages += 1
        names += [(t["name"], t["language"]) for t in page["data"]]
        assert len(page["data"]) <= 2
        next_url = page["paging"].get("next")
        if next_url is None:
            break
        assert next_url.startswith(str(graph.server.make_url(f"/v23.0/{WABA}/message_templates?")))
        assert "limit=2" in next_url
        async with graph.http.get(next_url, headers=AUTH) as response:
            status, page = response.status, await response.json()

    assert names == [(t["name"], t["language"]) for t in graph.state.templates]
    assert pages == 5


async def test_template_cursors_are_graphs_and_previous_goes_back(graph):
    _, first = await graph.request("GET", f"{WABA}/message_templates", params={"limit": "3"})
    assert first["paging"]["cursors"] == {"before": "MAZDZD", "after": "Mg" + "ZDZD"}
    assert "previous" not in first["paging"]

    async with graph.http.get(first["paging"]["next"], headers=AUTH) as response:
        second = await response.json()
    async with graph.http.get(second["paging"]["previous"], headers=AUTH) as response:
        back = await response.json()

    assert [t["id"] for t in second["data"]] == [t["id"] for t in graph.state.templates[3:6]]
    assert back["data"] == first["data"]


async def test_templates_default_to_25_and_full_definitions(graph):
    status, page = await graph.request("GET", f"{WABA}/message_templates")

    assert status == 200
    assert page["data"] == graph.state.templates
    assert "next" not in page["paging"]


async def test_templates_filters_fields_and_summary(graph):
    query = {"status": "APPROVED", "language": "en_US", "fields": "name,status", "summary": "total_count"}
    _, page = await graph.request("GET", f"{WABA}/message_templates", params=query)

    approved = [t for t in graph.state.templates if t["status"] == "APPROVED" and t["language"] == "en_US"]
    assert page["data"] == [{"name": t["name"], "status": "APPROVED", "id": t["id"]} for t in approved]
    assert page["summary"] == {"total_count": len(approved)}

    _, by_name = await graph.request("GET", f"{WABA}/message_templates", params={"name": "order_update"})
    assert [(t["name"], t["language"]) for t in by_name["data"]] == [
        ("order_update", "en_US"),
        ("order_update", "pt_BR"),
    ]

    _, paused = await graph.request("GET", f"{WABA}/message_templates", params={"status": "paused,disabled"})
    assert [t["name"] for t in paused["data"]] == ["spring_sale", "winter_clearance"]

    _, found = await graph.request(
        "GET", f"{WABA}/message_templates", params={"content": "VERIFICATION code"}
    )
    assert [t["name"] for t in found["data"]] == ["verification_code"]


async def test_templates_of_an_unknown_account_and_bad_paging(graph):
    status, answer = await graph.request("GET", "999/message_templates")
    assert status == 400
    assert without_trace(answer) == error(
        100, UNSUPPORTED.format(method="get", id="999"), subcode=33, error_type="GraphMethodException"
    )

    status, answer = await graph.request("GET", f"{WABA}/message_templates", params={"limit": "0"})
    assert (status, answer["error"]["code"]) == (400, 100)

    status, answer = await graph.request("GET", f"{WABA}/message_templates", params={"after": "not-a-cursor"})
    assert (status, answer["error"]["code"]) == (400, 100)


async def test_a_template_by_id(graph):
    template = graph.state.templates[1]

    status, answer = await graph.request("GET", template["id"], params={"fields": "name,language"})

    assert (status, answer) == (
        200,
        {"name": template["name"], "language": template["language"], "id": template["id"]},
    )


async def test_the_plugins_registry_reads_every_template_and_agrees_with_the_sandbox(graph, clock):
    registry = TemplateRegistry(graph.client().get_json, WABA, MemoryTemplateCache(60, clock))
    known = await registry.templates()

    assert len(known) == len(graph.state.templates)
    assert {(t.name, t.language) for t in known} == {
        (t["name"], t["language"]) for t in graph.state.templates
    }
    for name, content in MESSAGES.items():
        if isinstance(content, Template):
            assert check_template(content, known) == [], name
    assert check_template(Template("spring_sale", body=["1", "2"]), known) != []


# ---------------------------------------------------------------- the phone number, media, other paths


async def test_the_phone_number(graph):
    status, number = await graph.request("GET", PNID)

    assert status == 200
    assert number == {
        "verified_name": "Sandbox Business",
        "code_verification_status": "VERIFIED",
        "display_phone_number": SETTINGS.display_phone_number,
        "quality_rating": "GREEN",
        "platform_type": "CLOUD_API",
        "throughput": {"level": "STANDARD"},
        "name_status": "APPROVED",
        "messaging_limit_tier": "TIER_1K",
        "id": PNID,
    }

    _, throughput = await graph.request("GET", PNID, params={"fields": "throughput"})
    assert throughput == {"throughput": {"level": "STANDARD"}, "id": PNID}


async def test_the_plugins_check_command_fields(graph):
    fields = {"fields": "display_phone_number,verified_name,quality_rating"}

    number = await graph.client().get_json(PNID, fields)

    assert number == {
        "display_phone_number": SETTINGS.display_phone_number,
        "verified_name": "Sandbox Business",
        "quality_rating": "GREEN",
        "id": PNID,
    }


def upload_form(data=b"\xff\xd8\xff\xe0jpeg", mime="image/jpeg", product="whatsapp"):
    form = aiohttp.FormData()
    if product is not None:
        form.add_field("messaging_product", product)
    if mime is not None:
        form.add_field("type", mime)
    if data is not None:
        form.add_field("file", data, filename="a.jpg", content_type=mime or "application/octet-stream")
    return form


async def test_media_upload_read_download_delete(graph):
    status, uploaded = await graph.request("POST", f"{PNID}/media", data=upload_form())
    assert status == 200
    media_id = uploaded["id"]
    assert list(uploaded) == ["id"]
    assert media_id.isdigit()

    status, info = await graph.request("GET", media_id)
    assert status == 200
    assert info == {
        "messaging_product": "whatsapp",
        "url": str(graph.server.make_url(f"/v23.0/{media_id}/download")),
        "mime_type": "image/jpeg",
        "sha256": hashlib.sha256(b"\xff\xd8\xff\xe0jpeg").hexdigest(),
        "file_size": 8,
        "id": media_id,
    }

    async with graph.http.get(info["url"], headers=AUTH) as response:
        assert response.status == 200
        assert response.content_type == "image/jpeg"
        assert await response.read() == b"\xff\xd8\xff\xe0jpeg"
    async with graph.http.get(info["url"]) as response:
        assert response.status == 401

    assert await graph.request("DELETE", media_id) == (200, {"success": True})
    status, answer = await graph.request("GET", media_id)
    assert status == 400
    assert without_trace(answer) == error(
        100, UNSUPPORTED.format(method="get", id=media_id), subcode=33, error_type="GraphMethodException"
    )
    status, answer = await graph.request("DELETE", media_id)
    assert answer["error"]["error_subcode"] == 33


async def test_uploaded_media_can_be_sent_by_id(graph):
    _, uploaded = await graph.request("POST", f"{PNID}/media", data=upload_form())
    body = build_payload(Message("+" + TO, Media("image", media_id=uploaded["id"]))).body

    status, _ = await graph.send(body)

    assert status == 200


@pytest.mark.parametrize(
    ("form", "code", "message"),
    [
        (upload_form(product=None), 100, "(#100) The parameter messaging_product is required."),
        (upload_form(data=None), 100, "(#100) The parameter file is required."),
        (upload_form(mime="text/html"), 100, None),
        (
            upload_form(data=b"x" * (500 * 1024 + 1), mime="image/webp"),
            131053,
            "(#131053) Media upload error",
        ),
    ],
    ids=["no messaging_product", "no file", "unsupported type", "too big"],
)
async def test_bad_uploads(graph, form, code, message):
    status, answer = await graph.request("POST", f"{PNID}/media", data=form)

    assert status == 400
    assert answer["error"]["code"] == code
    if message is not None:
        assert answer["error"]["message"] == message
    else:
        assert answer["error"]["message"].startswith(
            "(#100) Param file must be a file with one of the following types"
        )
        assert answer["error"]["message"].endswith("Received file of type 'text/html'.")


async def test_the_media_store_forgets_the_oldest_beyond_its_size():
    store = MediaStore(max_bytes=10)
    store.add("1", "image/png", b"12345")
    store.add("2", "image/png", b"12345")
    store.add("3", "image/png", b"1")

    assert "1" not in store
    assert store.get("2") is not None
    assert len(store) == 2


async def test_unknown_paths_get_graphs_errors(graph):
    status, answer = await graph.request("GET", f"{PNID}/conversations")
    assert status == 400
    assert without_trace(answer) == error(2500, "Unknown path components: /conversations")

    status, answer = await graph.request("GET", f"{PNID}/messages")
    assert without_trace(answer) == error(
        100, UNSUPPORTED.format(method="get", id=PNID), subcode=33, error_type="GraphMethodException"
    )

    status, answer = await graph.request("GET", "424242")
    assert answer["error"]["error_subcode"] == 33

    status, answer = await graph.request("GET", f"{PNID}/conversations", headers={})
    assert answer["error"]["code"] == 104


async def test_any_version_is_served(graph):
    async with graph.http.post(
        graph.server.make_url(f"/v17.0/{PNID}/messages"), json=text_body(), headers=AUTH
    ) as response:
        assert response.status == 200
        assert response.headers["facebook-api-version"] == "v17.0"


def test_graph_error_response_builds_metas_envelope():
    state = SandboxState(SandboxSettings())

    response = graph_error_response(state, 131000, is_transient=True, headers={"Retry-After": "2"})

    assert response.status == 500
    assert response.headers["Retry-After"] == "2"
    body = json.loads(response.text)
    assert without_trace(body) == {
        "message": "(#131000) Something went wrong",
        "type": "OAuthException",
        "code": 131000,
        "is_transient": True,
        "error_data": {
            "messaging_product": "whatsapp",
            "details": "Something went wrong. Please try again later.",
        },
    }
    assert state.counters == {"error.131000": 1}
    assert GraphError(4).envelope("t") == {
        "error": {
            "message": "(#4) Application request limit reached",
            "type": "OAuthException",
            "code": 4,
            "fbtrace_id": "t",
        }
    }


# ---------------------------------------------------------------- limits


async def test_the_81st_message_in_one_second_is_130429(graph, clock):
    for i in range(80):
        status, answer = await graph.send(text_body(to=f"1650555{i:04d}"))
        assert status == 200, (i, answer)

    status, answer = await graph.send(text_body(to="16505559999"))

    assert status == 400
    assert without_trace(answer) == error(
        130429, "(#130429) Rate limit hit", details="Cloud API message throughput has been reached."
    )
    assert graph.state.counters["accepted"] == 80

    clock.advance(1 / 80)
    assert (await graph.send(text_body(to="16505559999")))[0] == 200
    assert (await graph.send(text_body(to="16505559998")))[1]["error"]["code"] == 130429

    clock.advance(1.0)
    for i in range(80):
        assert (await graph.send(text_body(to=f"1650556{i:04d}")))[0] == 200


async def test_the_pair_limit_is_131056_for_that_recipient_only(graph, clock):
    for _ in range(45):
        clock.advance(0.02)  # below the number's 80 mps: only the pair limit counts
        assert (await graph.send(text_body()))[0] == 200

    clock.advance(0.02)
    status, answer = await graph.send(text_body())

    assert status == 400
    assert without_trace(answer) == error(
        131056,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        details="Message failed to send because there were too many messages sent from this phone number "
        "to the same phone number in a short period of time.",
    )
    assert (await graph.send(text_body(to="16505550000")))[0] == 200

    clock.advance(6.0)
    assert (await graph.send(text_body()))[0] == 200
    assert (await graph.send(text_body()))[1]["error"]["code"] == 131056


def limits_for(clock, **settings):
    return Limits(SandboxState(SandboxSettings(**settings), clock=clock))


def test_a_refused_message_consumes_nothing(clock):
    limits = limits_for(clock, throughput_mps=2, pair_interval_s=10, pair_burst=2)
    assert limits.check("a") is None
    clock.advance(0.5)
    assert limits.check("a") is None  # the pair's burst of 2 is spent

    clock.advance(0.5)
    assert limits.check("a") == 131056
    # The refusal took nothing from the number: its burst of 2 is still there.
    assert [limits.check("b"), limits.check("c"), limits.check("d")] == [None, None, 130429]
    for _ in range(100):
        assert limits.check("a") == 130429

    clock.advance(10)
    # Nor did 100 refusals take anything from the pair: one slot came back in 10 s.
    assert limits.check("a") is None
    assert limits.check("a") == 131056


def test_the_pair_burst_borrows_future_quota(clock):
    limits = limits_for(clock, throughput_mps=0, pair_interval_s=6, pair_burst=45)

    assert all(limits.check("a") is None for _ in range(20))
    clock.advance(6 * 20 - 0.001)
    assert sum(limits.check("a") is None for _ in range(45)) == 44
    clock.advance(0.001)
    assert limits.check("a") is None


def test_limits_can_be_switched_off_and_reset(clock):
    off = limits_for(clock, throughput_mps=0, pair_interval_s=0)
    assert all(off.check("a") is None for _ in range(1000))

    limits = limits_for(clock, throughput_mps=1)
    assert limits.check("a") is None
    assert limits.check("b") == 130429
    limits.reset()
    assert limits.check("b") is None


def test_limits_forget_idle_recipients(clock):
    limits = limits_for(clock, throughput_mps=0)
    for i in range(3000):
        assert limits.check(str(i)) is None
    clock.advance(7)
    for i in range(3000, 6000):
        assert limits.check(str(i)) is None

    assert len(limits._pair_tat) <= 4096


async def test_routes_share_the_limits_they_are_given(state, clock):
    limits = Limits(state)
    server = await start_graph(state, limits=limits)
    try:
        async with aiohttp.ClientSession() as http:
            graph = Graph(state, server, http)
            for _ in range(45):
                assert (await graph.send(text_body()))[0] == 200
            assert (await graph.send(text_body()))[1]["error"]["code"] == 131056
            limits.reset()
            assert (await graph.send(text_body()))[0] == 200
    finally:
        await server.close()


# ---------------------------------------------------------------- the plugin's GraphClient, against the sandb


async def test_the_graph_client_sends(graph):
    message = Message("+16505551234", Template("welcome", body={"first_name": "Ann"}), id="m-7")

    result = await graph.client().send_message(build_payload(message).body)

    assert result == SendResult(
        wamid=graph.state.messages[-1].wamid, message_status="accepted", wa_id=TO, input=TO
    )
    assert graph.state.messages[-1].body["biz_opaque_callback_data"] == "m-7"


async def test_the_graph_client_with_a_wrong_token_is_sender_unavailable(graph):
    with pytest.raises(SenderUnavailableError) as info:
        await graph.client(access_token=Secret("EAAG-wrong")).send_message(text_body())

    assert info.value.code == 190
    assert info.value.http_status == 401
    assert "EAAG-wrong" not in str(info.value)


async def test_the_graph_client_with_an_unknown_phone_number_is_sender_unavailable(graph):
    with pytest.raises(SenderUnavailableError) as info:
        await graph.client(phone_number_id="123").send_message(text_body())

    assert info.value.code == 100


async def test_the_graph_client_with_an_unknown_template_is_permanent(graph):
    body = build_payload(Message("+16505551234", Template("order_updates"))).body

    with pytest.raises(PermanentDeliveryError) as info:
        await graph.client().send_message(body)

    assert info.value.code == 132001
    assert info.value.http_status == 404
    assert "template name (order_updates) does not exist in en_US" in str(info.value)


async def test_the_graph_client_is_rate_limited(state, clock):
    state.settings = SandboxSettings(throughput_mps=1)
    server = await start_graph(state)
    try:
        async with aiohttp.ClientSession() as http:
            client = Graph(state, server, http).client()
            await client.send_message(text_body())
            with pytest.raises(RateLimitedError) as info:
                await client.send_message(text_body(to="16505550000"))
    finally:
        await server.close()

    assert info.value.code == 130429
    assert info.value.retryable


# ---------------------------------------------------------------- seed files


def test_the_shipped_templates():
    templates = load_templates(None)

    keys = {(t["name"], t["language"]): t for t in templates}
    assert {"order_update", "welcome", "appointment_reminder", "hello_world"} <= {name for name, _ in keys}
    assert ("order_update", "pt_BR") in keys
    assert keys["welcome", "en_US"]["parameter_format"] == "NAMED"
    assert {t["status"] for t in templates} >= {"APPROVED", "PAUSED", "REJECTED", "DISABLED"}
    assert all(t["id"].isdigit() for t in templates)
    assert len({t["id"] for t in templates}) == len(templates)
    assert list(templates[0])[:7] == [
        "id",
        "name",
        "language",
        "status",
        "category",
        "parameter_format",
        "components",
    ]
    for template in templates:
        parse_template(template)  # the plugin reads every one
    assert load_templates(None) == templates
    assert load_templates(None) is not templates


def test_a_json_seed_completes_ids_and_formats(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            [
                {"name": "greet", "language": "en", "components": [{"type": "body", "text": "Hi {{name}}"}]},
                {
                    "name": "greet",
                    "language": "de",
                    "status": "paused",
                    "components": [{"type": "BODY", "text": "Hallo"}],
                },
            ]
        )
    )

    first, second = load_templates(str(path))

    assert first["id"].isdigit()
    assert len(first["id"]) == 16
    assert first["id"] != second["id"]
    assert first["parameter_format"] == "NAMED"
    assert first["status"] == "APPROVED"
    assert first["category"] == "UTILITY"
    assert first["components"] == [{"type": "BODY", "text": "Hi {{name}}"}]
    assert second["status"] == "PAUSED"
    assert load_templates(str(path))[0]["id"] == first["id"]


def test_a_toml_seed(tmp_path):
    path = tmp_path / "templates.toml"
    path.write_text(
        """
[[templates]]
id = 42
name = "order_update"
language = "en_US"
category = "utility"

[[templates.components]]
type = "HEADER"
format = "TEXT"
text = "Order {{1}}"

[[templates.components]]
type = "BODY"
text = "Hi {{1}}, your order {{2}} ships {{3}}."

[[templates.components]]
type = "BUTTONS"
buttons = [{type = "URL", text = "Track", url = "https://shop.example/track/{{1}}"}]
"""
    )

    (template,) = load_templates(str(path))

    assert template["id"] == "42"
    assert template["category"] == "UTILITY"
    assert template["parameter_format"] == "POSITIONAL"
    assert template["components"][2]["buttons"][0]["type"] == "URL"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "t.json",
            "{not json",
            "templates file: not JSON: Expecting property name enclosed in double quotes",
        ),
        ("t.toml", "[[templates]\n", "templates file: not TOML"),
        ("t.yaml", "templates: []", "templates file: must end in .json or .toml, got '.yaml'"),
        ("t.json", '{"other": []}', "templates: missing"),
        ("t.json", '{"templates": {}}', "templates: must be a list of templates, got a table"),
        ("t.json", "[1]", "templates[0]: must be a table (object), got a number"),
        (
            "t.json",
            '[{"name": "Bad Name", "language": "english", "components": []}]',
            "templates[0].name: only lowercase letters, digits and '_' (at most 512), got 'Bad Name'",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "status": "LIVE",'
            ' "components": [{"type": "BODY", "text": "a"}]}]',
            "templates[0].status: must be one of APPROVED",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "FOOTER", "text": "a"}]}]',
            "templates[0].components: a BODY is required",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "BODY", "text": "{{1}} and {{3}}"}]}]',
            "templates[0].components[0].text: variables must be {{1}} to {{2}}, got [1, 3]",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "parameter_format": "POSITIONAL",'
            ' "components": [{"type": "BODY", "text": "Hi {{name}}"}]}]',
            "templates[0].components: a POSITIONAL template uses {{1}}, {{2}}..., got {{name}}",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "BODY", "text": "a"},'
            ' {"type": "BUTTONS", "buttons": [{"type": "URL", "url": "https://x/{{1}}/y"}]}]}]',
            "templates[0].components[1].buttons[0].url: at most one variable, at the end of the URL",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "BODY", "text": "a"}]},'
            ' {"name": "x", "language": "en", "components": [{"type": "BODY", "text": "b"}]}]',
            "templates[1]: 'x' in en is already templates[0] (a template is keyed by name and language)",
        ),
    ],
)
def test_malformed_seeds_are_config_errors_naming_the_file(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_templates(str(path))

    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert any(line.startswith(problem) for line in info.value.errors), info.value.errors


def test_every_problem_of_a_seed_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        normalize_templates(
            [
                {"name": "a", "language": "en"},
                {
                    "name": "b",
                    "language": "en",
                    "category": "PROMO",
                    "components": [{"type": "BODY", "text": "x"}],
                },
            ],
            source="seed.json",
        )

    assert info.value.errors == [
        "templates[0].components: required, a non-empty list (at least a BODY)",
        "templates[1].category: must be one of AUTHENTICATION, MARKETING, UTILITY, got 'PROMO'",
    ]


def test_a_missing_seed_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_templates(str(tmp_path / "missing.json"))
