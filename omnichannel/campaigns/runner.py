"""Running a campaign: every row becomes a message, sent at most once per idempotency key.

A fixed pool of ``concurrency`` workers pulls rows from the iterator, so at most that many
rows are held at any time, whatever the size of the file. For each row:

1. a row that could not be read, or lacks its recipient or a column the content needs, is
   ``invalid``;
2. on a dry run its message is checked (``service.check``): ``valid`` or ``invalid``, and
   nothing more happens;
3. the key ``<campaign_id>:<recipient>`` is claimed in the key store; a refused claim is
   ``already_sent``, ``failed_before``, ``in_flight`` (another runner holds it) or
   ``uncertain`` (an earlier attempt may have reached the provider);
4. the message is sent: ``sent`` (the key is completed), ``invalid`` (the send's validation
   refused it before anything left: the key is forgotten; validating in the send rather than
   before the claim saves validating every row twice) or ``failed`` (the key is released:
   kept as ``failed`` when the error is not retryable, as ``uncertain`` when its certainty is
   unknown, else forgotten so that a re-run tries again).

Store errors stop the campaign (nothing can be sent safely without it); run it again with
the same campaign id to resume.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ..errors import Certainty, DeliveryError, MessageValidationError, UnknownChannelError
from ..idempotency import KeyState, KeyStore
from ..message import Message, _str_tuple
from .sources import ContentSpec, Row, RowProblem, TemplateSpec

if TYPE_CHECKING:
    from ..service import OmniChannelService

__all__ = [
    "Campaign",
    "CampaignSummary",
    "Outcome",
    "Progress",
    "ResultSink",
    "RowResult",
    "campaign_key",
    "default_campaign_id",
    "default_owner",
    "row_message",
    "run_campaign",
    "run_rows",
]

log = logging.getLogger("omnichannel.campaigns")


class Outcome(enum.StrEnum):
    """What became of one row."""

    SENT = "sent"
    """Sent now."""
    ALREADY_SENT = "already_sent"
    """Its key was sent before (an earlier run, or a duplicate row): not sent again."""
    VALID = "valid"
    """Dry run: it would be sent."""
    INVALID = "invalid"
    """Unreadable line, missing recipient or column, or a message the channel would refuse."""
    FAILED = "failed"
    """The send failed now."""
    FAILED_BEFORE = "failed_before"
    """Its key failed for good in an earlier run: not tried again."""
    UNCERTAIN = "uncertain"
    """An earlier attempt may have reached the provider: not resent unless ``resend_uncertain``."""
    IN_FLIGHT = "in_flight"
    """Another runner holds its key right now: left to that runner."""
    PUBLISHED = "published"
    """Published to the command queue (``publish_campaign``): a worker sends it."""

    @property
    def ok(self) -> bool:
        """Whether the row needs no attention (it is, was or would be sent)."""
        return self in (Outcome.SENT, Outcome.ALREADY_SENT, Outcome.VALID, Outcome.PUBLISHED)


_REFUSED = {
    KeyState.SENT: Outcome.ALREADY_SENT,
    KeyState.FAILED: Outcome.FAILED_BEFORE,
    KeyState.UNCERTAIN: Outcome.UNCERTAIN,
    KeyState.IN_FLIGHT: Outcome.IN_FLIGHT,
}


@attrs.frozen
class RowResult:
    """The outcome of one row; ``error``/``code``/``detail`` say why it was not sent."""

    line: int
    recipient: str | None
    outcome: Outcome
    error: str | None = None
    """The error's class name, or ``invalid_row`` for a row that cannot become a message."""
    code: int | str | None = None
    """The provider's error code, when there is one."""
    detail: str | None = None


@attrs.frozen
class Progress:
    """How far a campaign is, reported after every row."""

    done: int
    """Rows finished."""
    counts: Mapping[Outcome, int]
    """Rows finished, by outcome."""
    elapsed_s: float


def _frozen_counts(counts: Mapping[Outcome, int]) -> Mapping[Outcome, int]:
    return MappingProxyType(dict(counts))


@attrs.frozen
class CampaignSummary:
    """The counts of a finished campaign."""

    campaign_id: str
    counts: Mapping[Outcome, int] = attrs.field(converter=_frozen_counts)
    elapsed_s: float
    dry_run: bool = False

    @property
    def total(self) -> int:
        """Rows read."""
        return sum(self.counts.values())

    @property
    def problems(self) -> int:
        """Rows that are in the report (not sent, already sent or valid)."""
        return sum(n for outcome, n in self.counts.items() if not outcome.ok)

    def count(self, outcome: Outcome) -> int:
        """Rows that ended with ``outcome``."""
        return self.counts.get(outcome, 0)


class ResultSink(Protocol):
    """Where every row's result goes as soon as it is known (``ReportWriter`` is one)."""

    def write(self, result: RowResult) -> None:
        """Take one row's result."""


def default_owner() -> str:
    """``host:pid:random``: a lease owner no other runner shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def campaign_key(campaign_id: str, recipient: str) -> str:
    """The idempotency key of ``recipient``'s message in the campaign (as ``SendBulk``'s)."""
    return f"{campaign_id}:{recipient.strip()}"


def default_campaign_id(source_name: str, content: ContentSpec) -> str:
    """An id that is the same for the same file name and content: a re-run resumes.

    ``recipients.csv`` with template ``welcome`` gives ``recipients-`` and 12 hex digits.
    """
    base = os.path.basename(source_name)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.splitext(base)[0]).strip("-") or "campaign"
    if isinstance(content, TemplateSpec):
        what = f"template\0{content.name}\0{content.language}\0{content.named}\0{content.columns}"
    else:
        what = f"text\0{content.body}"
    digest = hashlib.sha256(f"{base}\0{what}".encode()).hexdigest()[:12]
    return f"{stem[:40]}-{digest}"


def _positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class Campaign:
    """What to send and how.

    :param campaign_id: the prefix of every key: the same id resumes a campaign.
    :param content: a ``TemplateSpec`` or ``TextSpec`` applied to each row.
    :param channel: the channel; or ``route``, channels to try in order; with neither, the
        configured ``default_route``.
    :param concurrency: sends at a time (default: the service's ``send_concurrency``).
    :param dry_run: check every row, claim and send nothing.
    :param lease_s: how long a claimed key is reserved for this runner's send.
    :param resend_uncertain: send keys whose earlier attempt may have reached the provider
        (a possible duplicate).
    :param owner: this runner's name in the key store.
    """

    campaign_id: str = attrs.field(validator=attrs.validators.min_len(1))
    content: ContentSpec
    channel: str | None = None
    route: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    concurrency: int | None = attrs.field(default=None, validator=_positive)
    dry_run: bool = False
    lease_s: float = attrs.field(default=600.0, validator=_positive)
    resend_uncertain: bool = False
    owner: str = attrs.field(factory=default_owner)


def _row_puller(rows: Iterable[Row] | AsyncIterable[Row]) -> Callable[[], Awaitable[Row | None]]:
    """One function every worker calls for its next row (``None``: no more)."""
    if isinstance(rows, AsyncIterable):
        iterator = aiter(rows)
        lock = asyncio.Lock()  # an async generator cannot be advanced by two tasks at once

        async def next_async() -> Row | None:
            async with lock:
                return await anext(iterator, None)

        return next_async
    sync_iterator = iter(rows)

    async def next_sync() -> Row | None:
        return next(sync_iterator, None)

    return next_sync


async def run_campaign(
    service: OmniChannelService,
    campaign: Campaign,
    rows: Iterable[Row] | AsyncIterable[Row],
    keys: KeyStore,
    *,
    progress: Callable[[Progress], None] | None = None,
    report: ResultSink | None = None,
) -> CampaignSummary:
    """Send the campaign's message to every row (see the module docstring for each outcome).

    :param service: a started service.
    :param rows: the recipients, e.g. ``read_rows(path)``; read lazily, one per free worker.
    :param keys: the idempotency key store (not closed here).
    :param progress: called after every row.
    :param report: receives every row's result as it finishes (``ReportWriter``).
    :return: the counts per outcome.
    :raises Exception: what the key store raised: the campaign stops; run it again to resume.
    """

    async def handle(row: Row) -> RowResult:
        return await _run_row(service, campaign, row, keys)

    return await run_rows(service, campaign, rows, handle, progress=progress, report=report)


async def run_rows(
    service: OmniChannelService,
    campaign: Campaign,
    rows: Iterable[Row] | AsyncIterable[Row],
    handle: Callable[[Row], Awaitable[RowResult]],
    *,
    progress: Callable[[Progress], None] | None = None,
    report: ResultSink | None = None,
) -> CampaignSummary:
    """``handle`` every row with ``concurrency`` workers; count, report and show the progress.

    The pool of ``run_campaign`` and ``publish_campaign``: an exception of ``handle`` stops the
    other workers (each may settle its row first) and is raised.
    """
    limit = campaign.concurrency or service.config.send_concurrency
    clock = service.clock
    started = clock.monotonic()
    counts: Counter[Outcome] = Counter()
    done = 0
    pull = _row_puller(rows)
    log.info(
        "campaign %s: started (concurrency %d, dry run %s)", campaign.campaign_id, limit, campaign.dry_run
    )

    async def worker() -> None:
        nonlocal done
        while (row := await pull()) is not None:
            result = await handle(row)
            counts[result.outcome] += 1
            done += 1
            if report is not None:
                report.write(result)
            if progress is not None:
                progress(Progress(done, dict(counts), clock.monotonic() - started))

    tasks = [asyncio.create_task(worker()) for _ in range(limit)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        # Let every worker settle its key (release as uncertain) before stopping.
        await asyncio.gather(*tasks, return_exceptions=True)
        log.warning("campaign %s: stopped after %d rows", campaign.campaign_id, done)
        raise
    summary = CampaignSummary(campaign.campaign_id, counts, clock.monotonic() - started, campaign.dry_run)
    log.info(
        "campaign %s: %d rows, %s",
        campaign.campaign_id,
        summary.total,
        ", ".join(f"{o.value} {n}" for o, n in sorted(counts.items())),
    )
    return summary


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _invalid(row: Row, detail: str, error: str = "invalid_row") -> RowResult:
    return RowResult(row.line, row.recipient, Outcome.INVALID, error, None, detail)


def row_message(
    service: OmniChannelService, campaign: Campaign, row: Row, *, check: bool = True
) -> Message | RowResult:
    """The row's message (key ``<campaign_id>:<recipient>``), checked by ``service.check`` unless
    ``check`` is false (the send will validate it); or, when the row cannot become a message, its
    ``invalid`` (or ``failed``: a broken check) result.
    """
    if row.error is not None:
        return _invalid(row, row.error)
    if row.recipient is None:
        return _invalid(row, f"recipient: column {row.recipient_column or 'recipient'!r} is missing or empty")
    try:
        content = campaign.content.content(row)
    except RowProblem as problem:
        return _invalid(row, str(problem))
    key = campaign_key(campaign.campaign_id, row.recipient)
    message = Message(
        row.recipient,
        content,
        channel=campaign.channel,
        route=campaign.route,
        id=key,  # one message, however often it is tried: its records and webhooks match the key
        idempotency_key=key,
        metadata={"campaign_id": campaign.campaign_id},
    )
    if not check:
        return message
    try:
        problems = service.check(message)
    except Exception as exc:  # a plugin's validate or build hook broke: nothing was sent
        log.exception("campaign %s: line %d could not be checked", campaign.campaign_id, row.line)
        return RowResult(row.line, row.recipient, Outcome.FAILED, type(exc).__name__, None, _one_line(exc))
    if problems:
        return _invalid(row, "; ".join(problems), "MessageValidationError")
    return message


async def _run_row(service: OmniChannelService, campaign: Campaign, row: Row, keys: KeyStore) -> RowResult:
    # A dry run checks; a send validates the message itself (the same hooks, once per row), and
    # an invalid message gives its key back below.
    message = row_message(service, campaign, row, check=campaign.dry_run)
    if isinstance(message, RowResult):
        return message
    if campaign.dry_run:
        return RowResult(row.line, row.recipient, Outcome.VALID)
    key = message.key
    owner = campaign.owner
    claim = await keys.claim(
        key, owner=owner, lease_s=campaign.lease_s, resend_uncertain=campaign.resend_uncertain
    )
    if not claim.granted:
        record = claim.record
        outcome = _REFUSED[record.state] if record is not None else Outcome.IN_FLIGHT
        detail = record.error if record is not None and outcome is not Outcome.IN_FLIGHT else None
        return RowResult(row.line, row.recipient, outcome, None, None, detail)
    try:
        receipt = await service.send(message)
    except DeliveryError as exc:
        # An unknown outcome stays uncertain even when the error is not retryable: the message
        # may have been delivered, and only resend_uncertain may send it again (resilience §1.10).
        uncertain = exc.certainty is Certainty.UNKNOWN
        final = not exc.retryable and not uncertain
        error = f"{type(exc).__name__}: {exc}"
        await keys.release(key, owner=owner, error=error, final=final, uncertain=uncertain)
        return RowResult(row.line, row.recipient, Outcome.FAILED, type(exc).__name__, exc.code, str(exc))
    except (MessageValidationError, UnknownChannelError) as exc:  # refused before anything was sent
        await keys.release(key, owner=owner, error="invalid message", final=False)
        problems = exc.problems if isinstance(exc, MessageValidationError) else [str(exc)]
        return _invalid(row, "; ".join(problems), type(exc).__name__)
    except asyncio.CancelledError:
        # Stopped mid-send: the request may have left, so a re-run must not resend blindly.
        await keys.release(
            key, owner=owner, error="the campaign stopped during the send", final=False, uncertain=True
        )
        raise
    except Exception as exc:
        # Raised before the channel was called (service.send turns a channel's own errors into
        # DeliveryError): nothing left, so a re-run may try again.
        detail = _one_line(exc)
        await keys.release(key, owner=owner, error=f"{type(exc).__name__}: {detail}", final=False)
        return RowResult(row.line, row.recipient, Outcome.FAILED, type(exc).__name__, None, detail)
    await keys.complete(
        key, owner=owner, channel=receipt.channel, provider_message_id=receipt.provider_message_id
    )
    return RowResult(row.line, row.recipient, Outcome.SENT)
