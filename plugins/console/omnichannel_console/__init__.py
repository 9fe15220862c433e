"""The ``console`` channel: prints each message to the terminal; needs no account.

It is the channel a newcomer sends to first, and a model of a minimal channel
plugin: it declares its channel, its configuration, builds a payload and
returns a sender. Configuration (``[plugins.console]``): ``stream`` is
``"stdout"`` (default) or ``"stderr"``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import attrs

from omnichannel import (
    Buttons,
    Channel,
    DeliveryStatus,
    InvalidField,
    ListMenu,
    Media,
    Message,
    Receipt,
    Template,
    Text,
    hookimpl,
    new_message_id,
)

if TYPE_CHECKING:
    from omnichannel import OmniChannelService, Sender

__all__ = ["ConsoleConfig", "ConsolePayload"]

CHANNEL = "console"


def _stream_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("stdout", "stderr"):
        raise InvalidField(attribute.name, f"must be 'stdout' or 'stderr', got {value!r}")


@attrs.frozen
class ConsoleConfig:
    """Settings of the console channel."""

    stream: str = attrs.field(default="stdout", validator=_stream_name)


@attrs.frozen
class ConsolePayload:
    """The line printed for one message."""

    recipient: str
    text: str


def render(message: Message) -> str:
    """A one-line, human-readable form of the message's content."""
    content = message.content
    if isinstance(content, Text):
        return content.body
    if isinstance(content, Template):
        values = ", ".join(f"{p.name}={_param_text(p)}" if p.name else _param_text(p) for p in content.body)
        return f"template {content.name} ({content.language}) [{values}]"
    if isinstance(content, Media):
        where = content.url or f"media id {content.media_id}"
        caption = f" {content.caption!r}" if content.caption else ""
        return f"{content.kind} {where}{caption}"
    if isinstance(content, Buttons):
        return f"{content.body} [{' | '.join(b.title for b in content.buttons)}]"
    if isinstance(content, ListMenu):
        rows = [row.title for section in content.sections for row in section.rows]
        return f"{content.body} [{content.button}: {' | '.join(rows)}]"
    raise TypeError(f"unsupported content {type(content).__name__}")


def _param_text(param: object) -> str:
    for attribute in ("text", "fallback_value", "link", "media_id", "location_name"):
        value = getattr(param, attribute, None)
        if value:
            return str(value)
    return type(param).__name__


@hookimpl
def register_channels() -> list[Channel]:
    return [
        Channel(
            CHANNEL,
            capabilities={"text", "template", "media", "buttons", "list"},
            description="prints messages to the terminal; needs no account",
        )
    ]


@hookimpl
def register_config() -> type:
    return ConsoleConfig


@hookimpl
def build(message: Message) -> ConsolePayload:
    return ConsolePayload(message.recipient, render(message))


@hookimpl
def send(payload: ConsolePayload, message: Message, service: OmniChannelService) -> Sender:
    config = service.plugin_config(ConsoleConfig)

    async def deliver() -> Receipt:
        stream = sys.stdout if config.stream == "stdout" else sys.stderr
        stream.write(f"[{CHANNEL}] to {payload.recipient}: {payload.text}\n")
        stream.flush()
        return Receipt(
            message_id=message.id,
            channel=CHANNEL,
            status=DeliveryStatus.ACCEPTED,
            provider_message_id=f"console-{new_message_id()}",
        )

    return deliver
