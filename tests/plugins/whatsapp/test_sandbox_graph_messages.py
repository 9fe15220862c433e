"""The sandbox's Graph API accepts every kind of message, in Meta's success shape."""

from __future__ import annotations

import pytest
from sandbox_graph_support import (
    MESSAGES,
    TO,
    fixture_clock,  # noqa: F401  (the fixture)
    fixture_graph,  # noqa: F401  (the fixture)
    fixture_state,  # noqa: F401  (the fixture)
    text_body,
)

from omnichannel import Message, Template
from omnichannel_whatsapp.payload import build_payload
from omnichannel_whatsapp.validation import validate_message

# ---------------------------------------------------------------- success, for every kind of message


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
