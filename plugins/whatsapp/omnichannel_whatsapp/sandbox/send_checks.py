"""The checks of a send body (``POST /{pnid}/messages``), each raising the first error Graph would give.

* the readers of nested parameters (``_object``, ``_string``, ``_list``,
  ``_number``, ``_length``), which name a parameter by its full path;
* the envelope (``messaging_product``, ``recipient_type``, ``type``, ``context``,
  ``biz_opaque_callback_data``) and the recipient (``to`` or ``recipient``);
* the object named after each free-form type: text, media (image, video, audio,
  document, sticker), location, contacts, reaction and interactive, with the
  lengths and counts of the shared WhatsApp spec (sections 1 and 4).

Templates are checked against the state's definitions in ``template_checks``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple, overload

from .graph_errors import (
    GraphError,
    _invalid,
    _missing,
    _not_valid,
    _one_of,
    _path,
    _required,
    _too_long,
    _wrong_type,
)
from .state import SandboxState

__all__ = ["CALLBACK_DATA_MAX", "CAPTION_MAX", "INTERACTIVE_TYPES", "MESSAGE_TYPES", "TEXT_BODY_MAX"]

# ---------------------------------------------------------------- reading parameters


def _length(what: str, value: str, low: int, high: int) -> None:
    """WhatsApp's length check of interactive texts: 131009 ``<What> length invalid``."""
    if not low <= len(value) <= high:
        raise _not_valid(f"{what} length invalid. Min length: {low}, Max length: {high}")


@overload
def _object(parent: Mapping[str, Any], *keys: str | int) -> Mapping[str, Any]: ...
@overload
def _object(parent: Mapping[str, Any], *keys: str | int, required: bool) -> Mapping[str, Any] | None: ...
def _object(parent: Mapping[str, Any], *keys: str | int, required: bool = True) -> Mapping[str, Any] | None:
    """The JSON object at ``parent[keys[-1]]``; ``keys`` is its full path, for the error."""
    value = parent.get(str(keys[-1]))
    if value is None:
        if required:
            raise _required(*keys)
        return None
    if not isinstance(value, dict):
        raise _wrong_type(keys, "a JSON object")
    return value


@overload
def _string(parent: Mapping[str, Any], *keys: str | int) -> str: ...
@overload
def _string(parent: Mapping[str, Any], *keys: str | int, required: bool) -> str | None: ...
def _string(parent: Mapping[str, Any], *keys: str | int, required: bool = True) -> str | None:
    """The string at ``parent[keys[-1]]``; an empty string counts as missing."""
    value = parent.get(str(keys[-1]))
    if value is None or value == "":
        if required:
            raise _required(*keys)
        return None
    if not isinstance(value, str):
        raise _wrong_type(keys, "a string")
    return value


def _list(parent: Mapping[str, Any], *keys: str | int) -> list[Any]:
    value = parent.get(str(keys[-1]))
    if value is None or value == []:
        raise _required(*keys)
    if not isinstance(value, list):
        raise _wrong_type(keys, "an array")
    return value


def _number(parent: Mapping[str, Any], *keys: str | int) -> float:
    value = parent.get(str(keys[-1]))
    if value is None:
        raise _required(*keys)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _wrong_type(keys, "a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(keys, "a number")
    return float(value)


# ---------------------------------------------------------------- the send envelope

MESSAGE_TYPES: Final = frozenset(
    {
        "audio",
        "contacts",
        "document",
        "image",
        "interactive",
        "location",
        "reaction",
        "sticker",
        "template",
        "text",
        "video",
    }
)
_MESSAGE_TYPE_LIST = ", ".join(sorted(kind.upper() for kind in MESSAGE_TYPES))
TEXT_BODY_MAX: Final = 4096
CAPTION_MAX: Final = 1024
CALLBACK_DATA_MAX: Final = 512
_PHONE_SEPARATORS = re.compile(r"[\s+\-().]")
_DIGITS = re.compile(r"[0-9]{1,15}")
_BSUID = re.compile(r"[A-Z]{2}\.(ENT\.)?[0-9A-Za-z]+")


class _Recipient(NamedTuple):
    input: object
    """``to`` (or ``recipient``) exactly as sent."""
    key: str
    """The digits (``wa_id``), or the business-scoped user id."""
    is_user_id: bool


def _recipient(state: SandboxState, body: Mapping[str, Any]) -> _Recipient:
    to = body.get("to")
    if to is None or to == "":
        user_id = body.get("recipient")
        if user_id is None or user_id == "":
            raise _required("to")
        if not isinstance(user_id, str) or not _BSUID.fullmatch(user_id):
            raise _invalid(
                "Param recipient must be a business-scoped user id such as US.13491208655302741,"
                f" got {user_id!r}"
            )
        return _Recipient(user_id, user_id, True)
    if isinstance(to, bool) or not isinstance(to, str | int):
        raise _wrong_type(["to"], "a string")
    digits = _PHONE_SEPARATORS.sub("", str(to))
    if not _DIGITS.fullmatch(digits):
        raise _invalid(
            f"Param to must be a phone number with its country code, such as 16505551234, got {to!r}"
        )
    if digits == _PHONE_SEPARATORS.sub("", state.settings.display_phone_number):
        raise GraphError(131021)
    return _Recipient(to, digits, False)


def _check_envelope(body: Mapping[str, Any]) -> str:
    """The top-level parameters of a send; returns its ``type``."""
    product = body.get("messaging_product")
    if product is None or product == "":
        raise _required("messaging_product")
    if product != "whatsapp":
        raise _one_of(["messaging_product"], ["whatsapp"], product)
    recipient_type = body.get("recipient_type")
    if recipient_type is not None and recipient_type not in ("individual", "group"):
        raise _one_of(["recipient_type"], ["individual", "group"], recipient_type)
    kind = body.get("type", "text")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise GraphError(
            100,
            f'(#100) Param type must be one of {{{_MESSAGE_TYPE_LIST}}} - got "{kind}".',
        )
    context = body.get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise _wrong_type(["context"], "a JSON object")
        _string(context, "context", "message_id")
    callback = body.get("biz_opaque_callback_data")
    if callback is not None:
        if not isinstance(callback, str):
            raise _wrong_type(["biz_opaque_callback_data"], "a string")
        if len(callback) > CALLBACK_DATA_MAX:
            raise _too_long(["biz_opaque_callback_data"], CALLBACK_DATA_MAX)
    return kind


# ---------------------------------------------------------------- free-form contents

_CAPTIONED = frozenset({"image", "video", "document"})


def _check_text(body: Mapping[str, Any]) -> None:
    text = _object(body, "text", required=False)
    if text is None:
        raise _required("text", "body")
    value = _string(text, "text", "body")
    if len(value) > TEXT_BODY_MAX:
        raise _too_long(["text", "body"], TEXT_BODY_MAX)
    preview = text.get("preview_url")
    if preview is not None and not isinstance(preview, bool):
        raise _wrong_type(["text", "preview_url"], "a boolean")


def _check_media_source(media: Mapping[str, Any], keys: Sequence[str | int]) -> None:
    """Exactly one of ``id`` (an uploaded media) and ``link`` (an http(s) URL)."""
    media_id, link = media.get("id"), media.get("link")
    has_id, has_link = media_id not in (None, ""), link not in (None, "")
    where = _path(*keys)
    if has_id and has_link:
        raise _invalid(f"Param {where} must contain either id or link, not both")
    if not has_id and not has_link:
        raise _missing(f"Param {where} requires either id or link")
    if has_id and (isinstance(media_id, bool) or not isinstance(media_id, str | int)):
        raise _wrong_type([*keys, "id"], "a string")
    if has_link:
        if not isinstance(link, str):
            raise _wrong_type([*keys, "link"], "a string")
        scheme, _, rest = link.partition("://")
        if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
            raise _not_valid(f"Param {_path(*keys, 'link')} must be a valid http(s) URL, got {link!r}")


def _check_media(kind: str, body: Mapping[str, Any]) -> None:
    media = _object(body, kind)
    _check_media_source(media, [kind])
    for key in ("caption", "filename"):
        value = media.get(key)
        if value is None:
            continue
        allowed = kind in _CAPTIONED if key == "caption" else kind == "document"
        if not allowed:
            raise GraphError(100, f'(#100) Unexpected key "{key}" on param "{kind}".')
        if not isinstance(value, str):
            raise _wrong_type([kind, key], "a string")
        if key == "caption" and len(value) > CAPTION_MAX:
            raise _too_long([kind, "caption"], CAPTION_MAX)


def _check_location(body: Mapping[str, Any]) -> None:
    location = _object(body, "location")
    latitude = _number(location, "location", "latitude")
    longitude = _number(location, "location", "longitude")
    if not -90 <= latitude <= 90 or not -180 <= longitude <= 180:
        raise _not_valid(
            "Param location must have a latitude between -90 and 90 and a longitude between -180 and 180"
        )


def _check_contacts(body: Mapping[str, Any]) -> None:
    contacts = _list(body, "contacts")
    for i, contact in enumerate(contacts):
        if not isinstance(contact, dict):
            raise _wrong_type(["contacts", i], "a JSON object")
        name = _object(contact, "contacts", i, "name")
        _string(name, "contacts", i, "name", "formatted_name")


def _check_reaction(body: Mapping[str, Any]) -> None:
    reaction = _object(body, "reaction")
    _string(reaction, "reaction", "message_id")
    emoji = reaction.get("emoji")
    if emoji is not None and not isinstance(emoji, str):
        raise _wrong_type(["reaction", "emoji"], "a string")


# ---------------------------------------------------------------- interactive

INTERACTIVE_TYPES: Final = frozenset(
    {
        "address_message",
        "button",
        "call_permission_request",
        "carousel",
        "catalog_message",
        "cta_url",
        "flow",
        "list",
        "location_request_message",
        "product",
        "product_list",
        "voice_call",
    }
)
_NEEDS_BODY = frozenset({"button", "list", "cta_url", "flow", "location_request_message", "address_message"})
_HEADER_TYPES = frozenset({"text", "image", "video", "document"})


def _check_interactive(body: Mapping[str, Any]) -> None:
    interactive = _object(body, "interactive")
    kind = _string(interactive, "interactive", "type")
    if kind not in INTERACTIVE_TYPES:
        raise _one_of(["interactive", "type"], sorted(INTERACTIVE_TYPES), kind)
    header = _object(interactive, "interactive", "header", required=False)
    if header is not None:
        _check_interactive_header(kind, header)
    content = _object(interactive, "interactive", "body", required=kind in _NEEDS_BODY)
    if content is not None:
        text = _string(content, "interactive", "body", "text", required=kind in _NEEDS_BODY)
        if text is not None:
            _length("Body text", text, 1, 1024)
    footer = _object(interactive, "interactive", "footer", required=False)
    if footer is not None:
        footer_text = _string(footer, "interactive", "footer", "text")
        _length("Footer text", footer_text, 1, 60)
    action = _object(interactive, "interactive", "action", required=kind not in ("location_request_message",))
    if action is None:
        return
    if kind == "button":
        _check_reply_buttons(action)
    elif kind == "list":
        _check_list(action)
    elif kind in ("cta_url", "flow"):
        _check_named_action(kind, action)


def _check_interactive_header(kind: str, header: Mapping[str, Any]) -> None:
    header_type = _string(header, "interactive", "header", "type")
    if header_type not in _HEADER_TYPES:
        raise _one_of(["interactive", "header", "type"], sorted(_HEADER_TYPES), header_type)
    if header_type == "text":
        text = _string(header, "interactive", "header", "text")
        _length("Header text", text, 1, 60)
        return
    if kind == "list":
        raise _not_valid(f"Header type must be text for a list message, got {header_type}")
    media = _object(header, "interactive", "header", header_type)
    _check_media_source(media, ["interactive", "header", header_type])


def _check_reply_buttons(action: Mapping[str, Any]) -> None:
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise _not_valid("Invalid buttons count. Min allowed buttons: 1, Max allowed buttons: 3")
    ids: set[str] = set()
    titles: set[str] = set()
    for i, button in enumerate(buttons):
        keys: list[str | int] = ["interactive", "action", "buttons", i]
        if not isinstance(button, dict):
            raise _wrong_type(keys, "a JSON object")
        button_type = _string(button, *keys, "type")
        if button_type != "reply":
            raise _one_of([*keys, "type"], ["reply"], button_type)
        reply = _object(button, *keys, "reply")
        title = _string(reply, *keys, "reply", "title")
        button_id = _string(reply, *keys, "reply", "id")
        _length("Button title", title, 1, 20)
        _length("Button id", button_id, 1, 256)
        if button_id in ids:
            raise _not_valid(f"Button id is not unique: {button_id}")
        if title in titles:
            raise _not_valid(f"Button title is not unique: {title}")
        ids.add(button_id)
        titles.add(title)


def _check_list(action: Mapping[str, Any]) -> None:
    button = _string(action, "interactive", "action", "button")
    _length("Button text", button, 1, 20)
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
        raise _not_valid("Invalid sections count. Min allowed sections: 1, Max allowed sections: 10")
    rows_total = 0
    row_ids: set[str] = set()
    for i, section in enumerate(sections):
        keys: list[str | int] = ["interactive", "action", "sections", i]
        if not isinstance(section, dict):
            raise _wrong_type(keys, "a JSON object")
        title = _string(section, *keys, "title", required=len(sections) > 1)
        if title is not None:
            _length("Section title", title, 1, 24)
        rows = _list(section, *keys, "rows")
        rows_total += len(rows)
        if rows_total > 10:
            raise _not_valid("Total row count exceed max allowed count: 10")
        for j, row in enumerate(rows):
            row_keys: list[str | int] = [*keys, "rows", j]
            if not isinstance(row, dict):
                raise _wrong_type(row_keys, "a JSON object")
            row_id = _string(row, *row_keys, "id")
            row_title = _string(row, *row_keys, "title")
            _length("Row id", row_id, 1, 200)
            _length("Row title", row_title, 1, 24)
            description = _string(row, *row_keys, "description", required=False)
            if description is not None:
                _length("Row description", description, 0, 72)
            if row_id in row_ids:
                raise _not_valid(f"Row id is not unique: {row_id}")
            row_ids.add(row_id)


def _check_named_action(kind: str, action: Mapping[str, Any]) -> None:
    name = _string(action, "interactive", "action", "name")
    if name != kind:
        raise _one_of(["interactive", "action", "name"], [kind], name)
    parameters = _object(action, "interactive", "action", "parameters")
    if kind == "cta_url":
        display = _string(parameters, "interactive", "action", "parameters", "display_text")
        url = _string(parameters, "interactive", "action", "parameters", "url")
        _length("Display text", display, 1, 20)
        if not url.lower().startswith(("http://", "https://")):
            raise _not_valid(
                f"Param interactive['action']['parameters']['url'] must be a valid http(s) URL, got {url!r}"
            )
    else:
        cta = _string(parameters, "interactive", "action", "parameters", "flow_cta")
        _length("Flow CTA", cta, 1, 20)
        if parameters.get("flow_id") in (None, "") and parameters.get("flow_name") in (None, ""):
            raise _required("interactive", "action", "parameters", "flow_id")
