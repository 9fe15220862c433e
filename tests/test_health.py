"""The health report (``omnichannel.health``): the ``health`` hook, ``GET /health`` and ``[amqp]``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_amqp_transport import AMQP_URL, amqp_config

from omnichannel import ServiceConfig, hookimpl
from omnichannel.config import AmqpConfig, ServerConfig
from omnichannel.health import health_report
from omnichannel.serde import Secret
from omnichannel.server import make_app
from omnichannel.testing import RecordingChannel, make_service


class Section:
    """A plugin whose ``health`` answers ``answer`` (awaited when ``awaited``)."""

    def __init__(self, answer: object, *, awaited: bool = False) -> None:
        self.answer = answer
        self.awaited = awaited

    @hookimpl
    def health(self, service):
        if not self.awaited:
            return self.answer

        async def later():
            return self.answer

        return later()


class Broken:
    @hookimpl
    def health(self):
        raise RuntimeError("the pool is gone")


class Silent:
    """Never answers (until cancelled)."""

    @hookimpl
    async def health(self):
        await asyncio.Event().wait()


# ---------------------------------------------------------------- the hook


async def test_hook_health_sections_are_shown_under_the_plugin_names():
    service = make_service(
        RecordingChannel(),
        ("sync", Section({"breakers": [{"name": "whatsapp:1", "state": "closed"}]})),
        ("async", Section({"size": 3}, awaited=True)),
        ("quiet", Section(None)),
    )
    async with service:
        report = await health_report(service)
    assert report == {
        "status": "ok",
        "degraded": [],
        "plugins": {"sync": {"breakers": [{"name": "whatsapp:1", "state": "closed"}]}, "async": {"size": 3}},
    }


async def test_hook_health_a_failing_or_late_section_does_not_spoil_the_others():
    config = ServiceConfig(server=ServerConfig(health_timeout_s=0.01))
    service = make_service(
        ("ok", Section({"fine": True})),
        ("broken", Broken()),
        ("silent", Silent()),
        ("odd", Section(["not", "a", "mapping"])),
        config=config,
    )
    async with service:
        report = await health_report(service)
    assert report["status"] == "ok"
    assert report["plugins"] == {
        "ok": {"fine": True},
        "broken": {"error": "RuntimeError: the pool is gone"},
        "silent": {"error": "no answer within 0.01 s"},
        "odd": {"error": "the health hook returned list, not a mapping"},
    }
    assert report["degraded"] == ["broken", "odd", "silent"]


async def test_hook_health_degraded_sections_are_listed():
    service = make_service(
        ("redis-state", Section({"degraded": True})), ("other", Section({"degraded": False}))
    )
    async with service:
        assert (await health_report(service))["degraded"] == ["redis-state"]


async def test_hook_health_secrets_are_redacted_at_any_depth():
    answer = {
        "access_token": "EAAG-secret",
        "links": [{"url": "redis://:hunter2@cache:6379/0", "api_key": "k-123"}, "amqp://u:pw@mq/"],
        "nested": {"password": "pw"},
    }
    service = make_service(("leaky", Section(answer)))
    async with service:
        section = (await health_report(service))["plugins"]["leaky"]
    text = repr(section)
    for secret in ("EAAG-secret", "hunter2", "k-123", ":pw@", "'pw'"):
        assert secret not in text
    assert section["links"][0]["url"].startswith("redis://")


async def test_hook_health_is_not_called_while_the_service_is_stopped():
    service = make_service(("sync", Section({"fine": True})))
    assert await health_report(service) == {"status": "ok", "degraded": [], "plugins": {}}


async def test_hook_health_sections_in_get_health_which_stays_200():
    service = make_service(RecordingChannel(), ("broken", Broken()), ("ok", Section({"n": 1})))
    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        response = await client.get("/health")
        assert response.status == 200
        body = await response.json()
    assert body == {
        "status": "ok",
        "degraded": ["broken"],
        "plugins": {"broken": {"error": "RuntimeError: the pool is gone"}, "ok": {"n": 1}},
    }


# ---------------------------------------------------------------- [amqp]


@pytest.fixture
async def amqp() -> AsyncIterator[AmqpConfig]:
    async for value in amqp_config():
        yield value


async def test_amqp_section_counts_queued_dead_and_parked(amqp):
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        for queue, count in ((amqp.queue, 3), (amqp.dead_letter_queue, 2), (f"{amqp.queue}.parked", 1)):
            await channel.declare_queue(queue, durable=True)
            for i in range(count):
                await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id=str(i)), queue)
    service = make_service(RecordingChannel(), config=ServiceConfig(amqp=amqp))
    async with service:
        report = await health_report(service)
    assert report["degraded"] == []
    assert report["plugins"]["omnichannel._amqp_health"] == {
        "broker": "amqp://127.0.0.1:5672/",
        "queue": amqp.queue,
        "queued": 3,
        "dead_letters": 2,
        "parked_senders": 1,
    }


async def test_amqp_section_reports_a_broker_that_cannot_be_reached():
    amqp = AmqpConfig(url=Secret("amqp://guest:s3cret@127.0.0.1:1/"), queue="omnichannel-test.down")
    service = make_service(RecordingChannel(), config=ServiceConfig(amqp=amqp))
    async with service:
        report = await health_report(service)
    section = report["plugins"]["omnichannel._amqp_health"]
    assert report["degraded"] == ["omnichannel._amqp_health"]
    assert section["degraded"] is True
    assert "cannot connect to the AMQP broker at amqp://127.0.0.1:1/" in section["error"]
    assert "s3cret" not in repr(report)


async def test_no_amqp_section_without_amqp():
    service = make_service(RecordingChannel())
    async with service:
        assert "omnichannel._amqp_health" not in (await health_report(service))["plugins"]
