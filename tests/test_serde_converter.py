"""``make_converter()``: strict primitives, EnvStr, Secret, datetime and enum hooks, and the error lines."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime, timedelta, timezone

import attrs
import cattrs
import pytest
from serde_support import converter_fixture  # noqa: F401  (the converter fixture)

from omnichannel import (
    Certainty,
    DeliveryStatus,
    EnvStr,
    InvalidField,
    InvalidValue,
    MediaKind,
    Message,
    Secret,
    format_errors,
    make_converter,
)
from omnichannel.serde import REDACTED

SECRET = "EAAG-very-secret-token"


def errors_of(converter, value, cls, path=""):
    """The lines ``format_errors`` gives for structuring ``value`` as ``cls``."""
    with pytest.raises((cattrs.BaseValidationError, ValueError, TypeError)) as info:
        converter.structure(value, cls)
    return format_errors(info.value, path)


def test_make_converter_builds_independent_strict_converters():
    first, second = make_converter(), make_converter()
    assert first is not second
    assert first is not cattrs.global_converter
    first.register_structure_hook(int, lambda value, _: 0)
    assert first.structure("x", int) == 0
    with pytest.raises(InvalidValue):
        second.structure("x", int)


# ---------------------------------------------------------------- strict primitives


@pytest.mark.parametrize(
    ("value", "cls", "expected"),
    [
        (5, int, 5),
        (-3, int, -3),
        (1.5, float, 1.5),
        (2, float, 2.0),
        (True, bool, True),
        (False, bool, False),
        ("hi", str, "hi"),
        ("", str, ""),
    ],
)
def test_primitives_accept_their_own_type(converter, value, cls, expected):
    result = converter.structure(value, cls)
    assert result == expected
    assert type(result) is cls


@pytest.mark.parametrize(
    ("value", "cls", "line"),
    [
        (True, int, "$: expected an integer, got bool True"),
        (False, float, "$: expected a number, got bool False"),
        ("5", int, "$: expected an integer, got str '5'"),
        ("5", float, "$: expected a number, got str '5'"),
        (1.5, int, "$: expected an integer, got float 1.5"),
        (1, bool, "$: expected true or false, got int 1"),
        ("true", bool, "$: expected true or false, got str 'true'"),
        (5, str, "$: expected a string, got int 5"),
        (b"x", str, "$: expected a string, got bytes b'x'"),
        (None, str, "$: expected a string, got NoneType None"),
    ],
)
def test_primitives_are_never_coerced(converter, value, cls, line):
    assert errors_of(converter, value, cls) == [line]


def test_format_errors_roots_the_path(converter):
    assert errors_of(converter, "5", int, "plugins.sms.port") == [
        "plugins.sms.port: expected an integer, got str '5'"
    ]


# ---------------------------------------------------------------- EnvStr


def test_env_str_is_a_str_that_remembers_its_variable():
    value = EnvStr("42", "OMNICHANNEL_X")
    assert isinstance(value, str)
    assert value == "42"
    assert value.source == "OMNICHANNEL_X"


@pytest.mark.parametrize(
    ("raw", "cls", "expected"),
    [
        (" 42 ", int, 42),
        ("-1", int, -1),
        ("2.5", float, 2.5),
        (" 3 ", float, 3.0),
        ("1e3", float, 1000.0),
        ("1", bool, True),
        ("TRUE", bool, True),
        (" yes ", bool, True),
        ("on", bool, True),
        ("0", bool, False),
        ("False", bool, False),
        ("no", bool, False),
        ("off", bool, False),
        ("plain", str, "plain"),
    ],
)
def test_env_str_is_parsed_by_the_type_it_fills(converter, raw, cls, expected):
    result = converter.structure(EnvStr(raw, "V"), cls)
    assert result == expected
    assert type(result) is cls


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (list[str], ["sms", "whatsapp", "email"]),
        (tuple[str, ...], ("sms", "whatsapp", "email")),
        (frozenset[str], frozenset({"sms", "whatsapp", "email"})),
    ],
)
def test_env_str_is_split_into_lists_on_commas(converter, cls, expected):
    assert converter.structure(EnvStr(" sms, whatsapp,,email ,", "V"), cls) == expected


def test_empty_env_str_is_an_empty_list(converter):
    assert converter.structure(EnvStr("", "V"), tuple[str, ...]) == ()


@pytest.mark.parametrize(
    ("raw", "cls", "line"),
    [
        ("abc", int, "$: expected an integer, got 'abc' (from $OMNICHANNEL_N)"),
        ("1.5", int, "$: expected an integer, got '1.5' (from $OMNICHANNEL_N)"),
        ("fast", float, "$: expected a number, got 'fast' (from $OMNICHANNEL_N)"),
        ("maybe", bool, "$: expected true or false, got 'maybe' (from $OMNICHANNEL_N)"),
    ],
)
def test_bad_env_str_names_its_variable(converter, raw, cls, line):
    assert errors_of(converter, EnvStr(raw, "OMNICHANNEL_N"), cls) == [line]


def test_a_plain_string_is_not_split(converter):
    assert errors_of(converter, "sms,whatsapp", list[str]) == [
        "$: expected a list of strings, got str 'sms,whatsapp'"
    ]
    assert errors_of(converter, ["sms", 5, "email", None], list[str], "route") == [
        "route[1]: expected a string, got int 5",
        "route[3]: expected a string, got NoneType None",
    ]


# ---------------------------------------------------------------- Secret


@attrs.frozen
class Credentials:
    token: Secret
    account: str = "main"
    backup: Secret | None = None


def test_secret_hides_itself():
    secret = Secret(SECRET)
    assert repr(secret) == f"Secret({REDACTED!r})"
    assert str(secret) == REDACTED
    assert f"{secret}" == REDACTED
    assert SECRET not in repr(Credentials(secret))
    assert secret.reveal() == SECRET


def test_secret_equality():
    assert Secret(SECRET) == Secret(SECRET)
    assert Secret(SECRET) != Secret("other")
    assert Secret(SECRET) != SECRET
    assert hash(Secret(SECRET)) == hash(Secret("other"))  # the hash reveals nothing
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2


def test_secret_structures_from_a_string_and_unstructures_redacted(converter):
    creds = converter.structure({"token": SECRET, "backup": "other"}, Credentials)
    assert creds.token.reveal() == SECRET
    assert creds.backup == Secret("other")
    data = converter.unstructure(creds)
    assert data == {"token": REDACTED, "account": "main", "backup": REDACTED}
    assert SECRET not in json.dumps(data)
    assert converter.structure(Secret(SECRET), Secret) == Secret(SECRET)


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (12345, "token: expected a non-empty secret string, got int"),
        ([SECRET], "token: expected a non-empty secret string, got list"),
        ({"value": SECRET}, "token: expected a non-empty secret string, got dict"),
        ("", "token: expected a non-empty secret string, got str"),
    ],
)
def test_secret_errors_never_echo_the_value(converter, value, line):
    lines = errors_of(converter, {"token": value}, Credentials)
    assert lines == [line]
    assert SECRET not in "\n".join(lines)


def test_unknown_key_holding_a_secret_is_named_not_echoed(converter):
    lines = errors_of(converter, {"tokn": SECRET, "token": "x"}, Credentials)
    assert lines == ["tokn: unknown key (did you mean 'token'?)"]


# ---------------------------------------------------------------- datetime


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC),
        datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 3, 4, 5, 6, 7),
    ],
)
def test_datetime_round_trip(converter, value):
    data = converter.unstructure(value)
    assert data == value.isoformat()
    back = converter.structure(json.loads(json.dumps(data)), datetime)
    assert back == value
    assert back.utcoffset() == value.utcoffset()


def test_datetime_passes_through(converter):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert converter.structure(now, datetime) is now


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("yesterday", "$: expected an ISO 8601 date-time, got str 'yesterday'"),
        (1767225600, "$: expected an ISO 8601 date-time, got int 1767225600"),
    ],
)
def test_bad_datetime(converter, value, line):
    assert errors_of(converter, value, datetime) == [line]


# ---------------------------------------------------------------- enums


class Priority(enum.Enum):
    LOW = 1
    HIGH = 2


def test_enums_structure_and_unstructure_by_value(converter):
    assert converter.structure("image", MediaKind) is MediaKind.IMAGE
    assert converter.structure("failed", DeliveryStatus) is DeliveryStatus.FAILED
    assert converter.structure(2, Priority) is Priority.HIGH
    assert converter.unstructure(MediaKind.IMAGE) == "image"
    assert type(converter.unstructure(MediaKind.IMAGE)) is str
    assert converter.unstructure(Priority.LOW) == 1


@pytest.mark.parametrize(
    ("value", "cls", "line"),
    [
        (
            "gif",
            MediaKind,
            "$: expected one of 'image', 'video', 'audio', 'document', 'sticker', got str 'gif'",
        ),
        (
            "IMAGE",
            MediaKind,
            "$: expected one of 'image', 'video', 'audio', 'document', 'sticker', got str 'IMAGE'",
        ),
        ("maybe", Certainty, "$: expected one of 'not_sent', 'rejected', 'unknown', got str 'maybe'"),
        ("LOW", Priority, "$: expected one of 1, 2, got str 'LOW'"),
        (3, Priority, "$: expected one of 1, 2, got int 3"),
    ],
)
def test_enum_errors_list_the_allowed_values(converter, value, cls, line):
    assert errors_of(converter, value, cls) == [line]


# ---------------------------------------------------------------- error lines


def _message_data(content, **extra):
    return {"recipient": "+15551234567", "content": content, **extra}


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        pytest.param(
            _message_data({"type": "nope"}),
            ["content: 'type' must be one of 'text', 'template', 'media', 'buttons', 'list', got 'nope'"],
            id="unknown-tag",
        ),
        pytest.param(
            _message_data({"body": "hi"}),
            ["content: 'type' must be one of 'text', 'template', 'media', 'buttons', 'list', got None"],
            id="missing-tag",
        ),
        pytest.param(
            _message_data("hi"),
            ["content: expected a table with a 'type' key, got str 'hi'"],
            id="not-a-table",
        ),
        pytest.param({"recipient": "+1"}, ["content: required field missing"], id="missing-field"),
        pytest.param(
            _message_data({"type": "text", "body": "hi", "preview": True}),
            ["content.preview: unknown key (did you mean 'preview_url'?)"],
            id="extra-key-in-content",
        ),
        pytest.param(
            _message_data({"type": "text", "body": "hi"}, chanel="sms"),
            ["chanel: unknown key (did you mean 'channel'?)"],
            id="extra-key-did-you-mean",
        ),
        pytest.param(
            _message_data({"type": "text", "body": "hi"}, priority="high"),
            ["priority: unknown key"],
            id="extra-key-no-hint",
        ),
        pytest.param(
            _message_data({"type": "text", "body": "hi"}, metadata={"order": 42}),
            ["metadata.order: expected a string, got int 42"],
            id="metadata-value",
        ),
        pytest.param(
            _message_data({"type": "media", "kind": "gif", "url": "u"}),
            ["content.kind: expected one of 'image', 'video', 'audio', 'document', 'sticker', got str 'gif'"],
            id="enum-in-content",
        ),
        pytest.param(
            _message_data(
                {
                    "type": "template",
                    "name": "t",
                    "body": [{"type": "text", "text": "a"}, {"type": "text", "text": 5}, {"type": "text"}],
                }
            ),
            [
                "content.body[1].text: expected a string, got int 5",
                "content.body[2].text: required field missing",
            ],
            id="nested-list",
        ),
    ],
)
def test_error_lines(converter, data, lines):
    assert errors_of(converter, data, Message) == lines


def test_error_lines_for_the_first_list_item(converter):
    data = _message_data(
        {
            "type": "template",
            "name": "t",
            "body": [{"type": "nope"}],
            "buttons": [{"sub_type": "link", "index": "0", "value": "v"}],
        }
    )
    assert errors_of(converter, data, Message) == [
        "content.body[0]: 'type' must be one of 'text', 'currency', 'date_time', 'media', 'location', "
        "got 'nope'",
        "content.buttons[0].sub_type: expected one of 'quick_reply', 'url', 'copy_code', got str 'link'",
        "content.buttons[0].index: expected an integer, got str '0'",
    ]


def test_every_problem_is_reported_at_once(converter):
    data = {
        "recipient": 5,
        "content": {"type": "text", "body": None, "extra": 1},
        "route": "sms",
        "channle": "sms",
    }
    assert sorted(errors_of(converter, data, Message)) == sorted(
        [
            "recipient: expected a string, got int 5",
            "content.body: expected a string, got NoneType None",
            "content.extra: unknown key",
            "route: expected a list of strings, got str 'sms'",
            "channle: unknown key (did you mean 'channel'?)",
        ]
    )


@attrs.frozen
class Limits:
    timeout_s: float = attrs.field(default=1.0)

    @timeout_s.validator
    def _check(self, attribute, value):
        if value <= 0:
            raise InvalidField(attribute.name, f"must be > 0, got {value}")


@attrs.frozen
class Outer:
    limits: Limits


def test_validator_messages_are_kept_at_the_field_path(converter):
    assert errors_of(converter, {"limits": {"timeout_s": -1}}, Outer, "plugins.x") == [
        "plugins.x.limits.timeout_s: must be > 0, got -1.0"
    ]


def test_format_errors_of_plain_exceptions():
    assert format_errors(InvalidValue("expected a table")) == ["$: expected a table"]
    assert format_errors(InvalidField("port", "must be < 65536"), "server") == [
        "server.port: must be < 65536"
    ]
    assert format_errors(ValueError("bad"), "x") == ["x: bad"]
    assert format_errors(ValueError(), "x") == ["x: ValueError"]
    assert format_errors(RuntimeError("odd"), "x") == ["x: RuntimeError: odd"]
