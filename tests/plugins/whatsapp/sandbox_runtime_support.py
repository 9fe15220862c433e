"""Shared by the sandbox runtime tests: a stand-in Graph send endpoint, send bodies and an HTTP session.

The fixtures are ``fixture_<name>`` functions registered with ``name=`` (as pytest's docs suggest):
a test module imports them (``# noqa: F401``) and its tests request them by name, without the
arguments shadowing the imports (ruff F811).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from omnichannel_whatsapp.sandbox import Sandbox, SandboxSettings, SandboxState

RECIPIENT = "16505551234"
SECRET = "sandbox-test-secret"


def stand_in_graph(state: SandboxState) -> list[web.RouteDef]:
    """A minimal send endpoint, standing in for graph.py's routes."""

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        to = body["to"]
        record = state.accept(body, "".join(ch for ch in to if ch.isdigit()))
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": record.recipient}],
                "messages": [{"id": record.wamid}],
            }
        )

    return [web.post("/{version}/{phone_number_id}/messages", send)]


def text_body(to: str = RECIPIENT, callback: str | None = "m-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}
    if callback is not None:
        body["biz_opaque_callback_data"] = callback
    return {**body, **extra}


def settings(**changes: Any) -> SandboxSettings:
    return SandboxSettings(**{"app_secret": SECRET, **changes})


async def send(
    http: aiohttp.ClientSession, sandbox: Sandbox, body: dict[str, Any] | None = None
) -> aiohttp.ClientResponse:
    url = f"{sandbox.url}/v23.0/{sandbox.settings.phone_number_id}/messages"
    answer = await http.post(
        url, json=body or text_body(), headers={"Authorization": f"Bearer {sandbox.settings.access_token}"}
    )
    await answer.read()
    return answer


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
