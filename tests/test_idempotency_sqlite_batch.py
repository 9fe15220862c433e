"""SqliteKeyStore's group commit: batches, an operation that fails alone, a transaction that fails,
cancellation, close with work queued, two connections on one file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from omnichannel.idempotency import KeyState, KeyStoreError, Settlement, SqliteKeyStore
from omnichannel.testing import FakeClock

LEASE = 30.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.sqlite3"


@pytest.fixture
async def store(path: Path, fake_clock: FakeClock) -> AsyncIterator[SqliteKeyStore]:
    store = SqliteKeyStore(path, clock=fake_clock)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def other(path: Path, store: SqliteKeyStore) -> Iterator[sqlite3.Connection]:
    """Another connection to the same file (another process, as far as SQLite can tell)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0.05)) as db:
        yield db


def rows(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, state FROM idempotency_keys ORDER BY key").fetchall())


async def yield_to_the_flush() -> None:
    """Two loop iterations: the callers queue, then the flush hands the batch to the thread."""
    for _ in range(2):
        await asyncio.sleep(0)


# -- group commit -------------------------------------------------------------------------------------


async def test_concurrent_callers_share_transactions(
    store: SqliteKeyStore, other: sqlite3.Connection
) -> None:
    before = store.batches

    async def send(i: int) -> None:
        assert (await store.claim(f"k{i}", owner="w", lease_s=LEASE)).granted
        await store.complete(f"k{i}", owner="w", channel="whatsapp", provider_message_id=f"wamid.{i}")

    await asyncio.gather(*(send(i) for i in range(50)))
    # 100 operations: the 50 claims in one transaction, the 50 completions in another.
    assert store.batches - before == 2
    assert rows(other) == {f"k{i}": "sent" for i in range(50)}


async def test_many_tasks_claiming_the_same_keys_get_one_grant_each(store: SqliteKeyStore) -> None:
    claims = await asyncio.gather(
        *(store.claim(f"k{i % 20}", owner=f"w{i}", lease_s=LEASE) for i in range(200))
    )
    for key in range(20):
        mine = [claim for claim in claims[key::20]]
        winners = [claim for claim in mine if claim.granted]
        assert len(winners) == 1
        assert all(claim.record == winners[0].record for claim in mine)


async def test_two_connections_on_one_file(path: Path, fake_clock: FakeClock) -> None:
    first, second = SqliteKeyStore(path, clock=fake_clock), SqliteKeyStore(path, clock=fake_clock)
    try:
        claims = await asyncio.gather(
            *(
                store.claim(f"k{i}", owner=name, lease_s=LEASE)
                for i in range(100)
                for store, name in ((first, "a"), (second, "b"))
            )
        )
        assert sum(claim.granted for claim in claims) == 100  # each key once, by one of them
        winner = {claim.record.key: claim.record.owner for claim in claims if claim.granted and claim.record}
        for i in range(100):
            store = first if winner[f"k{i}"] == "a" else second
            await store.complete(f"k{i}", owner=winner[f"k{i}"], channel="whatsapp", provider_message_id=None)
        refused = await second.claim("k0", owner="c", lease_s=LEASE, resend_uncertain=True)
        assert refused.record is not None
        assert (refused.granted, refused.record.state) == (False, KeyState.SENT)
    finally:
        await first.close()
        await second.close()


# -- errors -------------------------------------------------------------------------------------------


async def test_an_operation_that_fails_fails_alone(
    store: SqliteKeyStore, other: sqlite3.Connection, path: Path
) -> None:
    other.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON idempotency_keys WHEN NEW.key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned key'); END"
    )
    before = store.batches
    results = await asyncio.gather(
        store.claim("a", owner="w", lease_s=LEASE),
        store.claim("poison", owner="w", lease_s=LEASE),
        store.claim("b", owner="w", lease_s=LEASE),
        return_exceptions=True,
    )
    assert store.batches - before == 1  # all three in one transaction
    a, poison, b = results
    assert isinstance(poison, KeyStoreError)
    assert str(poison) == (
        f"idempotency key store {str(path)!r}: claim of key 'poison' failed (IntegrityError: poisoned key)"
    )
    for granted in (a, b):
        assert not isinstance(granted, BaseException)
        assert granted.granted
    assert rows(other) == {"a": "in_flight", "b": "in_flight"}


async def test_a_settle_many_that_fails_changes_none_of_its_keys(
    store: SqliteKeyStore, other: sqlite3.Connection
) -> None:
    for key in ("a", "poison", "b"):
        await store.claim(key, owner="w", lease_s=LEASE)
    other.execute(
        "CREATE TRIGGER poison BEFORE UPDATE ON idempotency_keys WHEN NEW.key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned key'); END"
    )
    before = store.batches
    results = await asyncio.gather(
        store.settle_many([Settlement(key, "whatsapp", None) for key in ("a", "poison", "b")]),
        store.settle("b", channel="whatsapp", provider_message_id="wamid.b"),
        return_exceptions=True,
    )
    assert store.batches - before == 1
    failed, settled = results
    assert isinstance(failed, KeyStoreError)
    assert str(failed).endswith(": settle of 3 keys failed (IntegrityError: poisoned key)")
    assert settled is True  # the same batch's other operation went through
    assert rows(other) == {"a": "in_flight", "b": "sent", "poison": "in_flight"}


async def test_a_failed_transaction_fails_every_operation_and_keeps_nothing(
    store: SqliteKeyStore, other: sqlite3.Connection
) -> None:
    await store.claim("done", owner="w", lease_s=LEASE)
    other.execute(
        "CREATE TRIGGER doom BEFORE INSERT ON idempotency_keys WHEN NEW.key = 'doom' "
        "BEGIN SELECT RAISE(ROLLBACK, 'doomed'); END"
    )
    results = await asyncio.gather(
        store.claim("a", owner="w", lease_s=LEASE),
        store.complete("done", owner="w", channel="whatsapp", provider_message_id=None),
        store.claim("doom", owner="w", lease_s=LEASE),
        store.claim("b", owner="w", lease_s=LEASE),
        return_exceptions=True,
    )
    assert all(isinstance(result, KeyStoreError) for result in results)
    assert [str(result).split(": ", 1)[1] for result in results] == [
        "claim of key 'a' failed (IntegrityError: doomed)",
        "complete of key 'done' failed (IntegrityError: doomed)",
        "claim of key 'doom' failed (IntegrityError: doomed)",
        "claim of key 'b' failed (IntegrityError: doomed)",
    ]
    assert rows(other) == {"done": "in_flight"}  # nothing of the batch was kept
    other.execute("DROP TRIGGER doom")
    assert (await store.claim("a", owner="w", lease_s=LEASE)).granted  # the store goes on


# -- cancellation -------------------------------------------------------------------------------------


async def test_a_claim_cancelled_in_the_queue_is_not_made(
    store: SqliteKeyStore, other: sqlite3.Connection
) -> None:
    other.execute("BEGIN IMMEDIATE")  # holds the batch in the thread
    first = asyncio.create_task(store.claim("first", owner="w", lease_s=LEASE))
    await yield_to_the_flush()
    queued = asyncio.create_task(store.claim("queued", owner="w", lease_s=LEASE))
    await asyncio.sleep(0)  # queued behind the running batch
    queued.cancel()
    other.execute("ROLLBACK")
    assert (await first).granted
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await store.get("queued") is None
    assert rows(other) == {"first": "in_flight"}


async def test_a_claim_granted_to_a_cancelled_caller_is_given_back(
    store: SqliteKeyStore, other: sqlite3.Connection
) -> None:
    await store.claim("old", owner="w1", lease_s=LEASE)
    await store.release("old", owner="w1", error="read timeout", final=False, uncertain=True)
    uncertain = await store.get("old")
    other.execute("BEGIN IMMEDIATE")
    new = asyncio.create_task(store.claim("new", owner="w2", lease_s=LEASE))
    old = asyncio.create_task(store.claim("old", owner="w2", lease_s=LEASE, resend_uncertain=True))
    await yield_to_the_flush()  # both are in the thread's batch now, waiting for the lock
    new.cancel()
    old.cancel()
    other.execute("ROLLBACK")
    await store.get("new")  # the batch ran; the given-back claims are queued before the next get
    assert await store.get("new") is None  # a new key: forgotten again
    assert await store.get("old") == uncertain  # as it was: uncertain, one attempt
    for task in (new, old):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_outcome_is_recorded_even_if_its_caller_is_cancelled(
    store: SqliteKeyStore, other: sqlite3.Connection
) -> None:
    for key in ("sent", "queued"):
        await store.claim(key, owner="w", lease_s=LEASE)
    other.execute("BEGIN IMMEDIATE")
    sent = asyncio.create_task(store.complete("sent", owner="w", channel="whatsapp", provider_message_id="1"))
    await yield_to_the_flush()
    queued = asyncio.create_task(store.release("queued", owner="w", error="boom", final=True))
    await asyncio.sleep(0)
    sent.cancel()
    queued.cancel()
    other.execute("ROLLBACK")
    await store.get("sent")
    assert rows(other) == {"queued": "failed", "sent": "sent"}


async def test_a_cancelled_batch_leaves_no_lock_and_no_wedged_queue(
    store: SqliteKeyStore, other: sqlite3.Connection
) -> None:
    other.execute("BEGIN IMMEDIATE")
    tasks = [asyncio.create_task(store.claim(f"k{i}", owner="w", lease_s=LEASE)) for i in range(10)]
    await yield_to_the_flush()
    for task in tasks:
        task.cancel()
    other.execute("ROLLBACK")
    await asyncio.gather(*tasks, return_exceptions=True)
    claim = await store.claim("after", owner="w", lease_s=LEASE)
    assert claim.granted
    other.execute("BEGIN IMMEDIATE")  # our connection holds no lock
    other.execute("ROLLBACK")
    assert rows(other) == {"after": "in_flight"}


# -- close --------------------------------------------------------------------------------------------


async def test_close_runs_what_is_queued_first(path: Path, fake_clock: FakeClock) -> None:
    store = SqliteKeyStore(path, clock=fake_clock)
    tasks = [asyncio.create_task(store.claim(f"k{i}", owner="w", lease_s=LEASE)) for i in range(20)]
    await asyncio.sleep(0)  # all queued, none run yet
    await store.close()
    assert all(task.done() and task.result().granted for task in tasks)
    with pytest.raises(KeyStoreError, match="is closed"):
        await store.get("k0")
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert len(rows(db)) == 20


async def test_close_waits_for_the_running_batch(store: SqliteKeyStore, other: sqlite3.Connection) -> None:
    other.execute("BEGIN IMMEDIATE")
    claim = asyncio.create_task(store.claim("k", owner="w", lease_s=LEASE))
    await yield_to_the_flush()
    closing = [asyncio.create_task(store.close()) for _ in range(2)]  # twice at once is fine
    await asyncio.sleep(0)
    assert not claim.done()
    other.execute("ROLLBACK")
    await asyncio.gather(*closing)
    assert (await claim).granted
    assert rows(other) == {"k": "in_flight"}


async def test_a_store_never_used_closes_without_opening(path: Path) -> None:
    store = SqliteKeyStore(path)
    await store.close()
    assert not path.exists()
    with pytest.raises(KeyStoreError, match="is closed"):
        await store.open()


def test_a_store_outlives_an_event_loop(path: Path) -> None:
    store = SqliteKeyStore(path)

    async def first() -> None:
        assert (await store.claim("k", owner="w1", lease_s=LEASE)).granted

    async def second() -> None:
        try:
            refused = await store.claim("k", owner="w2", lease_s=LEASE)
            assert refused.record is not None
            assert (refused.granted, refused.record.owner) == (False, "w1")
        finally:
            await store.close()

    asyncio.run(first())
    asyncio.run(second())
