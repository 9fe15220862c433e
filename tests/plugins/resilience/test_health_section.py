"""The resilience plugin's section of the health report (resilience.md §1.12)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from omnichannel import (
    ErrorScope,
    Message,
    PluginSettings,
    RateLimitedError,
    ServiceConfig,
    Text,
    TransientDeliveryError,
)
from omnichannel.health import health_report
from omnichannel.server import make_app
from omnichannel.testing import FakeClock, RecordingChannel, make_service
from omnichannel_resilience import ResiliencePlugin


def service_with(channel: RecordingChannel, settings: dict[str, Any], clock: FakeClock | None = None):
    config = ServiceConfig(plugins={"resilience": PluginSettings(settings=settings)})
    return make_service(
        channel, ("resilience", ResiliencePlugin(random.Random(7))), config=config, clock=clock or FakeClock()
    )


def hello() -> Message:
    return Message("+15551234567", Text("hi"), channel="recording")


async def test_an_open_breaker_shows_with_its_time_left_and_the_report_stays_ok():
    channel = RecordingChannel()
    channel.fail_next(5, TransientDeliveryError("Graph 503", code=2, http_status=503))
    async with service_with(channel, {"profile": "legacy", "retry": {"max_attempts": 1}}) as service:
        for _ in range(5):
            with pytest.raises(TransientDeliveryError):
                await service.send(hello())
        report = await health_report(service)
    assert report["status"] == "ok"
    section = report["plugins"]["resilience"]
    assert section["degraded"] is False
    assert section["shared_state"] == "memory"
    [row] = section["breakers"]
    assert (row["breaker"], row["state"], row["gauge"], row["open_count"]) == (
        "recording:recording",
        "open",
        2,
        1,
    )
    assert row["half_open_in_s"] == 60.0
    assert "rate_limits" not in section  # the legacy profile has none


async def test_a_throttled_sender_shows_its_lowered_rate_and_the_bulkhead_its_slots():
    channel = RecordingChannel()
    channel.fail_next(1, RateLimitedError("130429", code=130429, scope=ErrorScope.SENDER, retry_after=1.5))
    async with service_with(channel, {"retry": {"jitter": "none"}}) as service:
        await service.send(hello())
        section = (await health_report(service))["plugins"]["resilience"]
    limits = section["rate_limits"]
    assert limits["sender_rate_per_s"] == pytest.approx(68.0)
    assert list(limits["lowered"]) == ["recording"]
    assert limits["lowered"]["recording"] < 68.0
    assert section["bulkhead"] == {"in_flight": 0, "waiting": 0}
    assert section["breakers"][0]["state"] == "closed"


async def test_unreachable_redis_state_is_degraded(redis_prefix):
    settings = {
        "shared_state": "redis",
        "redis_url": "redis://:s3cret@127.0.0.1:1/0",
        "redis_prefix": redis_prefix,
    }
    async with service_with(RecordingChannel(), settings) as service:
        await service.send(hello())  # the local fallback sends; Redis is marked down
        report = await health_report(service)
    assert report["degraded"] == ["resilience"]
    assert report["plugins"]["resilience"]["degraded"] is True
    assert "s3cret" not in repr(report)


async def test_get_health_carries_the_section():
    async with TestClient(
        TestServer(make_app(service_with(RecordingChannel(), {})), host="127.0.0.1")
    ) as client:
        response = await client.get("/health")
        assert response.status == 200
        body = await response.json()
    assert body["plugins"]["resilience"]["breakers"] == []
