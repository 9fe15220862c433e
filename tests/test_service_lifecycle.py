"""The service life cycle: start and stop, the state errors around them, the startup and shutdown hooks."""

from __future__ import annotations

import pytest
from service_support import START, text

from omnichannel import PluginError, ServiceStarted, ServiceStateError, ServiceStopping, hookimpl
from omnichannel.testing import EventRecorder, make_service

# ---------------------------------------------------------------- small plugins used below


class Lifecycle:
    """Records its startup and shutdown calls in a shared log."""

    def __init__(self, name: str, log: list[str], fail_startup: Exception | None = None) -> None:
        self.name = name
        self.log = log
        self.fail_startup = fail_startup

    @hookimpl
    async def startup(self, service):
        # not awaiting this coroutine would leave the log empty (and warn)
        if self.fail_startup is not None:
            raise self.fail_startup
        self.log.append(f"startup {self.name} http_open={not service.http.closed}")

    @hookimpl
    async def shutdown(self, service):
        self.log.append(f"shutdown {self.name} http_open={not service.http.closed}")


# ---------------------------------------------------------------- life cycle


async def test_send_before_start_is_a_service_state_error(recording_channel):
    service = make_service(recording_channel)
    with pytest.raises(ServiceStateError) as info:
        await service.send(text(channel="recording"))
    assert str(info.value) == (
        "the service is not started: use 'async with OmniChannelService(...)' or 'await service.start()'"
    )
    assert recording_channel.attempts == 0
    with pytest.raises(ServiceStateError):
        _ = service.http


async def test_send_after_stop_is_a_service_state_error(recording_channel):
    async with make_service(recording_channel) as service:
        pass
    assert not service.started
    with pytest.raises(ServiceStateError):
        await service.send(text(channel="recording"))
    with pytest.raises(ServiceStateError) as info:
        await service.start()
    assert str(info.value) == "a stopped service cannot be started again; create a new one"


async def test_start_and_stop_are_idempotent_and_emit_life_cycle_events(fake_clock):
    events = EventRecorder()
    service = make_service(events, clock=fake_clock)
    await service.stop()  # not started: nothing to do
    await service.start()
    await service.start()
    assert service.started
    http = service.http
    await service.stop()
    await service.stop()
    assert http.closed
    assert not service.started
    assert events.types() == ["ServiceStarted", "ServiceStopping"]
    assert events.of_type(ServiceStarted)[0].occurred_at == START
    assert events.of_type(ServiceStopping)[0].occurred_at == START


async def test_hook_startup_is_awaited_with_the_http_session_open():
    log: list[str] = []
    service = make_service(("a", Lifecycle("a", log)))
    await service.start()
    try:
        assert log == ["startup a http_open=True"]
    finally:
        await service.stop()
    assert log == ["startup a http_open=True", "shutdown a http_open=True"]


class EarlyLifecycle(Lifecycle):
    @hookimpl(tryfirst=True)
    async def startup(self, service):
        self.log.append(f"startup {self.name} http_open={not service.http.closed}")


async def test_hook_startup_runs_in_hook_call_order():
    log: list[str] = []
    plugins = [
        ("early", EarlyLifecycle("early", log)),
        ("a", Lifecycle("a", log)),
        ("b", Lifecycle("b", log)),
        ("c", Lifecycle("c", log)),
    ]
    async with make_service(*plugins):
        pass
    # tryfirst implementations first, then the most recently registered plugin first
    assert [line.split()[1] for line in log if line.startswith("startup")] == ["early", "c", "b", "a"]


async def test_hook_shutdown_runs_in_reverse_order_of_startup():
    log: list[str] = []
    async with make_service(
        ("a", Lifecycle("a", log)), ("b", Lifecycle("b", log)), ("c", Lifecycle("c", log))
    ):
        pass
    started = [line.split()[1] for line in log if line.startswith("startup")]
    stopped = [line.split()[1] for line in log if line.startswith("shutdown")]
    assert sorted(started) == ["a", "b", "c"]
    assert stopped == started[::-1]
    assert all(line.endswith("http_open=True") for line in log)


async def test_hook_shutdown_failure_does_not_stop_the_others():
    log: list[str] = []

    class BadShutdown:
        @hookimpl
        def shutdown(self):
            raise RuntimeError("cannot close")

    service = make_service(("a", Lifecycle("a", log)), ("bad", BadShutdown()), ("c", Lifecycle("c", log)))
    await service.start()
    http = service.http
    await service.stop()
    assert sorted(line for line in log if line.startswith("shutdown")) == [
        "shutdown a http_open=True",
        "shutdown c http_open=True",
    ]
    assert http.closed


async def test_hook_startup_failure_names_the_plugin_and_shuts_down_the_started_ones():
    log: list[str] = []
    plugins = [
        ("a", Lifecycle("a", log)),
        ("broken", Lifecycle("broken", log, fail_startup=ConnectionError("redis is down"))),
        ("c", Lifecycle("c", log)),
    ]
    events = EventRecorder()
    service = make_service(*plugins, events)
    with pytest.raises(PluginError) as info:
        await service.start()

    assert str(info.value) == "plugin 'broken': startup failed: ConnectionError('redis is down')"
    assert info.value.plugin_name == "broken"
    assert isinstance(info.value.__cause__, ConnectionError)
    # c started (it comes first in call order), broken failed, a never started
    assert log == ["startup c http_open=True", "shutdown c http_open=True"]
    assert not service.started
    assert "ServiceStarted" not in events.types()
    with pytest.raises(ServiceStateError):
        _ = service.http  # the HTTP session was closed again
