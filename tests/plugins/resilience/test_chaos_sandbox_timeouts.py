"""Chaos scenario 3: timeouts and dropped connections against the WhatsApp sandbox.

A sandbox latency longer than ``attempt_timeout_s`` is a transient failure of certainty ``unknown``: not
resent in-process under the recommended profile (no duplicate risk taken), counted by the breaker
(which opens on enough of them); resent under the legacy profile (``ambiguous = retry``: duplicates
possible). A dropped connection is ambiguous the same way. The per-attempt timeout also shrinks to the
message's remaining deadline.

The harness, and the pass criteria asserted in every scenario: ``chaos_sandbox_support``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from chaos_sandbox_support import (
    THRESHOLD,
    accepted_ids,
    assert_no_duplicate_send,
    assert_nothing_lost,
    batch,
    breaker_name,
    chaos_service,
    failures_that_opened,
    send_all,
    snapshot,
    spy_on_breaker,
    transitions,
)
from chaos_sandbox_support import _fresh as _fresh  # fixture
from chaos_sandbox_support import sandbox as sandbox  # fixture

from omnichannel import Certainty, CircuitOpenError, RetryScheduled, TransientDeliveryError
from omnichannel.testing import EventRecorder, FakeClock
from omnichannel_resilience.breaker import Outcome, State
from omnichannel_whatsapp.sandbox import Fault, SandboxThread

# ================================================================ 3. timeouts


ATTEMPT_TIMEOUT_S = 0.15
LATE_S = 0.3
"""The sandbox's latency fault: longer than the attempt timeout (real time, as the timeout is)."""


async def until(condition: Callable[[], bool], *, timeout_s: float = 3.0) -> None:
    """Wait (real time) until ``condition()`` holds: the sandbox finishing requests we gave up on."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the sandbox did not finish in time"
        await asyncio.sleep(0.01)


def slow_sandbox(sandbox: SandboxThread, requests: int) -> None:
    """The next ``requests`` Graph requests wait ``LATE_S`` in the sandbox before it handles them."""
    sandbox.add_fault(Fault("latency", latency_s=LATE_S, remaining=requests))


async def handled_late(sandbox: SandboxThread, requests: int) -> None:
    """Wait until the sandbox got round to the ``requests`` delayed requests (after we gave up on them).

    The latency fault waits *before* the handler runs; by then the client has closed the connection,
    so the handler cannot read the body and the sandbox does not accept the message. (Meta may well
    process such a request: the sandbox has no "process, then time out" fault.)
    """
    await until(lambda: sandbox.counters().get("requests", 0) >= requests)
    await asyncio.sleep(0.05)  # the handler's failed body read, done by now


async def test_a_timed_out_attempt_is_not_resent_under_the_recommended_profile(
    sandbox: SandboxThread,
) -> None:
    clock, events = FakeClock(), EventRecorder()
    slow_sandbox(sandbox, 1)
    [message] = batch(1, "timeout")
    async with chaos_service(sandbox, {"attempt_timeout_s": ATTEMPT_TIMEOUT_S}, clock, events) as service:
        [fate] = await send_all(service, [message])
        breaker = await snapshot(service, sandbox)
    assert fate.kind == "deferred"
    assert type(fate.error) is TransientDeliveryError
    assert fate.error.certainty is Certainty.UNKNOWN
    assert "attempt_timeout_s" in fate.error.detail
    # Ambiguous (the provider may have acted on it): not resent in-process, no duplicate risk taken.
    assert fate.receipt.attempts == 1
    assert events.of_type(RetryScheduled) == []
    assert (breaker.state, breaker.failures) == (State.CLOSED, 1)  # but a failure for the breaker
    await handled_late(sandbox, 1)
    assert sandbox.counters() == {"fault.latency": 1, "requests": 1}  # one request, never two
    assert accepted_ids(sandbox) == []


async def test_the_legacy_profile_resends_a_timed_out_attempt(sandbox: SandboxThread) -> None:
    clock, events = FakeClock(), EventRecorder()
    slow_sandbox(sandbox, 1)
    [message] = batch(1, "timeout")
    legacy = {"profile": "legacy", "attempt_timeout_s": ATTEMPT_TIMEOUT_S}
    async with chaos_service(sandbox, legacy, clock, events) as service:
        [fate] = await send_all(service, [message])
        breaker = await snapshot(service, sandbox)
    # ambiguous = retry (the PHP service's at-least-once): the same message went out a second time.
    assert fate.kind == "sent"
    assert fate.receipt.attempts == 2
    [retry] = events.of_type(RetryScheduled)
    assert (retry.error.kind, retry.error.certainty, retry.delay_s) == (
        "TransientDeliveryError",
        Certainty.UNKNOWN,
        1.0,
    )
    assert (breaker.state, breaker.failures) == (State.CLOSED, 0)  # the success reset the count
    await handled_late(sandbox, 2)
    # Two requests carried the same biz_opaque_callback_data. The sandbox dropped the timed-out one
    # (it could no longer read its body), so it accepted the message once. A provider that processed
    # the first request before the timeout would have delivered it twice: with ``ambiguous = retry``
    # duplicates are possible, which is why the recommended profile gives up instead (test above).
    assert sandbox.counters() == {"fault.latency": 1, "requests": 2, "accepted": 1}
    [accepted] = sandbox.messages()
    assert (accepted.body["biz_opaque_callback_data"], accepted.wamid) == (
        message.id,
        fate.receipt.provider_message_id,
    )


async def test_enough_timeouts_open_the_breaker_and_none_is_resent(sandbox: SandboxThread) -> None:
    clock, events = FakeClock(), EventRecorder()
    slow_sandbox(sandbox, THRESHOLD)
    slow, later = batch(THRESHOLD, "timeout"), batch(3, "later")
    async with chaos_service(sandbox, {"attempt_timeout_s": ATTEMPT_TIMEOUT_S}, clock, events) as service:
        log = spy_on_breaker(service, breaker_name(sandbox))
        # Five at once: they time out together (real time: one attempt timeout).
        timed_out = await send_all(service, slow, concurrency=THRESHOLD)
        refused = await send_all(service, later)
        breaker = await snapshot(service, sandbox)
    assert_nothing_lost(timed_out + refused, slow + later)
    assert failures_that_opened(log) == [Outcome.FAILURE] * THRESHOLD
    assert transitions(events) == [("closed", "open")]
    assert breaker.state is State.OPEN
    for fate in timed_out:
        assert fate.kind == "deferred"
        assert fate.receipt.attempts == 1
        assert type(fate.error) is TransientDeliveryError
        assert fate.error.certainty is Certainty.UNKNOWN
    assert all(isinstance(f.error, CircuitOpenError) and f.receipt.attempts == 0 for f in refused)
    assert events.of_type(RetryScheduled) == []
    await handled_late(sandbox, THRESHOLD)
    # One request per timed-out message, none for the refused ones.
    assert sandbox.counters() == {"fault.latency": THRESHOLD, "requests": THRESHOLD}


async def test_the_attempt_timeout_shrinks_to_what_is_left_of_the_message_deadline(
    sandbox: SandboxThread,
) -> None:
    clock, events = FakeClock(), EventRecorder()
    sandbox.add_fault(Fault("error", http_status=503, code=2, remaining=1))
    slow_sandbox(sandbox, 1)  # the retry is answered after LATE_S (0.3 s)
    [message] = batch(1, "deadline")
    settings = {
        "attempt_timeout_s": 1.0,
        # Retry after exactly 1 s of the 1.15 s deadline: the retry starts with 0.15 s left.
        "retry": {"jitter": "none", "deadline_s": 1.15, "min_attempt_time_s": 0.1},
    }
    async with chaos_service(sandbox, settings, clock, events) as service:
        [fate] = await send_all(service, [message])
    await handled_late(sandbox, 1)
    assert [r.delay_s for r in events.of_type(RetryScheduled)] == [1.0]
    assert fate.receipt.attempts == 2
    # The retry may take min(attempt_timeout_s, deadline - now) = 0.15 s, less than the sandbox's 0.3 s:
    # it times out (ambiguous, deferred) instead of being accepted 0.15 s after the deadline.
    assert fate.kind == "deferred", "the retry ran past the message's deadline and was accepted"
    assert fate.error.certainty is Certainty.UNKNOWN


@pytest.mark.parametrize(("profile", "attempts"), [("recommended", 1), ("legacy", 2)])
async def test_a_dropped_connection_is_ambiguous_like_a_timeout(
    sandbox: SandboxThread, profile: str, attempts: int
) -> None:
    clock, events = FakeClock(), EventRecorder()
    sandbox.add_fault(Fault("drop", remaining=1))  # the sandbox closes the connection without answering
    [message] = batch(1, "drop")
    async with chaos_service(sandbox, {"profile": profile}, clock, events) as service:
        [fate] = await send_all(service, [message])
    assert fate.receipt.attempts == attempts
    if profile == "recommended":
        assert fate.kind == "deferred"
        assert fate.error.certainty is Certainty.UNKNOWN
        assert sandbox.counters() == {"fault.drop": 1}
    else:  # resent: safe here only because the sandbox drops before processing
        assert fate.kind == "sent"
        assert [r.error.certainty for r in events.of_type(RetryScheduled)] == [Certainty.UNKNOWN]
        assert sandbox.counters() == {"fault.drop": 1, "requests": 1, "accepted": 1}
    assert_no_duplicate_send(sandbox, [fate])
