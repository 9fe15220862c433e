"""Chaos tests: the resilience plugin around the WhatsApp plugin, against the WhatsApp sandbox.

Every request goes over a real loopback socket to ``omnichannel_whatsapp.sandbox`` (served by its own
event loop in a background thread, as in ``tests/plugins/whatsapp/test_plugin.py``) and the sandbox's
fault injector (``sandbox/faults.py``) supplies the trouble (shared/resilience.md §3.4). The service
runs on a ``FakeClock``: retry sleeps, the breaker's open time and the rate limits are virtual time;
only the per-attempt timeout (``asyncio.timeout``) and the sandbox's latency faults take real time.

Scenarios:

1. Outage burst of 5xx (503 code 2, 500 code 1) under the recommended profile, sequential and
   concurrent: the breaker opens on exactly ``failure_threshold`` recorded failures, refuses the rest
   without calling the sandbox, re-opens on a failed probe, and closes after recovery.
2. Throttling storm: 130429 (HTTP 400) never opens the breaker, slows the sender (adaptive rate,
   ``Retry-After`` and the limiter's pause are floors); a 131056 pair storm for one recipient defers
   that recipient only.
3. Timeouts: a sandbox latency longer than ``attempt_timeout_s`` is a transient failure of certainty
   ``unknown``: not resent in-process under the recommended profile (no duplicate risk taken), counted
   by the breaker (which opens on enough of them); resent under the legacy profile (``ambiguous =
   retry``: duplicates possible). A dropped connection is ambiguous the same way. The per-attempt
   timeout also shrinks to the message's remaining deadline.
4. Permanent errors (132000, 131026) during a run: failed with their reason, not retried, the
   breaker stays closed.

Pass criteria, asserted in every scenario (the sandbox's accepted log and counters are the ground truth):

- no message lost: each ends *sent* (accepted, with a wamid), *failed* with a classified reason (the
  error's kind and code), or *deferred* (a transient error the queue would republish; breaker and
  local-limit refusals carry ``retry_after``); ``sent + failed + deferred == sent out``;
- no duplicate send for errors whose outcome is certain: one accepted entry per
  ``biz_opaque_callback_data`` (= our message id);
- the breaker opens within the threshold (and never on throttling or message-level errors) and closes
  after recovery.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import attrs
import pytest

import omnichannel_whatsapp
from omnichannel import (
    Certainty,
    CircuitOpenError,
    CircuitStateChanged,
    DeliveryError,
    ErrorScope,
    Message,
    OmniChannelService,
    PermanentDeliveryError,
    PluginSettings,
    RateLimitedError,
    Receipt,
    RetryScheduled,
    ServiceConfig,
    Text,
    TransientDeliveryError,
)
from omnichannel.testing import EventRecorder, FakeClock, make_service
from omnichannel_resilience import ResiliencePlugin, runtime
from omnichannel_resilience.breaker import BreakerSnapshot, Outcome, State
from omnichannel_whatsapp.sandbox import Fault, Sandbox, SandboxSettings, SandboxThread

SEED = 7
THRESHOLD = 5
"""``failure_threshold`` of both profiles."""
OPEN_S = 60.0
"""``open_s`` of both profiles."""

# ---------------------------------------------------------------- the sandbox in its own thread


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxThread]:
    served = SandboxThread(SandboxSettings(access_token="chaos-token", app_secret="chaos-secret"))
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(autouse=True)
def _fresh(sandbox: SandboxThread) -> None:
    sandbox.reset()


# ---------------------------------------------------------------- the service under test


def whatsapp_settings(sandbox: Sandbox | SandboxThread) -> dict[str, Any]:
    return {
        "phone_number_id": sandbox.settings.phone_number_id,
        "access_token": sandbox.settings.access_token,
        "base_url": sandbox.url,
        "app_secret": sandbox.settings.app_secret,
    }


def chaos_service(
    sandbox: Sandbox | SandboxThread,
    resilience: dict[str, Any],
    clock: FakeClock,
    events: EventRecorder,
) -> OmniChannelService:
    config = ServiceConfig(
        plugins={
            "resilience": PluginSettings(settings=resilience),
            "whatsapp": PluginSettings(settings=whatsapp_settings(sandbox)),
        }
    )
    return make_service(
        ("whatsapp", omnichannel_whatsapp),
        ("resilience", ResiliencePlugin(random.Random(SEED))),
        events,
        config=config,
        clock=clock,
        environ={},
    )


def breaker_name(sandbox: Sandbox | SandboxThread) -> str:
    return f"whatsapp:{sandbox.settings.phone_number_id}"


def batch(count: int, prefix: str = "chaos", recipient: Callable[[int], str] | None = None) -> list[Message]:
    """``count`` text messages, each to its own recipient (no pair limit involved) unless told."""
    to = recipient or (lambda i: f"+1650555{i:04d}")
    return [
        Message(to(i), Text(f"message {i}"), channel="whatsapp", id=f"{prefix}-{i:03d}") for i in range(count)
    ]


# ---------------------------------------------------------------- the ledger: what became of each message

FateKind = Literal["sent", "failed", "deferred"]


@attrs.frozen
class Fate:
    """What one send ended with: accepted, failed for good (with its reason) or deferred (retry later)."""

    message: Message
    kind: FateKind
    receipt: Receipt
    error: DeliveryError | None = None


async def send_one(service: OmniChannelService, message: Message) -> Fate:
    error: DeliveryError | None = None
    try:
        receipt = await service.send(message)
    except DeliveryError as exc:
        error = exc
        receipt = exc.receipt  # type: ignore[attr-defined]
    assert isinstance(receipt, Receipt)
    if error is None:
        assert receipt.ok
        assert receipt.provider_message_id
        return Fate(message, "sent", receipt)
    # A classified reason: the error's class and (for provider answers) Graph's code.
    assert receipt.error is not None
    assert receipt.error.kind == type(error).__name__
    assert receipt.error.code == error.code
    if isinstance(error, CircuitOpenError) or (
        isinstance(error, RateLimitedError) and error.certainty is Certainty.NOT_SENT
    ):
        # Our own refusals (breaker, local rate limit) say when to come back.
        assert error.retry_after is not None
        assert error.retry_after > 0
    return Fate(message, "deferred" if error.retryable else "failed", receipt, error)


async def send_all(
    service: OmniChannelService, messages: Iterable[Message], *, concurrency: int = 1
) -> list[Fate]:
    """Send every message, ``concurrency`` at a time; one :class:`Fate` per message, in input order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(message: Message) -> Fate:
        async with gate:
            return await send_one(service, message)

    return list(await asyncio.gather(*(one(m) for m in messages)))


def kinds(fates: Iterable[Fate]) -> Counter[str]:
    return Counter(f.kind for f in fates)


def assert_nothing_lost(fates: list[Fate], messages: list[Message]) -> None:
    """Every message has exactly one fate: sent, failed with a reason, or deferred."""
    assert [f.message.id for f in fates] == [m.id for m in messages]
    counts = kinds(fates)
    assert counts["sent"] + counts["failed"] + counts["deferred"] == len(messages)
    for fate in fates:
        if fate.kind != "sent":
            assert fate.error is not None
            assert fate.receipt.error is not None
            assert fate.receipt.error.kind
            assert fate.receipt.error.detail


def accepted_ids(sandbox: SandboxThread | Sandbox) -> list[str]:
    """``biz_opaque_callback_data`` (our message id) of every message the sandbox accepted, in order."""
    records = sandbox.messages() if isinstance(sandbox, SandboxThread) else sandbox.state.messages
    return [r.body["biz_opaque_callback_data"] for r in records]


def assert_no_duplicate_send(sandbox: SandboxThread | Sandbox, fates: Iterable[Fate] = ()) -> list[str]:
    """The sandbox accepted each message id at most once, and every *sent* fate is in its log."""
    ids = accepted_ids(sandbox)
    duplicates = [key for key, n in Counter(ids).items() if n > 1]
    assert duplicates == [], f"sent twice: {duplicates}"
    sent = {f.message.id for f in fates if f.kind == "sent"}
    assert sent <= set(ids)
    return ids


async def redeliver(
    service: OmniChannelService,
    clock: FakeClock,
    fates: list[Fate],
    *,
    rounds: int = 10,
    concurrency: int = 1,
) -> list[Fate]:
    """What a queue does with deferred messages: wait their ``retry_after`` (or ``open_s``), resend them.

    Returns the final fate of every message (in the order of ``fates``).
    """
    final = {f.message.id: f for f in fates}
    for _ in range(rounds):
        deferred = [f for f in final.values() if f.kind == "deferred"]
        if not deferred:
            break
        waits = [f.error.retry_after for f in deferred if f.error is not None and f.error.retry_after]
        clock.advance(max(waits, default=OPEN_S))
        for fate in await send_all(service, [f.message for f in deferred], concurrency=concurrency):
            final[fate.message.id] = fate
    return [final[f.message.id] for f in fates]


def transitions(events: EventRecorder) -> list[tuple[str, str]]:
    return [(e.previous, e.current) for e in events.of_type(CircuitStateChanged)]


# ---------------------------------------------------------------- a spy on what the breaker records


@attrs.frozen
class Recorded:
    outcome: Outcome
    generation: int
    """The generation the attempt was admitted under."""
    after: State
    """The breaker's state once the outcome was recorded."""


def spy_on_breaker(service: OmniChannelService, name: str) -> list[Recorded]:
    """Every outcome recorded into breaker ``name``, in order (wraps the store's ``record``)."""
    store = runtime(service, rng=random.Random(SEED)).breakers
    assert store is not None
    original = store.record
    log: list[Recorded] = []

    async def record(breaker: str, token: object, outcome: Outcome) -> None:
        generation = token.generation  # type: ignore[attr-defined]
        await original(breaker, token, outcome)
        if breaker == name:
            log.append(Recorded(outcome, generation, (await store.snapshot(name)).state))

    store.record = record  # type: ignore[method-assign]
    return log


def failures_that_opened(log: list[Recorded]) -> list[Outcome]:
    """The outcomes counted by the CLOSED phase that opened the breaker first (same generation, in order)."""
    opened = next(i for i, r in enumerate(log) if r.after is State.OPEN)
    generation = log[opened].generation
    counted = [r.outcome for r in log[: opened + 1] if r.generation == generation]
    # Consecutive mode: only the failures since the last success count.
    last_success = max((i for i, o in enumerate(counted) if o is Outcome.SUCCESS), default=-1)
    return [o for o in counted[last_success + 1 :] if o is not Outcome.IGNORED]


async def snapshot(service: OmniChannelService, sandbox: Sandbox | SandboxThread) -> BreakerSnapshot:
    store = runtime(service).breakers
    assert store is not None
    return await store.snapshot(breaker_name(sandbox))


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
