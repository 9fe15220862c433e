"""Group commit of the store plugin: concurrent events share writes, and no event is lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from omnichannel import (
    DeliveryStatus,
    ErrorInfo,
    Message,
    MessageSent,
    Receipt,
    StatusChanged,
    Text,
)
from omnichannel.store import MessageStore, open_message_store
from omnichannel_store.writer import GroupWriter

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class CountingStore:
    """Forwards to a real store and counts the calls; refuses the message ids in ``refuse``."""

    def __init__(self, store: MessageStore, refuse: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.refuse = refuse
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def record_send(self, **fields: Any) -> None:
        self.calls.append("record_send")
        if self.gate is not None:
            await self.gate.wait()
        if fields["message_id"] in self.refuse:
            raise ValueError(f"refused {fields['message_id']}")
        await self.store.record_send(**fields)

    async def record_sends(self, sends: Any) -> None:
        self.calls.append("record_sends")
        refused = [send.message_id for send in sends if send.message_id in self.refuse]
        if refused:
            raise ValueError(f"refused {refused[0]}")
        await self.store.record_sends(sends)

    async def record_status(self, **fields: Any) -> None:
        self.calls.append("record_status")
        await self.store.record_status(**fields)

    async def record_statuses(self, updates: Any) -> None:
        self.calls.append("record_statuses")
        await self.store.record_statuses(updates)


def sent(n: int) -> MessageSent:
    message = Message(f"+1555000{n:04d}", Text("hi"), channel="recording", id=f"m{n}")
    receipt = Receipt(f"m{n}", "recording", DeliveryStatus.ACCEPTED, provider_message_id=f"p{n}")
    return MessageSent(message, receipt, occurred_at=T0)


def status(n: int, value: DeliveryStatus, seconds: int = 1, **fields: Any) -> StatusChanged:
    return StatusChanged("recording", f"p{n}", value, occurred_at=T0 + timedelta(seconds=seconds), **fields)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = open_message_store(f"sqlite:///{tmp_path / 'messages.sqlite3'}")
    await opened.upgrade()
    yield CountingStore(opened)
    await opened.close()


async def test_concurrent_events_share_writes_and_all_land(store: CountingStore) -> None:
    writer = GroupWriter(store, max_batch=100)
    sends = [sent(n) for n in range(50)]
    statuses = [status(n, DeliveryStatus.DELIVERED) for n in range(50)]
    statuses += [status(n, DeliveryStatus.READ, seconds=2) for n in range(0, 50, 2)]

    await asyncio.gather(*(writer.write(event) for event in [*sends, *statuses]))

    # All 125 events queue before the writer runs: two batches of at most 100 events, the first
    # with its 50 sends in one transaction and its 50 statuses in another, the second 25 statuses.
    assert store.calls == ["record_sends", "record_statuses", "record_statuses"]
    for n in range(50):
        record = await store.get(f"m{n}")
        assert record is not None
        assert record.status is (DeliveryStatus.READ if n % 2 == 0 else DeliveryStatus.DELIVERED)


async def test_a_status_that_outruns_its_send_in_one_batch_is_applied(store: CountingStore) -> None:
    writer = GroupWriter(store)
    await asyncio.gather(writer.write(status(1, DeliveryStatus.DELIVERED)), writer.write(sent(1)))
    record = await store.get("m1")
    assert record is not None
    assert record.status is DeliveryStatus.DELIVERED


async def test_only_the_refused_event_fails_the_others_are_kept(tmp_path: Path) -> None:
    real = open_message_store(f"sqlite:///{tmp_path / 'messages.sqlite3'}")
    await real.upgrade()
    store = CountingStore(real, refuse=frozenset({"m3"}))
    writer = GroupWriter(store)
    try:
        results = await asyncio.gather(*(writer.write(sent(n)) for n in range(6)), return_exceptions=True)
        failures = [(n, r) for n, r in enumerate(results) if r is not None]
        # The batch is refused as a whole, then written one send at a time: only m3 fails.
        assert store.calls == ["record_sends"] + ["record_send"] * 6
        assert len(failures) == 1
        assert failures[0][0] == 3
        assert str(failures[0][1]) == "refused m3"
        for n in (0, 1, 2, 4, 5):
            assert await real.get(f"m{n}") is not None
        assert await real.get("m3") is None
    finally:
        await real.close()


async def test_drain_waits_for_queued_events_and_a_cancelled_caller_loses_nothing(
    store: CountingStore,
) -> None:
    writer = GroupWriter(store)
    store.gate = asyncio.Event()
    first = asyncio.create_task(writer.write(sent(1)))
    second = asyncio.create_task(writer.write(sent(2)))
    await asyncio.sleep(0)  # both queued; the first batch waits at the gate
    second.cancel()
    draining = asyncio.create_task(writer.drain())
    await asyncio.sleep(0)
    assert not draining.done()
    store.gate.set()
    await draining
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await store.get("m1") is not None
    assert await store.get("m2") is not None  # its caller gave up waiting; the write still happened


async def test_failed_status_keeps_its_error(store: CountingStore) -> None:
    writer = GroupWriter(store)
    await writer.write(sent(7))
    error = ErrorInfo("PermanentDeliveryError", "not on WhatsApp", code=131026)
    await writer.write(status(7, DeliveryStatus.FAILED, error=error))
    record = await store.get("m7")
    assert record is not None
    assert (record.status, record.error_code, record.error_detail) == (
        DeliveryStatus.FAILED,
        "131026",
        "not on WhatsApp",
    )
