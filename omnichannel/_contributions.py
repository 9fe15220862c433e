"""What plugins contribute when a service is created: channels, configuration, routes, commands.

Each function gathers one kind of contribution from every plugin, checks it and
says which plugin is at fault when something is wrong. ``OmniChannelService``
calls them; they hold no state of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import cattrs

from . import plugins as _plugins
from .config import ServiceConfig, structure_plugin_config
from .errors import ConfigError, PluginError
from .extensions import Channel, Route
from .serde import REDACTED
from .urls import redact_url

if TYPE_CHECKING:
    from .service import OmniChannelService

log = logging.getLogger("omnichannel")

SECRET_WORDS = ("token", "secret", "password", "key")


@attrs.frozen
class ChannelBinding:
    """A channel and the plugin that owns it."""

    channel: Channel
    plugin_name: str
    plugin: object


def bind_channels(
    pm: _plugins.PluginManager, config: ServiceConfig
) -> tuple[dict[str, ChannelBinding], frozenset[object]]:
    """Map each channel to its owner; also return every plugin that declares a channel.

    :raises PluginError: when several plugins declare a channel and the configuration picks none.
    :raises ConfigError: when the configuration picks a plugin that does not declare the channel.
    """
    claims: dict[str, list[ChannelBinding]] = {}
    for plugin_name, declared in _plugins.call_each(pm, "register_channels"):
        for channel in declared or ():
            if not isinstance(channel, Channel):
                raise PluginError(
                    plugin_name, f"register_channels must return Channel objects, got {channel!r}"
                )
            plugin = pm.get_plugin(plugin_name)
            claims.setdefault(channel.name, []).append(ChannelBinding(channel, plugin_name, plugin))
    # Every plugin that declares a channel is kept out of the pipeline of the
    # channels it does not own, including the losers of a configured choice.
    channel_plugins = frozenset(c.plugin for cs in claims.values() for c in cs)
    bindings: dict[str, ChannelBinding] = {}
    errors: list[str] = []
    for name, claimants in sorted(claims.items()):
        owners = [c.plugin_name for c in claimants]
        chosen = config.channels.get(name)
        if chosen is not None:
            picked = [c for c in claimants if c.plugin_name == chosen]
            if not picked:
                errors.append(
                    f"channels.{name}: plugin {chosen!r} does not provide channel {name!r} "
                    f"(provided by: {', '.join(owners)})"
                )
                continue
            bindings[name] = picked[0]
        elif len(claimants) > 1:
            raise PluginError(
                ", ".join(owners),
                f"channel {name!r} is provided by several plugins; pick one in the "
                f'configuration: [channels] {name} = "{owners[0]}"',
            )
        else:
            bindings[name] = claimants[0]
    if errors:
        raise ConfigError(errors)
    for name in sorted(set(config.channels) - set(claims)):
        log.warning("channels.%s: no enabled plugin provides channel %r; the setting is unused", name, name)
    return bindings, channel_plugins


def load_plugin_configs(
    pm: _plugins.PluginManager,
    config: ServiceConfig,
    converter: cattrs.Converter,
    environ: Mapping[str, str],
) -> tuple[dict[str, type], dict[type, Any]]:
    """Structure each plugin's section into the class it declares (``register_config``).

    :return: plugin name -> declared class, and class -> structured configuration.
    :raises ConfigError: listing every problem of every section, and sections of
        plugins that are not installed or take no settings.
    """
    declared: dict[str, type] = {}
    for plugin_name, cls in _plugins.call_each(pm, "register_config"):
        if cls is None:
            continue
        if not (isinstance(cls, type) and attrs.has(cls)):
            raise PluginError(plugin_name, f"register_config must return an attrs class, got {cls!r}")
        declared[plugin_name] = cls
    errors: list[str] = []
    registered = {name.replace("-", "_"): name for name, _ in pm.list_name_plugin()}
    blocked = {name.replace("-", "_") for name in config.blocked_plugins()}
    for section_name, section in config.plugins.items():
        key = section_name.replace("-", "_")
        if key in blocked or not section.settings:
            continue
        owner = registered.get(key)
        if owner is None:
            errors.append(f"plugins.{section_name}: no plugin named {section_name!r} is installed")
        elif owner not in declared:
            errors.extend(
                f"plugins.{section_name}.{setting}: unknown key (plugin {owner!r} takes no settings)"
                for setting in section.settings
            )
    configs: dict[type, Any] = {}
    for plugin_name, cls in declared.items():
        raw = config.plugin_settings(plugin_name).settings
        try:
            configs[cls] = structure_plugin_config(
                converter, cls, raw, plugin_name=plugin_name, environ=environ
            )
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors)
    return declared, configs


def collect_command_handlers(pm: _plugins.PluginManager, service: OmniChannelService) -> dict[type, Any]:
    """Command class -> handler, from every ``register_command_handlers``."""
    handlers: dict[type, Any] = {}
    for plugin_name, contributed in _plugins.call_each(pm, "register_command_handlers", service=service):
        for command_type, handler in (contributed or {}).items():
            if command_type in handlers:
                raise PluginError(plugin_name, f"a handler for {command_type.__name__} is already registered")
            handlers[command_type] = handler
    return handlers


def collect_routes(
    pm: _plugins.PluginManager, service: OmniChannelService, reserved: Iterable[tuple[str, str, str]]
) -> list[Route]:
    """Every web route the plugins contribute; ``reserved`` are (method, path, name) kept by the server.

    :raises PluginError: for a route or route name that is already taken.
    """
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {(m, p): "omnichannel" for m, p, _ in reserved}
    names: dict[str, str] = {n: "omnichannel" for _, _, n in reserved}
    for plugin_name, contributed in _plugins.call_each(pm, "register_routes", service=service):
        for route in contributed or ():
            if not isinstance(route, Route):
                raise PluginError(plugin_name, f"register_routes must return Route objects, got {route!r}")
            key = (route.method, route.path)
            if key in seen:
                raise PluginError(
                    plugin_name, f"route {route.method} {route.path} is already added by {seen[key]!r}"
                )
            if route.name is not None and route.name in names:
                raise PluginError(
                    plugin_name, f"route name {route.name!r} is already used by {names[route.name]!r}"
                )
            seen[key] = plugin_name
            if route.name is not None:
                names[route.name] = plugin_name
            routes.append(route)
    return routes


def redact_by_name(table: dict[str, Any]) -> None:
    """Replace, at any depth (lists included), the values of keys that name a secret (token,
    key, ...), and the password of any URL (``redis://:pw@host``)."""
    for key, value in table.items():
        if isinstance(value, dict):
            redact_by_name(value)
        elif value is not None and any(word in key.lower() for word in SECRET_WORDS):
            table[key] = REDACTED
        elif isinstance(value, list):
            table[key] = [_redacted_item(item) for item in value]
        elif isinstance(value, str) and "@" in value:
            table[key] = redact_url(value)


def _redacted_item(item: Any) -> Any:
    if isinstance(item, dict):
        redact_by_name(item)
    elif isinstance(item, list):
        return [_redacted_item(each) for each in item]
    elif isinstance(item, str) and "@" in item:
        return redact_url(item)
    return item
