"""Analytics over the message store, checked against a hand-computed fixture on SQLite and PostgreSQL.

The fixture (created_at = T0 + the clock's offset, statuses at explicit times, seconds from T0):

====  ========  ===============  =====================================  ==========
id    channel   template/lang    history                                 status
====  ========  ===============  =====================================  ==========
m0    sms       -                created T0 - 1 ms (outside the range)   accepted
m1    whatsapp  welcome/en       accepted 0, delivered 10, read 70       read
m2    whatsapp  welcome/en       accepted 100, sent 101, delivered 120   delivered
m3    whatsapp  welcome/fr       accepted 200, delivered 230, read 300   read
m4    sms       -                accepted 300, delivered 340             delivered
m5    whatsapp  welcome/en       accepted 400, failed 410 (131026)       failed
m6    sms       promo/en         failed at the send 500 (21211)          failed
m7    whatsapp  promo/en         failed at the send 600 (131026)         failed
m8    sms       -                queued 700                              queued
m9    whatsapp  welcome/en       accepted 800, failed 805 (131047),      delivered
                                 delivered 900; created T0 + 3599.999
m10   sms       -                created T0 + 3600 (outside the range)   accepted
====  ========  ===============  =====================================  ==========

In [T0, T0 + 1 h): 9 messages; accepted (provider took it) m1-m5, m9 = 6; delivered m1-m4, m9 = 5;
read m1, m3 = 2; failed m5-m7 = 3. Send-to-delivered latencies 10, 20, 30, 40, 100 s: p50 30,
p95 = 40 + 0.8 * 60 = 88. Send-to-read 70, 100 s: p50 85, p95 70 + 0.95 * 30 = 98.5.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from test_store_backends import PG_URL, pg_schema  # noqa: F401  (the fixture)

import omnichannel.store.analytics
import omnichannel_store.stats_cli
from omnichannel import PluginSettings, ServiceConfig
from omnichannel.message import DeliveryStatus
from omnichannel.serde import make_converter
from omnichannel.store.analytics import (
    ErrorCount,
    Latency,
    MessageStats,
    TemplatePerformance,
    message_stats,
    percentile,
    template_performance,
)
from omnichannel.store.postgres import PostgresMessageStore
from omnichannel.store.postgres_stats import numbered
from omnichannel.store.rollup import RELATIVE_ERROR
from omnichannel.store.sqlite import SqliteMessageStore
from omnichannel.testing import FakeClock, SetClock, make_service
from omnichannel_store import StorePlugin
from omnichannel_store.commands import stats_command

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
Q, A, S, D, R, F = (DeliveryStatus(s) for s in ("queued", "accepted", "sent", "delivered", "read", "failed"))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def populate(store: Any, clock: SetClock) -> None:
    async def send(
        mid: str, created: float, channel: str, status: DeliveryStatus, when: float, **kw: Any
    ) -> None:
        clock.moment = at(created)
        await store.record_send(
            message_id=mid, channel=channel, status=status, at=at(when), provider_message_id=f"p-{mid}", **kw
        )

    async def update(mid: str, channel: str, status: DeliveryStatus, when: float, **kw: Any) -> None:
        await store.record_status(
            channel=channel, provider_message_id=f"p-{mid}", status=status, at=at(when), **kw
        )

    welcome_en = {"template": "welcome", "language": "en"}
    await send("m0", -0.001, "sms", A, -0.001)
    await send("m1", 0, "whatsapp", A, 0, **welcome_en)
    await update("m1", "whatsapp", R, 70)
    await update("m1", "whatsapp", D, 10)
    await send("m2", 100, "whatsapp", A, 100, **welcome_en)
    await update("m2", "whatsapp", S, 101)
    await update("m2", "whatsapp", D, 120)
    await update("m2", "whatsapp", D, 120)  # duplicate webhook
    await send("m3", 200, "whatsapp", A, 200, template="welcome", language="fr")
    await update("m3", "whatsapp", D, 230)
    await update("m3", "whatsapp", R, 300)
    await send("m4", 300, "sms", A, 300)
    await update("m4", "sms", D, 340)
    await send("m5", 400, "whatsapp", A, 400, **welcome_en)
    await update("m5", "whatsapp", F, 410, error_code="131026", error_detail="undeliverable")
    await send(
        "m6", 500, "sms", F, 500, template="promo", language="en", error_kind="rejected", error_code="21211"
    )
    await send("m7", 600, "whatsapp", F, 600, template="promo", language="en", error_code="131026")
    await send("m8", 700, "sms", Q, 700)
    await send("m9", 3599.999, "whatsapp", A, 800, **welcome_en)
    await update("m9", "whatsapp", F, 805, error_code="131047")
    await update("m9", "whatsapp", D, 900)
    await send("m10", 3600, "sms", A, 3600)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """How to build a store on this test's database (PostgreSQL: skip/fail as test_store_backends)."""
    if request.param == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return lambda clock: PostgresMessageStore(PG_URL, clock=clock, schema=schema, pool_size=2)
    return lambda clock: SqliteMessageStore(tmp_path / "messages.sqlite3", clock=clock)


@pytest.fixture
async def store(backend: Any) -> Any:
    """A store holding the fixture of the module docstring."""
    clock = SetClock(T0)
    opened = backend(clock)
    await populate(opened, clock)
    yield opened
    await opened.close()


STATUSES = {"queued": 1, "accepted": 0, "sent": 0, "delivered": 3, "read": 2, "failed": 3}


async def test_message_stats_of_the_hour(store: Any) -> None:
    stats = await message_stats(store, start=T0, end=T0 + HOUR)
    assert stats == MessageStats(
        start=T0,
        end=T0 + HOUR,
        channel=None,
        template=None,
        total=9,
        accepted=6,
        delivered=5,
        read=2,
        failed=3,
        delivery_rate=pytest.approx(5 / 6),
        read_rate=0.4,
        by_status=STATUSES,
        by_channel={"whatsapp": 6, "sms": 3},
        by_template={"welcome": 5, "promo": 2},
        by_error_code=[ErrorCount("131026", 2), ErrorCount("131047", 1), ErrorCount("21211", 1)],
        to_delivered=Latency(5, 30.0, pytest.approx(88.0)),
        to_read=Latency(2, 85.0, pytest.approx(98.5)),
    )
    assert list(stats.by_status) == [s.value for s in DeliveryStatus]


async def test_percentiles_are_approximate_above_the_exact_limit(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(omnichannel.store.analytics, "EXACT_LIMIT", 8)
    stats = await message_stats(store, start=T0, end=T0 + HOUR)  # 9 messages: from the histograms
    assert (stats.total, stats.delivered, stats.by_error_code[0]) == (9, 5, ErrorCount("131026", 2))
    assert (stats.to_delivered.count, stats.to_delivered.approximate) == (5, True)
    assert stats.to_delivered.p50 == pytest.approx(30.0, rel=RELATIVE_ERROR)
    assert stats.to_delivered.p95 == pytest.approx(88.0, rel=RELATIVE_ERROR)
    assert stats.to_read.p50 == pytest.approx(85.0, rel=RELATIVE_ERROR)
    small = await message_stats(store, start=T0, end=T0 + HOUR, channel="sms")  # 3 messages: exact
    assert small.to_delivered == Latency(1, 40.0, 40.0, approximate=False)
    forced = await message_stats(store, start=T0, end=T0 + HOUR, exact=True)
    assert forced.to_delivered == Latency(5, 30.0, pytest.approx(88.0))


@pytest.mark.parametrize("exact", [True, False])
async def test_a_status_stamped_before_the_send_is_a_latency_of_zero(backend: Any, exact: bool) -> None:
    # WhatsApp stamps statuses in whole seconds: a delivery within the send's second looks early.
    clock = SetClock(T0)
    opened = backend(clock)
    try:
        clock.moment = at(10.6)
        await opened.record_send(
            message_id="m", channel="whatsapp", status=A, at=at(10.6), provider_message_id="p"
        )
        await opened.record_status(channel="whatsapp", provider_message_id="p", status=D, at=at(10))
        await opened.record_status(channel="whatsapp", provider_message_id="p", status=R, at=at(12))
        stats = await message_stats(opened, start=T0, end=T0 + HOUR, exact=exact)
    finally:
        await opened.close()
    assert (stats.to_delivered.p50, stats.to_delivered.p95) == (0.0, 0.0)
    assert stats.to_read.p50 == pytest.approx(1.4, rel=RELATIVE_ERROR)


async def test_top_errors_limit(store: Any) -> None:
    stats = await message_stats(store, start=T0, end=T0 + HOUR, top_errors=1)
    assert stats.by_error_code == [ErrorCount("131026", 2)]


async def test_range_is_half_open_on_created_at(store: Any) -> None:
    wide = await message_stats(store, start=at(-0.001), end=at(3600.001))
    assert wide.total == 11
    assert wide.by_channel == {"whatsapp": 6, "sms": 5}
    assert (await message_stats(store, start=at(3600), end=at(3601))).total == 1  # m10 alone
    assert (await message_stats(store, start=at(-1), end=T0)).total == 1  # m0 alone
    # m9 was created at 3599.999 though its statuses are at 800-900 s: the creation time counts.
    late = await message_stats(store, start=at(3599), end=at(3600))
    assert (late.total, late.delivered, late.to_delivered) == (1, 1, Latency(1, 100.0, 100.0))


async def test_channel_filter(store: Any) -> None:
    stats = await message_stats(store, start=T0, end=T0 + HOUR, channel="sms")
    assert (stats.channel, stats.total, stats.accepted, stats.delivered, stats.read, stats.failed) == (
        "sms",
        3,
        1,
        1,
        0,
        1,
    )
    assert (stats.delivery_rate, stats.read_rate) == (1.0, 0.0)
    assert stats.by_status == {"queued": 1, "accepted": 0, "sent": 0, "delivered": 1, "read": 0, "failed": 1}
    assert stats.by_template == {"promo": 1}
    assert stats.by_error_code == [ErrorCount("21211", 1)]
    assert stats.to_delivered == Latency(1, 40.0, 40.0)
    assert stats.to_read == Latency(0, None, None)


async def test_template_filter(store: Any) -> None:
    stats = await message_stats(store, start=T0, end=T0 + HOUR, template="welcome", channel="whatsapp")
    assert (stats.total, stats.accepted, stats.delivered, stats.read, stats.failed) == (5, 5, 4, 2, 1)
    assert stats.to_delivered == Latency(4, 25.0, pytest.approx(30 + 0.85 * 70))  # 10 20 30 100
    rows = await template_performance(store, start=T0, end=T0 + HOUR, template="welcome")
    assert [(row.template, row.language) for row in rows] == [("welcome", "en"), ("welcome", "fr")]


async def test_empty_range(store: Any) -> None:
    stats = await message_stats(store, start=T0 + 2 * HOUR, end=T0 + 3 * HOUR)
    assert stats.total == stats.accepted == stats.delivered == stats.read == stats.failed == 0
    assert (stats.delivery_rate, stats.read_rate) == (None, None)
    assert stats.by_status == dict.fromkeys(STATUSES, 0)
    assert (stats.by_channel, stats.by_template, stats.by_error_code) == ({}, {}, [])
    assert stats.to_delivered == stats.to_read == Latency(0, None, None)
    assert await template_performance(store, start=T0 + 2 * HOUR, end=T0 + 3 * HOUR) == []


async def test_template_performance(store: Any) -> None:
    rows = await template_performance(store, start=T0, end=T0 + HOUR)
    assert rows == [
        TemplatePerformance(
            "promo", "en", total=2, sent=0, delivered=0, read=0, failed=2, delivery_rate=None,
            read_rate=None, failure_rate=1.0, top_errors=[ErrorCount("131026", 1), ErrorCount("21211", 1)],
        ),
        TemplatePerformance(
            "welcome", "en", total=4, sent=4, delivered=3, read=1, failed=1, delivery_rate=0.75,
            read_rate=pytest.approx(1 / 3), failure_rate=0.25,
            top_errors=[ErrorCount("131026", 1), ErrorCount("131047", 1)],
        ),
        TemplatePerformance(
            "welcome", "fr", total=1, sent=1, delivered=1, read=1, failed=0, delivery_rate=1.0,
            read_rate=1.0, failure_rate=0.0, top_errors=[],
        ),
    ]  # fmt: skip
    top = await template_performance(store, start=T0, end=T0 + HOUR, top_errors=1)
    assert [row.top_errors for row in top] == [[ErrorCount("131026", 1)], [ErrorCount("131026", 1)], []]


async def test_results_are_json(store: Any) -> None:
    converter = make_converter()
    stats = await message_stats(store, start=T0, end=T0 + HOUR)
    rows = await template_performance(store, start=T0, end=T0 + HOUR)
    document = json.loads(
        json.dumps({"messages": converter.unstructure(stats), "templates": converter.unstructure(rows)})
    )
    assert document["messages"]["start"] == "2026-03-01T12:00:00+00:00"
    assert document["messages"]["by_error_code"][0] == {"code": "131026", "count": 2}
    assert document["messages"]["to_read"] == {
        "count": 2,
        "p50": 85.0,
        "p95": pytest.approx(98.5),
        "approximate": False,
    }
    assert document["templates"][0]["delivery_rate"] is None
    assert converter.structure(document["messages"], MessageStats) == stats
    assert converter.structure(document["templates"], list[TemplatePerformance]) == rows


async def test_bad_ranges_and_stores(tmp_path: Path) -> None:
    store = SqliteMessageStore(tmp_path / "x.sqlite3")
    try:
        with pytest.raises(ValueError, match="empty time range"):
            await message_stats(store, start=T0, end=T0)
        with pytest.raises(ValueError, match="timezone-aware"):
            await template_performance(store, start=datetime(2026, 3, 1), end=datetime(2026, 3, 2))
    finally:
        await store.close()
    with pytest.raises(TypeError, match="SQLite or PostgreSQL"):
        await message_stats(object(), start=T0, end=T0 + HOUR)  # type: ignore[arg-type]


def test_percentile_is_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 0.5) == 25.0
    assert percentile([10.0, 20.0, 30.0, 40.0, 100.0], 0.95) == pytest.approx(88.0)


def test_numbered_placeholders() -> None:
    assert numbered("a = ? AND b < ? LIMIT ?") == "a = $1 AND b < $2 LIMIT $3"


# ---------------------------------------------------------------- omnichannel stats


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: None) -> Any:
    """Runs ``omnichannel stats`` on a SQLite store holding the fixture, the service's clock at T0 + 1 h."""
    path = tmp_path / "messages.sqlite3"

    async def fill() -> None:
        clock = SetClock(T0)
        store = SqliteMessageStore(path, clock=clock)
        try:
            await populate(store, clock)
        finally:
            await store.close()

    asyncio.run(fill())
    opened: list[str] = []

    def factory(url: str, clock: Any) -> SqliteMessageStore:
        opened.append(url)
        return SqliteMessageStore(path, clock=clock)

    settings = {"url": "postgresql://app:s3cret@db.example/messages"}
    config = ServiceConfig(plugins={"store": PluginSettings(settings=settings)})
    plugin = StorePlugin(factory)
    monkeypatch.setattr(
        omnichannel_store.stats_cli,
        "service_from_context",
        lambda: make_service(("store", plugin), config=config, clock=FakeClock(T0 + HOUR)),
    )

    def run(*args: str) -> Any:
        group = click.Group()
        group.add_command(stats_command(plugin))
        result = CliRunner().invoke(group, ["stats", *args])
        result.opened = list(opened)
        return result

    return run


def test_cli_json_defaults_to_the_last_24_hours(cli: Any) -> None:
    result = cli("--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    messages = document["messages"]
    assert (messages["start"], messages["end"]) == ("2026-02-28T13:00:00+00:00", "2026-03-01T13:00:00+00:00")
    assert messages["total"] == 10  # m0 to m9: m10 was created at the end, excluded
    assert [(row["template"], row["language"]) for row in document["templates"]] == [
        ("promo", "en"),
        ("welcome", "en"),
        ("welcome", "fr"),
    ]
    assert result.opened == ["postgresql://app:s3cret@db.example/messages"]


def test_cli_json_range_and_filters(cli: Any) -> None:
    result = cli(
        "--from", "2026-03-01T12:00", "--to", "2026-03-01T13:00:00+00:00", "--channel", "sms", "--json"
    )
    assert result.exit_code == 0, result.output
    messages = json.loads(result.output)["messages"]
    assert (messages["channel"], messages["total"], messages["delivery_rate"]) == ("sms", 3, 1.0)
    result = cli("--from", "2026-03-01T12:00", "--to", "2026-03-01T13:00", "--template", "promo", "--json")
    document = json.loads(result.output)
    assert (document["messages"]["total"], len(document["templates"])) == (2, 1)


def test_cli_tables(cli: Any) -> None:
    result = cli("--from", "2026-03-01T12:00", "--to", "2026-03-01T13:00")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "s3cret" not in out
    assert "postgresql://app:**********@db.example/messages" in out
    for text in (
        "delivery rate",
        "83.3%",
        "40.0%",
        "p50 30.0s, p95 88.0s (n=5)",
        "p50 85.0s, p95 98.5s (n=2)",
        "whatsapp 6, sms 3",
        "131026 2, 131047 1, 21211 1",
        "Template performance",
        "welcome",
        "75.0%",
    ):
        assert text in out, text


def test_cli_empty_range_and_bad_dates(cli: Any) -> None:
    result = cli("--from", "2026-01-01", "--to", "2026-01-02")
    assert result.exit_code == 0, result.output
    assert "no templated messages in the range" in result.output
    assert cli("--from", "yesterday").exit_code == 2
    result = cli("--from", "2026-03-02", "--to", "2026-03-01")
    assert result.exit_code == 2
    assert "is not before" in result.output


def test_cli_store_error(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr("omnichannel.store.analytics.message_stats", broken)
    result = cli("--json")
    assert result.exit_code == 1
    assert "message store postgresql://app:**********@db.example/messages: OSError: connection refused" in (
        result.output
    )
