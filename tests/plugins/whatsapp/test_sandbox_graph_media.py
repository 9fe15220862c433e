"""The sandbox's Graph API: the phone number, media upload and download, unknown paths and versions."""

from __future__ import annotations

import hashlib
import json

import aiohttp
import pytest
from sandbox_graph_support import (
    AUTH,
    PNID,
    SETTINGS,
    TO,
    UNSUPPORTED,
    error,
    fixture_clock,  # noqa: F401  (the fixture)
    fixture_graph,  # noqa: F401  (the fixture)
    fixture_state,  # noqa: F401  (the fixture)
    text_body,
    without_trace,
)

from omnichannel import Media, Message
from omnichannel_whatsapp.payload import build_payload
from omnichannel_whatsapp.sandbox.graph import GraphError, MediaStore, graph_error_response
from omnichannel_whatsapp.sandbox.state import SandboxSettings, SandboxState

# ---------------------------------------------------------------- the phone number, media, other paths


async def test_the_phone_number(graph):
    status, number = await graph.request("GET", PNID)

    assert status == 200
    assert number == {
        "verified_name": "Sandbox Business",
        "code_verification_status": "VERIFIED",
        "display_phone_number": SETTINGS.display_phone_number,
        "quality_rating": "GREEN",
        "platform_type": "CLOUD_API",
        "throughput": {"level": "STANDARD"},
        "name_status": "APPROVED",
        "messaging_limit_tier": "TIER_1K",
        "id": PNID,
    }

    _, throughput = await graph.request("GET", PNID, params={"fields": "throughput"})
    assert throughput == {"throughput": {"level": "STANDARD"}, "id": PNID}


async def test_the_plugins_check_command_fields(graph):
    fields = {"fields": "display_phone_number,verified_name,quality_rating"}

    number = await graph.client().get_json(PNID, fields)

    assert number == {
        "display_phone_number": SETTINGS.display_phone_number,
        "verified_name": "Sandbox Business",
        "quality_rating": "GREEN",
        "id": PNID,
    }


def upload_form(data=b"\xff\xd8\xff\xe0jpeg", mime="image/jpeg", product="whatsapp"):
    form = aiohttp.FormData()
    if product is not None:
        form.add_field("messaging_product", product)
    if mime is not None:
        form.add_field("type", mime)
    if data is not None:
        form.add_field("file", data, filename="a.jpg", content_type=mime or "application/octet-stream")
    return form


async def test_media_upload_read_download_delete(graph):
    status, uploaded = await graph.request("POST", f"{PNID}/media", data=upload_form())
    assert status == 200
    media_id = uploaded["id"]
    assert list(uploaded) == ["id"]
    assert media_id.isdigit()

    status, info = await graph.request("GET", media_id)
    assert status == 200
    assert info == {
        "messaging_product": "whatsapp",
        "url": str(graph.server.make_url(f"/v23.0/{media_id}/download")),
        "mime_type": "image/jpeg",
        "sha256": hashlib.sha256(b"\xff\xd8\xff\xe0jpeg").hexdigest(),
        "file_size": 8,
        "id": media_id,
    }

    async with graph.http.get(info["url"], headers=AUTH) as response:
        assert response.status == 200
        assert response.content_type == "image/jpeg"
        assert await response.read() == b"\xff\xd8\xff\xe0jpeg"
    async with graph.http.get(info["url"]) as response:
        assert response.status == 401

    assert await graph.request("DELETE", media_id) == (200, {"success": True})
    status, answer = await graph.request("GET", media_id)
    assert status == 400
    assert without_trace(answer) == error(
        100, UNSUPPORTED.format(method="get", id=media_id), subcode=33, error_type="GraphMethodException"
    )
    status, answer = await graph.request("DELETE", media_id)
    assert answer["error"]["error_subcode"] == 33


async def test_uploaded_media_can_be_sent_by_id(graph):
    _, uploaded = await graph.request("POST", f"{PNID}/media", data=upload_form())
    body = build_payload(Message("+" + TO, Media("image", media_id=uploaded["id"]))).body

    status, _ = await graph.send(body)

    assert status == 200


@pytest.mark.parametrize(
    ("form", "code", "message"),
    [
        (upload_form(product=None), 100, "(#100) The parameter messaging_product is required."),
        (upload_form(data=None), 100, "(#100) The parameter file is required."),
        (upload_form(mime="text/html"), 100, None),
        (
            upload_form(data=b"x" * (500 * 1024 + 1), mime="image/webp"),
            131053,
            "(#131053) Media upload error",
        ),
    ],
    ids=["no messaging_product", "no file", "unsupported type", "too big"],
)
async def test_bad_uploads(graph, form, code, message):
    status, answer = await graph.request("POST", f"{PNID}/media", data=form)

    assert status == 400
    assert answer["error"]["code"] == code
    if message is not None:
        assert answer["error"]["message"] == message
    else:
        assert answer["error"]["message"].startswith(
            "(#100) Param file must be a file with one of the following types"
        )
        assert answer["error"]["message"].endswith("Received file of type 'text/html'.")


async def test_the_media_store_forgets_the_oldest_beyond_its_size():
    store = MediaStore(max_bytes=10)
    store.add("1", "image/png", b"12345")
    store.add("2", "image/png", b"12345")
    store.add("3", "image/png", b"1")

    assert "1" not in store
    assert store.get("2") is not None
    assert len(store) == 2


async def test_unknown_paths_get_graphs_errors(graph):
    status, answer = await graph.request("GET", f"{PNID}/conversations")
    assert status == 400
    assert without_trace(answer) == error(2500, "Unknown path components: /conversations")

    status, answer = await graph.request("GET", f"{PNID}/messages")
    assert without_trace(answer) == error(
        100, UNSUPPORTED.format(method="get", id=PNID), subcode=33, error_type="GraphMethodException"
    )

    status, answer = await graph.request("GET", "424242")
    assert answer["error"]["error_subcode"] == 33

    status, answer = await graph.request("GET", f"{PNID}/conversations", headers={})
    assert answer["error"]["code"] == 104


async def test_any_version_is_served(graph):
    async with graph.http.post(
        graph.server.make_url(f"/v17.0/{PNID}/messages"), json=text_body(), headers=AUTH
    ) as response:
        assert response.status == 200
        assert response.headers["facebook-api-version"] == "v17.0"


def test_graph_error_response_builds_metas_envelope():
    state = SandboxState(SandboxSettings())

    response = graph_error_response(state, 131000, is_transient=True, headers={"Retry-After": "2"})

    assert response.status == 500
    assert response.headers["Retry-After"] == "2"
    body = json.loads(response.text)
    assert without_trace(body) == {
        "message": "(#131000) Something went wrong",
        "type": "OAuthException",
        "code": 131000,
        "is_transient": True,
        "error_data": {
            "messaging_product": "whatsapp",
            "details": "Something went wrong. Please try again later.",
        },
    }
    assert state.counters == {"error.131000": 1}
    assert GraphError(4).envelope("t") == {
        "error": {
            "message": "(#4) Application request limit reached",
            "type": "OAuthException",
            "code": 4,
            "fbtrace_id": "t",
        }
    }
