"""Commands and the command bus: dispatch, bulk sends, JSON encoding, transports, plugin commands."""

from __future__ import annotations

import asyncio
import json

import attrs
import pytest

from omnichannel import (
    BulkResult,
    ButtonType,
    CommandBus,
    CommandError,
    CurrencyParam,
    DeliveryStatus,
    InProcessTransport,
    Media,
    MediaKind,
    MediaParam,
    Message,
    MessageSent,
    MessageValidationError,
    PermanentDeliveryError,
    Receipt,
    SendBulk,
    SendMessage,
    Template,
    TemplateButton,
    Text,
    TextParam,
    UnknownCommandError,
    hookimpl,
)
from omnichannel.commands import command_name
from omnichannel.testing import EventRecorder, make_service

# ---------------------------------------------------------------- in-process dispatch


async def test_send_message_runs_in_process(service, recording_channel, event_recorder):
    message = Message("+15551234567", Text("hi"), channel="recording")
    receipt = await service.bus.dispatch(SendMessage(message))
    assert isinstance(receipt, Receipt)
    assert receipt.ok
    assert receipt.message_id == message.id
    assert [p.message_id for p in recording_channel.payloads] == [message.id]
    assert len(event_recorder.of_type(MessageSent)) == 1


async def test_send_message_raises_as_send_does(service):
    with pytest.raises(MessageValidationError) as info:
        await service.bus.dispatch(SendMessage(Message("+1555", Text(""), channel="recording")))
    assert info.value.problems == ["content.body: must not be empty"]


async def test_the_bus_is_created_once(service):
    assert service.bus is service.bus
    assert isinstance(service.bus.transport, InProcessTransport)
    assert set(service.bus.command_types) == {"send_message", "send_bulk"}


async def test_send_bulk_sends_to_every_recipient_and_counts(service, recording_channel):
    recording_channel.script(None, PermanentDeliveryError("not on WhatsApp"), None)
    command = SendBulk(
        ["+1", "+2", "+3", ""],
        Text("sale!"),
        channel="recording",
        campaign_id="spring-sale",
        concurrency=1,
    )
    result = await service.bus.dispatch(command)

    assert isinstance(result, BulkResult)
    assert result.campaign_id == "spring-sale"
    assert len(result.receipts) == 4
    assert [r.status for r in result.receipts] == [
        DeliveryStatus.ACCEPTED,
        DeliveryStatus.FAILED,
        DeliveryStatus.ACCEPTED,
        DeliveryStatus.FAILED,
    ]
    assert result.accepted == 2
    assert result.failed == 2
    assert result.receipts[1].error.detail == "not on WhatsApp"
    assert result.receipts[3].error.kind == "MessageValidationError"
    assert [p.recipient for p in recording_channel.payloads] == ["+1", "+3"]


async def test_send_bulk_messages_carry_idempotency_keys_and_the_campaign(service, event_recorder):
    command = SendBulk(
        [" +15550001 ", "+15550002"],
        Text("hi"),
        channel="recording",
        campaign_id="c-42",
        metadata={"source": "crm"},
    )
    messages = command.messages()
    assert [m.recipient for m in messages] == ["+15550001", "+15550002"]
    assert [m.idempotency_key for m in messages] == ["c-42:+15550001", "c-42:+15550002"]
    assert [m.key for m in messages] == ["c-42:+15550001", "c-42:+15550002"]
    assert all(dict(m.metadata) == {"source": "crm", "campaign_id": "c-42"} for m in messages)
    assert all(m.channel == "recording" and m.content == Text("hi") for m in messages)

    await service.bus.dispatch(command)
    sent = event_recorder.of_type(MessageSent)
    assert sorted(e.message.key for e in sent) == ["c-42:+15550001", "c-42:+15550002"]


def test_send_bulk_keys_are_stable_for_one_campaign():
    command = SendBulk(["+1", "+2"], Text("hi"), route=["sms", "email"])
    assert command.campaign_id
    first, second = command.messages(), command.messages()
    assert (
        [m.key for m in first]
        == [m.key for m in second]
        == [f"{command.campaign_id}:+1", f"{command.campaign_id}:+2"]
    )
    assert first[0].route == ("sms", "email")
    assert SendBulk(["+1"], Text("hi")).campaign_id != SendBulk(["+1"], Text("hi")).campaign_id


async def test_send_bulk_respects_its_concurrency(recording_channel):
    active = 0
    peak = 0
    full, opened = asyncio.Event(), asyncio.Event()

    class Gauge:
        @hookimpl(wrapper=True)
        def send(self):
            inner = yield
            if inner is None:
                return None

            async def sender():
                nonlocal active, peak
                active += 1
                peak = max(peak, active)
                if active == 2:
                    full.set()
                try:
                    await opened.wait()
                    return await inner()
                finally:
                    active -= 1

            return sender

    async with make_service(("gauge", Gauge()), recording_channel) as service:
        command = SendBulk([f"+1{i}" for i in range(8)], Text("hi"), channel="recording", concurrency=2)
        task = asyncio.create_task(service.bus.dispatch(command))
        await full.wait()
        assert active == 2
        opened.set()
        result = await task
    assert result.accepted == 8
    assert peak == 2


def test_command_names():
    assert command_name(SendMessage) == "send_message"
    assert command_name(SendBulk) == "send_bulk"
    assert command_name(BulkResult) == "bulk_result"


# ---------------------------------------------------------------- encoding


def template_message() -> Message:
    template = Template(
        "order_shipped",
        language="pt_BR",
        header=[MediaParam(MediaKind.IMAGE, link="https://example.com/box.png")],
        body={"first_name": "Ana", "total": CurrencyParam("R$ 10,00", "BRL", 10_000)},
        buttons=[TemplateButton(ButtonType.URL, 0, "track/123")],
    )
    return Message(
        "+5511999999999",
        template,
        route=["whatsapp", "sms"],
        idempotency_key="order-123",
        metadata={"order": "123"},
    )


async def test_send_message_round_trips_through_json(service):
    command = SendMessage(template_message())
    raw = service.bus.encode(command)
    envelope = json.loads(raw)

    assert envelope["command"] == "send_message"
    content = envelope["data"]["message"]["content"]
    assert content["type"] == "template"
    assert content["body"] == [
        {"type": "text", "text": "Ana", "name": "first_name"},
        {
            "type": "currency",
            "fallback_value": "R$ 10,00",
            "code": "BRL",
            "amount_1000": 10000,
            "name": "total",
        },
    ]
    assert content["buttons"] == [{"sub_type": "url", "index": 0, "value": "track/123"}]
    assert envelope["data"]["message"]["route"] == ["whatsapp", "sms"]

    decoded = service.bus.decode(raw)
    assert decoded == command
    assert decoded.message.id == command.message.id
    assert decoded.message.content.uses_named_parameters
    assert service.bus.decode(raw.decode()) == command  # str works too


async def test_send_bulk_round_trips_through_json(service):
    command = SendBulk(
        ["+1", "+2"],
        Media(MediaKind.DOCUMENT, url="https://example.com/invoice.pdf", filename="invoice.pdf"),
        channel="recording",
        campaign_id="invoices-2026-01",
        concurrency=5,
        metadata={"batch": "7"},
    )
    raw = service.bus.encode(command)
    assert json.loads(raw)["command"] == "send_bulk"
    assert json.loads(raw)["data"]["recipients"] == ["+1", "+2"]
    decoded = service.bus.decode(raw)
    assert decoded == command
    # message ids are new on every call; everything else (keys included) is the same
    assert [attrs.evolve(m, id="-") for m in decoded.messages()] == [
        attrs.evolve(m, id="-") for m in command.messages()
    ]


async def test_send_bulk_with_a_positional_template_round_trips(service):
    command = SendBulk(["+1"], Template("welcome", body=["Ann", TextParam("42")]), route="sms")
    assert service.bus.decode(service.bus.encode(command)) == command


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", "command is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[1, 2]", 'command must be a JSON object with a "command" name and "data"'),
        (b'{"data": {}}', 'command must be a JSON object with a "command" name and "data"'),
        (b'{"command": 7, "data": {}}', 'command must be a JSON object with a "command" name and "data"'),
    ],
)
async def test_decode_malformed_envelopes(service, raw, expected):
    with pytest.raises(CommandError) as info:
        service.bus.decode(raw)
    assert str(info.value) == expected
    assert type(info.value) is CommandError


async def test_decode_an_unknown_command(service):
    with pytest.raises(UnknownCommandError) as info:
        service.bus.decode(b'{"command": "launch_rockets", "data": {}}')
    assert str(info.value) == "no handler is registered for command 'launch_rockets'"
    assert info.value.command == "launch_rockets"
    assert isinstance(info.value, CommandError)
    assert isinstance(info.value, LookupError)


async def test_decode_invalid_data_lists_every_path(service):
    raw = json.dumps({"command": "send_bulk", "data": {"recipients": 5, "channel": 3, "extra": True}})
    with pytest.raises(CommandError) as info:
        service.bus.decode(raw)
    message = str(info.value)
    assert message.startswith("invalid send_bulk command: ")
    problems = message.removeprefix("invalid send_bulk command: ").split("; ")
    assert sorted(problems) == [
        "data.channel: expected a string, got int 3",
        "data.content: required field missing",
        "data.extra: unknown key",
        "data.recipients: expected a list of strings, got int 5",
    ]


async def test_decode_invalid_nested_content(service):
    raw = json.dumps(
        {
            "command": "send_message",
            "data": {"message": {"recipient": 1, "content": {"type": "video", "url": "x"}}},
        }
    )
    with pytest.raises(CommandError) as info:
        service.bus.decode(raw)
    assert str(info.value) == (
        "invalid send_message command: data.message.recipient: expected a string, got int 1; "
        "data.message.content: 'type' must be one of 'text', 'template', 'media', 'buttons', 'list', "
        "got 'video'"
    )


async def test_encode_an_unregistered_command(service):
    with pytest.raises(UnknownCommandError) as info:
        service.bus.encode(Ping("x"))
    assert str(info.value) == "no handler is registered for command 'Ping'"


async def test_dispatch_an_unregistered_command(service):
    with pytest.raises(UnknownCommandError) as info:
        await service.bus.dispatch(Ping("x"))
    assert str(info.value) == "no handler is registered for command 'Ping'"
    with pytest.raises(UnknownCommandError):
        await service.bus.execute(Ping("x"))


async def test_commands_must_be_attrs_classes(service):
    class NotAttrs:
        pass

    async def handler(command, service):
        return None

    with pytest.raises(CommandError) as info:
        service.bus.register(NotAttrs, handler)
    assert str(info.value) == f"{NotAttrs!r} is not an attrs class; commands must be"


async def test_two_command_classes_with_one_wire_name_are_an_error():
    @attrs.frozen
    class SendMessage:  # the same name as the built-in command
        text: str

    class Shadowing:
        @hookimpl
        def register_command_handlers(self):
            async def handle(command, service):
                return None

            return {SendMessage: handle}

    service = make_service(("shadowing", Shadowing()))
    with pytest.raises(CommandError) as info:
        _ = service.bus
    assert str(info.value) == (
        f"{SendMessage.__module__}.{SendMessage.__qualname__} and omnichannel.commands.SendMessage "
        "both encode as 'send_message'; rename one"
    )


# ---------------------------------------------------------------- transports


class QueueTransport:
    """Stands in for a broker: keeps encoded commands instead of running them."""

    def __init__(self) -> None:
        self.queue: list[bytes] = []

    async def submit(self, command, bus):
        self.queue.append(bus.encode(command))
        return "queued"


async def test_a_custom_transport_receives_the_command(service, recording_channel):
    transport = QueueTransport()
    bus = CommandBus(service, transport=transport)
    command = SendMessage(Message("+1555", Text("later"), channel="recording"))

    assert await bus.dispatch(command) == "queued"
    assert recording_channel.payloads == []  # not run here
    [raw] = transport.queue
    # a worker decodes and executes it
    receipt = await service.bus.execute(service.bus.decode(raw))
    assert receipt.ok
    assert receipt.message_id == command.message.id
    assert [p.message_id for p in recording_channel.payloads] == [command.message.id]


async def test_a_transport_is_not_called_for_an_unknown_command(service):
    transport = QueueTransport()
    bus = CommandBus(service, transport=transport)
    with pytest.raises(UnknownCommandError):
        await bus.dispatch(Ping("x"))
    assert transport.queue == []


# ---------------------------------------------------------------- plugin commands


@attrs.frozen
class Ping:
    text: str
    times: int = 1


class PingPlugin:
    def __init__(self) -> None:
        self.handled: list[Ping] = []

    @hookimpl
    def register_command_handlers(self):
        async def handle(command, service):
            self.handled.append(command)
            return " ".join(["pong"] * command.times) + f" {command.text}"

        return {Ping: handle}


async def test_hook_register_command_handlers_plugin_command_dispatches_and_round_trips(recording_channel):
    plugin = PingPlugin()
    async with make_service(("ping", plugin), recording_channel, EventRecorder()) as service:
        bus = service.bus
        assert await bus.dispatch(Ping("hi", times=2)) == "pong pong hi"
        raw = bus.encode(Ping("there"))
        assert json.loads(raw) == {"command": "ping", "data": {"text": "there", "times": 1}}
        assert bus.decode(raw) == Ping("there")
        with pytest.raises(CommandError) as info:
            bus.decode(b'{"command": "ping", "data": {"times": "2"}}')
    assert plugin.handled == [Ping("hi", times=2)]
    assert sorted(str(info.value).removeprefix("invalid ping command: ").split("; ")) == [
        "data.text: required field missing",
        "data.times: expected an integer, got str '2'",
    ]


async def test_hook_register_command_handlers_on_a_queue_transport(recording_channel):
    plugin = PingPlugin()
    async with make_service(("ping", plugin), recording_channel) as service:
        transport = QueueTransport()
        producer = CommandBus(service, transport=transport)
        assert await producer.dispatch(Ping("async")) == "queued"
        assert plugin.handled == []
        assert await service.bus.execute(service.bus.decode(transport.queue[0])) == "pong async"
    assert plugin.handled == [Ping("async")]
