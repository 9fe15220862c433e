"""WhatsApp webhooks: Meta's verification handshake and signed notifications.

Meta calls one URL two ways:

* ``GET`` with ``hub.mode=subscribe``, ``hub.verify_token`` and ``hub.challenge``
  when the webhook is configured. ``verify_challenge`` answers with the
  challenge when the token is ours, 403 otherwise.
* ``POST`` with a JSON notification signed in ``X-Hub-Signature-256``
  (``sha256=<hex HMAC-SHA256 of the raw body, keyed by the app secret>``).
  ``verify_signature`` checks the raw bytes *before* anything parses them:
  Meta escapes non-ASCII characters and ``/`` in what it signs, so
  re-serialised JSON would not match. ``parse_notification`` then turns every
  ``entry[].changes[].value`` into events: ``statuses[]`` become
  ``StatusChanged``, ``messages[]`` become ``InboundMessage``.

Meta retries anything but a 200 for days and may deliver one notification
several times, to several subscriptions, in any order. ``Deduplicator`` drops
what was already dispatched (statuses by ``(id, status)``, messages by ``id``);
ordering is left to whoever stores statuses, so every new event is dispatched.

``make_routes`` wires the two handlers for ``register_routes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web

from omnichannel import (
    Content,
    DeliveryStatus,
    ErrorInfo,
    Event,
    InboundMessage,
    Media,
    MediaKind,
    Route,
    Secret,
    StatusChanged,
    Text,
    WebhookError,
)

from .errors import classify_graph_error

if TYPE_CHECKING:
    from omnichannel import OmniChannelService

    from .config import WhatsAppConfig

__all__ = [
    "DEFAULT_PATH",
    "MAX_BODY_BYTES",
    "SIGNATURE_HEADER",
    "Deduplicator",
    "make_routes",
    "parse_notification",
    "verify_challenge",
    "verify_signature",
]

log = logging.getLogger("omnichannel_whatsapp.webhook")

DEFAULT_PATH = "/webhooks/whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Meta sends up to about 3 MB; aiohttp's default 1 MiB limit would make it retry for days."""

_OBJECT = "whatsapp_business_account"
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_STATUSES = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
}
_MEDIA_KINDS = frozenset(kind.value for kind in MediaKind)


# ---------------------------------------------------------------- handshake and signature


def verify_challenge(query: Mapping[str, str], verify_token: Secret | None) -> str:
    """Answer Meta's verification handshake: return ``hub.challenge``.

    :param query: the query string of the ``GET``.
    :param verify_token: ``plugins.whatsapp.verify_token``.
    :raises WebhookError: 403 unless ``hub.mode`` is ``subscribe`` and
        ``hub.verify_token`` is the configured token; 400 without ``hub.challenge``.
    """
    if verify_token is None or not verify_token.reveal():
        raise WebhookError(
            "plugins.whatsapp.verify_token is not set: the verification handshake cannot succeed",
            status=403,
        )
    mode = query.get("hub.mode")
    if mode != "subscribe":
        raise WebhookError(f"hub.mode must be 'subscribe', got {_short(mode)}", status=403)
    given = query.get("hub.verify_token", "")
    if not hmac.compare_digest(given.encode(), verify_token.reveal().encode()):
        raise WebhookError("hub.verify_token does not match plugins.whatsapp.verify_token", status=403)
    challenge = query.get("hub.challenge")
    if not challenge:
        raise WebhookError("hub.challenge is missing", status=400)
    return challenge


def verify_signature(body: bytes, header: str | None, app_secret: Secret | None) -> None:
    """Check ``X-Hub-Signature-256`` against the raw ``body``; return quietly when it matches.

    :param body: the request body exactly as received.
    :param header: the ``X-Hub-Signature-256`` value, ``sha256=<hex>``, or ``None``.
    :param app_secret: ``plugins.whatsapp.app_secret``.
    :raises WebhookError: 401 without a signature; 403 for a malformed or wrong
        one, and when no app secret is configured (unsigned input is never accepted).
    """
    if app_secret is None or not app_secret.reveal():
        raise WebhookError(
            "plugins.whatsapp.app_secret is not set: webhook notifications cannot be verified "
            "and are refused",
            status=403,
        )
    if header is None or not header.strip():
        raise WebhookError(f"the {SIGNATURE_HEADER} header is missing", status=401)
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        raise WebhookError(f"the {SIGNATURE_HEADER} header is not 'sha256=<64 hex digits>'", status=403)
    expected = hmac.new(app_secret.reveal().encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(match.group(1).lower().encode(), expected.encode()):
        raise WebhookError(f"the {SIGNATURE_HEADER} signature does not match the body", status=403)


# ---------------------------------------------------------------- parsing


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut: error messages are logged, and must not carry the body."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad(where: str, problem: str) -> WebhookError:
    return WebhookError(f"{where}: {problem}" if where else problem, status=400)


def _list(container: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """``container[key]`` as a list; absent counts as empty, anything else is malformed."""
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(where, f"'{key}' is not a list")
    return value


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "is not an object")
    return value


def _str(container: object, key: str) -> str | None:
    """``container[key]`` as text, or ``None`` when absent; numbers are kept as their text."""
    if not isinstance(container, dict):
        return None
    value = container.get(key)
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _time(item: Mapping[str, Any], where: str, fallback: datetime) -> datetime:
    raw = _str(item, "timestamp")
    try:
        return datetime.fromtimestamp(int(raw or ""), UTC)
    except (ValueError, OverflowError, OSError):
        log.debug("%s: unusable timestamp %s; using the time of receipt", where, _short(raw))
        return fallback


def _code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _error_info(error: object) -> ErrorInfo:
    """``(#131047) Re-engagement message: <error_data.details>`` from a webhook error object."""
    code = _code(error.get("code")) if isinstance(error, dict) else None
    title = _str(error, "title") or _str(error, "message") or "unknown error"
    details = _str(error.get("error_data"), "details") if isinstance(error, dict) else None
    detail = f"(#{code}) {title}" if code is not None else title
    if details and details != title:
        detail = f"{detail}: {details}"
    if code is None:
        return ErrorInfo(kind="WhatsAppError", detail=detail)
    # The same classification as a synchronous error with this code: the class,
    # scope and whether a later resend may succeed (e.g. 131049 yes, 131026 no).
    classified = classify_graph_error(400, {"error": {"code": code, "message": title}}, {})
    return attrs.evolve(ErrorInfo.from_exception(classified), detail=detail, http_status=None)


def _metadata(value: Mapping[str, Any]) -> dict[str, Any]:
    phone_number_id = _str(value.get("metadata"), "phone_number_id")
    return {"phone_number_id": phone_number_id} if phone_number_id else {}


def _status(
    item: object, where: str, channel: str, extra: Mapping[str, Any], received_at: datetime
) -> StatusChanged | None:
    status = _object(item, where)
    provider_id = _str(status, "id")
    raw_status = _str(status, "status")
    if not provider_id:
        raise _bad(where, "a status without 'id'")
    if not raw_status:
        raise _bad(where, "a status without 'status'")
    mapped = _STATUSES.get(raw_status)
    if mapped is None:
        log.debug("%s: skipping status %s of %s", where, _short(raw_status), provider_id)
        return None
    errors = _list(status, "errors", where)
    details: dict[str, Any] = dict(extra)
    for key in ("pricing", "conversation"):
        if status.get(key) is not None:
            details[key] = status[key]
    if errors:
        details["errors"] = errors
    error = None
    if mapped is DeliveryStatus.FAILED:
        error = (
            _error_info(errors[0])
            if errors
            else ErrorInfo(kind="WhatsAppError", detail="the message failed; WhatsApp gave no reason")
        )
    return StatusChanged(
        channel=channel,
        provider_message_id=provider_id,
        status=mapped,
        message_id=_str(status, "biz_opaque_callback_data"),
        recipient=_str(status, "recipient_id") or _str(status, "recipient_user_id"),
        error=error,
        details=details,
        occurred_at=_time(status, where, received_at),
    )


def _profile_names(value: Mapping[str, Any], where: str) -> dict[str | None, str]:
    """Profile names by ``wa_id``; a lone contact is also filed under ``None`` (BSUID senders)."""
    names: dict[str | None, str] = {}
    contacts = [c for c in _list(value, "contacts", where) if isinstance(c, dict)]
    for contact in contacts:
        name = _str(contact.get("profile"), "name")
        if name:
            for key in ("wa_id", "user_id"):
                if _str(contact, key):
                    names[_str(contact, key)] = name
            if len(contacts) == 1:
                names[None] = name
    return names


def _summary(kind: str, body: object) -> str:
    """A short readable text for message types that have no content class of their own."""
    if kind == "location":
        place = ", ".join(p for p in (_str(body, "name"), _str(body, "address")) if p)
        where = f"({_str(body, 'latitude')}, {_str(body, 'longitude')})"
        return f"location: {place} {where}" if place else f"location: {where}"
    if kind == "contacts":
        people = body if isinstance(body, list) else []
        names = [_str(p.get("name"), "formatted_name") for p in people if isinstance(p, dict)]
        shown = ", ".join(n for n in names if n)
        return f"shared contacts: {shown}" if shown else f"shared {len(people)} contact(s)"
    if kind == "reaction":
        emoji = _str(body, "emoji")
        return f"reacted {emoji}" if emoji else "removed a reaction"
    if kind == "order":
        items = body.get("product_items") if isinstance(body, dict) else None
        return f"order of {len(items) if isinstance(items, list) else 0} item(s)"
    if kind == "system":
        return _str(body, "body") or "system message"
    if kind == "revoke":
        return "deleted a message"
    if kind == "request_welcome":
        return "opened the chat"
    if kind == "unsupported":
        return "unsupported message"
    return f"{kind} message"


def _inbound_content(kind: str, message: Mapping[str, Any], details: dict[str, Any]) -> Content:
    body = message.get(kind)
    if kind == "text":
        return Text(_str(body, "body") or "")
    if kind in _MEDIA_KINDS:
        for key in ("mime_type", "sha256", "voice", "animated"):
            if isinstance(body, dict) and body.get(key) is not None:
                details[key] = body[key]
        return Media(
            MediaKind(kind),
            media_id=_str(body, "id"),
            caption=_str(body, "caption"),
            filename=_str(body, "filename"),
        )
    if kind == "interactive" and isinstance(body, dict):
        reply_type = _str(body, "type") or ""
        details["interactive_type"] = reply_type
        reply = body.get(reply_type)
        if reply_type in ("button_reply", "list_reply"):
            details["reply_id"] = _str(reply, "id")
            if _str(reply, "description") is not None:
                details["description"] = _str(reply, "description")
            return Text(_str(reply, "title") or "")
        if reply_type == "nfm_reply":
            details["response_json"] = _str(reply, "response_json")
            return Text(_str(reply, "body") or _str(reply, "name") or "flow response")
        return Text(f"interactive {reply_type or 'reply'}")
    if kind == "button":
        details["payload"] = _str(body, "payload")
        return Text(_str(body, "text") or "")
    if kind == "location" and isinstance(body, dict):
        details["location"] = body
    elif kind == "reaction":
        details["reacted_to"] = _str(body, "message_id")
        details["emoji"] = _str(body, "emoji")
    elif kind == "revoke":
        details["original_message_id"] = _str(body, "original_message_id")
    elif kind in ("contacts", "order", "system") and body is not None:
        details[kind] = body
    errors = message.get("errors")
    if isinstance(errors, list) and errors:
        details["errors"] = errors
    return Text(_summary(kind, body))


def _inbound(
    item: object,
    where: str,
    channel: str,
    extra: Mapping[str, Any],
    names: Mapping[str | None, str],
    received_at: datetime,
) -> InboundMessage:
    message = _object(item, where)
    provider_id = _str(message, "id")
    if not provider_id:
        raise _bad(where, "a message without 'id'")
    sender = _str(message, "from") or _str(message, "from_user_id")
    if not sender:
        raise _bad(where, "a message without 'from' (or 'from_user_id')")
    kind = _str(message, "type") or "unknown"
    details: dict[str, Any] = {"kind": kind, **extra}
    profile_name = names.get(sender) or names.get(_str(message, "from_user_id")) or names.get(None)
    if profile_name:
        details["profile_name"] = profile_name
    context = message.get("context")
    for flag in ("forwarded", "frequently_forwarded"):
        if isinstance(context, dict) and context.get(flag):
            details[flag] = True
    if isinstance(message.get("referral"), dict):
        details["referral"] = message["referral"]
    content = _inbound_content(kind, message, details)
    return InboundMessage(
        channel=channel,
        sender=sender,
        content=content,
        provider_message_id=provider_id,
        reply_to=_str(context, "id"),
        details=details,
        occurred_at=_time(message, where, received_at),
    )


def parse_notification(
    data: object, *, channel: str = "whatsapp", received_at: datetime | None = None
) -> list[Event]:
    """Turn a decoded notification into events, in the order they appear.

    Every ``entry[].changes[]`` of field ``messages`` is read: ``statuses[]``
    become ``StatusChanged`` (statuses other than sent, delivered, read and
    failed are skipped), ``messages[]`` become ``InboundMessage``, and
    system-level ``errors[]`` are logged. Changes of other fields are skipped.

    A malformed part (an entry, a change or one status or message) is skipped with
    a warning naming its place, and the rest is read: refusing the whole POST would
    lose its good events too, since Meta resends the same bytes.

    :param data: the JSON body, decoded.
    :param channel: the channel name the events carry.
    :param received_at: the time used when an item has no usable timestamp (default: now).
    :raises WebhookError: 400, naming the offending place, when ``data`` is not
        a WhatsApp Business Account notification.
    """
    received_at = received_at or datetime.now(UTC)
    if not isinstance(data, dict):
        raise _bad("", f"the body is not a JSON object but {type(data).__name__}")
    if data.get("object") != _OBJECT:
        raise _bad("", f"'object' is {_short(data.get('object'))}, expected {_OBJECT!r}")
    if not isinstance(data.get("entry"), list):
        raise _bad("", "'entry' is missing or not a list")
    events: list[Event] = []
    for e, raw_entry in enumerate(data["entry"]):
        with _skipped():
            entry = _object(raw_entry, f"entry[{e}]")
            for c, raw_change in enumerate(_list(entry, "changes", f"entry[{e}]")):
                with _skipped():
                    events += _change_events(raw_change, f"entry[{e}].changes[{c}]", channel, received_at)
    return events


def _change_events(raw_change: object, where: str, channel: str, received_at: datetime) -> list[Event]:
    change = _object(raw_change, where)
    field = change.get("field", "messages")
    if field != "messages":
        log.debug("%s: skipping a change of field %s", where, _short(field))
        return []
    value = _object(change.get("value"), f"{where}.value")
    where = f"{where}.value"
    extra = _metadata(value)
    events: list[Event] = []
    for s, item in enumerate(_list(value, "statuses", where)):
        with _skipped():
            status = _status(item, f"{where}.statuses[{s}]", channel, extra, received_at)
            if status is not None:
                events.append(status)
    names = _profile_names(value, where)
    for m, item in enumerate(_list(value, "messages", where)):
        with _skipped():
            events.append(_inbound(item, f"{where}.messages[{m}]", channel, extra, names, received_at))
    for error in _list(value, "errors", where):
        log.warning("%s: WhatsApp reported an error: %s", where, _error_info(error).detail)
    return events


@contextlib.contextmanager
def _skipped() -> Iterator[None]:
    """Skip the part being read when it is malformed (a warning says where and why)."""
    try:
        yield
    except WebhookError as exc:
        log.warning("WhatsApp webhook: skipped %s", exc.detail)


# ---------------------------------------------------------------- duplicates


def _dedup_key(event: Event) -> Hashable | None:
    if isinstance(event, StatusChanged):
        return ("status", event.channel, event.provider_message_id, event.status)
    if isinstance(event, InboundMessage):
        return ("inbound", event.channel, event.provider_message_id)
    return None


class Deduplicator:
    """Remembers the most recent ``max_entries`` events dispatched, to drop redeliveries.

    Statuses are keyed by ``(provider_message_id, status)``, inbound messages by
    ``provider_message_id``; other events are never duplicates. Memory only:
    after a restart, or beyond ``max_entries``, a redelivery passes again.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be > 0, got {max_entries}")
        self.max_entries = max_entries
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, event: Event) -> bool:
        """Whether ``event`` is new; it is remembered as seen either way."""
        key = _dedup_key(event)
        if key is None:
            return True
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return True

    def forget(self, event: Event) -> None:
        """Let ``event`` pass again (its dispatch failed and Meta will redeliver it)."""
        key = _dedup_key(event)
        if key is not None:
            self._seen.pop(key, None)


# ---------------------------------------------------------------- routes


async def _read_body(request: web.Request) -> bytes:
    # request.read() stops at the application's client_max_size (1 MiB by default).
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise WebhookError(f"the body is larger than {MAX_BODY_BYTES} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise WebhookError(f"the body is larger than {MAX_BODY_BYTES} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def make_routes(
    service: OmniChannelService,
    get_config: Callable[[], WhatsAppConfig],
    dedup: Deduplicator,
    path: str = DEFAULT_PATH,
) -> list[Route]:
    """The handshake (``GET``) and notification (``POST``) routes at ``path``.

    :param service: events are dispatched through ``service.emit``.
    :param get_config: read on every request, so that the current settings apply.
    :param dedup: drops notifications already dispatched.
    """

    async def verify(request: web.Request) -> web.StreamResponse:
        try:
            challenge = verify_challenge(request.query, get_config().verify_token)
        except WebhookError as exc:
            log.warning("WhatsApp verification handshake refused: %s", exc.detail)
            raise
        log.info("WhatsApp verification handshake accepted")
        return web.Response(text=challenge, content_type="text/plain")

    async def notify(request: web.Request) -> web.StreamResponse:
        try:
            body = await _read_body(request)
            verify_signature(body, request.headers.get(SIGNATURE_HEADER), get_config().app_secret)
            try:
                data = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise WebhookError(f"the body is not valid JSON ({exc})", status=400) from None
            events = parse_notification(data, received_at=service.clock.now())
        except WebhookError as exc:
            log.warning("WhatsApp webhook refused (%d): %s", exc.status, exc.detail)
            raise
        except Exception as exc:
            # A parser bug must not turn a notification into a 500 that Meta retries for days.
            log.exception("WhatsApp webhook could not be read")
            raise WebhookError("the notification could not be read", status=400) from exc
        dispatched = duplicates = 0
        for event in events:
            if not dedup.first_time(event):
                duplicates += 1
                continue
            try:
                failed = await service.emit(event)
            except BaseException:
                # Meta redelivers on a non-200; the redelivery must not be taken for a duplicate.
                dedup.forget(event)
                raise
            if failed:  # a listener (the message store?) did not take it: have Meta send it again
                dedup.forget(event)
                plugins = ", ".join(sorted({f.plugin_name for f in failed}))
                raise WebhookError(
                    f"a {type(event).__name__} was not handled by {plugins}; "
                    "the notification must be delivered again",
                    status=503,
                )
            dispatched += 1
        if duplicates:
            log.debug("WhatsApp webhook: %d duplicate event(s) dropped", duplicates)
        return web.json_response({"status": "ok", "dispatched": dispatched, "duplicates": duplicates})

    return [
        Route("GET", path, verify, name="whatsapp-webhook-verify"),
        Route("POST", path, notify, name="whatsapp-webhook"),
    ]
