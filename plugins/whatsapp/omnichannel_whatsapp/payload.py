"""Turn a ``Message`` into the JSON object the Cloud API's ``/{phone-number-id}/messages`` takes.

Every message gets the same envelope::

    {"messaging_product": "whatsapp", "recipient_type": "individual",
     "to": "16505551234", "type": "text", "text": {...},
     "context": {"message_id": "wamid..."},     # only when the message replies to another
     "biz_opaque_callback_data": "<idempotency key>"}

``biz_opaque_callback_data`` carries the message's idempotency key (its id unless
the caller gave a key) so that every status webhook of the message maps back to
it, even when the send's answer was lost (see ``StatusChanged.message_id``).
The object named after ``type`` is built by one small function per content
kind. Optional fields that are not set are left out, never sent as ``null``.

``build_payload`` does not check anything: ``validate_message`` (validation.py)
runs first, through the ``validate`` hook.
"""

from __future__ import annotations

import re
from typing import Any, assert_never

import attrs

from omnichannel import (
    Buttons,
    ButtonType,
    CurrencyParam,
    DateTimeParam,
    ListMenu,
    ListRow,
    ListSection,
    LocationParam,
    Media,
    MediaParam,
    Message,
    Param,
    ReplyButton,
    Template,
    TemplateButton,
    Text,
    TextParam,
)

__all__ = ["WhatsAppPayload", "build_payload"]

JSON = dict[str, Any]

_NOT_A_DIGIT = re.compile(r"[^0-9]")

_BUTTON_PARAMETER_TYPE = {
    ButtonType.QUICK_REPLY: "payload",
    ButtonType.URL: "text",
    ButtonType.COPY_CODE: "coupon_code",
}
"""Template button sub-type -> the type (and key) of its one parameter."""


@attrs.frozen
class WhatsAppPayload:
    """A built message: ``body`` is the exact JSON object to POST to ``/{phone-number-id}/messages``."""

    body: dict[str, Any]


def build_payload(message: Message) -> WhatsAppPayload:
    """Build the Cloud API request body for ``message`` (validated beforehand)."""
    kind, content = _content(message)
    body: JSON = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": _digits(message.recipient),
        "type": kind,
    }
    if message.reply_to is not None:
        body["context"] = {"message_id": message.reply_to}
    body["biz_opaque_callback_data"] = message.key
    body[kind] = content
    return WhatsAppPayload(body)


def _digits(recipient: str) -> str:
    """E.164 without the ``+`` (and without any separator a user may have typed)."""
    return _NOT_A_DIGIT.sub("", recipient)


def _content(message: Message) -> tuple[str, JSON]:
    """The message ``type`` and the object named after it."""
    content = message.content
    if isinstance(content, Text):
        return "text", {"body": content.body, "preview_url": content.preview_url}
    if isinstance(content, Media):
        return str(content.kind), _media(content)
    if isinstance(content, Template):
        return "template", _template(content)
    if isinstance(content, Buttons):
        return "interactive", _reply_buttons(content)
    if isinstance(content, ListMenu):
        return "interactive", _list_menu(content)
    assert_never(content)


def _without_none(**fields: Any) -> JSON:
    return {key: value for key, value in fields.items() if value is not None}


# ---------------------------------------------------------------- media


def _media(media: Media) -> JSON:
    source = {"link": media.url} if media.url is not None else {"id": media.media_id}
    return {**source, **_without_none(caption=media.caption, filename=media.filename)}


# ---------------------------------------------------------------- templates


def _template(template: Template) -> JSON:
    body: JSON = {"name": template.name, "language": {"code": template.language}}
    components = _components(template)
    if components:
        body["components"] = components
    return body


def _components(template: Template) -> list[JSON]:
    """Header, body and button components; a component without parameters is left out."""
    components = []
    if template.header:
        components.append({"type": "header", "parameters": [_parameter(p) for p in template.header]})
    if template.body:
        components.append({"type": "body", "parameters": [_parameter(p) for p in template.body]})
    components += [_template_button(button) for button in template.buttons]
    return components


def _parameter(param: Param) -> JSON:
    """One header or body parameter; a named one carries ``parameter_name``."""
    kind, value = _parameter_value(param)
    named = {} if param.name is None else {"parameter_name": param.name}
    if kind == "text":
        return {"type": "text", **named, "text": value}
    return {"type": kind, **named, kind: value}


def _parameter_value(param: Param) -> tuple[str, Any]:
    if isinstance(param, TextParam):
        return "text", param.text
    if isinstance(param, CurrencyParam):
        currency = {"fallback_value": param.fallback_value, "code": param.code}
        return "currency", {**currency, "amount_1000": param.amount_1000}
    if isinstance(param, DateTimeParam):
        return "date_time", {"fallback_value": param.fallback_value}
    if isinstance(param, MediaParam):
        return str(param.kind), _media_parameter(param)
    if isinstance(param, LocationParam):
        return "location", _location(param)
    assert_never(param)


def _media_parameter(param: MediaParam) -> JSON:
    source = {"link": param.link} if param.link is not None else {"id": param.media_id}
    return {**source, **_without_none(filename=param.filename)}


def _location(param: LocationParam) -> JSON:
    return {
        "latitude": param.latitude,
        "longitude": param.longitude,
        **_without_none(name=param.location_name, address=param.address),
    }


def _template_button(button: TemplateButton) -> JSON:
    kind = _BUTTON_PARAMETER_TYPE[button.sub_type]
    return {
        "type": "button",
        "sub_type": str(button.sub_type),
        # Meta's own examples send the index as a string.
        "index": str(button.index),
        "parameters": [{"type": kind, kind: button.value}],
    }


# ---------------------------------------------------------------- interactive


def _interactive(kind: str, body: str, header: str | None, footer: str | None, action: JSON) -> JSON:
    interactive: JSON = {"type": kind}
    if header is not None:
        interactive["header"] = {"type": "text", "text": header}
    interactive["body"] = {"text": body}
    if footer is not None:
        interactive["footer"] = {"text": footer}
    interactive["action"] = action
    return interactive


def _reply_buttons(content: Buttons) -> JSON:
    action = {"buttons": [_reply_button(button) for button in content.buttons]}
    return _interactive("button", content.body, content.header, content.footer, action)


def _reply_button(button: ReplyButton) -> JSON:
    return {"type": "reply", "reply": {"id": button.id, "title": button.title}}


def _list_menu(content: ListMenu) -> JSON:
    action = {"button": content.button, "sections": [_section(s) for s in content.sections]}
    return _interactive("list", content.body, content.header, content.footer, action)


def _section(section: ListSection) -> JSON:
    return {**_without_none(title=section.title), "rows": [_row(row) for row in section.rows]}


def _row(row: ListRow) -> JSON:
    return {"id": row.id, "title": row.title, **_without_none(description=row.description)}
