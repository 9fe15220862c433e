"""The core's own hook implementations, registered in every plugin manager.

* ``validate``: the channel-neutral rules every message must follow.
* ``send`` (innermost wrapper): counts delivery attempts for the receipt.
"""

from __future__ import annotations

import contextvars
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import attrs

from .hookspecs import hookimpl
from .message import Buttons, ListMenu, Media, Message, Receipt, Template, Text

if TYPE_CHECKING:
    from .extensions import Sender
    from .service import OmniChannelService


@attrs.define
class AttemptCounter:
    """How many times the innermost sender was called during one send."""

    count: int = 0


ATTEMPTS: contextvars.ContextVar[AttemptCounter] = contextvars.ContextVar("omnichannel_attempts")

CONTENT_KINDS: dict[type, str] = {
    Text: "text",
    Template: "template",
    Media: "media",
    Buttons: "buttons",
    ListMenu: "list",
}
"""Content class -> the capability a channel declares to carry it."""


def _template_problems(template: Template) -> Iterator[str]:
    if not template.name.strip():
        yield "content.name: template name must not be empty"
    if not template.language.strip():
        yield "content.language: must not be empty"
    named = [p.name for p in template.body if p.name is not None]
    if named and len(named) != len(template.body):
        yield "content.body: parameters must be all named or all positional, not a mix"
    duplicates = sorted({n for n in named if named.count(n) > 1})
    if duplicates:
        yield f"content.body: parameter names must be unique, repeated: {', '.join(duplicates)}"
    seen_buttons: set[int] = set()
    for i, button in enumerate(template.buttons):
        if button.index < 0:
            yield f"content.buttons[{i}].index: must be >= 0, got {button.index}"
        if button.index in seen_buttons:
            yield f"content.buttons[{i}].index: button {button.index} is given twice"
        seen_buttons.add(button.index)


def _choice_problems(body: str, field: str, ids: list[str]) -> Iterator[str]:
    if not body.strip():
        yield "content.body: must not be empty"
    if not ids:
        yield f"content.{field}: give at least one choice"
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        yield f"content.{field}: ids must be unique, repeated: {', '.join(repeated)}"


def _content_problems(message: Message) -> list[str]:
    content = message.content
    if isinstance(content, Text):
        return [] if content.body.strip() else ["content.body: must not be empty"]
    if isinstance(content, Template):
        return list(_template_problems(content))
    if isinstance(content, Buttons):
        return list(_choice_problems(content.body, "buttons", [b.id for b in content.buttons]))
    if isinstance(content, ListMenu):
        ids = [row.id for section in content.sections for row in section.rows]
        problems = list(_choice_problems(content.body, "sections", ids))
        problems += [
            f"content.sections[{i}].rows: must not be empty"
            for i, s in enumerate(content.sections)
            if not s.rows
        ]
        return problems
    if (content.url is None) == (content.media_id is None):
        return ["content: give exactly one of url or media_id"]
    return []


@hookimpl
def validate(message: Message, channel: str, service: OmniChannelService) -> list[str]:
    """Check what every message needs, whatever its channel."""
    problems = []
    if not message.recipient:
        problems.append("recipient: must not be empty")
    if message.channel is not None and message.route:
        problems.append("route: give either channel or route, not both")
    if message.reply_to is not None and not message.reply_to.strip():
        problems.append("reply_to: must not be empty when given")
    problems += _content_problems(message)
    kind = CONTENT_KINDS.get(type(message.content))
    declared = service.channel_info(channel)
    if kind is not None and declared is not None and kind not in declared.capabilities:
        supported = ", ".join(sorted(declared.capabilities)) or "nothing"
        problems.append(
            f"content: channel {channel!r} cannot send {kind} messages (it supports: {supported})"
        )
    return problems


@hookimpl(wrapper=True, trylast=True)
def send() -> Generator[None, Sender | None, Sender | None]:
    """Count each call of the channel's own sender: the receipt's ``attempts``."""
    inner = yield
    return None if inner is None else count_attempts(inner)


def count_attempts(channel_sender: Sender) -> Sender:
    """``channel_sender``, counting each call in the send's :data:`ATTEMPTS` counter.

    What the ``send`` wrapper above returns; the service's direct hook calls
    (``_hookplan.WrappedCall``) apply it as a function, without the wrapper protocol.
    """

    async def counted() -> Receipt:
        counter = ATTEMPTS.get(None)
        if counter is not None:
            counter.count += 1
        return await channel_sender()

    return counted
