"""The worker against the WhatsApp sandbox and the real RabbitMQ: PK-01 / CH-11 and a dropped answer.

* PK-01 / CH-11 (shared/resilience.md §3): the WhatsApp sender S1's token is revoked (the sandbox
  answers ``error(190, 401)`` to every Graph call) while S2 (another channel) is healthy: S1's
  messages are parked, at most one send per concurrent slot reaches the sandbox, S2 is not
  affected, the dead-letter queue stays empty; once the token is fixed, ``omnichannel sender
  resume`` sends every parked message exactly once (the sandbox's accepted log is the ground truth).
* A connection dropped without an answer is an uncertain outcome: under ``reconcile`` the message
  waits the window, then is resent once (``PossibleDuplicateSend``); the sandbox accepted it once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from test_amqp_parking import EventWaiter, settled
from test_amqp_transport import amqp_config

import omnichannel_whatsapp
from omnichannel import Message, OmniChannelService, PluginSettings, ServiceConfig, Text
from omnichannel.amqp import AmqpTransport, Fate, Worker, list_dead_letters, list_parked
from omnichannel.commands import SendMessage
from omnichannel.events import PossibleDuplicateSend, SenderParked, SenderResumed
from omnichannel.idempotency import MemoryKeyStore
from omnichannel.testing import RecordingChannel
from omnichannel_whatsapp.sandbox import Fault, Sandbox, SandboxSettings

CONCURRENCY = 4
COUNT = 10
S1 = SandboxSettings().phone_number_id
S2 = "other"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxSettings(access_token="pk-token", app_secret="pk-secret")) as served:
        yield served


@pytest.fixture
def s2() -> RecordingChannel:
    return RecordingChannel(S2)


@pytest.fixture
def events() -> EventWaiter:
    return EventWaiter()


@pytest.fixture
async def service(sandbox, s2, events) -> AsyncIterator[OmniChannelService]:
    settings = {
        "phone_number_id": sandbox.settings.phone_number_id,
        "access_token": sandbox.settings.access_token,
        "base_url": sandbox.url,
        "app_secret": sandbox.settings.app_secret,
    }
    config = ServiceConfig(plugins={"whatsapp": PluginSettings(settings=settings)})
    plugins = [("whatsapp", omnichannel_whatsapp), s2, events]
    async with OmniChannelService(config, plugins=plugins, load_entrypoints=False, environ={}) as svc:
        yield svc


@pytest.fixture
async def config():
    settings = {
        "concurrency": CONCURRENCY,
        "delays": (0.05,),
        "stop_timeout_s": 5.0,
        "reconcile_window_s": 0.05,
    }
    async for value in amqp_config(senders=[S1, S2], **settings):
        yield value


@pytest.fixture
async def worker(service, config) -> AsyncIterator[Worker]:
    worker = Worker(service, config, MemoryKeyStore())
    await worker.start()
    yield worker
    await worker.stop()


@pytest.fixture
async def publish(config) -> AsyncIterator[AmqpTransport]:
    async with AmqpTransport(config) as transport:
        yield transport


@pytest.fixture
def run_cli(config, isolated_env, monkeypatch):
    from click.testing import CliRunner

    from omnichannel.amqp.cli import sender
    from omnichannel.cli import cli

    if "sender" not in cli.commands:  # until omnichannel.cli adds the group itself
        monkeypatch.setitem(cli.commands, "sender", sender)
    env = {"OMNICHANNEL_AMQP__URL": config.url.reveal(), "OMNICHANNEL_AMQP__QUEUE": config.queue}

    def run(*args: str):
        return CliRunner().invoke(cli, list(args), prog_name="omnichannel", env=env)

    return run


def wa(n: int) -> Message:
    return Message(f"+1650555{n:04d}", Text(f"message {n}"), channel="whatsapp", id=f"pk-wa-{n:03d}")


def other(n: int) -> Message:
    return Message(f"+1650555{n:04d}", Text(f"message {n}"), channel=S2, id=f"pk-other-{n:03d}")


def accepted(sandbox: Sandbox) -> Counter[str]:
    """How often the sandbox accepted each message id (``biz_opaque_callback_data``)."""
    return Counter(m.body.get("biz_opaque_callback_data") for m in sandbox.state.messages)


async def test_pk01_revoked_token_parks_s1_only_and_resume_sends_each_once(
    sandbox, service, worker, publish, s2, events, config, run_cli
):
    sandbox.faults.add(Fault("error", http_status=401, code=190))  # S1's token is revoked
    for n in range(COUNT):
        await publish.submit(SendMessage(wa(n)), service.bus)
        await publish.submit(SendMessage(other(n)), service.bus)
    results = await settled(worker, 2 * COUNT)
    by_channel = Counter((r.message_id or "").rsplit("-", 1)[0] + ":" + r.decision.fate for r in results)
    assert by_channel == {"pk-wa:parked": COUNT, "pk-other:sent": COUNT}
    assert {r.decision.sender for r in results if r.decision.fate is Fate.PARK} == {S1}
    # Only sends already in flight when the first 190 came back reached the sandbox.
    assert 1 <= sandbox.state.counters["fault.error"] <= CONCURRENCY
    assert sandbox.state.messages == []
    assert len(s2.payloads) == COUNT  # S2 unaffected
    assert await list_dead_letters(config) == []  # zero DLQ entries for S1
    [entry] = await list_parked(config)
    assert (entry.sender, entry.channel, entry.messages, entry.reason) == (
        S1,
        "whatsapp",
        COUNT,
        "sender_unavailable",
    )
    assert "190" in (entry.error or "")
    assert [(e.channel, e.sender) for e in events.of_type(SenderParked)] == [("whatsapp", S1)]
    assert "pk-token" not in str(entry)  # never the token

    sandbox.faults.clear()  # the token is fixed
    resumed = await asyncio.to_thread(run_cli, "sender", "resume", S1)
    assert resumed.exit_code == 0, resumed.output
    await events.wait_for(lambda w: len(w.of_type(SenderResumed)) == 1)
    results = await settled(worker, 3 * COUNT)
    await worker.wait_idle()
    assert [r.decision.fate for r in results[2 * COUNT :]] == [Fate.SENT] * COUNT
    assert accepted(sandbox) == {wa(n).id: 1 for n in range(COUNT)}  # each parked message once
    assert await list_parked(config) == []
    # The worker heard the resume: S1's next message is sent straight away.
    await publish.submit(SendMessage(wa(COUNT)), service.bus)
    [last] = (await settled(worker, 3 * COUNT + 1))[-1:]
    assert last.decision.fate is Fate.SENT
    assert accepted(sandbox)[wa(COUNT).id] == 1


async def test_dropped_answer_is_reconciled_then_resent_once(sandbox, service, worker, publish, events):
    sandbox.faults.add(Fault("drop", remaining=1))  # the connection closes, no answer: uncertain
    await publish.submit(SendMessage(wa(1)), service.bus)
    results = await settled(worker, 2)
    assert [(r.decision.fate, r.decision.reason) for r in results] == [
        (Fate.RECONCILE, "uncertain"),
        (Fate.SENT, "resent_uncertain"),
    ]
    assert [e.message_id for e in events.of_type(PossibleDuplicateSend)] == [wa(1).id]
    assert accepted(sandbox) == {wa(1).id: 1}
