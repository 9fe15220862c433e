"""The aggregates (``message_counts``, ``message_latencies``) against a recount, on SQLite and PostgreSQL.

Random sequences of sends, re-sends, statuses (duplicated, out of order, for unknown messages,
by message id), ``record_sends`` and ``record_statuses`` batches and retention leave the
aggregates equal to a recount from ``messages`` (``rebuild_aggregates``, the migration's
backfill), and ``message_stats`` / ``template_performance`` equal to a recount in Python from
``get()``: the counts exactly, exact percentiles equal to ``percentile_cont`` and approximate
ones within the documented bound.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_store_backends import PG_URL, pg_schema  # noqa: F401  (the fixture)
from test_store_rollup import bound

from omnichannel.message import DeliveryStatus
from omnichannel.store import MessageRecord, SendRecord, StatusUpdate
from omnichannel.store.analytics import (
    ErrorCount,
    Fetch,
    _backend,
    message_stats,
    percentile,
    template_performance,
)
from omnichannel.store.postgres import PostgresMessageStore
from omnichannel.store.sqlite import SqliteMessageStore
from omnichannel.testing import SetClock

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)  # 12 hours before a UTC midnight
Q, A, S, D, R, F = (DeliveryStatus(s) for s in ("queued", "accepted", "sent", "delivered", "read", "failed"))
CREATED = [-0.001, 0, 1800, 3599.999, 3600, 43199.999, 43200, 50000.25, 129600.5]
"""When sends are recorded (seconds after T0): on both sides of hours and of a midnight."""
TIMES = [0, 0.0004, 1, 2.5, 10, 100, 3600, 90000]
"""When statuses happen (seconds after T0): duplicates, any order, latencies from -25 h to 25 h."""
STARTS = [-0.5, 0, 1799, 3599.5, 3600, 43200, 50000.5]
ENDS = [1, 3600, 3600.5, 43200, 86400, 140000]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class World:
    """One store, the ids of every message sent to it, and its clock."""

    def __init__(self, store: Any, clock: SetClock) -> None:
        self.store, self.clock = store, clock
        self.message_ids: set[str] = set()
        self.examples = itertools.count()

    async def records(self) -> list[MessageRecord]:
        found = [await self.store.get(mid) for mid in sorted(self.message_ids)]
        return [record for record in found if record is not None]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """How to build a store on this test's database (PostgreSQL: skip/fail as test_store_backends)."""
    if request.param == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return lambda clock: PostgresMessageStore(PG_URL, clock=clock, schema=schema, pool_size=2)
    return lambda clock: SqliteMessageStore(tmp_path / "messages.sqlite3", clock=clock)


@pytest.fixture
async def world(backend: Any) -> Any:
    clock = SetClock(T0)
    store = backend(clock)
    yield World(store, clock)
    await store.close()


async def aggregate_rows(store: Any) -> tuple[dict[tuple[Any, ...], int], dict[tuple[Any, ...], int]]:
    """The non-zero rows of ``message_counts`` and ``message_latencies`` (none may be negative)."""
    _, run = _backend(store)

    async def work(fetch: Fetch) -> tuple[dict[tuple[Any, ...], int], dict[tuple[Any, ...], int]]:
        counts = await fetch(
            "SELECT span, period, channel, template, language, status, error_code, accepted, messages "
            "FROM message_counts",
            [],
        )
        latencies = await fetch(
            "SELECT span, period, channel, template, kind, bucket, messages FROM message_latencies", []
        )
        return (
            {tuple(row[:-1]): int(row[-1]) for row in counts if row[-1]},
            {tuple(row[:-1]): int(row[-1]) for row in latencies if row[-1]},
        )

    found = await run(work)
    assert all(n > 0 for table in found for n in table.values())
    return found  # type: ignore[no-any-return]


async def assert_aggregates_are_a_recount(store: Any) -> None:
    maintained = await aggregate_rows(store)
    await store.rebuild_aggregates()
    assert maintained == await aggregate_rows(store)


# ---------------------------------------------------------------- the expected stats, from get()


def _ranked(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _add(counts: dict[str, int], key: str | None) -> None:
    if key:
        counts[key] = counts.get(key, 0) + 1


def latencies(records: list[MessageRecord], end: str) -> list[float]:
    values = []
    for record in records:
        send = record.accepted_at or record.sent_at
        moment = getattr(record, f"{end}_at")
        if send is not None and moment is not None:
            values.append(max((moment - send).total_seconds(), 0.0))  # stamped before the send: 0
    return sorted(values)


def selected(
    records: list[MessageRecord], start: datetime, end: datetime, **filters: Any
) -> list[MessageRecord]:
    channel, template = filters.get("channel"), filters.get("template")
    return [
        record
        for record in records
        if start <= record.created_at < end
        and (channel is None or record.channel == channel)
        and (template is None or (template and record.template == template))
    ]


def tally(records: list[MessageRecord]) -> tuple[int, int, int, int, int]:
    accepted = sum(1 for r in records if r.accepted_at or r.sent_at or r.delivered_at)
    delivered = sum(1 for r in records if r.status in (D, R))
    read = sum(1 for r in records if r.status is R)
    failed = sum(1 for r in records if r.status is F)
    return len(records), accepted, delivered, read, failed


async def check_stats(world: World, start: datetime, end: datetime, **filters: Any) -> None:
    records = selected(await world.records(), start, end, **filters)
    exact = await message_stats(world.store, start=start, end=end, exact=True, **filters)
    approximate = await message_stats(world.store, start=start, end=end, exact=False, **filters)
    by_status = {status.value: 0 for status in DeliveryStatus}
    by_channel: dict[str, int] = {}
    by_template: dict[str, int] = {}
    codes: dict[str, int] = {}
    for record in records:
        by_status[record.status.value] += 1
        _add(by_channel, record.channel)
        _add(by_template, record.template)
        _add(codes, record.error_code)
    for stats in (exact, approximate):
        assert (stats.total, stats.accepted, stats.delivered, stats.read, stats.failed) == tally(records)
        assert stats.by_status == by_status
        assert list(stats.by_channel.items()) == list(_ranked(by_channel).items())
        assert list(stats.by_template.items()) == list(_ranked(by_template).items())
        assert stats.by_error_code == [ErrorCount(c, n) for c, n in _ranked(codes).items()][:10]
    for name in ("delivered", "read"):
        values = latencies(records, name)
        want = [percentile(values, 0.5), percentile(values, 0.95)]
        got_exact, got_approximate = getattr(exact, f"to_{name}"), getattr(approximate, f"to_{name}")
        assert (got_exact.count, got_approximate.count) == (len(values), len(values))
        assert [got_exact.p50, got_exact.p95] == pytest.approx(want, abs=1e-6)
        assert not got_exact.approximate
        assert got_approximate.approximate is bool(values)
        for fraction, got, exact_value in zip(
            (0.5, 0.95), (got_approximate.p50, got_approximate.p95), want, strict=True
        ):
            if values:
                assert abs(got - exact_value) <= bound(values, fraction) + 1e-6
            else:
                assert got is None


async def check_templates(world: World, start: datetime, end: datetime, template: str | None = None) -> None:
    records = [r for r in selected(await world.records(), start, end, template=template) if r.template]
    groups: dict[tuple[str, str | None], list[MessageRecord]] = {}
    for record in records:
        assert record.template is not None
        groups.setdefault((record.template, record.language or None), []).append(record)
    rows = await template_performance(world.store, start=start, end=end, template=template, top_errors=2)
    assert [(row.template, row.language) for row in rows] == sorted(
        groups, key=lambda key: (key[0], key[1] is not None, key[1] or "")
    )
    for row in rows:
        mine = groups[row.template, row.language]
        assert (row.total, row.sent, row.delivered, row.read, row.failed) == tally(mine)
        codes: dict[str, int] = {}
        for record in mine:
            _add(codes, record.error_code)
        assert row.top_errors == [ErrorCount(c, n) for c, n in _ranked(codes).items()][:2]


# ---------------------------------------------------------------- random sequences

message = st.integers(0, 5)
sends = st.tuples(
    st.just("send"),
    message,
    st.sampled_from([Q, A, A, F]),
    st.sampled_from(TIMES),
    st.sampled_from(CREATED),
    st.sampled_from([None, "welcome", "promo", ""]),
    st.sampled_from([None, "en", "fr", ""]),
    st.sampled_from([None, "131026", "21211", ""]),
)
statuses = st.tuples(
    st.just("status"),
    st.integers(0, 7),  # 6 and 7 are never sent: pending
    st.sampled_from([A, S, D, R, F]),
    st.sampled_from(TIMES),
    st.sampled_from([None, "131026", "131047"]),
    st.booleans(),  # found by message id
)
batches = st.tuples(
    st.just("batch"),
    st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from([S, D, R, F]), st.sampled_from(TIMES)),
        min_size=1,
        max_size=10,
    ),
)
send_batches = st.tuples(
    st.just("sends"),
    st.sampled_from(CREATED),
    st.lists(sends.map(lambda send: send[1:4] + send[5:]), min_size=1, max_size=8),
)
forgets = st.tuples(st.just("forget"), st.sampled_from(CREATED))
operations = st.lists(st.one_of(sends, statuses, batches, send_batches, forgets), min_size=3, max_size=25)


async def play(world: World, ops: list[tuple[Any, ...]]) -> None:
    prefix = f"x{next(world.examples)}-"

    def ids(i: int) -> tuple[str, str, str]:
        return f"{prefix}m{i}", f"{prefix}p{i}", "sms" if i % 2 else "whatsapp"

    def send(
        i: int, status: DeliveryStatus, when: float, template: Any, language: Any, code: Any
    ) -> SendRecord:
        mid, pid, channel = ids(i)
        world.message_ids.add(mid)
        return SendRecord(
            message_id=mid,
            channel=channel,
            status=status,
            at=at(when),
            recipient="+15550000000",
            provider_message_id=None if status is Q else pid,
            template=template,
            language=language,
            error_code=code if status is F else None,
            error_detail="why" if status is F else None,
        )

    for op in ops:
        if op[0] == "send":
            _, i, status, when, created, template, language, code = op
            world.clock.moment = at(created)
            record = send(i, status, when, template, language, code)
            await world.store.record_send(**attrs.asdict(record, recurse=False))
        elif op[0] == "sends":  # one time for the whole batch
            world.clock.moment = at(op[1])
            await world.store.record_sends([send(*fields) for fields in op[2]])
        elif op[0] == "status":
            _, i, status, when, code, by_id = op
            mid, pid, channel = ids(i)
            await world.store.record_status(
                channel=channel,
                provider_message_id=pid,
                status=status,
                at=at(when),
                message_id=mid if by_id else None,
                error_code=code if status is F else None,
            )
        elif op[0] == "batch":
            updates = []
            for i, status, when in op[1]:
                _, pid, channel = ids(i)
                updates.append(
                    StatusUpdate(channel, pid, status, at(when), error_code="9" if status is F else None)
                )
            await world.store.record_statuses(updates)
        else:
            await world.store.forget_details(at(op[1]))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each run replays on a database
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations, start=st.sampled_from(STARTS), end=st.sampled_from(ENDS))
async def test_aggregates_stay_a_recount_and_stats_match_get(
    world: World, ops: Any, start: float, end: float
) -> None:
    await play(world, ops)
    await assert_aggregates_are_a_recount(world.store)
    everything = (at(-86400), at(3 * 86400))
    await check_stats(world, *everything)
    await check_stats(world, *everything, channel="sms")
    await check_stats(world, *everything, template="welcome")
    await check_templates(world, *everything)
    if start < end:
        await check_stats(world, at(start), at(end))
        await check_templates(world, at(start), at(end), template="promo")
