"""``build_payload``: the exact JSON the Cloud API documents, for every content kind."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnichannel import (
    Buttons,
    CurrencyParam,
    DateTimeParam,
    ListMenu,
    ListRow,
    ListSection,
    LocationParam,
    Media,
    MediaKind,
    MediaParam,
    Message,
    ReplyButton,
    Template,
    TemplateButton,
    Text,
    TextParam,
)
from omnichannel_whatsapp.payload import WhatsAppPayload, build_payload

TO = "16505551234"


def envelope(kind, content, **extra):
    """The body every message shares, for a message with id ``m-1`` to ``TO``."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": kind,
        **extra,
        "biz_opaque_callback_data": "m-1",
        kind: content,
    }


def build(content, **message):
    message.setdefault("recipient", "+" + TO)
    return build_payload(Message(content=content, id="m-1", **message)).body


# ---------------------------------------------------------------- envelope


def test_payload_is_a_frozen_value_around_the_body():
    payload = build_payload(Message("+16505551234", Text("hi"), id="m-1"))
    assert isinstance(payload, WhatsAppPayload)
    assert payload == WhatsAppPayload(envelope("text", {"body": "hi", "preview_url": False}))


def test_text_spec_example():
    body = build(Text("Hello https://example.com", preview_url=True))
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "16505551234",
        "type": "text",
        "biz_opaque_callback_data": "m-1",
        "text": {"body": "Hello https://example.com", "preview_url": True},
    }


@pytest.mark.parametrize("recipient", ["+16505551234", "16505551234", "+1 (650) 555-1234"])
def test_to_is_the_recipients_digits(recipient):
    assert build(Text("hi"), recipient=recipient)["to"] == "16505551234"


def test_reply_to_becomes_the_context():
    body = build(Text("hi"), reply_to="wamid.HBgL")
    assert body == envelope(
        "text", {"body": "hi", "preview_url": False}, context={"message_id": "wamid.HBgL"}
    )


def test_no_context_without_reply_to():
    assert "context" not in build(Text("hi"))


def test_the_idempotency_key_is_the_callback_data():
    message = Message("+16505551234", Text("hi"))
    assert build_payload(message).body["biz_opaque_callback_data"] == message.id  # the key by default
    keyed = Message("+16505551234", Text("hi"), idempotency_key="campaign-7:+16505551234")
    assert build_payload(keyed).body["biz_opaque_callback_data"] == "campaign-7:+16505551234"


# ---------------------------------------------------------------- media


@pytest.mark.parametrize(
    ("media", "expected"),
    [
        pytest.param(
            Media("image", url="https://cdn.example.com/a.jpg", caption="optional"),
            {"link": "https://cdn.example.com/a.jpg", "caption": "optional"},
            id="image-link-caption",
        ),
        pytest.param(Media("image", media_id="1234567890123456"), {"id": "1234567890123456"}, id="image-id"),
        pytest.param(
            Media(
                "document",
                url="https://x.example/invoice.pdf",
                filename="invoice.pdf",
                caption="Your invoice",
            ),
            {"link": "https://x.example/invoice.pdf", "filename": "invoice.pdf", "caption": "Your invoice"},
            id="document",
        ),
        pytest.param(
            Media("video", media_id="42", caption="clip"), {"id": "42", "caption": "clip"}, id="video"
        ),
        pytest.param(Media("audio", media_id="43"), {"id": "43"}, id="audio"),
        pytest.param(Media("sticker", media_id="44"), {"id": "44"}, id="sticker"),
    ],
)
def test_media_spec_examples(media, expected):
    assert build(media) == envelope(str(media.kind), expected)


# ---------------------------------------------------------------- templates


def template_body(template, components=None):
    content = {"name": template.name, "language": {"code": template.language}}
    if components is not None:
        content["components"] = components
    return envelope("template", content)


def test_template_without_variables_has_no_components():
    template = Template("hello_world", language="en_US")
    assert build(template) == template_body(template)
    assert build(template)["template"] == {"name": "hello_world", "language": {"code": "en_US"}}


def test_template_positional_body_spec_example():
    template = Template(
        "order_update",
        body=[
            "Pablo",
            CurrencyParam("$100.99", "USD", 100990),
            DateTimeParam("February 25, 1977"),
        ],
    )
    assert build(template) == template_body(
        template,
        [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Pablo"},
                    {
                        "type": "currency",
                        "currency": {"fallback_value": "$100.99", "code": "USD", "amount_1000": 100990},
                    },
                    {"type": "date_time", "date_time": {"fallback_value": "February 25, 1977"}},
                ],
            }
        ],
    )


def test_template_named_body_spec_example():
    template = Template("order_update", body={"first_name": "Jessica", "order_number": "SKBUP2-4CPIG9"})
    assert build(template)["template"]["components"] == [
        {
            "type": "body",
            "parameters": [
                {"type": "text", "parameter_name": "first_name", "text": "Jessica"},
                {"type": "text", "parameter_name": "order_number", "text": "SKBUP2-4CPIG9"},
            ],
        }
    ]


def test_named_currency_and_date_time_carry_their_names():
    template = Template(
        "receipt", body={"total": CurrencyParam("$1.00", "USD", 1000), "when": DateTimeParam("today")}
    )
    assert build(template)["template"]["components"][0]["parameters"] == [
        {
            "type": "currency",
            "parameter_name": "total",
            "currency": {"fallback_value": "$1.00", "code": "USD", "amount_1000": 1000},
        },
        {"type": "date_time", "parameter_name": "when", "date_time": {"fallback_value": "today"}},
    ]


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        pytest.param(TextParam("Summer Sale"), {"type": "text", "text": "Summer Sale"}, id="text"),
        pytest.param(
            MediaParam(MediaKind.IMAGE, link="https://x.example/a.png"),
            {"type": "image", "image": {"link": "https://x.example/a.png"}},
            id="image",
        ),
        pytest.param(
            MediaParam(MediaKind.VIDEO, media_id="987"), {"type": "video", "video": {"id": "987"}}, id="video"
        ),
        pytest.param(
            MediaParam(MediaKind.DOCUMENT, link="https://x.example/r.pdf", filename="r.pdf"),
            {"type": "document", "document": {"link": "https://x.example/r.pdf", "filename": "r.pdf"}},
            id="document",
        ),
        pytest.param(
            LocationParam(37.48, -122.14, location_name="HQ", address="1 Hacker Way"),
            {
                "type": "location",
                "location": {
                    "latitude": 37.48,
                    "longitude": -122.14,
                    "name": "HQ",
                    "address": "1 Hacker Way",
                },
            },
            id="location",
        ),
        pytest.param(
            LocationParam(37.48, -122.14),
            {"type": "location", "location": {"latitude": 37.48, "longitude": -122.14}},
            id="location-bare",
        ),
    ],
)
def test_template_header_spec_examples(param, expected):
    template = Template("promo", header=[param])
    assert build(template)["template"]["components"] == [{"type": "header", "parameters": [expected]}]


@pytest.mark.parametrize(
    ("button", "expected"),
    [
        pytest.param(
            TemplateButton("quick_reply", 0, "unsubscribe-42"),
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "0",
                "parameters": [{"type": "payload", "payload": "unsubscribe-42"}],
            },
            id="quick_reply",
        ),
        pytest.param(
            TemplateButton("url", 1, "order/8899"),
            {
                "type": "button",
                "sub_type": "url",
                "index": "1",
                "parameters": [{"type": "text", "text": "order/8899"}],
            },
            id="url",
        ),
        pytest.param(
            TemplateButton("copy_code", 0, "SAVE20"),
            {
                "type": "button",
                "sub_type": "copy_code",
                "index": "0",
                "parameters": [{"type": "coupon_code", "coupon_code": "SAVE20"}],
            },
            id="copy_code",
        ),
    ],
)
def test_template_button_spec_examples(button, expected):
    assert build(Template("promo", buttons=[button]))["template"]["components"] == [expected]


def test_template_with_every_component_in_order():
    template = Template(
        "order_update",
        language="en",
        header=["#8899"],
        body=["Pablo", "8899", "today"],
        buttons=[TemplateButton("quick_reply", 0, "stop"), TemplateButton("url", 1, "8899")],
    )
    assert build(template, reply_to="wamid.X") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": "template",
        "context": {"message_id": "wamid.X"},
        "biz_opaque_callback_data": "m-1",
        "template": {
            "name": "order_update",
            "language": {"code": "en"},
            "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "#8899"}]},
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Pablo"},
                        {"type": "text", "text": "8899"},
                        {"type": "text", "text": "today"},
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": "0",
                    "parameters": [{"type": "payload", "payload": "stop"}],
                },
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "1",
                    "parameters": [{"type": "text", "text": "8899"}],
                },
            ],
        },
    }


def test_template_with_only_buttons_omits_header_and_body():
    template = Template("t", buttons=[TemplateButton("url", 0, "x")])
    assert [c["type"] for c in build(template)["template"]["components"]] == ["button"]


# ---------------------------------------------------------------- interactive


def test_reply_buttons_spec_example():
    content = Buttons(
        "Do you confirm?",
        [ReplyButton("yes-1", "Yes"), ReplyButton("no-1", "No")],
        header="Order 8899",
        footer="Reply within 24 h",
    )
    assert build(content) == envelope(
        "interactive",
        {
            "type": "button",
            "header": {"type": "text", "text": "Order 8899"},
            "body": {"text": "Do you confirm?"},
            "footer": {"text": "Reply within 24 h"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": "yes-1", "title": "Yes"}},
                    {"type": "reply", "reply": {"id": "no-1", "title": "No"}},
                ]
            },
        },
    )


def test_reply_buttons_without_header_and_footer():
    content = Buttons("Ok?", [ReplyButton("y", "Yes")])
    assert build(content)["interactive"] == {
        "type": "button",
        "body": {"text": "Ok?"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "y", "title": "Yes"}}]},
    }


def test_list_menu_spec_shape():
    content = ListMenu(
        "Pick a slot",
        "Slots",
        [
            ListSection(
                [ListRow("mon-9", "Monday 9:00", "Room A"), ListRow("mon-10", "Monday 10:00")], "Monday"
            ),
            ListSection([ListRow("tue-9", "Tuesday 9:00")], "Tuesday"),
        ],
        header="Dentist",
        footer="Times are local",
    )
    assert build(content) == envelope(
        "interactive",
        {
            "type": "list",
            "header": {"type": "text", "text": "Dentist"},
            "body": {"text": "Pick a slot"},
            "footer": {"text": "Times are local"},
            "action": {
                "button": "Slots",
                "sections": [
                    {
                        "title": "Monday",
                        "rows": [
                            {"id": "mon-9", "title": "Monday 9:00", "description": "Room A"},
                            {"id": "mon-10", "title": "Monday 10:00"},
                        ],
                    },
                    {"title": "Tuesday", "rows": [{"id": "tue-9", "title": "Tuesday 9:00"}]},
                ],
            },
        },
    )


def test_list_menu_single_untitled_section():
    content = ListMenu("Pick", "Open", [ListSection([ListRow("a", "A")])])
    assert build(content)["interactive"] == {
        "type": "list",
        "body": {"text": "Pick"},
        "action": {"button": "Open", "sections": [{"rows": [{"id": "a", "title": "A"}]}]},
    }


# ---------------------------------------------------------------- properties

optional_text = st.none() | st.text(max_size=5)
params = st.one_of(
    st.builds(TextParam, st.text(max_size=5), optional_text),
    st.builds(CurrencyParam, st.text(max_size=5), st.just("USD"), st.integers(), optional_text),
    st.builds(DateTimeParam, st.text(max_size=5), optional_text),
    st.builds(
        MediaParam,
        st.sampled_from([MediaKind.IMAGE, MediaKind.VIDEO, MediaKind.DOCUMENT]),
        st.just("https://x.example/a"),
        st.none(),
        optional_text,
    ),
    st.builds(LocationParam, st.floats(-90, 90), st.floats(-180, 180), optional_text, optional_text),
)
contents = st.one_of(
    st.builds(Text, st.text(max_size=5), st.booleans()),
    st.builds(
        Media, st.sampled_from(list(MediaKind)), st.just("https://x.example/a"), st.none(), optional_text
    ),
    st.builds(Media, st.sampled_from(list(MediaKind)), st.none(), st.just("1"), optional_text, optional_text),
    st.builds(
        Template,
        st.just("t"),
        st.just("en"),
        st.lists(params, max_size=1),
        st.lists(params, max_size=3),
        st.lists(
            st.builds(
                TemplateButton,
                st.sampled_from(["quick_reply", "url", "copy_code"]),
                st.integers(0, 9),
                st.text(max_size=5),
            ),
            max_size=2,
        ),
    ),
    st.builds(
        Buttons,
        st.text(max_size=5),
        st.lists(st.builds(ReplyButton, st.text(max_size=3), st.text(max_size=3)), max_size=3),
        optional_text,
        optional_text,
    ),
    st.builds(
        ListMenu,
        st.text(max_size=5),
        st.text(max_size=5),
        st.lists(
            st.builds(
                ListSection,
                st.lists(
                    st.builds(ListRow, st.text(max_size=3), st.text(max_size=3), optional_text), max_size=2
                ),
                optional_text,
            ),
            max_size=2,
        ),
        optional_text,
        optional_text,
    ),
)


def nones(value, path="$"):
    """Paths of every ``None`` inside a JSON value."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nones(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nones(v, f"{path}[{i}]")]
    return []


@settings(max_examples=200)
@given(content=contents, reply_to=st.none() | st.just("wamid.A"))
def test_every_body_is_json_without_nulls(content, reply_to):
    body = build(content, reply_to=reply_to)
    assert nones(body) == []
    assert json.loads(json.dumps(body)) == body
    assert body["type"] in body
    assert set(body) - {"context"} == {
        "messaging_product",
        "recipient_type",
        "to",
        "type",
        "biz_opaque_callback_data",
        body["type"],
    }
