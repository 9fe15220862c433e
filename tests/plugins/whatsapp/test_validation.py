"""``validate_message``: every Cloud API rule, with the exact problem lines users see."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnichannel import (
    Buttons,
    CurrencyParam,
    DateTimeParam,
    ListMenu,
    ListRow,
    ListSection,
    LocationParam,
    Media,
    MediaKind,
    MediaParam,
    Message,
    ReplyButton,
    Template,
    TemplateButton,
    Text,
    TextParam,
)
from omnichannel_whatsapp.validation import validate_message

WHITESPACE_RULE = "template parameters cannot contain new lines, tabs or more than 4 consecutive spaces"


def problems(content, recipient="+16505551234", **message):
    return validate_message(Message(recipient, content, **message))


def yes():
    return [ReplyButton("yes", "Yes")]


def one_section(*rows, title=None):
    return [ListSection(rows or [ListRow("a", "A")], title)]


# ---------------------------------------------------------------- valid messages


@pytest.mark.parametrize(
    "content",
    [
        Text("Hello https://example.com", preview_url=True),
        Text("x" * 4096),
        Media("image", url="https://cdn.example.com/a.jpg", caption="c" * 1024),
        Media("video", media_id="1", caption="clip"),
        Media("document", url="http://x.example/r.pdf", filename="r.pdf", caption="r"),
        Media("audio", media_id="1"),
        Media("sticker", url="https://x.example/s.webp"),
        Template("hello_world"),
        Template(
            "order_update",
            language="pt_BR",
            header=[MediaParam(MediaKind.DOCUMENT, link="https://x.example/r.pdf", filename="r.pdf")],
            body=["Pablo", CurrencyParam("$100.99", "USD", 100990), DateTimeParam("February 25, 1977")],
            buttons=[
                TemplateButton("quick_reply", 0, "p" * 256),
                TemplateButton("url", 1, "order/8899"),
                TemplateButton("copy_code", 9, "SAVE20SAVE20SAV"),
            ],
        ),
        Template("welcome", language="fil", body={"first_name": "Jessica", "_2nd": "a    b"}),
        Template("visit", header=[LocationParam(-90, 180, location_name="HQ")]),
        Template("visit", header=[MediaParam(MediaKind.VIDEO, media_id="1")]),
        Buttons(
            "b" * 1024,
            [ReplyButton("i" * 256, "t" * 20), ReplyButton("2", "Two"), ReplyButton("3", "Three")],
            header="h" * 60,
            footer="f" * 60,
        ),
        ListMenu(
            "Pick",
            "b" * 20,
            [
                ListSection(
                    [ListRow("i" * 200, "t" * 24, "d" * 72)] + [ListRow(str(i), "x") for i in range(4)],
                    "s" * 24,
                ),
                ListSection([ListRow(str(i), "x") for i in range(10, 15)], "Other"),
            ],
            header="h" * 60,
            footer="f" * 60,
        ),
    ],
    ids=lambda content: type(content).__name__,
)
def test_valid_messages_have_no_problems(content):
    assert problems(content) == []


def test_reply_to_and_a_long_id_within_the_callback_limit_are_fine():
    assert problems(Text("hi"), id="x" * 512, reply_to="wamid.HBgL") == []


# ---------------------------------------------------------------- envelope


@pytest.mark.parametrize(
    "recipient",
    ["+16505551234", "16505551234", "+4930123456", "+123456789012345", "+1 (650) 555-1234", "49 30 123456"],
)
def test_e164_recipients_pass(recipient):
    assert problems(Text("hi"), recipient=recipient) == []


@pytest.mark.parametrize(
    ("recipient", "problem"),
    [
        (
            "+1.650.555.1234",
            "recipient: must be an E.164 phone number such as +16505551234 (digits after an"
            " optional '+'; spaces, hyphens and parentheses are ignored), got '+1.650.555.1234'",
        ),
        ("+1 (650) 555", "recipient: 7 digits, an E.164 number has 8 to 15 (country code included)"),
        (
            "ann@example.com",
            "recipient: must be an E.164 phone number such as +16505551234 (digits after an"
            " optional '+'; spaces, hyphens and parentheses are ignored), got 'ann@example.com'",
        ),
        (
            "+١٦٥٠٥٥٥١٢٣٤",
            "recipient: must be an E.164 phone number such as +16505551234 (digits after an"
            " optional '+'; spaces, hyphens and parentheses are ignored), got '+١٦٥٠٥٥٥١٢٣٤'",
        ),
        ("+1234567", "recipient: 7 digits, an E.164 number has 8 to 15 (country code included)"),
        ("1234567890123456", "recipient: 16 digits, an E.164 number has 8 to 15 (country code included)"),
        ("+06505551234", "recipient: must start with the country calling code, not 0"),
    ],
)
def test_recipient_problems(recipient, problem):
    assert problems(Text("hi"), recipient=recipient) == [problem]


def test_empty_recipient_is_left_to_the_core():
    assert problems(Text("hi"), recipient="") == []


def test_message_id_is_limited_by_the_callback_data():
    assert problems(Text("hi"), id="x" * 513) == [
        "id: 513 characters, at most 512 (it is sent as biz_opaque_callback_data)"
    ]


def test_an_idempotency_key_is_the_callback_data_instead_of_the_id():
    assert problems(Text("hi"), id="x" * 600, idempotency_key="k") == []
    assert problems(Text("hi"), idempotency_key="k" * 513) == [
        "idempotency_key: 513 characters, at most 512 (it is sent as biz_opaque_callback_data)"
    ]


# ---------------------------------------------------------------- text and media


def test_text_body_too_long():
    assert problems(Text("x" * 4097)) == ["content.body: 4097 characters, at most 4096"]


@pytest.mark.parametrize(
    "content",
    [Text(""), Text("  "), Media("image"), Media("image", url="https://a.example/", media_id="1")],
)
def test_rules_of_the_core_are_not_repeated(content):
    assert problems(content) == []


@pytest.mark.parametrize(
    ("media", "expected"),
    [
        (
            Media("image", url="ftp://x.example/a.png"),
            ["content.url: must be an http(s) URL, got 'ftp://x.example/a.png'"],
        ),
        (Media("image", url="cdn/a.png"), ["content.url: must be an http(s) URL, got 'cdn/a.png'"]),
        (Media("image", url="https://"), ["content.url: must be an http(s) URL, got 'https://'"]),
        (
            Media("image", media_id="1", caption="c" * 1025),
            ["content.caption: 1025 characters, at most 1024"],
        ),
        (
            Media("audio", media_id="1", caption="c"),
            ["content.caption: audio messages cannot have one (only image, video and document)"],
        ),
        (
            Media("sticker", media_id="1", caption="c" * 2000, filename="s.webp"),
            [
                "content.caption: sticker messages cannot have one (only image, video and document)",
                "content.filename: sticker messages cannot have one (only document)",
            ],
        ),
        (
            Media("image", media_id="1", filename="a.png"),
            ["content.filename: image messages cannot have one (only document)"],
        ),
    ],
)
def test_media_problems(media, expected):
    assert problems(media) == expected


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "Order-Update",
            ["content.name: only lowercase letters, digits and '_' are allowed, got 'Order-Update'"],
        ),
        (
            "order update",
            ["content.name: only lowercase letters, digits and '_' are allowed, got 'order update'"],
        ),
        ("a" * 513, ["content.name: 513 characters, at most 512"]),
        ("", []),
    ],
)
def test_template_name(name, expected):
    assert problems(Template(name)) == expected


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en-US", "got 'en-US' (did you mean 'en_US'?)"),
        ("EN_us", "got 'EN_us' (did you mean 'en_US'?)"),
        ("EN", "got 'EN' (did you mean 'en'?)"),
        ("english", "got 'english'"),
        ("en_USA", "got 'en_USA'"),
    ],
)
def test_template_language(language, expected):
    assert problems(Template("t", language=language)) == [
        f"content.language: must be a language code like 'en' or 'en_US', {expected}"
    ]


@pytest.mark.parametrize("language", ["en", "en_US", "fil", "rw_RW", "zh_HK", "ky_KG"])
def test_spec_language_codes_pass(language):
    assert problems(Template("t", language=language)) == []


def test_header_takes_one_parameter_of_at_most_60_characters():
    assert problems(Template("t", header=["a", "b" * 61])) == [
        "content.header: 2 parameters, a template header takes at most 1",
        "content.header[1].text: 61 characters, at most 60",
    ]


def test_header_media_parameter_problems():
    header = [MediaParam(MediaKind.AUDIO, link="file:///a.mp3", media_id="1", filename="a.mp3")]
    assert problems(Template("t", header=header)) == [
        "content.header[0].kind: a template header takes an image, video or document, not audio",
        "content.header[0]: give exactly one of link or media_id",
        "content.header[0].link: must be an http(s) URL, got 'file:///a.mp3'",
        "content.header[0].filename: only a document has one, not audio",
    ]


def test_header_media_parameter_needs_a_source():
    assert problems(Template("t", header=[MediaParam(MediaKind.IMAGE)])) == [
        "content.header[0]: give exactly one of link or media_id"
    ]


def test_header_location_out_of_range():
    assert problems(Template("t", header=[LocationParam(91.5, -180.5)])) == [
        "content.header[0].latitude: must be between -90 and 90, got 91.5",
        "content.header[0].longitude: must be between -180 and 180, got -180.5",
    ]


def test_body_takes_no_media_or_location():
    body = ["ok", MediaParam(MediaKind.IMAGE, media_id="1"), LocationParam(0, 0)]
    assert problems(Template("t", body=body)) == [
        "content.body[1]: a template body takes text, currency and date_time parameters, not image",
        "content.body[2]: a template body takes text, currency and date_time parameters, not location",
    ]


def test_currency_code_is_iso_4217():
    assert problems(Template("t", body=[CurrencyParam("$1", "usd", 1000)])) == [
        "content.body[0].code: must be an ISO 4217 currency code like 'USD', got 'usd'"
    ]


def test_parameter_names():
    body = {"first_name": "a", "First Name": "b", "2nd": "c", "_ok_2": "d"}
    assert problems(Template("t", body=body)) == [
        "content.body[1].name: only lowercase letters, digits and '_' are allowed,"
        " starting with a letter or '_', got 'First Name'",
        "content.body[2].name: only lowercase letters, digits and '_' are allowed,"
        " starting with a letter or '_', got '2nd'",
    ]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("line\nbreak", "a new line"),
        ("carriage\rreturn", "a new line"),
        ("tab\there", "a tab"),
        ("five     spaces", "5 consecutive spaces"),
        ("a      b  \t     c\n", "a new line and a tab and 6 consecutive spaces"),
    ],
)
def test_whitespace_rule_132018(text, found):
    assert problems(Template("t", header=[text], body=[text])) == [
        f"content.header[0].text: contains {found}; {WHITESPACE_RULE}",
        f"content.body[0].text: contains {found}; {WHITESPACE_RULE}",
    ]


def test_body_text_limit_depends_on_other_components():
    long = "x" * 1025
    assert problems(Template("t", body=[long])) == []
    assert problems(Template("t", body=["x" * 32769])) == [
        "content.body[0].text: 32769 characters, at most 32768"
    ]
    assert problems(Template("t", header=["h"], body=[long])) == [
        "content.body[0].text: 1025 characters, at most 1024"
    ]
    assert problems(Template("t", body=[long], buttons=[TemplateButton("url", 0, "x")])) == [
        "content.body[0].text: 1025 characters, at most 1024"
    ]


def test_body_parameter_count_is_plausible():
    assert problems(Template("t", body=["x"] * 170)) == []
    assert problems(Template("t", body=["x"] * 171)) == [
        "content.body: 171 parameters, a template body (1024 characters at most) cannot hold more than 170"
    ]


def test_template_button_problems():
    buttons = [
        TemplateButton("quick_reply", 10, "p" * 257),
        TemplateButton("copy_code", 1, "c" * 16),
        TemplateButton("url", 2, "u" * 5000),
        TemplateButton("quick_reply", -1, "ok"),
    ]
    assert problems(Template("t", buttons=buttons)) == [
        "content.buttons[0].index: must be at most 9 (a template has at most 10 buttons), got 10",
        "content.buttons[0].value: 257 characters, at most 256",
        "content.buttons[1].value: 16 characters, at most 15",
    ]


# ---------------------------------------------------------------- interactive


def test_reply_button_problems():
    content = Buttons(
        "b" * 1025,
        [
            ReplyButton("i" * 257, "t" * 21),
            ReplyButton("", " "),
            ReplyButton("3", "Same"),
            ReplyButton("4", "Same"),
        ],
        header="h" * 61,
        footer="",
    )
    assert problems(content) == [
        "content.body: 1025 characters, at most 1024",
        "content.header: 61 characters, at most 60",
        "content.footer: must not be empty (leave it out instead)",
        "content.buttons: 4 buttons, at most 3",
        "content.buttons[0].id: 257 characters, at most 256",
        "content.buttons[0].title: 21 characters, at most 20",
        "content.buttons[1].id: must not be empty",
        "content.buttons[1].title: must not be empty",
        "content.buttons: titles must be unique, repeated: Same",
    ]


def test_list_problems():
    content = ListMenu(
        "Pick",
        "b" * 21,
        [
            ListSection([ListRow("i" * 201, "t" * 25, "d" * 73)], "s" * 25),
            ListSection([ListRow(str(i), "x", "") for i in range(10)]),
        ],
        header=" ",
        footer="f" * 61,
    )
    assert problems(content) == [
        "content.header: must not be empty (leave it out instead)",
        "content.footer: 61 characters, at most 60",
        "content.button: 21 characters, at most 20",
        "content.sections: 11 rows in total, at most 10",
        "content.sections[0].title: 25 characters, at most 24",
        "content.sections[0].rows[0].id: 201 characters, at most 200",
        "content.sections[0].rows[0].title: 25 characters, at most 24",
        "content.sections[0].rows[0].description: 73 characters, at most 72",
        "content.sections[1].title: required when there is more than one section",
        *[
            f"content.sections[1].rows[{i}].description: must not be empty (leave it out instead)"
            for i in range(10)
        ],
    ]


def test_list_section_count_and_empty_button():
    sections = [ListSection([ListRow(str(i), "x")], f"s{i}") for i in range(11)]
    assert problems(ListMenu("Pick", "", sections)) == [
        "content.button: must not be empty",
        "content.sections: 11 sections, at most 10",
        "content.sections: 11 rows in total, at most 10",
    ]


def test_single_section_needs_no_title():
    assert problems(ListMenu("Pick", "Open", one_section())) == []


def test_every_problem_at_once():
    message = Message(
        "+0123",
        Template(
            "Bad Name", language="en-gb", header=["a\tb"], buttons=[TemplateButton("copy_code", 12, "x" * 20)]
        ),
        id="i" * 600,
    )
    assert validate_message(message) == [
        "recipient: 4 digits, an E.164 number has 8 to 15 (country code included)",
        "id: 600 characters, at most 512 (it is sent as biz_opaque_callback_data)",
        "content.name: only lowercase letters, digits and '_' are allowed, got 'Bad Name'",
        "content.language: must be a language code like 'en' or 'en_US', got 'en-gb' (did you mean 'en_GB'?)",
        f"content.header[0].text: contains a tab; {WHITESPACE_RULE}",
        "content.buttons[0].index: must be at most 9 (a template has at most 10 buttons), got 12",
        "content.buttons[0].value: 20 characters, at most 15",
    ]


# ---------------------------------------------------------------- properties: lengths

# Visible characters only: whitespace would trip the "must not be empty" and 132018 rules.
VISIBLE = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))
NAME_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_")


def text_of_length(low, high, alphabet=VISIBLE):
    """Texts of ``low`` to ``high`` characters: a short random chunk repeated (fast for long texts)."""
    chunk = st.text(alphabet=alphabet, min_size=1, max_size=8)
    return st.tuples(chunk, st.integers(low, high)).map(lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]])


def make_message(content, **kwargs):
    return Message("+16505551234", content, **kwargs)


LIMITS = [
    pytest.param(lambda s: make_message(Text(s)), "content.body", 4096, id="text-body"),
    pytest.param(lambda s: make_message(Text("hi"), id=s), "id", 512, id="message-id"),
    pytest.param(
        lambda s: make_message(Media("video", media_id="1", caption=s)), "content.caption", 1024, id="caption"
    ),
    pytest.param(lambda s: make_message(Buttons(s, yes())), "content.body", 1024, id="interactive-body"),
    pytest.param(
        lambda s: make_message(Buttons("b", yes(), header=s)), "content.header", 60, id="buttons-header"
    ),
    pytest.param(
        lambda s: make_message(Buttons("b", yes(), footer=s)), "content.footer", 60, id="buttons-footer"
    ),
    pytest.param(
        lambda s: make_message(Buttons("b", [ReplyButton("y", s)])),
        "content.buttons[0].title",
        20,
        id="reply-title",
    ),
    pytest.param(
        lambda s: make_message(Buttons("b", [ReplyButton(s, "Y")])),
        "content.buttons[0].id",
        256,
        id="reply-id",
    ),
    pytest.param(
        lambda s: make_message(ListMenu("b", s, one_section())), "content.button", 20, id="list-button"
    ),
    pytest.param(
        lambda s: make_message(ListMenu("b", "o", one_section(), header=s)),
        "content.header",
        60,
        id="list-header",
    ),
    pytest.param(
        lambda s: make_message(ListMenu("b", "o", one_section(title=s))),
        "content.sections[0].title",
        24,
        id="section-title",
    ),
    pytest.param(
        lambda s: make_message(ListMenu("b", "o", one_section(ListRow("r", s)))),
        "content.sections[0].rows[0].title",
        24,
        id="row-title",
    ),
    pytest.param(
        lambda s: make_message(ListMenu("b", "o", one_section(ListRow(s, "t")))),
        "content.sections[0].rows[0].id",
        200,
        id="row-id",
    ),
    pytest.param(
        lambda s: make_message(ListMenu("b", "o", one_section(ListRow("r", "t", s)))),
        "content.sections[0].rows[0].description",
        72,
        id="row-description",
    ),
    pytest.param(
        lambda s: make_message(Template("t", header=[s])), "content.header[0].text", 60, id="header-param"
    ),
    pytest.param(
        lambda s: make_message(Template("t", header=["h"], body=[s])),
        "content.body[0].text",
        1024,
        id="body-param",
    ),
    pytest.param(
        lambda s: make_message(Template("t", body=[TextParam(s, name="n")])),
        "content.body[0].text",
        32768,
        id="body-only-param",
    ),
    pytest.param(
        lambda s: make_message(Template("t", buttons=[TemplateButton("quick_reply", 0, s)])),
        "content.buttons[0].value",
        256,
        id="quick-reply-payload",
    ),
    pytest.param(
        lambda s: make_message(Template("t", buttons=[TemplateButton("copy_code", 0, s)])),
        "content.buttons[0].value",
        15,
        id="coupon-code",
    ),
]


@settings(max_examples=25, deadline=None)
@pytest.mark.parametrize(("make", "field", "limit"), LIMITS)
@given(data=st.data())
def test_any_text_up_to_the_limit_passes(make, field, limit, data):
    text = data.draw(text_of_length(1, limit))
    assert validate_message(make(text)) == []


@settings(max_examples=25, deadline=None)
@pytest.mark.parametrize(("make", "field", "limit"), LIMITS)
@given(data=st.data())
def test_any_text_over_the_limit_fails_with_the_documented_message(make, field, limit, data):
    text = data.draw(text_of_length(limit + 1, 2 * limit + 10))
    why = " (it is sent as biz_opaque_callback_data)" if field == "id" else ""
    assert validate_message(make(text)) == [f"{field}: {len(text)} characters, at most {limit}{why}"]


@settings(max_examples=50, deadline=None)
@given(name=text_of_length(1, 600, NAME_CHARS))
def test_template_name_length(name):
    expected = [] if len(name) <= 512 else [f"content.name: {len(name)} characters, at most 512"]
    assert validate_message(make_message(Template(name))) == expected


# ---------------------------------------------------------------- properties: the 132018 whitespace rule

ALLOWED = st.text(
    st.characters(blacklist_characters="\n\r\t", blacklist_categories=("Cs",)), max_size=40
).filter(lambda s: "     " not in s)
FORBIDDEN = st.sampled_from(["\n", "\r", "\t", "\r\n"]) | st.integers(5, 20).map(lambda n: " " * n)


@settings(max_examples=200)
@given(text=ALLOWED)
def test_parameters_without_new_lines_tabs_or_long_runs_of_spaces_pass(text):
    assert validate_message(make_message(Template("t", header=[text[:60]], body=[text]))) == []


@settings(max_examples=200)
@given(before=ALLOWED, bad=FORBIDDEN, after=ALLOWED)
def test_parameters_with_new_lines_tabs_or_long_runs_of_spaces_fail(before, bad, after):
    [problem] = validate_message(make_message(Template("t", body=[before + bad + after])))
    assert problem.startswith("content.body[0].text: contains ")
    assert problem.endswith(f"; {WHITESPACE_RULE}")
    described = {"\n": "a new line", "\r": "a new line", "\r\n": "a new line", "\t": "a tab"}
    assert described.get(bad, "consecutive spaces") in problem
