"""``omnichannel breaker ...``: the circuit-breaker runbook's commands (docs/ops/circuit-breaker-runbook.md).

They act on the shared state in Redis (``shared_state = "redis"``), which every worker reads: an
operator's ``open`` reaches all of them within ``poll_interval_s``. With state in memory each
process has its own breakers and a CLI process cannot see them, so the commands refuse and say so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from omnichannel import service_from_context

from .breaker import BreakerSnapshot, State
from .health import breaker_row
from .state import AdminAction, BreakerStore

if TYPE_CHECKING:
    from .middleware import Resilience

T = TypeVar("T")

_MEMORY_STATE = (
    "the breakers live in each process's memory (plugins.resilience.shared_state = 'memory'), "
    "so this command cannot see them; set shared_state = 'redis' and redis_url to share them "
    "between workers and control them from here"
)


def _run(work: Callable[[BreakerStore], Awaitable[T]]) -> T:
    from . import runtime

    service = service_from_context()
    layer: Resilience = runtime(service)
    if layer.breakers is None:
        raise click.ClickException(
            "the circuit breaker is disabled (plugins.resilience.circuit_breaker.enabled)"
        )
    if layer.settings.shared_state != "redis":
        raise click.ClickException(_MEMORY_STATE)
    breakers = layer.breakers

    async def main() -> T:
        try:
            return await work(breakers)
        finally:
            await layer.close()

    return asyncio.run(main())


def _print(snapshots: list[BreakerSnapshot], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([breaker_row(s) for s in snapshots], indent=2))
        return
    if not snapshots:
        click.echo("no circuit breaker has state yet (every sender is closed)")
        return
    rows = [("BREAKER", "STATE", "FAILURES", "HALF-OPEN IN", "PROBES")]
    for s in snapshots:
        remaining = "-" if s.open_remaining_s is None else f"{s.open_remaining_s:.1f} s"
        rows.append((s.name, s.state.value, str(s.failures), remaining, str(s.in_flight)))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@click.group("breaker")
def breaker() -> None:
    """Circuit breakers per (channel, sender): status and manual control."""


@breaker.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(name: str | None, as_json: bool) -> None:
    """Every breaker (or NAME, e.g. whatsapp:106540352242922): state, failures, time to half-open."""

    async def work(store: BreakerStore) -> list[BreakerSnapshot]:
        return [await store.snapshot(name)] if name else await store.snapshots()

    _print(_run(work), as_json)


def _admin_command(
    command: str, action: AdminAction, summary: str, *, only_if_not_closed: bool = False
) -> None:
    @breaker.command(command, help=summary)
    @click.argument("name", required=False)
    @click.option("--all", "all_", is_flag=True, help="Every breaker that has state.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def run(name: str | None, all_: bool, as_json: bool) -> None:
        if bool(name) == all_:
            raise click.UsageError("give one breaker NAME (channel:sender) or --all")
        if name is not None and ":" not in name:
            raise click.UsageError(f"NAME is <channel>:<sender>, e.g. whatsapp:{name}; got {name!r}")

        async def work(store: BreakerStore) -> list[BreakerSnapshot]:
            targets = [name] if name else [s.name for s in await store.snapshots()]
            done = []
            for target in targets:
                if only_if_not_closed and (await store.snapshot(target)).state is State.CLOSED:
                    done.append(await store.snapshot(target))
                    continue
                done.append(await store.admin(target, action))
            return done

        _print(_run(work), as_json)


_admin_command(
    "open",
    "force_open",
    "Isolate a sender: refuse every send until `close` (state forced_open, gauge 2).",
)
_admin_command(
    "close",
    "reset",
    "Bring an open, forced-open, half-open or disabled breaker back to closed.",
    only_if_not_closed=True,
)
_admin_command(
    "reset",
    "reset",
    "Back to closed with every counter cleared, closed breakers included.",
)
_admin_command(
    "disable",
    "disable",
    "Let every send through and record nothing, until `close` or `reset`.",
)
_admin_command(
    "metrics-only",
    "metrics_only",
    "Let every send through but keep counting (a shadow breaker), until `close` or `reset`.",
)
