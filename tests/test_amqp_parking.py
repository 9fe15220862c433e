"""PARK (shared/resilience.md §1.1, §1.11) against the real RabbitMQ: a sender that cannot send has
its messages moved to ``<queue>.parked.<sender>`` instead of the dead-letter queue, its further
messages are parked without being sent, and it is resumed by an operator (``resume_parked``,
``omnichannel sender resume``), by the control exchange, or by a successful probe.

Two in-memory channels stand for two senders: ``recording`` (S1, the one that breaks) and
``other`` (S2). ``test_amqp_parking_sandbox.py`` does the same with the WhatsApp sandbox.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from test_amqp_transport import amqp_config

from omnichannel import Message, OmniChannelService, Text, hookimpl
from omnichannel.amqp import AmqpTransport, Fate, Worker, list_dead_letters, list_parked, resume_parked
from omnichannel.amqp.parking import ParkedSenders
from omnichannel.commands import SendMessage
from omnichannel.errors import ErrorScope, PermanentDeliveryError, RateLimitedError, SenderUnavailableError
from omnichannel.events import Event, SenderParked, SenderResumed
from omnichannel.idempotency import MemoryKeyStore
from omnichannel.testing import FakeClock, RecordingChannel

TIMEOUT = 10.0
S1, S2 = "recording", "other"
PROBE_S = 60.0


class EventWaiter:
    """A listener plugin that keeps every event and lets a test await a condition on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()

    @hookimpl
    async def on_event(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def of_type(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    async def wait_for(self, condition: Callable[[EventWaiter], bool]) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: condition(self))

        await asyncio.wait_for(wait(), TIMEOUT)


def revoked() -> SenderUnavailableError:
    return SenderUnavailableError("the access token was revoked", code=190, http_status=401)


@pytest.fixture
def s1() -> RecordingChannel:
    return RecordingChannel(S1)


@pytest.fixture
def s2() -> RecordingChannel:
    return RecordingChannel(S2)


@pytest.fixture
def events() -> EventWaiter:
    return EventWaiter()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def service(s1, s2, events, clock) -> AsyncIterator[OmniChannelService]:
    async with OmniChannelService(plugins=[s1, s2, events], load_entrypoints=False, clock=clock) as svc:
        yield svc


@pytest.fixture
def keys() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
async def config():
    settings = {"delays": (0.05,), "max_deliveries": 3, "stop_timeout_s": 2.0, "park_probe_s": PROBE_S}
    async for value in amqp_config(senders=[S1, S2, "nobody"], **settings):
        yield value


@pytest.fixture
async def worker(service, config, keys) -> AsyncIterator[Worker]:
    worker = Worker(service, config, keys, owner="worker-a")
    await worker.start()
    yield worker
    await worker.stop()


@pytest.fixture
async def publish(config) -> AsyncIterator[AmqpTransport]:
    async with AmqpTransport(config) as transport:
        yield transport


def message(channel: str, n: int) -> Message:
    return Message(f"+1555000{n:04d}", Text("hello"), channel=channel, idempotency_key=f"{channel}-{n}")


async def submit(publish: AmqpTransport, service: OmniChannelService, *messages: Message) -> None:
    for m in messages:
        await publish.submit(SendMessage(m), service.bus)


async def settled(worker: Worker, count: int):
    return await asyncio.wait_for(worker.wait_settled(count), TIMEOUT)


async def settled_by_all(workers: list[Worker], count: int) -> None:
    """Wait until ``workers`` settled ``count`` messages between them."""

    async def wait() -> None:
        while sum(len(w.settled) for w in workers) < count:
            waits = [asyncio.create_task(w.wait_settled(len(w.settled) + 1)) for w in workers]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()

    await asyncio.wait_for(wait(), TIMEOUT)


async def park_s1(worker: Worker, publish, service, s1: RecordingChannel) -> None:
    """S1's first message fails with a revoked token: S1 is parked."""
    s1.fail_next(1, revoked())
    await submit(publish, service, message(S1, 0))
    [done] = await settled(worker, len(worker.settled) + 1)
    assert (done.decision.fate, done.decision.sender) == (Fate.PARK, S1)


async def test_parked_sender_holds_its_messages_others_flow(worker, publish, service, s1, s2, events, config):
    await park_s1(worker, publish, service, s1)
    await submit(publish, service, *(message(S1, n) for n in (1, 2, 3)), message(S2, 1), message(S2, 2))
    results = await settled(worker, 6)
    assert s1.attempts == 1  # the parked sender's later messages never reached it
    assert sorted(p.recipient for p in s2.payloads) == ["+15550000001", "+15550000002"]
    parked = [r for r in results if r.decision.fate is Fate.PARK]
    assert len(parked) == 4
    assert {(r.decision.reason, r.decision.sender, r.decision.channel) for r in parked} == {
        ("sender_unavailable", S1, S1)
    }
    assert "the access token was revoked" in (parked[0].decision.error or "")
    assert "sender 'recording' is parked" in (parked[1].decision.error or "")
    assert worker.parked.counts() == {S1: 4}
    assert await list_dead_letters(config) == []
    [entry] = await list_parked(config)
    assert (entry.sender, entry.channel, entry.reason, entry.messages) == (S1, S1, "sender_unavailable", 4)
    assert entry.queue == f"{config.queue}.parked.{S1}"
    assert [(e.channel, e.sender, e.reason) for e in events.of_type(SenderParked)] == [
        (S1, S1, "sender_unavailable")
    ]

    # The token is fixed: the operator resumes S1; the worker hears it on the control exchange.
    moved = await resume_parked(config, S1)
    await events.wait_for(lambda w: len(w.of_type(SenderResumed)) == 1)
    results = await settled(worker, 10)
    await worker.wait_idle()
    assert [(e.channel, e.sender, e.trigger) for e in events.of_type(SenderResumed)] == [(S1, S1, "operator")]
    assert len(moved) <= 4  # the worker moves what it had parked too: each message once
    assert [r.decision.fate for r in results[6:]] == [Fate.SENT] * 4
    assert sorted(p.recipient for p in s1.payloads) == [f"+1555000{n:04d}" for n in range(4)]
    assert await list_parked(config) == []
    assert S1 not in worker.parked


async def test_sender_scoped_errors_park_transient_ones_do_not(worker, publish, service, s1, s2):
    s1.fail_next(1, PermanentDeliveryError("account locked", code=131031, scope=ErrorScope.ACCOUNT))
    s2.fail_next(1, RateLimitedError("slow down", scope=ErrorScope.SENDER, retry_after=0.01))
    await submit(publish, service, message(S1, 1))
    [first] = await settled(worker, 1)
    await submit(publish, service, message(S2, 1))
    results = await settled(worker, 3)
    assert (first.decision.fate, first.decision.code) == (Fate.PARK, 131031)
    assert [r.decision.fate for r in results[1:]] == [Fate.DEFER, Fate.SENT]
    assert S2 not in worker.parked


async def test_control_exchange_parks_and_resumes_every_worker(
    worker, publish, service, s1, config, keys, events
):
    other = Worker(service, config, keys, owner="worker-b")
    await other.start()
    try:
        s1.fail_next(1, revoked())  # whichever worker gets it parks S1 and tells the other
        await submit(publish, service, message(S1, 0))
        await events.wait_for(lambda w: len(w.of_type(SenderParked)) == 2)  # one saw it, one was told
        assert S1 in worker.parked
        assert S1 in other.parked
        await submit(publish, service, *(message(S1, n) for n in (1, 2, 3)))
        await settled_by_all([worker, other], 4)
        assert s1.attempts == 1
        await resume_parked(config, S1)
        await events.wait_for(lambda w: len(w.of_type(SenderResumed)) == 2)
        assert S1 not in worker.parked
        assert S1 not in other.parked
        await submit(publish, service, message(S1, 4))
        await events.wait_for(lambda w: len(s1.payloads) == 5)
        await worker.wait_idle()
        await other.wait_idle()
    finally:
        await other.stop()
    assert sorted(p.recipient for p in s1.payloads) == [f"+1555000{n:04d}" for n in range(5)]
    assert await list_parked(config) == []


async def test_a_restarted_worker_learns_the_parked_senders(worker, publish, service, s1, config, keys):
    await park_s1(worker, publish, service, s1)
    await worker.stop()
    again = Worker(service, config, keys, owner="worker-c")
    await again.start()
    try:
        assert S1 in again.parked
        await submit(publish, service, message(S1, 1))
        [done] = await settled(again, 1)
    finally:
        await again.stop()
    assert done.decision.fate is Fate.PARK
    assert s1.attempts == 1
    [entry] = await list_parked(config)
    assert entry.messages == 2


async def test_successful_probe_resumes_and_moves_the_parked_messages(
    worker, publish, service, s1, clock, events, config
):
    await park_s1(worker, publish, service, s1)
    await submit(publish, service, message(S1, 1))
    await settled(worker, 2)
    clock.advance(PROBE_S)
    await submit(publish, service, message(S1, 2))  # the probe
    results = await settled(worker, 5)  # the probe, then the two parked messages moved back
    await worker.wait_idle()
    assert [r.decision.fate for r in results] == [Fate.PARK, Fate.PARK, Fate.SENT, Fate.SENT, Fate.SENT]
    assert [(e.sender, e.trigger) for e in events.of_type(SenderResumed)] == [(S1, "probe")]
    assert sorted(p.recipient for p in s1.payloads) == [f"+1555000{n:04d}" for n in range(3)]
    assert await list_parked(config) == []


async def test_a_probe_resumes_the_other_workers_too(
    worker, publish, service, s1, clock, events, config, keys
):
    other = Worker(service, config, keys, owner="worker-b")
    await other.start()
    try:
        s1.fail_next(1, revoked())
        await submit(publish, service, message(S1, 0))
        await events.wait_for(lambda w: len(w.of_type(SenderParked)) == 2)
        clock.advance(PROBE_S)
        await submit(publish, service, message(S1, 1))  # whichever worker gets it probes
        await events.wait_for(lambda w: len(w.of_type(SenderResumed)) == 2)
        await events.wait_for(lambda w: len(s1.payloads) == 2)  # the probe and the parked one
        await worker.wait_idle()
        await other.wait_idle()
    finally:
        await other.stop()
    assert {(e.sender, e.trigger) for e in events.of_type(SenderResumed)} == {(S1, "probe")}
    assert S1 not in worker.parked
    assert S1 not in other.parked
    assert await list_parked(config) == []


async def test_failed_probe_keeps_the_sender_parked(worker, publish, service, s1, clock, events):
    await park_s1(worker, publish, service, s1)
    clock.advance(PROBE_S - 1)
    await submit(publish, service, message(S1, 1))  # too early for a probe
    await settled(worker, 2)
    assert s1.attempts == 1
    clock.advance(1)
    s1.fail_next(1, revoked())
    await submit(publish, service, message(S1, 2))  # the probe fails: still parked
    await submit(publish, service, message(S1, 3))  # the next probe is PROBE_S later
    results = await settled(worker, 4)
    assert [r.decision.fate for r in results] == [Fate.PARK] * 4
    assert s1.attempts == 2
    assert len(events.of_type(SenderParked)) == 1
    assert events.of_type(SenderResumed) == []


def test_parked_senders_probe_schedule():
    clock = FakeClock()
    parked = ParkedSenders(clock, 10.0)
    assert parked.park("wa", "S", "sender_unavailable", "bad token", indexed=False)
    assert not parked.park("wa", "S", "sender_unavailable", None, indexed=True)
    assert not parked.take_probe("S")
    clock.advance(10)
    assert parked.take_probe("S")
    assert not parked.take_probe("S")  # one probe at a time
    parked.end_probe("S", again_now=True)  # it did not reach the provider: another may go now
    assert parked.take_probe("S")
    parked.end_probe("S", again_now=False)
    assert not parked.take_probe("S")
    clock.advance(10)
    assert parked.take_probe("S")
    assert parked.resume("S") is not None
    assert not parked
    never = ParkedSenders(clock, 0.0)
    never.park("wa", "S", "sender_unavailable", None, indexed=True)
    clock.advance(1e9)
    assert not never.take_probe("S")


# ---------------------------------------------------------------- CLI


@pytest.fixture
def run_cli(config, isolated_env):
    """``omnichannel ARGS`` with ``[amqp]`` pointing at this test's queues."""
    from click.testing import CliRunner

    from omnichannel.cli import cli

    env = {"OMNICHANNEL_AMQP__URL": config.url.reveal(), "OMNICHANNEL_AMQP__QUEUE": config.queue}

    def run(*args: str):
        return CliRunner().invoke(cli, list(args), prog_name="omnichannel", env=env)

    return run


async def test_cli_sender_list_and_resume(worker, publish, service, s1, run_cli, config):
    empty = await asyncio.to_thread(run_cli, "sender", "list")
    assert (empty.exit_code, empty.output) == (0, "no parked sender\n")
    await park_s1(worker, publish, service, s1)
    listed = await asyncio.to_thread(run_cli, "sender", "list")
    assert listed.exit_code == 0, listed.output
    assert listed.output == (
        "recording  recording  sender_unavailable  1 message: SenderUnavailableError: "
        "the access token was revoked (channel=recording, code=190, http_status=401)\n"
    )
    as_json = await asyncio.to_thread(run_cli, "sender", "list", "--json")
    [entry] = json.loads(as_json.output)
    assert (entry["sender"], entry["messages"], entry["queue"]) == (S1, 1, f"{config.queue}.parked.{S1}")
    resumed = await asyncio.to_thread(run_cli, "sender", "resume", S1)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.startswith("sender recording resumed: ")
    await settled(worker, 2)
    await worker.wait_idle()
    assert len(s1.payloads) == 1
    unknown = await asyncio.to_thread(run_cli, "sender", "resume", "nobody")
    assert unknown.exit_code == 1
    assert "sender 'nobody' is not parked (see: omnichannel sender list)" in unknown.output
