"""The ``sender_id`` hook and ``service.sender_of``: which account of a channel sends a message."""

from __future__ import annotations

from omnichannel import Message, OmniChannelService, Text, hookimpl
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
