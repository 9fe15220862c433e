"""``omnichannel worker``, ``omnichannel dlq list|retry|purge`` and ``omnichannel sender
list|resume`` (the ``[amqp]`` queue)."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import TYPE_CHECKING

import attrs
import click

from ..errors import ConfigError
from .dlq import list_dead_letters, purge_dead_letters, retry_dead_letters
from .parking import list_parked, resume_parked

if TYPE_CHECKING:
    from collections import Counter

    from ..config import AmqpConfig
    from ..service import OmniChannelService
    from .worker import Fate

__all__ = ["dlq", "sender", "worker"]


def _service() -> OmniChannelService:
    from ..cli import service_from_context  # here: omnichannel.cli imports this module

    return service_from_context()


def _amqp(service: OmniChannelService, queue: str | None = None) -> AmqpConfig:
    config = service.config.amqp
    if config is None:
        raise ConfigError(
            ["amqp: not configured; add an [amqp] table (url = ...) or set OMNICHANNEL_AMQP__URL"]
        )
    if queue is not None:
        dlq = (
            f"{queue}.dlq" if config.dead_letter_queue == f"{config.queue}.dlq" else config.dead_letter_queue
        )
        config = attrs.evolve(config, queue=queue, dead_letter_queue=dlq)
    return config


@click.command("worker")
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Commands at once (default: amqp.concurrency)."
)
@click.option("--queue", help="The queue to consume (default: amqp.queue).")
def worker(concurrency: int | None, queue: str | None) -> None:
    """Run the commands of the queue until SIGTERM or Ctrl-C (then finish what is in flight)."""
    service = _service()
    config = _amqp(service, queue)
    if concurrency is not None:
        config = attrs.evolve(config, concurrency=concurrency)
    counts = asyncio.run(_run_worker(service, config))
    summary = ", ".join(f"{fate.value} {n}" for fate, n in sorted(counts.items())) or "no messages"
    click.echo(f"worker stopped: {summary}", err=True)


async def _run_worker(service: OmniChannelService, config: AmqpConfig) -> Counter[Fate]:
    from ..idempotency import open_key_store
    from .worker import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    keys = open_key_store(service.config.key_store, clock=service.clock)
    try:
        async with service:
            runner = Worker(service, config, keys)
            await runner.start()
            click.echo(
                f"worker {runner.owner}: consuming {config.queue!r} on {runner.transport.where} "
                f"(concurrency {config.concurrency}, prefetch {config.prefetch})",
                err=True,
            )
            try:
                await stop.wait()
            finally:
                await runner.stop()
            return runner.counts
    finally:
        await keys.close()
        for sig in signals:
            loop.remove_signal_handler(sig)


@click.group("dlq")
def dlq() -> None:
    """The dead-letter queue: messages that could not be sent, with their reason."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many messages.")
def dlq_list(as_json: bool, limit: int | None) -> None:
    """List the dead letters, oldest first (they stay in the queue)."""
    config = _amqp(_service())
    letters = asyncio.run(list_dead_letters(config, limit=limit))
    if as_json:
        click.echo(json.dumps([attrs.asdict(d) for d in letters], indent=2))
        return
    if not letters:
        click.echo(f"{config.dead_letter_queue}: empty")
        return
    for letter in letters:
        code = f" code {letter.code}" if letter.code is not None else ""
        click.echo(
            f"{letter.message_id or '-'}  {letter.reason or '-'}  {letter.command or '-'}  "
            f"deliveries {letter.deliveries}{code}: {letter.error or ''}".rstrip()
        )


@dlq.command("retry")
@click.option("--all", "retry_all", is_flag=True, help="Every dead letter.")
@click.option(
    "--id", "ids", multiple=True, metavar="ID", help="The dead letter with this message id (repeatable)."
)
def dlq_retry(retry_all: bool, ids: tuple[str, ...]) -> None:
    """Move dead letters back to the queue, unchanged: a message already sent is not sent again."""
    if retry_all == bool(ids):
        raise click.UsageError("give --all or at least one --id")
    config = _amqp(_service())
    moved = asyncio.run(retry_dead_letters(config, None if retry_all else set(ids)))
    click.echo(f"{len(moved)} message{'s' if len(moved) != 1 else ''} moved to {config.queue}")
    missing = set(ids) - set(moved)
    if missing:
        raise click.ClickException(f"not in {config.dead_letter_queue}: {', '.join(sorted(missing))}")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(yes: bool) -> None:
    """Delete every dead letter."""
    config = _amqp(_service())
    if not yes:
        click.confirm(f"delete every message of {config.dead_letter_queue}?", abort=True)
    count = asyncio.run(purge_dead_letters(config))
    click.echo(f"{count} message{'s' if count != 1 else ''} deleted from {config.dead_letter_queue}")


@click.group("sender")
def sender() -> None:
    """Parked senders: their messages wait until the sender can send again."""


@sender.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sender_list(as_json: bool) -> None:
    """List the parked senders, with their reason and how many messages wait."""
    config = _amqp(_service())
    parked = asyncio.run(list_parked(config))
    if as_json:
        click.echo(json.dumps([attrs.asdict(p) for p in parked], indent=2))
        return
    if not parked:
        click.echo("no parked sender")
        return
    for entry in parked:
        click.echo(
            f"{entry.sender}  {entry.channel or '-'}  {entry.reason or '-'}  "
            f"{entry.messages} message{'s' if entry.messages != 1 else ''}: {entry.error or ''}".rstrip()
        )


@sender.command("resume")
@click.argument("name", metavar="SENDER")
def sender_resume(name: str) -> None:
    """Resume SENDER once it can send again: running workers stop parking it, and its parked
    messages go back to the queue, unchanged (a message sent meanwhile is not sent again)."""
    config = _amqp(_service())

    async def resume() -> tuple[bool, list[str]]:
        known = any(p.sender == name for p in await list_parked(config))
        return known, await resume_parked(config, name)

    known, moved = asyncio.run(resume())
    if not known and not moved:
        raise click.ClickException(f"sender {name!r} is not parked (see: omnichannel sender list)")
    click.echo(
        f"sender {name} resumed: {len(moved)} message{'s' if len(moved) != 1 else ''} moved to {config.queue}"
    )
