"""The message store contract, against SQLite and the real PostgreSQL, and the factory."""

import asyncio
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from omnichannel.errors import ConfigError
from omnichannel.message import DeliveryStatus
from omnichannel.store import StatusEntry, StatusUpdate, StoreError, open_message_store
from omnichannel.store.migrations import LATEST
from omnichannel.store.postgres import PostgresMessageStore
from omnichannel.store.sqlite import SqliteMessageStore
from omnichannel.testing import FakeClock

PG_URL = os.environ.get("OMNICHANNEL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
Q, A, S, D, R, F = (DeliveryStatus(s) for s in ("queued", "accepted", "sent", "delivered", "read", "failed"))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _pg(sql):
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=2)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_schema():
    """A schema of this test alone on the test PostgreSQL, dropped afterwards (skip/fail if none)."""
    import asyncpg

    try:
        asyncio.run(_pg("SELECT 1"))
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"no PostgreSQL at {PG_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the PostgreSQL tests must run")
        pytest.skip(f"{reason}; start one (or set OMNICHANNEL_TEST_POSTGRES_URL) to run this test")
    schema = f"omnichannel_test_{uuid.uuid4().hex}"
    yield schema
    asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """How to build a store on this test's database."""
    if request.param == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return lambda clock: PostgresMessageStore(PG_URL, clock=clock, schema=schema, pool_size=4)
    return lambda clock: SqliteMessageStore(tmp_path / "store" / "messages.sqlite3", clock=clock)


@pytest.fixture
async def make(backend):
    """A factory of stores on one database (every call a new store, closed afterwards)."""
    opened = []

    def make_one(clock=None):
        store = backend(clock or FakeClock(T0))
        opened.append(store)
        return store

    yield make_one
    for store in opened:
        await store.close()


@pytest.fixture
def store(make):
    return make()


async def send(store, message_id="m1", status=A, seconds=0.0, pid="wamid.1", **kwargs):
    await store.record_send(
        message_id=message_id,
        channel="whatsapp",
        status=status,
        at=at(seconds),
        provider_message_id=pid,
        **kwargs,
    )


async def status(store, status, seconds, pid="wamid.1", **kwargs):
    await store.record_status(
        channel="whatsapp", provider_message_id=pid, status=status, at=at(seconds), **kwargs
    )


async def test_queued_then_accepted_then_statuses(store):
    await store.record_send(
        message_id="m1", channel="whatsapp", status=Q, at=at(0), recipient="+33600000000", template="hello"
    )
    record = await store.get("m1")
    assert (record.status, record.provider_message_id, record.recipient, record.template) == (
        Q,
        None,
        "+33600000000",
        "hello",
    )
    assert record.created_at == T0
    await send(store, status=A, seconds=1, language="fr")
    await status(store, S, 2)
    await status(store, D, 3)
    await status(store, R, 4)
    record = await store.get("m1")
    assert record.status is R
    assert (record.provider_message_id, record.template, record.language) == ("wamid.1", "hello", "fr")
    assert (record.accepted_at, record.sent_at, record.delivered_at, record.read_at) == (
        at(1),
        at(2),
        at(3),
        at(4),
    )
    assert record.failed_at is None
    assert [entry.status for entry in await store.history("m1")] == [Q, A, S, D, R]
    assert (await store.history("m1"))[2] == StatusEntry(S, at(2))


async def test_duplicates_and_out_of_order_give_the_same_state(store):
    events = [(S, 2), (D, 3), (R, 5), (F, 4)]
    await send(store, "in-order", pid="p1")
    for event in events:
        await status(store, *event, pid="p1")
    await send(store, "shuffled", pid="p2")
    for event in [(R, 5), (S, 2), (R, 5), (F, 4), (D, 3), (S, 2), (D, 3)]:
        await status(store, *event, pid="p2")
    first, second = await store.get("in-order"), await store.get("shuffled")
    assert first.status is R
    same = {"message_id": "x", "provider_message_id": "x", "updated_at": T0}
    assert attrs.evolve(first, **same) == attrs.evolve(second, **same)
    history = await store.history("shuffled")
    assert history == await store.history("in-order")
    assert [entry.status for entry in history] == [A, S, D, F, R]
    assert [entry.occurred_at for entry in history] == [at(0), at(2), at(3), at(4), at(5)]


async def test_failed_then_delivered_is_delivered(store):
    await send(store)
    await status(store, F, 2, error_code="131047", error_detail="re-engagement")
    record = await store.get("m1")
    assert (record.status, record.error_code, record.error_detail, record.failed_at) == (
        F,
        "131047",
        "re-engagement",
        at(2),
    )
    await status(store, S, 1)
    assert (await store.get("m1")).status is F
    await status(store, D, 3)
    record = await store.get("m1")
    assert (record.status, record.delivered_at, record.failed_at, record.error_code) == (
        D,
        at(3),
        at(2),
        "131047",
    )


async def test_send_failed_keeps_its_error(store):
    await send(store, status=F, pid=None, error_kind="permanent", error_code="100", error_detail="bad number")
    record = await store.get("m1")
    assert (record.status, record.error_kind, record.error_code, record.error_detail) == (
        F,
        "permanent",
        "100",
        "bad number",
    )
    assert record.failed_at == at(0)


async def test_status_for_an_unknown_message_is_applied_when_the_send_is_recorded(store):
    await status(store, D, 3, pid="early")
    await status(store, D, 3, pid="early")
    await status(store, S, 2, pid="early")
    await status(store, R, 9, pid="other")
    assert await store.get("m1") is None
    await send(store, status=Q, pid=None)
    assert (await store.get("m1")).status is Q
    await send(store, status=A, seconds=1, pid="early")
    record = await store.get("m1")
    assert (record.status, record.sent_at, record.delivered_at) == (D, at(2), at(3))
    assert [entry.status for entry in await store.history("m1")] == [Q, A, S, D]
    await send(store, "m2", pid="early2")  # the other pending status stays pending
    assert (await store.get("m2")).status is A


async def test_status_found_by_message_id(store):
    await send(store, pid=None)
    await status(store, D, 2, pid="unknown-to-us", message_id="m1")
    assert (await store.get("m1")).status is D


async def test_unknown_message(store):
    assert await store.get("nope") is None
    assert await store.history("nope") == []


async def test_updated_at_follows_the_clock(make):
    clock = FakeClock(T0)
    store = make(clock)
    await send(store)
    clock.advance(60)
    await status(store, S, 1)
    record = await store.get("m1")
    assert (record.created_at, record.updated_at) == (T0, T0 + timedelta(seconds=60))


async def test_upgrade_is_idempotent_and_concurrent(make):
    stores = [make() for _ in range(4)]
    assert await asyncio.gather(*(store.upgrade() for store in stores)) == [LATEST] * 4
    assert await stores[0].upgrade() == LATEST


async def test_concurrent_statuses_from_two_stores(make):
    one, two = make(), make()
    await send(one)
    events = [(S, 2), (D, 3), (R, 4), (F, 1)] * 3
    await asyncio.gather(
        *(status(store, *event) for store, event in zip([one, two] * 6, events, strict=True))
    )
    record = await two.get("m1")
    assert (record.status, record.sent_at, record.delivered_at, record.read_at, record.failed_at) == (
        R,
        at(2),
        at(3),
        at(4),
        at(1),
    )
    assert len(await one.history("m1")) == 5


async def test_concurrent_send_and_status_lose_nothing(make):
    for n in range(10):
        one, two = make(), make()
        pid = f"race{n}"
        await asyncio.gather(send(one, f"m{n}", pid=pid), status(two, D, 3, pid=pid))
        assert (await one.get(f"m{n}")).status is D


async def test_closed_store_raises(store):
    await send(store)
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.get("m1")


async def test_sqlite_upgrade_from_two_processes(tmp_path):
    path = tmp_path / "shared.sqlite3"
    code = (
        "import asyncio, sys\n"
        "from omnichannel.store.sqlite import SqliteMessageStore\n"
        "async def main():\n"
        "    store = SqliteMessageStore(sys.argv[1])\n"
        "    print(await store.upgrade())\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=30)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert outputs == [str(LATEST)] * 3


async def test_postgres_unreachable_raises_store_error():
    store = PostgresMessageStore("postgresql://postgres:secret@127.0.0.1:1/test", connect_timeout_s=2)
    try:
        with pytest.raises(StoreError, match="cannot be opened") as caught:
            await store.get("m1")
        assert "secret" not in str(caught.value)
    finally:
        await store.close()


async def test_sqlite_unusable_path_raises_store_error(tmp_path):
    (tmp_path / "file").write_text("")
    store = SqliteMessageStore(tmp_path / "file" / "messages.sqlite3")
    with pytest.raises(StoreError, match="cannot be opened"):
        await store.get("m1")
    await store.close()


# -- the factory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/messages.sqlite3", "data/messages.sqlite3"),
        ("sqlite:////var/lib/omni.db", "/var/lib/omni.db"),
        ("data/messages.sqlite3", "data/messages.sqlite3"),
        ("  /tmp/x.sqlite  ", "/tmp/x.sqlite"),
    ],
)
def test_factory_sqlite(url, path):
    store = open_message_store(url)
    assert isinstance(store, SqliteMessageStore)
    assert store.path == path


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_factory_postgres(scheme):
    store = open_message_store(f"{scheme}://u:p@db:5432/omni?schema=omni_store&sslmode=disable")
    assert isinstance(store, PostgresMessageStore)
    assert store.schema == "omni_store"
    assert store.dsn == f"{scheme}://u:p@db:5432/omni?sslmode=disable"
    assert "p@" not in repr(store)
    assert open_message_store(f"{scheme}://db/omni").schema is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost", "is not a message store URL"),
        ("messages.txt", "is not a message store URL"),
        ("", "is not a message store URL"),
        ("sqlite://host/x.sqlite3", "has no host"),
        ("sqlite:///", "names no file"),
        ("postgresql://u:hidden@db/omni?schema=Bad-Name", "lower-case identifier"),
    ],
)
def test_factory_errors(url, message):
    with pytest.raises(ConfigError, match=message) as caught:
        open_message_store(url)
    assert all(line.startswith("store: ") for line in caught.value.errors)
    assert "hidden" not in str(caught.value)


async def test_forget_details_keeps_counts_and_times(make):
    clock = FakeClock(T0)
    store = make(clock)  # created_at is when the send is recorded, on the store's clock
    await send(store, "old", pid="p-old", recipient="+33600000001")
    await send(store, "failed", status=F, pid=None, recipient="+33600000002", error_detail="bad")
    await status(store, D, 5, pid="p-old")
    await status(store, D, 20, pid="p-unknown")  # waits for a send that never comes
    clock.advance(100)
    await send(store, "new", pid="p-new", recipient="+33600000003", seconds=100)
    assert await store.forget_details(at(50)) == 2
    old, failed, new = [await store.get(m) for m in ("old", "failed", "new")]
    assert (old.recipient, failed.recipient, failed.error_detail) == (None, None, None)
    assert (old.status, old.delivered_at, failed.status) == (D, at(5), F)  # counts and times stay
    assert new.recipient == "+33600000003"
    await send(store, "late", pid="p-unknown", seconds=200)
    assert (await store.get("late")).status is A  # the old pending status was dropped
    assert await store.forget_details(at(50)) == 0  # nothing left to forget


# -- record_statuses (batches) -------------------------------------------------------------------


@pytest.fixture
async def twin(make, tmp_path):
    """A store on a database of its own, to compare with ``make``'s."""
    if isinstance(make(), PostgresMessageStore):
        schema = f"omnichannel_test_{uuid.uuid4().hex}"
        other = PostgresMessageStore(PG_URL, clock=FakeClock(T0), schema=schema, pool_size=4)
        yield other
        await other.close()
        await _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        other = SqliteMessageStore(tmp_path / "twin" / "messages.sqlite3", clock=FakeClock(T0))
        yield other
        await other.close()


def update(pid, status, seconds, **kwargs):
    return StatusUpdate("whatsapp", pid, status, at(seconds), **kwargs)


def mixed_events(seed=7):
    """Statuses of m0..m5 (by provider id, some by message id), of unknown pids, failures with
    different errors at the same time; a third of them twice; shuffled."""
    events = []
    for i in range(6):
        pid = f"wamid.{i}"
        events += [update(pid, S, i + 1), update(pid, D, i + 2), update(pid, R, i + 30)]
        events.append(update(pid, F, i + 1.5, error_code="131", error_detail="first"))
        events.append(update(pid, F, i + 1.5, error_code="130", error_detail="same time"))
        events.append(update("ignored", S, i + 0.5, message_id=f"m{i}"))
    events += [update("late.1", D, 5), update("late.1", S, 4), update("late.2", F, 3, error_code="9")]
    rng = random.Random(seed)
    events += rng.sample(events, len(events) // 3)
    rng.shuffle(events)
    return events


async def snapshot(store, message_ids):
    return [(await store.get(mid), await store.history(mid)) for mid in message_ids]


async def send_all(store, *, lates=False):
    for i in range(6):
        await send(store, f"m{i}", pid=f"wamid.{i}", seconds=i)
    if lates:
        await send(store, "late1", pid="late.1", seconds=1)
        await send(store, "late2", pid="late.2", seconds=1)


@pytest.mark.parametrize("size", [1000, 7])
async def test_batch_gives_the_same_state_as_one_by_one(make, twin, size):
    batched, single = make(), twin
    await send_all(batched)
    await send_all(single)
    events = mixed_events()
    for first in range(0, len(events), size):
        await batched.record_statuses(events[first : first + size])
    for event in events:
        await single.record_status(**attrs.asdict(event, recurse=False))
    ids = [f"m{i}" for i in range(6)] + ["late1", "late2"]
    got = await snapshot(batched, ids)
    assert got == await snapshot(single, ids)
    assert all(record.status is R for record, _ in got[:6])
    assert got[0][0].error_code in ("130", "131")  # a (status, time) is kept once: the first seen
    assert [(e.status, e.occurred_at) for e in got[0][1]] == [
        (A, at(0)),
        (S, at(0.5)),
        (S, at(1)),
        (F, at(1.5)),
        (D, at(2)),
        (R, at(30)),
    ]
    assert got[6] == (None, [])
    # the unknown ones were kept and apply when their sends are recorded, the same way
    await send_all(batched, lates=True)
    await send_all(single, lates=True)
    got = await snapshot(batched, ids)
    assert got == await snapshot(single, ids)
    assert (got[6][0].status, got[6][0].sent_at, got[6][0].delivered_at) == (D, at(4), at(5))
    assert (got[7][0].status, got[7][0].error_code) == (F, "9")


async def test_batch_of_unknown_messages_is_pending_until_the_send(store):
    await store.record_statuses([update("wamid.9", D, 3), update("wamid.9", S, 2), update("wamid.9", D, 3)])
    assert await store.get("m9") is None
    await send(store, "m9", pid="wamid.9")
    record = await store.get("m9")
    assert (record.status, record.sent_at, record.delivered_at) == (D, at(2), at(3))
    assert [entry.status for entry in await store.history("m9")] == [A, S, D]


async def test_empty_batch_is_a_no_op(make):
    fresh = make()
    await fresh.record_statuses([])
    await send(fresh)
    before = (await fresh.get("m1"), await fresh.history("m1"))
    await fresh.record_statuses(())
    assert (await fresh.get("m1"), await fresh.history("m1")) == before


async def test_parallel_overlapping_batches_neither_deadlock_nor_lose(make):
    stores = [make() for _ in range(4)]
    for i in range(20):
        await send(stores[0], f"m{i}", pid=f"wamid.{i}", seconds=i)
    batches = []
    for b in range(8):
        rng = random.Random(b)
        chosen = rng.sample(range(20), 12)  # overlapping, in different orders
        batch = [
            update(f"wamid.{i}", status, i + 1 + rank) for i in chosen for rank, status in ((0, S), (1, D))
        ]
        if b % 2:
            batch += [update(f"wamid.{i}", R, i + 10) for i in chosen[::-1]]
        rng.shuffle(batch)
        batches.append(batch)
    await asyncio.wait_for(
        asyncio.gather(*(stores[b % 4].record_statuses(batch) for b, batch in enumerate(batches))), 60
    )
    expected = {(e.provider_message_id, e.status, e.at) for batch in batches for e in batch}
    for i in range(20):
        pid = f"wamid.{i}"
        mine = {(s, t) for p, s, t in expected if p == pid}
        history = await stores[1].history(f"m{i}")
        assert {(e.status, e.occurred_at) for e in history} == mine | {(A, at(i))}
        record = await stores[2].get(f"m{i}")
        top = R if (R, at(i + 10)) in mine else D if mine else A
        assert record.status is top
