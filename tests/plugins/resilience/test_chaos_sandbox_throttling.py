"""Chaos scenario 2: a throttling storm against the WhatsApp sandbox.

130429 (HTTP 400) never opens the breaker, slows the sender (adaptive rate, ``Retry-After`` and the
limiter's pause are floors); a 131056 pair storm for one recipient defers that recipient only.

The harness, and the pass criteria asserted in every scenario: ``chaos_sandbox_support``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Literal

import attrs
import pytest
from chaos_sandbox_support import (
    SEED,
    THRESHOLD,
    assert_no_duplicate_send,
    assert_nothing_lost,
    batch,
    breaker_name,
    chaos_service,
    kinds,
    redeliver,
    send_all,
    snapshot,
    spy_on_breaker,
    transitions,
)
from chaos_sandbox_support import _fresh as _fresh  # fixture
from chaos_sandbox_support import sandbox as sandbox  # fixture

from omnichannel import (
    Certainty,
    ErrorScope,
    Message,
    OmniChannelService,
    RateLimitedError,
    RetryScheduled,
    Text,
)
from omnichannel.testing import EventRecorder, FakeClock
from omnichannel_resilience import runtime
from omnichannel_resilience.breaker import Outcome, State
from omnichannel_whatsapp.sandbox import Fault, Sandbox, SandboxSettings, SandboxThread

# ================================================================ 2. throttling storm


def throttle_storm(sandbox: SandboxThread, requests: int, retry_after_s: float | None = None) -> None:
    """The sandbox answers its next ``requests`` Graph requests with 130429 (HTTP 400): throughput hit."""
    sandbox.add_fault(
        Fault("error", http_status=400, code=130429, remaining=requests, retry_after_s=retry_after_s)
    )


@attrs.frozen
class LimiterEvent:
    kind: Literal["admit", "throttle"]
    at: float
    """Virtual time (the service's clock)."""
    pause_s: float = 0.0


def spy_on_limiter(service: OmniChannelService, clock: FakeClock) -> list[LimiterEvent]:
    """When attempts got past the rate limits, and when a provider throttle paused the sender."""
    store = runtime(service, rng=random.Random(SEED)).limiter
    assert store is not None
    acquire, on_throttled = store.acquire, store.on_throttled
    log: list[LimiterEvent] = []

    async def admitted(sender: str, recipient: str) -> None:
        await acquire(sender, recipient)
        log.append(LimiterEvent("admit", clock.monotonic()))

    async def throttled(
        sender: str, recipient: str, scope: ErrorScope | None, retry_after: float | None
    ) -> float:
        pause = await on_throttled(sender, recipient, scope, retry_after)
        log.append(LimiterEvent("throttle", clock.monotonic(), pause))
        return pause

    store.acquire = admitted  # type: ignore[method-assign]
    store.on_throttled = throttled  # type: ignore[method-assign]
    return log


async def test_a_throttling_storm_never_opens_the_breaker_and_loses_nothing(sandbox: SandboxThread) -> None:
    clock, events = FakeClock(), EventRecorder()
    messages = batch(40, "storm")
    throttle_storm(sandbox, 3 * THRESHOLD)  # three times what would open the breaker if it counted
    async with chaos_service(sandbox, {}, clock, events) as service:
        log = spy_on_breaker(service, breaker_name(sandbox))
        fates = await send_all(service, messages, concurrency=8)
        assert_nothing_lost(fates, messages)
        assert_no_duplicate_send(sandbox, fates)
        # Every throttled answer was recorded as THROTTLED: none counted as a failure.
        outcomes = Counter(r.outcome for r in log)
        assert outcomes[Outcome.THROTTLED] == 3 * THRESHOLD
        assert outcomes[Outcome.FAILURE] == 0
        breaker = await snapshot(service, sandbox)
        assert (breaker.state, breaker.failures, breaker.not_permitted) == (State.CLOSED, 0, 0)
        # The storm slowed the sender down: its rate was halved (adaptive), not the breaker opened.
        limiter = runtime(service).limiter.limiter  # type: ignore[union-attr]
        assert limiter.current_rate(sandbox.settings.phone_number_id) < limiter.senders.config.rate_per_s
        for fate in fates:
            if fate.kind == "deferred":
                # Throttled (by the provider, or by our own limit waiting for the provider's pause).
                assert isinstance(fate.error, RateLimitedError)
                assert fate.error.scope is ErrorScope.SENDER
        final = await redeliver(service, clock, fates, concurrency=8)
    assert_nothing_lost(final, messages)
    assert kinds(final) == {"sent": 40}
    assert sorted(assert_no_duplicate_send(sandbox, final)) == [m.id for m in messages]
    assert sandbox.counters() == {"fault.error": 3 * THRESHOLD, "requests": 40, "accepted": 40}
    assert transitions(events) == []


@pytest.mark.parametrize("retry_after_s", [None, 2.0], ids=["no-retry-after", "retry-after-2s"])
async def test_after_a_throttle_no_attempt_goes_out_before_the_senders_pause_is_over(
    sandbox: SandboxThread, retry_after_s: float | None
) -> None:
    clock, events = FakeClock(), EventRecorder()
    messages = batch(6, "floor")
    throttle_storm(sandbox, 4, retry_after_s)
    async with chaos_service(sandbox, {}, clock, events) as service:
        log = spy_on_limiter(service, clock)
        fates = await send_all(service, messages)
        final = await redeliver(service, clock, fates)
    assert_nothing_lost(final, messages)
    assert kinds(final) == {"sent": 6}
    assert sorted(assert_no_duplicate_send(sandbox, final)) == [m.id for m in messages]
    throttles = [e for e in log if e.kind == "throttle"]
    assert len(throttles) == 4
    # The pause is the provider's Retry-After, else the limiter's default for 130429 (1 s) ...
    assert {t.pause_s for t in throttles} == {retry_after_s or 1.0}
    # ... and it is a floor: every attempt admitted after a throttle went out at least that much later.
    for i, throttle in enumerate(log):
        if throttle.kind == "throttle":
            later = [e.at for e in log[i + 1 :] if e.kind == "admit"]
            assert all(at >= throttle.at + throttle.pause_s - 1e-9 for at in later), (throttle, later)
    if retry_after_s is not None:
        # The in-process retry itself never waits less than the provider asked (jitter cannot shrink it).
        waits = [r.delay_s for r in events.of_type(RetryScheduled) if r.error.code == 130429]
        assert waits
        assert min(waits) >= retry_after_s
    assert transitions(events) == []


async def test_a_pair_storm_defers_the_hot_recipient_without_holding_up_the_others() -> None:
    clock, events = FakeClock(), EventRecorder()
    hot = "+16505550100"
    # The sandbox's pair limit (131056) at two messages per recipient; ours is set wider, so the
    # requests reach it. The sandbox runs on the service's clock: its pair budget refills in virtual time.
    settings = SandboxSettings(pair_burst=2, pair_interval_s=6.0)
    resilience = {"rate_limit": {"pair_burst": 50}}
    messages = [
        m
        for i in range(6)
        for m in (
            Message(hot, Text(f"hot {i}"), channel="whatsapp", id=f"hot-{i}"),
            Message(f"+1650555{i:04d}", Text(f"other {i}"), channel="whatsapp", id=f"other-{i}"),
        )
    ]
    async with (
        Sandbox(settings, clock=clock) as sandbox,
        chaos_service(sandbox, resilience, clock, events) as service,
    ):
        fates = await send_all(service, messages)
        assert_nothing_lost(fates, messages)
        hot_fates = [f for f in fates if f.message.recipient == hot]
        others = [f for f in fates if f.message.recipient != hot]
        # The other recipients went out at once, on their first attempt, without waiting for the hot pair.
        assert all(f.kind == "sent" and f.receipt.attempts == 1 for f in others)
        assert sum(clock.sleeps) < 1.0
        # The hot recipient: two accepted, the third refused by the provider (131056, not retried
        # in-process), the rest refused by our own pair limit before the wire (not sent).
        assert [f.kind for f in hot_fates] == ["sent", "sent", "deferred", "deferred", "deferred", "deferred"]
        provider, *local = [f.error for f in hot_fates[2:]]
        assert isinstance(provider, RateLimitedError)
        assert (provider.code, provider.scope) == (131056, ErrorScope.RECIPIENT)
        assert hot_fates[2].receipt.attempts == 1
        assert events.of_type(RetryScheduled) == []
        for error in local:
            assert isinstance(error, RateLimitedError)
            assert error.scope is ErrorScope.RECIPIENT
            assert error.certainty is Certainty.NOT_SENT
            assert error.retry_after
        assert sandbox.state.counters["error.131056"] == 1
        breaker = await snapshot(service, sandbox)
        assert (breaker.state, breaker.failures) == (State.CLOSED, 0)

        final = await redeliver(service, clock, fates)
    assert_nothing_lost(final, messages)
    assert kinds(final) == {"sent": 12}
    assert sorted(assert_no_duplicate_send(sandbox, final)) == sorted(m.id for m in messages)
    assert transitions(events) == []
