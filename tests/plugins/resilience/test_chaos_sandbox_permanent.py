"""Chaos scenario 4: permanent errors (132000, 131026) during a run against the WhatsApp sandbox.

Failed with their reason, not retried, the breaker stays closed.

The harness, and the pass criteria asserted in every scenario: ``chaos_sandbox_support``.
"""

from __future__ import annotations

from collections import Counter

from chaos_sandbox_support import _fresh as _fresh  # fixture
from chaos_sandbox_support import (
    assert_no_duplicate_send,
    assert_nothing_lost,
    batch,
    breaker_name,
    chaos_service,
    kinds,
    send_all,
    snapshot,
    spy_on_breaker,
    transitions,
)
from chaos_sandbox_support import sandbox as sandbox  # fixture

from omnichannel import ErrorScope, PermanentDeliveryError, RetryScheduled
from omnichannel.testing import EventRecorder, FakeClock
from omnichannel_resilience.breaker import Outcome, State
from omnichannel_whatsapp.sandbox import Fault, SandboxThread

# ================================================================ 4. permanent errors


async def test_permanent_errors_during_a_run_fail_with_their_reason_and_never_open_the_breaker(
    sandbox: SandboxThread,
) -> None:
    clock, events = FakeClock(), EventRecorder()
    messages = batch(20, "perm")
    async with chaos_service(sandbox, {}, clock, events) as service:
        log = spy_on_breaker(service, breaker_name(sandbox))
        fates = await send_all(service, messages[:5])
        # More message-level errors in a row than the breaker's threshold: the endpoint still works.
        sandbox.add_fault(Fault("error", http_status=400, code=132000, remaining=3))
        sandbox.add_fault(Fault("error", http_status=400, code=131026, remaining=3))
        fates += await send_all(service, messages[5:])
        breaker = await snapshot(service, sandbox)
    assert_nothing_lost(fates, messages)
    failed = [f for f in fates if f.kind == "failed"]
    assert [f.message.id for f in failed] == [m.id for m in messages[5:11]]
    assert [(f.receipt.error.kind, f.receipt.error.code, f.receipt.error.http_status) for f in failed] == [
        *[("PermanentDeliveryError", 132000, 400)] * 3,
        *[("PermanentDeliveryError", 131026, 400)] * 3,
    ]
    assert [f.error.scope for f in failed] == [ErrorScope.MESSAGE] * 3 + [ErrorScope.RECIPIENT] * 3
    assert all(isinstance(f.error, PermanentDeliveryError) and f.receipt.attempts == 1 for f in failed)
    assert events.of_type(RetryScheduled) == []  # not retried
    assert kinds(fates) == {"sent": 14, "failed": 6}
    # The breaker counted them as successes (the endpoint answered): it never opened.
    assert Counter(r.outcome for r in log) == {Outcome.SUCCESS: 20}
    assert (breaker.state, breaker.failures) == (State.CLOSED, 0)
    assert transitions(events) == []
    assert sorted(assert_no_duplicate_send(sandbox, fates)) == [
        f.message.id for f in fates if f.kind == "sent"
    ]
    assert sandbox.counters() == {"fault.error": 6, "requests": 14, "accepted": 14}
