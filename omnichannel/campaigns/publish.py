"""Publishing a campaign to the command queue: ``omnichannel worker`` processes send it.

Every valid row becomes the same message as ``run_campaign``'s (idempotency key
``<campaign_id>:<recipient>``), published as one ``SendMessage`` through ``service.bus``
(the ``[amqp]`` transport: each publish returns once the broker confirmed it). Nothing is
claimed here: the workers claim each key before they send, so publishing a campaign again
(after a crash, or by mistake) sends nothing twice. Row outcomes: ``published``,
``invalid`` (and ``valid`` on a dry run, which publishes nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING

from ..commands import InProcessTransport, SendMessage
from ..errors import ConfigError
from .runner import Campaign, CampaignSummary, Outcome, Progress, ResultSink, RowResult, row_message, run_rows
from .sources import Row

if TYPE_CHECKING:
    from ..service import OmniChannelService

__all__ = ["publish_campaign"]


async def publish_campaign(
    service: OmniChannelService,
    campaign: Campaign,
    rows: Iterable[Row] | AsyncIterable[Row],
    *,
    progress: Callable[[Progress], None] | None = None,
    report: ResultSink | None = None,
) -> CampaignSummary:
    """Publish one ``SendMessage`` per valid row, ``campaign.concurrency`` publishes at a time.

    :param service: a started service whose bus publishes to a broker (``[amqp]`` configured).
    :param rows: the recipients, e.g. ``read_rows(path)``; read lazily.
    :param progress: called after every row.
    :param report: receives every row's result (the ``invalid`` rows, with their line).
    :return: the counts per outcome (``published``, ``invalid``; ``valid`` on a dry run).
    :raises ConfigError: when the bus runs commands in process (no ``[amqp]``): publishing
        would send at once, without the workers' key checks.
    :raises CommandError: a publish the broker did not confirm: the campaign stops; publish
        it again (the same campaign id) to resume: the workers skip the keys already sent.
    """
    if not campaign.dry_run and isinstance(service.bus.transport, InProcessTransport):
        raise ConfigError(["amqp: not configured; publish_campaign needs the [amqp] command queue"])
    if campaign.resend_uncertain:
        raise ValueError("resend_uncertain is not supported through the queue (the workers decide)")

    async def handle(row: Row) -> RowResult:
        message = row_message(service, campaign, row)
        if isinstance(message, RowResult):
            return message
        if campaign.dry_run:
            return RowResult(row.line, row.recipient, Outcome.VALID)
        await service.bus.dispatch(SendMessage(message))
        return RowResult(row.line, row.recipient, Outcome.PUBLISHED)

    return await run_rows(service, campaign, rows, handle, progress=progress, report=report)
