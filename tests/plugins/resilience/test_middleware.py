"""The resilience plugin as ``send`` middleware: retry, breaker, limits and timeout composed (fake clock)."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Generator
from typing import Any

import pytest

from omnichannel import (
    Certainty,
    CircuitOpenError,
    CircuitStateChanged,
    ConfigError,
    ErrorScope,
    Message,
    OmniChannelService,
    PermanentDeliveryError,
    PluginSettings,
    RateLimitedError,
    Receipt,
    RetryScheduled,
    Sender,
    SendLimited,
    ServiceConfig,
    Text,
    TransientDeliveryError,
    hookimpl,
)
from omnichannel.testing import EventRecorder, FakeClock, RecordingChannel, make_service
from omnichannel_resilience import ResiliencePlugin, runtime
from omnichannel_resilience.breaker import State

RECIPIENT = "+15551234567"

# The legacy profile without jitter: exact waits of 1 s then 2 s.
LEGACY = {"profile": "legacy"}


def hello(recipient: str = RECIPIENT) -> Message:
    return Message(recipient, Text("hi"), channel="recording")


def service_with(
    channel: RecordingChannel,
    settings: dict[str, Any] | None = None,
    *extra: object,
    clock: FakeClock | None = None,
    environ: dict[str, str] | None = None,
) -> OmniChannelService:
    config = ServiceConfig(plugins={"resilience": PluginSettings(settings=settings or {})})
    return make_service(
        channel,
        ("resilience", ResiliencePlugin(random.Random(7))),
        *extra,
        config=config,
        clock=clock or FakeClock(),
        environ=environ or {},
    )


def transient(detail: str = "Graph 503", **kwargs: Any) -> TransientDeliveryError:
    return TransientDeliveryError(detail, code=2, http_status=503, **kwargs)


# ---------------------------------------------------------------- retry


async def test_transient_failures_are_retried_with_the_legacy_waits_and_reported():
    channel, clock, events = RecordingChannel(), FakeClock(), EventRecorder()
    channel.fail_next(2, transient())
    async with service_with(channel, LEGACY, events, clock=clock) as service:
        receipt = await service.send(hello())
    assert receipt.ok
    assert receipt.attempts == 3
    assert clock.sleeps == [1.0, 2.0]
    retries = events.of_type(RetryScheduled)
    assert [(r.attempt, r.delay_s, r.error.code) for r in retries] == [(1, 1.0, 2), (2, 2.0, 2)]


async def test_attempts_are_bounded_and_the_last_error_is_raised():
    channel, clock = RecordingChannel(), FakeClock()
    channel.fail_next(5, transient())
    async with service_with(channel, LEGACY, clock=clock) as service:
        with pytest.raises(TransientDeliveryError) as caught:
            await service.send(hello())
    assert caught.value.receipt.attempts == 3
    assert channel.attempts == 3


async def test_a_permanent_error_is_not_retried():
    channel, clock = RecordingChannel(), FakeClock()
    channel.fail_next(1, PermanentDeliveryError("bad parameter", code=132000, scope=ErrorScope.MESSAGE))
    async with service_with(channel, LEGACY, clock=clock) as service:
        with pytest.raises(PermanentDeliveryError):
            await service.send(hello())
        assert channel.attempts == 1
        assert clock.sleeps == []
        # The endpoint answered: the breaker counts a success, not a failure.
        assert (await runtime(service).breakers.snapshot("recording:recording")).failures == 0


async def test_an_ambiguous_outcome_is_not_resent_by_default_but_is_in_the_legacy_profile():
    for settings, attempts in (({}, 1), (LEGACY, 2)):
        channel = RecordingChannel()
        channel.fail_next(1, transient("read timeout", certainty=Certainty.UNKNOWN))
        async with service_with(channel, settings) as service:
            outcome = await service._send_capturing(hello())
        assert outcome.attempts == attempts, settings


async def test_legacy_environment_variables_configure_the_retries():
    channel, clock = RecordingChannel(), FakeClock()
    channel.fail_next(5, transient())
    environ = {"WHATSAPP_RETRY_MAX_ATTEMPTS": "4", "WHATSAPP_RETRY_INITIAL_DELAY": "500"}
    async with service_with(channel, LEGACY, clock=clock, environ=environ) as service:
        with pytest.raises(TransientDeliveryError):
            await service.send(hello())
    assert channel.attempts == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_a_bad_value_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as caught:
        service_with(RecordingChannel(), {"retry": {"max_attempts": 0}})
    assert "plugins.resilience.retry.max_attempts: must be an integer >= 1, got 0" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        service_with(RecordingChannel(), environ={"WHATSAPP_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "many"})
    assert "(from $WHATSAPP_CIRCUIT_BREAKER_FAILURE_THRESHOLD)" in str(caught.value)


async def test_the_retry_budget_caps_retries_during_an_outage():
    channel, clock = RecordingChannel(), FakeClock()
    channel.fail_next(1000, transient())
    settings = {
        "retry_budget": {"ratio": 0.2, "min_retries": 3, "window_s": 60},
        "rate_limit": {"enabled": False},
    }
    async with service_with(channel, settings, clock=clock) as service:
        runtime(service).breakers = None  # this test is about the budget alone
        for _ in range(20):
            await service._send_capturing(hello())
    # 20 first attempts allow max(3, 0.2 * 20) = 4 retries in the window, not 40.
    assert channel.attempts <= 20 + 4


# ---------------------------------------------------------------- circuit breaker


async def test_the_breaker_opens_after_five_failures_and_refuses_without_calling_the_channel():
    channel, clock, events = RecordingChannel(), FakeClock(), EventRecorder()
    channel.fail_next(5, transient())
    settings = {**LEGACY, "retry": {"enabled": False}}
    async with service_with(channel, settings, events, clock=clock) as service:
        for _ in range(5):
            with pytest.raises(TransientDeliveryError):
                await service.send(hello())
        with pytest.raises(CircuitOpenError) as caught:
            await service.send(hello())
        assert channel.attempts == 5  # the sixth never reached the channel
        assert caught.value.retry_after == pytest.approx(60.0)
        assert caught.value.receipt.attempts == 0
        # Sixty seconds later a probe goes through; two successes close the breaker.
        clock.advance(60)
        await service.send(hello())
        await service.send(hello())
        snapshot = await runtime(service).breakers.snapshot("recording:recording")
    assert snapshot.state is State.CLOSED
    moves = [(e.channel, e.sender, e.previous, e.current) for e in events.of_type(CircuitStateChanged)]
    assert moves == [
        ("recording", "recording", "closed", "open"),
        ("recording", "recording", "open", "half_open"),
        ("recording", "recording", "half_open", "closed"),
    ]


async def test_the_failure_that_opens_the_breaker_ends_the_retry_loop():
    channel, clock = RecordingChannel(), FakeClock()
    channel.fail_next(100, transient())
    settings = {**LEGACY, "circuit_breaker": {"failure_threshold": 2}, "retry": {"max_attempts": 5}}
    async with service_with(channel, settings, clock=clock) as service:
        with pytest.raises(TransientDeliveryError) as caught:
            await service.send(hello())
    # The second failure opened the breaker: no sleeping for a third attempt that would only be
    # refused. The caller gets that failure itself (its code and reason), not CircuitOpenError.
    assert not isinstance(caught.value, CircuitOpenError)
    assert channel.attempts == 2
    assert clock.sleeps == [1.0]


async def test_throttling_never_opens_the_breaker():
    channel = RecordingChannel()
    throttled = RateLimitedError("130429", code=130429, scope=ErrorScope.SENDER, retry_after=0.5)
    channel.fail_next(10, throttled)
    settings = {**LEGACY, "retry": {"enabled": False}}
    async with service_with(channel, settings) as service:
        for _ in range(10):
            with pytest.raises(RateLimitedError):
                await service.send(hello())
        snapshot = await runtime(service).breakers.snapshot("recording:recording")
    assert snapshot.state is State.CLOSED
    assert snapshot.failures == 0


async def test_a_cancelled_probe_gives_its_permit_back():
    channel, clock = RecordingChannel(), FakeClock()
    channel.fail_next(5, transient())
    settings = {**LEGACY, "retry": {"enabled": False}}
    async with service_with(channel, settings, clock=clock) as service:
        for _ in range(5):
            await service._send_capturing(hello())
        clock.advance(60)
        channel.hold()
        channel.entered.clear()
        probe = asyncio.create_task(service.send(hello()))
        await channel.entered.wait()
        with pytest.raises(CircuitOpenError):  # the single probe slot is taken
            await service.send(hello())
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        channel.release()
        await service.send(hello())  # the slot is free again: this is the next probe
        snapshot = await runtime(service).breakers.snapshot("recording:recording")
    assert snapshot.state is State.HALF_OPEN
    assert snapshot.probe_successes == 1


async def test_metrics_only_breakers_count_but_never_block():
    channel = RecordingChannel()
    channel.fail_next(10, transient())
    settings = {**LEGACY, "retry": {"enabled": False}, "circuit_breaker": {"initial_state": "metrics_only"}}
    async with service_with(channel, settings) as service:
        for _ in range(10):
            with pytest.raises(TransientDeliveryError):
                await service.send(hello())
        snapshot = await runtime(service).breakers.snapshot("recording:recording")
    assert channel.attempts == 10
    assert snapshot.state is State.METRICS_ONLY
    assert snapshot.failures == 10


async def test_a_disabled_breaker_is_not_created():
    channel = RecordingChannel()
    environ = {"WHATSAPP_CIRCUIT_BREAKER_ENABLED": "false"}
    async with service_with(channel, LEGACY, environ=environ) as service:
        await service.send(hello())
        assert runtime(service).breakers is None


# ---------------------------------------------------------------- rate limits


async def test_a_busy_recipient_is_deferred_without_holding_up_the_others():
    channel = RecordingChannel()
    settings = {"rate_limit": {"pair_burst": 2, "pair_interval_s": 6}}
    async with service_with(channel, settings) as service:
        await service.send(hello())
        await service.send(hello())
        with pytest.raises(RateLimitedError) as caught:
            await service.send(hello())
        await service.send(hello("+15557654321"))
        snapshot = await runtime(service).breakers.snapshot("recording:recording")
    assert caught.value.scope is ErrorScope.RECIPIENT
    assert caught.value.certainty is Certainty.NOT_SENT
    assert caught.value.retry_after == pytest.approx(6.0)
    assert caught.value.receipt.attempts == 0
    assert channel.attempts == 3
    assert snapshot.failures == 0  # a local refusal says nothing about the endpoint


async def test_waits_and_deferrals_are_reported_as_events():
    channel, clock, events = RecordingChannel(), FakeClock(), EventRecorder()
    settings = {
        "rate_limit": {"sender_max_mps": 10, "sender_utilization": 1.0, "sender_burst": 1, "pair_burst": 1}
    }
    async with service_with(channel, settings, events, clock=clock) as service:
        await service.send(hello())
        await service.send(hello("+15557654321"))  # waits 0.1 s for the sender
        with pytest.raises(RateLimitedError):
            await service.send(hello())  # the pair has no slot for 6 s: deferred
    limited = [(e.limit, e.sender, e.deferred, e.scope) for e in events.of_type(SendLimited)]
    assert limited == [("rate", "recording", False, None), ("rate", "recording", True, "recipient")]
    assert events.of_type(SendLimited)[0].wait_s == pytest.approx(0.1)


async def test_a_full_bulkhead_defers_the_attempt_and_says_so():
    channel, events = RecordingChannel(), EventRecorder()
    settings = {"bulkhead": {"sender_max_in_flight": 1, "max_wait_s": 0}}
    async with service_with(channel, settings, events) as service:
        channel.hold()
        channel.entered.clear()
        first = asyncio.create_task(service.send(hello()))
        await channel.entered.wait()
        with pytest.raises(RateLimitedError) as caught:
            await service.send(hello("+15557654321"))
        channel.release()
        await first
        snapshot = await runtime(service).breakers.snapshot("recording:recording")
    assert "sender_max_in_flight" in caught.value.detail
    assert caught.value.receipt.attempts == 0
    assert [(e.limit, e.deferred, e.scope) for e in events.of_type(SendLimited)] == [
        ("in_flight", True, "sender")
    ]
    assert snapshot.failures == 0


async def test_a_provider_throttle_slows_the_sender_down():
    channel, clock = RecordingChannel(), FakeClock()
    channel.fail_next(1, RateLimitedError("130429", code=130429, scope=ErrorScope.SENDER, retry_after=1.5))
    settings = {"retry": {"jitter": "none"}}
    async with service_with(channel, settings, clock=clock) as service:
        receipt = await service.send(hello())
    assert receipt.attempts == 2
    # The retry waited at least the provider's 1.5 s (a floor), then the sender's pause was over.
    assert sum(clock.sleeps) >= 1.5


async def test_the_legacy_profile_has_no_rate_limits():
    channel = RecordingChannel()
    async with service_with(channel, LEGACY) as service:
        for _ in range(10):
            await service.send(hello())
        assert runtime(service).limiter is None
    assert channel.attempts == 10


# ---------------------------------------------------------------- timeouts and order


async def test_an_attempt_that_hangs_times_out_as_an_ambiguous_transient_failure():
    channel = RecordingChannel()
    channel.hold()  # never released: the attempt hangs until the timeout cancels it
    settings = {"attempt_timeout_s": 0.01, "retry": {"enabled": False}}
    async with service_with(channel, settings) as service:
        with pytest.raises(TransientDeliveryError) as caught:
            await service.send(hello())
        snapshot = await runtime(service).breakers.snapshot("recording:recording")
    assert "attempt_timeout_s" in caught.value.detail
    assert caught.value.certainty is Certainty.UNKNOWN
    assert snapshot.failures == 1


class OuterWrapper:
    """A ``tryfirst`` wrapper, as the metrics plugin is: it must see one logical send."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(wrapper=True, tryfirst=True)
    def send(self) -> Generator[None, Sender | None, Sender | None]:
        inner = yield
        if inner is None:
            return None
        logical = inner

        async def counted() -> Receipt:
            self.calls += 1
            return await logical()

        return counted


async def test_an_outermost_wrapper_sees_one_send_and_the_receipt_counts_every_attempt():
    channel, outer = RecordingChannel(), OuterWrapper()
    channel.fail_next(2, transient())
    async with service_with(channel, LEGACY, ("outer", outer)) as service:
        receipt = await service.send(hello())
    assert outer.calls == 1
    assert receipt.attempts == channel.attempts == 3


async def test_with_the_plugin_disabled_nothing_wraps_the_send():
    channel = RecordingChannel()
    channel.fail_next(1, transient())
    config = ServiceConfig(plugins={"resilience": PluginSettings(enabled=False)})
    service = make_service(channel, ("resilience", ResiliencePlugin()), config=config)
    async with service:
        with pytest.raises(TransientDeliveryError):
            await service.send(hello())
    assert channel.attempts == 1


class StackProbe:
    """A wrapper just inside the layer: which of the layer's frames are on the stack at each attempt."""

    def __init__(self) -> None:
        self.attempts: list[list[str]] = []

    @hookimpl(wrapper=True, trylast=True)
    def send(self) -> Generator[None, Sender | None, Sender | None]:
        inner = yield
        if inner is None:
            return None
        channel_sender = inner

        async def probed() -> Receipt:
            frame, names = sys._getframe(1), []
            while frame is not None:
                if "omnichannel_resilience" in frame.f_code.co_filename:
                    names.append(frame.f_code.co_name)
                frame = frame.f_back
            self.attempts.append(names)
            return await channel_sender()

        return probed


async def test_an_attempt_admitted_at_once_runs_in_one_frame_of_the_layer():
    # The happy path's cost (docs/performance.md): breaker, rate limits, bulkhead, retry budget and
    # attempt timeout all on, and one coroutine of the layer around the attempt.
    channel, probe = RecordingChannel(), StackProbe()
    channel.fail_next(1, transient())
    settings = {"retry": {"jitter": "none"}, "rate_limit": {"pair_burst": 10}}
    async with service_with(channel, settings, probe) as service:
        await service.send(hello())  # first attempt fails, the retry succeeds
        await service.send(hello())
    failed, retried, at_once = probe.attempts
    assert failed == at_once == ["send"]
    assert retried[0] == "send"
    assert len(retried) > 1  # a retry runs inside python-backoff's loop


class CallsTwice:
    """An outer wrapper that sends twice through the layer (as an outer retry or a mirror would)."""

    @hookimpl(wrapper=True, tryfirst=True)
    def send(self) -> Generator[None, Sender | None, Sender | None]:
        inner = yield
        if inner is None:
            return None
        logical = inner

        async def twice() -> Receipt:
            await logical()
            return await logical()

        return twice


async def test_each_call_of_the_resilient_sender_is_a_send_with_its_own_retries():
    channel, clock, events = RecordingChannel(), FakeClock(), EventRecorder()
    channel.script(transient(), None, transient(), None)
    async with service_with(channel, LEGACY, CallsTwice(), events, clock=clock) as service:
        receipt = await service.send(hello())
    assert receipt.ok
    assert channel.attempts == 4
    assert clock.sleeps == [1.0, 1.0]  # each call's first retry waits the first delay
    assert [r.attempt for r in events.of_type(RetryScheduled)] == [1, 1]


# ---------------------------------------------------------------- watching the breakers


async def test_an_idle_senders_breaker_is_reported_half_open_once_its_open_time_is_over():
    channel, clock, events = RecordingChannel(), FakeClock(), EventRecorder()
    channel.fail_next(5, transient())
    async with service_with(channel, {**LEGACY, "retry": {"enabled": False}}, events, clock=clock) as service:
        for _ in range(5):
            await service._send_capturing(hello())
        layer = runtime(service)
        await layer.report_breakers()
        clock.advance(60)
        await layer.report_breakers()  # nobody sends: reading the breaker is what moves it
        await layer.report_breakers()
    moves = [(e.previous, e.current) for e in events.of_type(CircuitStateChanged)]
    assert moves == [("closed", "open"), ("open", "half_open")]


class Signal:
    """A listener that wakes the test when a breaker move arrives."""

    def __init__(self) -> None:
        self.moved = asyncio.Event()
        self.moves: list[tuple[str, str]] = []

    @hookimpl
    def on_event(self, event: object) -> None:
        if isinstance(event, CircuitStateChanged):
            self.moves.append((event.previous, event.current))
            self.moved.set()


async def test_the_plugin_watches_the_breakers_in_the_background():
    channel, clock, signal = RecordingChannel(), FakeClock(), Signal()
    channel.fail_next(5, transient())
    settings = {**LEGACY, "retry": {"enabled": False}, "poll_interval_s": 0.001}
    async with service_with(channel, settings, signal, clock=clock) as service:
        for _ in range(5):
            await service._send_capturing(hello())
        signal.moved.clear()
        clock.advance(60)
        await asyncio.wait_for(signal.moved.wait(), timeout=5)
    assert signal.moves == [("closed", "open"), ("open", "half_open")]


async def test_a_move_made_by_another_worker_is_reported(redis_url, redis_prefix):
    shared = {
        **LEGACY,
        "retry": {"enabled": False},
        "shared_state": "redis",
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
    }
    failing, watching = RecordingChannel(), RecordingChannel()
    failing.fail_next(5, transient())
    events = EventRecorder()
    async with service_with(failing, shared) as first, service_with(watching, shared, events) as second:
        await second.send(hello())  # the second worker knows the sender's breaker, closed
        for _ in range(5):
            await first._send_capturing(hello())  # the first one opens it
        await runtime(second).report_breakers()
    assert [(e.previous, e.current) for e in events.of_type(CircuitStateChanged)] == [("closed", "open")]
