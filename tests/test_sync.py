"""SyncOmniChannelService: the blocking facade for host applications that are not async."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from omnichannel import (
    BulkResult,
    DeliveryStatus,
    Message,
    MessageSent,
    MessageValidationError,
    PermanentDeliveryError,
    PluginError,
    SendBulk,
    SendMessage,
    ServiceStateError,
    SyncOmniChannelService,
    Text,
    hookimpl,
)
from omnichannel.testing import EventRecorder, FakeClock, RecordingChannel


def sync_service(*plugins: object, **kwargs) -> SyncOmniChannelService:
    return SyncOmniChannelService(
        load_entrypoints=False, plugins=list(plugins), clock=FakeClock(), environ={}, **kwargs
    )


def text(recipient: str = "+15551234567", body: str = "hi") -> Message:
    return Message(recipient, Text(body), channel="recording")


def test_send_blocks_and_returns_the_receipt():
    channel, events = RecordingChannel(), EventRecorder()
    with sync_service(channel, events) as service:
        assert service.service.started
        message = text()
        receipt = service.send(message)
    assert not service.service.started
    assert receipt.ok
    assert receipt.message_id == message.id
    assert receipt.provider_message_id == "rec-1"
    assert [p.message_id for p in channel.payloads] == [message.id]
    assert events.types() == ["ServiceStarted", "MessageSent", "ServiceStopping"]


def test_send_raises_like_the_async_service():
    with sync_service(RecordingChannel()) as service, pytest.raises(MessageValidationError) as info:
        service.send(text(body=""))
    assert info.value.problems == ["content.body: must not be empty"]


def test_send_many_keeps_order_and_captures_failures():
    channel = RecordingChannel()
    channel.script(None, PermanentDeliveryError("no such user"), None)
    messages = [text(f"+1{i}") for i in range(3)]
    with sync_service(channel) as service:
        receipts = service.send_many(messages, concurrency=1)
    assert [r.message_id for r in receipts] == [m.id for m in messages]
    assert [r.status for r in receipts] == [
        DeliveryStatus.ACCEPTED,
        DeliveryStatus.FAILED,
        DeliveryStatus.ACCEPTED,
    ]
    assert receipts[1].error.detail == "no such user"


def test_dispatch_runs_commands_through_the_bus():
    channel, events = RecordingChannel(), EventRecorder()
    with sync_service(channel, events) as service:
        receipt = service.dispatch(SendMessage(text()))
        result = service.dispatch(SendBulk(["+1", "+2"], Text("sale"), channel="recording", campaign_id="c"))
    assert receipt.ok
    assert isinstance(result, BulkResult)
    assert (result.accepted, result.failed) == (2, 0)
    keys = {e.message.key for e in events.of_type(MessageSent)}
    assert keys == {receipt.message_id, "c:+1", "c:+2"}


def test_one_loop_serves_every_call():
    loops = []

    class LoopSpy:
        @hookimpl
        def on_event(self):
            loops.append(asyncio.get_running_loop())

    with sync_service(RecordingChannel(), LoopSpy()) as service:
        service.send(text())
        service.send(text())
    assert len(loops) == 4  # started, two sends, stopping
    assert len(set(map(id, loops))) == 1


def test_explicit_start_and_close():
    service = sync_service(RecordingChannel())
    service.start()
    service.start()  # a second start does nothing
    try:
        assert service.send(text()).ok
    finally:
        service.close()
    service.close()  # a second close does nothing
    assert not service.service.started
    assert _current_event_loop() is None  # the loop was closed and unset


def test_send_before_start_is_a_service_state_error():
    service = sync_service(RecordingChannel())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unawaited coroutine must be closed, not leaked
        with pytest.raises(ServiceStateError) as info:
            service.send(text())
        gc.collect()
    assert str(info.value) == "the service is not started: use 'with' or call start()"


def test_use_after_close_is_a_service_state_error():
    with sync_service(RecordingChannel()) as service:
        pass
    with pytest.raises(ServiceStateError):
        service.send(text())


async def test_inside_a_running_loop_is_a_service_state_error():
    service = sync_service(RecordingChannel())
    with pytest.raises(ServiceStateError) as info:
        service.start()
    assert str(info.value) == (
        "SyncOmniChannelService cannot run inside an event loop; use OmniChannelService and await it"
    )
    with pytest.raises(ServiceStateError), service:
        pass
    assert not service.service.started


def _current_event_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop set for this thread, if any (without creating one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            return None


def test_a_failed_start_leaves_no_event_loop_open():
    class Broken:
        @hookimpl
        def startup(self):
            raise ConnectionError("database is down")

    service = sync_service(("broken", Broken()))
    with pytest.raises(PluginError) as info, service:
        pass
    assert str(info.value) == "plugin 'broken': startup failed: ConnectionError('database is down')"
    leaked = _current_event_loop()
    try:
        assert leaked is None or leaked.is_closed(), "the failed start left its event loop open"
    finally:
        if leaked is not None and not leaked.is_closed():
            leaked.close()
            asyncio.set_event_loop(None)
