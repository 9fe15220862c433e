"""``omnichannel stats``: message stats and template performance over a time range.

The store of ``[plugins.store] url`` is opened with the plugin's factory (as ``omnichannel db``
does) and queried with :mod:`omnichannel.store.analytics`. The range is ``[--from, --to)`` on the
messages' creation time; by default the last 24 hours. ``--json`` prints
``{"messages": MessageStats, "templates": [TemplatePerformance, ...]}``, as ``GET /stats`` answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING

import click

from omnichannel import service_from_context

from .config import StoreConfig, display_url
from .report import StatsQuery, stats_json, stats_report

if TYPE_CHECKING:
    from omnichannel.store import MessageStore
    from omnichannel.store.analytics import Latency, MessageStats, TemplatePerformance

    from . import StorePlugin

__all__ = ["stats_command"]


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _latency(latency: Latency) -> str:
    return f"p50 {_secs(latency.p50)}, p95 {_secs(latency.p95)} (n={latency.count})"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {count}" for key, count in counts.items()) or "-"


def _render(url: str, stats: MessageStats, templates: list[TemplatePerformance]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    scope = "".join(
        f", {name} {value}"
        for name, value in (("channel", stats.channel), ("template", stats.template))
        if value
    )
    summary = Table(
        title=f"Messages {stats.start.isoformat()} to {stats.end.isoformat()}{scope} ({url})",
        show_header=False,
    )
    summary.add_column("", style="bold")
    summary.add_column("")
    for label, value in (
        ("total", str(stats.total)),
        ("accepted", str(stats.accepted)),
        ("delivered", str(stats.delivered)),
        ("read", str(stats.read)),
        ("failed", str(stats.failed)),
        ("delivery rate", _pct(stats.delivery_rate)),
        ("read rate", _pct(stats.read_rate)),
        ("send to delivered", _latency(stats.to_delivered)),
        ("send to read", _latency(stats.to_read)),
        ("by status", _counts({k: v for k, v in stats.by_status.items() if v})),
        ("by channel", _counts(stats.by_channel)),
        ("by template", _counts(stats.by_template)),
        ("top error codes", _counts({e.code: e.count for e in stats.by_error_code})),
    ):
        summary.add_row(label, value)
    console.print(summary)
    table = Table(title="Template performance")
    for column in ("template", "language", "total", "sent", "delivered", "read", "failed"):
        table.add_column(column, justify="left" if column in ("template", "language") else "right")
    for column in ("delivery", "read rate", "failure", "top errors"):
        table.add_column(column, justify="left" if column == "top errors" else "right")
    for row in templates:
        table.add_row(
            row.template,
            row.language or "-",
            *(str(n) for n in (row.total, row.sent, row.delivered, row.read, row.failed)),
            _pct(row.delivery_rate),
            _pct(row.read_rate),
            _pct(row.failure_rate),
            _counts({e.code: e.count for e in row.top_errors}),
        )
    if not templates:
        console.print("Template performance: no templated messages in the range")
    else:
        console.print(table)


def stats_command(plugin: StorePlugin) -> click.Command:
    """The ``stats`` command, opening stores with ``plugin``'s factory."""

    @click.command("stats")
    @click.option("--from", "start", metavar="DATE", help="Start (included); default: --to minus 24 h.")
    @click.option("--to", "end", metavar="DATE", help="End (excluded); default: now.")
    @click.option("--channel", metavar="C", help="Only this channel's messages (message stats).")
    @click.option("--template", metavar="NAME", help="Only this template's messages.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
    def stats(
        start: str | None, end: str | None, channel: str | None, template: str | None, as_json: bool
    ) -> None:
        """Message stats and template performance over [--from, --to) (ISO dates, UTC by default)."""
        service = service_from_context()
        config = service.plugin_config(StoreConfig)
        url = display_url(config.url)
        try:
            query = StatsQuery.parse(
                start=start,
                end=end,
                now=service.clock.now(),
                channel=channel,
                template=template,
                names=("--from", "--to"),
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

        async def main() -> tuple[MessageStats, list[TemplatePerformance]]:
            store: MessageStore = await plugin.open_store(config.url, service.clock)
            try:
                return await stats_report(store, query)
            finally:
                await store.close()

        try:
            found, rows = asyncio.run(main())
        except Exception as exc:
            raise click.ClickException(f"message store {url}: {type(exc).__name__}: {exc}") from exc
        if as_json:
            click.echo(json.dumps(stats_json(found, rows), indent=2))
        else:
            _render(url, found, rows)

    return stats
