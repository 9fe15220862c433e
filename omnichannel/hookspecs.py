"""The hooks a plugin may implement, and the marker to implement them with.

A plugin is a module (or an object) with functions decorated by ``hookimpl``
whose names are hook names below::

    from omnichannel import hookimpl

    @hookimpl
    def on_event(event):
        print(event)

An implementation may accept any subset of the hook's arguments, by name;
never give one a default value (pluggy would not pass it). Plugins are found
through the ``omnichannel`` entry-point group; see docs/plugins/writing.md.

Hooks fall in three groups:

* the send pipeline, called per message: ``validate`` (broadcast), ``build``
  and ``send`` (first result; ``send`` is what middleware wraps), then
  ``on_event`` for what happened;
* contributions, called once: ``register_channels``, ``register_config``,
  ``register_commands``, ``register_routes``, ``register_command_handlers``;
* life cycle: ``startup`` and ``shutdown``;
* operations: ``health``, a plugin's section of ``GET /health``.

The reference for each hook, with examples, is docs/plugins/hooks.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .events import Event
    from .extensions import Channel, Route, Sender
    from .message import Message
    from .service import OmniChannelService

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "omnichannel"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------- the send pipeline


@hookspec
def validate(message: Message, channel: str, service: OmniChannelService) -> Iterable[str] | None:
    """Check ``message`` before it is built for ``channel``; return the problems found.

    :param message: the message about to be sent.
    :param channel: the channel it is about to be sent on.
    :param service: the running service (config, converter, HTTP session).
    :return: problems as short strings that name the field (``"content.body: must not
        be empty"``), or ``None``/an empty iterable when it is fine. The service raises
        one ``MessageValidationError`` listing the problems of every plugin.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def build(message: Message, channel: str, service: OmniChannelService) -> Any | None:
    """Turn ``message`` into the wire payload of ``channel``.

    Only the plugin that owns ``channel`` (and plugins that own no channel) is
    asked, so a channel plugin never checks the channel name.

    :param message: a validated message.
    :param channel: a channel the implementing plugin owns.
    :param service: the running service.
    :return: the payload (preferably a frozen attrs instance), or ``None`` to let
        another implementation build it. Raise ``MessageValidationError`` for a
        message the channel cannot express.

    firstresult: stops at the first non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def send(payload: Any, message: Message, channel: str, service: OmniChannelService) -> Sender | None:
    """Return a *sender* for ``payload``: a zero-argument ``async def`` that performs one
    delivery attempt and returns a ``Receipt``.

    The channel's plugin implements it plainly. Middleware implement it with
    ``@hookimpl(wrapper=True)``: ``inner = yield`` gives the inner sender (or
    ``None``), and the wrapper returns a new sender that calls ``inner`` zero, one
    or several times. Do the work inside the returned sender, never around the
    ``yield``. The sender raises ``DeliveryError`` subclasses on failure.

    :param payload: what ``build`` returned.
    :param message: the message being sent (its id, recipient and key, for middleware).
    :param channel: the channel to send on.
    :param service: the running service (``service.http`` is the shared HTTP session).
    :return: the sender, or ``None`` if this plugin does not send on ``channel``.

    firstresult: stops at the first non-None result; wrappers then wrap it.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def sender_id(message: Message, channel: str, service: OmniChannelService) -> str | None:
    """Name the account of ``channel`` that will send ``message``.

    Middleware keeps per-sender state (circuit breakers, rate limits, metrics
    labels) under this name; WhatsApp answers with the business phone number id.
    Only the plugin that owns ``channel`` (and plugins that own no channel) is
    asked. Middleware and listeners read it through ``service.sender_of(message,
    channel)``; while a message is being sent, the service asks the hook once per
    channel tried and gives every caller that answer.

    :param message: the message being sent.
    :param channel: a channel the implementing plugin owns.
    :param service: the running service.
    :return: a short, stable, non-secret name (never a token or a recipient), or
        ``None`` to let another implementation answer; with no answer at all the
        sender is the channel's name.

    firstresult: stops at the first non-None result.

    .. versionadded:: 0.2
    """


@hookspec
def on_event(event: Event, service: OmniChannelService) -> Awaitable[None] | None:
    """React to ``event``: a message sent or failed, a status webhook, a breaker moving...

    :param event: an instance of a class from ``omnichannel.events``.
    :param service: the running service.
    :return: ``None``, or an awaitable that the service awaits. A listener that
        raises is logged and counted (and reported as ``ListenerFailed``); it never
        fails a send nor stops the other listeners.

    broadcast: all implementations are called, each isolated from the others.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------- contributions


@hookspec
def register_channels() -> Iterable[Channel] | None:
    """Declare the channels this plugin owns.

    :return: ``Channel`` declarations (name, capabilities, description). Two
        plugins declaring one channel is a start-up ``PluginError`` unless the
        configuration's ``channels`` table picks one.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def register_config() -> type | None:
    """Declare the attrs class of this plugin's configuration section.

    The section ``[plugins.<plugin name>]`` (less the generic keys ``enabled`` and
    ``rollout``) is structured into this class when the service is created, so a
    bad value is a ``ConfigError`` naming its path before anything starts. The
    plugin reads it with ``service.plugin_config(TheClass)``.

    :return: an attrs class whose every field has a default or is required in
        the config, or ``None`` when the plugin takes no settings.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``omnichannel`` command line.

    :param cli: the ``omnichannel`` click group; call ``cli.add_command`` or use
        ``@cli.command()``/``@cli.group()``.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def register_routes(service: OmniChannelService) -> Iterable[Route] | None:
    """Add web routes (webhooks, admin pages) to ``omnichannel serve``.

    :param service: the service the server runs; handlers close over it.
    :return: ``Route`` declarations. A route that another plugin already declared
        is a ``PluginError``. A handler that raises ``WebhookError`` answers with its
        status and a JSON error body.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def register_command_handlers(
    service: OmniChannelService,
) -> Mapping[type, Any] | None:
    """Add commands to the command bus.

    :param service: the service the bus belongs to.
    :return: a mapping of command class (a frozen attrs class) to its handler, an
        ``async def handler(command, service)`` returning the command's result.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------- life cycle


@hookspec
def startup(service: OmniChannelService) -> Awaitable[None] | None:
    """Open the plugin's resources (pools, connections, caches) as the service starts.

    Called after the shared HTTP session exists, in hook call order (``tryfirst``
    implementations first, then the most recently registered plugin first).

    :param service: the starting service.
    :return: ``None`` or an awaitable that is awaited. Raising aborts the start
        with a ``PluginError`` naming the plugin; plugins already started are shut down.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


@hookspec
def shutdown(service: OmniChannelService) -> Awaitable[None] | None:
    """Close what ``startup`` opened, as the service stops.

    Called in the reverse order of ``startup``, before the HTTP session closes. A
    failure is logged and does not keep other plugins from shutting down.

    :param service: the stopping service.
    :return: ``None`` or an awaitable that is awaited.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------- operations


@hookspec
def health(service: OmniChannelService) -> Mapping[str, Any] | Awaitable[Mapping[str, Any] | None] | None:
    """Report the plugin's state for ``GET /health`` and ``omnichannel health``.

    Called only while the service runs, each implementation on its own with a time limit
    (``[server] health_timeout_s``); one that raises or is late shows as ``{"error": ...}``
    in its section and does not affect the others. Health is liveness: nothing here changes
    the answer's HTTP status.

    :param service: the running service.
    :return: a JSON-able mapping, shown under the plugin's name (``None``: no section).
        ``"degraded": True`` in it lists the plugin in the report's ``degraded``. Values
        under keys that name secrets (``token``, ``password``, ...) are redacted.

    broadcast: all implementations are called.

    .. versionadded:: 0.1
    """
