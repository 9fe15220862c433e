"""Immutable value types: a message, its content, and the receipt of its delivery.

Content is channel-neutral. A ``Template`` names an approved, pre-registered
message and fills its placeholders, positionally (``body=["Ann", "42"]``) or
by name (``body={"first_name": "Ann"}``); each channel plugin maps it to its
provider's wire format.

Construction only normalises; the rules a message must follow are checked by
the ``validate`` hook, so that every problem is reported at once.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import TypeAlias

import attrs

from .errors import Certainty, DeliveryError, ErrorScope

__all__ = [
    "ButtonType",
    "Buttons",
    "Content",
    "CurrencyParam",
    "DateTimeParam",
    "DeliveryStatus",
    "ErrorInfo",
    "ListMenu",
    "ListRow",
    "ListSection",
    "LocationParam",
    "Media",
    "MediaKind",
    "MediaParam",
    "Message",
    "Param",
    "Receipt",
    "ReplyButton",
    "Template",
    "TemplateButton",
    "Text",
    "TextParam",
    "new_message_id",
]


def new_message_id() -> str:
    """Return a new 32-hex-digit id that sorts by creation time (millisecond prefix)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


def _stripped(value: str) -> str:
    return value.strip()


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


class MediaKind(enum.StrEnum):
    """Kinds of media a ``Media`` message or a template header can carry."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    DOCUMENT = "document"
    STICKER = "sticker"


# ---------------------------------------------------------------- template parameters


@attrs.frozen
class TextParam:
    """A text placeholder value; ``name`` is set for named placeholders."""

    text: str
    name: str | None = None


@attrs.frozen
class CurrencyParam:
    """A localised amount of money: ``amount_1000`` is the amount times 1000."""

    fallback_value: str
    code: str
    amount_1000: int
    name: str | None = None


@attrs.frozen
class DateTimeParam:
    """A date and time shown to the recipient as ``fallback_value``."""

    fallback_value: str
    name: str | None = None


@attrs.frozen
class MediaParam:
    """A header image, video or document, by public ``link`` or uploaded ``media_id``."""

    kind: MediaKind = attrs.field(converter=MediaKind)
    link: str | None = None
    media_id: str | None = None
    filename: str | None = None
    name: str | None = None


@attrs.frozen
class LocationParam:
    """A header location."""

    latitude: float
    longitude: float
    location_name: str | None = None
    address: str | None = None
    name: str | None = None


Param: TypeAlias = TextParam | CurrencyParam | DateTimeParam | MediaParam | LocationParam


def _params(value: Param | str | Sequence[Param | str] | Mapping[str, Param | str]) -> tuple[Param, ...]:
    """Normalise one parameter, positional lists and name->value mappings into a tuple of parameters."""
    if isinstance(value, TextParam | CurrencyParam | DateTimeParam | MediaParam | LocationParam):
        return (value,)
    if isinstance(value, Mapping):
        return tuple(
            TextParam(v, name=k) if isinstance(v, str) else attrs.evolve(v, name=k) for k, v in value.items()
        )
    if isinstance(value, str):
        return (TextParam(value),)
    return tuple(TextParam(v) if isinstance(v, str) else v for v in value)


def _buttons(value: Iterable[TemplateButton]) -> tuple[TemplateButton, ...]:
    return tuple(value)


class ButtonType(enum.StrEnum):
    """Template button kinds that take a parameter."""

    QUICK_REPLY = "quick_reply"
    URL = "url"
    COPY_CODE = "copy_code"


@attrs.frozen
class TemplateButton:
    """The parameter of the template's button at ``index``.

    ``value`` is the payload of a quick reply, the variable suffix of a URL
    button, or the code of a copy-code button.
    """

    sub_type: ButtonType = attrs.field(converter=ButtonType)
    index: int
    value: str


# ---------------------------------------------------------------- content


@attrs.frozen
class Text:
    """A plain text message."""

    body: str
    preview_url: bool = False


@attrs.frozen
class Template:
    """A pre-approved template and the values of its placeholders."""

    name: str
    language: str = "en_US"
    header: tuple[Param, ...] = attrs.field(default=(), converter=_params)
    body: tuple[Param, ...] = attrs.field(default=(), converter=_params)
    buttons: tuple[TemplateButton, ...] = attrs.field(default=(), converter=_buttons)

    @property
    def uses_named_parameters(self) -> bool:
        """Whether the body's placeholders are named rather than positional."""
        return any(p.name is not None for p in self.body)


@attrs.frozen
class Media:
    """An image, video, audio clip, document or sticker, by ``url`` or uploaded ``media_id``."""

    kind: MediaKind = attrs.field(converter=MediaKind)
    url: str | None = None
    media_id: str | None = None
    caption: str | None = None
    filename: str | None = None


@attrs.frozen
class ReplyButton:
    """A quick-reply button: ``id`` comes back in the recipient's reply, ``title`` is shown."""

    id: str
    title: str


def _reply_buttons(value: Iterable[ReplyButton]) -> tuple[ReplyButton, ...]:
    return tuple(value)


@attrs.frozen
class Buttons:
    """Text with up to a few reply buttons (interactive "button" message)."""

    body: str
    buttons: tuple[ReplyButton, ...] = attrs.field(converter=_reply_buttons)
    header: str | None = None
    footer: str | None = None


@attrs.frozen
class ListRow:
    """One choice of a ``ListMenu``: ``id`` comes back in the reply."""

    id: str
    title: str
    description: str | None = None


def _list_rows(value: Iterable[ListRow]) -> tuple[ListRow, ...]:
    return tuple(value)


@attrs.frozen
class ListSection:
    """A titled group of rows of a ``ListMenu``."""

    rows: tuple[ListRow, ...] = attrs.field(converter=_list_rows)
    title: str | None = None


def _list_sections(value: Iterable[ListSection]) -> tuple[ListSection, ...]:
    return tuple(value)


@attrs.frozen
class ListMenu:
    """Text with a button that opens a list of choices (interactive "list" message)."""

    body: str
    button: str
    sections: tuple[ListSection, ...] = attrs.field(converter=_list_sections)
    header: str | None = None
    footer: str | None = None


Content: TypeAlias = Text | Template | Media | Buttons | ListMenu


# ---------------------------------------------------------------- message and receipt


@attrs.frozen
class Message:
    """One message to one recipient.

    :param recipient: the address on the channel (E.164 phone number, e-mail, chat id, ...).
    :param content: what to send.
    :param channel: the channel to send on; or give ``route``, an ordered list of
        channels to try until one delivers; with neither, the configured default route.
    :param id: our id; generated when not given.
    :param idempotency_key: deduplicates redeliveries; defaults to ``id``.
    :param reply_to: the provider's id of an earlier message this one answers (quoted reply).
    :param metadata: free-form string pairs carried along (never used as metric labels).
    """

    recipient: str = attrs.field(converter=_stripped)
    content: Content
    channel: str | None = None
    route: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    id: str = attrs.field(factory=new_message_id)
    idempotency_key: str | None = None
    reply_to: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)

    @property
    def key(self) -> str:
        """The idempotency key: the one given, else the message id."""
        return self.idempotency_key or self.id


class DeliveryStatus(enum.StrEnum):
    """Where a message stands; statuses only move forward, except to ``failed``."""

    QUEUED = "queued"
    ACCEPTED = "accepted"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


@attrs.frozen
class ErrorInfo:
    """A serialisable description of why a delivery failed."""

    kind: str
    detail: str
    code: int | str | None = None
    http_status: int | None = None
    certainty: Certainty | None = None
    scope: ErrorScope | None = None
    retryable: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe ``exc``; delivery errors keep their provider code, status, certainty and scope."""
        if isinstance(exc, DeliveryError):
            return cls(
                kind=type(exc).__name__,
                detail=exc.detail,
                code=exc.code,
                http_status=exc.http_status,
                certainty=exc.certainty,
                scope=exc.scope,
                retryable=exc.retryable,
            )
        return cls(kind=type(exc).__name__, detail=str(exc) or type(exc).__name__)


@attrs.frozen
class Receipt:
    """What happened to one send.

    ``status`` is ``accepted`` when the provider took the message (its id is
    ``provider_message_id``) and ``failed`` with ``error`` otherwise. Later
    changes (delivered, read) arrive as ``StatusChanged`` events.
    """

    message_id: str
    channel: str
    status: DeliveryStatus
    provider_message_id: str | None = None
    provider_status: str | None = None
    attempts: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        """Whether the provider accepted the message."""
        return self.status is not DeliveryStatus.FAILED

    @property
    def duration_s(self) -> float | None:
        """Seconds from the start of the send to its outcome, when both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()
