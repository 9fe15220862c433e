"""WhatsApp webhooks: parsing statuses into ``StatusChanged``, batches, skipped and malformed
notifications, and a property test that parsing fails only with a ``WebhookError``.
"""

from __future__ import annotations

import copy
import logging
import re
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_support import (
    CONVERSATION,
    ERROR_131047,
    MALFORMED,
    MALFORMED_PARTS,
    METADATA,
    OUT_WAMID,
    PHONE_NUMBER_ID,
    PRICING,
    TEXT_NOTIFICATION,
    WAMID,
    envelope,
    inbound,
    messages_value,
    only,
    status,
    statuses_value,
)

from omnichannel import (
    Certainty,
    DeliveryStatus,
    ErrorInfo,
    ErrorScope,
    InboundMessage,
    StatusChanged,
    Text,
    WebhookError,
)
from omnichannel_whatsapp.webhook import parse_notification


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


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_parse_malformed_is_a_400(data, message):
    with pytest.raises(WebhookError, match=message) as info:
        parse_notification(data)
    assert info.value.status == 400


GOOD_ID = "wamid.the-good-one"


def with_a_good_entry(data):
    """``data`` plus an entry holding one well-formed status (``GOOD_ID``)."""
    good = envelope(statuses_value(status("delivered", id_=GOOD_ID)))["entry"][0]
    return {**data, "entry": [*data["entry"], good]}


@pytest.mark.parametrize(("data", "message"), MALFORMED_PARTS)
def test_parse_skips_a_malformed_part_and_reads_the_rest(data, message, caplog):
    caplog.set_level(logging.WARNING, logger="omnichannel_whatsapp.webhook")
    events = parse_notification(with_a_good_entry(data))
    assert GOOD_ID in [e.provider_message_id for e in events if isinstance(e, StatusChanged)]
    [warning] = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert re.search(message, warning), warning


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
