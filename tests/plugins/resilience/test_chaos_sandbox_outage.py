"""Chaos scenario 1: an outage burst of 5xx (503 code 2, 500 code 1) against the WhatsApp sandbox.

Under the recommended profile, sequential and concurrent: the breaker opens on exactly
``failure_threshold`` recorded failures, refuses the rest without calling the sandbox, re-opens on a
failed probe, and closes after recovery.

The harness, and the pass criteria asserted in every scenario: ``chaos_sandbox_support``.
"""

from __future__ import annotations

from chaos_sandbox_support import (
    OPEN_S,
    THRESHOLD,
    accepted_ids,
    assert_no_duplicate_send,
    assert_nothing_lost,
    batch,
    breaker_name,
    chaos_service,
    failures_that_opened,
    kinds,
    redeliver,
    send_all,
    snapshot,
    spy_on_breaker,
    transitions,
)
from chaos_sandbox_support import _fresh as _fresh  # fixture
from chaos_sandbox_support import sandbox as sandbox  # fixture

from omnichannel import CircuitOpenError
from omnichannel.testing import EventRecorder, FakeClock
from omnichannel_resilience.breaker import Outcome, State
from omnichannel_whatsapp.sandbox import Fault, SandboxThread


def outage(sandbox: SandboxThread, requests: int) -> None:
    """The sandbox fails its next ``requests`` Graph requests: first 503 / code 2, then 500 / code 1."""
    first = requests // 2
    sandbox.add_fault(Fault("error", http_status=503, code=2, remaining=first))
    sandbox.add_fault(Fault("error", http_status=500, code=1, remaining=requests - first))


# ================================================================ 1. outage burst of 5xx


async def test_an_outage_opens_the_breaker_on_the_threshold_and_every_message_is_sent_once_after(
    sandbox: SandboxThread,
) -> None:
    clock, events = FakeClock(), EventRecorder()
    messages = batch(50)
    outage(sandbox, 8)  # 4 x 503/2 then 4 x 500/1
    async with chaos_service(sandbox, {}, clock, events) as service:
        log = spy_on_breaker(service, breaker_name(sandbox))
        fates = await send_all(service, messages)

        # During the outage, nothing is lost and nothing reached the provider twice.
        assert_nothing_lost(fates, messages)
        assert kinds(fates) == {"deferred": 50}
        assert accepted_ids(sandbox) == []
        # The breaker opened on exactly failure_threshold recorded failures, and from then on refused
        # without calling the sandbox: the sandbox saw those five requests and no more.
        assert failures_that_opened(log) == [Outcome.FAILURE] * THRESHOLD
        assert transitions(events) == [("closed", "open")]
        assert sandbox.counters() == {"fault.error": THRESHOLD}
        # Message 0 used its three attempts (503, 503, 503); message 1's second attempt (500) was the
        # fifth failure: it ends with that classified error, not with CircuitOpenError.
        first, second, *refused = fates
        assert first.receipt.attempts == 3
        assert first.receipt.error.code == 2
        assert second.receipt.attempts == 2
        assert (second.receipt.error.code, second.receipt.error.http_status) == (1, 500)
        assert not isinstance(second.error, CircuitOpenError)
        assert all(isinstance(f.error, CircuitOpenError) for f in refused)
        # Each refusal says how long until a probe may go: the rest of the open time.
        waits = [f.error.retry_after for f in refused]
        assert all(0 < w <= OPEN_S for w in waits)
        assert waits == sorted(waits, reverse=True)
        assert (await snapshot(service, sandbox)).state is State.OPEN

        # Recovery: the queue resends the deferred messages once the breaker may probe. The outage's
        # last three 500s fail three probes (each re-opens it); then probes pass and it closes.
        final = await redeliver(service, clock, fates)
        assert_nothing_lost(final, messages)
        assert kinds(final) == {"sent": 50}
        assert (await snapshot(service, sandbox)).state is State.CLOSED

    ids = assert_no_duplicate_send(sandbox, final)
    assert sorted(ids) == sorted(m.id for m in messages)  # each accepted exactly once
    assert sandbox.counters() == {"fault.error": 8, "requests": 50, "accepted": 50}
    assert transitions(events) == [
        ("closed", "open"),
        *[("open", "half_open"), ("half_open", "open")] * 3,
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_a_concurrent_blackout_trips_the_breaker_once_and_recovery_sends_each_message_once(
    sandbox: SandboxThread,
) -> None:
    clock, events = FakeClock(), EventRecorder()
    messages, concurrency = batch(50), 10
    blackout = sandbox.add_fault(Fault("error", http_status=503, code=2))  # every request, until removed
    async with chaos_service(sandbox, {}, clock, events) as service:
        log = spy_on_breaker(service, breaker_name(sandbox))
        fates = await send_all(service, messages, concurrency=concurrency)
        assert_nothing_lost(fates, messages)
        assert kinds(fates) == {"deferred": 50}
        assert failures_that_opened(log) == [Outcome.FAILURE] * THRESHOLD
        assert transitions(events) == [("closed", "open")]
        # Protection: the calls that reached the sandbox are the failures that tripped the breaker plus
        # at most the other attempts already in flight when it tripped.
        during = sandbox.counters()
        assert THRESHOLD <= during["fault.error"] <= THRESHOLD + concurrency - 1
        assert set(during) == {"fault.error"}

        assert sandbox.call(lambda s: s.faults.remove(blackout))  # the outage ends
        final = await redeliver(service, clock, fates, concurrency=concurrency)
        assert_nothing_lost(final, messages)
        assert kinds(final) == {"sent": 50}
        assert (await snapshot(service, sandbox)).state is State.CLOSED
    ids = assert_no_duplicate_send(sandbox, final)
    assert sorted(ids) == sorted(m.id for m in messages)
    moves = transitions(events)
    assert moves[:2] == [("closed", "open"), ("open", "half_open")]
    assert moves[-1] == ("half_open", "closed")
    assert moves.count(("closed", "open")) == 1
