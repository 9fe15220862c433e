"""Commands and the command bus.

A command is a frozen attrs class that says what to do (``SendMessage``,
``SendBulk``); a handler is an ``async def handler(command, service)`` that
does it. The bus finds the handler by the command's class and runs it through
a *transport*: ``InProcessTransport`` (the default) runs it at once, in this
process; a broker transport (see the amqp plugin) publishes the encoded command
and lets workers run it.

Commands cross process boundaries as JSON: ``bus.encode(command)`` gives
``{"command": "send_bulk", "data": {...}}`` and ``bus.decode`` reverses it.
Plugins add commands with the ``register_command_handlers`` hook.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import cattrs

from .errors import CommandError, UnknownCommandError
from .message import (
    Content,
    DeliveryStatus,
    Message,
    Receipt,
    _frozen_mapping,
    _str_tuple,
    new_message_id,
)
from .serde import format_errors

if TYPE_CHECKING:
    from .service import OmniChannelService

__all__ = [
    "BulkResult",
    "CommandBus",
    "CommandHandler",
    "InProcessTransport",
    "SendBulk",
    "SendMessage",
    "Transport",
    "command_name",
]

CommandHandler = Callable[[Any, "OmniChannelService"], Awaitable[Any]]


def command_name(command_type: type) -> str:
    """The wire name of a command class: ``SendBulk`` -> ``send_bulk``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", command_type.__name__).lower()


@attrs.frozen
class SendMessage:
    """Send one message; the result is its ``Receipt``."""

    message: Message


@attrs.frozen
class SendBulk:
    """Send the same content to many recipients (a campaign); the result is a ``BulkResult``.

    Each recipient's message gets the idempotency key ``<campaign_id>:<recipient>``,
    so running the same command twice cannot send twice where keys are checked.
    """

    recipients: tuple[str, ...] = attrs.field(converter=_str_tuple)
    content: Content
    channel: str | None = None
    route: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    campaign_id: str = attrs.field(factory=new_message_id)
    concurrency: int | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)

    def messages(self) -> list[Message]:
        """One message per recipient, in order."""
        metadata = {**self.metadata, "campaign_id": self.campaign_id}
        return [
            Message(
                recipient,
                self.content,
                channel=self.channel,
                route=self.route,
                idempotency_key=f"{self.campaign_id}:{recipient.strip()}",
                metadata=metadata,
            )
            for recipient in self.recipients
        ]


@attrs.frozen
class BulkResult:
    """The receipts of a ``SendBulk``, in recipient order."""

    campaign_id: str
    receipts: tuple[Receipt, ...]

    @property
    def accepted(self) -> int:
        """How many messages the providers accepted."""
        return sum(1 for r in self.receipts if r.ok)

    @property
    def failed(self) -> int:
        """How many messages failed."""
        return sum(1 for r in self.receipts if r.status is DeliveryStatus.FAILED)


async def handle_send_message(command: SendMessage, service: OmniChannelService) -> Receipt:
    """Send the command's message (raises as ``service.send`` does)."""
    return await service.send(command.message)


async def handle_send_bulk(command: SendBulk, service: OmniChannelService) -> BulkResult:
    """Send to every recipient; one failure never stops the others."""
    receipts = await service.send_many(command.messages(), concurrency=command.concurrency)
    return BulkResult(command.campaign_id, tuple(receipts))


class Transport(Protocol):
    """How the bus gets a command executed."""

    async def submit(self, command: object, bus: CommandBus) -> Any:
        """Have ``command`` executed (now, or later by a worker) and return what the caller gets."""
        ...


class InProcessTransport:
    """Runs each command at once, in this process, and returns the handler's result."""

    async def submit(self, command: object, bus: CommandBus) -> Any:
        return await bus.execute(command)


class CommandBus:
    """Dispatches commands to their handlers through a transport.

    :param service: the service handlers run against.
    :param transport: defaults to ``InProcessTransport()``.
    """

    def __init__(self, service: OmniChannelService, transport: Transport | None = None) -> None:
        self.service = service
        self.transport: Transport = transport or InProcessTransport()
        self._handlers: dict[type, CommandHandler] = {}
        self._types: dict[str, type] = {}
        self.register(SendMessage, handle_send_message)
        self.register(SendBulk, handle_send_bulk)
        for command_type, handler in service.command_handlers().items():
            self.register(command_type, handler)

    def register(self, command_type: type, handler: CommandHandler) -> None:
        """Make ``handler`` the handler of ``command_type`` (replacing a previous one)."""
        if not attrs.has(command_type):
            raise CommandError(f"{command_type!r} is not an attrs class; commands must be")
        name = command_name(command_type)
        taken = self._types.get(name)
        if taken is not None and taken is not command_type:
            raise CommandError(
                f"{command_type.__module__}.{command_type.__qualname__} and "
                f"{taken.__module__}.{taken.__qualname__} both encode as {name!r}; rename one"
            )
        self._handlers[command_type] = handler
        self._types[name] = command_type

    @property
    def command_types(self) -> Mapping[str, type]:
        """Registered command classes by wire name."""
        return dict(self._types)

    async def dispatch(self, command: object) -> Any:
        """Submit ``command`` through the transport and return its result.

        :raises UnknownCommandError: when no handler is registered for it.
        """
        if type(command) not in self._handlers:
            raise UnknownCommandError(type(command).__name__)
        return await self.transport.submit(command, self)

    async def execute(self, command: object) -> Any:
        """Run ``command``'s handler here and now (what transports and workers call)."""
        try:
            handler = self._handlers[type(command)]
        except KeyError:
            raise UnknownCommandError(type(command).__name__) from None
        return await handler(command, self.service)

    def encode(self, command: object) -> bytes:
        """The command as UTF-8 JSON: ``{"command": name, "data": {...}}``."""
        if type(command) not in self._handlers:
            raise UnknownCommandError(type(command).__name__)
        data = self.service.converter.unstructure(command)
        return json.dumps({"command": command_name(type(command)), "data": data}).encode()

    def decode(self, raw: bytes | str) -> object:
        """Rebuild a command from ``encode``'s output.

        :raises CommandError: for malformed JSON or data, with every problem listed.
        :raises UnknownCommandError: for a command with no handler here.
        """
        try:
            envelope = json.loads(raw)
        except ValueError as exc:
            raise CommandError(f"command is not valid JSON: {exc}") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("command"), str):
            raise CommandError('command must be a JSON object with a "command" name and "data"')
        name = envelope["command"]
        command_type = self._types.get(name)
        if command_type is None:
            raise UnknownCommandError(name)
        try:
            return self.service.converter.structure(envelope.get("data"), command_type)
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            lines = format_errors(exc, "data")
            raise CommandError(f"invalid {name} command: " + "; ".join(lines)) from None
