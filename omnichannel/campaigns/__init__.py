"""Bulk campaigns: one message per row of a CSV or JSON Lines file, each sent at most once.

::

    from omnichannel.campaigns import Campaign, ReportWriter, TemplateSpec, read_rows, run_campaign

    campaign = Campaign("spring-sale", TemplateSpec("spring_sale", named=True), channel="whatsapp")
    with read_rows("recipients.csv") as rows, ReportWriter("report.csv") as report:
        summary = await run_campaign(service, campaign, rows, keys, report=report)

Rows are streamed (never the whole file in memory), sent by a bounded pool of workers, and
each message's idempotency key ``<campaign_id>:<recipient>`` is claimed in a
:class:`~omnichannel.idempotency.KeyStore` first, so a campaign run again (after a crash, or
by a second runner at the same time) never sends a key twice. See ``docs/campaigns.md``.
"""

from __future__ import annotations

from .publish import publish_campaign
from .report import REPORT_COLUMNS, ReportWriter
from .runner import (
    Campaign,
    CampaignSummary,
    Outcome,
    Progress,
    ResultSink,
    RowResult,
    campaign_key,
    default_campaign_id,
    default_owner,
    run_campaign,
)
from .sources import (
    RECIPIENT_ALIASES,
    ContentSpec,
    Row,
    RowProblem,
    RowReader,
    SourceError,
    TemplateSpec,
    TextSpec,
    read_rows,
)

__all__ = [
    "RECIPIENT_ALIASES",
    "REPORT_COLUMNS",
    "Campaign",
    "CampaignSummary",
    "ContentSpec",
    "Outcome",
    "Progress",
    "ReportWriter",
    "ResultSink",
    "Row",
    "RowProblem",
    "RowReader",
    "RowResult",
    "SourceError",
    "TemplateSpec",
    "TextSpec",
    "campaign_key",
    "default_campaign_id",
    "default_owner",
    "publish_campaign",
    "read_rows",
    "run_campaign",
]
