"""``service.check(message)``: the problems that would stop a message, found without sending."""

from __future__ import annotations

from omnichannel import Message, MessageValidationError, ServiceConfig, Text, hookimpl
from omnichannel.testing import RecordingChannel, make_service


def test_a_valid_message_has_no_problem_and_nothing_is_sent():
    channel = RecordingChannel()
    service = make_service(channel)
    assert service.check(Message("+15551234567", Text("hi"), channel="recording")) == []
    assert channel.attempts == 0


def test_validation_problems_are_listed():
    service = make_service(RecordingChannel())
    problems = service.check(Message("+15551234567", Text(""), channel="recording"))
    assert problems == ["content.body: must not be empty"]


def test_a_build_refusal_is_a_problem():
    class Picky(RecordingChannel):
        @hookimpl
        def build(self, message: Message) -> object:
            raise MessageValidationError(["content: this channel carries no emoji"])

    service = make_service(Picky())
    assert service.check(Message("+15551234567", Text("🙂"), channel="recording")) == [
        "content: this channel carries no emoji"
    ]


def test_routing_problems():
    service = make_service(RecordingChannel())
    assert service.check(Message("+15551234567", Text("hi"))) == [
        "channel: no channel given and no default_route configured"
    ]
    assert service.check(Message("+15551234567", Text("hi"), channel="sms")) == [
        "channel: 'sms' not available"
    ]
    routed = make_service(RecordingChannel(), config=ServiceConfig(default_route=("sms", "recording")))
    assert routed.check(Message("+15551234567", Text("hi"))) == []
