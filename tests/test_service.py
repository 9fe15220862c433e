"""OmniChannelService: routing, validation, the send pipeline, events, middleware, life cycle, config."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from omnichannel import (
    Certainty,
    Channel,
    ConfigError,
    DeliveryError,
    DeliveryFailed,
    DeliveryStatus,
    ErrorInfo,
    ListenerFailed,
    Media,
    MediaKind,
    Message,
    MessageSent,
    MessageValidationError,
    PermanentDeliveryError,
    PluginError,
    PluginSettings,
    Receipt,
    Secret,
    ServiceConfig,
    ServiceStarted,
    ServiceStateError,
    ServiceStopping,
    Template,
    TemplateButton,
    TemplateUsed,
    Text,
    TextParam,
    TransientDeliveryError,
    UnknownChannelError,
    hookimpl,
    setting,
)
from omnichannel.plugins import in_rollout
from omnichannel.testing import EventRecorder, FakeClock, HookRecorder, RecordingChannel, make_service

START = datetime(2026, 1, 1, tzinfo=UTC)


def text(recipient: str = "+15551234567", body: str = "hello", **kwargs) -> Message:
    return Message(recipient, Text(body), **kwargs)


# ---------------------------------------------------------------- small plugins used below


class Middleware:
    """A ``send`` wrapper that records the recipients it wrapped and counts its sender's calls."""

    def __init__(self) -> None:
        self.wrapped: list[str] = []
        self.calls = 0

    @hookimpl(wrapper=True)
    def send(self, message):
        inner = yield
        if inner is None:
            return None

        async def sender():
            self.calls += 1
            self.wrapped.append(message.recipient)
            return await inner()

        return sender


class OutermostCounter:
    """A tryfirst wrapper: outermost, it sees one logical send."""

    def __init__(self) -> None:
        self.calls = 0
        self.outcomes: list[bool] = []

    @hookimpl(wrapper=True, tryfirst=True)
    def send(self):
        inner = yield
        if inner is None:
            return None

        async def sender():
            self.calls += 1
            receipt = await inner()
            self.outcomes.append(receipt.ok)
            return receipt

        return sender


class Retry:
    """A default-slot wrapper retrying transient errors up to ``tries`` times."""

    def __init__(self, tries: int = 3) -> None:
        self.tries = tries
        self.calls = 0

    @hookimpl(wrapper=True)
    def send(self):
        inner = yield
        if inner is None:
            return None

        async def sender():
            for attempt in range(1, self.tries + 1):
                self.calls += 1
                try:
                    return await inner()
                except TransientDeliveryError:
                    if attempt == self.tries:
                        raise
            raise AssertionError("unreachable")

        return sender


class ConcurrencyGate:
    """A wrapper that holds every sender until ``opened`` and tracks how many are in flight."""

    def __init__(self, full_at: int) -> None:
        self.full_at = full_at
        self.in_flight = 0
        self.max_in_flight = 0
        self.full = asyncio.Event()
        self.opened = asyncio.Event()

    @hookimpl(wrapper=True)
    def send(self):
        inner = yield
        if inner is None:
            return None

        async def sender():
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.in_flight >= self.full_at:
                self.full.set()
            try:
                await self.opened.wait()
                return await inner()
            finally:
                self.in_flight -= 1

        return sender


class Lifecycle:
    """Records its startup and shutdown calls in a shared log."""

    def __init__(self, name: str, log: list[str], fail_startup: Exception | None = None) -> None:
        self.name = name
        self.log = log
        self.fail_startup = fail_startup

    @hookimpl
    async def startup(self, service):
        # not awaiting this coroutine would leave the log empty (and warn)
        if self.fail_startup is not None:
            raise self.fail_startup
        self.log.append(f"startup {self.name} http_open={not service.http.closed}")

    @hookimpl
    async def shutdown(self, service):
        self.log.append(f"shutdown {self.name} http_open={not service.http.closed}")


# ---------------------------------------------------------------- the happy path


async def test_send_returns_a_receipt_with_every_field(service, recording_channel, fake_clock):
    recording_channel.hold()
    message = text(channel="recording")
    task = asyncio.create_task(service.send(message))
    await recording_channel.entered.wait()
    fake_clock.advance(2.5)
    recording_channel.release()
    receipt = await task

    assert receipt == Receipt(
        message_id=message.id,
        channel="recording",
        status=DeliveryStatus.ACCEPTED,
        provider_message_id="rec-1",
        attempts=1,
        started_at=START,
        finished_at=START + timedelta(seconds=2.5),
    )
    assert receipt.ok
    assert receipt.duration_s == 2.5
    [payload] = recording_channel.payloads
    assert (payload.message_id, payload.recipient, payload.content) == (
        message.id,
        "+15551234567",
        Text("hello"),
    )


async def test_send_emits_message_sent(service, event_recorder):
    message = text(channel="recording")
    receipt = await service.send(message)

    assert event_recorder.types() == ["ServiceStarted", "MessageSent"]
    [sent] = event_recorder.of_type(MessageSent)
    assert sent.message is message
    assert sent.receipt == receipt
    assert sent.occurred_at == receipt.finished_at == START


async def test_send_template_emits_message_sent_then_template_used(service, event_recorder):
    template = Template("order_shipped", language="en_GB", body=["Ann", "42"])
    message = Message("+15551234567", template, channel="recording")
    receipt = await service.send(message)

    assert event_recorder.types() == ["ServiceStarted", "MessageSent", "TemplateUsed"]
    [used] = event_recorder.of_type(TemplateUsed)
    assert (used.message, used.channel, used.template) == (message, "recording", template)
    assert receipt.provider_message_id == "rec-1"


async def test_send_strips_the_recipient_and_keeps_the_message_id(service, recording_channel):
    message = Message("  +15551234567 \n", Text("hi"), channel="recording", id="my-id")
    receipt = await service.send(message)
    assert receipt.message_id == "my-id"
    assert recording_channel.payloads[0].recipient == "+15551234567"


# ---------------------------------------------------------------- routing


async def test_message_channel_picks_the_channel():
    sms, chat = RecordingChannel("sms"), RecordingChannel("chat")
    async with make_service(("sms", sms), ("chat", chat)) as service:
        receipt = await service.send(text(channel="chat"))
    assert receipt.channel == "chat"
    assert len(chat.payloads) == 1
    assert sms.payloads == []
    assert sms.attempts == 0


async def test_route_fails_over_to_the_next_channel():
    primary, backup = RecordingChannel("primary"), RecordingChannel("backup")
    primary.fail_next(1, PermanentDeliveryError("recipient has no account", code=131026))
    events = EventRecorder()
    async with make_service(("primary", primary), ("backup", backup), events) as service:
        message = text(route=["primary", "backup"])
        receipt = await service.send(message)

    assert receipt.ok
    assert receipt.channel == "backup"
    assert receipt.attempts == 1
    assert primary.attempts == 1
    assert primary.payloads == []
    assert len(backup.payloads) == 1
    assert events.types() == ["ServiceStarted", "DeliveryFailed", "MessageSent", "ServiceStopping"]
    [failed] = events.of_type(DeliveryFailed)
    assert failed.message is message
    assert failed.receipt.channel == "primary"
    assert failed.receipt.status is DeliveryStatus.FAILED
    assert failed.receipt.attempts == 1
    assert failed.receipt.error == ErrorInfo(
        kind="PermanentDeliveryError",
        detail="recipient has no account",
        code=131026,
        certainty=Certainty.REJECTED,
    )
    [sent] = events.of_type(MessageSent)
    assert sent.receipt == receipt


async def test_route_raises_the_last_delivery_error_when_every_channel_fails():
    primary, backup = RecordingChannel("primary"), RecordingChannel("backup")
    primary.fail_next(1, PermanentDeliveryError("first failed"))
    backup.fail_next(1, TransientDeliveryError("second failed"))
    events = EventRecorder()
    async with make_service(("primary", primary), ("backup", backup), events) as service:
        message = text(route=["primary", "backup"])
        with pytest.raises(TransientDeliveryError) as info:
            await service.send(message)

    assert str(info.value) == "second failed (channel=backup)"
    assert info.value.message_id == message.id
    assert info.value.receipt.channel == "backup"
    assert [e.receipt.channel for e in events.of_type(DeliveryFailed)] == ["primary", "backup"]
    assert not events.of_type(MessageSent)


async def test_route_skips_an_unknown_channel():
    backup = RecordingChannel("backup")
    async with make_service(("backup", backup)) as service:
        receipt = await service.send(text(route=["gone", "backup"]))
    assert receipt.channel == "backup"


async def test_default_route_is_used_when_the_message_names_no_channel():
    primary, backup = RecordingChannel("primary"), RecordingChannel("backup")
    primary.fail_next(1, TransientDeliveryError("primary is down"))
    config = ServiceConfig(default_route=("primary", "backup"))
    async with make_service(("primary", primary), ("backup", backup), config=config) as service:
        receipt = await service.send(text())
    assert receipt.channel == "backup"
    assert primary.attempts == 1


async def test_message_route_wins_over_the_default_route():
    primary, backup = RecordingChannel("primary"), RecordingChannel("backup")
    config = ServiceConfig(default_route=("primary",))
    async with make_service(("primary", primary), ("backup", backup), config=config) as service:
        receipt = await service.send(text(route=["backup"]))
    assert receipt.channel == "backup"
    assert primary.attempts == 0


async def test_no_channel_no_route_and_no_default_route_is_a_validation_error(service, event_recorder):
    message = text()
    with pytest.raises(MessageValidationError) as info:
        await service.send(message)

    assert str(info.value) == (
        "message is invalid:\n"
        "  - channel: the message names no channel or route and no default_route is configured"
    )
    assert info.value.problems == [
        "channel: the message names no channel or route and no default_route is configured"
    ]
    assert info.value.message_id == message.id
    [failed] = event_recorder.of_type(DeliveryFailed)
    assert failed.receipt.error.kind == "MessageValidationError"


async def test_unknown_channel_lists_the_available_ones(recording_channel):
    events = EventRecorder()
    async with make_service(recording_channel, ("chat", RecordingChannel("chat")), events) as service:
        message = text(channel="telegram")
        with pytest.raises(UnknownChannelError) as info:
            await service.send(message)

    assert str(info.value) == "no enabled plugin provides channel 'telegram' (available: chat, recording)"
    assert info.value.channel == "telegram"
    assert info.value.available == ["chat", "recording"]
    [failed] = events.of_type(DeliveryFailed)
    assert failed.receipt.channel == "telegram"
    assert failed.receipt.error.kind == "UnknownChannelError"
    assert recording_channel.attempts == 0


async def test_unknown_channel_with_no_channels_at_all():
    async with make_service() as service:
        with pytest.raises(UnknownChannelError) as info:
            await service.send(text(channel="sms"))
    assert str(info.value) == "no enabled plugin provides channel 'sms'"


# ---------------------------------------------------------------- validation


class Strict:
    """A validator plugin that adds one problem of its own."""

    @hookimpl
    def validate(self, message):
        if not message.recipient.startswith("+"):
            return [f"recipient: must be in E.164 format, got {message.recipient!r}"]
        return None


async def test_hook_validate_every_problem_is_reported_at_once(recording_channel):
    events = EventRecorder()
    async with make_service(recording_channel, ("strict", Strict()), events) as service:
        message = Message("", Text("   "), channel="recording", route=["recording", "other"])
        with pytest.raises(MessageValidationError) as info:
            await service.send(message)

    assert info.value.problems == [
        "recipient: must not be empty",
        "route: give either channel or route, not both",
        "content.body: must not be empty",
        "recipient: must be in E.164 format, got ''",
    ]
    assert str(info.value) == (
        "message is invalid:\n"
        "  - recipient: must not be empty\n"
        "  - route: give either channel or route, not both\n"
        "  - content.body: must not be empty\n"
        "  - recipient: must be in E.164 format, got ''"
    )
    assert recording_channel.attempts == 0
    assert recording_channel.payloads == []
    assert len(events.of_type(DeliveryFailed)) == 1


async def test_hook_validate_template_problems(service):
    template = Template(
        " ",
        language="",
        body=[TextParam("Ann", name="first_name"), "42"],
        buttons=[TemplateButton("url", -1, "a"), TemplateButton("quick_reply", -1, "b")],
    )
    with pytest.raises(MessageValidationError) as info:
        await service.send(Message("+1555", template, channel="recording"))
    assert info.value.problems == [
        "content.name: template name must not be empty",
        "content.language: must not be empty",
        "content.body: parameters must be all named or all positional, not a mix",
        "content.buttons[0].index: must be >= 0, got -1",
        "content.buttons[1].index: must be >= 0, got -1",
        "content.buttons[1].index: button -1 is given twice",
    ]


async def test_hook_validate_template_parameter_names_must_be_unique(service):
    template = Template(
        "t", body=[TextParam("a", name="x"), TextParam("b", name="x"), TextParam("c", name="y")]
    )
    with pytest.raises(MessageValidationError) as info:
        await service.send(Message("+1555", template, channel="recording"))
    assert info.value.problems == ["content.body: parameter names must be unique, repeated: x"]


async def test_hook_validate_media_needs_exactly_one_source(service):
    both = Media(MediaKind.IMAGE, url="https://example.com/a.png", media_id="123")
    with pytest.raises(MessageValidationError) as info:
        await service.send(Message("+1555", both, channel="recording"))
    assert info.value.problems == ["content: give exactly one of url or media_id"]


async def test_hook_validate_rejects_content_the_channel_cannot_carry():
    sms = RecordingChannel("sms", capabilities=("text",))
    async with make_service(("sms", sms)) as service:
        assert await service.send(text(channel="sms"))
        with pytest.raises(MessageValidationError) as info:
            await service.send(Message("+1555", Template("welcome"), channel="sms"))
    assert info.value.problems == ["content: channel 'sms' cannot send template messages (it supports: text)"]
    assert len(sms.payloads) == 1


async def test_hook_validate_problems_are_prefixed_by_channel_on_a_route():
    sms = RecordingChannel("sms", capabilities=("text",))
    email = RecordingChannel("email", capabilities=("text", "media"))
    async with make_service(("sms", sms), ("email", email)) as service:
        with pytest.raises(MessageValidationError) as info:
            await service.send(Message("+1555", Template("welcome"), route=["sms", "email"]))
    assert info.value.problems == [
        "[sms] content: channel 'sms' cannot send template messages (it supports: text)",
        "[email] content: channel 'email' cannot send template messages (it supports: media, text)",
    ]


class OwnValidator(RecordingChannel):
    """A channel plugin with its own validate hook."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.validated: list[str] = []

    @hookimpl
    def validate(self, channel):
        self.validated.append(channel)
        return ["content: not on my channel"]


async def test_hook_validate_a_channel_plugin_is_only_asked_about_its_own_channel(recording_channel):
    picky = OwnValidator("picky")
    async with make_service(recording_channel, ("picky", picky)) as service:
        await service.send(text(channel="recording"))
        with pytest.raises(MessageValidationError) as info:
            await service.send(text(channel="picky"))
    assert picky.validated == ["picky"]
    assert info.value.problems == ["content: not on my channel"]


# ---------------------------------------------------------------- channel ownership


def test_hook_register_channels_declares_channels_and_owners(recording_channel):
    service = make_service(
        ("rec", recording_channel), ("sms", RecordingChannel("sms", capabilities=["text"]))
    )
    assert sorted(service.channels) == ["recording", "sms"]
    assert service.channel_info("sms") == Channel("sms", {"text"}, "records messages in memory (tests)")
    assert service.channel_owner("recording") == "rec"
    assert service.channel_owner("sms") == "sms"
    assert service.channel_info("nope") is None
    assert service.channel_owner("nope") is None


def test_hook_register_channels_must_return_channel_objects():
    class Sloppy:
        @hookimpl
        def register_channels(self):
            return ["sms"]

    with pytest.raises(PluginError) as info:
        make_service(("sloppy", Sloppy()))
    assert str(info.value) == "plugin 'sloppy': register_channels must return Channel objects, got 'sms'"
    assert info.value.plugin_name == "sloppy"


def test_hook_register_channels_that_raises_names_the_plugin():
    class Broken:
        @hookimpl
        def register_channels(self):
            raise RuntimeError("no config")

    with pytest.raises(PluginError) as info:
        make_service(("broken", Broken()))
    assert str(info.value) == "plugin 'broken': register_channels failed: RuntimeError('no config')"


def test_two_plugins_claiming_one_channel_is_a_plugin_error():
    with pytest.raises(PluginError) as info:
        make_service(("twilio", RecordingChannel("sms")), ("vonage", RecordingChannel("sms")))
    assert str(info.value) == (
        "plugin 'vonage, twilio': channel 'sms' is provided by several plugins; "
        'pick one in the configuration: [channels] sms = "vonage"'
    )


async def test_configuration_picks_the_owner_of_a_contested_channel():
    twilio, vonage = RecordingChannel("sms"), RecordingChannel("sms")
    config = ServiceConfig(channels={"sms": "twilio"})
    async with make_service(("twilio", twilio), ("vonage", vonage), config=config) as service:
        assert service.channel_owner("sms") == "twilio"
        with HookRecorder(service.plugin_manager) as hooks:
            receipt = await service.send(text(channel="sms"))

    assert receipt.ok
    assert len(twilio.payloads) == 1
    # The plugin that was not picked is never asked about the channel.
    assert vonage.attempts == 0
    assert vonage.payloads == []
    for name in ("validate", "build", "send"):
        [call] = hooks.calls_of(name)
        assert "vonage" not in call.plugins, name


def test_configuration_picking_a_plugin_that_does_not_provide_the_channel():
    config = ServiceConfig(channels={"sms": "nexmo"})
    with pytest.raises(ConfigError) as info:
        make_service(("twilio", RecordingChannel("sms")), config=config)
    assert info.value.errors == [
        "channels.sms: plugin 'nexmo' does not provide channel 'sms' (provided by: twilio)"
    ]


# ---------------------------------------------------------------- build and send hooks


async def test_hook_build_only_the_owner_and_channel_less_plugins_are_asked(recording_channel):
    other = RecordingChannel("other")
    async with make_service(("rec", recording_channel), ("other", other), ("mw", Middleware())) as service:
        with HookRecorder(service.plugin_manager) as hooks:
            await service.send(text(channel="recording"))
    [build] = hooks.calls_of("build")
    assert "rec" in build.plugins
    assert "other" not in build.plugins
    assert build.kwargs["channel"] == "recording"
    [send] = hooks.calls_of("send")
    assert "mw" in send.plugins
    assert "other" not in send.plugins
    assert other.attempts == 0


async def test_hook_build_returning_nothing_is_a_plugin_error():
    class Lazy(RecordingChannel):
        @hookimpl
        def build(self):
            return None

    events = EventRecorder()
    async with make_service(("lazy", Lazy("lazy")), events) as service:
        with pytest.raises(PluginError) as info:
            await service.send(text(channel="lazy"))
    assert str(info.value) == "plugin 'lazy': build returned nothing for channel 'lazy'"
    [failed] = events.of_type(DeliveryFailed)
    assert failed.receipt.error.kind == "PluginError"


async def test_hook_build_raising_an_untyped_error_is_a_plugin_error_naming_the_plugin():
    class Buggy(RecordingChannel):
        @hookimpl
        def build(self, message):
            return message.metadata["missing"]

    events = EventRecorder()
    async with make_service(("buggy", Buggy("buggy")), events) as service:
        message = text(channel="buggy")
        with pytest.raises(PluginError) as info:
            await service.send(message)
    assert str(info.value) == "plugin 'buggy': its build hook raised KeyError('missing')"
    assert isinstance(info.value.__cause__, KeyError)
    [failed] = events.of_type(DeliveryFailed)
    assert failed.message is message
    assert failed.receipt.channel == "buggy"
    assert failed.receipt.error.kind == "PluginError"


async def test_hook_validate_raising_an_untyped_error_names_the_plugin(recording_channel):
    class Crashing:
        @hookimpl
        def validate(self, message):
            return [problem for problem in message.metadata["rules"]]

    events = EventRecorder()
    async with make_service(recording_channel, ("crashing", Crashing()), events) as service:
        with pytest.raises(PluginError) as info:
            await service.send(text(channel="recording"))
        # send_many reports it in the receipt and goes on
        [receipt] = await service.send_many([text(channel="recording")])
    assert str(info.value) == "plugin 'crashing': its validate hook raised KeyError('rules')"
    assert receipt.error == ErrorInfo(kind="PluginError", detail=str(info.value))
    assert recording_channel.attempts == 0
    assert len(events.of_type(DeliveryFailed)) == 2


async def test_hook_send_sender_must_return_a_receipt():
    class Confused(RecordingChannel):
        @hookimpl
        def send(self):
            async def sender():
                return "sent!"

            return sender

    async with make_service(("confused", Confused("confused"))) as service:
        with pytest.raises(PluginError) as info:
            await service.send(text(channel="confused"))
    assert str(info.value) == "plugin 'confused': the sender returned 'sent!', not a Receipt"


async def test_hook_send_a_failed_receipt_becomes_a_delivery_error():
    class Refusing(RecordingChannel):
        @hookimpl
        def send(self, message, channel):
            async def sender():
                error = ErrorInfo("Refused", "the provider said no")
                return Receipt(message.id, channel, DeliveryStatus.FAILED, error=error)

            return sender

    events = EventRecorder()
    async with make_service(("refusing", Refusing("refusing")), events) as service:
        with pytest.raises(DeliveryError) as info:
            await service.send(text(channel="refusing"))
    assert str(info.value) == "the provider said no (channel=refusing)"
    [failed] = events.of_type(DeliveryFailed)
    assert failed.receipt.attempts == 1


async def test_hook_send_untranslated_exception_becomes_a_delivery_error(
    service, recording_channel, event_recorder
):
    recording_channel.fail_next(1, RuntimeError("socket exploded"))
    message = text(channel="recording")
    with pytest.raises(DeliveryError) as info:
        await service.send(message)

    error = info.value
    assert type(error) is DeliveryError
    assert error.detail == "unexpected error from channel 'recording': RuntimeError('socket exploded')"
    assert (
        str(error)
        == "unexpected error from channel 'recording': RuntimeError('socket exploded') (channel=recording)"
    )
    assert error.certainty is Certainty.UNKNOWN
    assert error.message_id == message.id
    assert isinstance(error.__cause__, RuntimeError)
    [failed] = event_recorder.of_type(DeliveryFailed)
    assert failed.receipt.error == ErrorInfo(
        kind="DeliveryError", detail=error.detail, certainty=Certainty.UNKNOWN
    )
    assert failed.receipt.attempts == 1


# ---------------------------------------------------------------- middleware


async def test_hook_send_middleware_order_outermost_sees_one_send_inner_sees_each_attempt(recording_channel):
    outer, retry = OutermostCounter(), Retry(tries=3)
    recording_channel.fail_next(2, TransientDeliveryError("provider is down"))
    # Registered first, outer would be innermost by LIFO; tryfirst makes it outermost.
    async with make_service(("outer", outer), ("retry", retry), recording_channel) as service:
        receipt = await service.send(text(channel="recording"))

    assert receipt.ok
    assert receipt.attempts == 3
    assert outer.calls == 1
    assert outer.outcomes == [True]
    assert retry.calls == 3
    assert recording_channel.attempts == 3
    assert len(recording_channel.payloads) == 1


async def test_hook_send_middleware_giving_up_reports_every_attempt(recording_channel):
    retry = Retry(tries=2)
    recording_channel.fail_next(2, TransientDeliveryError("provider is down"))
    events = EventRecorder()
    async with make_service(("retry", retry), recording_channel, events) as service:
        with pytest.raises(TransientDeliveryError):
            await service.send(text(channel="recording"))
    [failed] = events.of_type(DeliveryFailed)
    assert failed.receipt.attempts == 2
    assert failed.receipt.error.retryable is True


@pytest.mark.parametrize("percent", [0, 100])
async def test_rollout_edges(recording_channel, percent):
    middleware = Middleware()
    config = ServiceConfig(plugins={"mw": PluginSettings(rollout=percent)})
    recipients = [f"+1555{i:07d}" for i in range(50)]
    async with make_service(("mw", middleware), recording_channel, config=config) as service:
        receipts = await service.send_many(text(r, channel="recording") for r in recipients)

    assert all(r.ok for r in receipts)
    assert len(recording_channel.payloads) == 50
    assert middleware.wrapped == (recipients if percent == 100 else [])


async def test_rollout_half_wraps_a_stable_subset_of_recipients(recording_channel):
    middleware = Middleware()
    config = ServiceConfig(plugins={"mw": PluginSettings(rollout=50)})
    recipients = [f"+4470{i:08d}" for i in range(1000)]
    expected = [r for r in recipients if in_rollout(50, "mw", r)]
    async with make_service(("mw", middleware), recording_channel, config=config) as service:
        first = await service.send_many(text(r, channel="recording") for r in recipients)
        wrapped_first = list(middleware.wrapped)
        middleware.wrapped.clear()
        second = await service.send_many(text(r, channel="recording") for r in recipients)

    assert all(r.ok for r in first + second)
    assert len(recording_channel.payloads) == 2000
    assert sorted(wrapped_first) == sorted(expected)
    assert sorted(middleware.wrapped) == sorted(expected)  # the same recipients, every time
    assert 400 <= len(expected) <= 600


async def test_rollout_of_one_plugin_does_not_affect_another(recording_channel):
    partial, full = Middleware(), Middleware()
    config = ServiceConfig(plugins={"partial": PluginSettings(rollout=30)})
    recipients = [f"+33{i:09d}" for i in range(200)]
    async with make_service(
        ("partial", partial), ("full", full), recording_channel, config=config
    ) as service:
        await service.send_many(text(r, channel="recording") for r in recipients)
    assert sorted(full.wrapped) == sorted(recipients)
    assert sorted(partial.wrapped) == sorted(r for r in recipients if in_rollout(30, "partial", r))


async def test_rollout_of_a_channel_plugin_makes_its_channel_unavailable_to_the_others():
    beta, stable = RecordingChannel("beta"), RecordingChannel("stable")
    config = ServiceConfig(plugins={"beta": PluginSettings(rollout=50)})
    candidates = [f"+4915{i:08d}" for i in range(100)]
    inside = next(r for r in candidates if in_rollout(50, "beta", r))
    outside = next(r for r in candidates if not in_rollout(50, "beta", r))
    async with make_service(("beta", beta), ("stable", stable), config=config) as service:
        assert (await service.send(text(inside, channel="beta"))).channel == "beta"
        with pytest.raises(UnknownChannelError) as info:
            await service.send(text(outside, channel="beta"))
        fallback = await service.send(text(outside, route=["beta", "stable"]))
    assert str(info.value) == (
        "channel 'beta' is not available: plugin 'beta' is rolled out to 50 % of recipients, not this one"
    )
    assert fallback.channel == "stable"
    assert [p.recipient for p in beta.payloads] == [inside]


# ---------------------------------------------------------------- listeners


class FailingListener:
    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous

    @hookimpl
    def on_event(self, event):
        if not isinstance(event, MessageSent):
            return None
        if self.asynchronous:

            async def fail():
                raise RuntimeError("listener bug")

            return fail()
        raise RuntimeError("listener bug")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_hook_on_event_a_failing_listener_never_fails_a_send(recording_channel, asynchronous):
    before, after = EventRecorder(), EventRecorder()
    plugins = (
        ("before", before),
        ("flaky", FailingListener(asynchronous)),
        ("after", after),
        recording_channel,
    )
    async with make_service(*plugins) as service:
        receipt = await service.send(text(channel="recording"))
        stats = service.event_stats

    assert receipt.ok
    assert stats.listener_failures == Counter({"flaky": 1})
    assert stats.dispatched["MessageSent"] == 1
    assert stats.dispatched["ListenerFailed"] == 1
    for recorder in (before, after):
        [sent] = recorder.of_type(MessageSent)
        assert sent.receipt == receipt
        [failure] = recorder.of_type(ListenerFailed)
        assert failure.event_type == "MessageSent"
        assert failure.plugin_name == "flaky"
        assert failure.error == ErrorInfo(kind="RuntimeError", detail="listener bug")
        # every listener sees the event before anyone hears of the failure
        assert recorder.types().index("MessageSent") < recorder.types().index("ListenerFailed")


async def test_hook_on_event_async_listeners_are_awaited(recording_channel):
    seen: list[str] = []

    class AsyncListener:
        @hookimpl
        async def on_event(self, event, service):
            seen.append(f"{type(event).__name__} started={service.started}")

    async with make_service(AsyncListener(), recording_channel) as service:
        await service.send(text(channel="recording"))
    assert seen == ["ServiceStarted started=True", "MessageSent started=True", "ServiceStopping started=True"]


async def test_hook_on_event_listeners_get_the_arguments_they_name_in_any_order(recording_channel):
    seen: list[tuple[str, ...]] = []

    class ServiceFirst:
        @hookimpl
        def on_event(self, service, event):
            seen.append(("service, event", type(service).__name__, type(event).__name__))

    class EventOnly:
        @hookimpl
        def on_event(self, event):
            seen.append(("event", type(event).__name__))

    class ServiceOnly:
        @hookimpl
        def on_event(self, service):
            seen.append(("service", type(service).__name__))

    async with make_service(ServiceFirst(), EventOnly(), ServiceOnly(), recording_channel) as service:
        seen.clear()
        await service.send(text(channel="recording"))
    assert sorted(seen[:3]) == [
        ("event", "MessageSent"),
        ("service", "OmniChannelService"),
        ("service, event", "OmniChannelService", "MessageSent"),
    ]


async def test_hook_on_event_a_listener_failing_on_listener_failed_does_not_loop(recording_channel):
    class AlwaysFails:
        @hookimpl
        def on_event(self, event):
            raise ValueError(type(event).__name__)

    recorder = EventRecorder()
    async with make_service(("bad", AlwaysFails()), recorder, recording_channel) as service:
        receipt = await service.send(text(channel="recording"))
        # ServiceStarted and MessageSent fail, and so does each of their ListenerFailed: four, then it stops.
        assert service.event_stats.listener_failures == Counter({"bad": 4})
        assert [e.event_type for e in recorder.of_type(ListenerFailed)] == ["ServiceStarted", "MessageSent"]
    assert receipt.ok


# ---------------------------------------------------------------- cancellation


async def test_cancelled_send_propagates_and_reports_an_unknown_outcome(
    service, recording_channel, event_recorder
):
    recording_channel.hold()
    message = text(channel="recording")
    task = asyncio.create_task(service.send(message))
    await recording_channel.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert task.cancelled()
    assert recording_channel.payloads == []
    [failed] = event_recorder.of_type(DeliveryFailed)
    assert failed.message is message
    assert failed.receipt.channel == "recording"
    assert failed.receipt.status is DeliveryStatus.FAILED
    assert failed.receipt.error.certainty is Certainty.UNKNOWN
    assert failed.receipt.error.detail == "the send was cancelled"
    assert not event_recorder.of_type(MessageSent)


async def test_cancelled_send_receipt_counts_the_attempt_in_flight(
    service, recording_channel, event_recorder
):
    recording_channel.hold()
    task = asyncio.create_task(service.send(text(channel="recording")))
    await recording_channel.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [failed] = event_recorder.of_type(DeliveryFailed)
    assert failed.receipt.attempts == 1


async def test_cancelled_before_the_channel_was_called_is_not_sent(recording_channel):
    gate = ConcurrencyGate(full_at=1)  # holds the send in middleware, before the channel is called
    events = EventRecorder()
    async with make_service(("gate", gate), recording_channel, events) as service:
        task = asyncio.create_task(service.send(text(channel="recording")))
        await gate.full.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert recording_channel.attempts == 0
    [failed] = events.of_type(DeliveryFailed)
    assert failed.receipt.error.certainty is Certainty.NOT_SENT
    assert failed.receipt.attempts == 0


# ---------------------------------------------------------------- send_many


async def test_send_many_returns_receipts_in_input_order(service, recording_channel):
    messages = [text(f"+1555000{i:04d}", channel="recording") for i in range(12)]
    receipts = await service.send_many(messages, concurrency=4)
    assert [r.message_id for r in receipts] == [m.id for m in messages]
    assert all(r.ok for r in receipts)
    assert sorted(p.message_id for p in recording_channel.payloads) == sorted(m.id for m in messages)


async def test_send_many_respects_the_concurrency_bound(recording_channel):
    gate = ConcurrencyGate(full_at=3)
    async with make_service(("gate", gate), recording_channel) as service:
        messages = [text(f"+1555{i:07d}", channel="recording") for i in range(10)]
        task = asyncio.create_task(service.send_many(messages, concurrency=3))
        await gate.full.wait()
        assert gate.in_flight == 3
        assert recording_channel.attempts == 0
        gate.opened.set()
        receipts = await task
    assert gate.max_in_flight == 3
    assert [r.message_id for r in receipts] == [m.id for m in messages]
    assert len(recording_channel.payloads) == 10


async def test_send_many_defaults_to_the_configured_concurrency(recording_channel):
    gate = ConcurrencyGate(full_at=2)
    config = ServiceConfig(send_concurrency=2)
    async with make_service(("gate", gate), recording_channel, config=config) as service:
        task = asyncio.create_task(service.send_many(text(f"+1{i}", channel="recording") for i in range(6)))
        await gate.full.wait()
        gate.opened.set()
        receipts = await task
    assert gate.max_in_flight == 2
    assert len(receipts) == 6


async def test_send_many_one_failure_does_not_abort_the_others(service, recording_channel, event_recorder):
    recording_channel.script(None, PermanentDeliveryError("recipient blocked us", code=131031), None)
    messages = [
        text("+1", channel="recording"),
        text("+2", channel="nope"),
        Message("+3", Text(""), channel="recording"),
        text("+4", channel="recording"),
        text("+5", channel="recording"),
    ]
    receipts = await service.send_many(messages, concurrency=1)

    assert [r.message_id for r in receipts] == [m.id for m in messages]
    assert [r.status for r in receipts] == [
        DeliveryStatus.ACCEPTED,
        DeliveryStatus.FAILED,
        DeliveryStatus.FAILED,
        DeliveryStatus.FAILED,
        DeliveryStatus.ACCEPTED,
    ]
    assert receipts[0].error is None
    assert receipts[1].error == ErrorInfo(
        kind="UnknownChannelError", detail="no enabled plugin provides channel 'nope' (available: recording)"
    )
    assert receipts[1].channel == "nope"
    assert receipts[2].error == ErrorInfo(
        kind="MessageValidationError", detail="message is invalid:\n  - content.body: must not be empty"
    )
    assert receipts[3].error == ErrorInfo(
        kind="PermanentDeliveryError",
        detail="recipient blocked us",
        code=131031,
        certainty=Certainty.REJECTED,
    )
    assert receipts[3].attempts == 1
    assert [p.recipient for p in recording_channel.payloads] == ["+1", "+5"]
    assert len(event_recorder.of_type(DeliveryFailed)) == 3
    assert len(event_recorder.of_type(MessageSent)) == 2


async def test_send_many_captures_untranslated_channel_errors(service, recording_channel):
    recording_channel.script(RuntimeError("boom"))
    receipts = await service.send_many([text("+1", channel="recording"), text("+2", channel="recording")])
    assert receipts[0].error == ErrorInfo(
        kind="DeliveryError",
        detail="unexpected error from channel 'recording': RuntimeError('boom')",
        certainty=Certainty.UNKNOWN,
    )
    assert receipts[1].ok


async def test_send_many_of_nothing(service):
    assert await service.send_many([]) == []


@pytest.mark.parametrize("concurrency", [0, -1])
async def test_send_many_rejects_a_concurrency_below_one(service, concurrency):
    with pytest.raises(ValueError, match=rf"^concurrency must be >= 1, got {concurrency}$"):
        await service.send_many([text(channel="recording")], concurrency=concurrency)


# ---------------------------------------------------------------- life cycle


async def test_send_before_start_is_a_service_state_error(recording_channel):
    service = make_service(recording_channel)
    with pytest.raises(ServiceStateError) as info:
        await service.send(text(channel="recording"))
    assert str(info.value) == (
        "the service is not started: use 'async with OmniChannelService(...)' or 'await service.start()'"
    )
    assert recording_channel.attempts == 0
    with pytest.raises(ServiceStateError):
        _ = service.http


async def test_send_after_stop_is_a_service_state_error(recording_channel):
    async with make_service(recording_channel) as service:
        pass
    assert not service.started
    with pytest.raises(ServiceStateError):
        await service.send(text(channel="recording"))
    with pytest.raises(ServiceStateError) as info:
        await service.start()
    assert str(info.value) == "a stopped service cannot be started again; create a new one"


async def test_start_and_stop_are_idempotent_and_emit_life_cycle_events(fake_clock):
    events = EventRecorder()
    service = make_service(events, clock=fake_clock)
    await service.stop()  # not started: nothing to do
    await service.start()
    await service.start()
    assert service.started
    http = service.http
    await service.stop()
    await service.stop()
    assert http.closed
    assert not service.started
    assert events.types() == ["ServiceStarted", "ServiceStopping"]
    assert events.of_type(ServiceStarted)[0].occurred_at == START
    assert events.of_type(ServiceStopping)[0].occurred_at == START


async def test_hook_startup_is_awaited_with_the_http_session_open():
    log: list[str] = []
    service = make_service(("a", Lifecycle("a", log)))
    await service.start()
    try:
        assert log == ["startup a http_open=True"]
    finally:
        await service.stop()
    assert log == ["startup a http_open=True", "shutdown a http_open=True"]


class EarlyLifecycle(Lifecycle):
    @hookimpl(tryfirst=True)
    async def startup(self, service):
        self.log.append(f"startup {self.name} http_open={not service.http.closed}")


async def test_hook_startup_runs_in_hook_call_order():
    log: list[str] = []
    plugins = [
        ("early", EarlyLifecycle("early", log)),
        ("a", Lifecycle("a", log)),
        ("b", Lifecycle("b", log)),
        ("c", Lifecycle("c", log)),
    ]
    async with make_service(*plugins):
        pass
    # tryfirst implementations first, then the most recently registered plugin first
    assert [line.split()[1] for line in log if line.startswith("startup")] == ["early", "c", "b", "a"]


async def test_hook_shutdown_runs_in_reverse_order_of_startup():
    log: list[str] = []
    async with make_service(
        ("a", Lifecycle("a", log)), ("b", Lifecycle("b", log)), ("c", Lifecycle("c", log))
    ):
        pass
    started = [line.split()[1] for line in log if line.startswith("startup")]
    stopped = [line.split()[1] for line in log if line.startswith("shutdown")]
    assert sorted(started) == ["a", "b", "c"]
    assert stopped == started[::-1]
    assert all(line.endswith("http_open=True") for line in log)


async def test_hook_shutdown_failure_does_not_stop_the_others():
    log: list[str] = []

    class BadShutdown:
        @hookimpl
        def shutdown(self):
            raise RuntimeError("cannot close")

    service = make_service(("a", Lifecycle("a", log)), ("bad", BadShutdown()), ("c", Lifecycle("c", log)))
    await service.start()
    http = service.http
    await service.stop()
    assert sorted(line for line in log if line.startswith("shutdown")) == [
        "shutdown a http_open=True",
        "shutdown c http_open=True",
    ]
    assert http.closed


async def test_hook_startup_failure_names_the_plugin_and_shuts_down_the_started_ones():
    log: list[str] = []
    plugins = [
        ("a", Lifecycle("a", log)),
        ("broken", Lifecycle("broken", log, fail_startup=ConnectionError("redis is down"))),
        ("c", Lifecycle("c", log)),
    ]
    events = EventRecorder()
    service = make_service(*plugins, events)
    with pytest.raises(PluginError) as info:
        await service.start()

    assert str(info.value) == "plugin 'broken': startup failed: ConnectionError('redis is down')"
    assert info.value.plugin_name == "broken"
    assert isinstance(info.value.__cause__, ConnectionError)
    # c started (it comes first in call order), broken failed, a never started
    assert log == ["startup c http_open=True", "shutdown c http_open=True"]
    assert not service.started
    assert "ServiceStarted" not in events.types()
    with pytest.raises(ServiceStateError):
        _ = service.http  # the HTTP session was closed again


# ---------------------------------------------------------------- plugin configuration


@attrs.frozen
class AcmeConfig:
    endpoint: str
    retries: int = 3
    api_key: Secret | None = None
    webhook_token: str | None = None
    legacy_region: str = setting(default="eu", env="ACME_REGION")


class Acme:
    @hookimpl
    def register_config(self):
        return AcmeConfig


def test_hook_register_config_structures_the_plugin_section():
    config = ServiceConfig(
        plugins={"acme": PluginSettings(settings={"endpoint": "https://acme.test", "api_key": "k-123"})}
    )
    service = make_service(("acme", Acme()), config=config, environ={"ACME_REGION": "us"})
    assert service.plugin_config(AcmeConfig) == AcmeConfig(
        endpoint="https://acme.test", retries=3, api_key=Secret("k-123"), legacy_region="us"
    )


def test_hook_register_config_errors_are_rooted_at_the_plugin_section():
    config = ServiceConfig(plugins={"acme": PluginSettings(settings={"retries": "three", "endpont": "x"})})
    with pytest.raises(ConfigError) as info:
        make_service(("acme", Acme()), config=config)
    assert info.value.errors == [
        "plugins.acme.endpoint: required field missing",
        "plugins.acme.retries: expected an integer, got str 'three'",
        "plugins.acme.endpont: unknown key (did you mean 'endpoint'?)",
    ]
    assert str(info.value).startswith(
        "invalid configuration:\n  - plugins.acme.endpoint: required field missing"
    )


def test_hook_register_config_must_return_an_attrs_class():
    class Wrong:
        @hookimpl
        def register_config(self):
            return dict

    with pytest.raises(PluginError) as info:
        make_service(("wrong", Wrong()))
    assert str(info.value) == "plugin 'wrong': register_config must return an attrs class, got <class 'dict'>"


def test_plugin_config_of_an_undeclared_class(recording_channel):
    service = make_service(recording_channel)
    with pytest.raises(PluginError) as info:
        service.plugin_config(AcmeConfig)
    assert str(info.value) == "plugin 'AcmeConfig': this class was not declared by register_config"


def test_settings_for_a_plugin_that_is_not_installed():
    config = ServiceConfig(plugins={"foo": PluginSettings(settings={"token": "x"})})
    with pytest.raises(ConfigError) as info:
        make_service(RecordingChannel(), config=config)
    assert info.value.errors == ["plugins.foo: no plugin named 'foo' is installed"]
    assert str(info.value) == "invalid configuration:\n  - plugins.foo: no plugin named 'foo' is installed"


def test_settings_for_a_plugin_without_a_config_class():
    config = ServiceConfig(plugins={"rec": PluginSettings(settings={"colour": "red", "size": 3})})
    with pytest.raises(ConfigError) as info:
        make_service(("rec", RecordingChannel()), config=config)
    assert info.value.errors == [
        "plugins.rec.colour: unknown key (plugin 'rec' takes no settings)",
        "plugins.rec.size: unknown key (plugin 'rec' takes no settings)",
    ]


def test_every_plugin_config_problem_is_reported_at_once():
    config = ServiceConfig(
        plugins={
            "foo": PluginSettings(settings={"x": 1}),
            "rec": PluginSettings(settings={"colour": "red"}),
            "acme": PluginSettings(settings={}),
        }
    )
    with pytest.raises(ConfigError) as info:
        make_service(("rec", RecordingChannel()), ("acme", Acme()), config=config)
    assert sorted(info.value.errors) == [
        "plugins.acme.endpoint: required field missing",
        "plugins.foo: no plugin named 'foo' is installed",
        "plugins.rec.colour: unknown key (plugin 'rec' takes no settings)",
    ]


def test_settings_of_a_disabled_plugin_are_not_checked():
    config = ServiceConfig(plugins={"acme": PluginSettings(enabled=False, settings={"bogus": 1})})
    service = make_service(("rec", RecordingChannel()), config=config)
    assert "acme" not in {info.name for info in service.plugins()}


def test_describe_config_redacts_secrets():
    config = ServiceConfig(
        plugins={
            "acme": PluginSettings(
                rollout=50,
                settings={"endpoint": "https://acme.test", "api_key": "k-123", "webhook_token": "wh-456"},
            ),
            "legacy": PluginSettings(enabled=False, settings={"password": "hunter2", "host": "db.local"}),
        }
    )
    service = make_service(("acme", Acme()), config=config)
    described = service.describe_config()

    assert described["plugins"]["acme"] == {
        "enabled": True,
        "rollout": 50.0,
        "endpoint": "https://acme.test",
        "retries": 3,
        "api_key": "**********",
        "webhook_token": "**********",
        "legacy_region": "eu",
    }
    assert described["plugins"]["legacy"] == {
        "enabled": False,
        "rollout": 100.0,
        "password": "**********",
        "host": "db.local",
    }
    assert described["send_concurrency"] == 10
    dumped = json.dumps(described)
    for secret in ("k-123", "wh-456", "hunter2"):
        assert secret not in dumped


def test_describe_config_redacts_secrets_in_nested_tables():
    config = ServiceConfig(
        plugins={
            "legacy": PluginSettings(enabled=False, settings={"auth": {"token": "t-789", "user": "ann"}})
        }
    )
    service = make_service(config=config)
    dumped = json.dumps(service.describe_config())
    assert "t-789" not in dumped
    assert "ann" in dumped


@attrs.frozen
class QuietConfig:
    level: str = "info"


class Quiet:
    @hookimpl
    def register_config(self):
        return QuietConfig


def test_describe_config_shows_the_defaults_of_a_plugin_without_a_section():
    described = make_service(("quiet", Quiet())).describe_config()
    assert described["plugins"] == {"quiet": {"enabled": True, "rollout": 100.0, "level": "info"}}
    assert described["default_route"] == []


# ---------------------------------------------------------------- introspection


def test_plugin_manager_is_exposed_for_introspection(recording_channel):
    service = make_service(("rec", recording_channel))
    assert service.plugin_manager.get_plugin("rec") is recording_channel
    assert service.plugin_manager.has_plugin("omnichannel._builtins")


def test_make_service_uses_a_fake_clock():
    assert isinstance(make_service().clock, FakeClock)


class _Veto:
    """A validator registered after the service was created."""

    @hookimpl
    def validate(self, message):
        return [f"recipient: {message.recipient} is on the deny list"]


async def test_hook_validate_of_a_plugin_registered_later_takes_part(recording_channel):
    async with make_service(recording_channel) as service:
        await service.send(Message("+15550001", Text("hi"), channel="recording"))
        service.plugin_manager.register(_Veto(), name="veto")
        with pytest.raises(MessageValidationError) as info:
            await service.send(Message("+15550002", Text("hi"), channel="recording"))
        assert info.value.problems == ["recipient: +15550002 is on the deny list"]
        service.plugin_manager.unregister(name="veto")
        assert (await service.send(Message("+15550003", Text("hi"), channel="recording"))).ok


async def test_hook_validate_problems_are_the_same_with_and_without_monitoring(recording_channel):
    class Second:
        @hookimpl
        def validate(self):
            return ["second: problem"]

    bad = Message("", Text(" "), channel="recording")
    async with make_service(recording_channel, ("first", _Veto()), ("second", Second())) as service:
        with pytest.raises(MessageValidationError) as direct:
            await service.send(bad)
        with HookRecorder(service.plugin_manager), pytest.raises(MessageValidationError) as monitored:
            await service.send(bad)
    assert direct.value.problems == monitored.value.problems
    # pluggy's order: the last registered first (the core's built-ins are registered last).
    assert direct.value.problems == [
        "recipient: must not be empty",
        "content.body: must not be empty",
        "second: problem",
        "recipient:  is on the deny list",
    ]
