"""``Worker`` and the dead-letter queue against the real RabbitMQ: every message gets one fate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from test_amqp_transport import amqp_config

from omnichannel import Message, MessageSettled, OmniChannelService, Text
from omnichannel.amqp import (
    AmqpTransport,
    Fate,
    Worker,
    defer_delay,
    list_dead_letters,
    purge_dead_letters,
    retry_dead_letters,
)
from omnichannel.commands import SendBulk, SendMessage
from omnichannel.config import AmqpConfig
from omnichannel.errors import (
    CircuitOpenError,
    PermanentDeliveryError,
    RateLimitedError,
    SenderUnavailableError,
    TransientDeliveryError,
)
from omnichannel.idempotency import KeyState, MemoryKeyStore
from omnichannel.testing import EventRecorder, FakeClock, RecordingChannel

TIMEOUT = 10.0


@pytest.fixture
async def config() -> AsyncIterator[AmqpConfig]:
    settings = {"delays": (0.05, 0.1), "max_deliveries": 3, "stop_timeout_s": 2.0, "reconcile_window_s": 0.05}
    async for value in amqp_config(senders=["recording"], **settings):
        yield value


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
async def service(channel) -> AsyncIterator[OmniChannelService]:
    async with OmniChannelService(plugins=[channel], load_entrypoints=False) as svc:
        yield svc


@pytest.fixture
def keys() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
async def worker(service, config, keys) -> AsyncIterator[Worker]:
    worker = Worker(service, config, keys)
    await worker.start()
    yield worker
    await worker.stop()


@pytest.fixture
async def publish(service, config) -> AsyncIterator[AmqpTransport]:
    async with AmqpTransport(config) as transport:
        yield transport


def message(recipient: str = "+15550001", key: str | None = None) -> Message:
    return Message(recipient, Text("hello"), channel="recording", idempotency_key=key)


async def settled(worker: Worker, count: int):
    return await asyncio.wait_for(worker.wait_settled(count), TIMEOUT)


def test_defer_delay_steps():
    assert [defer_delay((1, 5, 30), n, None) for n in (1, 2, 3, 4)] == [1, 5, 30, 30]
    assert defer_delay((1, 5, 30), 1, 2.0) == 5
    assert defer_delay((1, 5, 30), 1, 99) == 30


async def test_published_message_is_sent_once(worker, publish, service, channel, keys):
    command = SendMessage(message(key="k-1"))
    await publish.submit(command, service.bus)
    [done] = await settled(worker, 1)
    assert done.decision.fate is Fate.SENT
    assert done.message_id == command.message.id
    assert [p.recipient for p in channel.payloads] == ["+15550001"]
    record = await keys.get("k-1")
    assert record is not None
    assert record.state is KeyState.SENT


async def test_same_key_twice_is_sent_once(worker, publish, service, channel):
    await publish.submit(SendMessage(message(key="dup")), service.bus)
    await publish.submit(SendMessage(message(key="dup")), service.bus)
    results = await settled(worker, 2)
    assert sorted(r.decision.fate for r in results) == [Fate.ALREADY_SENT, Fate.SENT]
    assert len(channel.payloads) == 1


async def test_poison_payload_is_dead_lettered(worker, publish, config):
    await publish.declare(config.queue)
    await publish.publish(b"not json", queue=config.queue, message_id="poison-1")
    await publish.publish(b'{"command": "nope", "data": {}}', queue=config.queue, message_id="poison-2")
    results = await settled(worker, 2)
    assert {r.decision.reason for r in results} == {"poison_payload"}
    letters = await list_dead_letters(config)
    assert [(d.message_id, d.reason) for d in letters] == [
        ("poison-1", "poison_payload"),
        ("poison-2", "poison_payload"),
    ]
    assert letters[0].body == "not json"
    assert "UnknownCommandError" in (letters[1].error or "")
    assert len(await list_dead_letters(config)) == 2  # listing keeps them


async def test_permanent_error_is_dead_lettered_with_its_details(worker, publish, service, channel, config):
    channel.fail_next(1, PermanentDeliveryError("recipient is not on WhatsApp", code=131026, http_status=400))
    command = SendMessage(message(key="perm"))
    await publish.submit(command, service.bus)
    [done] = await settled(worker, 1)
    assert (done.decision.fate, done.decision.reason) == (Fate.DEAD_LETTER, "permanent_error")
    [letter] = await list_dead_letters(config)
    assert (letter.reason, letter.code, letter.deliveries, letter.command) == (
        "permanent_error",
        131026,
        1,
        "send_message",
    )
    assert "recipient is not on WhatsApp" in (letter.error or "")
    assert service.bus.decode(letter.body) == command
    # The record of resilience.md §1.11: key, channel, sender, attempts, times, HTTP status.
    assert (letter.idempotency_key, letter.channel, letter.sender, letter.attempts, letter.http_status) == (
        "perm",
        "recording",
        "recording",
        1,
        400,
    )
    assert (letter.failed_at or "").endswith("+00:00")
    assert isinstance(letter.first_published_ms, int)


async def test_an_unknown_error_code_is_dead_lettered_apart(worker, publish, service, channel, config):
    channel.fail_next(
        1, PermanentDeliveryError("(#139999) new", code=139999, http_status=400, unknown_code=True)
    )
    await publish.submit(SendMessage(message(key="new-code")), service.bus)
    [done] = await settled(worker, 1)
    assert (done.decision.fate, done.decision.reason) == (Fate.DEAD_LETTER, "unknown_error_code")
    [letter] = await list_dead_letters(config)
    assert (letter.reason, letter.code, letter.idempotency_key) == ("unknown_error_code", 139999, "new-code")


@pytest.mark.parametrize(
    "error",
    [
        TransientDeliveryError("503", certainty=None),
        CircuitOpenError("breaker open"),
        RateLimitedError("slow down", retry_after=0.01),
    ],
)
async def test_transient_error_is_deferred_then_sent(worker, publish, service, channel, error):
    channel.fail_next(1, error)
    await publish.submit(SendMessage(message(key="later")), service.bus)
    first, second = await settled(worker, 2)
    assert (first.decision.fate, first.deliveries, first.delay_s) == (Fate.DEFER, 1, 0.05)
    assert (second.decision.fate, second.deliveries) == (Fate.SENT, 2)
    assert len(channel.payloads) == 1


async def test_max_deliveries_dead_letters(worker, publish, service, channel, config):
    channel.fail_next(3, TransientDeliveryError("503"))
    await publish.submit(SendMessage(message(key="flaky")), service.bus)
    results = await settled(worker, 3)
    assert [r.decision.fate for r in results] == [Fate.DEFER, Fate.DEFER, Fate.DEAD_LETTER]
    assert [r.delay_s for r in results] == [0.05, 0.1, None]
    [letter] = await list_dead_letters(config)
    assert (letter.reason, letter.deliveries, letter.idempotency_key) == ("retries_exhausted", 3, "flaky")
    assert channel.payloads == []


async def test_sender_unavailable_is_parked_not_dead_lettered(worker, publish, service, channel, config):
    channel.fail_next(1, SenderUnavailableError("token expired", code=190))
    await publish.submit(SendMessage(message(key="sender")), service.bus)
    [done] = await settled(worker, 1)
    assert (done.decision.fate, done.decision.reason, done.decision.sender) == (
        Fate.PARK,
        "sender_unavailable",
        "recording",
    )
    assert await list_dead_letters(config) == []


async def test_dlq_retry_of_a_fixed_message_sends_it_once(worker, publish, service, channel, config):
    channel.fail_next(1, PermanentDeliveryError("template not approved"))
    ok = SendMessage(message("+15550002", key="fine"))
    broken = SendMessage(message("+15550003", key="fixed"))
    await publish.submit(broken, service.bus)
    await settled(worker, 1)
    await publish.submit(ok, service.bus)
    await settled(worker, 2)
    # The template is approved now: retry it, and (by mistake) a copy of the sent one.
    await publish.declare(config.dead_letter_queue)
    await publish.publish(service.bus.encode(ok), queue=config.dead_letter_queue, message_id="copy")
    moved = await retry_dead_letters(config, ids={broken.message.id})
    assert moved == [broken.message.id]
    await settled(worker, 3)
    assert sorted(p.recipient for p in channel.payloads) == ["+15550002", "+15550003"]
    assert await retry_dead_letters(config) == ["copy"]
    results = await settled(worker, 4)
    assert results[-1].decision.fate is Fate.ALREADY_SENT
    assert len(channel.payloads) == 2
    assert await list_dead_letters(config) == []


async def test_dlq_purge(worker, publish, config):
    await publish.declare(config.queue)
    await publish.publish(b"{}", queue=config.queue, message_id="p")
    await settled(worker, 1)
    assert await purge_dead_letters(config) == 1
    assert await list_dead_letters(config) == []


async def test_send_bulk_fans_out_one_message_per_recipient(worker, publish, service, channel):
    bulk = SendBulk(["+1", "+2", "+3"], Text("hi"), channel="recording", campaign_id="c1")
    await publish.submit(bulk, service.bus)
    await publish.submit(bulk, service.bus)  # the same campaign again: nothing is resent
    results = await settled(worker, 8)
    assert sorted(r.decision.fate for r in results).count(Fate.SENT) == 5  # 2 bulk + 3 sends
    assert sorted(p.recipient for p in channel.payloads) == ["+1", "+2", "+3"]


async def test_every_message_fate_is_an_event_but_not_a_bulk_fan_out(config, keys, channel, publish):
    events = EventRecorder()
    async with OmniChannelService(plugins=[channel, events], load_entrypoints=False) as service:
        worker = Worker(service, config, keys)
        await worker.start()
        try:
            bulk = SendBulk(["+1", "+2"], Text("hi"), channel="recording", campaign_id="c2")
            await publish.submit(bulk, service.bus)
            await publish.submit(SendMessage(message("+3", key="c2:+1")), service.bus)  # a duplicate key
            await settled(worker, 4)
        finally:
            await worker.stop()
    fates = sorted((e.channel, e.fate) for e in events.of_type(MessageSettled))
    assert fates == [("recording", "already_sent"), ("recording", "sent"), ("recording", "sent")]
    assert all(e.age_s is not None and e.age_s >= 0 for e in events.of_type(MessageSettled))


async def test_stop_requeues_what_cannot_finish(service, config, keys, channel, publish):
    worker = Worker(service, config, keys)
    await worker.start()
    channel.hold()
    await publish.submit(SendMessage(message(key="held")), service.bus)
    await asyncio.wait_for(channel.entered.wait(), TIMEOUT)
    await worker.stop(timeout_s=0.01)
    assert worker.settled == []
    record = await keys.get("held")  # stopped mid-send: it may have left, so not resent blindly
    assert record is not None
    assert record.state is KeyState.UNCERTAIN
    channel.release()
    again = Worker(service, config, keys)
    await again.start()
    try:
        waited, resent = await settled(again, 2)
    finally:
        await again.stop()
    # The default policy (reconcile): no webhook settled it within the window, so it is resent once.
    assert (waited.decision.fate, waited.delay_s) == (Fate.RECONCILE, 0.05)
    assert (resent.decision.fate, resent.decision.reason) == (Fate.SENT, "resent_uncertain")
    assert again.possible_duplicates == 1


# ---------------------------------------------------------------- CLI


@pytest.fixture
def run_cli(config, isolated_env):
    """``omnichannel ARGS`` with ``[amqp]`` pointing at this test's queues."""
    from click.testing import CliRunner

    from omnichannel.cli import cli

    env = {"OMNICHANNEL_AMQP__URL": config.url.reveal(), "OMNICHANNEL_AMQP__QUEUE": config.queue}

    def run(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), prog_name="omnichannel", env=env, input=input)

    return run


async def test_cli_dlq_list_retry_purge(run_cli, publish, config):
    await publish.declare(config.dead_letter_queue)
    headers = {"x-reason": "permanent_error", "x-error": "PermanentDeliveryError: no", "x-code": 131026}
    for n in (1, 2):
        await publish.publish(b"{}", queue=config.dead_letter_queue, message_id=f"m{n}", headers=headers)
    listed = await asyncio.to_thread(run_cli, "dlq", "list")
    assert listed.exit_code == 0, listed.output
    assert (
        listed.output.splitlines()[0]
        == "m1  permanent_error  -  deliveries 0 code 131026: PermanentDeliveryError: no"
    )
    as_json = await asyncio.to_thread(run_cli, "dlq", "list", "--json")
    assert [d["message_id"] for d in json.loads(as_json.output)] == ["m1", "m2"]
    usage = await asyncio.to_thread(run_cli, "dlq", "retry")
    assert usage.exit_code == 2
    retried = await asyncio.to_thread(run_cli, "dlq", "retry", "--id", "m2", "--id", "m9")
    assert retried.exit_code == 1
    assert "1 message moved" in retried.output
    assert "not in" in retried.output
    assert "m9" in retried.output
    purged = await asyncio.to_thread(run_cli, "dlq", "purge", input="y\n")
    assert purged.exit_code == 0, purged.output
    assert "1 message deleted" in purged.output
    channel = await publish.channel()
    queue = await channel.get_queue(config.queue)
    moved = await queue.get(no_ack=True)
    assert moved.message_id == "m2"
    assert "x-reason" not in (moved.headers or {})


def test_cli_without_amqp_config_is_a_clear_error(isolated_env):
    from click.testing import CliRunner

    from omnichannel.cli import cli

    result = CliRunner().invoke(cli, ["dlq", "list"], prog_name="omnichannel")
    assert result.exit_code == 1
    assert "amqp: not configured" in result.output


async def test_cli_worker_runs_until_sigterm(config, publish, service, tmp_path):
    """A real ``omnichannel worker`` process sends a published message once and stops on SIGTERM."""
    import os
    import signal
    import sys

    env = {
        **os.environ,
        "OMNICHANNEL_AMQP__URL": config.url.reveal(),
        "OMNICHANNEL_AMQP__QUEUE": config.queue,
        "OMNICHANNEL_KEY_STORE": f"sqlite:///{tmp_path}/keys.sqlite3",
        "OMNICHANNEL_PLUGINS__CONSOLE__STREAM": "stdout",
    }
    await publish.submit(
        SendMessage(Message("+15550009", Text("from the queue"), channel="console")), service.bus
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "omnichannel", "worker", "--concurrency", "2",
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert line.decode().strip() == "[console] to +15550009: from the queue"
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert "worker stopped: sent 1" in err.decode()


async def test_two_worker_processes_send_a_campaign_exactly_once(config, publish, service, tmp_path):
    """Two ``omnichannel worker`` processes, one SQLite key store: 500 recipients, each sent once."""
    import os
    import signal
    import sys

    from omnichannel.idempotency import SqliteKeyStore

    env = {
        **os.environ,
        "OMNICHANNEL_AMQP__URL": config.url.reveal(),
        "OMNICHANNEL_AMQP__QUEUE": config.queue,
        "OMNICHANNEL_KEY_STORE": f"sqlite:///{tmp_path}/keys.sqlite3",
        "OMNICHANNEL_PLUGINS__CONSOLE__STREAM": "stdout",
    }
    recipients = [f"+1555{n:05d}" for n in range(500)]
    pipes = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    command = [sys.executable, "-m", "omnichannel", "worker"]
    procs = [await asyncio.create_subprocess_exec(*command, env=env, cwd=tmp_path, **pipes) for _ in range(2)]
    bulk = SendBulk(recipients, Text("hi"), channel="console", campaign_id="two-workers")
    await publish.submit(bulk, service.bus)
    await publish.submit(bulk, service.bus)  # published twice: still sent once per recipient
    lines: list[list[str]] = [[], []]
    enough = asyncio.Event()

    async def read(index: int) -> None:
        stream = procs[index].stdout
        assert stream is not None
        while line := await stream.readline():
            lines[index].append(line.decode().split(":")[0].removeprefix("[console] to "))
            if sum(map(len, lines)) >= len(recipients):
                enough.set()

    readers = [asyncio.create_task(read(i)) for i in range(2)]
    try:
        await asyncio.wait_for(enough.wait(), 60)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), TIMEOUT)
    for proc in procs:
        assert proc.stderr is not None
        err = await asyncio.wait_for(proc.stderr.read(), TIMEOUT)
        assert await proc.wait() == 0, err.decode()
    sent = lines[0] + lines[1]
    assert sorted(sent) == recipients  # every recipient exactly once
    keys = SqliteKeyStore(tmp_path / "keys.sqlite3")
    try:
        states = {(await keys.get(f"two-workers:{r}")).state for r in recipients}  # type: ignore[union-attr]
    finally:
        await keys.close()
    assert states == {KeyState.SENT}


# ---------------------------------------------------------------- message_ttl_s


async def test_a_message_older_than_its_ttl_is_dead_lettered_not_sent(
    worker, publish, service, channel, config, keys
):
    old = round((service.clock.now().timestamp() - config.message_ttl_s - 60) * 1000)
    sent = message("+15550042")
    await publish.publish(
        service.bus.encode(SendMessage(sent)),
        queue=config.queue,
        message_id=sent.id,
        headers={"x-first-published": old},
    )
    (done,) = await settled(worker, 1)
    assert (done.decision.fate, done.decision.reason) == (Fate.DEAD_LETTER, "expired")
    assert "more than message_ttl_s = 86400" in (done.decision.error or "")
    assert channel.payloads == []
    assert await keys.get(sent.key) is None  # never claimed
    (letter,) = await list_dead_letters(config)
    assert (letter.reason, letter.message_id) == ("expired", sent.id)


async def test_the_first_publish_time_travels_through_deferrals(publish, config, keys):
    channel = RecordingChannel()
    clock = FakeClock(datetime.now(UTC))
    async with OmniChannelService(plugins=[channel], load_entrypoints=False, clock=clock) as service:
        worker = Worker(service, config, keys)
        await worker.start()
        try:
            channel.fail_next(1, TransientDeliveryError("try later"))
            await publish.submit(SendMessage(message("+15550043")), service.bus)  # stamps the publish
            (first,) = await settled(worker, 1)
            assert first.decision.fate is Fate.DEFER
            clock.advance(config.message_ttl_s + 1)  # while it waits 0.05 s in the delay queue
            _, second = await settled(worker, 2)
        finally:
            await worker.stop()
    assert (second.decision.fate, second.decision.reason) == (Fate.DEAD_LETTER, "expired")
    assert channel.payloads == []


async def test_dlq_retry_gives_an_expired_message_a_new_ttl(worker, publish, service, channel, config):
    old = round((service.clock.now().timestamp() - config.message_ttl_s - 60) * 1000)
    sent = message("+15550044")
    body = service.bus.encode(SendMessage(sent))
    await publish.publish(body, queue=config.queue, message_id=sent.id, headers={"x-first-published": old})
    (expired,) = await settled(worker, 1)
    assert expired.decision.reason == "expired"
    assert await retry_dead_letters(config) == [sent.id]
    _, replayed = await settled(worker, 2)
    assert replayed.decision.fate is Fate.SENT
    assert [p.recipient for p in channel.payloads] == ["+15550044"]


def test_message_ttl_must_be_positive():
    from omnichannel.config import load_config
    from omnichannel.errors import ConfigError

    environ = {"OMNICHANNEL_AMQP__MESSAGE_TTL_S": "0", "OMNICHANNEL_AMQP__URL": "amqp://h/"}
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    (line,) = caught.value.errors
    assert line.startswith("amqp.message_ttl_s: must be > 0")
    assert load_config(environ={"OMNICHANNEL_AMQP__URL": "amqp://h/"}).amqp.message_ttl_s == 86400.0
