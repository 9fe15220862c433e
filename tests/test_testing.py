"""omnichannel.testing: the conformance suite on real plugins, and the fakes and recorders themselves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import attrs
import pytest
from aiohttp import web

import omnichannel_console
from omnichannel import (
    Channel,
    DeliveryStatus,
    Media,
    MediaKind,
    Message,
    MessageSent,
    PermanentDeliveryError,
    PluginSettings,
    Receipt,
    ServiceConfig,
    ServiceStarted,
    Template,
    TemplateButton,
    Text,
    TextParam,
    TransientDeliveryError,
    hookimpl,
)
from omnichannel.testing import (
    ChannelPluginConformance,
    FakeClock,
    HookCall,
    HookRecorder,
    RecordedPayload,
    RecordingChannel,
    fake_provider,
    make_service,
)

# ---------------------------------------------------------------- the conformance suite


def invalid_messages(channel: str) -> list[Message]:
    return [
        Message("+15551234567", Text("   "), channel=channel),
        Message("", Text("hi"), channel=channel),
        Message("+15551234567", Media(MediaKind.IMAGE), channel=channel),
        Message("+15551234567", Template("t", body=[TextParam("a", name="x"), "b"]), channel=channel),
        Message("+15551234567", Template("t", buttons=[TemplateButton("url", -1, "x")]), channel=channel),
    ]


class TestConsoleChannelConformance(ChannelPluginConformance):
    channel = "console"

    def make_plugin(self):
        return omnichannel_console

    def valid_messages(self):
        return [
            Message("+15551234567", Text("hello from the console"), channel="console"),
            Message(
                "+15551234567", Template("welcome", language="en_GB", body={"name": "Ann"}), channel="console"
            ),
            Message(
                "+15551234567",
                Media(MediaKind.IMAGE, url="https://example.com/cat.png", caption="a cat"),
                channel="console",
            ),
        ]

    def invalid_messages(self):
        return invalid_messages("console")


class PickyRecordingChannel(RecordingChannel):
    """A RecordingChannel whose provider rejects one recipient and fails for another."""

    @hookimpl
    def send(self, payload):
        deliver = RecordingChannel.send(self, payload)

        async def picky():
            if payload.recipient == "+10000000000":
                raise PermanentDeliveryError("recipient is not on this channel", code=1013)
            if payload.recipient == "+19999999999":
                raise TransientDeliveryError("provider answered 503", http_status=503)
            return await deliver()

        return picky


class TestRecordingChannelConformance(ChannelPluginConformance):
    channel = "recording"

    def make_plugin(self):
        return PickyRecordingChannel()

    def valid_messages(self):
        return [
            Message("+15551234567", Text("hi"), channel="recording"),
            Message("+15551234567", Template("welcome", body=["Ann"]), channel="recording"),
            Message("+15551234567", Media(MediaKind.DOCUMENT, media_id="123"), channel="recording"),
        ]

    def invalid_messages(self):
        return invalid_messages("recording")

    def failure_cases(self):
        return [
            (Message("+10000000000", Text("hi"), channel="recording"), PermanentDeliveryError),
            (Message("+19999999999", Text("hi"), channel="recording"), TransientDeliveryError),
        ]


# ---------------------------------------------------------------- FakeClock


def test_fake_clock_starts_at_a_fixed_time(fake_clock):
    assert fake_clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    assert fake_clock.now().tzinfo is UTC
    assert fake_clock.monotonic() == 0.0
    assert fake_clock.now() == fake_clock.now()  # time does not move by itself


def test_fake_clock_advances_when_told():
    start = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    clock = FakeClock(start)
    clock.advance(1.5)
    clock.advance(0)
    assert clock.now() == start + timedelta(seconds=1.5)
    assert clock.monotonic() == 1.5
    with pytest.raises(ValueError, match=r"^time cannot go backwards$"):
        clock.advance(-0.1)
    assert clock.monotonic() == 1.5


async def test_fake_clock_sleep_returns_at_once_and_records(fake_clock):
    loop = asyncio.get_running_loop()
    before = loop.time()
    await fake_clock.sleep(3600)
    await fake_clock.sleep(0.25)
    await fake_clock.sleep(-1)
    assert loop.time() - before < 60  # an hour of fake sleep took no real hour
    assert fake_clock.sleeps == [3600, 0.25, -1]
    assert fake_clock.monotonic() == 3600.25
    assert fake_clock.now() == datetime(2026, 1, 1, 1, 0, 0, 250000, tzinfo=UTC)


async def test_fake_clock_sleep_lets_other_tasks_run(fake_clock):
    ran = asyncio.Event()

    async def other():
        ran.set()

    task = asyncio.create_task(other())
    await fake_clock.sleep(1)
    assert ran.is_set()
    await task


# ---------------------------------------------------------------- RecordingChannel and EventRecorder


async def test_recording_channel_records_payloads(service, recording_channel):
    message = Message("+1555", Text("hi"), channel="recording")
    receipt = await service.send(message)
    assert recording_channel.payloads == [RecordedPayload(message.id, "+1555", "recording", Text("hi"))]
    assert recording_channel.attempts == 1
    assert receipt.provider_message_id == "rec-1"
    assert service.channel_info("recording") == Channel(
        "recording", {"text", "template", "media", "buttons", "list"}, "records messages in memory (tests)"
    )


async def test_recording_channel_scripts_outcomes(service, recording_channel):
    recording_channel.script(TransientDeliveryError("first"), None, PermanentDeliveryError("third"))
    outcomes = []
    for _ in range(4):
        try:
            await service.send(Message("+1555", Text("hi"), channel="recording"))
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc.detail}")
    assert outcomes == ["TransientDeliveryError: first", "ok", "PermanentDeliveryError: third", "ok"]
    assert recording_channel.attempts == 4
    assert len(recording_channel.payloads) == 2


async def test_recording_channel_hold_and_release(service, recording_channel):
    recording_channel.hold()
    task = asyncio.create_task(service.send(Message("+1555", Text("hi"), channel="recording")))
    await recording_channel.entered.wait()
    assert recording_channel.attempts == 1
    assert recording_channel.payloads == []
    assert not task.done()
    recording_channel.release()
    receipt = await task
    assert receipt.ok
    assert len(recording_channel.payloads) == 1


def test_recording_channel_declares_its_name_and_capabilities():
    sms = RecordingChannel("sms", capabilities=["text"])
    assert sms.register_channels() == [Channel("sms", {"text"}, "records messages in memory (tests)")]


async def test_event_recorder_filters_by_type(service, event_recorder):
    await service.send(Message("+1555", Text("hi"), channel="recording"))
    assert event_recorder.types() == ["ServiceStarted", "MessageSent"]
    assert [type(e) for e in event_recorder.of_type(MessageSent)] == [MessageSent]
    assert len(event_recorder.of_type(ServiceStarted)) == 1
    assert event_recorder.of_type(ServiceStarted)[0] is event_recorder.events[0]


async def test_service_fixture_is_started_with_both_recorders(service, recording_channel, event_recorder):
    assert service.started
    assert service.plugin_manager.is_registered(recording_channel)
    assert service.plugin_manager.is_registered(event_recorder)
    assert isinstance(service.clock, FakeClock)
    assert list(service.channels) == ["recording"]


def test_make_service_loads_no_entry_points_and_reads_no_environment(monkeypatch):
    monkeypatch.setenv("ACME_REGION", "us")
    service = make_service(RecordingChannel())
    assert not service.plugin_manager.has_plugin("console")
    assert "console" not in service.channels
    assert isinstance(service.clock, FakeClock)
    clock = FakeClock()
    assert make_service(clock=clock).clock is clock


# ---------------------------------------------------------------- HookRecorder


async def test_hook_recorder_records_the_send_pipeline(service, recording_channel):
    message = Message("+1555", Text("hi"), channel="recording")
    with HookRecorder(service.plugin_manager) as hooks:
        await service.send(message)

    # the send pipeline; listeners are called one at a time, around pm.hook (see EventRecorder)
    assert [call.name for call in hooks.calls] == ["validate", "build", "send"]
    [validate] = hooks.calls_of("validate")
    assert isinstance(validate, HookCall)
    assert validate.kwargs == {"message": message, "channel": "recording", "service": service}
    assert "omnichannel._builtins" in validate.plugins
    [build] = hooks.calls_of("build")
    assert build.plugins == (service.plugin_manager.get_name(recording_channel),)
    [send] = hooks.calls_of("send")
    assert isinstance(send.kwargs["payload"], RecordedPayload)


async def test_hook_recorder_stops_recording_on_exit(service):
    with HookRecorder(service.plugin_manager) as hooks:
        await service.send(Message("+1555", Text("hi"), channel="recording"))
    recorded = len(hooks.calls)
    await service.send(Message("+1555", Text("again"), channel="recording"))
    assert recorded > 0
    assert len(hooks.calls) == recorded


# ---------------------------------------------------------------- fake_provider


async def test_fake_provider_serves_routes_on_loopback():
    received = []

    async def messages(request):
        body = await request.json()
        received.append(body)
        return web.json_response({"messages": [{"id": "wamid.1"}]})

    async def down(request):
        return web.json_response({"error": "unavailable"}, status=503)

    routes = {("POST", "/v21.0/123/messages"): messages, ("GET", "/health"): down}
    async with fake_provider(routes) as server:
        url = server.make_url("/v21.0/123/messages")
        assert url.host == "127.0.0.1"
        assert url.port
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"to": "+1555"}) as response:
                assert response.status == 200
                assert await response.json() == {"messages": [{"id": "wamid.1"}]}
            async with session.get(server.make_url("/health")) as response:
                assert response.status == 503
            async with session.get(server.make_url("/unknown")) as response:
                assert response.status == 404
    assert received == [{"to": "+1555"}]

    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.post(url, json={})


@attrs.frozen
class HttpChannelConfig:
    url: str


class HttpChannel:
    """A minimal channel plugin over HTTP, the shape a real one has (the recipe in docs)."""

    @hookimpl
    def register_channels(self):
        return [Channel("http", {"text"})]

    @hookimpl
    def register_config(self):
        return HttpChannelConfig

    @hookimpl
    def build(self, message):
        return {"to": message.recipient, "text": message.content.body}

    @hookimpl
    def send(self, payload, message, service):
        config = service.plugin_config(HttpChannelConfig)

        async def deliver():
            async with service.http.post(config.url, json=payload) as response:
                if response.status >= 500:
                    raise TransientDeliveryError("provider unavailable", http_status=response.status)
                body = await response.json()
            return Receipt(message.id, "http", DeliveryStatus.ACCEPTED, provider_message_id=body["id"])

        return deliver


async def test_fake_provider_with_a_channel_plugin_and_the_shared_session():
    payloads = []
    fail = [True]

    async def send(request):
        payloads.append(await request.json())
        if fail.pop() if fail else False:
            return web.json_response({}, status=503)
        return web.json_response({"id": f"p-{len(payloads)}"})

    async with fake_provider({("POST", "/send"): send}) as server:
        settings = {"url": str(server.make_url("/send"))}
        config = ServiceConfig(plugins={"http": PluginSettings(settings=settings)})
        async with make_service(("http", HttpChannel()), config=config) as service:
            with pytest.raises(TransientDeliveryError) as info:
                await service.send(Message("+1555", Text("first"), channel="http"))
            receipt = await service.send(Message("+1555", Text("second"), channel="http"))
    assert str(info.value) == "provider unavailable (channel=http, http_status=503)"
    assert receipt.provider_message_id == "p-2"
    assert payloads == [{"to": "+1555", "text": "first"}, {"to": "+1555", "text": "second"}]
