"""The JSON wire format of messages and receipts: its exact shape, tagged content, and round trips."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serde_support import converter_fixture  # noqa: F401  (the converter fixture)

from omnichannel import (
    ButtonType,
    Certainty,
    Content,
    CurrencyParam,
    DateTimeParam,
    DeliveryStatus,
    ErrorInfo,
    ErrorScope,
    LocationParam,
    Media,
    MediaKind,
    MediaParam,
    Message,
    Receipt,
    Template,
    TemplateButton,
    Text,
    TextParam,
    make_converter,
)

# ---------------------------------------------------------------- messages


def test_message_wire_format(converter):
    message = Message(
        "+15551234567",
        Template(
            "order_update",
            language="pt_BR",
            header=[MediaParam(MediaKind.IMAGE, link="https://example.com/a.png")],
            body={"first_name": "Ann"},
            buttons=[TemplateButton("url", 0, "order/42")],
        ),
        channel="whatsapp",
        id="m-1",
        metadata={"order": "42"},
    )
    assert converter.unstructure(message) == {
        "recipient": "+15551234567",
        "content": {
            "type": "template",
            "name": "order_update",
            "language": "pt_BR",
            "header": [
                {
                    "type": "media",
                    "kind": "image",
                    "link": "https://example.com/a.png",
                    "media_id": None,
                    "filename": None,
                    "name": None,
                }
            ],
            "body": [{"type": "text", "text": "Ann", "name": "first_name"}],
            "buttons": [{"sub_type": "url", "index": 0, "value": "order/42"}],
        },
        "channel": "whatsapp",
        "route": [],
        "id": "m-1",
        "idempotency_key": None,
        "reply_to": None,
        "metadata": {"order": "42"},
    }


@pytest.mark.parametrize(
    ("content", "data"),
    [
        (Text("hi", preview_url=True), {"type": "text", "body": "hi", "preview_url": True}),
        (
            Media("document", media_id="123", filename="a.pdf"),
            {
                "type": "media",
                "kind": "document",
                "url": None,
                "media_id": "123",
                "caption": None,
                "filename": "a.pdf",
            },
        ),
    ],
)
def test_content_is_tagged_with_its_type(converter, content, data):
    assert converter.unstructure(content, Content) == data
    assert converter.structure(data, Content) == content


def test_structure_fills_defaults(converter):
    message = converter.structure(
        {"recipient": " +1 ", "content": {"type": "text", "body": "hi"}, "route": ["sms"]}, Message
    )
    assert message.recipient == "+1"
    assert message.content == Text("hi")
    assert message.route == ("sms",)
    assert len(message.id) == 32


_text = st.text(max_size=20)
_name = st.none() | st.text(min_size=1, max_size=10)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_params = st.one_of(
    st.builds(TextParam, _text, name=_name),
    st.builds(CurrencyParam, _text, st.sampled_from(["USD", "EUR", "BRL"]), st.integers(), name=_name),
    st.builds(DateTimeParam, _text, name=_name),
    st.builds(
        MediaParam,
        st.sampled_from(MediaKind),
        link=st.none() | _text,
        media_id=st.none() | _text,
        filename=st.none() | _text,
        name=_name,
    ),
    st.builds(
        LocationParam,
        _floats,
        _floats,
        location_name=st.none() | _text,
        address=st.none() | _text,
        name=_name,
    ),
)
_contents = st.one_of(
    st.builds(Text, _text, preview_url=st.booleans()),
    st.builds(
        Template,
        _text,
        language=st.sampled_from(["en_US", "pt_BR", "de"]),
        header=st.lists(_params, max_size=2),
        body=st.lists(_params, max_size=4),
        buttons=st.lists(
            st.builds(TemplateButton, st.sampled_from(ButtonType), st.integers(-5, 5), _text), max_size=3
        ),
    ),
    st.builds(
        Media,
        st.sampled_from(MediaKind),
        url=st.none() | _text,
        media_id=st.none() | _text,
        caption=st.none() | _text,
        filename=st.none() | _text,
    ),
)
messages = st.builds(
    Message,
    _text,
    _contents,
    channel=st.none() | st.sampled_from(["whatsapp", "sms", "console"]),
    route=st.lists(st.sampled_from(["whatsapp", "sms", "email"]), max_size=3),
    id=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    idempotency_key=st.none() | _text,
    metadata=st.dictionaries(_text, _text, max_size=3),
)


@settings(derandomize=True, database=None, max_examples=150)
@given(messages)
def test_messages_round_trip_through_json(message):
    converter = make_converter()
    wire = json.dumps(converter.unstructure(message))
    assert converter.structure(json.loads(wire), Message) == message


def test_receipt_round_trips_through_json(converter):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    receipt = Receipt(
        "m-1",
        "whatsapp",
        DeliveryStatus.ACCEPTED,
        provider_message_id="wamid.1",
        attempts=2,
        started_at=start,
        finished_at=start + timedelta(seconds=1),
    )
    assert converter.structure(json.loads(json.dumps(converter.unstructure(receipt))), Receipt) == receipt


@pytest.mark.parametrize("code", [131047, "E42", None])
def test_failed_receipt_with_its_error_round_trips_through_json(converter, code):
    # ErrorInfo is "a serialisable description": a stored or queued receipt must come back.
    receipt = Receipt(
        "m-1",
        "whatsapp",
        DeliveryStatus.FAILED,
        error=ErrorInfo(
            kind="PermanentDeliveryError",
            detail="re-engagement window closed",
            code=code,
            http_status=400,
            certainty=Certainty.REJECTED,
            scope=ErrorScope.RECIPIENT,
        ),
    )
    data = json.loads(json.dumps(converter.unstructure(receipt)))
    assert data["error"]["code"] == code
    assert converter.structure(data, Receipt) == receipt
