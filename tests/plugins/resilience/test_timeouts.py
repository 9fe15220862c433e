"""The watchdog behind per-attempt timeouts: one timer for every attempt in flight.

Deadlines are a few milliseconds of the loop's clock; hanging attempts wait on events that are
never set, so no test sleeps for a result it could await.
"""

from __future__ import annotations

import asyncio

import pytest

from omnichannel_resilience.timeouts import Watchdog


async def run(watchdog: Watchdog, timeout_s: float, work: asyncio.Future[str] | None = None) -> str:
    """An attempt as the middleware runs one: ``timed out`` when the watchdog cancelled it."""
    watch = watchdog.watch(timeout_s)
    try:
        return await (work if work is not None else asyncio.Event().wait())  # type: ignore[return-value]
    except asyncio.CancelledError:
        if watch.expired():
            return "timed out"
        raise
    finally:
        watchdog.forget(watch)


async def test_an_attempt_past_its_deadline_is_cancelled_and_told_apart():
    watchdog = Watchdog(resolution_s=0.001)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await run(watchdog, 0.005) == "timed out"
    assert loop.time() - started >= 0.005
    assert len(watchdog) == 0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_attempt_that_finishes_in_time_is_forgotten_and_the_timer_stops():
    watchdog = Watchdog(resolution_s=0.001)
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    done.set_result("ok")
    assert await run(watchdog, 10.0, done) == "ok"
    assert len(watchdog) == 0
    await asyncio.sleep(0.003)  # a tick finds nothing to watch and does not re-arm
    assert watchdog._timer is None


async def test_a_cancellation_from_elsewhere_is_not_a_timeout():
    watchdog = Watchdog(resolution_s=0.001)
    task = asyncio.create_task(run(watchdog, 10.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(watchdog) == 0


async def test_many_attempts_share_one_timer_and_each_gets_its_own_deadline():
    watchdog = Watchdog(resolution_s=0.001)
    slow = [asyncio.create_task(run(watchdog, 0.002)) for _ in range(50)]
    quick_future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    quick = asyncio.create_task(run(watchdog, 10.0, quick_future))
    assert await asyncio.gather(*slow) == ["timed out"] * 50
    assert len(watchdog) == 1  # the attempt with the long deadline still runs
    quick_future.set_result("ok")
    assert await quick == "ok"


async def test_each_attempt_is_watched_in_its_own_task():
    watchdog = Watchdog(resolution_s=0.001)

    async def watched() -> asyncio.Task[object] | None:
        watch = watchdog.watch(10.0)
        watchdog.forget(watch)
        return watch.task

    tasks = [asyncio.create_task(watched()) for _ in range(3)]
    assert await asyncio.gather(*tasks) == tasks


def test_a_watchdog_serves_one_loop_after_another():
    # The watchdog remembers the loop of its last watch; a later loop is found anew.
    watchdog = Watchdog(resolution_s=0.001)
    assert asyncio.run(run(watchdog, 0.002)) == "timed out"
    assert asyncio.run(run(watchdog, 0.002)) == "timed out"


def test_the_resolution_must_be_positive():
    with pytest.raises(ValueError, match="resolution_s must be > 0, got 0"):
        Watchdog(resolution_s=0)
