"""The Graph API side of the sandbox: the routes a WhatsApp client calls, answered as Meta answers them.

``graph_routes(state)`` returns aiohttp routes, all under ``/{vX.Y}/``:

=======  ==============================  ============================================================
POST     ``/{pnid}/messages``            send a message (or mark one read); Meta's success shape
POST     ``/{pnid}/media``               upload media (multipart: messaging_product, type, file)
GET      ``/{waba}/message_templates``   list templates: ``limit``, ``after``/``before``, ``fields``,
                                         filters ``name``, ``status``, ``category``, ``language``,
                                         ``content``, ``name_or_content``, ``quality_score``; ``summary``
GET      ``/{id}``                       the phone number, the account, an uploaded media or a template
DELETE   ``/{media-id}``                 forget an uploaded media
GET      ``/{media-id}/download``        the bytes of an uploaded media (the ``url`` a media GET gives)
any      anything else under ``/vX.Y/``  Graph's errors for unknown objects and path components
=======  ==============================  ============================================================

Every request needs the sandbox's token (``Authorization: Bearer``, or Graph's
``access_token`` query parameter). Every error is Meta's envelope (shared
WhatsApp spec, section 3)::

    {"error": {"message": "(#132001) Template name does not exist in the translation",
               "type": "OAuthException", "code": 132001,
               "error_data": {"messaging_product": "whatsapp",
                              "details": "template name (x) does not exist in en_US"},
               "fbtrace_id": "A3kQ..."}}

A send is checked the way the Cloud API checks it, one error at a time: the
envelope (``messaging_product``, ``to``, ``type``), the object named after the
type (lengths and counts of sections 1 and 4), a template against the state's
templates (132001, 132015, 132016, 132012, 132000, 131008, 132018), then the
rate limits (130429, 131056). An accepted message goes to ``state.accept``.

``state.counters`` counts ``requests`` (every Graph request), ``accepted`` (by
``state.accept``) and ``error.<code>`` (every error answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import string
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple, overload

import aiohttp
from aiohttp import web

from .limits import Limits
from .state import SandboxState

__all__ = [
    "ERRORS",
    "GraphError",
    "MediaStore",
    "StoredMedia",
    "graph_error_response",
    "graph_routes",
    "new_fbtrace_id",
]

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION: Final = r"{version:v\d+\.\d+}"
"""The version segment of every route: any ``vX.Y``."""

GRAPH_DOCS: Final = (
    "Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"
)

ERRORS: Mapping[int, tuple[int, str]] = {
    # Graph platform errors.
    1: (400, "An unknown error occurred"),
    2: (503, "An unexpected error has occurred. Please retry your request later."),
    4: (400, "(#4) Application request limit reached"),
    10: (403, "(#10) Application does not have permission for this action"),
    100: (400, "(#100) Invalid parameter"),
    104: (401, "An access token is required to request this resource."),
    190: (401, "Invalid OAuth access token - Cannot parse access token"),
    200: (403, "(#200) Permissions error"),
    368: (403, "(#368) Temporarily blocked for policies violations"),
    2500: (400, "Unknown path components"),
    80007: (400, "(#80007) Rate limit issues"),
    # WhatsApp Cloud API errors (titles of Meta's error-code table).
    130429: (400, "(#130429) Rate limit hit"),
    130472: (400, "(#130472) User's number is part of an experiment"),
    131000: (500, "(#131000) Something went wrong"),
    131005: (403, "(#131005) Access denied"),
    131008: (400, "(#131008) Required parameter is missing"),
    131009: (400, "(#131009) Parameter value is not valid"),
    131016: (500, "(#131016) Service unavailable"),
    131021: (400, "(#131021) Recipient cannot be sender"),
    131026: (400, "(#131026) Message undeliverable"),
    131030: (400, "(#131030) Recipient phone number not in allowed list"),
    131031: (403, "(#131031) Business Account locked"),
    131042: (400, "(#131042) Business eligibility payment issue"),
    131045: (500, "(#131045) Incorrect certificate"),
    131047: (400, "(#131047) Re-engagement message"),
    131048: (400, "(#131048) Spam rate limit hit"),
    131049: (400, "(#131049) This message was not delivered to maintain healthy ecosystem engagement."),
    131050: (400, "(#131050) User has stopped marketing messages"),
    131051: (400, "(#131051) Unsupported message type"),
    131052: (400, "(#131052) Media download error"),
    131053: (400, "(#131053) Media upload error"),
    131056: (400, "(#131056) (Business Account, Consumer Account) pair rate limit hit"),
    131057: (500, "(#131057) Account in maintenance mode"),
    132000: (400, "(#132000) Number of parameters does not match the expected number of params"),
    132001: (404, "(#132001) Template name does not exist in the translation"),
    132005: (400, "(#132005) Translated text too long"),
    132007: (400, "(#132007) Template Format Character Policy Violated"),
    132012: (400, "(#132012) Parameter format does not match format in the created template"),
    132015: (400, "(#132015) Template is Paused"),
    132016: (400, "(#132016) Template is Disabled"),
    132018: (400, "(#132018) There's an issue with the parameters in your template"),
    132068: (400, "(#132068) Flow is in blocked state"),
    132069: (400, "(#132069) Flow is in throttled state"),
    133000: (500, "(#133000) Incomplete deregistration"),
    133004: (503, "(#133004) Server Temporarily Unavailable"),
    133010: (400, "(#133010) Account not registered"),
    135000: (400, "(#135000) Generic user error"),
}
"""Graph ``error.code`` -> (HTTP status of Meta's table, default ``message``)."""

DETAILS: Mapping[int, str] = {
    130429: "Cloud API message throughput has been reached.",
    131000: "Something went wrong. Please try again later.",
    131016: "A service is temporarily unavailable.",
    131021: "Sender and recipient phone number is the same.",
    131026: "Unable to deliver message.",
    131047: (
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number."
    ),
    131048: "Message failed to send because there are restrictions on how many messages can be sent.",
    131056: (
        "Message failed to send because there were too many messages sent from this phone number "
        "to the same phone number in a short period of time."
    ),
    131057: "Business Account is in maintenance mode.",
    132015: "Template is paused due to low quality so it cannot be sent in a template message.",
    132016: ("Template has been paused too many times due to low quality and is now permanently disabled."),
}
"""Default ``error_data.details`` of the codes whose envelope Meta always details."""

_TRACE_ALPHABET = string.ascii_letters + string.digits + "-_"
_TRACE_LENGTH = 23


def new_fbtrace_id(state: SandboxState) -> str:
    """A random trace id shaped like Meta's (23 characters), drawn from ``state.rng``."""
    return "".join(state.rng.choices(_TRACE_ALPHABET, k=_TRACE_LENGTH))


class GraphError(Exception):
    """A Graph API error answer: raise it in a handler, or render it with ``response``.

    :param code: Graph's ``error.code``.
    :param message: ``error.message``; default: the code's title in ``ERRORS``.
    :param details: ``error_data.details``; WhatsApp codes (13xxxx) always carry
        ``error_data`` (``DETAILS`` fills in a default), others only when given.
    :param status: the HTTP status; default: the code's status in ``ERRORS`` (else 400).
    :param subcode: ``error.error_subcode``, when the error has one.
    :param error_type: ``error.type``: ``OAuthException``, or ``GraphMethodException``
        for an unknown object.
    :param is_transient: adds ``error.is_transient`` when not ``None``.
    :param headers: extra response headers (``Retry-After`` ...).
    """

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        details: str | None = None,
        status: int | None = None,
        subcode: int | None = None,
        error_type: str = "OAuthException",
        is_transient: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        default_status, default_message = ERRORS.get(code, (400, f"(#{code}) Graph API error"))
        self.code = code
        self.message = message if message is not None else default_message
        self.details = details if details is not None or code < 130000 else DETAILS.get(code, self.message)
        self.status = status if status is not None else default_status
        self.subcode = subcode
        self.error_type = error_type
        self.is_transient = is_transient
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def envelope(self, fbtrace_id: str) -> JSON:
        """The JSON body, keys in Meta's order."""
        error: JSON = {"message": self.message, "type": self.error_type, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.is_transient is not None:
            error["is_transient"] = self.is_transient
        if self.details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id
        return {"error": error}

    def response(self, state: SandboxState) -> web.Response:
        """The HTTP answer; counts ``error.<code>`` in ``state.counters``."""
        state.counters[f"error.{self.code}"] += 1
        trace = new_fbtrace_id(state)
        headers = {"x-fb-trace-id": trace, **self.headers}
        if self.status == 401:
            headers.setdefault(
                "WWW-Authenticate", f'OAuth "Facebook Platform" "invalid_token" "{self.message}"'
            )
        return web.json_response(self.envelope(trace), status=self.status, headers=headers)


def graph_error_response(state: SandboxState, code: int, **kwargs: Any) -> web.Response:
    """Meta's error answer for ``code`` (``kwargs`` as ``GraphError``'s); counts ``error.<code>``."""
    return GraphError(code, **kwargs).response(state)


def _unknown_object(method: str, object_id: str) -> GraphError:
    return GraphError(
        100,
        f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, cannot be "
        f"loaded due to missing permissions, or does not support this operation. {GRAPH_DOCS}",
        subcode=33,
        error_type="GraphMethodException",
        status=400,
    )


# ---------------------------------------------------------------- request helpers


def _authenticate(state: SandboxState, request: web.Request) -> None:
    """The Bearer token (or ``access_token``) must be the sandbox's: else 104 (none) or 190."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        token = value.strip()
        if scheme.lower() not in ("bearer", "oauth") or not token:
            raise GraphError(190)
    else:
        token = request.query.get("access_token", "")
        if not token:
            raise GraphError(104)
    if not hmac.compare_digest(token.encode(), state.settings.access_token.encode()):
        raise GraphError(190)


def _ok(request: web.Request, data: object) -> web.Response:
    return web.json_response(data, headers={"facebook-api-version": request.match_info["version"]})


async def _json_object(request: web.Request) -> JSON:
    """The JSON object of the body; anything else reads as a request without parameters."""
    raw = await request.read()
    try:
        data = json.loads(raw) if raw.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _required("messaging_product")
    return data


def _fields(request: web.Request) -> list[str] | None:
    """The ``fields`` query parameter as a list; ``None`` when absent."""
    value = request.query.get("fields")
    if value is None:
        return None
    return [field.strip() for field in value.split(",") if field.strip()]


def _select(data: Mapping[str, Any], fields: Sequence[str] | None) -> JSON:
    """Graph's field selection: the requested fields that exist, and always the ``id``."""
    if fields is None:
        return dict(data)
    selected = {field: data[field] for field in fields if field in data}
    if "id" in data:
        selected["id"] = data["id"]
    return selected


# ---------------------------------------------------------------- Meta-like validation errors


def _path(*keys: str | int) -> str:
    """``text['body']``, ``contacts[0]['name']``: how Graph names nested parameters."""
    head, *rest = keys
    return str(head) + "".join(f"[{key}]" if isinstance(key, int) else f"['{key}']" for key in rest)


def _required(*keys: str | int) -> GraphError:
    return GraphError(100, f"(#100) The parameter {_path(*keys)} is required.")


def _invalid(details: str) -> GraphError:
    return GraphError(100, details=details)


def _not_valid(details: str) -> GraphError:
    return GraphError(131009, details=details)


def _missing(details: str) -> GraphError:
    return GraphError(131008, details=details)


def _one_of(keys: Sequence[str | int], allowed: Iterator[str] | Sequence[str], got: object) -> GraphError:
    choices = ", ".join(sorted(choice.upper() for choice in allowed))
    return GraphError(100, f'(#100) Param {_path(*keys)} must be one of {{{choices}}} - got "{got}".')


def _too_long(keys: Sequence[str | int], limit: int) -> GraphError:
    return GraphError(100, f"(#100) Param {_path(*keys)} must be at most {limit} characters long.")


def _wrong_type(keys: Sequence[str | int], kind: str) -> GraphError:
    return GraphError(100, f"(#100) Param {_path(*keys)} must be {kind}.")


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


# ---------------------------------------------------------------- templates

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_SPACES = re.compile(r" {5,}")
_MEDIA_HEADERS = {
    "IMAGE": "image",
    "VIDEO": "video",
    "GIF": "video",
    "DOCUMENT": "document",
    "LOCATION": "location",
}
"""Header format of a definition -> the parameter type a send carries for it."""
_BUTTON_SUB_TYPES = {
    "QUICK_REPLY": "quick_reply",
    "URL": "url",
    "COPY_CODE": "copy_code",
    "OTP": "url",
    "FLOW": "flow",
    "CATALOG": "catalog",
    "MPM": "mpm",
}
"""Definition button type -> the ``sub_type`` of the button component that fills it."""
_BUTTON_PARAMETER = {
    "quick_reply": "payload",
    "url": "text",
    "copy_code": "coupon_code",
    "flow": "action",
    "catalog": "action",
    "mpm": "action",
}
"""Button ``sub_type`` -> the type of its parameter."""
_REQUIRED_BUTTONS = frozenset({"URL", "COPY_CODE", "OTP", "MPM"})
_COMPONENT_TYPES = frozenset({"header", "body", "button", "carousel", "limited_time_offer", "order_status"})
_PARAMETER_TYPES = frozenset(
    {
        "action",
        "coupon_code",
        "currency",
        "date_time",
        "document",
        "image",
        "limited_time_offer",
        "location",
        "order_status",
        "payload",
        "product",
        "text",
        "video",
    }
)
_LOCALIZABLE = frozenset({"text", "currency", "date_time"})
HEADER_TEXT_PARAM_MAX: Final = 60
BODY_TEXT_PARAM_MAX: Final = 1024
BODY_ONLY_TEXT_PARAM_MAX: Final = 32768
AUTHENTICATION_PARAM_MAX: Final = 15
SENDABLE_STATUSES: Final = frozenset({"APPROVED"})


def _camel(button_type: str) -> str:
    """``QUICK_REPLY`` -> ``QuickReply``, as Meta names button types in details."""
    return "".join(part.capitalize() for part in button_type.split("_"))


def _placeholders(text: object) -> list[str]:
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text)))


class _Spec(NamedTuple):
    """What a send of one template definition must carry."""

    named: bool
    header: str | None
    """The header's format (TEXT, IMAGE, ...), ``None`` without a header."""
    header_params: list[str]
    body_params: list[str]
    buttons: dict[int, str]
    """Index -> button type (URL, QUICK_REPLY, ...)."""
    url_variables: frozenset[int]
    """Indexes of URL buttons whose URL ends in a variable."""
    body_only: bool
    authentication: bool


def _spec(template: Mapping[str, Any]) -> _Spec:
    components = [c for c in template.get("components") or () if isinstance(c, Mapping)]
    by_type = {str(c.get("type") or "").upper(): c for c in components}
    header, body, buttons = by_type.get("HEADER"), by_type.get("BODY"), by_type.get("BUTTONS")
    header_format = str(header.get("format") or "TEXT").upper() if header is not None else None
    header_text = header.get("text") if header is not None and header_format == "TEXT" else None
    used = _placeholders(header_text) + _placeholders(body.get("text") if body is not None else None)
    fmt = str(template.get("parameter_format") or "").upper()
    named = fmt == "NAMED" or (fmt != "POSITIONAL" and any(not p.isdigit() for p in used))
    button_types: dict[int, str] = {}
    url_variables = set()
    for index, button in enumerate(buttons.get("buttons") or () if buttons is not None else ()):
        if isinstance(button, Mapping):
            button_types[index] = str(button.get("type") or "").upper()
            if button_types[index] == "URL" and _placeholders(button.get("url")):
                url_variables.add(index)
    return _Spec(
        named=named,
        header=header_format,
        header_params=_placeholders(header_text),
        body_params=_placeholders(body.get("text") if body is not None else None),
        buttons=button_types,
        url_variables=frozenset(url_variables),
        body_only=set(by_type) <= {"BODY"},
        authentication=str(template.get("category") or "").upper() == "AUTHENTICATION",
    )


class _Param(NamedTuple):
    kind: str
    name: str | None
    text: str | None
    """The value of a ``text`` parameter (checked for 132018)."""


class _Button(NamedTuple):
    sub_type: str
    params: list[_Param]


class _Templates:
    """Finds templates by (name, language) and by id in ``state.templates``, without scanning it.

    The index holds positions in the list and is checked at every use, so that
    the control API may replace, reorder or edit ``state.templates`` freely:
    a stale entry (or a miss) rebuilds the index once.
    """

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._list_key: tuple[int, int] | None = None
        self._by_key: dict[tuple[object, object], int] = {}
        self._by_id: dict[str, int] = {}

    def _current(self) -> list[dict[str, Any]]:
        templates = self._state.templates
        if (id(templates), len(templates)) != self._list_key:
            self._rebuild(templates)
        return templates

    def _rebuild(self, templates: list[dict[str, Any]]) -> None:
        self._by_key, self._by_id = {}, {}
        for position, template in enumerate(templates):
            if isinstance(template, Mapping):
                self._by_key.setdefault((template.get("name"), template.get("language")), position)
                self._by_id.setdefault(str(template.get("id")), position)
        self._list_key = (id(templates), len(templates))

    def find(self, name: str, language: str) -> Mapping[str, Any] | None:
        """The template ``name`` in exactly ``language``."""
        templates = self._current()
        for attempt in range(2):
            position = self._by_key.get((name, language))
            if position is not None and position < len(templates):
                template = templates[position]
                if template.get("name") == name and template.get("language") == language:
                    return template
            if attempt == 0:
                self._rebuild(templates)
        return None

    def by_id(self, template_id: str) -> Mapping[str, Any] | None:
        templates = self._current()
        for attempt in range(2):
            position = self._by_id.get(template_id)
            if position is not None and position < len(templates):
                template = templates[position]
                if str(template.get("id")) == template_id:
                    return template
            if attempt == 0:
                self._rebuild(templates)
        return None


def _check_template(index: _Templates, body: Mapping[str, Any]) -> None:
    template = _object(body, "template")
    name = _string(template, "template", "name")
    language = _object(template, "template", "language")
    code = _string(language, "template", "language", "code")
    components = template.get("components")
    if components is None:
        components = []
    if not isinstance(components, list):
        raise _wrong_type(["template", "components"], "an array")
    header, body_params, buttons = _parse_components(components)

    definition = index.find(name, code)
    if definition is None:
        raise GraphError(132001, details=f"template name ({name}) does not exist in {code}")
    status = str(definition.get("status") or "").upper()
    if status == "PAUSED":
        raise GraphError(132015)
    if status == "DISABLED":
        raise GraphError(132016)
    if status not in SENDABLE_STATUSES:
        raise GraphError(132001, details=f"template name ({name}) does not exist in {code}")

    spec = _spec(definition)
    _check_header(spec, header)
    _check_body(spec, body_params)
    _check_buttons(spec, buttons)
    _check_parameter_texts(spec, header, body_params)


def _parse_components(
    components: list[Any],
) -> tuple[list[_Param] | None, list[_Param] | None, dict[int, _Button]]:
    """The header's and body's parameters (``None`` when the component was not sent) and the buttons."""
    header: list[_Param] | None = None
    body: list[_Param] | None = None
    buttons: dict[int, _Button] = {}
    for i, component in enumerate(components):
        keys: list[str | int] = ["template", "components", i]
        if not isinstance(component, dict):
            raise _wrong_type(keys, "a JSON object")
        kind = _string(component, *keys, "type")
        kind = kind.lower()
        if kind not in _COMPONENT_TYPES:
            raise _one_of([*keys, "type"], sorted(_COMPONENT_TYPES), kind)
        raw = component.get("parameters")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise _wrong_type([*keys, "parameters"], "an array")
        params = [_parameter(p, [*keys, "parameters", j]) for j, p in enumerate(raw)]
        if kind == "header":
            header = (header or []) + params
        elif kind == "body":
            body = (body or []) + params
        elif kind == "button":
            sub_type = _string(component, *keys, "sub_type")
            raw_index = component.get("index")
            if raw_index is None or raw_index == "":
                raise _required(*keys, "index")
            text_index = str(raw_index)
            if isinstance(raw_index, bool) or not text_index.isdigit() or int(text_index) > 9:
                raise _invalid(
                    f"Param {_path(*keys, 'index')} must be a button index from 0 to 9, got {raw_index!r}"
                )
            if int(text_index) in buttons:
                raise _not_valid(f"buttons: Button at index {text_index} is given more than once")
            buttons[int(text_index)] = _Button(sub_type.lower(), params)
    return header, body, buttons


def _parameter(raw: object, keys: list[str | int]) -> _Param:
    if not isinstance(raw, dict):
        raise _wrong_type(keys, "a JSON object")
    kind = _string(raw, *keys, "type")
    kind = kind.lower()
    if kind not in _PARAMETER_TYPES:
        raise _one_of([*keys, "type"], sorted(_PARAMETER_TYPES), kind)
    name = raw.get("parameter_name")
    if name is not None and (not isinstance(name, str) or not name):
        raise _wrong_type([*keys, "parameter_name"], "a non-empty string")
    value = raw.get(kind)
    mandatory = f"Parameter '{kind}' is mandatory for component parameter type '{kind}'"
    if kind in ("text", "payload", "coupon_code"):
        if not isinstance(value, str) or not value:
            raise _invalid(mandatory)
        return _Param(kind, name, value if kind == "text" else None)
    if not isinstance(value, dict):
        raise _invalid(mandatory)
    if kind == "currency":
        for field in ("fallback_value", "code", "amount_1000"):
            if value.get(field) in (None, ""):
                raise _invalid(f"Parameter '{field}' is mandatory for parameter type 'currency'")
        amount = value["amount_1000"]
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise _wrong_type([*keys, "currency", "amount_1000"], "an integer")
    elif kind == "date_time":
        if value.get("fallback_value") in (None, ""):
            raise _invalid("Parameter 'fallback_value' is mandatory for parameter type 'date_time'")
    elif kind in ("image", "video", "document"):
        _check_media_source(value, [*keys, kind])
    elif kind == "location":
        _number(value, *keys, "location", "latitude")
        _number(value, *keys, "location", "longitude")
    return _Param(kind, name, None)


def _count_error(where: str, given: int, expected: int) -> GraphError:
    return GraphError(
        132000,
        details=f"{where}: number of localizable_params ({given}) does not match "
        f"the expected number of params ({expected})",
    )


def _format_error(where: str, expected: str, received: str) -> GraphError:
    return GraphError(132012, details=f"{where}: Format mismatch, expected {expected}, received {received}")


def _check_style(where: str, spec: _Spec, params: list[_Param]) -> None:
    """Named parameters for a NAMED template, positional ones for a POSITIONAL one (132012)."""
    localizable = [p for p in params if p.kind in _LOCALIZABLE]
    if spec.named and any(p.name is None for p in localizable):
        raise _format_error(where, "NAMED", "POSITIONAL")
    if not spec.named and any(p.name is not None for p in localizable):
        raise _format_error(where, "POSITIONAL", "NAMED")


def _check_placeholders(where: str, spec: _Spec, expected: list[str], params: list[_Param]) -> None:
    if len(params) != len(expected):
        raise _count_error(where, len(params), len(expected))
    if spec.named:
        given = [p.name for p in params if p.name is not None]
        if sorted(given) != sorted(expected):
            raise GraphError(
                132000,
                details=f"{where}: parameter names ({', '.join(given)}) do not match the expected "
                f"parameter names ({', '.join(expected)})",
            )


def _check_header(spec: _Spec, given: list[_Param] | None) -> None:
    params = given or []
    media = [p for p in params if p.kind not in _LOCALIZABLE]
    if spec.header in _MEDIA_HEADERS:
        kind = _MEDIA_HEADERS[spec.header]
        if not params:
            raise _format_error("header", spec.header, "UNKNOWN")
        if params[0].kind != kind:
            raise _format_error("header", spec.header, params[0].kind.upper())
        if len(params) > 1:
            raise _count_error("header", len(params), 1)
        return
    if media:
        raise _format_error("header", spec.header or "UNKNOWN", media[0].kind.upper())
    _check_style("header", spec, params)
    _check_placeholders("header", spec, spec.header_params, params)


def _check_body(spec: _Spec, given: list[_Param] | None) -> None:
    params = given or []
    for param in params:
        if param.kind not in _LOCALIZABLE:
            raise _format_error("body", "TEXT", param.kind.upper())
    _check_style("body", spec, params)
    _check_placeholders("body", spec, spec.body_params, params)


def _check_buttons(spec: _Spec, given: dict[int, _Button]) -> None:
    for index, button in sorted(given.items()):
        button_type = spec.buttons.get(index)
        if button_type is None:
            raise _not_valid(f"buttons: Button at index {index} does not exist in the template")
        expected_sub_type = _BUTTON_SUB_TYPES.get(button_type)
        if expected_sub_type is None or (button_type == "URL" and index not in spec.url_variables):
            if button.params:
                raise _count_error(
                    f"buttons: Button at index {index} of type {_camel(button_type)}", len(button.params), 0
                )
            continue
        if button.sub_type != expected_sub_type:
            raise _format_error(
                f"buttons: Button at index {index} of type {_camel(button_type)}",
                expected_sub_type.upper(),
                button.sub_type.upper(),
            )
        if len(button.params) > 1:
            raise _count_error(
                f"buttons: Button at index {index} of type {_camel(button_type)}", len(button.params), 1
            )
        parameter_type = _BUTTON_PARAMETER[expected_sub_type]
        if button.params and button.params[0].kind != parameter_type:
            raise _format_error(
                f"buttons: Button at index {index} of type {_camel(button_type)}",
                parameter_type.upper(),
                button.params[0].kind.upper(),
            )
    for index, button_type in sorted(spec.buttons.items()):
        required = button_type in _REQUIRED_BUTTONS and (button_type != "URL" or index in spec.url_variables)
        sent = given.get(index)
        if required and (sent is None or not sent.params):
            raise _missing(
                f"buttons: Button at index {index} of type {_camel(button_type)} requires a parameter"
            )


def _check_parameter_texts(spec: _Spec, header: list[_Param] | None, body: list[_Param] | None) -> None:
    """No new line, tab or more than 4 consecutive spaces, and the length limits (132018)."""
    body_max = BODY_ONLY_TEXT_PARAM_MAX if spec.body_only else BODY_TEXT_PARAM_MAX
    if spec.authentication:
        body_max = AUTHENTICATION_PARAM_MAX
    for where, params, limit in (
        ("header", header or [], HEADER_TEXT_PARAM_MAX),
        ("body", body or [], body_max),
    ):
        for position, param in enumerate(params):
            if param.text is None:
                continue
            if "\n" in param.text or "\t" in param.text or _SPACES.search(param.text):
                raise GraphError(
                    132018,
                    details=f"{where}: Param text cannot have new-line/tab characters "
                    "or more than 4 consecutive spaces",
                )
            if len(param.text) > limit:
                raise GraphError(
                    132018,
                    details=f"{where}: Parameter at index {position} "
                    f"exceeds the parameter length limit {limit}",
                )


# ---------------------------------------------------------------- media store

MEDIA_TYPES: Mapping[str, int] = {
    "audio/aac": 16 * 2**20,
    "audio/amr": 16 * 2**20,
    "audio/mpeg": 16 * 2**20,
    "audio/mp4": 16 * 2**20,
    "audio/ogg": 16 * 2**20,
    "image/jpeg": 5 * 2**20,
    "image/png": 5 * 2**20,
    "image/webp": 500 * 2**10,
    "video/mp4": 16 * 2**20,
    "video/3gpp": 16 * 2**20,
    "text/plain": 100 * 2**20,
    "application/pdf": 100 * 2**20,
    "application/msword": 100 * 2**20,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": 100 * 2**20,
    "application/vnd.ms-excel": 100 * 2**20,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": 100 * 2**20,
    "application/vnd.ms-powerpoint": 100 * 2**20,
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": 100 * 2**20,
}
"""Supported upload MIME types -> their size limit in bytes (shared WhatsApp spec 1.4)."""
_UPLOAD_MAX = max(MEDIA_TYPES.values())


class StoredMedia(NamedTuple):
    """An uploaded media file."""

    id: str
    mime_type: str
    data: bytes
    sha256: str
    """Hex digest, as ``GET /{media-id}`` gives it."""


class MediaStore:
    """Uploaded media, in memory; the oldest are forgotten beyond ``max_bytes`` in total.

    :param max_bytes: the memory the store may hold.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: dict[str, StoredMedia] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, media_id: object) -> bool:
        return media_id in self._items

    def add(self, media_id: str, mime_type: str, data: bytes) -> StoredMedia:
        """Store ``data`` under ``media_id``."""
        self.delete(media_id)
        media = StoredMedia(media_id, mime_type, data, hashlib.sha256(data).hexdigest())
        self._items[media_id] = media
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._items) > 1:
            self.delete(next(iter(self._items)))
        return media

    def get(self, media_id: str) -> StoredMedia | None:
        return self._items.get(media_id)

    def delete(self, media_id: str) -> bool:
        """Forget a media; whether it was there."""
        media = self._items.pop(media_id, None)
        if media is None:
            return False
        self._bytes -= len(media.data)
        return True


def _new_media_id(state: SandboxState, media: MediaStore) -> str:
    while True:
        media_id = str(state.rng.randrange(10**15, 10**16))
        if media_id not in media:
            return media_id


async def _read_upload(request: web.Request) -> tuple[dict[str, str], bytes | None, str | None]:
    """The text fields and the ``file`` part (bytes, content type) of a multipart upload."""
    fields: dict[str, str] = {}
    data: bytes | None = None
    file_type: str | None = None
    if not request.content_type.startswith("multipart/"):
        return fields, None, None
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
            continue
        if part.name == "file":
            chunks = bytearray()
            while chunk := await part.read_chunk():
                chunks += chunk
                if len(chunks) > _UPLOAD_MAX:
                    raise GraphError(
                        131053, details=f"Media file is larger than the maximum of {_UPLOAD_MAX} bytes"
                    )
            data = bytes(chunks)
            file_type = part.headers.get(aiohttp.hdrs.CONTENT_TYPE)
        else:
            fields[part.name] = await part.text()
    return fields, data, file_type


# ---------------------------------------------------------------- template listing


def _encode_cursor(position: int) -> str:
    """Graph's cursors: base64 of the position, ``=`` written ``ZD`` (``MAZDZD`` is 0)."""
    return base64.b64encode(str(position).encode()).decode().replace("=", "ZD")


def _decode_cursor(cursor: str, name: str) -> int:
    padded = re.sub(r"(ZD)+$", lambda m: "=" * (len(m.group(0)) // 2), cursor)
    try:
        text = base64.b64decode(padded, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.isdigit():
        raise _invalid(f"Param {name} must be a cursor returned in paging.cursors, got {cursor!r}")
    return int(text)


def _matches(template: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    def one_of(field: str, value: object) -> bool:
        wanted = query.get(field)
        if wanted is None:
            return True
        choices = {choice.strip().upper() for choice in wanted.split(",") if choice.strip()}
        return str(value or "").upper() in choices

    def body_text() -> str:
        for component in template.get("components") or ():
            if isinstance(component, Mapping) and str(component.get("type") or "").upper() == "BODY":
                return str(component.get("text") or "")
        return ""

    name = query.get("name")
    if name is not None and template.get("name") != name:
        return False
    if not (one_of("status", template.get("status")) and one_of("category", template.get("category"))):
        return False
    language = query.get("language")
    if language is not None and template.get("language") not in {c.strip() for c in language.split(",")}:
        return False
    quality = template.get("quality_score")
    if not one_of("quality_score", quality.get("score") if isinstance(quality, Mapping) else None):
        return False
    content = query.get("content")
    if content is not None and content.lower() not in body_text().lower():
        return False
    either = query.get("name_or_content")
    return either is None or (
        either.lower() in str(template.get("name") or "").lower() or either.lower() in body_text().lower()
    )


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None or raw == "":
        return 25
    if not raw.isdigit() or int(raw) < 1:
        raise _invalid(f"Param limit must be a positive integer, got {raw!r}")
    return int(raw)


_SUMMARY_FIELDS = (
    "total_count",
    "message_template_count",
    "message_template_limit",
    "are_translations_complete",
)


def _summary(requested: str, matching: int, templates: Sequence[Mapping[str, Any]]) -> JSON:
    fields = [f.strip() for f in requested.split(",") if f.strip()]
    if not fields or fields == ["true"]:
        fields = list(_SUMMARY_FIELDS)
    languages: dict[object, set[object]] = {}
    every_language: set[object] = set()
    for template in templates:
        languages.setdefault(template.get("name"), set()).add(template.get("language"))
        every_language.add(template.get("language"))
    values: JSON = {
        "total_count": matching,
        "message_template_count": len(templates),
        "message_template_limit": 250,
        "are_translations_complete": all(langs == every_language for langs in languages.values()),
    }
    return {field: values[field] for field in _SUMMARY_FIELDS if field in fields}


# ---------------------------------------------------------------- routes


def graph_routes(
    state: SandboxState, *, limits: Limits | None = None, media: MediaStore | None = None
) -> list[web.RouteDef]:
    """The Graph API routes of the sandbox, all under ``/{vX.Y}/``; add them to an ``aiohttp`` app.

    :param state: the sandbox state: settings, templates, counters, clock and rng.
    :param limits: the rate limits to apply (default: a new ``Limits(state)``); pass
        your own to reset or inspect it.
    :param media: where uploads are kept (default: a new in-memory ``MediaStore``).
    """
    limiter = limits if limits is not None else Limits(state)
    store = media if media is not None else MediaStore()
    templates = _Templates(state)

    def graph(handler: Handler) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            state.counters["requests"] += 1
            try:
                _authenticate(state, request)
                return await handler(request)
            except GraphError as error:
                return error.response(state)

        return answer

    def phone_number(request: web.Request, node: str) -> None:
        if node != state.settings.phone_number_id:
            raise _unknown_object(request.method, node)

    async def messages(request: web.Request) -> web.StreamResponse:
        phone_number(request, request.match_info["node"])
        body = await _json_object(request)
        if "status" in body:
            return _mark_read(request, body)
        kind = _check_envelope(body)
        recipient = _recipient(state, body)
        if kind == "text":
            _check_text(body)
        elif kind in ("image", "video", "audio", "document", "sticker"):
            _check_media(kind, body)
        elif kind == "template":
            _check_template(templates, body)
        elif kind == "interactive":
            _check_interactive(body)
        elif kind == "location":
            _check_location(body)
        elif kind == "contacts":
            _check_contacts(body)
        else:
            _check_reaction(body)
        refused = limiter.check(recipient.key)
        if refused is not None:
            raise GraphError(refused)
        record = state.accept(body, recipient.key)
        contact: JSON = {"input": recipient.input}
        contact["user_id" if recipient.is_user_id else "wa_id"] = recipient.key
        message: JSON = {"id": record.wamid}
        if kind == "template":
            message["message_status"] = "accepted"
        return _ok(request, {"messaging_product": "whatsapp", "contacts": [contact], "messages": [message]})

    def _mark_read(request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        product = body.get("messaging_product")
        if product in (None, ""):
            raise _required("messaging_product")
        if product != "whatsapp":
            raise _one_of(["messaging_product"], ["whatsapp"], product)
        if body.get("status") != "read":
            raise _one_of(["status"], ["read"], body.get("status"))
        _string(body, "message_id")
        state.counters["read_receipts"] += 1
        return _ok(request, {"success": True})

    async def upload(request: web.Request) -> web.StreamResponse:
        phone_number(request, request.match_info["node"])
        fields, data, file_type = await _read_upload(request)
        product = fields.get("messaging_product")
        if not product:
            raise _required("messaging_product")
        if product != "whatsapp":
            raise _one_of(["messaging_product"], ["whatsapp"], product)
        if data is None:
            raise _required("file")
        mime_type = (fields.get("type") or file_type or "").split(";")[0].strip().lower()
        if not mime_type:
            raise _required("type")
        limit = MEDIA_TYPES.get(mime_type)
        if limit is None:
            raise GraphError(
                100,
                "(#100) Param file must be a file with one of the following types: "
                f"{', '.join(MEDIA_TYPES)}. Received file of type '{mime_type}'.",
            )
        if len(data) > limit:
            raise GraphError(
                131053,
                details=f"Media file of {len(data)} bytes exceeds the {limit}-byte limit of {mime_type}",
            )
        stored = store.add(_new_media_id(state, store), mime_type, data)
        state.counters["media.uploaded"] += 1
        return _ok(request, {"id": stored.id})

    async def list_templates(request: web.Request) -> web.StreamResponse:
        waba = request.match_info["node"]
        if waba != state.settings.waba_id:
            raise _unknown_object("GET", waba)
        query = request.query
        limit = _limit(query)
        fields = _fields(request)
        everything = [t for t in state.templates if isinstance(t, Mapping)]
        matching = [t for t in everything if _matches(t, query)]
        if query.get("after"):
            start = _decode_cursor(query["after"], "after") + 1
            end = start + limit
        elif query.get("before"):
            end = _decode_cursor(query["before"], "before")
            start = max(0, end - limit)
        else:
            start, end = 0, limit
        start, end = min(start, len(matching)), min(end, len(matching))
        page: JSON = {"data": [_select(t, fields) for t in matching[start:end]]}
        if start < end:
            base = [(k, v) for k, v in query.items() if k not in ("after", "before", "limit")]
            base.append(("limit", str(limit)))
            paging: JSON = {"cursors": {"before": _encode_cursor(start), "after": _encode_cursor(end - 1)}}
            if end < len(matching):
                paging["next"] = str(request.url.with_query([*base, ("after", _encode_cursor(end - 1))]))
            if start > 0:
                paging["previous"] = str(request.url.with_query([*base, ("before", _encode_cursor(start))]))
            page["paging"] = paging
        if "summary" in query:
            page["summary"] = _summary(query["summary"], len(matching), everything)
        return _ok(request, page)

    def phone_number_info(request: web.Request) -> JSON:
        settings = state.settings
        return {
            "verified_name": "Sandbox Business",
            "code_verification_status": "VERIFIED",
            "display_phone_number": settings.display_phone_number,
            "quality_rating": "GREEN",
            "platform_type": "CLOUD_API",
            "throughput": {"level": "HIGH" if settings.throughput_mps > 80 else "STANDARD"},
            "name_status": "APPROVED",
            "messaging_limit_tier": "TIER_1K",
            "id": settings.phone_number_id,
        }

    def media_info(request: web.Request, stored: StoredMedia) -> JSON:
        version = request.match_info["version"]
        url = request.url.with_path(f"/{version}/{stored.id}/download").with_query(None)
        return {
            "messaging_product": "whatsapp",
            "url": str(url),
            "mime_type": stored.mime_type,
            "sha256": stored.sha256,
            "file_size": len(stored.data),
            "id": stored.id,
        }

    async def get_node(request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        settings = state.settings
        fields = _fields(request)
        if node == settings.phone_number_id:
            return _ok(request, _select(phone_number_info(request), fields))
        if node == settings.waba_id:
            account = {
                "id": node,
                "name": "Sandbox Business",
                "currency": "USD",
                "timezone_id": "1",
                "message_template_namespace": "sandbox_namespace",
            }
            return _ok(request, _select(account, fields))
        stored = store.get(node)
        if stored is not None:
            return _ok(request, _select(media_info(request, stored), fields))
        template = templates.by_id(node)
        if template is not None:
            return _ok(request, _select(template, fields))
        raise _unknown_object("GET", node)

    async def delete_node(request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        if not store.delete(node):
            raise _unknown_object("DELETE", node)
        return _ok(request, {"success": True})

    async def download(request: web.Request) -> web.StreamResponse:
        stored = store.get(request.match_info["node"])
        if stored is None:
            raise _unknown_object("GET", request.match_info["node"])
        return web.Response(body=stored.data, headers={"Content-Type": stored.mime_type})

    known_edges = {"messages", "media", "message_templates", "download"}

    async def fallback(request: web.Request) -> web.StreamResponse:
        node, _, rest = request.match_info["tail"].partition("/")
        settings = state.settings
        known = node in (settings.phone_number_id, settings.waba_id) or node in store or templates.by_id(node)
        if not known or not rest or rest.split("/", 1)[0] in known_edges:
            raise _unknown_object(request.method, node)
        raise GraphError(2500, f"Unknown path components: /{rest}")

    node = "{node:[^/]+}"
    return [
        web.post(f"/{VERSION}/{node}/messages", graph(messages)),
        web.post(f"/{VERSION}/{node}/media", graph(upload)),
        web.get(f"/{VERSION}/{node}/message_templates", graph(list_templates)),
        web.get(f"/{VERSION}/{node}/download", graph(download)),
        web.get(f"/{VERSION}/{node}", graph(get_node)),
        web.delete(f"/{VERSION}/{node}", graph(delete_node)),
        web.route("*", f"/{VERSION}/{{tail:.*}}", graph(fallback)),
    ]
