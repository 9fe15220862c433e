"""The sandbox's Graph API errors: auth, unknown objects and invalid send bodies, in Meta's envelope."""

from __future__ import annotations

import aiohttp
import pytest
from sandbox_graph_support import (
    INVALID,
    NOT_VALID,
    PNID,
    SETTINGS,
    TO,
    TOKEN,
    UNSUPPORTED,
    Graph,
    error,
    fixture_clock,  # noqa: F401  (the fixture)
    fixture_graph,  # noqa: F401  (the fixture)
    fixture_state,  # noqa: F401  (the fixture)
    start_graph,
    text_body,
    without_trace,
)

from omnichannel_whatsapp.sandbox.state import SandboxSettings, SandboxState

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
