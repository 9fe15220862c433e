"""Payloads and helpers shared by the ``test_webhook_*`` files.

Payloads are those of the offline spec (docs section 6), signed as Meta signs
them: an HMAC-SHA256 of the exact bytes sent, which escape non-ASCII as
``\\uXXXX`` and ``/`` as ``\\/``. ``MALFORMED`` lists notifications that must be
refused with a 400, both by the parser and by the route; ``MALFORMED_PARTS`` notifications
whose malformed part is skipped (with a warning) while the rest is read.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

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


def handshake(mode="subscribe", token=VERIFY_TOKEN, challenge="1158201444"):
    query = {"hub.mode": mode, "hub.verify_token": token, "hub.challenge": challenge}
    return {k: v for k, v in query.items() if v is not None}


def only(events, cls):
    assert len(events) == 1
    assert isinstance(events[0], cls)
    return events[0]


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
]

MALFORMED_PARTS = [
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
