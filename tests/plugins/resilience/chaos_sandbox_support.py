"""The harness of the chaos tests (``test_chaos_sandbox_*.py``): resilience and WhatsApp vs. its sandbox.

Every request goes over a real loopback socket to ``omnichannel_whatsapp.sandbox`` (served by its own
event loop in a background thread, as in ``tests/plugins/whatsapp/test_plugin.py``) and the sandbox's
fault injector (``sandbox/faults.py``) supplies the trouble (shared/resilience.md §3.4). The service
runs on a ``FakeClock``: retry sleeps, the breaker's open time and the rate limits are virtual time;
only the per-attempt timeout (``asyncio.timeout``) and the sandbox's latency faults take real time.

Scenarios: 1. outage burst of 5xx (``test_chaos_sandbox_outage.py``), 2. throttling storm
(``..._throttling.py``), 3. timeouts (``..._timeouts.py``), 4. permanent errors (``..._permanent.py``).

Pass criteria, asserted in every scenario (the sandbox's accepted log and counters are the ground truth):

- no message lost: each ends *sent* (accepted, with a wamid), *failed* with a classified reason (the
  error's kind and code), or *deferred* (a transient error the queue would republish; breaker and
  local-limit refusals carry ``retry_after``); ``sent + failed + deferred == sent out``;
- no duplicate send for errors whose outcome is certain: one accepted entry per
  ``biz_opaque_callback_data`` (= our message id);
- the breaker opens within the threshold (and never on throttling or message-level errors) and closes
  after recovery.

A test module imports the ``sandbox`` fixture and the autouse ``_fresh`` with a redundant alias
(``from chaos_sandbox_support import sandbox as sandbox``): pytest finds fixtures in the module's
namespace (one sandbox thread per module), and the alias tells ruff that the import is wanted.
"""

from __future__ import annotations

import asyncio
import random
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
    Message,
    OmniChannelService,
    PluginSettings,
    RateLimitedError,
    Receipt,
    ServiceConfig,
    Text,
)
from omnichannel.testing import EventRecorder, FakeClock, make_service
from omnichannel_resilience import ResiliencePlugin, runtime
from omnichannel_resilience.breaker import BreakerSnapshot, Outcome, State
from omnichannel_whatsapp.sandbox import Sandbox, SandboxSettings, SandboxThread

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
