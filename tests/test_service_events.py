"""``on_event`` listeners: isolation of failing listeners, async listeners, opt-in arguments."""

from __future__ import annotations

from collections import Counter

import pytest
from service_support import text

from omnichannel import ErrorInfo, ListenerFailed, MessageSent, hookimpl
from omnichannel.testing import EventRecorder, make_service

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
