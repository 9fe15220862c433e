"""SqliteMessageStore's thread: one round trip per operation, cancellation, closing."""

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest

from omnichannel.message import DeliveryStatus
from omnichannel.store import SendRecord, StatusUpdate, StoreError
from omnichannel.store.analytics import message_stats
from omnichannel.store.sqlite import SqliteMessageStore
from omnichannel.store.sqlite_stats import runner
from omnichannel.testing import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A, D = DeliveryStatus.ACCEPTED, DeliveryStatus.DELIVERED


class GateClock(FakeClock):
    """Once armed, the next ``now()`` (called by the operation, on the store's thread) waits for
    ``go``: the test then knows that operation is running."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.armed = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def now(self) -> datetime:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.go.wait(10)
        return super().now()


def sends(*ids: str) -> list[SendRecord]:
    return [SendRecord(i, "whatsapp", A, T0, provider_message_id=f"wamid.{i}", template="t") for i in ids]


@pytest.fixture
async def store(tmp_path):
    clock = GateClock()
    opened = SqliteMessageStore(tmp_path / "m.sqlite3", clock=clock)
    await opened.upgrade()
    yield opened
    clock.go.set()
    await opened.close()


def count_submits(store: SqliteMessageStore, monkeypatch) -> list[object]:
    calls: list[object] = []
    pool = store._pool
    assert pool is not None
    real = pool.submit

    def submit(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(pool, "submit", submit)
    return calls


async def test_every_operation_is_one_round_trip(store, monkeypatch):
    await store.record_sends(sends("m0", "m1"))
    calls = count_submits(store, monkeypatch)
    # New messages, an existing one (its history read), a status waiting for its send.
    await store.record_status(channel="whatsapp", provider_message_id="wamid.m9", status=D, at=T0)
    await store.record_sends(sends(*(f"m{i}" for i in range(1, 19))))
    await store.record_statuses([StatusUpdate("whatsapp", f"wamid.m{i}", D, T0) for i in range(5)])
    await store.record_send(message_id="x", channel="sms", status=A, at=T0)
    await store.get("m1")
    await store.history("m1")
    await store.schema_version()
    await message_stats(store, start=T0 - timedelta(days=1), end=T0 + timedelta(days=1))
    assert len(calls) == 8
    assert (await store.get("m9")).status is D


async def test_a_cancelled_running_operation_ends_its_transaction(store, tmp_path):
    store._clock.armed = True
    task = asyncio.create_task(store.record_sends(sends("m1", "m2")))
    assert await asyncio.to_thread(store._clock.entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store._clock.go.set()
    # It ran to its end on the thread (committed), and left the file unlocked.
    assert (await store.get("m2")).status is A
    other = SqliteMessageStore(tmp_path / "m.sqlite3", busy_timeout_s=0.5)
    try:
        await other.record_sends(sends("m3"))
    finally:
        await other.close()
    assert (await store.get("m3")) is not None


async def test_a_cancelled_queued_operation_never_runs(store):
    store._clock.armed = True
    running = asyncio.create_task(store.record_sends(sends("m1")))
    assert await asyncio.to_thread(store._clock.entered.wait, 10)
    queued = asyncio.create_task(store.record_sends(sends("m2")))
    await asyncio.sleep(0)
    queued.cancel()
    store._clock.go.set()
    await running
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await store.get("m1") is not None
    assert await store.get("m2") is None


async def test_close_finishes_the_operations_called_before_it(store, tmp_path):
    store._clock.armed = True
    first = asyncio.create_task(store.record_sends(sends("m1")))
    assert await asyncio.to_thread(store._clock.entered.wait, 10)
    second = asyncio.create_task(store.record_sends(sends("m2")))
    await asyncio.sleep(0)
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    with pytest.raises(StoreError, match="closed"):
        await store.get("m1")
    store._clock.go.set()
    await asyncio.gather(first, second, closing)
    assert store._db is None
    await store.close()  # again: nothing to do
    reopened = SqliteMessageStore(tmp_path / "m.sqlite3")
    try:
        assert [await reopened.get(m) is not None for m in ("m1", "m2")] == [True, True]
    finally:
        await reopened.close()


async def test_a_write_that_fails_is_rolled_back_and_wrapped(store):
    await store.record_sends(sends("m1"))

    def failing(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM messages")
        db.execute("SELECT * FROM no_such_table")

    with pytest.raises(StoreError, match=r"m\.sqlite3'.*: broken failed \(OperationalError: no such table"):
        await store._run("broken", failing, write=True)
    assert await store.get("m1") is not None


async def test_analytics_work_must_not_suspend(store):
    async def work(fetch):
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="awaited something other than its fetch"):
        await runner(store)(work)
    assert await store.get("m1") is None  # the read transaction was ended
