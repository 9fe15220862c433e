"""GraphClient against a real loopback server (omnichannel.testing.fake_provider)."""

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import MappingProxyType

import aiohttp
import pytest
from aiohttp import web

from omnichannel import (
    Certainty,
    DeliveryError,
    ErrorScope,
    PermanentDeliveryError,
    RateLimitedError,
    Secret,
    SenderUnavailableError,
    TransientDeliveryError,
)
from omnichannel.testing import fake_provider
from omnichannel_whatsapp.client import GraphClient, SendResult
from omnichannel_whatsapp.config import WhatsAppConfig

TOKEN = "EAAG-test-token-do-not-leak"
SEND = ("POST", "/v23.0/123/messages")
BODY = {"messaging_product": "whatsapp", "to": "+16505551234", "type": "text", "text": {"body": "hi"}}
ACCEPTED = {
    "messaging_product": "whatsapp",
    "contacts": [{"input": "+16505551234", "wa_id": "16505551234"}],
    "messages": [{"id": "wamid.HBgLMTY1MDUVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA", "message_status": "accepted"}],
}


def graph_error(code, message="Some title", **extra):
    return {
        "error": {
            "message": f"(#{code}) {message}",
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam",
            **extra,
        }
    }


def config_for(url, **overrides):
    settings = {"phone_number_id": "123", "access_token": Secret(TOKEN), "base_url": url, **overrides}
    return WhatsAppConfig(**settings)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def send_via(http, routes, body=BODY, **overrides):
    async with fake_provider(routes) as server:
        client = GraphClient(http, config_for(str(server.make_url("")), **overrides))
        return await client.send_message(body)


async def failed_send(http, routes, **overrides):
    with pytest.raises(DeliveryError) as info:
        await send_via(http, routes, **overrides)
    return info.value


def answer(status, payload=None, *, text=None, headers=None):
    async def handler(request):
        await request.read()
        if text is not None:
            return web.Response(status=status, text=text, headers=headers)
        return web.json_response(payload, status=status, headers=headers)

    return handler


# ---------------------------------------------------------------- success


async def test_send_returns_the_wamid_and_status(http):
    result = await send_via(http, {SEND: answer(200, ACCEPTED)})

    assert result == SendResult(
        wamid="wamid.HBgLMTY1MDUVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
        message_status="accepted",
        wa_id="16505551234",
        input="+16505551234",
    )


async def test_send_posts_json_with_the_bearer_token(http):
    seen = {}

    async def handler(request):
        seen["authorization"] = request.headers["Authorization"]
        seen["content_type"] = request.content_type
        seen["body"] = await request.json()
        seen["query"] = dict(request.query)
        return web.json_response(ACCEPTED)

    await send_via(http, {SEND: handler})

    assert seen == {
        "authorization": f"Bearer {TOKEN}",
        "content_type": "application/json",
        "body": BODY,
        "query": {},
    }


async def test_send_accepts_read_only_mappings(http):
    seen = {}

    async def handler(request):
        seen.update(await request.json())
        return web.json_response(ACCEPTED)

    await send_via(http, {SEND: handler}, body=MappingProxyType({"text": MappingProxyType({"body": "hé"})}))

    assert seen == {"text": {"body": "hé"}}


async def test_send_without_message_status_or_contacts(http):
    result = await send_via(http, {SEND: answer(200, {"messages": [{"id": "wamid.X"}]})})

    assert result == SendResult(wamid="wamid.X", message_status=None, wa_id=None, input=None)


@pytest.mark.parametrize(
    "payload", [{"messages": []}, {"messaging_product": "whatsapp"}, {"messages": [{"id": ""}]}, ["x"]]
)
async def test_200_without_a_message_id_is_unknown(http, payload):
    error = await failed_send(http, {SEND: answer(200, payload)})

    assert type(error) is TransientDeliveryError
    assert (error.certainty, error.http_status) == (Certainty.UNKNOWN, 200)


async def test_200_with_a_non_json_body_is_unknown(http):
    error = await failed_send(http, {SEND: answer(200, text="OK")})

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.UNKNOWN


# ---------------------------------------------------------------- Graph errors

ERRORS = [
    # (code, status, class, scope, certainty)
    (131056, 400, RateLimitedError, ErrorScope.RECIPIENT, Certainty.REJECTED),
    (130429, 400, RateLimitedError, ErrorScope.SENDER, Certainty.REJECTED),
    (80007, 400, RateLimitedError, ErrorScope.ACCOUNT, Certainty.REJECTED),
    (4, 400, RateLimitedError, ErrorScope.APP, Certainty.REJECTED),
    (131048, 400, RateLimitedError, ErrorScope.SENDER, Certainty.REJECTED),
    (2, 503, TransientDeliveryError, None, Certainty.REJECTED),
    (133004, 503, TransientDeliveryError, None, Certainty.REJECTED),
    (131000, 500, TransientDeliveryError, None, Certainty.UNKNOWN),
    (131016, 500, TransientDeliveryError, None, Certainty.REJECTED),
    (190, 401, SenderUnavailableError, ErrorScope.SENDER, Certainty.REJECTED),
    (10, 403, SenderUnavailableError, ErrorScope.APP, Certainty.REJECTED),
    (131031, 403, SenderUnavailableError, ErrorScope.ACCOUNT, Certainty.REJECTED),
    (133010, 400, SenderUnavailableError, ErrorScope.SENDER, Certainty.REJECTED),
    (131026, 400, PermanentDeliveryError, ErrorScope.RECIPIENT, Certainty.REJECTED),
    (131047, 400, PermanentDeliveryError, ErrorScope.RECIPIENT, Certainty.REJECTED),
    (132001, 404, PermanentDeliveryError, ErrorScope.MESSAGE, Certainty.REJECTED),
    (132000, 400, PermanentDeliveryError, ErrorScope.MESSAGE, Certainty.REJECTED),
    (100, 400, PermanentDeliveryError, ErrorScope.MESSAGE, Certainty.REJECTED),
    (987654, 400, PermanentDeliveryError, ErrorScope.MESSAGE, Certainty.REJECTED),
]


@pytest.mark.parametrize(
    ("code", "status", "cls", "scope", "certainty"), ERRORS, ids=[str(e[0]) for e in ERRORS]
)
async def test_graph_errors_over_the_wire(http, code, status, cls, scope, certainty):
    error = await failed_send(http, {SEND: answer(status, graph_error(code))})

    assert type(error) is cls
    assert (error.code, error.http_status, error.scope, error.certainty) == (code, status, scope, certainty)
    assert error.retry_after == (900.0 if code == 131048 else None)  # the spam limit's documented wait
    assert error.detail.startswith(f"(#{code}) Some title")
    assert "Az8or2yhqkZfEZ-_4Qn_Bam" in error.detail
    assert isinstance(error.__cause__, type(None))  # a classified answer, not a wrapped exception


async def test_pair_rate_limit_detail_carries_the_details(http):
    body = graph_error(
        131056,
        "(Business Account, Consumer Account) pair rate limit hit",
        error_data={"messaging_product": "whatsapp", "details": "Too many messages to the same number."},
    )

    error = await failed_send(http, {SEND: answer(400, body)})

    assert str(error) == (
        "(#131056) (Business Account, Consumer Account) pair rate limit hit: Too many messages to the same "
        "number. [fbtrace_id Az8or2yhqkZfEZ-_4Qn_Bam] (code=131056, http_status=400)"
    )


async def test_429_with_retry_after_seconds(http):
    error = await failed_send(http, {SEND: answer(429, graph_error(130429), headers={"Retry-After": "12"})})

    assert type(error) is RateLimitedError
    assert (error.retry_after, error.scope, error.http_status) == (12.0, ErrorScope.SENDER, 429)


async def test_429_with_retry_after_http_date(http):
    # An HTTP date one day ahead: the advised wait is about 86400 s whatever the clock says.
    when = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)

    error = await failed_send(http, {SEND: answer(429, text="slow down", headers={"Retry-After": when})})

    assert type(error) is RateLimitedError
    assert error.code is None
    assert 86_300 < error.retry_after <= 86_400


async def test_is_transient_is_honoured(http):
    error = await failed_send(http, {SEND: answer(400, graph_error(131009, is_transient=True))})

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.REJECTED


async def test_non_json_error_body(http):
    error = await failed_send(http, {SEND: answer(400, text="<html>Bad Request</html>")})

    assert type(error) is PermanentDeliveryError
    assert error.code is None
    assert error.detail == (
        "the Graph API answered HTTP 400 without a Graph error envelope: <html>Bad Request</html>"
    )


@pytest.mark.parametrize(("status", "certainty"), [(502, Certainty.UNKNOWN), (503, Certainty.REJECTED)])
async def test_5xx_without_an_envelope(http, status, certainty):
    error = await failed_send(http, {SEND: answer(status, text="upstream trouble")})

    assert type(error) is TransientDeliveryError
    assert (error.http_status, error.certainty, error.code) == (status, certainty, None)
    assert "without a Graph error envelope" in error.detail


# ---------------------------------------------------------------- transport


async def test_connection_refused_is_not_sent(http):
    # A bound socket that does not listen refuses connections, and nobody else can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        client = GraphClient(http, config_for(f"http://127.0.0.1:{port}"))

        with pytest.raises(TransientDeliveryError) as info:
            await client.send_message(BODY)

    error = info.value
    assert error.certainty is Certainty.NOT_SENT
    assert isinstance(error.__cause__, aiohttp.ClientConnectorError)
    assert f"127.0.0.1:{port}" in error.detail


async def test_server_dropping_the_connection_after_the_request_is_unknown(http):
    async def drop(request):
        await request.read()
        request.transport.close()
        return web.Response()

    error = await failed_send(http, {SEND: drop})

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.UNKNOWN
    assert isinstance(error.__cause__, aiohttp.ClientError)


async def test_timeout_after_the_request_was_written_is_unknown(http):
    received = asyncio.Event()
    never = asyncio.Event()

    async def hang(request):
        await request.read()
        received.set()
        await never.wait()
        return web.json_response(ACCEPTED)

    try:
        error = await failed_send(http, {SEND: hang}, timeout_s=0.2)
    finally:
        never.set()  # let the handler finish so the server closes promptly

    assert received.is_set()
    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.UNKNOWN
    assert isinstance(error.__cause__, TimeoutError)
    assert "timed out" in error.detail


async def test_timeout_before_the_request_was_written_is_not_sent():
    # One connection, held by a hanging request: the second send times out waiting for it.
    busy = asyncio.Event()
    release = asyncio.Event()

    async def hang(request):
        await request.read()
        busy.set()
        await release.wait()
        return web.json_response(ACCEPTED)

    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http,
        fake_provider({SEND: hang}) as server,
    ):
        url = str(server.make_url(""))
        first = asyncio.create_task(GraphClient(http, config_for(url)).send_message(BODY))
        await busy.wait()
        try:
            with pytest.raises(TransientDeliveryError) as info:
                await GraphClient(http, config_for(url, timeout_s=0.2)).send_message(BODY)
        finally:
            release.set()
        assert (await first).wamid == ACCEPTED["messages"][0]["id"]

    assert info.value.certainty is Certainty.NOT_SENT
    assert isinstance(info.value.__cause__, TimeoutError)


# ---------------------------------------------------------------- configuration and secrets


async def test_missing_settings_are_sender_unavailable(http):
    client = GraphClient(http, WhatsAppConfig())

    with pytest.raises(SenderUnavailableError) as info:
        await client.send_message(BODY)

    error = info.value
    assert error.detail == (
        "whatsapp is not configured: set plugins.whatsapp.phone_number_id, plugins.whatsapp.access_token"
    )
    assert (error.certainty, error.scope) == (Certainty.NOT_SENT, ErrorScope.SENDER)


async def test_get_json_needs_only_the_token(http):
    client = GraphClient(http, WhatsAppConfig(phone_number_id="123"))

    with pytest.raises(SenderUnavailableError, match=r"set plugins\.whatsapp\.access_token$"):
        await client.get_json("999/message_templates")


async def test_the_token_never_shows(http):
    body = graph_error(190, f"Invalid OAuth access token {TOKEN}")

    error = await failed_send(http, {SEND: answer(401, body)})

    async with fake_provider({}) as server:
        client = GraphClient(http, config_for(str(server.make_url(""))))
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    assert TOKEN not in repr(client)


async def test_the_token_never_shows_in_transport_errors(http):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        client = GraphClient(http, config_for(f"http://127.0.0.1:{sock.getsockname()[1]}"))
        with pytest.raises(DeliveryError) as info:
            await client.get_json("999/message_templates")

    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


# ---------------------------------------------------------------- get_json


async def test_get_json_with_params_and_paging_link(http):
    seen = []

    async def templates(request):
        seen.append((request.headers["Authorization"], dict(request.query)))
        if "after" not in request.query:
            next_link = str(request.url.with_query({"after": "MjQZD", "limit": "1", "access_token": TOKEN}))
            return web.json_response({"data": [{"name": "a"}], "paging": {"next": next_link}})
        return web.json_response({"data": [{"name": "b"}]})

    async with fake_provider({("GET", "/v23.0/999/message_templates"): templates}) as server:
        client = GraphClient(http, config_for(str(server.make_url(""))))
        first = await client.get_json("999/message_templates", {"limit": "1"})
        second = await client.get_json(first["paging"]["next"])

    assert first["data"] == [{"name": "a"}]
    assert second == {"data": [{"name": "b"}]}
    assert seen == [
        (f"Bearer {TOKEN}", {"limit": "1"}),
        (f"Bearer {TOKEN}", {"after": "MjQZD", "limit": "1"}),  # the token stays out of the URL
    ]


async def test_get_json_refuses_links_to_another_host(http):
    async with fake_provider({}) as server:
        client = GraphClient(http, config_for(str(server.make_url(""))))

        with pytest.raises(
            PermanentDeliveryError, match=r"refusing to send the access token to evil\.example"
        ) as info:
            await client.get_json("https://evil.example/v23.0/999/message_templates")

    assert info.value.certainty is Certainty.NOT_SENT


async def test_get_json_errors_are_classified(http):
    async with fake_provider(
        {("GET", "/v23.0/999"): answer(400, graph_error(100, error_subcode=33))}
    ) as server:
        client = GraphClient(http, config_for(str(server.make_url(""))))

        with pytest.raises(SenderUnavailableError) as info:
            await client.get_json("999")

    assert (info.value.code, info.value.http_status) == (100, 400)


async def test_get_json_needs_an_object(http):
    async with fake_provider({("GET", "/v23.0/999"): answer(200, [1, 2])}) as server:
        client = GraphClient(http, config_for(str(server.make_url(""))))

        with pytest.raises(TransientDeliveryError, match="not a JSON object"):
            await client.get_json("/999")


def test_send_result_is_a_frozen_value():
    result = SendResult(wamid="wamid.X", message_status=None, wa_id=None, input=None)

    with pytest.raises(AttributeError):
        result.wamid = "other"  # type: ignore[misc]
