"""WhatsApp templates: ``parse_template`` reads the Graph API's template definitions."""

from __future__ import annotations

import re

import pytest
from templates_support import ORDER_UPDATE, PLAIN, SHIPPING_NAMED, STATIC_HEADER, body, buttons, entry

from omnichannel_whatsapp.templates import ButtonInfo, TemplateInfo, parse_template


def test_parse_template_reads_the_spec_example():
    assert parse_template(ORDER_UPDATE) == TemplateInfo(
        name="order_update",
        language="en_US",
        status="APPROVED",
        category="UTILITY",
        parameter_format="POSITIONAL",
        id="1192339204654487",
        header_format="TEXT",
        header_parameters=1,
        body_parameters=3,
        buttons=(ButtonInfo(0, "QUICK_REPLY", True), ButtonInfo(1, "URL", True)),
    )


def test_parse_template_reads_named_placeholders_in_order_without_repeats():
    info = parse_template(SHIPPING_NAMED)
    assert info.parameter_format == "NAMED"
    assert info.header_parameters == ("order",)
    assert info.body_parameters == ("first_name", "order")
    assert info.buttons == ()


def test_parse_template_counts_distinct_positional_placeholders():
    info = parse_template(entry("repeat", body("{{1}} and {{2}}, then {{1}} again ({{ 3 }})")))
    assert info.body_parameters == 3


@pytest.mark.parametrize("fmt", ["IMAGE", "VIDEO", "GIF", "DOCUMENT", "LOCATION"])
def test_parse_template_media_headers_take_no_text_placeholders(fmt):
    info = parse_template(entry("media", {"type": "HEADER", "format": fmt}, body("Hi")))
    assert (info.header_format, info.header_parameters, info.body_parameters) == (fmt, 0, 0)


def test_parse_template_without_header_or_with_a_fixed_one():
    assert parse_template(PLAIN).header_format is None
    fixed = parse_template(STATIC_HEADER)
    assert (fixed.header_format, fixed.header_parameters) == ("TEXT", 0)


def test_parse_template_reads_which_buttons_take_a_parameter():
    info = parse_template(
        entry(
            "all_buttons",
            body("Hi"),
            buttons(
                {"type": "QUICK_REPLY", "text": "Stop"},
                {"type": "URL", "text": "Track", "url": "https://x.example/{{1}}"},
                {"type": "URL", "text": "Home", "url": "https://x.example/"},
                {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550001111"},
                {"type": "COPY_CODE", "example": "SAVE20"},
                {"type": "FLOW", "text": "Book", "flow_id": "1"},
                {"type": "OTP", "otp_type": "ONE_TAP"},
                {"type": "VOICE_CALL", "text": "Call us"},
            ),
        )
    )
    assert info.buttons == (
        ButtonInfo(0, "QUICK_REPLY", True),
        ButtonInfo(1, "URL", True),
        ButtonInfo(2, "URL", False),
        ButtonInfo(3, "PHONE_NUMBER", False),
        ButtonInfo(4, "COPY_CODE", True),
        ButtonInfo(5, "FLOW", True),
        ButtonInfo(6, "OTP", True),
        ButtonInfo(7, "VOICE_CALL", False),
    )
    assert [b.requires_parameter for b in info.buttons] == [
        False,
        True,
        False,
        False,
        True,
        False,
        True,
        False,
    ]
    assert [b.sub_type for b in info.buttons] == [
        "quick_reply",
        "url",
        None,
        None,
        "copy_code",
        "flow",
        "url",
        None,
    ]
    index, kind, takes = info.buttons[1]
    assert (index, kind, takes) == (1, "URL", True)


def test_parse_template_infers_the_parameter_format_when_it_is_missing():
    named = {k: v for k, v in SHIPPING_NAMED.items() if k != "parameter_format"}
    positional = {k: v for k, v in ORDER_UPDATE.items() if k != "parameter_format"}
    assert parse_template(named).body_parameters == ("first_name", "order")
    assert parse_template(positional).body_parameters == 3


def test_parse_template_tolerates_sparse_entries():
    info = parse_template({"name": "bare", "language": "en"})
    assert info == TemplateInfo(name="bare", language="en", status="UNKNOWN")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"language": "en_US"}, "template entry without a name: {'language': 'en_US'}"),
        ({"name": "x"}, "template 'x' has no language"),
    ],
)
def test_parse_template_rejects_entries_without_name_or_language(data, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_template(data)
    assert str(info.value) == message
