"""WhatsApp templates: ``check_template``, the pre-send check that a message fits its template."""

from __future__ import annotations

import pytest
from templates_support import KNOWN, ORDER_UPDATE, body, entry

from omnichannel import (
    CurrencyParam,
    DateTimeParam,
    LocationParam,
    MediaParam,
    Template,
    TemplateButton,
    TextParam,
)
from omnichannel_whatsapp.templates import check_template, parse_template


def url_button(index: int, value: str = "8899") -> TemplateButton:
    return TemplateButton("url", index, value)


GOOD_ORDER = Template(
    "order_update", header=["#8899"], body=["Pablo", "8899", "today"], buttons=[url_button(1)]
)


@pytest.mark.parametrize(
    "template",
    [
        GOOD_ORDER,
        Template(
            "order_update",
            language="pt_BR",
            header=["#8899"],
            body=["Pablo", CurrencyParam("$1", "USD", 1000), DateTimeParam("today")],
            buttons=[TemplateButton("quick_reply", 0, "stop-42"), url_button(1)],
        ),
        Template("shipping_named", header={"order": "8899"}, body={"order": "8899", "first_name": "Jessica"}),
        Template(
            "promo_image",
            header=[MediaParam("image", link="https://x.example/a.png")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20")],
        ),
        Template("store_location", header=[LocationParam(37.48, -122.14, "HQ")]),
        Template("video_tour", header=[MediaParam("video", media_id="123")]),
        Template("otp_code", body=["123456"], buttons=[url_button(0, "123456")]),
        Template("static_header"),
        Template("plain"),
    ],
    ids=lambda t: f"{t.name}-{t.language}",
)
def test_check_template_accepts_messages_that_fit(template):
    assert check_template(template, KNOWN) == []


NOT_FITTING = {
    "unknown name": (
        Template("order_updates"),
        [
            "content.name: no template 'order_updates' exists (known: order_update, otp_code, paused_promo, "
            "plain, promo_image, shipping_named, static_header, store_location, video_tour)"
        ],
    ),
    "unknown language": (
        Template("order_update", language="de", header=["#1"], body=["a", "b", "c"]),
        ["content.language: template 'order_update' exists in en_US, pt_BR, not in de"],
    ),
    "language differs only in case or region": (
        Template("plain", language="en"),
        ["content.language: template 'plain' exists in en_US, not in en"],
    ),
    "paused": (
        Template("paused_promo"),
        ["content.name: template 'paused_promo' (en_US) is PAUSED, only APPROVED templates can be sent"],
    ),
    "too few body parameters": (
        Template("order_update", header=["#1"], body=["Pablo", "8899"], buttons=[url_button(1)]),
        ["content.body: template 'order_update' (en_US) expects 3 positional parameters, got 2"],
    ),
    "too many body parameters": (
        Template("otp_code", body=["1", "2"], buttons=[url_button(0)]),
        ["content.body: template 'otp_code' (en_US) expects 1 positional parameter, got 2"],
    ),
    "body parameters for a fixed body": (
        Template("plain", body=["x"]),
        ["content.body: template 'plain' (en_US) takes no body parameters, got 1"],
    ),
    "named: missing and unknown names": (
        Template("shipping_named", header={"order": "1"}, body={"first_name": "Jo", "foo": "x"}),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order; "
            "missing: order; unknown: foo"
        ],
    ),
    "named: nothing given": (
        Template("shipping_named", header={"order": "1"}),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order; "
            "missing: first_name, order"
        ],
    ),
    "named: positional given": (
        Template("shipping_named", header={"order": "1"}, body=["Jo", "1"]),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order, "
            "got 2 positional parameters; give each value its name"
        ],
    ),
    "named: a mix given": (
        Template(
            "shipping_named", header={"order": "1"}, body=[TextParam("Jo", name="first_name"), TextParam("1")]
        ),
        [
            "content.body: template 'shipping_named' (en_US) expects named parameters first_name, order; "
            "missing: order; 1 value without a name"
        ],
    ),
    "positional: named given": (
        Template(
            "order_update",
            header=["#1"],
            body={"name": "Pablo", "order": "1", "when": "now"},
            buttons=[url_button(1)],
        ),
        [
            "content.body: template 'order_update' (en_US) expects 3 positional parameters, "
            "got named ones (name, order, when); send the values in order, without names"
        ],
    ),
    "text header: parameter missing": (
        Template("order_update", body=["Pablo", "8899", "today"], buttons=[url_button(1)]),
        ["content.header: template 'order_update' (en_US) expects 1 positional header parameter, got 0"],
    ),
    "text header: too many": (
        Template(
            "order_update", header=["#1", "#2"], body=["Pablo", "8899", "today"], buttons=[url_button(1)]
        ),
        ["content.header: template 'order_update' (en_US) expects 1 positional header parameter, got 2"],
    ),
    "text header: named header, wrong name": (
        Template("shipping_named", header={"order_id": "1"}, body={"first_name": "Jo", "order": "1"}),
        [
            "content.header: template 'shipping_named' (en_US) expects named header parameters order; "
            "missing: order; unknown: order_id"
        ],
    ),
    "text header: named header, positional given": (
        Template("shipping_named", header=["1"], body={"first_name": "Jo", "order": "1"}),
        [
            "content.header: template 'shipping_named' (en_US) expects named header parameters order, "
            "got 1 positional parameter; give each value its name"
        ],
    ),
    "text header: media given": (
        Template(
            "order_update",
            header=[MediaParam("image", link="https://x.example/a.png")],
            body=["Pablo", "8899", "today"],
            buttons=[url_button(1)],
        ),
        ["content.header: template 'order_update' (en_US) has a TEXT header, which takes text, got an image"],
    ),
    "text header: location given": (
        Template(
            "order_update",
            header=[LocationParam(1.0, 2.0)],
            body=["Pablo", "8899", "today"],
            buttons=[url_button(1)],
        ),
        [
            "content.header: template 'order_update' (en_US) has a TEXT header, "
            "which takes text, got a location"
        ],
    ),
    "fixed text header: parameter given": (
        Template("static_header", header=["x"]),
        ["content.header: template 'static_header' (en_US) takes no header parameters, got 1"],
    ),
    "no header: parameter given": (
        Template("plain", header=[MediaParam("document", link="https://x.example/a.pdf")]),
        ["content.header: template 'plain' (en_US) has no header, got 1 parameter"],
    ),
    "image header: missing": (
        Template("promo_image", body=["20%"], buttons=[TemplateButton("copy_code", 0, "SAVE20")]),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got none"
        ],
    ),
    "image header: video given": (
        Template(
            "promo_image",
            header=[MediaParam("video", media_id="1")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20")],
        ),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got a video"
        ],
    ),
    "image header: text given": (
        Template(
            "promo_image", header=["x"], body=["20%"], buttons=[TemplateButton("copy_code", 0, "SAVE20")]
        ),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got text"
        ],
    ),
    "image header: two given": (
        Template(
            "promo_image",
            header=[MediaParam("image", media_id="1"), MediaParam("image", media_id="2")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20")],
        ),
        [
            "content.header: template 'promo_image' (en_US) has an IMAGE header and needs an image "
            "parameter with every message, got 2 parameters"
        ],
    ),
    "video header: missing": (
        Template("video_tour"),
        [
            "content.header: template 'video_tour' (en_US) has a VIDEO header and needs a video "
            "parameter with every message, got none"
        ],
    ),
    "location header: image given": (
        Template("store_location", header=[MediaParam("image", media_id="1")]),
        [
            "content.header: template 'store_location' (en_US) has a LOCATION header and needs a location "
            "parameter with every message, got an image"
        ],
    ),
    "button: no such index": (
        Template("otp_code", body=["1"], buttons=[url_button(0), url_button(3)]),
        ["content.buttons[1]: template 'otp_code' (en_US) has no button at index 3 (it has 1 button)"],
    ),
    "button: template has none": (
        Template("plain", buttons=[TemplateButton("quick_reply", 0, "x")]),
        ["content.buttons[0]: template 'plain' (en_US) has no button at index 0 (it has no buttons)"],
    ),
    "button: phone number takes none": (
        Template(
            "promo_image",
            header=[MediaParam("image", media_id="1")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20"), url_button(1)],
        ),
        [
            "content.buttons[1]: template 'promo_image' (en_US) has a PHONE_NUMBER button at index 1, "
            "which takes no parameter"
        ],
    ),
    "button: URL without a variable takes none": (
        Template(
            "promo_image",
            header=[MediaParam("image", media_id="1")],
            body=["20%"],
            buttons=[TemplateButton("copy_code", 0, "SAVE20"), url_button(2)],
        ),
        [
            "content.buttons[1]: template 'promo_image' (en_US) has a URL button at index 2, "
            "which takes no parameter"
        ],
    ),
    "button: wrong sub_type": (
        Template(
            "order_update",
            header=["#1"],
            body=["Pablo", "8899", "today"],
            buttons=[url_button(0), url_button(1)],
        ),
        [
            "content.buttons[0]: template 'order_update' (en_US) has a QUICK_REPLY button at index 0, "
            "which takes a quick_reply parameter, not url"
        ],
    ),
    "button: URL variable missing": (
        Template("order_update", header=["#1"], body=["Pablo", "8899", "today"]),
        [
            "content.buttons: template 'order_update' (en_US) has a URL button at index 1, "
            "which needs a url parameter; none was given"
        ],
    ),
    "button: copy code missing": (
        Template("promo_image", header=[MediaParam("image", media_id="1")], body=["20%"]),
        [
            "content.buttons: template 'promo_image' (en_US) has a COPY_CODE button at index 0, "
            "which needs a copy_code parameter; none was given"
        ],
    ),
    "button: one-time password missing": (
        Template("otp_code", body=["123456"]),
        [
            "content.buttons: template 'otp_code' (en_US) has an OTP button at index 0, "
            "which needs a url parameter; none was given"
        ],
    ),
    "every problem at once, in field order": (
        Template(
            "order_update",
            header=[MediaParam("image", media_id="1")],
            body=["Pablo"],
            buttons=[TemplateButton("copy_code", 0, "x")],
        ),
        [
            "content.header: template 'order_update' (en_US) has a TEXT header, "
            "which takes text, got an image",
            "content.body: template 'order_update' (en_US) expects 3 positional parameters, got 1",
            "content.buttons[0]: template 'order_update' (en_US) has a QUICK_REPLY button at index 0, "
            "which takes a quick_reply parameter, not copy_code",
            "content.buttons: template 'order_update' (en_US) has a URL button at index 1, "
            "which needs a url parameter; none was given",
        ],
    ),
}


@pytest.mark.parametrize(("template", "problems"), NOT_FITTING.values(), ids=NOT_FITTING.keys())
def test_check_template_says_what_the_template_expects(template, problems):
    assert check_template(template, KNOWN) == problems


def test_check_template_still_checks_parameters_of_a_template_that_is_not_approved():
    known = [parse_template({**ORDER_UPDATE, "status": "REJECTED"})]
    assert check_template(
        Template("order_update", header=["#1"], body=["a"], buttons=[url_button(1)]), known
    ) == [
        "content.name: template 'order_update' (en_US) is REJECTED, only APPROVED templates can be sent",
        "content.body: template 'order_update' (en_US) expects 3 positional parameters, got 1",
    ]


def test_check_template_when_the_account_has_no_templates():
    assert check_template(Template("hello_world"), []) == [
        "content.name: no template 'hello_world' exists (the account has no templates)"
    ]


def test_check_template_lists_at_most_ten_known_names():
    known = [parse_template(entry(f"t{i:02}", body("x"))) for i in range(13)]
    assert check_template(Template("hello_world"), known) == [
        "content.name: no template 'hello_world' exists "
        "(known: t00, t01, t02, t03, t04, t05, t06, t07, t08, t09 and 3 more)"
    ]
