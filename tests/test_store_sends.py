"""``record_sends``: a batch of sends in one transaction, against SQLite and the real PostgreSQL.

The reference is ``record_send`` one after the other on a second database (``twin``): the same
messages, histories, waiting statuses and aggregates, whatever the batch holds (new messages,
re-sends, one message twice, statuses that arrived before their send).
"""

import asyncio
import itertools
import random

import asyncpg
import attrs
import pytest
import test_store_backends as contract
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_store_aggregates import aggregate_rows, assert_aggregates_are_a_recount
from test_store_backends import PG_URL, A, D, F, Q, R, S, at, snapshot

from omnichannel.store import SendRecord, StatusUpdate, StoreError, postgres_sends
from omnichannel.store.analytics import Fetch, _backend
from omnichannel.store.postgres import PostgresMessageStore

# The contract's fixtures: each test runs on SQLite and on the real PostgreSQL.
backend, make, pg_schema, store, twin = (
    contract.backend,
    contract.make,
    contract.pg_schema,
    contract.store,
    contract.twin,
)


def sent(mid, status=A, seconds=0.0, pid=None, channel="whatsapp", **kwargs):
    return SendRecord(mid, channel, status, at(seconds), provider_message_id=pid, **kwargs)


async def status(store, status, seconds, pid, channel="whatsapp", **kwargs):
    await store.record_status(
        channel=channel, provider_message_id=pid, status=status, at=at(seconds), **kwargs
    )


async def one_by_one(store, sends):
    for send in sends:
        await store.record_send(**attrs.asdict(send, recurse=False))


async def waiting(store):
    """Every status still waiting for its send: (channel, provider id, status, time, code)."""
    _, run = _backend(store)

    async def work(fetch: Fetch):
        rows = await fetch(
            "SELECT channel, provider_message_id, status, occurred_at, error_code FROM pending_statuses", []
        )
        return sorted(tuple(row) for row in rows)

    return await run(work)


async def before(store):
    """What both databases hold before the batch: messages to re-send, statuses waiting."""
    await store.record_send(message_id="e1", channel="whatsapp", status=Q, at=at(0), template="t1")
    await one_by_one(store, [sent("e2", pid="p.e2", recipient="+1555", template="t2")])
    await status(store, S, 1, "p.e2")
    await status(store, F, 5, "p.e2", error_code="1", error_detail="first")
    await one_by_one(store, [sent("e3", pid="p.e3", language="en")])
    await status(store, D, 4, "p.e3", channel="sms")  # waits: no sms message has this id
    for event in [(S, 2), (D, 3), (D, 3), (F, 2.5)]:
        await status(store, *event, "p.new1", error_code="7" if event[0] is F else None)
    await status(store, D, 4, "p.e1")
    await status(store, R, 9, "p.shared")
    await status(store, D, 2, "p.never")  # no send of the batch takes it


BATCH = [
    *(sent(f"f{i}", pid=f"p.f{i}", seconds=i, recipient=f"+1555000{i}", template="promo") for i in range(5)),
    sent("new1", pid="p.new1", seconds=1),
    sent("e1", pid="p.e1", seconds=1, language="fr"),
    sent("e2", F, 5, error_code="2", error_detail="same time: dropped", error_kind="permanent"),
    sent("e2", S, 6),
    sent("dup", Q, 0, template="w"),
    sent("dup", A, 1, pid="p.dup", language="de", recipient="+1555999"),
    sent("dup", F, 7, error_code="9", error_detail="later", error_kind="transient"),
    sent("s1", pid="p.shared", seconds=1),
    sent("s2", pid="p.shared", seconds=2),
    sent("e3", seconds=3, pid="p.e3", channel="sms"),
    sent("ms", seconds=0.0004, pid="p.ms"),
    sent("ms", seconds=0.0001),  # the same millisecond: one entry on SQLite, two on PostgreSQL
    *(sent(f"g{i}", F, i, error_kind="permanent", error_code="100", error_detail="bad") for i in range(3)),
]
IDS = sorted({send.message_id for send in BATCH})


@pytest.mark.parametrize("size", [1000, 3, 1])
async def test_sends_give_the_same_state_as_one_by_one(make, twin, size):
    batched, single = make(), twin
    await before(batched)
    await before(single)
    for first in range(0, len(BATCH), size):
        await batched.record_sends(BATCH[first : first + size])
    await one_by_one(single, BATCH)
    got = await snapshot(batched, IDS)
    assert got == await snapshot(single, IDS)
    assert await waiting(batched) == await waiting(single)
    assert await aggregate_rows(batched) == await aggregate_rows(single)
    await assert_aggregates_are_a_recount(batched)
    records = {record.message_id: (record, history) for record, history in got}
    new1, history = records["new1"]
    assert (new1.status, new1.sent_at, new1.delivered_at, new1.failed_at, new1.error_code) == (
        D,
        at(2),
        at(3),
        at(2.5),
        "7",
    )
    assert [(e.status, e.occurred_at) for e in history] == [(A, at(1)), (S, at(2)), (F, at(2.5)), (D, at(3))]
    e2, history = records["e2"]
    assert (e2.status, e2.error_code, e2.error_detail, e2.error_kind, e2.recipient) == (
        F,
        "1",
        "first",
        "permanent",
        "+1555",
    )
    assert [e.status for e in history] == [A, S, F, S]
    dup, history = records["dup"]
    assert (dup.status, dup.provider_message_id, dup.template, dup.language, dup.recipient) == (
        F,
        "p.dup",
        "w",
        "de",
        "+1555999",
    )
    assert (dup.error_kind, dup.error_code, dup.accepted_at) == ("transient", "9", at(1))
    assert [e.status for e in history] == [Q, A, F]
    assert records["e1"][0].status is D
    assert (records["s1"][0].status, records["s2"][0].status) == (R, A)  # the first send takes them
    assert records["f3"][0].template == "promo"


async def test_duplicate_ids_in_a_batch_apply_in_order(store):
    await store.record_sends(
        [
            sent("m1", Q, 0, template="welcome", recipient="+1555"),
            sent("m1", A, 1, pid="wamid.1", language="en"),
            sent("m1", A, 1, pid="wamid.1"),
            sent("m1", F, 3, pid="wamid.2", error_code="131026", error_detail="undeliverable"),
        ]
    )
    record = await store.get("m1")
    assert (record.status, record.provider_message_id, record.template, record.language) == (
        F,
        "wamid.2",
        "welcome",
        "en",
    )
    assert (record.accepted_at, record.failed_at, record.error_code) == (at(1), at(3), "131026")
    assert [entry.status for entry in await store.history("m1")] == [Q, A, F]
    await status(store, D, 4, "wamid.2")  # found by the latest provider id
    assert (await store.get("m1")).status is D


async def test_waiting_statuses_are_applied_and_then_gone(store):
    await store.record_statuses(
        [StatusUpdate("whatsapp", "wamid.9", s, at(t)) for s, t in ((D, 3), (S, 2), (R, 5), (D, 3))]
    )
    await store.record_sends([sent("m9", pid="wamid.9", seconds=1), sent("m8", pid="wamid.8")])
    record = await store.get("m9")
    assert (record.status, record.sent_at, record.delivered_at, record.read_at) == (R, at(2), at(3), at(5))
    assert [entry.status for entry in await store.history("m9")] == [A, S, D, R]
    assert await waiting(store) == []
    await store.record_sends([sent("m10", pid="wamid.9", seconds=2)])
    assert (await store.get("m10")).status is A
    await assert_aggregates_are_a_recount(store)


async def test_empty_batch_is_a_no_op(store):
    await store.record_sends([])
    await store.record_sends([sent("m1", pid="wamid.1")])
    before_ = await snapshot(store, ["m1"])
    rows = await aggregate_rows(store)
    await store.record_sends(())
    assert await snapshot(store, ["m1"]) == before_
    assert await aggregate_rows(store) == rows


async def test_batches_from_several_stores_at_once_neither_deadlock_nor_lose(make):
    stores = [make() for _ in range(4)]
    await stores[0].record_sends([sent(f"m{i}", Q, 0) for i in range(0, 30, 3)])  # some exist
    await stores[0].record_statuses(
        [StatusUpdate("whatsapp", f"wamid.{i}", D, at(50)) for i in range(0, 30, 5)]
    )
    batches = []
    for b in range(8):
        rng = random.Random(b)
        chosen = rng.sample(range(30), 15)  # overlapping, new and existing, in different orders
        batches.append([sent(f"m{i}", A, i + b / 10, pid=f"wamid.{i}", template=f"t{b}") for i in chosen])
    statuses = [StatusUpdate("whatsapp", f"wamid.{i}", R, at(60)) for i in range(0, 30, 2)]
    await asyncio.wait_for(
        asyncio.gather(
            *(stores[b % 4].record_sends(batch) for b, batch in enumerate(batches)),
            stores[3].record_statuses(statuses),
        ),
        60,
    )
    for i in range(30):
        sends = {(A, s.at) for batch in batches for s in batch if s.message_id == f"m{i}"}
        queued = {(Q, at(0))} if i % 3 == 0 else set()
        # the statuses wait until a send names their provider id, whichever came first
        statuses = {(D, at(50))} if i % 5 == 0 else set()
        statuses |= {(R, at(60))} if i % 2 == 0 else set()
        history = await stores[1].history(f"m{i}")
        assert {(e.status, e.occurred_at) for e in history} == (sends | statuses if sends else set()) | queued
        record = await stores[2].get(f"m{i}")
        if not sends:
            assert None if record is None else record.status is (Q if queued else None)
            continue
        assert record.status is (R if i % 2 == 0 else D if i % 5 == 0 else A)
    await assert_aggregates_are_a_recount(stores[0])


TIMES = [0, 0.0004, 0.0001, 1, 2.5, 10]
pids = st.sampled_from(["own", "own", "shared", None])
channels = st.sampled_from(["whatsapp", "whatsapp", "sms"])
a_send = st.tuples(
    st.integers(0, 4),
    st.sampled_from([Q, A, A, S, D, F]),
    st.sampled_from(TIMES),
    pids,
    channels,
    st.sampled_from([None, "welcome", ""]),
    st.sampled_from([None, "en"]),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("sends"), st.lists(a_send, min_size=1, max_size=8)),
        st.tuples(
            st.just("status"),
            st.integers(0, 5),
            st.sampled_from([S, D, R, F]),
            st.sampled_from(TIMES),
            pids,
            channels,
        ),
    ),
    min_size=1,
    max_size=10,
)
EXAMPLES = itertools.count()


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each run replays on two databases
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
async def test_random_batches_match_one_by_one(make, twin, ops):
    batched = make()
    prefix = f"x{next(EXAMPLES)}-"

    def pid_of(i, kind):
        return None if kind is None else f"{prefix}{kind}{i if kind == 'own' else ''}"

    def send(i, status, seconds, pid, channel, template, language):
        failed = status is F
        return SendRecord(
            f"{prefix}m{i}",
            channel,
            status,
            at(seconds),
            recipient=f"+1555{i}" if status is not Q else None,
            provider_message_id=pid_of(i, pid),
            template=template,
            language=language,
            error_kind="permanent" if failed else None,
            error_code=str(i) if failed else None,
            error_detail=f"why {seconds}" if failed else None,
        )

    for op in ops:
        if op[0] == "sends":
            batch = [send(*fields) for fields in op[1]]
            await batched.record_sends(batch)
            await one_by_one(twin, batch)
        else:
            _, i, state, seconds, pid, channel = op
            for one in (batched, twin):
                await status(
                    one,
                    state,
                    seconds,
                    pid_of(i, pid or "own"),
                    channel,
                    error_code="e" if state is F else None,
                )
    ids = [f"{prefix}m{i}" for i in range(6)]
    assert await snapshot(batched, ids) == await snapshot(twin, ids)
    assert await waiting(batched) == await waiting(twin)
    assert await aggregate_rows(batched) == await aggregate_rows(twin)


async def _blocked_by(conn, pid):
    """The server pid of a backend that waits for ``pid``'s locks (polls the server; ``conn`` must
    be outside a transaction, whose view of ``pg_stat_activity`` would not change)."""
    for _ in range(1000):
        found = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
        )
        if found is not None:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing waits for backend {pid}")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_batch_plays_again_when_a_new_message_appears_meanwhile(make, twin):
    batched = make()
    assert isinstance(batched, PostgresMessageStore)
    other = make()
    for one in (batched, twin):
        await status(one, D, 3, "p.x")
        await one.record_send(message_id="warm", channel="whatsapp", status=A, at=at(0))
    plays = []
    write_sends = batched._write_sends

    async def counted(*args):
        plays.append(args[1])
        await write_sends(*args)

    batched._write_sends = counted
    holder = await asyncpg.connect(PG_URL, server_settings={"search_path": batched.schema})
    watcher = await asyncpg.connect(PG_URL)
    try:
        # The holder locks the waiting status, so a record_send of "x" stops after its insert,
        # before its commit; the batch then reads no "x", and its insert waits for that send.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM pending_statuses WHERE provider_message_id = 'p.x' FOR UPDATE")
        first = asyncio.create_task(
            other.record_send(
                message_id="x", channel="whatsapp", status=A, at=at(1), provider_message_id="p.x"
            )
        )
        sender = await _blocked_by(watcher, holder.get_server_pid())
        later = [sent("x", S, 2, template="late"), sent("y", pid="p.y", seconds=2)]
        second = asyncio.create_task(batched.record_sends(later))
        await _blocked_by(watcher, sender)
        await transaction.commit()
        await asyncio.wait_for(asyncio.gather(first, second), 30)
    finally:
        await holder.close()
        await watcher.close()
    assert len(plays) == 2  # the insert of "x" found the other's row: read and played again
    await one_by_one(twin, [sent("x", A, 1, pid="p.x"), *later])
    assert await snapshot(batched, ["x", "y"]) == await snapshot(twin, ["x", "y"])
    record = await batched.get("x")
    assert (record.status, record.template, record.delivered_at) == (D, "late", at(3))
    await assert_aggregates_are_a_recount(batched)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_batch_gives_up_when_new_messages_keep_appearing(store):
    assert isinstance(store, PostgresMessageStore)

    async def raced(*args):
        raise postgres_sends.Raced

    store._write_sends = raced
    with pytest.raises(StoreError, match="10 times in a row; try the batch again"):
        await store.record_sends([sent("m1", pid="wamid.1")])
    del store._write_sends
    await store.record_sends([sent("m1", pid="wamid.1")])
    assert (await store.get("m1")).status is A
