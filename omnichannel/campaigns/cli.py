"""``omnichannel campaign send``: a campaign from a CSV or JSON Lines file.

Exit status: 0 when the campaign ran (the rows that failed are in the report), 1 when it
could not start or had to stop (configuration, file, key store), 2 for a usage error.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConfigError, OmniChannelError
from ..idempotency import KeyStore, MemoryKeyStore
from .publish import publish_campaign
from .report import ReportWriter
from .runner import Campaign, CampaignSummary, Outcome, Progress, default_campaign_id, run_campaign
from .sources import ContentSpec, SourceError, TemplateSpec, TextSpec, read_rows

if TYPE_CHECKING:
    from ..clock import Clock
    from ..service import OmniChannelService

__all__ = ["campaign"]

PLAIN_EVERY_ROWS = 1000
PLAIN_EVERY_S = 5.0

_ORDER = list(Outcome)


@click.group("campaign")
def campaign() -> None:
    """Bulk campaigns: one message per row of a CSV or JSON Lines file."""


def _content(
    text: str | None, template: str | None, language: str, named: bool | None, columns: tuple[str, ...]
) -> ContentSpec:
    if (text is None) == (template is None):
        raise click.UsageError("give exactly one of --text or --template")
    if text is not None:
        if named is not None or columns:
            raise click.UsageError("--named/--positional and --param-column go with --template")
        try:
            return TextSpec(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--text") from None
    assert template is not None
    return TemplateSpec(template, language=language, named=named, columns=columns)


def open_key_store(url: str, clock: Clock) -> KeyStore:
    """The configured key store; a store that cannot be opened is an error with exit status 1."""
    from ..idempotency.factory import open_key_store as open_store
    from ..urls import printable_url

    try:
        return open_store(url, clock=clock)
    except OmniChannelError:
        raise
    except Exception as exc:
        raise click.ClickException(f"cannot open the key store {printable_url(url)}: {exc}") from None


class _PlainProgress:
    """A line every ``PLAIN_EVERY_ROWS`` rows or ``PLAIN_EVERY_S`` seconds (not a terminal)."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.done % PLAIN_EVERY_ROWS and now - self._last < PLAIN_EVERY_S:
            return
        self._last = now
        click.echo(
            f"progress: {progress.done} rows, {_counts_text(progress.counts)} ({progress.elapsed_s:.1f} s)"
        )


def _counts_text(counts: Any) -> str:
    return ", ".join(f"{o.value} {counts[o]}" for o in _ORDER if counts.get(o)) or "nothing yet"


def _estimate_rows(path: str) -> int | None:
    """Lines in the file (minus a CSV header): the progress bar's total, an estimate."""
    try:
        with open(path, "rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return None
    return max(lines - (1 if path.lower().endswith(".csv") else 0), 0)


def _use_rich() -> bool:
    return sys.stdout.isatty()


async def _run(
    service: OmniChannelService,
    campaign_: Campaign,
    path: str,
    fmt: str | None,
    column: str,
    report_path: str,
    rich: _RichProgress | None,
    queue: bool = False,
) -> CampaignSummary:
    """Start the service, open the key store (not for a dry run, nor to publish to the queue)
    and run (or publish) the campaign."""
    with read_rows(path, format=fmt, recipient_column=column) as rows, ReportWriter(report_path) as report:
        async with service:
            # A dry run claims nothing, and the workers claim what is published: no store
            # (and no file created).
            keys = (
                MemoryKeyStore()
                if campaign_.dry_run or queue
                else open_key_store(service.config.key_store, service.clock)
            )

            async def go(progress: Callable[[Progress], None]) -> CampaignSummary:
                if queue:
                    return await publish_campaign(service, campaign_, rows, progress=progress, report=report)
                return await run_campaign(service, campaign_, rows, keys, progress=progress, report=report)

            try:
                if rich is None:
                    return await go(_PlainProgress())
                with rich as (bar, callback):
                    summary = await go(callback)
                    bar.update(bar.task_ids[0], total=summary.total, completed=summary.total)
                    return summary
            finally:
                await keys.close()


class _RichProgress:
    """A ``rich`` progress bar (a terminal); ``with`` it gives ``(progress, callback)``."""

    def __init__(self, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn("[bold]campaign"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[counts]}"),
            transient=False,
        )
        self.task = self.bar.add_task("campaign", total=total, counts="")

    def __enter__(self) -> tuple[Any, Any]:
        self.bar.start()

        def callback(progress: Progress) -> None:
            self.bar.update(self.task, completed=progress.done, counts=_counts_text(progress.counts))

        return self.bar, callback

    def __exit__(self, *_: object) -> None:
        self.bar.stop()


def _resume_hint(campaign_id: str) -> str:
    return f"campaign id: {campaign_id}, run it again with the same id to resume"


def _print_summary(summary: CampaignSummary, report_path: str, rich: bool) -> None:
    click.echo(_resume_hint(summary.campaign_id))
    if summary.dry_run:
        click.echo("dry run: nothing was claimed or sent")
    rows = [(o.value, summary.count(o)) for o in _ORDER if summary.count(o)]
    if rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{summary.total} rows in {summary.elapsed_s:.1f} s")
        table.add_column("outcome")
        table.add_column("rows", justify="right")
        for name, count in rows:
            table.add_row(name, str(count))
        Console(file=sys.stdout).print(table)
    else:
        click.echo(f"{summary.total} rows in {summary.elapsed_s:.1f} s")
        for name, count in rows:
            click.echo(f"  {name:<14}{count:>10}")
    if summary.count(Outcome.PUBLISHED):
        click.echo(
            "published to the command queue: `omnichannel worker` sends them (see `omnichannel dlq list`)"
        )
    if summary.problems:
        rows_text = "1 row" if summary.problems == 1 else f"{summary.problems} rows"
        click.echo(f"report: {report_path} ({rows_text} not sent, with the reason)")
    else:
        click.echo(f"report: {report_path} (empty: every row is fine)")


@campaign.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--template", help="Send this template; its body parameters come from the columns.")
@click.option("--language", default="en_US", show_default=True, help="The template's language.")
@click.option(
    "--named/--positional",
    default=None,
    help="Named parameters (a column per name) or positional (columns 1, 2, ...); "
    "default: positional when there is a column 1.",
)
@click.option(
    "--param-column",
    "param_columns",
    multiple=True,
    metavar="COL",
    help="A parameter column, in order (repeatable); default: all of them (see --named).",
)
@click.option("--text", help='Send this text; {column} is replaced by the row\'s value ("Hi {name}").')
@click.option("--channel", help="Channel to send on (default: the configured default_route).")
@click.option(
    "--campaign-id",
    help="The campaign's id, prefix of every idempotency key. Default: derived from the file's "
    "name and the template or text, so running the same command again resumes the campaign.",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Sends at a time (default: send_concurrency)."
)
@click.option("--dry-run", is_flag=True, help="Check every row; claim and send nothing.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="CSV report of the rows not sent (default: ./<campaign id>-report.csv).",
)
@click.option(
    "--recipient-column",
    default="recipient",
    show_default=True,
    help="The recipient's column (phone or to are taken when there is no recipient column).",
)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="Default: from the extension.")
@click.option(
    "--resend-uncertain",
    is_flag=True,
    help="Also send recipients whose earlier attempt may have reached the provider (possible duplicates).",
)
@click.option(
    "--queue",
    is_flag=True,
    help="Publish one SendMessage per row to the [amqp] command queue (confirmed) for "
    "`omnichannel worker` processes to send, instead of sending here.",
)
def send_command(
    file: str,
    template: str | None,
    language: str,
    named: bool | None,
    param_columns: tuple[str, ...],
    text: str | None,
    channel: str | None,
    campaign_id: str | None,
    concurrency: int | None,
    dry_run: bool,
    report_path: str | None,
    recipient_column: str,
    fmt: str | None,
    resend_uncertain: bool,
    queue: bool,
) -> None:
    """Send a message to every recipient of FILE (CSV with a header row, or JSON Lines).

    Each message's idempotency key is <campaign id>:<recipient>; a key already sent is never
    sent again, so running the same command again after a crash or an interruption resumes
    the campaign where it stopped. With --queue the rows are published to the [amqp] queue
    and `omnichannel worker` processes send them, checking the same keys.
    """
    from ..cli import service_from_context  # here: omnichannel.cli imports this module

    content = _content(text, template, language, named, param_columns)
    campaign_id = campaign_id or default_campaign_id(file, content)
    settings = Campaign(
        campaign_id,
        content,
        channel=channel,
        concurrency=concurrency,
        dry_run=dry_run,
        resend_uncertain=resend_uncertain,
    )
    report_path = report_path or os.path.join(".", f"{campaign_id}-report.csv")
    service = service_from_context()
    if queue and service.config.amqp is None:
        raise click.UsageError(
            "--queue needs the command queue: add an [amqp] table (url = ...) or set OMNICHANNEL_AMQP__URL"
        )
    if queue and resend_uncertain:
        raise click.UsageError("--resend-uncertain cannot go with --queue (the workers do not resend)")
    rich = _use_rich()
    bar = _RichProgress(_estimate_rows(file)) if rich else None
    try:
        summary = asyncio.run(_run(service, settings, file, fmt, recipient_column, report_path, bar, queue))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; {_resume_hint(campaign_id)}", err=True)
        raise click.Abort() from None
    except (ConfigError, SourceError):
        raise  # it did not start
    except OmniChannelError:
        click.echo(f"the campaign stopped; {_resume_hint(campaign_id)}", err=True)
        raise
    _print_summary(summary, report_path, rich)
