"""Value types of ``omnichannel.message`` and the core's built-in message validation."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from omnichannel import (
    ButtonType,
    CurrencyParam,
    DateTimeParam,
    DeliveryFailed,
    DeliveryStatus,
    ErrorInfo,
    LocationParam,
    Media,
    MediaKind,
    MediaParam,
    Message,
    MessageSent,
    MessageValidationError,
    Receipt,
    Template,
    TemplateButton,
    Text,
    TextParam,
    new_message_id,
)

# ---------------------------------------------------------------- template parameters


def test_positional_strings_become_text_params():
    template = Template("order_update", body=["Ann", "42"])
    assert template.body == (TextParam("Ann"), TextParam("42"))
    assert template.uses_named_parameters is False


def test_a_single_string_is_one_parameter_not_its_characters():
    assert Template("greeting", body="Ann").body == (TextParam("Ann"),)


def test_mapping_becomes_named_params_in_order():
    template = Template("order_update", body={"first_name": "Ann", "order": "42"})
    assert template.body == (TextParam("Ann", name="first_name"), TextParam("42", name="order"))
    assert template.uses_named_parameters is True


def test_mapping_names_param_objects():
    total = CurrencyParam("$10.00", "USD", 10_000)
    when = DateTimeParam("tomorrow")
    template = Template("receipt", body={"total": total, "when": when, "who": "Ann"})
    assert template.body == (
        CurrencyParam("$10.00", "USD", 10_000, name="total"),
        DateTimeParam("tomorrow", name="when"),
        TextParam("Ann", name="who"),
    )


def test_mix_of_strings_and_param_objects_keeps_the_objects():
    location = LocationParam(52.52, 13.40, location_name="Berlin")
    image = MediaParam(MediaKind.IMAGE, link="https://example.com/a.png")
    template = Template("visit", header=[image], body=["Ann", location, TextParam("x", name=None)])
    assert template.header == (image,)
    assert template.body == (TextParam("Ann"), location, TextParam("x"))


def test_named_param_objects_in_a_list_keep_their_names():
    template = Template("t", body=[TextParam("Ann", name="first_name")])
    assert template.uses_named_parameters is True


def test_template_defaults_and_collections_are_tuples():
    template = Template("hello", buttons=[TemplateButton("quick_reply", 0, "yes")])
    assert template.language == "en_US"
    assert template.header == ()
    assert template.body == ()
    assert template.uses_named_parameters is False
    assert isinstance(template.buttons, tuple)
    assert template.buttons[0].sub_type is ButtonType.QUICK_REPLY


def test_button_sub_type_is_converted_and_checked():
    assert TemplateButton("copy_code", 1, "SAVE10").sub_type is ButtonType.COPY_CODE
    with pytest.raises(ValueError, match="'link' is not a valid ButtonType"):
        TemplateButton("link", 0, "x")


def test_media_kind_is_converted_and_checked():
    assert Media("image", url="https://example.com/a.png").kind is MediaKind.IMAGE
    with pytest.raises(ValueError, match="'gif' is not a valid MediaKind"):
        Media("gif", url="https://example.com/a.gif")


def test_templates_are_hashable_values():
    a = Template("t", body={"n": "1"})
    b = Template("t", body=[TextParam("1", name="n")])
    assert a == b
    assert hash(a) == hash(b)


# ---------------------------------------------------------------- message


def test_recipient_is_stripped():
    assert Message("  +15551234567\n", Text("hi")).recipient == "+15551234567"


def test_message_defaults():
    message = Message("+15551234567", Text("hi"))
    assert message.channel is None
    assert message.route == ()
    assert message.idempotency_key is None
    assert dict(message.metadata) == {}
    assert re.fullmatch(r"[0-9a-f]{32}", message.id)


def test_each_message_gets_its_own_id():
    assert Message("+1", Text("a")).id != Message("+1", Text("a")).id


def test_route_accepts_a_string_or_a_list():
    assert Message("+1", Text("a"), route="sms").route == ("sms",)
    assert Message("+1", Text("a"), route=["whatsapp", "sms"]).route == ("whatsapp", "sms")


def test_channel_is_kept():
    assert Message("+1", Text("a"), channel="whatsapp").channel == "whatsapp"


def test_key_is_the_idempotency_key_else_the_id():
    assert Message("+1", Text("a"), id="m-1").key == "m-1"
    assert Message("+1", Text("a"), id="m-1", idempotency_key="order-42").key == "order-42"


def test_metadata_is_immutable_and_copied():
    source = {"order": "42"}
    message = Message("+1", Text("a"), metadata=source)
    with pytest.raises(TypeError):
        message.metadata["order"] = "43"  # type: ignore[index]
    with pytest.raises(TypeError):
        del message.metadata["order"]  # type: ignore[attr-defined]
    source["order"] = "changed"
    assert message.metadata == {"order": "42"}


def test_message_is_frozen_and_hashable():
    message = Message("+1", Text("a"), metadata={"k": "v"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.recipient = "+2"  # type: ignore[misc]
    assert hash(message) == hash(attrs.evolve(message, metadata={"other": "x"}))
    assert message == attrs.evolve(message)


# ---------------------------------------------------------------- ids


def test_new_message_id_is_32_hex_digits():
    for _ in range(20):
        assert re.fullmatch(r"[0-9a-f]{32}", new_message_id())


def test_new_message_id_starts_with_the_millisecond_time(monkeypatch):
    monkeypatch.setattr(time, "time_ns", lambda: 1_767_225_600_123_456_789)
    assert new_message_id()[:12] == f"{1_767_225_600_123:012x}"


def test_new_message_ids_sort_by_creation_time(monkeypatch):
    clock = iter(ms * 1_000_000 for ms in (1_000, 1_001, 1_999, 2_000, 10**12, 10**12 + 1))
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    ids = [new_message_id() for _ in range(6)]
    assert sorted(ids) == ids
    assert len(set(ids)) == 6


def test_new_message_ids_in_one_millisecond_are_distinct(monkeypatch):
    monkeypatch.setattr(time, "time_ns", lambda: 5_000_000_000)
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100
    assert {i[:12] for i in ids} == {f"{5_000:012x}"}


# ---------------------------------------------------------------- receipt


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        (DeliveryStatus.QUEUED, True),
        (DeliveryStatus.ACCEPTED, True),
        (DeliveryStatus.SENT, True),
        (DeliveryStatus.DELIVERED, True),
        (DeliveryStatus.READ, True),
        (DeliveryStatus.FAILED, False),
    ],
)
def test_receipt_ok(status, ok):
    assert Receipt("m-1", "sms", status).ok is ok


def test_receipt_duration():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    receipt = Receipt(
        "m-1",
        "sms",
        DeliveryStatus.ACCEPTED,
        started_at=start,
        finished_at=start + timedelta(seconds=1, milliseconds=250),
    )
    assert receipt.duration_s == 1.25
    assert Receipt("m-1", "sms", DeliveryStatus.ACCEPTED, started_at=start).duration_s is None
    assert Receipt("m-1", "sms", DeliveryStatus.ACCEPTED, finished_at=start).duration_s is None


def test_receipt_defaults():
    receipt = Receipt("m-1", "sms", DeliveryStatus.ACCEPTED)
    assert receipt.attempts == 1
    assert receipt.provider_message_id is None
    assert receipt.provider_status is None
    assert receipt.error is None


# ---------------------------------------------------------------- built-in validation


def _template(**kwargs):
    return Template(kwargs.pop("name", "order_update"), **kwargs)


@pytest.mark.parametrize(
    ("content", "message_kwargs", "problems"),
    [
        pytest.param(Text("   "), {}, ["content.body: must not be empty"], id="blank-text"),
        pytest.param(Text(""), {}, ["content.body: must not be empty"], id="empty-text"),
        pytest.param(
            _template(name=" "), {}, ["content.name: template name must not be empty"], id="template-name"
        ),
        pytest.param(
            _template(language=""), {}, ["content.language: must not be empty"], id="template-language"
        ),
        pytest.param(
            _template(body=[TextParam("Ann", name="first_name"), TextParam("42")]),
            {},
            ["content.body: parameters must be all named or all positional, not a mix"],
            id="mixed-params",
        ),
        pytest.param(
            _template(
                body=[
                    TextParam("a", name="x"),
                    TextParam("b", name="y"),
                    TextParam("c", name="x"),
                    TextParam("d", name="y"),
                ]
            ),
            {},
            ["content.body: parameter names must be unique, repeated: x, y"],
            id="duplicate-names",
        ),
        pytest.param(
            _template(buttons=[TemplateButton("url", 0, "a"), TemplateButton("quick_reply", 0, "b")]),
            {},
            ["content.buttons[1].index: button 0 is given twice"],
            id="duplicate-button",
        ),
        pytest.param(
            _template(buttons=[TemplateButton("url", -1, "a")]),
            {},
            ["content.buttons[0].index: must be >= 0, got -1"],
            id="negative-button",
        ),
        pytest.param(
            Media("image", url="https://example.com/a.png", media_id="123"),
            {},
            ["content: give exactly one of url or media_id"],
            id="media-both",
        ),
        pytest.param(
            Media("image"), {}, ["content: give exactly one of url or media_id"], id="media-neither"
        ),
        pytest.param(
            Text("hi"),
            {"route": ["recording"]},
            ["route: give either channel or route, not both"],
            id="route",
        ),
    ],
)
async def test_builtin_validation(
    service, recording_channel, event_recorder, content, message_kwargs, problems
):
    message = Message("+15551234567", content, channel="recording", **message_kwargs)
    with pytest.raises(MessageValidationError) as info:
        await service.send(message)
    assert info.value.problems == problems
    assert info.value.message_id == message.id
    assert recording_channel.attempts == 0
    assert recording_channel.payloads == []
    [failed] = event_recorder.of_type(DeliveryFailed)
    assert failed.message == message
    assert failed.receipt.status is DeliveryStatus.FAILED
    assert failed.receipt.error == ErrorInfo(kind="MessageValidationError", detail=str(info.value))
    assert not event_recorder.of_type(MessageSent)


async def test_every_problem_is_reported_at_once(service):
    template = Template(
        "",
        language=" ",
        body=[TextParam("a", name="x"), TextParam("b"), TextParam("c", name="x")],
        buttons=[TemplateButton("url", -2, "a"), TemplateButton("url", -2, "b")],
    )
    with pytest.raises(MessageValidationError) as info:
        await service.send(Message("   ", template, channel="recording"))
    assert info.value.problems == [
        "recipient: must not be empty",
        "content.name: template name must not be empty",
        "content.language: must not be empty",
        "content.body: parameters must be all named or all positional, not a mix",
        "content.body: parameter names must be unique, repeated: x",
        "content.buttons[0].index: must be >= 0, got -2",
        "content.buttons[1].index: must be >= 0, got -2",
        "content.buttons[1].index: button -2 is given twice",
    ]
    assert str(info.value).startswith("message is invalid:\n  - recipient: must not be empty\n")


@pytest.mark.parametrize(
    "content",
    [
        Text("hello"),
        Template("order_update", body=["Ann", "42"]),
        Template("order_update", body={"first_name": "Ann"}, buttons=[TemplateButton("url", 0, "x")]),
        Media("document", media_id="123", filename="invoice.pdf"),
        Media("image", url="https://example.com/a.png", caption="hi"),
    ],
    ids=["text", "positional", "named", "media-id", "media-url"],
)
async def test_valid_messages_pass_builtin_validation(service, recording_channel, content):
    receipt = await service.send(Message(" +15551234567 ", content, channel="recording"))
    assert receipt.ok
    assert recording_channel.payloads[0].recipient == "+15551234567"
    assert recording_channel.payloads[0].content == content


async def test_interactive_content_is_sent_and_checked(service, recording_channel):
    from omnichannel import Buttons, ListMenu, ListRow, ListSection, ReplyButton

    buttons = Buttons("Confirm?", [ReplyButton("yes", "Yes"), ReplyButton("no", "No")], footer="reply")
    menu = ListMenu(
        "Pick a slot", "Slots", [ListSection([ListRow("am", "Morning"), ListRow("pm", "Evening")])]
    )
    for content in (buttons, menu):
        receipt = await service.send(Message("+15551234567", content, channel="recording"))
        assert receipt.ok
    assert [p.content for p in recording_channel.payloads] == [buttons, menu]

    bad = Buttons(" ", [ReplyButton("a", "A"), ReplyButton("a", "B")])
    with pytest.raises(MessageValidationError) as info:
        await service.send(Message("+15551234567", bad, channel="recording"))
    assert info.value.problems == [
        "content.body: must not be empty",
        "content.buttons: ids must be unique, repeated: a",
    ]
    empty = ListMenu("Pick", "Slots", [ListSection([])])
    with pytest.raises(MessageValidationError) as info:
        await service.send(Message("+15551234567", empty, channel="recording"))
    assert info.value.problems == [
        "content.sections: give at least one choice",
        "content.sections[0].rows: must not be empty",
    ]


def test_interactive_content_and_reply_to_round_trip_through_json():
    import json

    from omnichannel import Buttons, ListMenu, ListRow, ListSection, ReplyButton, make_converter

    converter = make_converter()
    for content in (
        Buttons("Confirm?", [ReplyButton("yes", "Yes")], header="Order 42"),
        ListMenu("Pick", "Slots", [ListSection([ListRow("am", "Morning", "9-12")], title="Today")]),
    ):
        message = Message("+15551234567", content, channel="whatsapp", reply_to="wamid.ABC")
        data = json.loads(json.dumps(converter.unstructure(message)))
        assert converter.structure(data, Message) == message


def test_a_single_template_parameter_needs_no_list():
    from omnichannel import MediaKind, MediaParam

    template = Template("promo", header=MediaParam("image", link="https://example.com/a.jpg"))
    assert template.header == (MediaParam(MediaKind.IMAGE, link="https://example.com/a.jpg"),)
    assert template.header[0].kind is MediaKind.IMAGE


async def test_an_empty_reply_to_is_a_problem(service):
    with pytest.raises(MessageValidationError) as info:
        await service.send(Message("+15551234567", Text("hi"), channel="recording", reply_to=" "))
    assert info.value.problems == ["reply_to: must not be empty when given"]
