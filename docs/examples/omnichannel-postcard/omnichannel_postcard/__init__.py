"""The ``postcard`` channel: each message is "posted" as a JSON file in an outbox directory.

A complete, minimal third-party channel plugin for omnichannel; the plugin
author's guide (docs/plugins/writing.md) walks through it. It imports only from
``omnichannel``'s public API.

Configuration, ``[plugins.postcard]``:

* ``outbox``: the directory postcards are written to (default ``"postcards"``);
  the legacy variable ``POSTCARD_OUTBOX`` is read when the key is not set;
* ``max_chars``: the longest text a postcard holds (default 500).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from omnichannel import (
    Certainty,
    Channel,
    DeliveryStatus,
    ErrorScope,
    InvalidField,
    Message,
    MessageValidationError,
    Receipt,
    SenderUnavailableError,
    Text,
    hookimpl,
    setting,
)

if TYPE_CHECKING:
    from omnichannel import OmniChannelService, Sender

__all__ = ["Postcard", "PostcardConfig"]

CHANNEL = "postcard"


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise InvalidField(attribute.name, f"must be > 0, got {value}")


@attrs.frozen
class PostcardConfig:
    """The settings of ``[plugins.postcard]``."""

    outbox: str = setting(default="postcards", env="POSTCARD_OUTBOX")
    max_chars: int = attrs.field(default=500, validator=_positive)


@attrs.frozen
class Postcard:
    """The wire payload: what is written to the outbox."""

    message_id: str
    to: str
    text: str


@hookimpl
def register_channels() -> list[Channel]:
    return [Channel(CHANNEL, capabilities={"text"}, description="writes each message to a JSON file")]


@hookimpl
def register_config() -> type:
    return PostcardConfig


@hookimpl
def validate(message: Message, service: OmniChannelService) -> list[str]:
    # Only called for messages on "postcard": the service asks a channel plugin
    # about its own channels only. The core already checked the content kind.
    limit = service.plugin_config(PostcardConfig).max_chars
    content = message.content
    if isinstance(content, Text) and len(content.body) > limit:
        return [f"content.body: a postcard holds at most {limit} characters, got {len(content.body)}"]
    return []


@hookimpl
def build(message: Message) -> Postcard:
    if not isinstance(message.content, Text):
        raise MessageValidationError(["content: a postcard carries text only"], message_id=message.id)
    return Postcard(message_id=message.id, to=message.recipient, text=message.content.body)


def _post(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    # Atomic: a postcard is either fully in the outbox or not at all.
    os.replace(partial, path)


@hookimpl
def send(payload: Postcard, service: OmniChannelService) -> Sender:
    outbox = Path(service.plugin_config(PostcardConfig).outbox)
    data = service.converter.unstructure(payload)

    async def post() -> Receipt:
        # Named after our message id: a retry overwrites the same file, so it never duplicates.
        path = outbox / f"{payload.message_id}.json"
        try:
            await asyncio.to_thread(_post, path, data)
        except OSError as exc:
            raise SenderUnavailableError(
                f"cannot write to the outbox {str(outbox)!r}: {exc.strerror or exc}",
                certainty=Certainty.NOT_SENT,
                scope=ErrorScope.SENDER,
            ) from exc
        return Receipt(
            message_id=payload.message_id,
            channel=CHANNEL,
            status=DeliveryStatus.ACCEPTED,
            provider_message_id=path.name,
        )

    return post
