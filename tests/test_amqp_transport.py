"""``AmqpTransport`` and ``[amqp]`` against the real RabbitMQ (``$OMNICHANNEL_TEST_AMQP_URL``)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aio_pika
import pytest

from omnichannel import Message, OmniChannelService, ServiceConfig, Text
from omnichannel.amqp import AmqpTransport, Published
from omnichannel.commands import SendMessage
from omnichannel.config import AmqpConfig, load_config
from omnichannel.errors import CommandError
from omnichannel.serde import Secret
from omnichannel.testing import RecordingChannel

AMQP_URL = os.environ.get("OMNICHANNEL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def amqp_config(senders: Iterable[str] = (), **settings: Any) -> AsyncIterator[AmqpConfig]:
    """A config of queues unique to one test (deleted afterwards, with the parked queues of
    ``senders``); no broker: fail on CI, else skip."""
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=2)
    except Exception as exc:
        reason = f"no RabbitMQ at {AMQP_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the AMQP tests must run")
        pytest.skip(f"{reason}; start one (or set OMNICHANNEL_TEST_AMQP_URL) to run this test")
    config = AmqpConfig(url=Secret(AMQP_URL), queue=f"omnichannel-test.{uuid.uuid4().hex}", **settings)
    try:
        yield config
    finally:
        async with connection:
            channel = await connection.channel()
            names = [config.queue, config.dead_letter_queue, f"{config.queue}.parked"]
            # Worker processes started with only the queue from the environment defer with the defaults.
            defaults = AmqpConfig()
            delays = {
                *config.delays,
                config.reconcile_window_s,
                *defaults.delays,
                defaults.reconcile_window_s,
            }
            names += [f"{config.queue}.delay.{max(1, round(d * 1000))}" for d in delays]
            names += [f"{config.queue}.parked.{sender}" for sender in senders]
            for name in names:
                await channel.queue_delete(name)
            await channel.exchange_delete(f"{config.queue}.control")


@pytest.fixture
async def config() -> AsyncIterator[AmqpConfig]:
    async for value in amqp_config():
        yield value


@pytest.fixture
async def service() -> AsyncIterator[OmniChannelService]:
    async with OmniChannelService(plugins=[RecordingChannel()], load_entrypoints=False) as svc:
        yield svc


def test_config_defaults_and_redaction():
    config = load_config(environ={"OMNICHANNEL_AMQP__URL": "amqp://me:pa55word@broker:5672/vh"})
    assert config.amqp is not None
    assert config.amqp.queue == "omnichannel.commands"
    assert config.amqp.dead_letter_queue == "omnichannel.commands.dlq"
    assert (config.amqp.prefetch, config.amqp.concurrency, config.amqp.max_deliveries) == (20, 10, 5)
    assert "pa55word" not in repr(config.amqp)
    shown = OmniChannelService(config, load_entrypoints=False).describe_config()["amqp"]
    assert "pa55word" not in json.dumps(shown)
    assert ServiceConfig().amqp is None
    assert "pa55word" not in repr(AmqpTransport(config.amqp))


def test_config_dlq_follows_the_queue_and_checks_values():
    config = load_config(environ={}, overrides={"amqp": {"queue": "q", "delays": [1, 2.5]}})
    assert config.amqp == AmqpConfig(queue="q", delays=(1.0, 2.5), dead_letter_queue="q.dlq")
    with pytest.raises(ValueError, match=r"amqp\.delays"):
        load_config(environ={}, overrides={"amqp": {"delays": []}})


async def test_submit_publishes_a_persistent_confirmed_message(config, service):
    command = SendMessage(Message("+15550001", Text("hi"), channel="recording"))
    async with AmqpTransport(config) as transport:
        receipt = await transport.submit(command, service.bus)
        assert receipt == Published(config.queue, command.message.id)
        channel = await transport.channel()
        queue = await channel.get_queue(config.queue)
        incoming = await queue.get(no_ack=True)
    assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert incoming.message_id == command.message.id
    assert service.bus.decode(incoming.body) == command


async def test_service_bus_publishes_when_amqp_is_configured(config):
    plugins = [RecordingChannel()]
    async with OmniChannelService(ServiceConfig(amqp=config), plugins=plugins, load_entrypoints=False) as svc:
        transport = svc.bus.transport
        assert isinstance(transport, AmqpTransport)
        try:
            result = await svc.bus.dispatch(SendMessage(Message("+1555", Text("x"), channel="recording")))
        finally:
            await transport.close()
    assert isinstance(result, Published)
    assert plugins[0].payloads == []  # not sent here: a worker will


async def test_broker_down_is_a_clear_error(service):
    config = AmqpConfig(url=Secret("amqp://guest:s3cret@127.0.0.1:1/"), queue="nowhere")
    transport = AmqpTransport(config)
    with pytest.raises(
        CommandError, match=r"cannot connect to the AMQP broker at amqp://127.0.0.1:1/"
    ) as info:
        await transport.submit(SendMessage(Message("+1555", Text("x"), channel="recording")), service.bus)
    assert "s3cret" not in str(info.value)
    await transport.close()
