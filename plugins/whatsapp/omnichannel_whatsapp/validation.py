"""What a message must look like for the WhatsApp Cloud API to accept it.

``validate_message`` returns every problem at once, each naming the field the
way the core does (``"content.body[1].text: ..."``), so that a caller can fix
them all in one go instead of discovering them one Graph error at a time.

The limits are the Cloud API's documented ones: message and caption lengths,
interactive counts and lengths, template name and language patterns, template
parameter lengths and the rule behind error 132018 (no new line, tab or more
than four consecutive spaces in a parameter value). Where Meta documents no
limit, none is checked.

The core's baseline ``validate`` hook already reports, for every channel,
an empty recipient, text or interactive body, template name or language,
mixed named and positional template parameters, repeated parameter names,
negative or repeated template button indexes, media without exactly one of
``url``/``media_id``, interactive content without choices, repeated choice
ids and empty list sections. The service concatenates the problems of every
``validate`` implementation, so those rules are not repeated here: each
problem would otherwise be listed twice.

Whether a template exists in the given language, and how many parameters of
which kind it takes, needs the approved definition; that check is not here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import assert_never
from urllib.parse import urlsplit

from omnichannel import (
    Buttons,
    ButtonType,
    CurrencyParam,
    DateTimeParam,
    ListMenu,
    ListSection,
    LocationParam,
    Media,
    MediaKind,
    MediaParam,
    Message,
    Param,
    Template,
    TemplateButton,
    Text,
    TextParam,
)

__all__ = ["validate_message"]

# ---------------------------------------------------------------- limits (spec sections 1 and 4)

TEXT_BODY_MAX = 4096
CAPTION_MAX = 1024
CALLBACK_DATA_MAX = 512
INTERACTIVE_BODY_MAX = 1024
INTERACTIVE_HEADER_MAX = 60
INTERACTIVE_FOOTER_MAX = 60
REPLY_BUTTONS_MAX = 3
REPLY_TITLE_MAX = 20
REPLY_ID_MAX = 256
LIST_BUTTON_MAX = 20
LIST_SECTIONS_MAX = 10
LIST_ROWS_MAX = 10
LIST_SECTION_TITLE_MAX = 24
LIST_ROW_TITLE_MAX = 24
LIST_ROW_ID_MAX = 200
LIST_ROW_DESCRIPTION_MAX = 72
TEMPLATE_NAME_MAX = 512
TEMPLATE_HEADER_PARAMS_MAX = 1
HEADER_TEXT_PARAM_MAX = 60
BODY_TEXT_PARAM_MAX = 1024
BODY_ONLY_TEXT_PARAM_MAX = 32768
TEMPLATE_BUTTON_INDEX_MAX = 9
QUICK_REPLY_PAYLOAD_MAX = 256
COUPON_CODE_MAX = 15
TEMPLATE_BODY_MAX = 1024
# A placeholder ("{{1}}", "{{a}}") takes at least 5 characters and needs text before,
# between and after placeholders, so a 1024-character body holds at most 170 of them.
BODY_PARAMS_MAX = (TEMPLATE_BODY_MAX - 1) // 6

_RECIPIENT = re.compile(r"\+?[0-9][0-9 ()\-]*")
"""Digits after an optional ``+``; spaces, hyphens and parentheses are tolerated, as Meta does
(the payload sends the digits alone)."""
_SEPARATORS = re.compile(r"[ ()\-]")
_RECIPIENT_DIGITS = (8, 15)
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_PARAMETER_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
_SPACES = re.compile(r" {5,}")

_CAPTIONED = frozenset({MediaKind.IMAGE, MediaKind.VIDEO, MediaKind.DOCUMENT})
_HEADER_MEDIA = _CAPTIONED


def validate_message(message: Message) -> list[str]:
    """Every reason the Cloud API would refuse ``message``, as ``"<field>: <what to fix>"`` lines."""
    problems = list(_recipient_problems(message.recipient))
    key_field = "idempotency_key" if message.idempotency_key else "id"
    problems += _too_long(
        key_field, message.key, CALLBACK_DATA_MAX, " (it is sent as biz_opaque_callback_data)"
    )
    problems += _content_problems(message)
    return problems


def _content_problems(message: Message) -> list[str]:
    content = message.content
    if isinstance(content, Text):
        return _too_long("content.body", content.body, TEXT_BODY_MAX)
    if isinstance(content, Media):
        return list(_media_problems(content))
    if isinstance(content, Template):
        return list(_template_problems(content))
    if isinstance(content, Buttons):
        return list(_buttons_problems(content))
    if isinstance(content, ListMenu):
        return list(_list_problems(content))
    assert_never(content)


# ---------------------------------------------------------------- shared checks


def _too_long(field: str, value: str, limit: int, why: str = "") -> list[str]:
    if len(value) <= limit:
        return []
    return [f"{field}: {len(value)} characters, at most {limit}{why}"]


def _text_problems(field: str, value: str, limit: int) -> list[str]:
    """A required short text: not empty, not too long."""
    if not value.strip():
        return [f"{field}: must not be empty"]
    return _too_long(field, value, limit)


def _optional_text_problems(field: str, value: str | None, limit: int) -> list[str]:
    if value is None:
        return []
    if not value.strip():
        return [f"{field}: must not be empty (leave it out instead)"]
    return _too_long(field, value, limit)


def _link_problems(field: str, link: str | None) -> list[str]:
    if link is None:
        return []
    parts = urlsplit(link)
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return []
    return [f"{field}: must be an http(s) URL, got {link!r}"]


def _recipient_problems(recipient: str) -> Iterator[str]:
    if not recipient:
        return  # the core reports an empty recipient
    if not _RECIPIENT.fullmatch(recipient):
        yield (
            f"recipient: must be an E.164 phone number such as +16505551234 (digits after an"
            f" optional '+'; spaces, hyphens and parentheses are ignored), got {recipient!r}"
        )
        return
    digits = _SEPARATORS.sub("", recipient.removeprefix("+"))
    low, high = _RECIPIENT_DIGITS
    if not low <= len(digits) <= high:
        yield f"recipient: {len(digits)} digits, an E.164 number has {low} to {high} (country code included)"
    elif digits.startswith("0"):
        yield "recipient: must start with the country calling code, not 0"


# ---------------------------------------------------------------- media


def _media_problems(media: Media) -> Iterator[str]:
    yield from _link_problems("content.url", media.url)
    if media.caption is not None:
        if media.kind in _CAPTIONED:
            yield from _too_long("content.caption", media.caption, CAPTION_MAX)
        else:
            yield f"content.caption: {media.kind} messages cannot have one (only image, video and document)"
    if media.filename is not None and media.kind is not MediaKind.DOCUMENT:
        yield f"content.filename: {media.kind} messages cannot have one (only document)"


# ---------------------------------------------------------------- templates


def _template_problems(template: Template) -> Iterator[str]:
    yield from _template_name_problems(template.name)
    yield from _language_problems(template.language)
    yield from _header_problems(template.header)
    text_max = BODY_TEXT_PARAM_MAX if template.header or template.buttons else BODY_ONLY_TEXT_PARAM_MAX
    yield from _body_problems(template.body, text_max)
    for i, button in enumerate(template.buttons):
        yield from _template_button_problems(f"content.buttons[{i}]", button)


def _template_name_problems(name: str) -> Iterator[str]:
    if not name.strip():
        return  # the core reports an empty name
    if not _TEMPLATE_NAME.fullmatch(name):
        yield f"content.name: only lowercase letters, digits and '_' are allowed, got {name!r}"
    yield from _too_long("content.name", name, TEMPLATE_NAME_MAX)


def _language_problems(language: str) -> Iterator[str]:
    if not language.strip() or _LANGUAGE.fullmatch(language):
        return  # the core reports an empty language
    lang, underscore, country = language.replace("-", "_").partition("_")
    guess = f"{lang.lower()}_{country.upper()}" if underscore else lang.lower()
    hint = f" (did you mean {guess!r}?)" if _LANGUAGE.fullmatch(guess) else ""
    yield f"content.language: must be a language code like 'en' or 'en_US', got {language!r}{hint}"


def _header_problems(header: Sequence[Param]) -> Iterator[str]:
    if len(header) > TEMPLATE_HEADER_PARAMS_MAX:
        yield f"content.header: {len(header)} parameters, a template header takes at most 1"
    for i, param in enumerate(header):
        yield from _param_problems(f"content.header[{i}]", param, HEADER_TEXT_PARAM_MAX)


def _body_problems(body: Sequence[Param], text_max: int) -> Iterator[str]:
    if len(body) > BODY_PARAMS_MAX:
        yield (
            f"content.body: {len(body)} parameters, a template body"
            f" ({TEMPLATE_BODY_MAX} characters at most) cannot hold more than {BODY_PARAMS_MAX}"
        )
    for i, param in enumerate(body):
        field = f"content.body[{i}]"
        if isinstance(param, MediaParam | LocationParam):
            kind = "location" if isinstance(param, LocationParam) else param.kind
            yield f"{field}: a template body takes text, currency and date_time parameters, not {kind}"
        else:
            yield from _param_problems(field, param, text_max)


def _param_problems(field: str, param: Param, text_max: int) -> Iterator[str]:
    if param.name is not None and not _PARAMETER_NAME.fullmatch(param.name):
        yield (
            f"{field}.name: only lowercase letters, digits and '_' are allowed,"
            f" starting with a letter or '_', got {param.name!r}"
        )
    if isinstance(param, TextParam):
        yield from _too_long(f"{field}.text", param.text, text_max)
        yield from _whitespace_problems(f"{field}.text", param.text)
    elif isinstance(param, CurrencyParam):
        if not _CURRENCY_CODE.fullmatch(param.code):
            yield f"{field}.code: must be an ISO 4217 currency code like 'USD', got {param.code!r}"
    elif isinstance(param, DateTimeParam):
        pass
    elif isinstance(param, MediaParam):
        yield from _media_param_problems(field, param)
    elif isinstance(param, LocationParam):
        yield from _location_problems(field, param)
    else:
        assert_never(param)


def _whitespace_problems(field: str, text: str) -> Iterator[str]:
    """The Cloud API rejects such parameter values with error 132018."""
    found = []
    if "\n" in text or "\r" in text:
        found.append("a new line")
    if "\t" in text:
        found.append("a tab")
    runs = _SPACES.findall(text)
    if runs:
        found.append(f"{max(map(len, runs))} consecutive spaces")
    if found:
        yield (
            f"{field}: contains {' and '.join(found)}; template parameters cannot contain"
            " new lines, tabs or more than 4 consecutive spaces"
        )


def _media_param_problems(field: str, param: MediaParam) -> Iterator[str]:
    if param.kind not in _HEADER_MEDIA:
        yield f"{field}.kind: a template header takes an image, video or document, not {param.kind}"
    if (param.link is None) == (param.media_id is None):
        yield f"{field}: give exactly one of link or media_id"
    yield from _link_problems(f"{field}.link", param.link)
    if param.filename is not None and param.kind != MediaKind.DOCUMENT:
        yield f"{field}.filename: only a document has one, not {param.kind}"


def _location_problems(field: str, param: LocationParam) -> Iterator[str]:
    if not -90 <= param.latitude <= 90:
        yield f"{field}.latitude: must be between -90 and 90, got {param.latitude}"
    if not -180 <= param.longitude <= 180:
        yield f"{field}.longitude: must be between -180 and 180, got {param.longitude}"


def _template_button_problems(field: str, button: TemplateButton) -> Iterator[str]:
    if button.index > TEMPLATE_BUTTON_INDEX_MAX:
        yield (
            f"{field}.index: must be at most {TEMPLATE_BUTTON_INDEX_MAX}"
            f" (a template has at most 10 buttons), got {button.index}"
        )
    if button.sub_type is ButtonType.QUICK_REPLY:
        yield from _too_long(f"{field}.value", button.value, QUICK_REPLY_PAYLOAD_MAX)
    elif button.sub_type is ButtonType.COPY_CODE:
        yield from _too_long(f"{field}.value", button.value, COUPON_CODE_MAX)


# ---------------------------------------------------------------- interactive


def _interactive_problems(body: str, header: str | None, footer: str | None) -> Iterator[str]:
    yield from _too_long("content.body", body, INTERACTIVE_BODY_MAX)
    yield from _optional_text_problems("content.header", header, INTERACTIVE_HEADER_MAX)
    yield from _optional_text_problems("content.footer", footer, INTERACTIVE_FOOTER_MAX)


def _buttons_problems(content: Buttons) -> Iterator[str]:
    yield from _interactive_problems(content.body, content.header, content.footer)
    if len(content.buttons) > REPLY_BUTTONS_MAX:
        yield f"content.buttons: {len(content.buttons)} buttons, at most {REPLY_BUTTONS_MAX}"
    for i, button in enumerate(content.buttons):
        yield from _text_problems(f"content.buttons[{i}].id", button.id, REPLY_ID_MAX)
        yield from _text_problems(f"content.buttons[{i}].title", button.title, REPLY_TITLE_MAX)
    titles = [button.title for button in content.buttons]
    repeated = sorted({title for title in titles if titles.count(title) > 1})
    if repeated:
        yield f"content.buttons: titles must be unique, repeated: {', '.join(repeated)}"


def _list_problems(content: ListMenu) -> Iterator[str]:
    yield from _interactive_problems(content.body, content.header, content.footer)
    yield from _text_problems("content.button", content.button, LIST_BUTTON_MAX)
    sections = content.sections
    if len(sections) > LIST_SECTIONS_MAX:
        yield f"content.sections: {len(sections)} sections, at most {LIST_SECTIONS_MAX}"
    rows = sum(len(section.rows) for section in sections)
    if rows > LIST_ROWS_MAX:
        yield f"content.sections: {rows} rows in total, at most {LIST_ROWS_MAX}"
    for i, section in enumerate(sections):
        yield from _section_problems(f"content.sections[{i}]", section, titled=len(sections) > 1)


def _section_problems(field: str, section: ListSection, *, titled: bool) -> Iterator[str]:
    if section.title is None:
        if titled:
            yield f"{field}.title: required when there is more than one section"
    else:
        yield from _text_problems(f"{field}.title", section.title, LIST_SECTION_TITLE_MAX)
    for j, row in enumerate(section.rows):
        yield from _text_problems(f"{field}.rows[{j}].id", row.id, LIST_ROW_ID_MAX)
        yield from _text_problems(f"{field}.rows[{j}].title", row.title, LIST_ROW_TITLE_MAX)
        yield from _optional_text_problems(
            f"{field}.rows[{j}].description", row.description, LIST_ROW_DESCRIPTION_MAX
        )
