"""Template definitions, the pre-send template check, the registry and its caches."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from omnichannel import (
    ConfigError,
    CurrencyParam,
    DateTimeParam,
    LocationParam,
    MediaParam,
    PermanentDeliveryError,
    PluginError,
    Template,
    TemplateButton,
    TextParam,
)
from omnichannel.testing import FakeClock, fake_provider
from omnichannel_whatsapp.templates import (
    FIELDS,
    ButtonInfo,
    MemoryTemplateCache,
    RedisTemplateCache,
    TemplateInfo,
    TemplateRegistry,
    check_template,
    parse_template,
)

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"
WABA = "102290129340398"

# ---------------------------------------------------------------- definitions (spec section 5)

ORDER_UPDATE = {
    "id": "1192339204654487",
    "name": "order_update",
    "language": "en_US",
    "status": "APPROVED",
    "category": "UTILITY",
    "parameter_format": "POSITIONAL",
    "components": [
        {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}", "example": {"header_text": ["#8899"]}},
        {
            "type": "BODY",
            "text": "Hi {{1}}, your order {{2}} ships {{3}}.",
            "example": {"body_text": [["Pablo", "8899", "today"]]},
        },
        {"type": "FOOTER", "text": "Reply STOP to opt out"},
        {
            "type": "BUTTONS",
            "buttons": [
                {"type": "QUICK_REPLY", "text": "Stop"},
                {
                    "type": "URL",
                    "text": "Track",
                    "url": "https://shop.example/track/{{1}}",
                    "example": ["https://shop.example/track/8899"],
                },
            ],
        },
    ],
    "quality_score": {"score": "GREEN", "date": 1720000000},
    "rejected_reason": "NONE",
}

SHIPPING_NAMED = {
    "id": "2",
    "name": "shipping_named",
    "language": "en_US",
    "status": "APPROVED",
    "category": "UTILITY",
    "parameter_format": "NAMED",
    "components": [
        {
            "type": "HEADER",
            "format": "TEXT",
            "text": "Order {{order}}",
            "example": {"header_text_named_params": [{"param_name": "order", "example": "8899"}]},
        },
        {
            "type": "BODY",
            "text": "Hi {{first_name}}, order {{order}} is on its way. Thanks, {{first_name}}!",
            "example": {
                "body_text_named_params": [
                    {"param_name": "first_name", "example": "Jessica"},
                    {"param_name": "order", "example": "8899"},
                ]
            },
        },
    ],
}


def entry(name: str, *components: dict[str, Any], language="en_US", status="APPROVED", **extra):
    return {
        "id": f"id-{name}-{language}",
        "name": name,
        "language": language,
        "status": status,
        "category": extra.pop("category", "MARKETING"),
        "parameter_format": extra.pop("parameter_format", "POSITIONAL"),
        "components": list(components),
        **extra,
    }


def body(text: str) -> dict[str, Any]:
    return {"type": "BODY", "text": text}


def header(fmt: str, text: str | None = None) -> dict[str, Any]:
    return {"type": "HEADER", "format": fmt, **({"text": text} if text is not None else {})}


def buttons(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "BUTTONS", "buttons": list(items)}


PROMO_IMAGE = entry(
    "promo_image",
    {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["4::aW..."]}},
    body("Save {{1}} today"),
    buttons(
        {"type": "COPY_CODE", "example": "SAVE20"},
        {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550001111"},
        {"type": "URL", "text": "Shop", "url": "https://shop.example/sale"},
    ),
)
STORE_LOCATION = entry("store_location", header("LOCATION"), body("Come and see us."))
VIDEO_TOUR = entry("video_tour", header("VIDEO"), body("Take the tour."))
OTP_CODE = entry(
    "otp_code",
    body("{{1}} is your verification code."),
    buttons({"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}),
    category="AUTHENTICATION",
)
STATIC_HEADER = entry("static_header", header("TEXT", "Welcome"), body("Nice to meet you."))
PLAIN = entry("plain", body("Hello there."))
PAUSED = entry("paused_promo", body("Big sale."), status="PAUSED")
ORDER_UPDATE_PT = {**ORDER_UPDATE, "id": "3", "language": "pt_BR"}

RAW = [
    ORDER_UPDATE,
    ORDER_UPDATE_PT,
    SHIPPING_NAMED,
    PROMO_IMAGE,
    STORE_LOCATION,
    VIDEO_TOUR,
    OTP_CODE,
    STATIC_HEADER,
    PLAIN,
    PAUSED,
]
KNOWN = [parse_template(t) for t in RAW]


def test_parse_template_reads_the_spec_example():
    assert parse_template(ORDER_UPDATE) == TemplateInfo(
        name="order_update",
        language="en_US",
        status="APPROVED",
        category="UTILITY",
        parameter_format="POSITIONAL",
        id="1192339204654487",
        header_format="TEXT",
        header_parameters=1,
        body_parameters=3,
        buttons=(ButtonInfo(0, "QUICK_REPLY", True), ButtonInfo(1, "URL", True)),
    )


def test_parse_template_reads_named_placeholders_in_order_without_repeats():
    info = parse_template(SHIPPING_NAMED)
    assert info.parameter_format == "NAMED"
    assert info.header_parameters == ("order",)
    assert info.body_parameters == ("first_name", "order")
    assert info.buttons == ()


def test_parse_template_counts_distinct_positional_placeholders():
    info = parse_template(entry("repeat", body("{{1}} and {{2}}, then {{1}} again ({{ 3 }})")))
    assert info.body_parameters == 3


@pytest.mark.parametrize("fmt", ["IMAGE", "VIDEO", "GIF", "DOCUMENT", "LOCATION"])
def test_parse_template_media_headers_take_no_text_placeholders(fmt):
    info = parse_template(entry("media", {"type": "HEADER", "format": fmt}, body("Hi")))
    assert (info.header_format, info.header_parameters, info.body_parameters) == (fmt, 0, 0)


def test_parse_template_without_header_or_with_a_fixed_one():
    assert parse_template(PLAIN).header_format is None
    fixed = parse_template(STATIC_HEADER)
    assert (fixed.header_format, fixed.header_parameters) == ("TEXT", 0)


def test_parse_template_reads_which_buttons_take_a_parameter():
    info = parse_template(
        entry(
            "all_buttons",
            body("Hi"),
            buttons(
                {"type": "QUICK_REPLY", "text": "Stop"},
                {"type": "URL", "text": "Track", "url": "https://x.example/{{1}}"},
                {"type": "URL", "text": "Home", "url": "https://x.example/"},
                {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550001111"},
                {"type": "COPY_CODE", "example": "SAVE20"},
                {"type": "FLOW", "text": "Book", "flow_id": "1"},
                {"type": "OTP", "otp_type": "ONE_TAP"},
                {"type": "VOICE_CALL", "text": "Call us"},
            ),
        )
    )
    assert info.buttons == (
        ButtonInfo(0, "QUICK_REPLY", True),
        ButtonInfo(1, "URL", True),
        ButtonInfo(2, "URL", False),
        ButtonInfo(3, "PHONE_NUMBER", False),
        ButtonInfo(4, "COPY_CODE", True),
        ButtonInfo(5, "FLOW", True),
        ButtonInfo(6, "OTP", True),
        ButtonInfo(7, "VOICE_CALL", False),
    )
    assert [b.requires_parameter for b in info.buttons] == [
        False,
        True,
        False,
        False,
        True,
        False,
        True,
        False,
    ]
    assert [b.sub_type for b in info.buttons] == [
        "quick_reply",
        "url",
        None,
        None,
        "copy_code",
        "flow",
        "url",
        None,
    ]
    index, kind, takes = info.buttons[1]
    assert (index, kind, takes) == (1, "URL", True)


def test_parse_template_infers_the_parameter_format_when_it_is_missing():
    named = {k: v for k, v in SHIPPING_NAMED.items() if k != "parameter_format"}
    positional = {k: v for k, v in ORDER_UPDATE.items() if k != "parameter_format"}
    assert parse_template(named).body_parameters == ("first_name", "order")
    assert parse_template(positional).body_parameters == 3


def test_parse_template_tolerates_sparse_entries():
    info = parse_template({"name": "bare", "language": "en"})
    assert info == TemplateInfo(name="bare", language="en", status="UNKNOWN")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"language": "en_US"}, "template entry without a name: {'language': 'en_US'}"),
        ({"name": "x"}, "template 'x' has no language"),
    ],
)
def test_parse_template_rejects_entries_without_name_or_language(data, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_template(data)
    assert str(info.value) == message


# ---------------------------------------------------------------- check_template


def url_button(index: int, value: str = "8899") -> TemplateButton:
    return TemplateButton("url", index, value)


GOOD_ORDER = Template(
    "order_update", header=["#8899"], body=["Pablo", "8899", "today"], buttons=[url_button(1)]
)


@pytest.mark.parametrize(
    "template",
    [
        GOOD_ORDER,
        Template(
            "order_update",
            language="pt_BR",
            header=["#8899"],
            body=["Pablo", CurrencyParam("$1", "USD", 1000), DateTimeParam("today")],
            buttons=[TemplateButton("quick_reply", 0, "stop-42"), url_button(1)],
        ),
        Template("shipping_named", header={"order": "8899"}, body={"order": "8899", "first_name": "Jessica"}),
        Template(
            "promo_image",
            header=[MediaParam("image", link="https://x.example/a.png")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20")],
        ),
        Template("store_location", header=[LocationParam(37.48, -122.14, "HQ")]),
        Template("video_tour", header=[MediaParam("video", media_id="123")]),
        Template("otp_code", body=["123456"], buttons=[url_button(0, "123456")]),
        Template("static_header"),
        Template("plain"),
    ],
    ids=lambda t: f"{t.name}-{t.language}",
)
def test_check_template_accepts_messages_that_fit(template):
    assert check_template(template, KNOWN) == []


NOT_FITTING = {
    "unknown name": (
        Template("order_updates"),
        [
            "content.name: no template 'order_updates' exists (known: order_update, otp_code, paused_promo, "
            "plain, promo_image, shipping_named, static_header, store_location, video_tour)"
        ],
    ),
    "unknown language": (
        Template("order_update", language="de", header=["#1"], body=["a", "b", "c"]),
        ["content.language: template 'order_update' exists in en_US, pt_BR, not in de"],
    ),
    "language differs only in case or region": (
        Template("plain", language="en"),
        ["content.language: template 'plain' exists in en_US, not in en"],
    ),
    "paused": (
        Template("paused_promo"),
        ["content.name: template 'paused_promo' (en_US) is PAUSED, only APPROVED templates can be sent"],
    ),
    "too few body parameters": (
        Template("order_update", header=["#1"], body=["Pablo", "8899"], buttons=[url_button(1)]),
        ["content.body: template 'order_update' (en_US) expects 3 positional parameters, got 2"],
    ),
    "too many body parameters": (
        Template("otp_code", body=["1", "2"], buttons=[url_button(0)]),
        ["content.body: template 'otp_code' (en_US) expects 1 positional parameter, got 2"],
    ),
    "body parameters for a fixed body": (
        Template("plain", body=["x"]),
        ["content.body: template 'plain' (en_US) takes no body parameters, got 1"],
    ),
    "named: missing and unknown names": (
        Template("shipping_named", header={"order": "1"}, body={"first_name": "Jo", "foo": "x"}),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order; "
            "missing: order; unknown: foo"
        ],
    ),
    "named: nothing given": (
        Template("shipping_named", header={"order": "1"}),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order; "
            "missing: first_name, order"
        ],
    ),
    "named: positional given": (
        Template("shipping_named", header={"order": "1"}, body=["Jo", "1"]),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order, "
            "got 2 positional parameters; give each value its name"
        ],
    ),
    "named: a mix given": (
        Template(
            "shipping_named", header={"order": "1"}, body=[TextParam("Jo", name="first_name"), TextParam("1")]
        ),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order; "
            "missing: order; 1 value without a name"
        ],
    ),
    "positional: named given": (
        Template(
            "order_update",
            header=["#1"],
            body={"name": "Pablo", "order": "1", "when": "now"},
            buttons=[url_button(1)],
        ),
        [
            "content.body: template 'order_update' (en_US) expects 3 positional parameters, "
            "got named ones (name, order, when); send the values in order, without names"
        ],
    ),
    "text header: parameter missing": (
        Template("order_update", body=["Pablo", "8899", "today"], buttons=[url_button(1)]),
        ["content.header: template 'order_update' (en_US) expects 1 positional header parameter, got 0"],
    ),
    "text header: too many": (
        Template(
            "order_update", header=["#1", "#2"], body=["Pablo", "8899", "today"], buttons=[url_button(1)]
        ),
        ["content.header: template 'order_update' (en_US) expects 1 positional header parameter, got 2"],
    ),
    "text header: named header, wrong name": (
        Template("shipping_named", header={"order_id": "1"}, body={"first_name": "Jo", "order": "1"}),
        [
            "content.header: template 'shipping_named' (en_US) expects named header parameters order; "
            "missing: order; unknown: order_id"
        ],
    ),
    "text header: named header, positional given": (
        Template("shipping_named", header=["1"], body={"first_name": "Jo", "order": "1"}),
        [
            "content.header: template 'shipping_named' (en_US) expects named header parameters order, "
            "got 1 positional parameter; give each value its name"
        ],
    ),
    "text header: media given": (
        Template(
            "order_update",
            header=[MediaParam("image", link="https://x.example/a.png")],
            body=["Pablo", "8899", "today"],
            buttons=[url_button(1)],
        ),
        ["content.header: template 'order_update' (en_US) has a TEXT header, which takes text, got an image"],
    ),
    "text header: location given": (
        Template(
            "order_update",
            header=[LocationParam(1.0, 2.0)],
            body=["Pablo", "8899", "today"],
            buttons=[url_button(1)],
        ),
        [
            "content.header: template 'order_update' (en_US) has a TEXT header, "
            "which takes text, got a location"
        ],
    ),
    "fixed text header: parameter given": (
        Template("static_header", header=["x"]),
        ["content.header: template 'static_header' (en_US) takes no header parameters, got 1"],
    ),
    "no header: parameter given": (
        Template("plain", header=[MediaParam("document", link="https://x.example/a.pdf")]),
        ["content.header: template 'plain' (en_US) has no header, got 1 parameter"],
    ),
    "image header: missing": (
        Template("promo_image", body=["20%"], buttons=[TemplateButton("copy_code", 0, "SAVE20")]),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got none"
        ],
    ),
    "image header: video given": (
        Template(
            "promo_image",
            header=[MediaParam("video", media_id="1")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20")],
        ),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got a video"
        ],
    ),
    "image header: text given": (
        Template(
            "promo_image", header=["x"], body=["20%"], buttons=[TemplateButton("copy_code", 0, "SAVE20")]
        ),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got text"
        ],
    ),
    "image header: two given": (
        Template(
            "promo_image",
            header=[MediaParam("image", media_id="1"), MediaParam("image", media_id="2")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20")],
        ),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got 2 parameters"
        ],
    ),
    "video header: missing": (
        Template("video_tour"),
        [
            "content.header: template 'video_tour' (en_US) has a VIDEO header and needs a video "
            "parameter with every message, got none"
        ],
    ),
    "location header: image given": (
        Template("store_location", header=[MediaParam("image", media_id="1")]),
        [
            "content.header: template 'store_location' (en_US) has a LOCATION header and needs a location "
            "parameter with every message, got an image"
        ],
    ),
    "button: no such index": (
        Template("otp_code", body=["1"], buttons=[url_button(0), url_button(3)]),
        ["content.buttons[1]: template 'otp_code' (en_US) has no button at index 3 (it has 1 button)"],
    ),
    "button: template has none": (
        Template("plain", buttons=[TemplateButton("quick_reply", 0, "x")]),
        ["content.buttons[0]: template 'plain' (en_US) has no button at index 0 (it has no buttons)"],
    ),
    "button: phone number takes none": (
        Template(
            "promo_image",
            header=[MediaParam("image", media_id="1")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20"), url_button(1)],
        ),
        [
            "content.buttons[1]: template 'promo_image' (en_US) has a PHONE_NUMBER button at index 1, "
            "which takes no parameter"
        ],
    ),
    "button: URL without a variable takes none": (
        Template(
            "promo_image",
            header=[MediaParam("image", media_id="1")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20"), url_button(2)],
        ),
        [
            "content.buttons[1]: template 'promo_image' (en_US) has a URL button at index 2, "
            "which takes no parameter"
        ],
    ),
    "button: wrong sub_type": (
        Template(
            "order_update",
            header=["#1"],
            body=["Pablo", "8899", "today"],
            buttons=[url_button(0), url_button(1)],
        ),
        [
            "content.buttons[0]: template 'order_update' (en_US) has a QUICK_REPLY button at index 0, "
            "which takes a quick_reply parameter, not url"
        ],
    ),
    "button: URL variable missing": (
        Template("order_update", header=["#1"], body=["Pablo", "8899", "today"]),
        [
            "content.buttons: template 'order_update' (en_US) has a URL button at index 1, "
            "which needs a url parameter; none was given"
        ],
    ),
    "button: copy code missing": (
        Template("promo_image", header=[MediaParam("image", media_id="1")], body=["20%"]),
        [
            "content.buttons: template 'promo_image' (en_US) has a COPY_CODE button at index 0, "
            "which needs a copy_code parameter; none was given"
        ],
    ),
    "button: one-time password missing": (
        Template("otp_code", body=["123456"]),
        [
            "content.buttons: template 'otp_code' (en_US) has an OTP button at index 0, "
            "which needs a url parameter; none was given"
        ],
    ),
    "every problem at once, in field order": (
        Template(
            "order_update",
            header=[MediaParam("image", media_id="1")],
            body=["Pablo"],
            buttons=[TemplateButton("copy_code", 0, "x")],
        ),
        [
            "content.header: template 'order_update' (en_US) has a TEXT header, "
            "which takes text, got an image",
            "content.body: template 'order_update' (en_US) expects 3 positional parameters, got 1",
            "content.buttons[0]: template 'order_update' (en_US) has a QUICK_REPLY button at index 0, "
            "which takes a quick_reply parameter, not copy_code",
            "content.buttons: template 'order_update' (en_US) has a URL button at index 1, "
            "which needs a url parameter; none was given",
        ],
    ),
}


@pytest.mark.parametrize(("template", "problems"), NOT_FITTING.values(), ids=NOT_FITTING.keys())
def test_check_template_says_what_the_template_expects(template, problems):
    assert check_template(template, KNOWN) == problems


def test_check_template_still_checks_parameters_of_a_template_that_is_not_approved():
    known = [parse_template({**ORDER_UPDATE, "status": "REJECTED"})]
    assert check_template(
        Template("order_update", header=["#1"], body=["a"], buttons=[url_button(1)]), known
    ) == [
        "content.name: template 'order_update' (en_US) is REJECTED, only APPROVED templates can be sent",
        "content.body: template 'order_update' (en_US) expects 3 positional parameters, got 1",
    ]


def test_check_template_when_the_account_has_no_templates():
    assert check_template(Template("hello_world"), []) == [
        "content.name: no template 'hello_world' exists (the account has no templates)"
    ]


def test_check_template_lists_at_most_ten_known_names():
    known = [parse_template(entry(f"t{i:02}", body("x"))) for i in range(13)]
    assert check_template(Template("hello_world"), known) == [
        "content.name: no template 'hello_world' exists "
        "(known: t00, t01, t02, t03, t04, t05, t06, t07, t08, t09 and 3 more)"
    ]


# ---------------------------------------------------------------- registry with a fake fetch_page


class FakeGraph:
    """``fetch_page`` over pages chained by cursors; records every call."""

    def __init__(self, templates: list[dict[str, Any]], page_size: int = 3) -> None:
        self.pages = [templates[i : i + page_size] for i in range(0, len(templates), page_size)] or [[]]
        self.calls: list[tuple[str, dict[str, str] | None]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, target, params):
        self.calls.append((target, dict(params) if params is not None else None))
        if self.gate is not None:
            await self.gate.wait()
        after = (params or {}).get("after")
        index = int(after[1:]) if after else 0
        page: dict[str, Any] = {"data": self.pages[index]}
        paging: dict[str, Any] = {"cursors": {"before": f"c{index}", "after": f"c{index + 1}"}}
        if index + 1 < len(self.pages):
            paging["next"] = f"https://graph.example/v23.0/{WABA}/message_templates?after=c{index + 1}"
        page["paging"] = paging
        return page


FIRST_PARAMS = {"fields": FIELDS, "limit": "100"}


@pytest.fixture
def memory_cache(fake_clock):
    return MemoryTemplateCache(300, fake_clock)


async def test_fetch_all_follows_every_page_and_fills_the_cache(memory_cache):
    graph = FakeGraph(RAW, page_size=4)
    registry = TemplateRegistry(graph, WABA, memory_cache)

    assert await registry.fetch_all() == KNOWN

    path = f"{WABA}/message_templates"
    assert FIELDS == "name,language,status,category,parameter_format,components,id"
    assert graph.calls == [
        (path, FIRST_PARAMS),
        (path, {**FIRST_PARAMS, "after": "c1"}),
        (path, {**FIRST_PARAMS, "after": "c2"}),
    ]
    assert list(await memory_cache.get(WABA)) == RAW


async def test_fetch_all_follows_next_when_a_page_has_no_cursor(memory_cache):
    next_url = f"https://graph.example/v23.0/{WABA}/message_templates?limit=100&after=abc"
    calls = []

    async def fetch_page(target, params):
        calls.append((target, params))
        if len(calls) == 1:
            return {"data": [ORDER_UPDATE], "paging": {"next": next_url}}
        return {"data": [PLAIN], "paging": {"cursors": {"before": "x", "after": "y"}}}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    assert [t.name for t in await registry.fetch_all()] == ["order_update", "plain"]
    assert calls == [(f"{WABA}/message_templates", FIRST_PARAMS), (next_url, None)]


async def test_fetch_all_of_an_account_without_templates(memory_cache):
    registry = TemplateRegistry(FakeGraph([]), WABA, memory_cache)
    assert await registry.fetch_all() == []
    assert list(await memory_cache.get(WABA)) == []


async def test_fetch_all_skips_entries_it_cannot_read(memory_cache, caplog):
    async def fetch_page(target, params):
        return {"data": [{"language": "en_US"}, "junk", PLAIN]}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    assert [t.name for t in await registry.fetch_all()] == ["plain"]
    assert "ignoring a template the Graph API listed: template entry without a name" in caplog.text


async def test_fetch_all_rejects_an_answer_that_is_not_a_template_list(memory_cache):
    async def fetch_page(target, params):
        return {"error": {"message": "nope"}}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    with pytest.raises(PermanentDeliveryError) as info:
        await registry.fetch_all()
    assert str(info.value) == (
        f"the template list of WhatsApp Business Account {WABA} "
        "came back without a 'data' list (channel=whatsapp)"
    )
    assert await memory_cache.get(WABA) is None


async def test_fetch_all_stops_when_the_paging_cursor_repeats(memory_cache):
    async def fetch_page(target, params):
        return {"data": [PLAIN], "paging": {"next": "https://graph.example/n", "cursors": {"after": "same"}}}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    with pytest.raises(PermanentDeliveryError, match="repeats the paging cursor 'same'"):
        await registry.fetch_all()


async def test_templates_reads_the_cache_first(memory_cache, fake_clock):
    graph = FakeGraph(RAW)
    registry = TemplateRegistry(graph, WABA, memory_cache)

    assert await registry.templates() == KNOWN
    fetches = len(graph.calls)
    assert await registry.templates() == KNOWN
    assert len(graph.calls) == fetches

    await registry.templates(refresh=True)
    assert len(graph.calls) == 2 * fetches

    fake_clock.advance(300)
    await registry.templates()
    assert len(graph.calls) == 3 * fetches


async def test_concurrent_misses_share_one_fetch(memory_cache):
    graph = FakeGraph([PLAIN], page_size=1)
    graph.gate = asyncio.Event()
    registry = TemplateRegistry(graph, WABA, memory_cache)

    waiting = [asyncio.create_task(registry.templates()) for _ in range(5)]
    await asyncio.sleep(0)
    graph.gate.set()
    results = await asyncio.gather(*waiting)

    assert len(graph.calls) == 1
    assert all(r == [parse_template(PLAIN)] for r in results)


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(memory_cache):
    graph = FakeGraph([PLAIN], page_size=1)
    graph.gate = asyncio.Event()
    registry = TemplateRegistry(graph, WABA, memory_cache)

    first = asyncio.create_task(registry.templates())
    second = asyncio.create_task(registry.templates())
    await asyncio.sleep(0)
    first.cancel()
    graph.gate.set()

    assert await second == [parse_template(PLAIN)]
    assert first.cancelled()
    assert len(graph.calls) == 1


async def test_a_failed_fetch_is_not_remembered(memory_cache):
    attempts = []

    async def fetch_page(target, params):
        attempts.append(target)
        if len(attempts) == 1:
            raise PermanentDeliveryError("boom", channel="whatsapp")
        return {"data": [PLAIN]}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    with pytest.raises(PermanentDeliveryError, match="boom"):
        await registry.templates()
    assert await registry.templates() == [parse_template(PLAIN)]


async def test_find_matches_name_and_language_exactly(memory_cache):
    registry = TemplateRegistry(FakeGraph(RAW), WABA, memory_cache)
    assert await registry.find("order_update", "pt_BR") == parse_template(ORDER_UPDATE_PT)
    assert await registry.find("order_update", "pt") is None
    assert await registry.find("missing", "en_US") is None


# ---------------------------------------------------------------- registry over real HTTP


async def test_registry_pages_through_a_real_http_server():
    seen: list[dict[str, str]] = []

    async def list_templates(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        after = request.query.get("after")
        if after is None:
            return web.json_response(
                {
                    "data": RAW[:4],
                    "paging": {
                        "cursors": {"before": "MAZDZD", "after": "MjQZD"},
                        "next": str(request.url.update_query(after="MjQZD")),
                    },
                }
            )
        if after == "MjQZD":
            # No cursor on this page: the registry has to follow "next" as given.
            return web.json_response(
                {"data": RAW[4:8], "paging": {"next": str(request.url.update_query(after="end"))}}
            )
        return web.json_response({"data": RAW[8:], "paging": {"cursors": {"before": "x", "after": "y"}}})

    async with (
        fake_provider({("GET", f"/v23.0/{WABA}/message_templates"): list_templates}) as server,
        aiohttp.ClientSession() as session,
    ):

        async def get_json(path_or_url, params):
            url = path_or_url if "://" in path_or_url else server.make_url(f"/v23.0/{path_or_url}")
            async with session.get(url, params=params) as response:
                response.raise_for_status()
                return await response.json()

        cache = MemoryTemplateCache(300, FakeClock())
        registry = TemplateRegistry(get_json, WABA, cache)
        assert await registry.templates() == KNOWN
        assert await registry.find("otp_code", "en_US") == parse_template(OTP_CODE)

    assert seen == [FIRST_PARAMS, {**FIRST_PARAMS, "after": "MjQZD"}, {**FIRST_PARAMS, "after": "end"}]


# ---------------------------------------------------------------- MemoryTemplateCache


async def test_memory_cache_expires_after_ttl(fake_clock):
    cache = MemoryTemplateCache(60, fake_clock)
    await cache.put("k", [PLAIN])

    fake_clock.advance(59.9)
    assert list(await cache.get("k")) == [PLAIN]
    fake_clock.advance(0.1)
    assert await cache.get("k") is None


async def test_memory_cache_keys_are_separate_and_clear_forgets(fake_clock):
    cache = MemoryTemplateCache(60, fake_clock)
    await cache.put("a", [PLAIN])
    await cache.put("b", [ORDER_UPDATE])
    await cache.clear("a")
    assert await cache.get("a") is None
    assert list(await cache.get("b")) == [ORDER_UPDATE]
    await cache.close()
    assert await cache.get("b") is None


async def test_memory_cache_keeps_its_own_read_only_copy(fake_clock):
    cache = MemoryTemplateCache(60, fake_clock)
    stored = [PLAIN]
    await cache.put("k", stored)
    stored.append(ORDER_UPDATE)
    got = await cache.get("k")
    assert got == (PLAIN,)
    # The same object until the next put: readers may keep what they derived from it.
    assert await cache.get("k") is got


async def test_memory_cache_with_ttl_zero_stores_nothing(fake_clock):
    cache = MemoryTemplateCache(0, fake_clock)
    await cache.put("k", [PLAIN])
    assert await cache.get("k") is None


def test_memory_cache_rejects_a_negative_ttl(fake_clock):
    with pytest.raises(ValueError, match=r"^ttl_s must be >= 0, got -1$"):
        MemoryTemplateCache(-1, fake_clock)


# ---------------------------------------------------------------- RedisTemplateCache


@pytest.fixture
def cache_prefix(redis_prefix):
    """A template cache prefix of this test alone (the cache appends the WABA id)."""
    return redis_prefix + ":"


@pytest.fixture
async def raw_redis(redis_url):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_redis_cache_round_trip_with_a_server_side_ttl(redis_url, cache_prefix, raw_redis):
    cache = RedisTemplateCache(redis_url, 30, prefix=cache_prefix)
    try:
        assert await cache.get(WABA) is None
        await cache.put(WABA, RAW)
        assert list(await cache.get(WABA)) == RAW
        assert 0 < await raw_redis.pttl(cache_prefix + WABA) <= 30_000
        assert json.loads(await raw_redis.get(cache_prefix + WABA)) == RAW
    finally:
        await cache.close()


async def test_redis_cache_default_prefix(redis_url, raw_redis):
    key = f"test-{uuid.uuid4().hex}"
    cache = RedisTemplateCache(redis_url, 5)
    try:
        await cache.put(key, [PLAIN])
        assert await raw_redis.exists(f"omnichannel:whatsapp:templates:{key}") == 1
    finally:
        await cache.clear(key)
        await cache.close()


async def test_two_processes_share_one_fetched_list(redis_url, cache_prefix):
    first_graph, second_graph = FakeGraph(RAW), FakeGraph(RAW)
    first_cache = RedisTemplateCache(redis_url, 60, prefix=cache_prefix)
    second_cache = RedisTemplateCache(redis_url, 60, prefix=cache_prefix)
    try:
        first = TemplateRegistry(first_graph, WABA, first_cache)
        second = TemplateRegistry(second_graph, WABA, second_cache)

        assert await first.templates() == KNOWN
        assert await second.templates() == KNOWN
        assert await second.find("shipping_named", "en_US") == parse_template(SHIPPING_NAMED)
        assert first_graph.calls
        assert second_graph.calls == []

        # One process learns the templates changed (a webhook) and clears: both fetch again.
        await first_cache.clear(WABA)
        assert await second_cache.get(WABA) is None
        await second.templates()
        assert len(second_graph.calls) == len(first_graph.calls)
    finally:
        await first_cache.close()
        await second_cache.close()


async def test_redis_cache_treats_a_malformed_value_as_a_miss(redis_url, cache_prefix, raw_redis, caplog):
    await raw_redis.set(cache_prefix + WABA, b"{not json", px=10_000)
    cache = RedisTemplateCache(redis_url, 30, prefix=cache_prefix)
    try:
        assert await cache.get(WABA) is None
    finally:
        await cache.close()
    assert "whatsapp: ignoring a malformed template list in redis://" in caplog.text
    assert f" at '{cache_prefix}{WABA}'" in caplog.text


async def test_redis_cache_with_ttl_zero_stores_nothing(redis_url, cache_prefix, raw_redis):
    cache = RedisTemplateCache(redis_url, 0, prefix=cache_prefix)
    try:
        await cache.put(WABA, RAW)
        assert await cache.get(WABA) is None
        assert await raw_redis.exists(cache_prefix + WABA) == 0
    finally:
        await cache.close()


async def test_unreachable_redis_reads_as_a_miss_and_warns_once(caplog):
    clock = FakeClock()
    cache = RedisTemplateCache(UNREACHABLE_REDIS_URL, 60, clock=clock, retry_after_s=5)
    graph = FakeGraph(RAW)
    registry = TemplateRegistry(graph, WABA, cache)
    try:
        with caplog.at_level(logging.WARNING, logger="omnichannel.whatsapp"):
            assert await cache.get(WABA) is None
            # Sending goes on: the registry fetches from the Graph API instead.
            assert await registry.templates() == KNOWN
            # This process's own copy spares the next sends a fetch each.
            assert await registry.templates() == KNOWN
            clock.advance(5)
            await cache.clear(WABA)
            assert await cache.get(WABA) is None
    finally:
        await cache.close()
    warnings = [r for r in caplog.records if r.name == "omnichannel.whatsapp"]
    assert len(warnings) == 1
    assert (
        warnings[0]
        .getMessage()
        .startswith("whatsapp: template cache at redis://127.0.0.1:1/0 is unreachable (ConnectionError: ")
    )
    assert len(graph.calls) == len(graph.pages)


async def test_unreachable_redis_log_line_hides_the_password(caplog):
    cache = RedisTemplateCache("redis://user:hunter2@127.0.0.1:1/3", 60)
    try:
        with caplog.at_level(logging.WARNING, logger="omnichannel.whatsapp"):
            assert await cache.get(WABA) is None
    finally:
        await cache.close()
    assert "redis://127.0.0.1:1/3 is unreachable" in caplog.text
    assert "hunter2" not in caplog.text


def test_redis_cache_rejects_a_url_that_is_not_redis():
    with pytest.raises(ConfigError) as info:
        RedisTemplateCache("http://127.0.0.1:6379", 60)
    assert info.value.errors == [
        "plugins.whatsapp.redis_url: Redis URL must specify one of the following schemes "
        "(redis://, rediss://, unix://)"
    ]


def test_redis_cache_without_the_redis_package(monkeypatch):
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(PluginError) as info:
        RedisTemplateCache("redis://127.0.0.1:6379/0", 60)
    assert str(info.value) == (
        "plugin 'whatsapp': redis_url is set but the 'redis' package is not installed; "
        "install it with: pip install 'omnichannel[redis]'"
    )


async def test_the_registry_parses_a_cached_list_once(fake_clock, monkeypatch):
    import omnichannel_whatsapp.templates as templates_module

    calls = []
    real_parse = templates_module.parse_template

    def counting_parse(data):
        calls.append(data["name"])
        return real_parse(data)

    monkeypatch.setattr(templates_module, "parse_template", counting_parse)
    cache = MemoryTemplateCache(60, fake_clock)
    await cache.put(WABA, RAW)
    registry = TemplateRegistry(_never_fetch, WABA, cache)
    first = await registry.templates()
    parsed_once = len(calls)
    for _ in range(5):
        assert await registry.templates() is first
    assert len(calls) == parsed_once == len(RAW)
    await cache.put(WABA, RAW[:1])  # a new list: parsed again
    assert len(await registry.templates()) == 1
    assert len(calls) == parsed_once + 1


async def _never_fetch(path, params):
    raise AssertionError("the cache holds the templates; nothing is fetched")
