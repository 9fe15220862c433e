"""The stats report shared by ``omnichannel stats --json`` and ``GET /stats``.

``{"messages": MessageStats, "templates": [TemplatePerformance, ...]}``, unstructured by the
core's converter (times as ISO 8601 strings). The range is ``[start, end)`` on the messages'
creation time; by default the 24 hours before ``end``, and ``end`` defaults to now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from omnichannel.serde import make_converter

if TYPE_CHECKING:
    from omnichannel.store import MessageRecord, MessageStore, StatusEntry
    from omnichannel.store.analytics import MessageStats, TemplatePerformance

__all__ = ["DEFAULT_SPAN", "StatsQuery", "message_json", "parse_time", "stats_json", "stats_report"]

DEFAULT_SPAN = timedelta(hours=24)
"""The range when only its end (or nothing) is given."""

_converter = make_converter()


def parse_time(text: str, *, name: str) -> datetime:
    """An ISO date or date-time; without a time zone, UTC. ``2026-03-01`` is its midnight.

    :raises ValueError: naming ``name`` and the accepted forms.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{name}: {text!r} is not an ISO date or date-time (2026-03-01, 2026-03-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@attrs.frozen
class StatsQuery:
    """What a stats report covers: ``[start, end)``, optionally one channel or template."""

    start: datetime
    end: datetime
    channel: str | None = None
    template: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        start: str | None,
        end: str | None,
        now: datetime,
        channel: str | None = None,
        template: str | None = None,
        names: tuple[str, str] = ("from", "to"),
    ) -> StatsQuery:
        """The query from text arguments (``names`` label them in errors).

        :raises ValueError: a time that is not ISO 8601, or a start not before the end.
        """
        until = parse_time(end, name=names[1]) if end else now
        since = parse_time(start, name=names[0]) if start else until - DEFAULT_SPAN
        if not since < until:
            raise ValueError(f"{names[0]} {since.isoformat()} is not before {names[1]} {until.isoformat()}")
        return cls(since, until, channel or None, template or None)


async def stats_report(
    store: MessageStore, query: StatsQuery
) -> tuple[MessageStats, list[TemplatePerformance]]:
    """The message stats and the template performance of ``query``."""
    from omnichannel.store.analytics import message_stats, template_performance

    found = await message_stats(
        store, start=query.start, end=query.end, channel=query.channel, template=query.template
    )
    rows = await template_performance(store, start=query.start, end=query.end, template=query.template)
    return found, rows


def stats_json(stats: MessageStats, templates: list[TemplatePerformance]) -> dict[str, Any]:
    """The report as JSON-ready data."""
    return {"messages": _converter.unstructure(stats), "templates": _converter.unstructure(templates)}


def message_json(record: MessageRecord, history: list[StatusEntry]) -> dict[str, Any]:
    """One message and its status history as JSON-ready data (``GET /messages/{id}``)."""
    return {"message": _converter.unstructure(record), "history": _converter.unstructure(history)}
