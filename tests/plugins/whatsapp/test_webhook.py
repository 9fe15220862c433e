"""WhatsApp webhooks: the handshake, signatures, parsing, duplicates, and the routes end to end.

Payloads are those of the offline spec (docs section 6), signed as Meta signs
them: an HMAC-SHA256 of the exact bytes sent, which escape non-ASCII as
``\\uXXXX`` and ``/`` as ``\\/``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import logging
import re
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnichannel import (
    Certainty,
    DeliveryStatus,
    ErrorInfo,
    ErrorScope,
    InboundMessage,
    Media,
    MediaKind,
    Secret,
    StatusChanged,
    Text,
    WebhookError,
    hookimpl,
)
from omnichannel.server import make_app
from omnichannel.testing import EventRecorder, FakeClock, make_service
from omnichannel_whatsapp.config import WhatsAppConfig
from omnichannel_whatsapp.webhook import (
    Deduplicator,
    make_routes,
    parse_notification,
    verify_challenge,
    verify_signature,
)

APP_SECRET = "6f1c0a9e3b2d4c5e8f7a6b5c4d3e2f10"
VERIFY_TOKEN = "meatyhamhock"
PATH = "/webhooks/whatsapp"
PHONE_NUMBER_ID = "106540352242922"
METADATA = {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID}
WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
OUT_WAMID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def as_meta_sends(payload) -> bytes:
    """Serialise once as Meta does: ASCII only, ``/`` escaped."""
    return json.dumps(payload, ensure_ascii=True).replace("/", "\\/").encode()


def envelope(*values, field="messages"):
    """A notification with one entry holding one change per value."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [{"field": field, "value": value} for value in values],
            }
        ],
    }


def messages_value(*messages, contacts=None):
    return {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}]
        if contacts is None
        else contacts,
        "messages": list(messages),
    }


def statuses_value(*statuses):
    return {"messaging_product": "whatsapp", "metadata": METADATA, "statuses": list(statuses)}


def inbound(type_, body, **extra):
    return {
        "from": "16505551234",
        "id": WAMID,
        "timestamp": "1749416383",
        "type": type_,
        type_: body,
        **extra,
    }


TEXT_NOTIFICATION = {
    "object": "whatsapp_business_account",
    "entry": [
        {
            "id": "102290129340398",
            "changes": [
                {
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {
                            "display_phone_number": "15550783881",
                            "phone_number_id": "106540352242922",
                        },
                        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
                        "messages": [
                            {
                                "from": "16505551234",
                                "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                                "timestamp": "1749416383",
                                "type": "text",
                                "text": {"body": "Does it come in another color?"},
                            }
                        ],
                    },
                }
            ],
        }
    ],
}

PRICING = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"}
CONVERSATION = {
    "id": "7270432eae37498234f4444b35ffc5",
    "expiration_timestamp": "1698339900",
    "origin": {"type": "utility"},
}
ERROR_131047 = {
    "code": 131047,
    "title": "Re-engagement message",
    "message": "Re-engagement message",
    "error_data": {
        "details": "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number."
    },
    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
}


def status(status_, *, id_=OUT_WAMID, timestamp="1698266945", **extra):
    item = {
        "id": id_,
        "status": status_,
        "timestamp": timestamp,
        "recipient_id": "16505551234",
        "biz_opaque_callback_data": "order-123",
    }
    if status_ in ("sent", "delivered", "read"):
        item["conversation"] = CONVERSATION
        item["pricing"] = PRICING
    if status_ == "failed":
        item["errors"] = [ERROR_131047]
    item.update(extra)
    return item


# ---------------------------------------------------------------- verification handshake


def handshake(mode="subscribe", token=VERIFY_TOKEN, challenge="1158201444"):
    query = {"hub.mode": mode, "hub.verify_token": token, "hub.challenge": challenge}
    return {k: v for k, v in query.items() if v is not None}


def test_verify_challenge_returns_the_challenge():
    assert verify_challenge(handshake(), Secret(VERIFY_TOKEN)) == "1158201444"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (handshake(token="not-the-token"), "hub.verify_token does not match"),
        (handshake(token=None), "hub.verify_token does not match"),
        (handshake(mode="unsubscribe"), "hub.mode must be 'subscribe'"),
        (handshake(mode=None), "hub.mode must be 'subscribe'"),
    ],
)
def test_verify_challenge_refuses(query, message):
    with pytest.raises(WebhookError, match=message) as info:
        verify_challenge(query, Secret(VERIFY_TOKEN))
    assert info.value.status == 403


@pytest.mark.parametrize("token", [None, Secret("")])
def test_verify_challenge_without_configured_token(token):
    with pytest.raises(WebhookError, match=r"plugins\.whatsapp\.verify_token is not set") as info:
        verify_challenge(handshake(token=""), token)
    assert info.value.status == 403


def test_verify_challenge_without_challenge():
    with pytest.raises(WebhookError, match=r"hub\.challenge is missing") as info:
        verify_challenge(handshake(challenge=None), Secret(VERIFY_TOKEN))
    assert info.value.status == 400


# ---------------------------------------------------------------- signature


def test_verify_signature_accepts_the_exact_bytes():
    body = as_meta_sends(TEXT_NOTIFICATION)
    verify_signature(body, sign(body), Secret(APP_SECRET))
    verify_signature(body, sign(body).upper().replace("SHA256=", "sha256="), Secret(APP_SECRET))


def test_verify_signature_refuses_reserialised_json():
    payload = envelope(messages_value(inbound("text", {"body": "Olá, tem em azul/verde? 👍"})))
    body = as_meta_sends(payload)
    assert b"\\u00e1" in body
    assert b"\\/" in body
    reserialised = json.dumps(json.loads(body), ensure_ascii=False).encode()
    with pytest.raises(WebhookError) as info:
        verify_signature(reserialised, sign(body), Secret(APP_SECRET))
    assert info.value.status == 403


def test_verify_signature_missing_header_is_401():
    with pytest.raises(WebhookError, match="X-Hub-Signature-256 header is missing") as info:
        verify_signature(b"{}", None, Secret(APP_SECRET))
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (sign(b"{}", "another secret"), "does not match"),
        (sign(b"{ }"), "does not match"),
        ("sha1=" + hashlib.sha1(b"{}").hexdigest(), "is not 'sha256=<64 hex digits>'"),
        (sign(b"{}")[:-2], "is not 'sha256=<64 hex digits>'"),
        (sign(b"{}").removeprefix("sha256="), "is not 'sha256=<64 hex digits>'"),
        ("sha256=" + "é" * 64, "is not 'sha256=<64 hex digits>'"),
        ("sha256=" + "z" * 64, "is not 'sha256=<64 hex digits>'"),
    ],
)
def test_verify_signature_refuses_wrong_or_malformed(header, message):
    with pytest.raises(WebhookError, match=message) as info:
        verify_signature(b"{}", header, Secret(APP_SECRET))
    assert info.value.status == 403


@pytest.mark.parametrize("secret", [None, Secret("")])
def test_verify_signature_without_app_secret_refuses_everything(secret):
    with pytest.raises(WebhookError, match=r"plugins\.whatsapp\.app_secret is not set") as info:
        verify_signature(b"{}", sign(b"{}", ""), secret)
    assert info.value.status == 403


# ---------------------------------------------------------------- parsing: inbound messages


def only(events, cls):
    assert len(events) == 1
    assert isinstance(events[0], cls)
    return events[0]


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


# ---------------------------------------------------------------- parsing: statuses


def test_parse_sent_status_with_pricing_and_conversation():
    event = only(parse_notification(envelope(statuses_value(status("sent")))), StatusChanged)
    assert event == StatusChanged(
        channel="whatsapp",
        provider_message_id=OUT_WAMID,
        status=DeliveryStatus.SENT,
        message_id="order-123",
        recipient="16505551234",
        error=None,
        details={"pricing": PRICING, "conversation": CONVERSATION, "phone_number_id": PHONE_NUMBER_ID},
        occurred_at=datetime.fromtimestamp(1698266945, UTC),
    )
    assert dict(event.details) == {
        "pricing": PRICING,
        "conversation": CONVERSATION,
        "phone_number_id": PHONE_NUMBER_ID,
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sent", DeliveryStatus.SENT),
        ("delivered", DeliveryStatus.DELIVERED),
        ("read", DeliveryStatus.READ),
        ("failed", DeliveryStatus.FAILED),
    ],
)
def test_parse_status_values(raw, expected):
    event = only(parse_notification(envelope(statuses_value(status(raw)))), StatusChanged)
    assert event.status is expected


def test_parse_failed_status_carries_the_error():
    second = {"code": 131026, "title": "Message undeliverable"}
    event = only(
        parse_notification(envelope(statuses_value(status("failed", errors=[ERROR_131047, second])))),
        StatusChanged,
    )
    # Classified like the same code in a synchronous answer: permanent, about the recipient.
    assert event.error == ErrorInfo(
        kind="PermanentDeliveryError",
        detail="(#131047) Re-engagement message: Message failed to send because more than 24 hours have "
        "passed since the customer last replied to this number.",
        code=131047,
        certainty=Certainty.REJECTED,
        scope=ErrorScope.RECIPIENT,
        retryable=False,
    )
    assert event.details["errors"] == [ERROR_131047, second]
    assert "pricing" not in event.details
    assert "conversation" not in event.details


def test_parse_failed_status_without_errors_still_has_an_error():
    item = status("failed")
    del item["errors"]
    event = only(parse_notification(envelope(statuses_value(item))), StatusChanged)
    assert event.error is not None
    assert event.error.kind == "WhatsAppError"
    assert event.error.code is None


def test_parse_status_without_callback_data_or_extras():
    item = {"id": OUT_WAMID, "status": "delivered", "timestamp": "1698266950", "recipient_id": "16505551234"}
    value = {"messaging_product": "whatsapp", "statuses": [item]}
    event = only(parse_notification(envelope(value)), StatusChanged)
    assert event.message_id is None
    assert event.error is None
    assert dict(event.details) == {}


@pytest.mark.parametrize("raw", ["deleted", "warning", "played", "held_for_quality_assessment"])
def test_parse_skips_unknown_statuses(raw, caplog):
    caplog.set_level(logging.DEBUG, logger="omnichannel_whatsapp.webhook")
    assert parse_notification(envelope(statuses_value(status(raw)))) == []
    assert raw in caplog.text


def test_parse_batch_of_entries_changes_and_items_in_order():
    payload = envelope(
        statuses_value(status("sent", id_="wamid.A"), status("delivered", id_="wamid.A")),
        messages_value(inbound("text", {"body": "hello"})),
    )
    payload["entry"].append(
        {
            "id": "102290129340398",
            "changes": [
                {"field": "messages", "value": statuses_value(status("read", id_="wamid.B"))},
                {"field": "messages", "value": statuses_value(status("failed", id_="wamid.C"))},
            ],
        }
    )
    events = parse_notification(payload)
    assert [(type(e).__name__, e.provider_message_id) for e in events] == [
        ("StatusChanged", "wamid.A"),
        ("StatusChanged", "wamid.A"),
        ("InboundMessage", WAMID),
        ("StatusChanged", "wamid.B"),
        ("StatusChanged", "wamid.C"),
    ]
    assert [getattr(e, "status", None) for e in events] == [
        DeliveryStatus.SENT,
        DeliveryStatus.DELIVERED,
        None,
        DeliveryStatus.READ,
        DeliveryStatus.FAILED,
    ]


def test_parse_logs_system_errors_without_dispatching(caplog):
    value = {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "errors": [
            {
                "code": 131000,
                "title": "Something went wrong",
                "message": "Something went wrong",
                "error_data": {"details": "Message failed to send because of an unknown error."},
            }
        ],
    }
    with caplog.at_level(logging.WARNING, logger="omnichannel_whatsapp.webhook"):
        assert parse_notification(envelope(value)) == []
    assert "(#131000) Something went wrong" in caplog.text


def test_parse_skips_other_fields():
    value = {"event": "APPROVED", "message_template_id": 123, "message_template_name": "hello"}
    assert parse_notification(envelope(value, field="message_template_status_update")) == []


def test_parse_ignores_unknown_fields():
    payload = copy.deepcopy(TEXT_NOTIFICATION)
    value = payload["entry"][0]["changes"][0]["value"]
    value["brand_new_thing"] = {"x": 1}
    value["messages"][0]["another_new_thing"] = [1, 2]
    assert only(parse_notification(payload), InboundMessage).content == Text("Does it come in another color?")


MALFORMED = [
    pytest.param([TEXT_NOTIFICATION], "the body is not a JSON object but list", id="array"),
    pytest.param("hello", "the body is not a JSON object but str", id="string"),
    pytest.param(None, "the body is not a JSON object but NoneType", id="null"),
    pytest.param({"object": "page", "entry": []}, "'object' is 'page'", id="wrong-object"),
    pytest.param({"entry": []}, "'object' is None", id="no-object"),
    pytest.param({"object": "whatsapp_business_account"}, "'entry' is missing or not a list", id="no-entry"),
    pytest.param(
        {"object": "whatsapp_business_account", "entry": {"id": "1"}},
        "'entry' is missing or not a list",
        id="entry-object",
    ),
    pytest.param(
        {"object": "whatsapp_business_account", "entry": ["x"]},
        r"entry\[0\]: is not an object",
        id="entry-str",
    ),
    pytest.param(
        {"object": "whatsapp_business_account", "entry": [{"changes": {}}]},
        r"entry\[0\]: 'changes' is not a list",
        id="changes-object",
    ),
    pytest.param(envelope(None), r"entry\[0\]\.changes\[0\]\.value: is not an object", id="value-missing"),
    pytest.param(
        envelope({"statuses": "sent"}),
        r"entry\[0\]\.changes\[0\]\.value: 'statuses' is not a list",
        id="statuses-str",
    ),
    pytest.param(
        envelope(statuses_value({"status": "sent", "timestamp": "1698266945"})),
        r"entry\[0\]\.changes\[0\]\.value\.statuses\[0\]: a status without 'id'",
        id="status-no-id",
    ),
    pytest.param(
        envelope(statuses_value(status("sent"), {"id": OUT_WAMID})),
        r"statuses\[1\]: a status without 'status'",
        id="status-no-status",
    ),
    pytest.param(envelope(statuses_value(42)), r"statuses\[0\]: is not an object", id="status-number"),
    pytest.param(
        envelope(messages_value({"from": "1", "type": "text", "text": {"body": "x"}})),
        r"messages\[0\]: a message without 'id'",
        id="message-no-id",
    ),
    pytest.param(
        envelope(messages_value({"id": WAMID, "type": "text", "text": {"body": "x"}})),
        r"messages\[0\]: a message without 'from'",
        id="message-no-sender",
    ),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_parse_malformed_is_a_400(data, message):
    with pytest.raises(WebhookError, match=message) as info:
        parse_notification(data)
    assert info.value.status == 400


def _containers(inner):
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    _containers,
    max_leaves=12,
)
item_keys = st.sampled_from(
    ["id", "status", "timestamp", "errors", "from", "type", "text", "image", "interactive", "context",
     "button", "location", "contacts", "reaction", "order", "pricing", "recipient_id", "error_data"]
)  # fmt: skip
items = st.dictionaries(item_keys, json_values, max_size=6)
values = st.fixed_dictionaries(
    {},
    optional={
        "statuses": st.lists(items, max_size=3) | json_values,
        "messages": st.lists(items, max_size=3) | json_values,
        "contacts": st.lists(items, max_size=2) | json_values,
        "errors": st.lists(items, max_size=2) | json_values,
        "metadata": json_values,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=values | json_values, field=st.sampled_from(["messages", None]))
def test_parse_never_fails_with_anything_but_a_webhook_error(value, field):
    change = {"value": value} if field is None else {"field": field, "value": value}
    data = {"object": "whatsapp_business_account", "entry": [{"changes": [change]}]}
    rejected_with = None
    try:
        events = parse_notification(data)
    except WebhookError as exc:
        rejected_with, events = exc.status, []
    assert rejected_with in (None, 400)
    assert all(isinstance(e, StatusChanged | InboundMessage) for e in events)


# ---------------------------------------------------------------- duplicates


def status_event(id_="wamid.A", status_=DeliveryStatus.SENT):
    return StatusChanged(channel="whatsapp", provider_message_id=id_, status=status_)


def inbound_event(id_=WAMID, body="hi"):
    return InboundMessage(channel="whatsapp", sender="1", content=Text(body), provider_message_id=id_)


def test_dedup_statuses_by_id_and_status():
    dedup = Deduplicator()
    assert dedup.first_time(status_event())
    assert not dedup.first_time(status_event())
    assert dedup.first_time(status_event(status_=DeliveryStatus.DELIVERED))
    assert dedup.first_time(status_event(id_="wamid.B"))
    assert len(dedup) == 3


def test_dedup_inbound_by_id():
    dedup = Deduplicator()
    assert dedup.first_time(inbound_event())
    assert not dedup.first_time(inbound_event(body="the same id, redelivered"))
    assert dedup.first_time(inbound_event(id_="wamid.other"))


def test_dedup_is_a_bounded_lru():
    dedup = Deduplicator(max_entries=2)
    assert dedup.first_time(inbound_event("a"))
    assert dedup.first_time(inbound_event("b"))
    assert not dedup.first_time(inbound_event("a"))  # "a" is now the most recent
    assert dedup.first_time(inbound_event("c"))  # evicts "b"
    assert len(dedup) == 2
    assert not dedup.first_time(inbound_event("a"))
    assert dedup.first_time(inbound_event("b"))


def test_dedup_forget():
    dedup = Deduplicator()
    assert dedup.first_time(inbound_event())
    dedup.forget(inbound_event())
    assert dedup.first_time(inbound_event())


@pytest.mark.parametrize("size", [0, -1])
def test_dedup_needs_a_positive_size(size):
    with pytest.raises(ValueError, match="max_entries must be > 0"):
        Deduplicator(max_entries=size)


# ---------------------------------------------------------------- routes, end to end


class WebhookOnly:
    """Just the webhook routes, as the real plugin will wire them."""

    def __init__(self, config, dedup=None):
        self.config = config
        self.dedup = dedup or Deduplicator()

    @hookimpl
    def register_routes(self, service):
        return make_routes(service, lambda: self.config, self.dedup)


CONFIG = WhatsAppConfig(
    phone_number_id=PHONE_NUMBER_ID, app_secret=Secret(APP_SECRET), verify_token=Secret(VERIFY_TOKEN)
)


@pytest.fixture
def recorder():
    return EventRecorder()


@pytest.fixture
def clock():
    return FakeClock()


async def client_with(config, recorder, clock, dedup=None):
    plugin = WebhookOnly(config, dedup)
    service = make_service(plugin, recorder, clock=clock)
    client = TestClient(TestServer(make_app(service), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(recorder, clock):
    client = await client_with(CONFIG, recorder, clock)
    yield client
    await client.close()


def received(recorder):
    return [e for e in recorder.events if isinstance(e, StatusChanged | InboundMessage)]


async def post(client, body: bytes, signature: str | None = "sign"):
    headers = {"Content-Type": "application/json"}
    if signature == "sign":
        headers["X-Hub-Signature-256"] = sign(body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    # aiohttp warns about large raw bytes bodies; a stream sends the same bytes.
    data = io.BytesIO(body) if len(body) > 1024 * 1024 else body
    return await client.post(PATH, data=data, headers=headers)


async def test_route_names(client):
    names = {r.name for r in client.app.router.routes() if r.name}
    assert {"whatsapp-webhook-verify", "whatsapp-webhook"} <= names


async def test_handshake_answers_the_challenge_as_plain_text(client):
    response = await client.get(PATH, params=handshake())
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.text() == "1158201444"


@pytest.mark.parametrize(
    "query", [handshake(token="guess"), handshake(mode="unsubscribe"), {}], ids=["token", "mode", "empty"]
)
async def test_handshake_refused(client, query, caplog):
    response = await client.get(PATH, params=query)
    assert response.status == 403
    body = await response.json()
    assert body["error"]["type"] == "WebhookError"
    assert VERIFY_TOKEN not in caplog.text


async def test_handshake_without_configured_token(recorder, clock):
    client = await client_with(WhatsAppConfig(app_secret=Secret(APP_SECRET)), recorder, clock)
    try:
        response = await client.get(PATH, params=handshake())
        assert response.status == 403
        assert "plugins.whatsapp.verify_token is not set" in (await response.json())["error"]["message"]
    finally:
        await client.close()


async def test_signed_text_message_is_dispatched(client, recorder):
    payload = envelope(messages_value(inbound("text", {"body": "Olá! Tem em azul/verde? 👍 ¿Sí?"})))
    body = as_meta_sends(payload)
    assert b"\\u00e1" in body
    assert b"\\ud83d\\udc4d" in body
    assert b"azul\\/verde" in body
    response = await post(client, body)
    assert response.status == 200
    assert await response.json() == {"status": "ok", "dispatched": 1, "duplicates": 0}
    [event] = received(recorder)
    assert isinstance(event, InboundMessage)
    assert event.content == Text("Olá! Tem em azul/verde? 👍 ¿Sí?")
    assert event.sender == "16505551234"
    assert event.details["profile_name"] == "Sheena Nelson"


async def test_spec_example_compact_bytes(client, recorder):
    body = json.dumps(TEXT_NOTIFICATION, separators=(",", ":")).encode()
    response = await post(client, body)
    assert response.status == 200
    [event] = received(recorder)
    assert event.content == Text("Does it come in another color?")


@pytest.mark.parametrize(
    ("signature", "status", "message"),
    [
        (None, 401, "X-Hub-Signature-256 header is missing"),
        (sign(b"something else"), 403, "does not match"),
        (sign(b"{}", "another secret"), 403, "does not match"),
        ("sha256=abc", 403, "is not 'sha256=<64 hex digits>'"),
        ("sha1=" + "0" * 40, 403, "is not 'sha256=<64 hex digits>'"),
    ],
    ids=["missing", "other-body", "other-secret", "short", "sha1"],
)
async def test_bad_signature_dispatches_nothing(client, recorder, signature, status, message):
    response = await post(client, as_meta_sends(TEXT_NOTIFICATION), signature)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["type"] == "WebhookError"
    assert message in error["message"]
    assert received(recorder) == []


async def test_signature_is_checked_before_parsing(client, recorder):
    response = await post(client, b"this is not json", sign(b"other"))
    assert response.status == 403


async def test_without_app_secret_nothing_is_accepted(recorder, clock):
    client = await client_with(WhatsAppConfig(verify_token=Secret(VERIFY_TOKEN)), recorder, clock)
    try:
        body = as_meta_sends(TEXT_NOTIFICATION)
        for signature in (None, sign(body, "")):
            response = await post(client, body, signature)
            assert response.status == 403
            assert "plugins.whatsapp.app_secret is not set" in (await response.json())["error"]["message"]
        assert received(recorder) == []
    finally:
        await client.close()


async def test_config_is_read_on_every_request(recorder, clock):
    plugin = WebhookOnly(CONFIG)
    service = make_service(plugin, recorder, clock=clock)
    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        body = as_meta_sends(TEXT_NOTIFICATION)
        plugin.config = WhatsAppConfig(app_secret=Secret("rotated"))
        assert (await post(client, body)).status == 403
        assert (await post(client, body, sign(body, "rotated"))).status == 200


async def test_duplicate_deliveries_are_dispatched_once(client, recorder):
    payload = envelope(
        statuses_value(status("sent"), status("delivered")), messages_value(inbound("text", {"body": "hi"}))
    )
    body = as_meta_sends(payload)
    first = await post(client, body)
    assert await first.json() == {"status": "ok", "dispatched": 3, "duplicates": 0}
    again = await post(client, body)
    assert again.status == 200
    assert await again.json() == {"status": "ok", "dispatched": 0, "duplicates": 3}
    # A second subscription's copy, serialised differently, is still the same notification.
    other_copy = json.dumps(payload, indent=2).encode()
    assert await (await post(client, other_copy)).json() == {"status": "ok", "dispatched": 0, "duplicates": 3}
    assert len(received(recorder)) == 3


async def test_duplicates_inside_one_batch(client, recorder):
    payload = envelope(statuses_value(status("read"), status("read")), statuses_value(status("read")))
    response = await post(client, as_meta_sends(payload))
    assert await response.json() == {"status": "ok", "dispatched": 1, "duplicates": 2}
    assert len(received(recorder)) == 1


async def test_statuses_out_of_order_are_all_dispatched(client, recorder):
    for name, ts in (("read", "1698266990"), ("delivered", "1698266950"), ("sent", "1698266945")):
        response = await post(client, as_meta_sends(envelope(statuses_value(status(name, timestamp=ts)))))
        assert await response.json() == {"status": "ok", "dispatched": 1, "duplicates": 0}
    events = received(recorder)
    assert [(e.provider_message_id, e.status) for e in events] == [
        (OUT_WAMID, DeliveryStatus.READ),
        (OUT_WAMID, DeliveryStatus.DELIVERED),
        (OUT_WAMID, DeliveryStatus.SENT),
    ]
    assert [e.occurred_at.timestamp() for e in events] == [1698266990, 1698266950, 1698266945]
    assert all(e.message_id == "order-123" and e.recipient == "16505551234" for e in events)


async def test_delivered_after_failed_is_dispatched(client, recorder):
    for name in ("failed", "delivered"):
        await post(client, as_meta_sends(envelope(statuses_value(status(name)))))
    failed, delivered = received(recorder)
    assert failed.status is DeliveryStatus.FAILED
    assert failed.error.code == 131047
    assert delivered.status is DeliveryStatus.DELIVERED
    assert delivered.error is None


async def test_batch_of_entries_changes_and_statuses(client, recorder):
    payload = envelope(
        statuses_value(status("sent", id_="wamid.1"), status("sent", id_="wamid.2")),
        statuses_value(status("delivered", id_="wamid.1"), status("deleted", id_="wamid.1")),
    )
    payload["entry"].append(
        {
            "id": "102290129340399",
            "changes": [
                {"field": "messages", "value": messages_value(inbound("text", {"body": "thanks"}))},
                {"field": "messages", "value": statuses_value(status("failed", id_="wamid.2"))},
            ],
        }
    )
    response = await post(client, as_meta_sends(payload))
    assert await response.json() == {"status": "ok", "dispatched": 5, "duplicates": 0}
    assert [
        (type(e).__name__, e.provider_message_id, getattr(e, "status", None)) for e in received(recorder)
    ] == [
        ("StatusChanged", "wamid.1", DeliveryStatus.SENT),
        ("StatusChanged", "wamid.2", DeliveryStatus.SENT),
        ("StatusChanged", "wamid.1", DeliveryStatus.DELIVERED),
        ("InboundMessage", WAMID, None),
        ("StatusChanged", "wamid.2", DeliveryStatus.FAILED),
    ]


async def test_missing_timestamp_uses_the_service_clock(client, recorder, clock):
    item = status("sent")
    del item["timestamp"]
    clock.advance(42)
    await post(client, as_meta_sends(envelope(statuses_value(item))))
    [event] = received(recorder)
    assert event.occurred_at == clock.now()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "the body is not valid JSON", id="empty"),
        pytest.param(b"{not json", "the body is not valid JSON", id="broken"),
        pytest.param(b"\xff\xfe\x00", "the body is not valid JSON", id="binary"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "the body is not valid JSON", id="deep"),
        *(pytest.param(as_meta_sends(p.values[0]), p.values[1], id=p.id) for p in MALFORMED),
    ],
)
async def test_malformed_signed_bodies_are_400_never_500(client, recorder, caplog, body, message):
    caplog.set_level(logging.WARNING)
    response = await post(client, body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "WebhookError"
    assert re.search(message, error["message"])
    assert received(recorder) == []
    [record] = [r for r in caplog.records if r.name == "omnichannel_whatsapp.webhook"]
    assert record.levelno == logging.WARNING
    assert "refused (400)" in record.getMessage()
    if len(body) > 20:
        assert body.decode(errors="replace")[:40] not in caplog.text


async def test_body_over_a_mebibyte_is_accepted(client, recorder):
    messages = [{**inbound("text", {"body": "x" * 1000}), "id": f"wamid.big{i}"} for i in range(2500)]
    body = as_meta_sends(envelope(messages_value(*messages)))
    assert len(body) > 2 * 1024 * 1024
    response = await post(client, body)
    assert response.status == 200
    assert (await response.json())["dispatched"] == 2500


async def test_failed_dispatch_lets_the_redelivery_through(recorder, clock, monkeypatch):
    service = make_service(WebhookOnly(CONFIG), recorder, clock=clock)
    original = service.emit
    calls = []

    async def broken_once(event):
        if isinstance(event, StatusChanged):
            calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("event store unavailable")
        await original(event)

    monkeypatch.setattr(service, "emit", broken_once)
    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        body = as_meta_sends(envelope(statuses_value(status("sent"))))
        assert (await post(client, body)).status == 500
        retry = await post(client, body)
        assert await retry.json() == {"status": "ok", "dispatched": 1, "duplicates": 0}
    assert len(received(recorder)) == 1


def test_error_messages_do_not_echo_large_values():
    with pytest.raises(WebhookError) as info:
        parse_notification({"object": "x" * 10_000, "entry": []})
    assert len(str(info.value)) < 120
    with pytest.raises(WebhookError) as info:
        verify_challenge(handshake(mode="y" * 10_000), Secret(VERIFY_TOKEN))
    assert len(str(info.value)) < 120
