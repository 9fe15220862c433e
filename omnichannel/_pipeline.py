"""The send pipeline of :class:`~omnichannel.OmniChannelService`: routing, hooks, events.

:class:`SendPipeline` holds the service's methods that run a message through route -> validate ->
build -> send (wrapped by middleware) -> events, and the event dispatch itself. It is a base
class of the service and nothing else: it reads the state the service's constructor sets up
(declared below), so the service module stays about set-up, introspection and life cycle.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs
import pluggy

from . import plugins as _plugins
from ._builtins import ATTEMPTS, AttemptCounter
from ._hookplan import Plan, make_plan
from .errors import (
    Certainty,
    DeliveryError,
    MessageValidationError,
    OmniChannelError,
    PluginError,
    ServiceStateError,
    UnknownChannelError,
)
from .events import DeliveryFailed, Event, ListenerFailed, MessageSent, TemplateUsed
from .message import DeliveryStatus, ErrorInfo, Message, Receipt, Template

if TYPE_CHECKING:
    from ._contributions import ChannelBinding
    from .clock import Clock
    from .config import ServiceConfig

__all__ = ["EventStats", "SendPipeline"]

log = logging.getLogger("omnichannel")

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


class SendPipeline:
    """Sending and event dispatch for :class:`~omnichannel.OmniChannelService` (its base class)."""

    # Set up by OmniChannelService.__init__.
    config: ServiceConfig
    clock: Clock
    event_stats: EventStats
    _pm: _plugins.PluginManager
    _state: str
    _channels: dict[str, ChannelBinding]
    _channel_plugins: frozenset[object]
    _rollouts: dict[object, tuple[str, float]]
    _plans: dict[tuple[object, frozenset[object]], Plan]
    _sending: dict[int, _Progress]
    _listeners: list[pluggy.HookImpl]
    _cached_generation: int

    def _not_running(self) -> ServiceStateError:
        if self._state in ("stopping", "stopped"):
            return ServiceStateError("the service is stopped; create a new one to send again")
        return ServiceStateError(
            "the service is not started: use 'async with OmniChannelService(...)' or 'await service.start()'"
        )

    async def emit(self, event: Event) -> list[ListenerFailed]:
        """Dispatch ``event`` to every ``on_event`` listener, each isolated from the others.

        :return: the listeners that failed on it (each also logged and emitted as
            ``ListenerFailed``): empty when every listener handled it. A webhook route
            answers non-200 then, so that the provider delivers the event again.
        """
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
        return failures

    # ------------------------------------------------------------ sending
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
