"""The ambiguous-outcome policies of ``Worker`` (shared/resilience.md §1.10) against the real RabbitMQ.

A send whose outcome is uncertain (certainty ``unknown``: it may have reached the provider) is
reconciled (the default: wait for a status webhook to settle its key, then resend once), resent
at once (``retry``) or dead-lettered (``dead_letter``). Every resend of an uncertain key emits
``PossibleDuplicateSend``. A status webhook is simulated by ``KeyStore.settle``, called by a
listener while the worker's send is failing (the webhook beat the send's timeout), so the
tests do not race the reconcile window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from test_amqp_transport import amqp_config

from omnichannel import Message, OmniChannelService, Text, hookimpl
from omnichannel.amqp import AmqpTransport, Fate, Worker, list_dead_letters, retry_dead_letters
from omnichannel.commands import SendMessage
from omnichannel.errors import Certainty, TransientDeliveryError
from omnichannel.events import DeliveryFailed, Event, PossibleDuplicateSend
from omnichannel.idempotency import KeyState, MemoryKeyStore
from omnichannel.testing import EventRecorder, FakeClock, RecordingChannel

TIMEOUT = 10.0
WINDOW_S = 0.05


def uncertain(detail: str = "timed out reading the answer") -> TransientDeliveryError:
    return TransientDeliveryError(detail, certainty=Certainty.UNKNOWN, code=None)


class OnFailure:
    """A listener that runs ``action(event)`` on every ``DeliveryFailed`` (a webhook arriving
    while the send is failing)."""

    def __init__(self) -> None:
        self.action: Callable[[DeliveryFailed], Any] | None = None

    @hookimpl
    async def on_event(self, event: Event) -> None:
        if isinstance(event, DeliveryFailed) and self.action is not None:
            await self.action(event)


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
def events() -> EventRecorder:
    return EventRecorder()


@pytest.fixture
def on_failure() -> OnFailure:
    return OnFailure()


@pytest.fixture
async def service(channel, events, on_failure) -> AsyncIterator[OmniChannelService]:
    async with OmniChannelService(plugins=[channel, events, on_failure], load_entrypoints=False) as svc:
        yield svc


@pytest.fixture
def keys() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
def policy() -> str:
    return "reconcile"


@pytest.fixture
async def config(policy):
    settings = {"delays": (0.05,), "max_deliveries": 3, "stop_timeout_s": 2.0}
    async for value in amqp_config(ambiguous_policy=policy, reconcile_window_s=WINDOW_S, **settings):
        yield value


@pytest.fixture
async def worker(service, config, keys) -> AsyncIterator[Worker]:
    worker = Worker(service, config, keys)
    await worker.start()
    yield worker
    await worker.stop()


@pytest.fixture
async def publish(config) -> AsyncIterator[AmqpTransport]:
    async with AmqpTransport(config) as transport:
        yield transport


def message(key: str, recipient: str = "+15550001") -> Message:
    return Message(recipient, Text("hello"), channel="recording", idempotency_key=key)


async def settled(worker: Worker, count: int):
    return await asyncio.wait_for(worker.wait_settled(count), TIMEOUT)


def fates(results) -> list[tuple[Fate, str | None]]:
    return [(r.decision.fate, r.decision.reason) for r in results]


def duplicates(events: EventRecorder) -> list[tuple[str, str, str]]:
    return [(e.message_id, e.channel, e.key) for e in events.of_type(PossibleDuplicateSend)]


# ---------------------------------------------------------------- reconcile (the default)


async def test_reconcile_webhook_settles_sent_no_resend(
    worker, publish, service, channel, keys, on_failure, events
):
    async def webhook(event: DeliveryFailed) -> None:
        await keys.settle("k", channel="recording", provider_message_id="wamid.1")

    on_failure.action = webhook
    channel.fail_next(1, uncertain())
    await publish.submit(SendMessage(message("k")), service.bus)
    waited, back = await settled(worker, 2)
    assert (waited.decision.fate, waited.decision.reason, waited.delay_s) == (
        Fate.RECONCILE,
        "uncertain",
        WINDOW_S,
    )
    assert "timed out reading the answer" in (waited.decision.error or "")
    assert back.decision.fate is Fate.RECONCILED
    assert (channel.attempts, channel.payloads) == (1, [])  # never resent
    assert duplicates(events) == []
    record = await keys.get("k")
    assert record is not None
    assert (record.state, record.provider_message_id) == (KeyState.SENT, "wamid.1")
    assert worker.counts == {Fate.RECONCILE: 1, Fate.RECONCILED: 1}


async def test_reconcile_webhook_settles_failed_dead_letters(
    worker, publish, service, channel, keys, on_failure, config
):
    async def webhook(event: DeliveryFailed) -> None:
        await keys.settle(
            "k", channel="recording", provider_message_id="wamid.1", error="131026: undeliverable"
        )

    on_failure.action = webhook
    channel.fail_next(1, uncertain())
    await publish.submit(SendMessage(message("k")), service.bus)
    results = await settled(worker, 2)
    assert fates(results) == [(Fate.RECONCILE, "uncertain"), (Fate.DEAD_LETTER, "failed_before")]
    [letter] = await list_dead_letters(config)
    assert (letter.reason, letter.error) == ("failed_before", "131026: undeliverable")
    assert channel.attempts == 1


async def test_reconcile_without_webhook_resends_once(worker, publish, service, channel, keys, events):
    channel.fail_next(1, uncertain())
    command = SendMessage(message("k"))
    await publish.submit(command, service.bus)
    results = await settled(worker, 2)
    assert fates(results) == [(Fate.RECONCILE, "uncertain"), (Fate.SENT, "resent_uncertain")]
    assert [p.recipient for p in channel.payloads] == ["+15550001"]
    assert duplicates(events) == [(command.message.id, "recording", "k")]
    assert worker.possible_duplicates == 1
    record = await keys.get("k")
    assert record is not None
    assert (record.state, record.attempts) == (KeyState.SENT, 2)


async def test_reconcile_second_uncertain_outcome_dead_letters(
    worker, publish, service, channel, keys, events, config
):
    channel.fail_next(2, uncertain())
    await publish.submit(SendMessage(message("k")), service.bus)
    results = await settled(worker, 2)
    assert fates(results) == [(Fate.RECONCILE, "uncertain"), (Fate.DEAD_LETTER, "ambiguous_policy")]
    assert (channel.attempts, len(duplicates(events))) == (2, 1)
    [letter] = await list_dead_letters(config)
    assert letter.reason == "ambiguous_policy"
    record = await keys.get("k")
    assert record is not None
    assert record.state is KeyState.UNCERTAIN


async def test_expired_lease_of_a_dead_worker_is_reconciled(publish, service, channel, config, events):
    """A worker died mid-send: its lease expires, the next claim finds the key uncertain."""
    clock = FakeClock()
    keys = MemoryKeyStore(clock)
    await keys.claim("k", owner="dead-worker", lease_s=60)
    clock.advance(61)
    worker = Worker(service, config, keys)
    await worker.start()
    try:
        await publish.submit(SendMessage(message("k")), service.bus)
        results = await settled(worker, 2)
    finally:
        await worker.stop()
    assert fates(results) == [(Fate.RECONCILE, "uncertain"), (Fate.SENT, "resent_uncertain")]
    assert "lease expired" in (results[0].decision.error or "")
    assert len(channel.payloads) == 1
    assert len(duplicates(events)) == 1


async def test_expired_lease_settled_by_webhook_meanwhile(publish, service, channel, config, events):
    clock = FakeClock()
    keys = MemoryKeyStore(clock)
    await keys.claim("k", owner="dead-worker", lease_s=60)
    clock.advance(61)
    worker = Worker(service, config, keys)
    await worker.start()
    try:
        await publish.submit(SendMessage(message("k")), service.bus)
        [waited] = await settled(worker, 1)
        # The window is still running (the message is in the delay queue): the webhook arrives.
        assert await keys.settle("k", channel="recording", provider_message_id="wamid.9")
        results = await settled(worker, 2)
    finally:
        await worker.stop()
    assert waited.decision.fate is Fate.RECONCILE
    assert results[1].decision.fate is Fate.RECONCILED
    assert (channel.attempts, duplicates(events)) == (0, [])


# ---------------------------------------------------------------- retry and dead_letter


@pytest.mark.parametrize("policy", ["retry"])
async def test_retry_resends_at_once(worker, publish, service, channel, events, policy):
    channel.fail_next(1, uncertain())
    command = SendMessage(message("k"))
    await publish.submit(command, service.bus)
    [done] = await settled(worker, 1)
    assert fates([done]) == [(Fate.SENT, "resent_uncertain")]
    assert (channel.attempts, len(channel.payloads)) == (2, 1)
    assert duplicates(events) == [(command.message.id, "recording", "k")]


@pytest.mark.parametrize("policy", ["retry"])
async def test_retry_uncertain_again_defers_and_resends(worker, publish, service, channel, events, policy):
    channel.fail_next(2, uncertain())
    await publish.submit(SendMessage(message("k")), service.bus)
    results = await settled(worker, 2)
    assert fates(results) == [(Fate.DEFER, None), (Fate.SENT, "resent_uncertain")]
    assert (channel.attempts, len(channel.payloads)) == (3, 1)
    assert len(duplicates(events)) == 2  # one resend per uncertain outcome


@pytest.mark.parametrize("policy", ["dead_letter"])
async def test_dead_letter_never_resends(worker, publish, service, channel, events, keys, config, policy):
    channel.fail_next(1, uncertain())
    await publish.submit(SendMessage(message("k")), service.bus)
    [done] = await settled(worker, 1)
    assert fates([done]) == [(Fate.DEAD_LETTER, "ambiguous_policy")]
    [letter] = await list_dead_letters(config)
    assert letter.reason == "ambiguous_policy"
    assert (channel.attempts, duplicates(events)) == (1, [])
    # A redelivered copy (the key is uncertain) is dead-lettered too, without a send.
    await publish.submit(SendMessage(message("k")), service.bus)
    results = await settled(worker, 2)
    assert fates(results[1:]) == [(Fate.DEAD_LETTER, "ambiguous_policy")]
    assert channel.attempts == 1


@pytest.mark.parametrize("policy", ["dead_letter", "reconcile"])
async def test_dlq_retry_of_an_ambiguous_entry_sends_it_once(
    worker, publish, service, channel, events, config, policy
):
    channel.fail_next(1 if policy == "dead_letter" else 2, uncertain())
    command = SendMessage(message("k"))
    await publish.submit(command, service.bus)
    first = await settled(worker, 1 if policy == "dead_letter" else 2)
    assert first[-1].decision.reason == "ambiguous_policy"
    duplicates_before = len(duplicates(events))
    assert await retry_dead_letters(config) == [command.message.id]
    results = await settled(worker, len(first) + 1)
    assert fates(results[-1:]) == [(Fate.SENT, "resent_uncertain")]
    assert len(channel.payloads) == 1
    assert len(duplicates(events)) == duplicates_before + 1
    # A second replay of a copy is acked as already sent: the replay allowed one resend only.
    await publish.declare(config.dead_letter_queue)
    await publish.publish(service.bus.encode(command), queue=config.dead_letter_queue, message_id="copy")
    await retry_dead_letters(config)
    results = await settled(worker, len(first) + 2)
    assert results[-1].decision.fate is Fate.ALREADY_SENT
    assert len(channel.payloads) == 1


async def test_dlq_retry_of_an_old_uncertain_entry(worker, publish, service, channel, keys, config):
    """Entries dead-lettered as ``uncertain`` by older workers are listed and replayed the same way."""
    await keys.claim("old", owner="old-worker", lease_s=60)
    await keys.release("old", owner="old-worker", error="timed out", final=False, uncertain=True)
    command = SendMessage(message("old"))
    await publish.declare(config.dead_letter_queue)
    headers = {"x-reason": "uncertain", "x-error": "TransientDeliveryError: timed out", "x-deliveries": 1}
    await publish.publish(
        service.bus.encode(command), queue=config.dead_letter_queue, message_id="old-1", headers=headers
    )
    [letter] = await list_dead_letters(config)
    assert (letter.message_id, letter.reason) == ("old-1", "uncertain")
    await retry_dead_letters(config)
    [done] = await settled(worker, 1)
    assert fates([done]) == [(Fate.SENT, "resent_uncertain")]
    assert len(channel.payloads) == 1


def test_config_policy_is_checked():
    from omnichannel.config import load_config
    from omnichannel.errors import ConfigError

    environ = {"OMNICHANNEL_AMQP__AMBIGUOUS_POLICY": "maybe", "OMNICHANNEL_AMQP__URL": "amqp://h/"}
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert caught.value.errors == [
        "amqp.ambiguous_policy: must be one of reconcile, retry, dead_letter, got 'maybe' "
        "(from $OMNICHANNEL_AMQP__AMBIGUOUS_POLICY)"
    ]
    config = load_config(environ={"OMNICHANNEL_AMQP__URL": "amqp://h/"}).amqp
    assert config is not None
    assert (config.ambiguous_policy, config.reconcile_window_s, config.park_probe_s) == (
        "reconcile",
        30.0,
        300.0,
    )
