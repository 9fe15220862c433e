"""The ``sender_id`` hook and ``service.sender_of``: which account of a channel sends a message."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

from omnichannel import (
    DeliveryFailed,
    ErrorScope,
    Event,
    Message,
    MessageSent,
    OmniChannelService,
    PermanentDeliveryError,
    Text,
    hookimpl,
)
from omnichannel.testing import RecordingChannel, make_service


def hello(**kwargs: str) -> Message:
    return Message("+15551234567", Text("hello"), channel="recording", metadata=kwargs)


class NamesItsSender(RecordingChannel):
    @hookimpl
    def sender_id(self, message: Message) -> str:
        return f"{self.name}-{message.metadata.get('line', 'main')}"


def test_hook_sender_id_the_owning_channel_plugin_names_the_sender():
    service = make_service(NamesItsSender())
    assert service.sender_of(hello(), "recording") == "recording-main"
    assert service.sender_of(hello(line="2"), "recording") == "recording-2"


def test_hook_sender_id_without_an_answer_the_sender_is_the_channel_name():
    service = make_service(RecordingChannel())
    assert service.sender_of(hello(), "recording") == "recording"


def test_hook_sender_id_only_the_owner_of_the_channel_is_asked():
    other = NamesItsSender("other")
    service = make_service(RecordingChannel(), other)
    assert service.sender_of(hello(), "recording") == "recording"
    assert service.sender_of(hello(), "other") == "other-main"


def test_hook_sender_id_a_plugin_owning_no_channel_may_answer():
    class Router:
        @hookimpl
        def sender_id(self, channel: str, service: OmniChannelService) -> str:
            assert isinstance(service, OmniChannelService)
            return f"pool-for-{channel}"

    service = make_service(RecordingChannel(), Router())
    assert service.sender_of(hello(), "recording") == "pool-for-recording"


def test_hook_sender_id_an_empty_answer_falls_back_to_the_channel_name():
    class Empty:
        @hookimpl
        def sender_id(self) -> str:
            return ""

    service = make_service(RecordingChannel(), Empty())
    assert service.sender_of(hello(), "recording") == "recording"


def test_hook_sender_id_of_an_unknown_channel_is_its_name():
    service = make_service(RecordingChannel())
    assert service.sender_of(hello(), "nowhere") == "nowhere"


class CountsItsAnswers(RecordingChannel):
    """Names its sender after how often it was asked: a second question would show."""

    def __init__(self, name: str = "recording") -> None:
        super().__init__(name)
        self.asked = 0

    @hookimpl
    def sender_id(self, message: Message) -> str:
        self.asked += 1
        return f"{self.name}-{self.asked}"


class AsksForTheSender:
    """A send middleware and a listener that each ask ``service.sender_of``, as resilience and
    metrics do."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    @hookimpl(wrapper=True)
    def send(self, message: Message, channel: str, service: OmniChannelService) -> Generator[None, Any, Any]:
        inner = yield
        self.seen.append(("wrapper", channel, service.sender_of(message, channel)))
        return inner

    @hookimpl
    def on_event(self, event: Event, service: OmniChannelService) -> None:
        if isinstance(event, MessageSent | DeliveryFailed):
            channel = event.receipt.channel
            self.seen.append((type(event).__name__, channel, service.sender_of(event.message, channel)))


async def test_hook_sender_id_is_asked_once_per_send_and_everyone_gets_that_answer():
    channel, asker = CountsItsAnswers(), AsksForTheSender()
    async with make_service(channel, asker) as service:
        await service.send(hello())
        assert channel.asked == 1
        assert asker.seen == [
            ("wrapper", "recording", "recording-1"),
            ("MessageSent", "recording", "recording-1"),
        ]
        await service.send(hello())  # a new send asks again
        assert channel.asked == 2
        assert asker.seen[-1] == ("MessageSent", "recording", "recording-2")
    # Outside a send, every call asks.
    message = hello()
    assert [service.sender_of(message, "recording") for _ in range(2)] == ["recording-3", "recording-4"]


async def test_hook_sender_id_a_route_asks_once_for_each_channel_it_tries():
    first, second, asker = CountsItsAnswers("a"), CountsItsAnswers("b"), AsksForTheSender()
    first.fail_next(1, PermanentDeliveryError("no such number", scope=ErrorScope.RECIPIENT))
    async with make_service(first, second, asker) as service:
        await service.send(Message("+15551234567", Text("hello"), route=("a", "b")))
    assert asker.seen == [
        ("wrapper", "a", "a-1"),
        ("DeliveryFailed", "a", "a-1"),
        ("wrapper", "b", "b-1"),
        ("MessageSent", "b", "b-1"),
    ]
    assert (first.asked, second.asked) == (1, 1)


async def test_hook_sender_id_the_same_message_sent_twice_at_once_is_answered_and_forgotten():
    channel, asker = CountsItsAnswers(), AsksForTheSender()
    message = hello()
    async with make_service(channel, asker) as service:
        channel.hold()
        sends = [asyncio.create_task(service.send(message)) for _ in range(2)]
        await asyncio.sleep(0)
        channel.release()
        await asyncio.gather(*sends)
        assert len(asker.seen) == 4
        assert channel.asked <= 2  # at most once per send
        assert {sender for _, _, sender in asker.seen} <= {"recording-1", "recording-2"}
        # Both sends are over: the next one asks again.
        asked = channel.asked
        await service.send(message)
        assert channel.asked == asked + 1
        assert asker.seen[-1] == ("MessageSent", "recording", f"recording-{asked + 1}")
