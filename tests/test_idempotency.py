"""The KeyStore contract, run against every store: memory, SQLite and Redis."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

from omnichannel.idempotency import (
    KeyRecord,
    KeyState,
    KeyStore,
    MemoryKeyStore,
    RedisKeyStore,
    Settlement,
    SqliteKeyStore,
)
from omnichannel.testing import FakeClock

LEASE = 30.0

MakeStore = Callable[[], KeyStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request, tmp_path, fake_clock: FakeClock) -> MakeStore:
    """Makes stores of one kind that share their data and ``fake_clock`` (server time for Redis)."""
    if request.param == "memory":
        shared = MemoryKeyStore(fake_clock)
        return lambda: shared
    if request.param == "sqlite":
        return lambda: SqliteKeyStore(tmp_path / "keys.sqlite3", clock=fake_clock)
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisKeyStore(
        url, prefix=prefix, clock=fake_clock, now_ms=lambda: fake_clock.now().timestamp() * 1000
    )


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[KeyStore]:
    store = make_store()
    yield store
    await store.close()


# -- absent -------------------------------------------------------------------------------------------


async def test_an_absent_key_is_granted_with_a_lease(store: KeyStore, fake_clock: FakeClock) -> None:
    assert await store.get("k") is None
    claim = await store.claim("k", owner="w1", lease_s=LEASE)
    assert claim.granted
    record = claim.record
    assert record is not None
    assert (record.key, record.state, record.owner, record.attempts) == ("k", KeyState.IN_FLIGHT, "w1", 1)
    assert record.updated_at == fake_clock.now()
    assert record.lease_until == fake_clock.now() + timedelta(seconds=LEASE)
    assert (record.channel, record.provider_message_id, record.error) == (None, None, None)
    assert await store.get("k") == record


async def test_keys_are_independent(store: KeyStore) -> None:
    assert (await store.claim("a", owner="w1", lease_s=LEASE)).granted
    assert (await store.claim("b", owner="w2", lease_s=LEASE)).granted
    assert await store.get("c") is None


# -- in_flight ----------------------------------------------------------------------------------------


async def test_a_live_lease_refuses_other_claims(store: KeyStore, fake_clock: FakeClock) -> None:
    first = await store.claim("k", owner="w1", lease_s=LEASE)
    fake_clock.advance(LEASE - 1)
    for resend in (False, True):
        refused = await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=resend)
        assert not refused.granted
        assert refused.record == first.record
    # The holder itself is refused too: a lease is not re-entrant.
    assert not (await store.claim("k", owner="w1", lease_s=LEASE)).granted


async def test_an_expired_lease_makes_the_key_uncertain(store: KeyStore, fake_clock: FakeClock) -> None:
    first = await store.claim("k", owner="w1", lease_s=LEASE)
    fake_clock.advance(LEASE)  # lease_until == now: expired
    refused = await store.claim("k", owner="w2", lease_s=LEASE)
    assert not refused.granted
    record = refused.record
    assert record is not None
    assert (record.state, record.owner, record.attempts) == (KeyState.UNCERTAIN, "w1", 1)
    assert (record.lease_until, record.error) == (None, "lease expired")
    assert first.record is not None
    assert record.updated_at == first.record.updated_at  # as MemoryKeyStore: the claim's time
    assert await store.get("k") == record
    granted = await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=True)
    assert granted.granted
    assert granted.record is not None
    assert (granted.record.state, granted.record.owner, granted.record.attempts) == (
        KeyState.IN_FLIGHT,
        "w2",
        2,
    )
    assert granted.record.error is None


async def test_an_expired_lease_is_granted_at_once_with_resend_uncertain(
    store: KeyStore, fake_clock: FakeClock
) -> None:
    await store.claim("k", owner="w1", lease_s=1)
    fake_clock.advance(1.5)
    claim = await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=True)
    assert claim.granted
    assert claim.record is not None
    assert (claim.record.owner, claim.record.attempts) == ("w2", 2)


# -- sent ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider_message_id", ["wamid.1", None])
async def test_a_sent_key_is_never_granted_again(
    store: KeyStore, fake_clock: FakeClock, provider_message_id: str | None
) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    fake_clock.advance(2)
    await store.complete("k", owner="w1", channel="whatsapp", provider_message_id=provider_message_id)
    record = await store.get("k")
    assert record is not None
    assert (record.state, record.owner, record.attempts, record.lease_until) == (
        KeyState.SENT,
        "w1",
        1,
        None,
    )
    assert (record.channel, record.provider_message_id) == ("whatsapp", provider_message_id)
    assert record.updated_at == fake_clock.now()
    fake_clock.advance(10 * LEASE)
    for resend in (False, True):
        refused = await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=resend)
        assert not refused.granted
        assert refused.record == record


# -- failed, uncertain, forgotten ---------------------------------------------------------------------


async def test_a_final_release_fails_the_key_for_good(store: KeyStore, fake_clock: FakeClock) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    fake_clock.advance(1)
    await store.release("k", owner="w1", error="PermanentDeliveryError: bad recipient", final=True)
    record = await store.get("k")
    assert record is not None
    assert (record.state, record.error, record.lease_until) == (
        KeyState.FAILED,
        "PermanentDeliveryError: bad recipient",
        None,
    )
    assert record.updated_at == fake_clock.now()
    for resend in (False, True):
        assert not (await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=resend)).granted


async def test_final_wins_over_uncertain(store: KeyStore) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    await store.release("k", owner="w1", error="boom", final=True, uncertain=True)
    record = await store.get("k")
    assert record is not None
    assert record.state is KeyState.FAILED


async def test_an_uncertain_key_is_granted_only_with_resend_uncertain(store: KeyStore) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    await store.release("k", owner="w1", error="read timeout", final=False, uncertain=True)
    refused = await store.claim("k", owner="w2", lease_s=LEASE)
    assert not refused.granted
    assert refused.record is not None
    assert (refused.record.state, refused.record.error) == (KeyState.UNCERTAIN, "read timeout")
    granted = await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=True)
    assert granted.granted
    assert granted.record is not None
    assert (granted.record.attempts, granted.record.error) == (2, None)


async def test_a_non_final_release_forgets_the_key(store: KeyStore) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    await store.release("k", owner="w1", error="connect refused", final=False)
    assert await store.get("k") is None
    claim = await store.claim("k", owner="w2", lease_s=LEASE)
    assert claim.granted
    assert claim.record is not None
    assert claim.record.attempts == 1  # forgotten: counting starts again


async def test_attempts_count_every_granted_claim(store: KeyStore, fake_clock: FakeClock) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    await store.release("k", owner="w1", error="timeout", final=False, uncertain=True)
    await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=True)
    fake_clock.advance(LEASE + 1)  # w2 crashed
    assert not (await store.claim("k", owner="w3", lease_s=LEASE)).granted  # refusals do not count
    claim = await store.claim("k", owner="w3", lease_s=LEASE, resend_uncertain=True)
    assert claim.record is not None
    assert claim.record.attempts == 3
    await store.complete("k", owner="w3", channel="whatsapp", provider_message_id="wamid.3")
    record = await store.get("k")
    assert record is not None
    assert (record.state, record.attempts) == (KeyState.SENT, 3)


# -- only the lease holder ----------------------------------------------------------------------------


async def test_a_late_owner_changes_nothing(store: KeyStore, fake_clock: FakeClock) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    fake_clock.advance(LEASE + 1)
    current = (await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=True)).record
    await store.complete("k", owner="w1", channel="whatsapp", provider_message_id="late")
    await store.release("k", owner="w1", error="late", final=True)
    await store.release("k", owner="w1", error="late", final=False, uncertain=True)
    await store.release("k", owner="w1", error="late", final=False)
    assert await store.get("k") == current
    await store.complete("k", owner="w2", channel="whatsapp", provider_message_id="wamid.2")
    record = await store.get("k")
    assert record is not None
    assert (record.state, record.provider_message_id) == (KeyState.SENT, "wamid.2")


async def test_a_settled_key_cannot_be_settled_again(store: KeyStore) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    await store.complete("k", owner="w1", channel="whatsapp", provider_message_id="wamid.1")
    sent = await store.get("k")
    await store.complete("k", owner="w1", channel="sms", provider_message_id="other")
    await store.release("k", owner="w1", error="late", final=False)
    await store.release("k", owner="w1", error="late", final=True)
    assert await store.get("k") == sent


async def test_settling_an_absent_key_does_nothing(store: KeyStore) -> None:
    await store.complete("k", owner="w1", channel="whatsapp", provider_message_id="wamid.1")
    await store.release("k", owner="w1", error="x", final=True)
    await store.release("k", owner="w1", error="x", final=False, uncertain=True)
    assert await store.get("k") is None


# -- settle: a status webhook carrying our key ---------------------------------------------------------


async def test_settle_turns_an_uncertain_key_sent(store: KeyStore, fake_clock: FakeClock) -> None:
    claimed = (await store.claim("k", owner="w1", lease_s=LEASE)).record
    await store.release("k", owner="w1", error="read timeout", final=False, uncertain=True)
    fake_clock.advance(3)
    assert await store.settle("k", channel="whatsapp", provider_message_id="wamid.1")
    record = await store.get("k")
    assert claimed is not None
    assert record == KeyRecord(
        "k",
        KeyState.SENT,
        "w1",
        1,
        fake_clock.now(),
        channel="whatsapp",
        provider_message_id="wamid.1",
    )
    for resend in (False, True):  # the reconcile policy does not resend it
        refused = await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=resend)
        assert (refused.granted, refused.record) == (False, record)


async def test_settle_with_an_error_fails_the_key(store: KeyStore) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    await store.release("k", owner="w1", error="read timeout", final=False, uncertain=True)
    changed = await store.settle(
        "k", channel="whatsapp", provider_message_id="wamid.1", error="131026: message undeliverable"
    )
    assert changed
    record = await store.get("k")
    assert record is not None
    assert (record.state, record.error, record.channel, record.provider_message_id, record.lease_until) == (
        KeyState.FAILED,
        "131026: message undeliverable",
        "whatsapp",
        "wamid.1",
        None,
    )
    assert not (await store.claim("k", owner="w2", lease_s=LEASE, resend_uncertain=True)).granted


async def test_settle_takes_an_in_flight_key_from_its_owner(store: KeyStore, fake_clock: FakeClock) -> None:
    # The webhook may come before the send's own response: the lease is still live.
    await store.claim("k", owner="w1", lease_s=LEASE)
    fake_clock.advance(1)
    assert await store.settle("k", channel="whatsapp", provider_message_id=None)
    settled = await store.get("k")
    assert settled is not None
    assert (settled.state, settled.owner, settled.lease_until, settled.provider_message_id) == (
        KeyState.SENT,
        "w1",
        None,
        None,
    )
    # The old owner's late outcome changes nothing, whatever it is.
    await store.complete("k", owner="w1", channel="whatsapp", provider_message_id="wamid.late")
    await store.release("k", owner="w1", error="late", final=True)
    await store.release("k", owner="w1", error="late", final=False, uncertain=True)
    await store.release("k", owner="w1", error="late", final=False)
    assert await store.get("k") == settled


async def test_settle_takes_an_expired_lease(store: KeyStore, fake_clock: FakeClock) -> None:
    await store.claim("k", owner="w1", lease_s=LEASE)
    fake_clock.advance(LEASE + 1)
    assert await store.settle("k", channel="whatsapp", provider_message_id="wamid.1")
    record = await store.get("k")
    assert record is not None
    assert (record.state, record.attempts) == (KeyState.SENT, 1)


async def test_settle_leaves_other_keys_alone(store: KeyStore) -> None:
    await store.claim("sent", owner="w1", lease_s=LEASE)
    await store.complete("sent", owner="w1", channel="whatsapp", provider_message_id="wamid.1")
    await store.claim("failed", owner="w1", lease_s=LEASE)
    await store.release("failed", owner="w1", error="bad number", final=True)
    before = [await store.get("sent"), await store.get("failed")]
    for key in ("sent", "failed", "never-seen"):
        for error in (None, "131026"):
            assert not await store.settle(key, channel="sms", provider_message_id="other", error=error)
    assert [await store.get("sent"), await store.get("failed")] == before
    assert await store.get("never-seen") is None  # most webhooks are for keys we never stored


async def test_settle_many_settles_in_order_and_counts_the_changes(store: KeyStore) -> None:
    for key in ("a", "b", "c"):
        await store.claim(key, owner="w1", lease_s=LEASE)
    await store.release("b", owner="w1", error="timeout", final=False, uncertain=True)
    await store.complete("c", owner="w1", channel="whatsapp", provider_message_id="wamid.c")
    changed = await store.settle_many(
        [
            Settlement("a", "whatsapp", "wamid.a"),
            Settlement("b", "whatsapp", "wamid.b", error="131049: not delivered"),
            Settlement("c", "whatsapp", "wamid.other"),  # already sent
            Settlement("x", "whatsapp", "wamid.x"),  # never seen
            Settlement("a", "whatsapp", "wamid.again"),  # the same key twice: the first wins
        ]
    )
    assert changed == 2
    records = {key: await store.get(key) for key in ("a", "b", "c", "x")}
    assert records["x"] is None
    assert {key: (r.state, r.provider_message_id, r.error) for key, r in records.items() if r} == {
        "a": (KeyState.SENT, "wamid.a", None),
        "b": (KeyState.FAILED, "wamid.b", "131049: not delivered"),
        "c": (KeyState.SENT, "wamid.c", None),
    }
    assert await store.settle_many([]) == 0


def test_a_settlement_is_a_frozen_value() -> None:
    settlement = Settlement("k", "whatsapp", "wamid.1")
    assert settlement.error is None
    with pytest.raises(AttributeError):
        settlement.key = "other"  # type: ignore[misc]


# -- concurrency --------------------------------------------------------------------------------------


async def test_fifty_coroutines_racing_for_one_key_get_one_grant(make_store: MakeStore) -> None:
    stores = [make_store(), make_store()]  # two stores on one backend, where the kind allows it
    try:
        claims = await asyncio.gather(
            *(stores[i % 2].claim("k", owner=f"w{i}", lease_s=LEASE) for i in range(50))
        )
    finally:
        for each in {id(s): s for s in stores}.values():
            await each.close()
    winners = [claim for claim in claims if claim.granted]
    assert len(winners) == 1
    assert winners[0].record is not None
    assert all(claim.record == winners[0].record for claim in claims)


RACER = """
import asyncio, sys
from omnichannel.idempotency import RedisKeyStore, open_key_store

async def main(url, prefix, owner, count):
    store = RedisKeyStore(url, prefix=prefix) if prefix else open_key_store(url)
    granted = []
    try:
        await store.open()
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(count):
            if (await store.claim(f"key-{i}", owner=owner, lease_s=60)).granted:
                granted.append(f"key-{i}")
    finally:
        await store.close()
    print("\\n".join(granted), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def race(url: str, prefix: str, count: int = 200) -> list[list[str]]:
    """Two processes claim the same ``count`` keys at the same moment; the keys each was granted."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            url,
            prefix,
            f"proc{n}",
            str(count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 60)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0]
    return [out.decode().split() for out, _ in outputs]


async def test_two_processes_racing_on_one_sqlite_file(tmp_path) -> None:
    granted = await race(f"sqlite:///{tmp_path / 'keys.sqlite3'}", "")
    everything = granted[0] + granted[1]
    assert sorted(everything) == sorted(f"key-{i}" for i in range(200))  # each exactly once


async def test_two_processes_racing_on_one_redis(redis_url: str, redis_prefix: str) -> None:
    granted = await race(redis_url, redis_prefix)
    everything = granted[0] + granted[1]
    assert sorted(everything) == sorted(f"key-{i}" for i in range(200))
