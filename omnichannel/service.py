"""``OmniChannelService``: the one object a host application holds.

It owns the plugin manager (and is the only code that runs the send
pipeline's hooks), the strict converter, the configuration and one shared
``aiohttp.ClientSession``. Use it as an async context manager::

    async with OmniChannelService(load_config()) as service:
        receipt = await service.send(Message("+15551234567", Text("hi"), channel="console"))

``send`` goes through route -> validate -> build -> send (wrapped by
middleware) -> events, and raises on failure; ``send_many`` never raises for
one message and returns a receipt for each, in input order. Those methods and
``emit`` live in :mod:`omnichannel._pipeline` (the service's base class); this
module holds set-up, introspection and the life cycle.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aiohttp
import pluggy

from . import plugins as _plugins
from ._contributions import (
    bind_channels,
    collect_command_handlers,
    collect_routes,
    load_plugin_configs,
    redact_by_name,
)
from ._pipeline import EventStats, SendPipeline
from .clock import Clock, SystemClock
from .config import ServiceConfig, register_config_hooks
from .errors import PluginError, ServiceStateError
from .events import ServiceStarted, ServiceStopping
from .extensions import Channel, Route
from .serde import make_converter

if TYPE_CHECKING:
    from .commands import CommandBus
    from .plugins import PluginInfo

__all__ = ["EventStats", "OmniChannelService"]

log = logging.getLogger("omnichannel")

T = TypeVar("T")


class OmniChannelService(SendPipeline):
    """Sends messages through the channel plugins, wrapped by middleware plugins.

    :param config: the configuration (``load_config()`` reads file and environment);
        defaults to ``ServiceConfig()``.
    :param plugins: plugin objects, or ``(name, plugin)`` pairs, to register besides
        the installed ones.
    :param load_entrypoints: load installed plugins (``False`` in most tests).
    :param plugin_manager: a ready manager to use instead of building one.
    :param clock: the source of time (``omnichannel.testing.FakeClock`` in tests).
    :param environ: where legacy environment variable names are read from.
    :raises ConfigError: for a bad plugin section.
    :raises PluginError: for conflicting channel owners or a broken plugin.
    """

    def __init__(
        self,
        config: ServiceConfig | None = None,
        *,
        plugins: Iterable[object | tuple[str, object]] = (),
        load_entrypoints: bool = True,
        plugin_manager: _plugins.PluginManager | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config if config is not None else ServiceConfig()
        self.clock: Clock = clock or SystemClock()
        self.converter = register_config_hooks(make_converter())
        self.event_stats = EventStats()
        if plugin_manager is None:
            plugin_manager = _plugins.get_plugin_manager(
                load_entrypoints=load_entrypoints,
                blocked=self.config.blocked_plugins(),
                plugins=plugins,
                strict=self.config.strict_plugins,
            )
        else:
            for item in plugins:
                name, plugin = item if isinstance(item, tuple) else (None, item)
                _plugins.register_plugin(plugin_manager, plugin, name)
        self._pm = plugin_manager
        for error in self._pm.load_errors:
            log.error("%s (the other plugins are loaded)", error)
        self._undo_trace = _plugins.trace_hook_calls(self._pm, log) if self.config.trace_plugins else None
        self._channels, self._channel_plugins = bind_channels(self._pm, self.config)
        self._config_classes, self._plugin_configs = load_plugin_configs(
            self._pm, self.config, self.converter, os.environ if environ is None else environ
        )
        self._rollouts = self._rollout_shares()
        self._plans = {}
        self._sending = {}  # id(message) -> its send in progress
        self._listeners = []
        self._cached_generation = -1
        self._http: aiohttp.ClientSession | None = None
        self._started_plugins: list[pluggy.HookImpl] = []
        self._state = "new"
        self._bus: CommandBus | None = None
        self.state: dict[str, Any] = {}
        """Room for plugins' per-service objects (clients, caches), keyed by plugin name."""

    # ------------------------------------------------------------ set-up

    def _rollout_shares(self) -> dict[object, tuple[str, float]]:
        shares = {}
        for name, plugin in self._pm.list_name_plugin():
            percent = self.config.plugin_settings(name).rollout
            if plugin is not None and percent < 100:
                shares[plugin] = (name, percent)
        return shares

    # ------------------------------------------------------------ introspection

    @property
    def plugin_manager(self) -> _plugins.PluginManager:
        """The plugin manager (read-only use: introspection and tests)."""
        return self._pm

    @property
    def channels(self) -> Mapping[str, Channel]:
        """Every available channel, by name."""
        return {name: binding.channel for name, binding in self._channels.items()}

    def channel_info(self, channel: str) -> Channel | None:
        """The declaration of ``channel``, or ``None`` when no plugin provides it."""
        binding = self._channels.get(channel)
        return binding.channel if binding else None

    def channel_owner(self, channel: str) -> str | None:
        """The name of the plugin that owns ``channel``."""
        binding = self._channels.get(channel)
        return binding.plugin_name if binding else None

    def plugin_config(self, cls: type[T]) -> T:
        """The structured configuration of the plugin that declared ``cls`` in ``register_config``."""
        try:
            config: T = self._plugin_configs[cls]
        except KeyError:
            raise PluginError(cls.__name__, "this class was not declared by register_config") from None
        return config

    def plugins(self) -> list[PluginInfo]:
        """Describe the registered plugins (and those that failed to load)."""
        owned: dict[str, list[str]] = {}
        for name, binding in self._channels.items():
            owned.setdefault(binding.plugin_name, []).append(name)
        return _plugins.plugin_infos(self._pm, owned)

    def describe_config(self) -> dict[str, Any]:
        """The effective configuration as plain data, every secret redacted."""
        data: dict[str, Any] = self.converter.unstructure(self.config)
        sections: dict[str, Any] = data["plugins"]
        for plugin_name, cls in self._config_classes.items():
            section = sections.setdefault(plugin_name, {"enabled": True, "rollout": 100.0})
            section.update(self.converter.unstructure(self._plugin_configs[cls]))
        # Sections of disabled plugins were never checked against a class: redact by name.
        for section in sections.values():
            redact_by_name(section)
        return data

    @property
    def bus(self) -> CommandBus:
        """The command bus, with the built-in and the plugins' command handlers."""
        if self._bus is None:
            from .commands import CommandBus, Transport

            transport: Transport | None = None
            if self.config.amqp is not None:  # commands go to the broker, for `omnichannel worker`
                from .amqp import AmqpTransport

                transport = AmqpTransport(self.config.amqp)
            self._bus = CommandBus(self, transport)
        return self._bus

    def command_handlers(self) -> dict[type, Any]:
        """Command class -> handler, from every ``register_command_handlers``."""
        return collect_command_handlers(self._pm, self)

    def routes(self, *, reserved: Iterable[tuple[str, str, str]] = ()) -> list[Route]:
        """Every web route the plugins contribute.

        :param reserved: (method, path, name) of routes the server keeps for itself.
        :raises PluginError: for a route or route name that is already taken.
        """
        return collect_routes(self._pm, self, reserved)

    # ------------------------------------------------------------ life cycle

    @property
    def started(self) -> bool:
        """Whether the service is running."""
        return self._state == "started"

    @property
    def http(self) -> aiohttp.ClientSession:
        """The shared HTTP session; plugins never create their own."""
        if self._http is None:
            raise self._not_running()
        return self._http

    async def start(self) -> None:
        """Open the HTTP session and start every plugin (``startup`` hooks)."""
        if self._state == "started":
            return
        if self._state == "stopped":
            raise ServiceStateError("a stopped service cannot be started again; create a new one")
        http = self.config.http
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=http.timeout_s, connect=http.connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=http.max_connections),
        )
        for impl in _plugins.hook_impls(self._pm, "startup"):
            try:
                await _await_maybe(_plugins.call_impl(impl, {"service": self}))
            except Exception as exc:
                await self._shutdown_plugins()
                await self._close_http()
                self._state = "stopped"
                raise PluginError(impl.plugin_name, f"startup failed: {exc!r}") from exc
            self._started_plugins.append(impl)
        self._state = "started"
        await self.emit(ServiceStarted(occurred_at=self.clock.now()))

    async def stop(self) -> None:
        """Stop the plugins (``shutdown`` hooks, reverse order) and close the HTTP session."""
        if self._state != "started":
            return
        await self.emit(ServiceStopping(occurred_at=self.clock.now()))
        self._state = "stopping"  # no new sends; plugins still have the HTTP session
        await self._shutdown_plugins()
        await self._close_http()
        close = getattr(self._bus.transport if self._bus is not None else None, "close", None)
        if close is not None:
            await close()  # a broker transport's connection
        self._state = "stopped"
        if self._undo_trace is not None:
            self._undo_trace()

    async def _shutdown_plugins(self) -> None:
        started = {impl.plugin for impl in self._started_plugins}
        have_startup = {impl.plugin for impl in _plugins.hook_impls(self._pm, "startup")}
        for impl in reversed(_plugins.hook_impls(self._pm, "shutdown")):
            if impl.plugin in have_startup and impl.plugin not in started:
                continue  # its start-up never ran: nothing to close
            try:
                await _await_maybe(_plugins.call_impl(impl, {"service": self}))
            except Exception:
                log.exception("plugin %r failed to shut down", impl.plugin_name)
        self._started_plugins.clear()

    async def _close_http(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _await_maybe(value: object) -> None:
    if inspect.isawaitable(value):
        await value
