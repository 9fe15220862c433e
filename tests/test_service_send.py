"""``OmniChannelService.send`` and ``send_many``: the happy path, routing, concurrency, cancellation."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from service_support import START, text

from omnichannel import (
    Certainty,
    DeliveryFailed,
    DeliveryStatus,
    ErrorInfo,
    Message,
    MessageSent,
    MessageValidationError,
    PermanentDeliveryError,
    Receipt,
    ServiceConfig,
    Template,
    TemplateUsed,
    Text,
    TransientDeliveryError,
    UnknownChannelError,
    hookimpl,
)
from omnichannel.testing import EventRecorder, RecordingChannel, make_service

# ---------------------------------------------------------------- small plugins used below


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
