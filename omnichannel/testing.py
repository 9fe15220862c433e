"""Test helpers for omnichannel and for plugin authors (an opt-in pytest plugin).

Enable it in your ``conftest.py``::

    pytest_plugins = ["omnichannel.testing"]

It provides:

* ``make_service(*plugins, config=..., clock=...)``: a service with entry points
  off and a ``FakeClock``; use it with ``async with``.
* fixtures ``fake_clock``, ``recording_channel``, ``event_recorder`` and
  ``service`` (started with the two recorders, stopped after the test).
* ``RecordingChannel``: an in-memory channel that records what it sends and can
  be scripted to fail (``fail_next(2, TransientDeliveryError("down"))``) or to
  hold a send until released.
* ``EventRecorder``: a listener that keeps every event.
* ``HookRecorder``: records every hook call the plugin manager makes.
* ``fake_provider(routes)``: a loopback aiohttp server standing in for a vendor API.
* ``ChannelPluginConformance``: tests any channel plugin can run against itself.

It needs pytest and pytest-asyncio (the ``test`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pluggy
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from .config import ServiceConfig
from .errors import DeliveryError, MessageValidationError
from .events import DeliveryFailed, Event, MessageSent
from .extensions import Channel
from .hookspecs import hookimpl
from .message import Content, DeliveryStatus, Message, Receipt
from .service import OmniChannelService

if TYPE_CHECKING:
    from .extensions import Sender

__all__ = [
    "ChannelPluginConformance",
    "EventRecorder",
    "FakeClock",
    "HookCall",
    "HookRecorder",
    "RecordedPayload",
    "RecordingChannel",
    "SetClock",
    "fake_provider",
    "make_service",
]

E = TypeVar("E", bound=Event)


class FakeClock:
    """A clock that moves only when told: ``advance(s)``, or ``sleep(s)``, which returns at once."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self.sleeps: list[float] = []
        """Every duration passed to ``sleep``, in order."""

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._elapsed += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


class SetClock:
    """A clock that shows whatever moment the test sets (``clock.moment = ...``), backwards too;
    ``sleep`` returns at once. For stores whose records take their times from the clock."""

    def __init__(self, moment: datetime | None = None) -> None:
        self.moment = moment or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return self.moment.timestamp()

    async def sleep(self, seconds: float) -> None:
        return None


@attrs.frozen
class RecordedPayload:
    """What ``RecordingChannel.build`` makes of a message."""

    message_id: str
    recipient: str
    channel: str
    content: Content


class RecordingChannel:
    """An in-memory channel plugin (default name ``recording``).

    :param name: the channel it declares.
    :param capabilities: what it accepts (default: every kind of content).
    """

    def __init__(
        self,
        name: str = "recording",
        capabilities: Iterable[str] = ("text", "template", "media", "buttons", "list"),
    ) -> None:
        self.name = name
        self.capabilities = frozenset(capabilities)
        self.payloads: list[RecordedPayload] = []
        """Payloads delivered successfully, in order."""
        self.attempts = 0
        """Calls of the sender, successful or not."""
        self._script: list[BaseException | None] = []
        self._gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        """Set when a sender starts (useful with ``hold``)."""

    # scripting

    def fail_next(self, times: int, error: BaseException) -> None:
        """Make the next ``times`` attempts raise ``error``."""
        self._script.extend([error] * times)

    def script(self, *outcomes: BaseException | None) -> None:
        """Queue outcomes for the next attempts: an exception to raise or ``None`` to succeed."""
        self._script.extend(outcomes)

    def hold(self) -> None:
        """Make senders wait (after setting ``entered``) until ``release()``."""
        self._gate = asyncio.Event()

    def release(self) -> None:
        """Let held senders finish."""
        if self._gate is not None:
            self._gate.set()

    # hooks

    @hookimpl
    def register_channels(self) -> list[Channel]:
        return [Channel(self.name, self.capabilities, "records messages in memory (tests)")]

    @hookimpl
    def build(self, message: Message, channel: str) -> RecordedPayload:
        return RecordedPayload(message.id, message.recipient, channel, message.content)

    @hookimpl
    def send(self, payload: RecordedPayload) -> Sender:
        async def deliver() -> Receipt:
            self.attempts += 1
            self.entered.set()
            if self._gate is not None:
                await self._gate.wait()
            outcome = self._script.pop(0) if self._script else None
            if outcome is not None:
                raise outcome
            self.payloads.append(payload)
            return Receipt(
                message_id=payload.message_id,
                channel=payload.channel,
                status=DeliveryStatus.ACCEPTED,
                provider_message_id=f"rec-{len(self.payloads)}",
            )

        return deliver


class EventRecorder:
    """A listener plugin that keeps every event it sees."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, cls: type[E]) -> list[E]:
        """The recorded events that are instances of ``cls``."""
        return [e for e in self.events if isinstance(e, cls)]

    def types(self) -> list[str]:
        """The class names of the recorded events, in order."""
        return [type(e).__name__ for e in self.events]


@attrs.frozen
class HookCall:
    """One hook call: its name, the plugins asked, and the arguments."""

    name: str
    plugins: tuple[str, ...]
    kwargs: Mapping[str, Any]


class HookRecorder:
    """Records the hook calls made through ``pm.hook`` while active (a context manager).

    That is every call of the send pipeline (``validate``, ``build``, ``send``).
    The service calls ``on_event``, ``startup``, ``shutdown`` and the
    ``register_*`` hooks one implementation at a time, to isolate and name each
    plugin; those calls are not seen here: use ``EventRecorder`` for events.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self.calls: list[HookCall] = []
        self._undo: Callable[[], None] | None = None

    def __enter__(self) -> HookRecorder:
        def before(name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
            self.calls.append(HookCall(name, tuple(i.plugin_name for i in impls), dict(kwargs)))

        def after(*_: Any) -> None:
            pass

        self._undo = self._pm.add_hookcall_monitoring(before, after)
        return self

    def __exit__(self, *_: object) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def calls_of(self, name: str) -> list[HookCall]:
        """The recorded calls of hook ``name``."""
        return [c for c in self.calls if c.name == name]


def make_service(
    *plugins: object | tuple[str, object],
    config: ServiceConfig | None = None,
    clock: Any = None,
    environ: Mapping[str, str] | None = None,
) -> OmniChannelService:
    """A service with only ``plugins`` (entry points off), a ``FakeClock`` and an empty environment."""
    return OmniChannelService(
        config,
        plugins=plugins,
        load_entrypoints=False,
        clock=clock or FakeClock(),
        environ=environ if environ is not None else {},
    )


@contextlib.asynccontextmanager
async def fake_provider(
    routes: Mapping[tuple[str, str], Callable[[web.Request], Awaitable[web.StreamResponse]]],
) -> AsyncIterator[TestServer]:
    """Serve ``{(method, path): handler}`` on a loopback port; yields the running server.

    ``server.make_url("/path")`` gives the URL to point a channel plugin at.
    """
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def fake_clock() -> FakeClock:
    """A ``FakeClock`` at 2026-01-01T00:00:00Z."""
    return FakeClock()


@pytest.fixture
def recording_channel() -> RecordingChannel:
    """A ``RecordingChannel`` named ``recording``."""
    return RecordingChannel()


@pytest.fixture
def event_recorder() -> EventRecorder:
    """An ``EventRecorder``."""
    return EventRecorder()


@pytest_asyncio.fixture
async def service(
    recording_channel: RecordingChannel, event_recorder: EventRecorder, fake_clock: FakeClock
) -> AsyncIterator[OmniChannelService]:
    """A started service with ``recording_channel`` and ``event_recorder``; stopped after the test."""
    async with make_service(recording_channel, event_recorder, clock=fake_clock) as running:
        yield running


# ---------------------------------------------------------------- conformance suite


class _CallTwice:
    """Middleware that calls the inner sender twice: a sender must be callable again."""

    def __init__(self) -> None:
        self.payloads: list[Any] = []

    @hookimpl(wrapper=True)
    def send(self, payload: Any) -> Generator[None, Sender | None, Sender | None]:
        inner = yield
        if inner is None:
            return None
        self.payloads.append(payload)
        sender = inner

        async def twice() -> Receipt:
            await sender()
            return await sender()

        return twice


class ChannelPluginConformance:
    """Tests every channel plugin should pass. Subclass it in your test suite::

        class TestSmsChannel(ChannelPluginConformance):
            channel = "sms"

            def make_plugin(self):
                return omnichannel_sms

            def valid_messages(self):
                return [Message("+15551234567", Text("hi"), channel="sms")]

    Override ``service_config()`` to point the plugin at a fake provider,
    ``invalid_messages()`` to list messages your ``validate`` must reject, and
    ``failure_cases()`` to list messages the provider fails with the error
    class your plugin must raise.
    Async tests need pytest-asyncio in auto mode (or mark the subclass).
    """

    channel: str = ""

    def make_plugin(self) -> object:
        """The plugin under test (a module or an object with hook implementations)."""
        raise NotImplementedError("return your plugin from make_plugin()")

    def valid_messages(self) -> list[Message]:
        """Messages on ``channel`` that the plugin must deliver."""
        raise NotImplementedError("return messages from valid_messages()")

    def invalid_messages(self) -> list[Message]:
        """Messages on ``channel`` that validation must reject."""
        return []

    def failure_cases(self) -> list[tuple[Message, type[DeliveryError]]]:
        """Messages the (fake) provider fails, each with the error class the plugin must raise."""
        return []

    def service_config(self) -> ServiceConfig | None:
        """The configuration to test with (e.g. a fake provider's URL)."""
        return None

    def _service(self, *extra: object) -> OmniChannelService:
        return make_service(("plugin-under-test", self.make_plugin()), *extra, config=self.service_config())

    def test_declares_its_channel(self) -> None:
        service = self._service()
        declared = service.channel_info(self.channel)
        assert declared is not None, f"the plugin does not declare channel {self.channel!r}"
        assert declared.capabilities, "a channel must declare at least one capability"
        assert service.channel_owner(self.channel) == "plugin-under-test"

    async def test_delivers_valid_messages(self) -> None:
        events = EventRecorder()
        messages = self.valid_messages()
        async with self._service(events) as service:
            for message in messages:
                receipt = await service.send(message)
                assert receipt.ok, receipt
                assert receipt.message_id == message.id
                assert receipt.channel == self.channel
                assert receipt.provider_message_id, "a receipt must carry the provider's id"
                assert receipt.attempts == 1
        sent = events.of_type(MessageSent)
        assert [e.message.id for e in sent] == [m.id for m in messages]

    async def test_sender_can_be_called_again(self) -> None:
        twice = _CallTwice()
        async with self._service(twice) as service:
            message = self.valid_messages()[0]
            receipt = await service.send(message)
        assert receipt.ok
        assert receipt.attempts == 2

    async def test_payload_serialises_through_the_converter(self) -> None:
        twice = _CallTwice()
        async with self._service(twice) as service:
            await service.send(self.valid_messages()[0])
            data = service.converter.unstructure(twice.payloads[0])
        json.dumps(data)

    async def test_rejects_invalid_messages_before_sending(self) -> None:
        events = EventRecorder()
        invalid = self.invalid_messages()
        async with self._service(events) as service:
            for message in invalid:
                with pytest.raises(MessageValidationError) as info:
                    await service.send(message)
                assert info.value.problems, "a rejected message must say what is wrong"
                assert all(isinstance(p, str) and p for p in info.value.problems)
        assert not events.of_type(MessageSent)
        assert len(events.of_type(DeliveryFailed)) == len(invalid)

    async def test_is_only_asked_about_its_own_channels(self) -> None:
        other = RecordingChannel("conformance-other")
        async with self._service(other) as service:
            with HookRecorder(service.plugin_manager) as hooks:
                await service.send(Message("someone", self.valid_messages()[0].content, channel=other.name))
        asked = {
            name
            for call in hooks.calls
            if call.name in ("build", "send", "validate")
            for name in call.plugins
        }
        assert "plugin-under-test" not in asked
        assert len(other.payloads) == 1

    async def test_failures_are_typed_delivery_errors(self) -> None:
        for message, expected in self.failure_cases():
            async with self._service() as service:
                with pytest.raises(expected) as info:
                    await service.send(message)
            error = info.value
            assert error.channel == self.channel
            assert error.message_id == message.id
            assert not error.detail.startswith("unexpected error from channel"), (
                "translate provider and transport errors into DeliveryError subclasses"
            )
