"""The store's REST routes on ``omnichannel serve``: ``GET /stats`` and ``GET /messages/{id}``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from omnichannel import (
    DeliveryStatus,
    Message,
    PluginSettings,
    ServiceConfig,
    StatusChanged,
    Template,
    make_app,
)
from omnichannel.testing import FakeClock, RecordingChannel, make_service
from omnichannel_store import StorePlugin

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Any]]:
    url = f"sqlite:///{tmp_path / 'messages.sqlite3'}"
    config = ServiceConfig(plugins={"store": PluginSettings(settings={"url": url})})
    service = make_service(RecordingChannel(), ("store", StorePlugin()), config=config, clock=FakeClock(T0))
    async with TestClient(TestServer(make_app(service))) as http:
        yield http, service


async def send_and_deliver(service: Any) -> str:
    template = Template("order_ready", language="en_US", body={"name": "Ann"})
    receipt = await service.send(Message("+15550001", template, channel="recording"))
    await service.emit(
        StatusChanged(
            "recording",
            receipt.provider_message_id,
            DeliveryStatus.DELIVERED,
            occurred_at=T0 + timedelta(seconds=3),
        )
    )
    return str(receipt.message_id)


async def test_stats_report_the_range_as_json(client: Any) -> None:
    http, service = client
    await send_and_deliver(service)
    response = await http.get("/stats", params={"from": "2026-11-01", "to": "2026-11-02"})
    assert response.status == 200
    document = await response.json()
    stats = document["messages"]
    assert (stats["total"], stats["delivered"], stats["delivery_rate"]) == (1, 1, 1.0)
    assert stats["start"] == "2026-11-01T00:00:00+00:00"
    assert stats["to_delivered"]["p50"] == pytest.approx(3.0)
    [row] = document["templates"]
    assert (row["template"], row["language"]) == ("order_ready", "en_US")
    assert (row["total"], row["delivered"]) == (1, 1)


async def test_stats_default_to_the_last_24_hours(client: Any) -> None:
    http, service = client
    await send_and_deliver(service)
    service.clock.advance(25 * 3600)
    document = await (await http.get("/stats")).json()
    assert document["messages"]["total"] == 0
    assert document["messages"]["end"] == (T0 + timedelta(hours=25)).isoformat()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "yesterday"}, "from: 'yesterday' is not an ISO date or date-time"),
        ({"from": "2026-11-02", "to": "2026-11-01"}, "from 2026-11-02T00:00:00+00:00 is not before to"),
    ],
)
async def test_a_bad_parameter_is_a_400_saying_what_to_fix(
    client: Any, params: dict[str, str], message: str
) -> None:
    http, _ = client
    response = await http.get("/stats", params=params)
    assert response.status == 400
    error = (await response.json())["error"]
    assert message in error["message"]


async def test_a_message_and_its_history(client: Any) -> None:
    http, service = client
    message_id = await send_and_deliver(service)
    response = await http.get(f"/messages/{message_id}")
    assert response.status == 200
    document = await response.json()
    assert document["message"]["message_id"] == message_id
    assert document["message"]["status"] == "delivered"
    assert document["message"]["template"] == "order_ready"
    assert [entry["status"] for entry in document["history"]] == ["accepted", "delivered"]


async def test_an_unknown_message_is_a_404(client: Any) -> None:
    http, _ = client
    response = await http.get("/messages/nope")
    assert response.status == 404
    assert (await response.json())["error"]["message"] == "no message 'nope' in the message store"


async def test_routes_answer_503_before_the_service_started(tmp_path: Path) -> None:
    service = make_service(RecordingChannel(), ("store", StorePlugin()))
    async with TestClient(TestServer(make_app(service, manage_service=False))) as http:
        response = await http.get("/stats")
        assert response.status == 503
        assert "not open" in (await response.json())["error"]["message"]
