"""``OmniChannelService``: the one object a host application holds.

It owns the plugin manager (and is the only code that runs the send
pipeline's hooks), the strict converter, the configuration and one shared
``aiohttp.ClientSession``. Use it as an async context manager::

    async with OmniChannelService(load_config()) as service:
        receipt = await service.send(Message("+15551234567", Text("hi"), channel="console"))

``send`` goes through route -> validate -> build -> send (wrapped by
middleware) -> events, and raises on failure; ``send_many`` never raises for
one message and returns a receipt for each, in input order.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aiohttp
import attrs
import pluggy

from . import plugins as _plugins
from ._builtins import ATTEMPTS, AttemptCounter
from ._contributions import (
    ChannelBinding,
    bind_channels,
    collect_command_handlers,
    collect_routes,
    load_plugin_configs,
    redact_by_name,
)
from ._hookplan import Plan, make_plan
from .clock import Clock, SystemClock
from .config import ServiceConfig, register_config_hooks
from .errors import (
    Certainty,
    DeliveryError,
    MessageValidationError,
    OmniChannelError,
    PluginError,
    ServiceStateError,
    UnknownChannelError,
)
from .events import (
    DeliveryFailed,
    Event,
    ListenerFailed,
    MessageSent,
    ServiceStarted,
    ServiceStopping,
    TemplateUsed,
)
from .extensions import Channel, Route
from .message import DeliveryStatus, ErrorInfo, Message, Receipt, Template
from .serde import make_converter

if TYPE_CHECKING:
    from .commands import CommandBus
    from .plugins import PluginInfo

__all__ = ["EventStats", "OmniChannelService"]

log = logging.getLogger("omnichannel")

T = TypeVar("T")

_NO_PLUGINS: frozenset[object] = frozenset()
_EVENT_AND_SERVICE = ("event", "service")


class _Progress:
    """How far one send got: what to report if it is cancelled or a hook breaks, and its sender."""

    __slots__ = ("attempts", "channel", "message", "sender", "stage")

    def __init__(self, message: Message, channel: str) -> None:
        self.message = message
        self.channel = channel
        self.stage = "route"
        self.attempts = 0
        self.sender: str | None = None
        """``sender_of(message, channel)`` for the channel being tried, once someone asked."""


@attrs.define
class EventStats:
    """Counters of event dispatch, for metrics and health checks."""

    dispatched: Counter[str] = attrs.field(factory=Counter)
    """Events dispatched, by event class name."""
    listener_failures: Counter[str] = attrs.field(factory=Counter)
    """Listener exceptions, by plugin name."""


class OmniChannelService:
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
        self._plans: dict[tuple[object, frozenset[object]], Plan] = {}
        self._sending: dict[int, _Progress] = {}  # id(message) -> its send in progress
        self._listeners: list[pluggy.HookImpl] = []
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

    def _not_running(self) -> ServiceStateError:
        if self._state in ("stopping", "stopped"):
            return ServiceStateError("the service is stopped; create a new one to send again")
        return ServiceStateError(
            "the service is not started: use 'async with OmniChannelService(...)' or 'await service.start()'"
        )

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

    # ------------------------------------------------------------ events

    async def emit(self, event: Event) -> None:
        """Dispatch ``event`` to every ``on_event`` listener, each isolated from the others."""
        self.event_stats.dispatched[type(event).__name__] += 1
        self._refresh_caches()
        failures: list[ListenerFailed] = []
        for impl in self._listeners:
            try:
                if impl.argnames == _EVENT_AND_SERVICE:  # the usual signature: no argument list to build
                    result = impl.function(event, self)
                else:
                    result = impl.function(*[event if name == "event" else self for name in impl.argnames])
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.event_stats.listener_failures[impl.plugin_name] += 1
                log.exception("listener of plugin %r failed on %s", impl.plugin_name, type(event).__name__)
                failures.append(
                    ListenerFailed(
                        type(event).__name__,
                        impl.plugin_name,
                        ErrorInfo.from_exception(exc),
                        occurred_at=self.clock.now(),
                    )
                )
        # Reported after every listener saw the event; a failure to handle ListenerFailed is not reported.
        if not isinstance(event, ListenerFailed):
            for failure in failures:
                await self.emit(failure)

    # ------------------------------------------------------------ sending

    def _refresh_caches(self) -> None:
        """Forget hook plans and listeners when plugins were registered or removed since."""
        generation = getattr(self._pm, "generation", 0)
        if generation != self._cached_generation:
            self._plans.clear()
            self._listeners = _plugins.hook_impls(self._pm, "on_event")
            self._cached_generation = generation

    def _plan(self, binding: ChannelBinding, excluded: frozenset[object]) -> Plan:
        plan = self._plans.get((binding.plugin, excluded))
        if plan is None:
            plan = self._plans[(binding.plugin, excluded)] = make_plan(
                self._pm, self._channel_plugins, binding.plugin, excluded
            )
        return plan

    def sender_of(self, message: Message, channel: str) -> str:
        """Which account of ``channel`` sends ``message`` (WhatsApp: the phone number id).

        The owning plugin answers through the ``sender_id`` hook; without an answer it
        is the channel's name. Middleware keys per-sender state (breakers, rate
        limits, metric labels) by it. While ``message`` is being sent on ``channel``,
        the hook is asked once: every middleware and listener of that send gets the
        same answer.
        """
        progress = self._sending.get(id(message))
        if progress is None or progress.message is not message or progress.channel != channel:
            return self._ask_sender(message, channel)
        if progress.sender is None:
            progress.sender = self._ask_sender(message, channel)
        return progress.sender

    def _ask_sender(self, message: Message, channel: str) -> str:
        binding = self._channels.get(channel)
        if binding is None:
            return channel
        answer = self._plan(binding, _NO_PLUGINS).sender_id(message=message, channel=channel, service=self)
        return answer if isinstance(answer, str) and answer else channel

    def _excluded(self, recipient: str) -> frozenset[object]:
        """Plugins whose rollout does not include ``recipient``."""
        if not self._rollouts:
            return _NO_PLUGINS
        return frozenset(
            plugin
            for plugin, (name, percent) in self._rollouts.items()
            if not _plugins.in_rollout(percent, name, recipient)
        )

    def _route(self, message: Message) -> tuple[str, ...]:
        if message.channel is not None:
            return (message.channel,)
        return message.route or self.config.default_route

    async def send(self, message: Message) -> Receipt:
        """Deliver ``message`` on its channel (or the first channel of its route that works).

        :return: the receipt of the accepted message.
        :raises MessageValidationError: listing every problem, before anything is sent.
        :raises UnknownChannelError: when no enabled plugin provides the channel.
        :raises DeliveryError: when every channel of the route failed (the last error).
        :raises PluginError: when a plugin's hook raised something other than our errors.

        Every outcome is also an event: ``MessageSent`` (and ``TemplateUsed``) or
        ``DeliveryFailed``, whose receipt says why. A cancelled send reports
        ``DeliveryFailed`` (certainty ``unknown`` once the channel was called) and
        re-raises ``CancelledError``.
        """
        if self._state != "started":
            raise self._not_running()
        started_at = self.clock.now()
        route = self._route(message)
        progress = _Progress(message, route[0] if route else "")
        # Known to sender_of while the send and its events run. The same Message object sent twice
        # at once shares the later send's entry; the hook is still asked at most once per send.
        key = id(message)
        self._sending[key] = progress
        try:
            return await self._send_on_route(message, route, started_at, progress)
        except DeliveryError:
            raise  # _deliver reported it, for its channel
        except OmniChannelError as exc:
            await self._report_failure(message, progress.channel, exc, started_at, 0)
            raise
        except asyncio.CancelledError:
            attempts = progress.attempts
            certainty = Certainty.UNKNOWN if attempts else Certainty.NOT_SENT
            error = DeliveryError("the send was cancelled", certainty=certainty)
            await self._report_failure(message, progress.channel, error, started_at, attempts)
            raise
        except Exception as exc:
            culprit = self._culprit(exc, progress.stage)
            log.exception("the %s hook of plugin %r raised", progress.stage, culprit)
            plugin_error = PluginError(culprit, f"its {progress.stage} hook raised {exc!r}")
            await self._report_failure(message, progress.channel, plugin_error, started_at, 0)
            raise plugin_error from exc
        finally:
            if self._sending.get(key) is progress:
                del self._sending[key]

    async def _send_on_route(
        self, message: Message, route: tuple[str, ...], started_at: datetime, progress: _Progress
    ) -> Receipt:
        if not route:
            raise MessageValidationError(
                ["channel: the message names no channel or route and no default_route is configured"],
                message_id=message.id,
            )
        self._refresh_caches()
        excluded = self._excluded(message.recipient)
        problems: list[str] = []
        failure: OmniChannelError | None = None
        for channel in route:
            progress.channel = channel
            progress.sender = None
            binding = self._channels.get(channel)
            if binding is None:
                failure = failure or UnknownChannelError(channel, available=self._channels)
                continue
            if binding.plugin in excluded:
                name, percent = self._rollouts[binding.plugin]
                reason = f"plugin {name!r} is rolled out to {percent:g} % of recipients, not this one"
                failure = failure or UnknownChannelError(channel, reason=reason)
                continue
            plan = self._plan(binding, excluded)
            progress.stage = "validate"
            found = self._validation_problems(plan, message, channel)
            if found:
                problems += [f"[{channel}] {p}" for p in found] if len(route) > 1 else found
                continue
            try:
                return await self._deliver(message, channel, binding, plan, started_at, progress)
            except DeliveryError as exc:
                failure = exc
        if isinstance(failure, DeliveryError) or not problems:
            assert failure is not None
            raise failure
        raise MessageValidationError(problems, message_id=message.id)

    def _culprit(self, exc: BaseException, hook: str) -> str:
        """The name of the plugin whose ``hook`` implementation raised ``exc``."""
        codes = {impl.function.__code__: impl.plugin_name for impl in _plugins.hook_impls(self._pm, hook)}
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code in codes:
                return codes[tb.tb_frame.f_code]
            tb = tb.tb_next
        return "unknown"

    async def _deliver(
        self,
        message: Message,
        channel: str,
        binding: ChannelBinding,
        plan: Plan,
        started_at: datetime,
        progress: _Progress,
    ) -> Receipt:
        progress.stage = "build"
        payload = plan.build(message=message, channel=channel, service=self)
        if payload is None:
            raise PluginError(binding.plugin_name, f"build returned nothing for channel {channel!r}")
        progress.stage = "send"
        sender = plan.send(payload=payload, message=message, channel=channel, service=self)
        if sender is None:
            raise PluginError(
                binding.plugin_name, f"its send hook returned no sender for channel {channel!r}"
            )
        counter = AttemptCounter()
        token = ATTEMPTS.set(counter) if plan.counts_attempts else None
        try:
            if token is None:
                counter.count = progress.attempts = 1
            receipt = await sender()
            if not isinstance(receipt, Receipt):
                raise PluginError(binding.plugin_name, f"the sender returned {receipt!r}, not a Receipt")
            if receipt.status is DeliveryStatus.FAILED:
                detail = receipt.error.detail if receipt.error else "the channel reported a failure"
                raise DeliveryError(detail, channel=channel)
        except DeliveryError as exc:
            await self._report_failure(message, channel, exc, started_at, counter.count)
            raise
        except asyncio.CancelledError:
            progress.attempts = counter.count
            raise
        except OmniChannelError:
            raise
        except Exception as exc:
            log.exception("channel %r raised an untranslated error", channel)
            error = DeliveryError(
                f"unexpected error from channel {channel!r}: {exc!r}", certainty=Certainty.UNKNOWN
            )
            await self._report_failure(message, channel, error, started_at, counter.count)
            raise error from exc
        finally:
            if token is not None:
                ATTEMPTS.reset(token)
        finished_at = self.clock.now()
        # A constructor call, not attrs.evolve: this is the hot path.
        receipt = Receipt(
            message_id=message.id,
            channel=channel,
            status=receipt.status,
            provider_message_id=receipt.provider_message_id,
            provider_status=receipt.provider_status,
            attempts=counter.count,
            started_at=started_at,
            finished_at=finished_at,
            error=receipt.error,
        )
        await self.emit(MessageSent(message, receipt, occurred_at=finished_at))
        if isinstance(message.content, Template):
            await self.emit(TemplateUsed(message, channel, message.content, occurred_at=finished_at))
        return receipt

    async def _report_failure(
        self,
        message: Message,
        channel: str,
        error: OmniChannelError,
        started_at: datetime,
        attempts: int,
    ) -> Receipt:
        if isinstance(error, DeliveryError):
            error.channel = error.channel or channel
            error.message_id = error.message_id or message.id
        finished_at = self.clock.now()
        receipt = Receipt(
            message_id=message.id,
            channel=channel,
            status=DeliveryStatus.FAILED,
            attempts=attempts,
            started_at=started_at,
            finished_at=finished_at,
            error=ErrorInfo.from_exception(error),
        )
        error.receipt = receipt  # type: ignore[attr-defined]
        await self.emit(DeliveryFailed(message, receipt, occurred_at=finished_at))
        return receipt

    def _validation_problems(self, plan: Plan, message: Message, channel: str) -> list[str]:
        """What the ``validate`` hooks of ``plan`` find wrong with ``message`` on ``channel``."""
        return [
            problem
            for result in plan.validate(message=message, channel=channel, service=self)
            if result
            for problem in result
        ]

    def check(self, message: Message) -> list[str]:
        """Every problem that would stop ``message`` before anything is sent, without sending.

        Routing (an unknown or unavailable channel), the plugins' ``validate`` hooks and the
        channel's ``build`` (a ``MessageValidationError`` it raises), for the first channel of
        the route that is available. An empty list: the message would be handed to the channel.
        """
        route = self._route(message)
        if not route:
            return ["channel: no channel given and no default_route configured"]
        self._refresh_caches()
        excluded = self._excluded(message.recipient)
        unavailable = []
        for channel in route:
            binding = self._channels.get(channel)
            if binding is None or binding.plugin in excluded:
                unavailable.append(channel)
                continue
            plan = self._plan(binding, excluded)
            problems = self._validation_problems(plan, message, channel)
            if problems:
                return problems
            try:
                plan.build(message=message, channel=channel, service=self)
            except MessageValidationError as exc:
                return list(exc.problems)
            return []
        return [f"channel: {', '.join(map(repr, unavailable))} not available"]

    async def send_many(
        self, messages: Iterable[Message], *, concurrency: int | None = None
    ) -> list[Receipt]:
        """Send every message, at most ``concurrency`` at a time; never raises for one message.

        :return: one receipt per message, in input order; a failed message has a
            receipt with status ``failed`` and its ``error``.
        """
        batch = list(messages)
        limit = self.config.send_concurrency if concurrency is None else concurrency
        if limit < 1:
            raise ValueError(f"concurrency must be >= 1, got {limit}")
        results: list[Receipt | None] = [None] * len(batch)
        indexes = iter(range(len(batch)))

        async def worker() -> None:
            for i in indexes:
                message = batch[i]
                try:  # _send_capturing, inlined: one coroutine less around every send
                    results[i] = await self.send(message)
                except Exception as exc:
                    results[i] = await self._failure_receipt(message, exc)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(limit, len(batch))):
                group.create_task(worker())
        return [r for r in results if r is not None]

    async def _send_capturing(self, message: Message) -> Receipt:
        try:
            return await self.send(message)
        except Exception as exc:
            return await self._failure_receipt(message, exc)

    async def _failure_receipt(self, message: Message, exc: Exception) -> Receipt:
        """The receipt of a send that raised ``exc``: the one it reported, else a new failure."""
        receipt = getattr(exc, "receipt", None)
        if isinstance(receipt, Receipt):
            return receipt
        if not isinstance(exc, OmniChannelError):
            log.exception("unexpected error sending message %s", message.id)
        route = self._route(message)
        error = exc if isinstance(exc, OmniChannelError) else OmniChannelError(repr(exc))
        return await self._report_failure(message, route[0] if route else "", error, self.clock.now(), 0)


async def _await_maybe(value: object) -> None:
    if inspect.isawaitable(value):
        await value
