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

The parts, one module each:

* ``graph_errors``: Meta's error table (``ERRORS``, ``DETAILS``), ``GraphError``
  and its envelope, ``graph_error_response``, ``new_fbtrace_id``;
* ``send_checks``: the envelope, the recipient and each free-form type;
* ``template_checks``: a template send against the state's templates;
* ``media``: ``MediaStore`` and the reading of uploads;
* this module: the request helpers, the template listing (paging, filters,
  summary) and ``graph_routes``, which puts the routes together. It re-exports
  the names other code imports from it.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from .graph_errors import (
    DETAILS,
    ERRORS,
    JSON,
    GraphError,
    _invalid,
    _one_of,
    _required,
    _unknown_object,
    graph_error_response,
    new_fbtrace_id,
)
from .limits import Limits
from .media import MEDIA_TYPES, MediaStore, StoredMedia, _new_media_id, _read_upload
from .send_checks import (
    _check_contacts,
    _check_envelope,
    _check_interactive,
    _check_location,
    _check_media,
    _check_reaction,
    _check_text,
    _recipient,
    _string,
)
from .state import SandboxState
from .template_checks import _check_template, _Templates

__all__ = [
    "DETAILS",
    "ERRORS",
    "GraphError",
    "MediaStore",
    "StoredMedia",
    "graph_error_response",
    "graph_routes",
    "new_fbtrace_id",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION: Final = r"{version:v\d+\.\d+}"
"""The version segment of every route: any ``vX.Y``."""


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
    state.reset_listeners.append(limiter.reset)
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
            return mark_read(request, body)
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

    def mark_read(request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
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

    def phone_number_info() -> JSON:
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
            return _ok(request, _select(phone_number_info(), fields))
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
