"""The plugin's GraphClient against the sandbox's Graph API: sends, and how errors map."""

from __future__ import annotations

import aiohttp
import pytest
from sandbox_graph_support import (
    TO,
    Graph,
    fixture_clock,  # noqa: F401  (the fixture)
    fixture_graph,  # noqa: F401  (the fixture)
    fixture_state,  # noqa: F401  (the fixture)
    start_graph,
    text_body,
)

from omnichannel import (
    Message,
    PermanentDeliveryError,
    RateLimitedError,
    Secret,
    SenderUnavailableError,
    Template,
)
from omnichannel_whatsapp.client import SendResult
from omnichannel_whatsapp.payload import build_payload
from omnichannel_whatsapp.sandbox.state import SandboxSettings

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
