"""A worker process SIGKILLed mid-campaign (real RabbitMQ, one SQLite key store for three workers).

Nothing is sent twice, and nothing is lost: every recipient is sent exactly once or is in the
dead-letter queue with reason ``ambiguous_policy`` (a send the dead worker may have made; the
workers run ``ambiguous_policy = "dead_letter"``); the messages it had not acked are
redelivered to the others.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
from test_amqp_transport import amqp_config

from omnichannel import OmniChannelService, ServiceConfig
from omnichannel.amqp import list_dead_letters
from omnichannel.campaigns import Campaign, TextSpec, read_rows
from omnichannel.campaigns.publish import publish_campaign
from omnichannel.commands import SendMessage
from omnichannel.config import AmqpConfig
from omnichannel.idempotency import KeyState, SqliteKeyStore
from omnichannel.testing import RecordingChannel

TIMEOUT = 30.0
POLL_S = 0.05
RECIPIENTS = [f"+1555{n:06d}" for n in range(300)]
KILL_AFTER = 20
"""Sends the doomed worker records before it is killed."""
CONCURRENCY = 4

WORKER = """
import asyncio, json, signal, sys

from omnichannel import OmniChannelService
from omnichannel.amqp import Worker
from omnichannel.config import AmqpConfig
from omnichannel.hookspecs import hookimpl
from omnichannel.idempotency import SqliteKeyStore
from omnichannel.message import DeliveryStatus, Receipt
from omnichannel.serde import Secret
from omnichannel.testing import RecordingChannel

settings, store, sends, delay_s = json.loads(sys.argv[1])
settings["url"] = Secret(settings["url"])
settings["delays"] = tuple(settings["delays"])


class SlowFileChannel(RecordingChannel):
    @hookimpl
    def send(self, payload):
        async def deliver():
            await asyncio.sleep(delay_s)  # a send takes a while: a kill finds some in flight
            with open(sends, "a", encoding="utf-8") as handle:
                handle.write(payload.recipient + "\\n")
            return Receipt(message_id=payload.message_id, channel=payload.channel,
                           status=DeliveryStatus.ACCEPTED, provider_message_id=None)
        return deliver


async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    keys = SqliteKeyStore(store)
    async with OmniChannelService(plugins=[SlowFileChannel("slow")], load_entrypoints=False) as service:
        worker = Worker(service, AmqpConfig(**settings), keys)
        await worker.start()
        print("ready", flush=True)
        await stop.wait()
        await worker.stop()
    await keys.close()
    print(json.dumps({fate.value: n for fate, n in worker.counts.items()}), flush=True)


asyncio.run(main())
"""


@pytest.fixture
async def config() -> AsyncIterator[AmqpConfig]:
    # A short lease: the dead worker's keys become uncertain soon; deferrals of a key still
    # leased come back every 0.2 s, and enough deliveries to outlast the lease.
    # Policy dead_letter: never resend a send the dead worker may have made (at most once).
    settings = {
        "lease_s": 1.0,
        "delays": (0.2,),
        "max_deliveries": 50,
        "stop_timeout_s": 10.0,
        "ambiguous_policy": "dead_letter",
    }
    async for value in amqp_config(prefetch=8, concurrency=CONCURRENCY, **settings):
        yield value


class Proc:
    """One worker subprocess recording its sends in its own file."""

    def __init__(self, proc: asyncio.subprocess.Process, sends: Path) -> None:
        self.proc = proc
        self.sends = sends

    @classmethod
    async def start(cls, config: AmqpConfig, tmp_path: Path, name: str) -> Proc:
        sends = tmp_path / f"{name}.sends"
        sends.touch()
        settings = attrs.asdict(config, recurse=False)
        settings["url"] = config.url.reveal()
        argument = json.dumps([settings, str(tmp_path / "keys.sqlite3"), str(sends), 0.05])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, argument, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line == b"ready\n", line + await proc.stderr.read()  # type: ignore[union-attr]
        return cls(proc, sends)

    def recorded(self) -> list[str]:
        return self.sends.read_text(encoding="utf-8").splitlines()

    async def stop(self) -> dict[str, int]:
        """SIGTERM, then the fates it counted."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(self.proc.communicate(), TIMEOUT)
        assert self.proc.returncode == 0, err.decode()
        counts: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
        return counts


async def poll(condition, what: str) -> None:
    """Wait for ``condition()`` (async) across processes, where there is no event to await:
    0.05 s steps, at most ``TIMEOUT``."""
    for _ in range(int(TIMEOUT / POLL_S)):
        if await condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_killed_worker_loses_nothing_and_sends_nothing_twice(config, tmp_path):
    doomed = await Proc.start(config, tmp_path, "doomed")
    other = await Proc.start(config, tmp_path, "other")
    procs = [doomed, other]
    try:
        source = tmp_path / "crash.csv"
        source.write_text("recipient\n" + "\n".join(RECIPIENTS) + "\n", encoding="utf-8")
        channel = RecordingChannel("slow")
        async with OmniChannelService(
            ServiceConfig(amqp=config), plugins=[channel], load_entrypoints=False
        ) as service:
            with read_rows(str(source)) as rows:
                summary = await publish_campaign(
                    service, Campaign("crash", TextSpec("hi"), channel="slow"), rows
                )
            assert summary.total == len(RECIPIENTS)

            async def doomed_busy() -> bool:
                return len(doomed.recorded()) >= KILL_AFTER

            await poll(doomed_busy, f"{KILL_AFTER} sends of the doomed worker")
            doomed.proc.kill()  # SIGKILL: no stop, no release, no ack of what it holds
            await doomed.proc.wait()
            procs.append(await Proc.start(config, tmp_path, "replacement"))

            keys = SqliteKeyStore(tmp_path / "keys.sqlite3")
            try:

                async def settled() -> bool:  # every key sent, or uncertain (then dead-lettered)
                    for recipient in RECIPIENTS:
                        record = await keys.get(f"crash:{recipient}")
                        if record is None or record.state not in (KeyState.SENT, KeyState.UNCERTAIN):
                            return False
                    return True

                await poll(settled, "every key to be sent or uncertain")
                states = {r: (await keys.get(f"crash:{r}")).state for r in RECIPIENTS}  # type: ignore[union-attr]
            finally:
                await keys.close()
            expected_letters = sum(state is KeyState.UNCERTAIN for state in states.values())

            async def dead_lettered() -> bool:  # a key turns uncertain just before its DLQ write
                return len(await list_dead_letters(config)) >= expected_letters

            await poll(dead_lettered, f"{expected_letters} dead letters")
            counts = [await proc.stop() for proc in procs[1:]]  # they finish what is in flight
            letters = await list_dead_letters(config)
            bodies = [service.bus.decode(letter.body) for letter in letters]
    finally:
        for proc in procs:
            if proc.proc.returncode is None:
                proc.proc.kill()
                await proc.proc.wait()

    by_worker = {proc.sends.stem: proc.recorded() for proc in procs}
    sent = [r for recorded in by_worker.values() for r in recorded]
    assert len(sent) == len(set(sent))  # nothing sent twice
    assert all(isinstance(b, SendMessage) for b in bodies)
    uncertain = {b.message.recipient for b in bodies if isinstance(b, SendMessage)}
    assert {letter.reason for letter in letters} == {"ambiguous_policy"}, [
        (letter.reason, letter.error) for letter in letters
    ]
    assert len(letters) == len(uncertain)
    assert set(sent) | uncertain == set(RECIPIENTS)  # nothing lost
    assert uncertain == {r for r, state in states.items() if state is KeyState.UNCERTAIN}
    # Only the dead worker's sends in flight can be uncertain: at most its concurrency.
    assert 0 < len(uncertain) <= CONCURRENCY
    assert uncertain.isdisjoint(by_worker["other"] + by_worker["replacement"])
    assert len(set(sent) - uncertain) + len(uncertain) == len(RECIPIENTS)
    # Every message was acked once: by the dead worker (its sends it completed, minus the
    # ones it completed but had not acked, which came back as already_sent) or by the others.
    acked_by_doomed = len(set(by_worker["doomed"]) - uncertain) - sum(
        c.get("already_sent", 0) for c in counts
    )
    acked_by_others = sum(c.get(fate, 0) for c in counts for fate in ("sent", "already_sent", "dead_letter"))
    assert acked_by_doomed + acked_by_others == len(RECIPIENTS)
    assert sum(c.get("sent", 0) for c in counts) == len(by_worker["other"]) + len(by_worker["replacement"])
    assert sum(c.get("dead_letter", 0) for c in counts) == len(uncertain)
    assert channel.payloads == []
