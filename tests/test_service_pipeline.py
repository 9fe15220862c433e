"""The per-message hook pipeline: validate, build and send, and send middleware with its rollout."""

from __future__ import annotations

import pytest
from service_support import text

from omnichannel import (
    Certainty,
    DeliveryError,
    DeliveryFailed,
    DeliveryStatus,
    ErrorInfo,
    Media,
    MediaKind,
    Message,
    MessageValidationError,
    PluginError,
    PluginSettings,
    Receipt,
    ServiceConfig,
    Template,
    TemplateButton,
    Text,
    TextParam,
    TransientDeliveryError,
    UnknownChannelError,
    hookimpl,
)
from omnichannel.plugins import in_rollout
from omnichannel.testing import EventRecorder, HookRecorder, RecordingChannel, make_service

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
