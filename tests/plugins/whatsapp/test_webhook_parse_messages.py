"""WhatsApp webhooks: parsing inbound messages (every message kind) into ``InboundMessage``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from webhook_support import (
    OUT_WAMID,
    PHONE_NUMBER_ID,
    TEXT_NOTIFICATION,
    WAMID,
    envelope,
    inbound,
    messages_value,
    only,
)

from omnichannel import InboundMessage, Media, MediaKind, Text
from omnichannel_whatsapp.webhook import parse_notification


def test_parse_text_message():
    event = only(parse_notification(TEXT_NOTIFICATION), InboundMessage)
    assert event == InboundMessage(
        channel="whatsapp",
        sender="16505551234",
        content=Text("Does it come in another color?"),
        provider_message_id=WAMID,
        reply_to=None,
        details={"kind": "text", "profile_name": "Sheena Nelson", "phone_number_id": PHONE_NUMBER_ID},
        occurred_at=datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC),
    )
    assert event.occurred_at == datetime.fromtimestamp(1749416383, UTC)


def test_parse_uses_the_channel_name():
    event = only(parse_notification(TEXT_NOTIFICATION, channel="whatsapp-eu"), InboundMessage)
    assert event.channel == "whatsapp-eu"


def test_parse_reply_context():
    message = inbound("text", {"body": "yes"}, context={"from": "15550783881", "id": OUT_WAMID})
    event = only(parse_notification(envelope(messages_value(message))), InboundMessage)
    assert event.reply_to == OUT_WAMID


def test_parse_forwarded_message_is_not_a_reply():
    message = inbound("text", {"body": "look"}, context={"forwarded": True})
    event = only(parse_notification(envelope(messages_value(message))), InboundMessage)
    assert event.reply_to is None
    assert event.details["forwarded"] is True


@pytest.mark.parametrize(
    ("type_", "body", "expected", "extra_details"),
    [
        (
            "image",
            {
                "caption": "the blue one",
                "mime_type": "image/jpeg",
                "sha256": "cXZ1ZXJ5IGhhc2g=",
                "id": "1479537139650973",
            },
            Media(MediaKind.IMAGE, media_id="1479537139650973", caption="the blue one"),
            {"mime_type": "image/jpeg", "sha256": "cXZ1ZXJ5IGhhc2g="},
        ),
        (
            "document",
            {
                "caption": "invoice",
                "filename": "invoice-0042.pdf",
                "mime_type": "application/pdf",
                "sha256": "ZG9jIGhhc2g=",
                "id": "2153409868414141",
            },
            Media(
                MediaKind.DOCUMENT,
                media_id="2153409868414141",
                caption="invoice",
                filename="invoice-0042.pdf",
            ),
            {"mime_type": "application/pdf", "sha256": "ZG9jIGhhc2g="},
        ),
        (
            "audio",
            {"mime_type": "audio/ogg; codecs=opus", "sha256": "YXVkaW8=", "id": "917383", "voice": True},
            Media(MediaKind.AUDIO, media_id="917383"),
            {"mime_type": "audio/ogg; codecs=opus", "sha256": "YXVkaW8=", "voice": True},
        ),
        (
            "video",
            {"mime_type": "video/mp4", "sha256": "dmlkZW8=", "id": "55501"},
            Media(MediaKind.VIDEO, media_id="55501"),
            {"mime_type": "video/mp4", "sha256": "dmlkZW8="},
        ),
        (
            "sticker",
            {"mime_type": "image/webp", "sha256": "c3RpY2tlcg==", "id": "77702", "animated": False},
            Media(MediaKind.STICKER, media_id="77702"),
            {"mime_type": "image/webp", "sha256": "c3RpY2tlcg==", "animated": False},
        ),
    ],
)
def test_parse_media_messages(type_, body, expected, extra_details):
    event = only(parse_notification(envelope(messages_value(inbound(type_, body)))), InboundMessage)
    assert event.content == expected
    assert dict(event.details) == {
        "kind": type_,
        "profile_name": "Sheena Nelson",
        "phone_number_id": PHONE_NUMBER_ID,
        **extra_details,
    }


def test_parse_button_reply():
    message = inbound(
        "interactive",
        {"type": "button_reply", "button_reply": {"id": "confirm-42", "title": "Confirm"}},
        context={"from": "15550783881", "id": OUT_WAMID},
    )
    event = only(parse_notification(envelope(messages_value(message))), InboundMessage)
    assert event.content == Text("Confirm")
    assert event.reply_to == OUT_WAMID
    assert event.details["kind"] == "interactive"
    assert event.details["reply_id"] == "confirm-42"
    assert "description" not in event.details


def test_parse_list_reply():
    message = inbound(
        "interactive",
        {
            "type": "list_reply",
            "list_reply": {"id": "slot-3", "title": "Thursday 10:00", "description": "With Dr. Ann"},
        },
    )
    event = only(parse_notification(envelope(messages_value(message))), InboundMessage)
    assert event.content == Text("Thursday 10:00")
    assert event.details["reply_id"] == "slot-3"
    assert event.details["description"] == "With Dr. Ann"


def test_parse_template_quick_reply_button():
    message = inbound(
        "button",
        {"payload": "STOP_PROMOTIONS", "text": "Stop promotions"},
        context={"from": "15550783881", "id": OUT_WAMID},
    )
    event = only(parse_notification(envelope(messages_value(message))), InboundMessage)
    assert event.content == Text("Stop promotions")
    assert event.details["kind"] == "button"
    assert event.details["payload"] == "STOP_PROMOTIONS"


def test_parse_flow_reply():
    message = inbound(
        "interactive",
        {
            "type": "nfm_reply",
            "nfm_reply": {"name": "flow", "body": "Sent", "response_json": '{"flow_token": "t"}'},
        },
    )
    event = only(parse_notification(envelope(messages_value(message))), InboundMessage)
    assert event.content == Text("Sent")
    assert event.details["response_json"] == '{"flow_token": "t"}'


@pytest.mark.parametrize(
    ("message", "summary", "detail_key"),
    [
        (
            inbound(
                "location",
                {
                    "latitude": 37.483307,
                    "longitude": -122.148981,
                    "name": "Pablo Morales",
                    "address": "1 Hacker Way, Menlo Park, CA 94025",
                },
            ),
            "location: Pablo Morales, 1 Hacker Way, Menlo Park, CA 94025 (37.483307, -122.148981)",
            "location",
        ),
        (
            inbound(
                "contacts",
                None,
                contacts=[
                    {"name": {"formatted_name": "Ann Lee", "first_name": "Ann"}, "phones": []},
                    {"name": {"formatted_name": "Bo Chen"}},
                ],
            ),
            "shared contacts: Ann Lee, Bo Chen",
            "contacts",
        ),
        (inbound("reaction", {"message_id": OUT_WAMID, "emoji": "👍"}), "reacted 👍", "reacted_to"),
        (inbound("reaction", {"message_id": OUT_WAMID}), "removed a reaction", "reacted_to"),
        (
            inbound(
                "order",
                {
                    "catalog_id": "9999",
                    "product_items": [
                        {"product_retailer_id": "a", "quantity": 1, "item_price": 10, "currency": "USD"},
                        {"product_retailer_id": "b", "quantity": 2, "item_price": 5, "currency": "USD"},
                    ],
                },
            ),
            "order of 2 item(s)",
            "order",
        ),
        (
            inbound(
                "system",
                {
                    "body": "User A changed from 16505551234 to 16505559999",
                    "new_wa_id": "16505559999",
                    "type": "user_changed_number",
                },
            ),
            "User A changed from 16505551234 to 16505559999",
            "system",
        ),
        (
            {
                "from": "16505551234",
                "id": WAMID,
                "timestamp": "1749416383",
                "type": "unsupported",
                "errors": [
                    {
                        "code": 131051,
                        "title": "Message type unknown",
                        "message": "Message type unknown",
                        "error_data": {"details": "Message type is currently not supported."},
                    }
                ],
            },
            "unsupported message",
            "errors",
        ),
        (inbound("revoke", {"original_message_id": OUT_WAMID}), "deleted a message", "original_message_id"),
        (inbound("edit", {"original_message_id": OUT_WAMID}), "edit message", "kind"),
    ],
)
def test_parse_other_message_kinds_as_readable_text(message, summary, detail_key):
    event = only(parse_notification(envelope(messages_value(message))), InboundMessage)
    assert event.content == Text(summary)
    assert event.details["kind"] == message["type"]
    assert detail_key in event.details


def test_parse_system_message_without_contacts():
    message = inbound("system", {"body": "changed number", "wa_id": "16505559999"})
    event = only(parse_notification(envelope(messages_value(message, contacts=[]))), InboundMessage)
    assert "profile_name" not in event.details


def test_parse_bsuid_sender_without_phone_number():
    message = inbound("text", {"body": "hi"}, from_user_id="US.13491208655302741918")
    del message["from"]
    contacts = [{"profile": {"name": "Ann", "username": "ann"}, "user_id": "US.13491208655302741918"}]
    event = only(parse_notification(envelope(messages_value(message, contacts=contacts))), InboundMessage)
    assert event.sender == "US.13491208655302741918"
    assert event.details["profile_name"] == "Ann"


def test_parse_profile_name_matches_the_sender():
    first = inbound("text", {"body": "one"})
    second = {**inbound("text", {"body": "two"}), "from": "447700900123", "id": "wamid.second"}
    contacts = [
        {"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"},
        {"profile": {"name": "Oliver Smith"}, "wa_id": "447700900123"},
    ]
    events = parse_notification(envelope(messages_value(first, second, contacts=contacts)))
    assert [e.details["profile_name"] for e in events] == ["Sheena Nelson", "Oliver Smith"]


def test_parse_missing_timestamp_falls_back_to_receipt_time():
    message = inbound("text", {"body": "hi"})
    del message["timestamp"]
    received = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    event = only(parse_notification(envelope(messages_value(message)), received_at=received), InboundMessage)
    assert event.occurred_at == received
