"""``campaign send --queue`` and ``publish_campaign``: a campaign published to the real RabbitMQ,
sent by two ``omnichannel worker`` processes sharing one SQLite key store."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_amqp_transport import amqp_config

from omnichannel import OmniChannelService, ServiceConfig
from omnichannel.amqp import Fate, Worker, list_dead_letters
from omnichannel.campaigns import Campaign, Outcome, TextSpec, read_rows
from omnichannel.campaigns.publish import publish_campaign
from omnichannel.cli import cli
from omnichannel.config import AmqpConfig
from omnichannel.errors import ConfigError
from omnichannel.idempotency import KeyState, SqliteKeyStore
from omnichannel.testing import RecordingChannel

TIMEOUT = 30.0
VALID = 1990
BAD_LINES = {  # line number in the file -> the row
    11: "+15559990001",  # one column of two
    500: ",Nobody",  # no recipient
    1203: "+15559990003,x,y",  # three columns of two
}


@pytest.fixture
async def config() -> AsyncIterator[AmqpConfig]:
    async for value in amqp_config(stop_timeout_s=10.0):
        yield value


def write_campaign(path: Path) -> list[str]:
    """A CSV of ``VALID`` recipients and the ``BAD_LINES``; returns the valid recipients."""
    recipients = [f"+1555{n:06d}" for n in range(VALID)]
    lines = ["recipient,name"]
    valid = iter(recipients)
    while len(lines) < VALID + len(BAD_LINES) + 1:
        number = len(lines) + 1
        lines.append(BAD_LINES.get(number) or f"{next(valid)},N{number}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return recipients


def cli_runner(config: AmqpConfig):
    env = {"OMNICHANNEL_AMQP__URL": config.url.reveal(), "OMNICHANNEL_AMQP__QUEUE": config.queue}

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, ["campaign", "send", *args], prog_name="omnichannel", env=env)

    return run


def test_queue_without_amqp_is_a_usage_error(isolated_env, tmp_path):
    (tmp_path / "c.csv").write_text("recipient\n+15550001\n", encoding="utf-8")
    args = ["campaign", "send", "c.csv", "--channel", "console", "--text", "hi", "--queue"]
    result = CliRunner().invoke(cli, args, prog_name="omnichannel")
    assert result.exit_code == 2, result.output
    assert "--queue needs the command queue: add an [amqp] table" in result.output
    assert not list(tmp_path.glob("*-report.csv"))


async def test_publish_campaign_needs_a_broker_transport():
    async with OmniChannelService(plugins=[RecordingChannel()], load_entrypoints=False) as service:
        campaign = Campaign("c", TextSpec("hi"), channel="recording")
        with pytest.raises(ConfigError, match="amqp: not configured"):
            await publish_campaign(service, campaign, [])


async def test_dry_run_with_queue_publishes_nothing(config, isolated_env, tmp_path):
    write_campaign(tmp_path / "c.csv")
    run = cli_runner(config)
    result = await asyncio.to_thread(
        run, "c.csv", "--channel", "console", "--text", "Hi {name}", "--queue", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert re.search(rf"^  valid +{VALID}$", result.stdout, re.MULTILINE)
    assert "published" not in result.stdout


async def test_a_published_campaign_is_sent_once_by_two_workers(config, isolated_env, tmp_path):
    recipients = write_campaign(tmp_path / "spring.csv")
    env = {
        **os.environ,
        "OMNICHANNEL_AMQP__URL": config.url.reveal(),
        "OMNICHANNEL_AMQP__QUEUE": config.queue,
        "OMNICHANNEL_KEY_STORE": f"sqlite:///{tmp_path}/keys.sqlite3",
        "OMNICHANNEL_PLUGINS__CONSOLE__STREAM": "stdout",
    }
    pipes = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    command = [sys.executable, "-m", "omnichannel", "worker"]
    procs = [await asyncio.create_subprocess_exec(*command, env=env, cwd=tmp_path, **pipes) for _ in range(2)]
    sent: list[str] = []
    all_sent = asyncio.Event()

    async def read(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            sent.append(line.decode().split(":")[0].removeprefix("[console] to "))
            if len(sent) >= VALID:
                all_sent.set()

    readers = [asyncio.create_task(read(proc)) for proc in procs]
    run = cli_runner(config)
    args = ["spring.csv", "--channel", "console", "--text", "Hi {name}", "--queue", "--campaign-id", "spring"]
    try:
        first = await asyncio.to_thread(run, *args)
        assert first.exit_code == 0, first.output
        assert re.search(rf"^  published +{VALID}$", first.stdout, re.MULTILINE), first.stdout
        assert re.search(rf"^  invalid +{len(BAD_LINES)}$", first.stdout, re.MULTILINE)
        await asyncio.wait_for(all_sent.wait(), TIMEOUT)
        again = await asyncio.to_thread(run, *args)  # published again: nothing more is sent
        assert again.exit_code == 0, again.output
        assert re.search(rf"^  published +{VALID}$", again.stdout, re.MULTILINE)
        # The workers ack an already-sent key without any output: no event crosses the
        # processes, so poll the queue's ready count (0.05 s steps, bounded by TIMEOUT).
        await wait_until_drained(config)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), TIMEOUT)
    summaries = []
    for proc in procs:
        assert proc.stderr is not None
        err = (await asyncio.wait_for(proc.stderr.read(), TIMEOUT)).decode()
        assert await proc.wait() == 0, err
        summaries.append(fates(err))
    assert sorted(sent) == recipients  # every valid recipient exactly once
    assert sum(s.get("sent", 0) for s in summaries) == VALID
    already = sum(s.get("already_sent", 0) for s in summaries)
    # What the stopping workers had not started went back to the queue: the republished
    # messages still there are run here, against the same key store.
    left = await ready_count(config)
    assert already + left == VALID
    assert await drain_already_sent(config, tmp_path / "keys.sqlite3", left) == left
    assert len(sent) == VALID
    assert await list_dead_letters(config) == []
    with open(tmp_path / "spring-report.csv", encoding="utf-8", newline="") as handle:
        report = list(csv.DictReader(handle))
    assert sorted((int(r["line"]), r["outcome"]) for r in report) == [(n, "invalid") for n in BAD_LINES]
    keys = SqliteKeyStore(tmp_path / "keys.sqlite3")
    try:
        for recipient in recipients[:: VALID // 20]:
            record = await keys.get(f"spring:{recipient}")
            assert record is not None
            assert record.state is KeyState.SENT
    finally:
        await keys.close()


def fates(stderr: str) -> dict[str, int]:
    """``worker stopped: already_sent 3, sent 7`` -> ``{"already_sent": 3, "sent": 7}``."""
    match = re.search(r"worker stopped: (.*)", stderr)
    assert match, stderr
    return {name: int(n) for name, n in re.findall(r"(\w+) (\d+)", match.group(1))}


async def ready_count(config: AmqpConfig) -> int:
    import aio_pika

    async with await aio_pika.connect(config.url.reveal()) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(config.queue, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def wait_until_drained(config: AmqpConfig) -> None:
    for _ in range(int(TIMEOUT / 0.05)):
        if await ready_count(config) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{config.queue} still has messages after {TIMEOUT} s")


async def drain_already_sent(config: AmqpConfig, store: Path, count: int) -> int:
    """Run ``count`` messages of the queue in this process; return how many were already sent."""
    if count == 0:
        return 0
    keys = SqliteKeyStore(store)
    channel = RecordingChannel("console")
    try:
        async with OmniChannelService(ServiceConfig(), plugins=[channel], load_entrypoints=False) as service:
            worker = Worker(service, config, keys)
            await worker.start()
            try:
                done = await asyncio.wait_for(worker.wait_settled(count), TIMEOUT)
            finally:
                await worker.stop()
    finally:
        await keys.close()
    assert channel.payloads == []
    return sum(1 for s in done if s.decision.fate is Fate.ALREADY_SENT)


async def test_publish_campaign_api_reports_every_row(config, tmp_path):
    write_campaign(tmp_path / "api.csv")
    results = []

    class Sink:
        def write(self, result):
            results.append(result)

    service_config = ServiceConfig(amqp=config)
    channel = RecordingChannel("console")
    async with OmniChannelService(service_config, plugins=[channel], load_entrypoints=False) as service:
        campaign = Campaign("api", TextSpec("Hi {name}"), channel="console", concurrency=20)
        with read_rows(str(tmp_path / "api.csv")) as rows:
            summary = await publish_campaign(service, campaign, rows, report=Sink())
    assert (summary.count(Outcome.PUBLISHED), summary.problems) == (VALID, len(BAD_LINES))
    assert summary.total == VALID + len(BAD_LINES)
    assert channel.payloads == []  # published, not sent
    assert await ready_count(config) == VALID
    invalid = sorted(r.line for r in results if r.outcome == "invalid")
    assert invalid == sorted(BAD_LINES)
