"""The bulkhead building block (shared/resilience.md §1.9; scenario TO-04), on looptime's virtual time.

``@pytest.mark.looptime`` runs the test's event loop on fake time: ``asyncio.sleep`` and timeouts
return at once and ``loop.time()`` moves by exactly the time slept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from omnichannel import Certainty, ErrorScope, InvalidField, RateLimitedError
from omnichannel_resilience.bulkhead import Bulkhead

pytestmark = pytest.mark.looptime


def now() -> float:
    return asyncio.get_running_loop().time()


async def attempt(
    bulkhead: Bulkhead, sender: str, hold_s: float, entries: list[tuple[str, float]], name: str
) -> None:
    """One attempt: enter the bulkhead, note when, hold the slot ``hold_s`` seconds."""
    async with bulkhead.slot(sender):
        entries.append((name, now()))
        await asyncio.sleep(hold_s)


async def started(*coros: Coroutine[Any, Any, None]) -> list[asyncio.Task[None]]:
    """Start the attempts in this order and let each reach its first wait."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    await asyncio.sleep(0)
    return tasks


async def test_the_common_case_does_not_wait() -> None:
    bulkhead = Bulkhead()
    start = now()
    async with bulkhead.slot("s"):
        assert bulkhead.in_flight("s") == 1
        assert bulkhead.in_flight_total == 1
        assert bulkhead.in_flight("other") == 0
    assert now() == start
    assert bulkhead.in_flight("s") == 0
    assert bulkhead.in_flight_total == 0


async def test_sender_cap() -> None:
    """Two slots per sender: the third attempt of ``s`` waits for one to free; ``t`` does not wait."""
    bulkhead = Bulkhead(sender_max_in_flight=2, global_max_in_flight=10, max_wait_s=5.0)
    entries: list[tuple[str, float]] = []
    start = now()
    tasks = await started(
        attempt(bulkhead, "s", 1.0, entries, "s1"),
        attempt(bulkhead, "s", 1.0, entries, "s2"),
        attempt(bulkhead, "s", 1.0, entries, "s3"),
        attempt(bulkhead, "t", 1.0, entries, "t1"),
    )
    assert bulkhead.in_flight("s") == 2
    assert bulkhead.waiting("s") == 1
    assert bulkhead.in_flight("t") == 1
    assert bulkhead.in_flight_total == 3
    await asyncio.gather(*tasks)
    assert [(name, t - start) for name, t in entries] == [("s1", 0.0), ("s2", 0.0), ("t1", 0.0), ("s3", 1.0)]
    assert now() - start == pytest.approx(2.0)
    assert bulkhead.rejected == 0
    assert len(bulkhead) == 0


async def test_global_cap() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=5, global_max_in_flight=2, max_wait_s=5.0)
    entries: list[tuple[str, float]] = []
    start = now()
    tasks = await started(
        attempt(bulkhead, "a", 1.0, entries, "a"),
        attempt(bulkhead, "b", 3.0, entries, "b"),
        attempt(bulkhead, "c", 1.0, entries, "c"),
    )
    assert bulkhead.in_flight_total == 2
    assert bulkhead.waiting() == 1  # c holds its sender slot and queues for the global one
    assert bulkhead.in_flight("c") == 0
    await asyncio.gather(*tasks)
    assert [(name, t - start) for name, t in entries] == [("a", 0.0), ("b", 0.0), ("c", 1.0)]


async def test_waiters_are_served_in_arrival_order() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=10, max_wait_s=10.0)
    entries: list[tuple[str, float]] = []
    start = now()
    tasks = await started(*(attempt(bulkhead, "s", 1.0, entries, f"m{i}") for i in range(5)))
    await asyncio.gather(*tasks)
    assert [(name, t - start) for name, t in entries] == [(f"m{i}", float(i)) for i in range(5)]


async def test_global_waiters_are_served_in_arrival_order() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=10, global_max_in_flight=1, max_wait_s=10.0)
    entries: list[tuple[str, float]] = []
    tasks = await started(*(attempt(bulkhead, sender, 1.0, entries, sender) for sender in "zyxw"))
    await asyncio.gather(*tasks)
    assert [name for name, _ in entries] == list("zyxw")


async def test_a_newcomer_does_not_overtake_a_waiter() -> None:
    """The freed slot goes to the waiter, even though the newcomer runs first."""
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=10, max_wait_s=10.0)
    held = bulkhead.slot("s")
    await held.__aenter__()
    entries: list[tuple[str, float]] = []
    [waiter] = await started(attempt(bulkhead, "s", 0.0, entries, "waiter"))
    await held.__aexit__(None, None, None)
    # The newcomer asks synchronously, before the waiter has resumed: the slot is no longer free.
    await attempt(bulkhead, "s", 0.0, entries, "newcomer")
    await waiter
    assert [name for name, _ in entries] == ["waiter", "newcomer"]


async def test_sender_cap_timeout_refuses_with_not_sent() -> None:
    """TO-04: no slot within max_wait_s → RateLimitedError, scope sender, not_sent, after exactly 2 s."""
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=10, max_wait_s=2.0)
    entries: list[tuple[str, float]] = []
    [holder] = await started(attempt(bulkhead, "123", 5.0, entries, "holder"))
    start = now()
    with pytest.raises(RateLimitedError) as raised:
        async with bulkhead.slot("123"):
            pytest.fail("the bulkhead let a second attempt in")
    assert now() - start == pytest.approx(2.0)
    error = raised.value
    assert error.detail == (
        "bulkhead: sender '123' has 1 attempt in flight (sender_max_in_flight); no slot freed within 2 s"
    )
    assert error.scope is ErrorScope.SENDER
    assert error.certainty is Certainty.NOT_SENT
    assert error.retry_after == 2.0
    assert error.retryable
    assert bulkhead.rejected == 1
    assert bulkhead.waiting("123") == 0
    assert bulkhead.in_flight("123") == 1  # the holder is untouched
    await holder
    assert len(bulkhead) == 0


async def test_global_cap_timeout_names_the_global_cap() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=5, global_max_in_flight=2, max_wait_s=1.5)
    entries: list[tuple[str, float]] = []
    holders = await started(
        attempt(bulkhead, "a", 5.0, entries, "a"),
        attempt(bulkhead, "b", 5.0, entries, "b"),
    )
    start = now()
    with pytest.raises(RateLimitedError) as raised:
        async with bulkhead.slot("c"):
            pytest.fail("the bulkhead let a third attempt in")
    assert now() - start == pytest.approx(1.5)
    assert raised.value.detail == (
        "bulkhead: 2 attempts in flight in all (global_max_in_flight); no slot freed within 1.5 s"
    )
    assert raised.value.retry_after == 1.5
    assert raised.value.scope is ErrorScope.SENDER
    assert raised.value.certainty is Certainty.NOT_SENT
    assert bulkhead.waiting() == 0
    assert len(bulkhead) == 2  # c's sender slot was given back and its state dropped
    await asyncio.gather(*holders)


async def test_a_slot_freed_in_time_is_taken() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=10, max_wait_s=2.0)
    entries: list[tuple[str, float]] = []
    start = now()
    tasks = await started(
        attempt(bulkhead, "s", 1.999, entries, "first"),
        attempt(bulkhead, "s", 0.0, entries, "second"),
    )
    await asyncio.gather(*tasks)
    assert [(name, t - start) for name, t in entries] == [("first", 0.0), ("second", pytest.approx(1.999))]
    assert bulkhead.rejected == 0


@pytest.mark.parametrize(
    ("sender_max", "global_max", "sender", "detail"),
    [
        (1, 10, "s", "bulkhead: sender 's' has 1 attempt in flight (sender_max_in_flight); max_wait_s is 0"),
        (10, 1, "t", "bulkhead: 1 attempt in flight in all (global_max_in_flight); max_wait_s is 0"),
    ],
)
async def test_max_wait_zero_refuses_at_once(
    sender_max: int, global_max: int, sender: str, detail: str
) -> None:
    bulkhead = Bulkhead(sender_max_in_flight=sender_max, global_max_in_flight=global_max, max_wait_s=0)
    entries: list[tuple[str, float]] = []
    [holder] = await started(attempt(bulkhead, "s", 1.0, entries, "holder"))
    start = now()
    with pytest.raises(RateLimitedError) as raised:
        async with bulkhead.slot(sender):
            pytest.fail("the bulkhead let an attempt in")
    assert now() == start
    assert raised.value.detail == detail
    assert raised.value.retry_after == 0.5  # not 0: a deferral must not become a busy loop
    assert bulkhead.waiting(sender) == 0
    assert bulkhead.waiting() == 0
    await holder
    assert len(bulkhead) == 0


async def test_cancelled_waiter_takes_no_slot() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=10, max_wait_s=10.0)
    entries: list[tuple[str, float]] = []
    start = now()
    holder, cancelled, third = await started(
        attempt(bulkhead, "s", 1.0, entries, "holder"),
        attempt(bulkhead, "s", 1.0, entries, "cancelled"),
        attempt(bulkhead, "s", 1.0, entries, "third"),
    )
    assert bulkhead.waiting("s") == 2
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert bulkhead.waiting("s") == 1
    await asyncio.gather(holder, third)
    assert [(name, t - start) for name, t in entries] == [("holder", 0.0), ("third", 1.0)]
    assert bulkhead.rejected == 0
    assert len(bulkhead) == 0


async def test_waiter_cancelled_after_the_hand_over_passes_the_slot_on() -> None:
    """The slot was handed to a waiter that is cancelled before it resumes: the next one gets it."""
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=10, max_wait_s=10.0)
    held = bulkhead.slot("s")
    await held.__aenter__()
    entries: list[tuple[str, float]] = []
    cancelled, third = await started(
        attempt(bulkhead, "s", 0.0, entries, "cancelled"),
        attempt(bulkhead, "s", 0.0, entries, "third"),
    )
    await held.__aexit__(None, None, None)  # hands the slot to ``cancelled``...
    cancelled.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await third
    assert [name for name, _ in entries] == ["third"]
    assert bulkhead.in_flight_total == 0
    assert len(bulkhead) == 0


async def test_cancelled_global_waiter_gives_its_sender_slot_back() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=1, max_wait_s=10.0)
    entries: list[tuple[str, float]] = []
    holder, cancelled = await started(
        attempt(bulkhead, "a", 1.0, entries, "holder"),
        attempt(bulkhead, "b", 1.0, entries, "cancelled"),
    )
    assert bulkhead.waiting() == 1
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert bulkhead.waiting() == 0
    assert len(bulkhead) == 1  # only the holder's sender
    async with bulkhead.slot("b"):  # b's own cap is free again
        pass
    await holder


async def test_slots_are_released_when_the_body_raises() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=1, max_wait_s=0)
    with pytest.raises(ValueError, match="boom"):
        async with bulkhead.slot("s"):
            raise ValueError("boom")
    assert bulkhead.in_flight("s") == 0
    assert bulkhead.in_flight_total == 0
    assert len(bulkhead) == 0
    async with bulkhead.slot("s"):  # max_wait 0: would refuse if anything leaked
        pass


async def test_slots_are_released_when_the_body_is_cancelled() -> None:
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=1, max_wait_s=0)
    entries: list[tuple[str, float]] = []
    [task] = await started(attempt(bulkhead, "s", 100.0, entries, "slow"))
    assert bulkhead.in_flight("s") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.in_flight_total == 0
    assert len(bulkhead) == 0


async def test_an_outer_timeout_is_not_a_refusal() -> None:
    """A caller's shorter timeout propagates as itself; nothing is counted as rejected or leaked."""
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=10, max_wait_s=5.0)
    entries: list[tuple[str, float]] = []
    [holder] = await started(attempt(bulkhead, "s", 3.0, entries, "holder"))
    start = now()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0), bulkhead.slot("s"):
            pytest.fail("the bulkhead let a second attempt in")
    assert now() - start == pytest.approx(1.0)
    assert bulkhead.rejected == 0
    assert bulkhead.waiting("s") == 0
    await holder
    assert len(bulkhead) == 0


async def test_memory_follows_live_senders() -> None:
    """Per-sender state is dropped once a sender has nothing in flight or waiting."""
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=20_000, max_wait_s=0.5)
    entries: list[tuple[str, float]] = []
    tasks = await started(*(attempt(bulkhead, f"sender-{i}", 1.0, entries, str(i)) for i in range(10_000)))
    assert len(bulkhead) == 10_000
    assert bulkhead.in_flight_total == 10_000
    refused = await asyncio.gather(
        *(attempt(bulkhead, "sender-0", 0.0, entries, "x") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(error, RateLimitedError) for error in refused)
    await asyncio.gather(*tasks)
    assert len(bulkhead) == 0
    assert bulkhead.in_flight_total == 0
    assert bulkhead.rejected == 3


async def test_looptime_keeps_the_suite_fast() -> None:
    """A 2 s wait for a slot costs no wall time (the rest of this file relies on it)."""
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=1, max_wait_s=2.0)
    entries: list[tuple[str, float]] = []
    [holder] = await started(attempt(bulkhead, "s", 60.0, entries, "holder"))
    wall = time.perf_counter()
    with pytest.raises(RateLimitedError):
        async with bulkhead.slot("s"):
            pass
    await holder
    assert time.perf_counter() - wall < 1.0


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"sender_max_in_flight": 0}, "sender_max_in_flight", "must be an integer >= 1, got 0"),
        ({"sender_max_in_flight": 2.5}, "sender_max_in_flight", "must be an integer >= 1, got 2.5"),
        ({"sender_max_in_flight": True}, "sender_max_in_flight", "must be an integer >= 1, got True"),
        ({"global_max_in_flight": -1}, "global_max_in_flight", "must be an integer >= 1, got -1"),
        ({"max_wait_s": -0.1}, "max_wait_s", "must be a finite number >= 0, got -0.1"),
        ({"max_wait_s": float("inf")}, "max_wait_s", "must be a finite number >= 0, got inf"),
        ({"max_wait_s": "2"}, "max_wait_s", "must be a finite number >= 0, got '2'"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidField) as raised:
        Bulkhead(**kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert str(raised.value) == problem


async def test_try_acquire_takes_free_slots_without_waiting_and_never_jumps_the_queue():
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=2, max_wait_s=5)
    held = bulkhead.try_acquire("a")
    assert held is not None
    assert (bulkhead.in_flight("a"), bulkhead.in_flight_total) == (1, 1)
    assert bulkhead.try_acquire("a") is None  # the sender's one slot is taken
    waiting = asyncio.create_task(_hold(bulkhead, "a"))
    await asyncio.sleep(0)
    bulkhead.release("a", held)  # handed to the waiter, not up for grabs
    assert bulkhead.try_acquire("a") is None
    await waiting
    assert bulkhead.in_flight_total == 0
    assert len(bulkhead) == 0  # idle senders are forgotten


async def test_acquire_waits_like_slot_and_release_settles_it():
    bulkhead = Bulkhead(sender_max_in_flight=1, global_max_in_flight=2, max_wait_s=1.0)
    first = await bulkhead.acquire("a")
    start = now()
    second = asyncio.create_task(bulkhead.acquire("a"))
    await asyncio.sleep(0.25)
    assert not second.done()
    assert bulkhead.waiting("a") == 1
    bulkhead.release("a", first)
    held = await second
    assert now() - start == pytest.approx(0.25)
    assert (bulkhead.in_flight("a"), bulkhead.in_flight_total) == (1, 1)
    with pytest.raises(RateLimitedError) as refused:  # nobody releases: refused after max_wait_s
        await bulkhead.acquire("a")
    assert refused.value.certainty is Certainty.NOT_SENT
    bulkhead.release("a", held)
    assert (bulkhead.in_flight_total, len(bulkhead)) == (0, 0)


async def _hold(bulkhead: Bulkhead, sender: str) -> None:
    async with bulkhead.slot(sender):
        await asyncio.sleep(0)
