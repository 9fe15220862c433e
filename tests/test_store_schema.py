"""Schema versions, the aggregates' migration (backfill) and rebuild, retention and concurrent
writers, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_store_aggregates import (
    T0,
    A,
    D,
    F,
    Q,
    R,
    S,
    aggregate_rows,
    assert_aggregates_are_a_recount,
    at,
)
from test_store_backends import PG_URL, pg_schema  # noqa: F401  (the fixture)

from omnichannel.store import StatusUpdate, StoreError
from omnichannel.store.analytics import message_stats, template_performance
from omnichannel.store.migrations import LATEST, LATEST_VERSION
from omnichannel.store.postgres import PostgresMessageStore
from omnichannel.store.sqlite import SqliteMessageStore
from omnichannel.testing import SetClock

DOWNGRADE = (
    "DROP TABLE message_counts",
    "DROP TABLE message_latencies",
    "DELETE FROM schema_version WHERE version > 1",
)
"""Back to schema version 1 (and PostgreSQL's bucket function dropped: :func:`downgrade`)."""


async def downgrade(store: Any) -> None:
    extra = (
        () if isinstance(store, SqliteMessageStore) else ("DROP FUNCTION omnichannel_latency_bucket(bigint)",)
    )
    await raw(store, *DOWNGRADE, *extra)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return lambda clock: PostgresMessageStore(PG_URL, clock=clock, schema=schema, pool_size=4)
    return lambda clock: SqliteMessageStore(tmp_path / "store" / "messages.sqlite3", clock=clock)


@pytest.fixture
async def make(backend: Any) -> Any:
    """Stores on one database (each with its own clock), closed afterwards."""
    opened = []

    def make_one(clock: SetClock | None = None) -> Any:
        store = backend(clock or SetClock(T0))
        opened.append(store)
        return store

    yield make_one
    for store in opened:
        await store.close()


async def raw(store: Any, *statements: str) -> list[Any]:
    """Run statements on the store's database around the store; the last one's rows."""
    if isinstance(store, SqliteMessageStore):
        db = sqlite3.connect(store.path, isolation_level=None)
        try:
            rows: list[Any] = []
            for statement in statements:
                rows = db.execute(statement).fetchall()
            return rows
        finally:
            db.close()
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": store.schema})
    try:
        found: list[Any] = []
        for statement in statements:
            found = await conn.fetch(statement)
        return found
    finally:
        await conn.close()


async def fill(store: Any, clock: SetClock) -> None:
    """Messages over a few hours and a midnight, every kind of status."""
    for i in range(12):
        clock.moment = at(i * 5000 - 1)
        pid = f"p{i}"
        status = (Q, A, A, F)[i % 4]
        await store.record_send(
            message_id=f"m{i}",
            channel=("whatsapp", "sms")[i % 2],
            status=status,
            at=at(i),
            provider_message_id=None if status is Q else pid,
            template=("welcome", None, "promo")[i % 3],
            language=("en", "fr")[i % 2],
            error_code="21211" if status is F else None,
            recipient="+15550000000",
        )
        if status is A:
            await store.record_status(
                channel=("whatsapp", "sms")[i % 2], provider_message_id=pid, status=S, at=at(i + 1)
            )
    await store.record_statuses(
        [
            StatusUpdate(("whatsapp", "sms")[i % 2], f"p{i}", status, at(i + offset))
            for i in (1, 2, 5, 6, 9, 10)
            for status, offset in ((D, 3), (R, 40), (D, 3))
        ]
        + [StatusUpdate("sms", "p1", F, at(2), error_code="131047"), StatusUpdate("sms", "unknown", D, at(5))]
    )


async def summary(store: Any) -> Any:
    start, end = at(-86400), at(3 * 86400)
    return (
        await message_stats(store, start=start, end=end),
        await message_stats(store, start=start, end=end, exact=False),
        await template_performance(store, start=start, end=end),
    )


def test_latest_version():
    assert LATEST_VERSION == LATEST == 2


async def test_schema_version_of_an_empty_database_is_zero_and_creates_nothing(make):
    store = make()
    assert await store.schema_version() == 0
    if isinstance(store, SqliteMessageStore):
        assert not Path(store.path).exists()
    else:
        assert await raw(store, f"SELECT 1 FROM pg_namespace WHERE nspname = '{store.schema}'") == []
    assert await store.schema_version() == 0
    assert await store.get("m1") is None  # first use: created and migrated
    assert await store.schema_version() == LATEST_VERSION
    assert await make().schema_version() == LATEST_VERSION  # a store that has not opened it yet
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.schema_version()


async def test_schema_version_reads_without_upgrading(make):
    clock = SetClock(T0)
    first = make(clock)
    await fill(first, clock)
    before = await summary(first)
    await first.close()
    await downgrade(first)
    old = make()
    assert await old.schema_version() == 1
    assert await old.schema_version() == 1  # still: reading it did not upgrade
    assert await old.upgrade() == LATEST_VERSION
    assert await old.schema_version() == LATEST_VERSION
    assert await summary(old) == before


async def test_migration_backfills_the_aggregates_once_with_concurrent_upgrades(make, tmp_path):
    clock = SetClock(T0)
    first = make(clock)
    await fill(first, clock)
    maintained = await aggregate_rows(first)
    before = await summary(first)
    assert before[0].total == 12
    await first.close()
    await downgrade(first)
    if isinstance(first, SqliteMessageStore):
        versions = upgrade_in_processes(first.path, 3)
    else:
        versions = await asyncio.gather(*(make().upgrade() for _ in range(3)))
    assert versions == [LATEST_VERSION] * 3
    store = make()
    assert await aggregate_rows(store) == maintained  # backfilled once, equal to the maintained ones
    assert await summary(store) == before
    await assert_aggregates_are_a_recount(store)


def upgrade_in_processes(path: str, count: int) -> list[int]:
    code = (
        "import asyncio, sys\n"
        "from omnichannel.store.sqlite import SqliteMessageStore\n"
        "async def main():\n"
        "    store = SqliteMessageStore(sys.argv[1], busy_timeout_s=30)\n"
        "    print(await store.upgrade())\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0] * count
    return [int(output) for output in outputs]


async def test_rebuild_counts_rows_written_around_the_store(make):
    clock = SetClock(T0)
    store = make(clock)
    await fill(store, clock)
    created = "1772366400000" if isinstance(store, SqliteMessageStore) else "'2026-03-01T12:00:00Z'"
    columns = "message_id, channel, status, created_at, updated_at, accepted_at, delivered_at"
    await raw(
        store,
        f"INSERT INTO messages ({columns}) VALUES ('bulk', 'email', 'delivered', {', '.join([created] * 4)})",
    )
    stale = await message_stats(store, start=at(-86400), end=at(3 * 86400), exact=False)
    assert (stale.total, stale.by_channel.get("email")) == (12, None)  # the aggregates do not know it
    await store.rebuild_aggregates()
    fresh = await message_stats(store, start=at(-86400), end=at(3 * 86400), exact=False)
    assert (fresh.total, fresh.by_channel["email"], fresh.to_delivered.count) == (
        13,
        1,
        stale.to_delivered.count + 1,
    )


async def test_retention_keeps_the_aggregates(make):
    clock = SetClock(T0)
    store = make(clock)
    await fill(store, clock)
    counts, before = await aggregate_rows(store), await summary(store)
    assert await store.forget_details(at(10 * 86400)) == 12
    assert (await store.get("m3")).error_code == "21211"  # the code stays, the detail goes
    assert await aggregate_rows(store) == counts
    assert await summary(store) == before
    await assert_aggregates_are_a_recount(store)


async def test_concurrent_writers_keep_the_aggregates(make):
    clock = SetClock(T0)
    stores = [make(clock) for _ in range(4)]
    for i in range(30):
        clock.moment = at(i * 600)
        await stores[0].record_send(
            message_id=f"m{i}",
            channel="whatsapp",
            status=A,
            at=at(i),
            provider_message_id=f"p{i}",
            template="t",
        )
    rng = random.Random(3)
    jobs = []
    for n in range(12):
        chosen = rng.sample(range(34), 10)  # 30 to 33: unknown until their sends below
        updates = [
            StatusUpdate("whatsapp", f"p{i}", rng.choice([S, D, R, F]), at(i + rng.randrange(60)))
            for i in chosen
        ]
        store = stores[n % 4]
        if n % 3:
            jobs.append(store.record_statuses(updates))
        else:
            jobs += [
                store.record_status(
                    **{k: getattr(u, k) for k in ("channel", "provider_message_id", "status", "at")}
                )
                for u in updates
            ]
        jobs.append(
            store.record_send(
                message_id=f"m{30 + n % 4}",
                channel="whatsapp",
                status=A,
                at=at(n),
                provider_message_id=f"p{30 + n % 4}",
            )
        )
    await asyncio.wait_for(asyncio.gather(*jobs), 120)  # no deadlock
    await assert_aggregates_are_a_recount(stores[1])
    stats = await message_stats(stores[2], start=at(-1), end=at(86400))
    records = [await stores[3].get(f"m{i}") for i in range(34)]
    assert stats.total == 34
    assert stats.delivered == sum(1 for record in records if record.status in (D, R))
    assert stats.to_delivered.count == sum(1 for record in records if record.delivered_at is not None)


async def test_a_role_without_create_can_use_a_current_postgres_schema(pg_schema):  # noqa: F811
    # Migrations run where the schema may change (`db upgrade`); the service's role only reads and writes.
    owner = PostgresMessageStore(PG_URL, clock=SetClock(T0), schema=pg_schema, pool_size=1)
    assert await owner.upgrade() == LATEST_VERSION
    await owner.close()
    role = f"omnichannel_test_{pg_schema[-12:]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {role}')
        await admin.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{pg_schema}" TO {role}'
        )
        await admin.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{pg_schema}" TO {role}')
        await admin.execute(f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA "{pg_schema}" TO {role}')
        url = PG_URL.replace("postgres@", f"{role}@", 1)
        store = PostgresMessageStore(url, clock=SetClock(T0), schema=pg_schema, pool_size=1)
        try:
            await store.record_send(
                message_id="m1", channel="whatsapp", status=A, at=at(0), provider_message_id="p1"
            )
            await store.record_status(channel="whatsapp", provider_message_id="p1", status=D, at=at(2))
            assert (await store.get("m1")).status is D
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
