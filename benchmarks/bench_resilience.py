"""Added latency of the resilience layer on the happy path, per message: in memory and with Redis.

Usage::

    python benchmarks/bench_resilience.py              # full run (about 60 s on 2 cores)
    python benchmarks/bench_resilience.py --quick      # smoke run (about 15 s)
    python benchmarks/bench_resilience.py --json       # machine-readable results on stdout
    python benchmarks/bench_resilience.py --strict     # exit 1 when a target is missed
    python benchmarks/bench_resilience.py --no-redis   # memory only
    python benchmarks/bench_resilience.py --profile    # cProfile of one send, recommended profile, memory
    python benchmarks/bench_resilience.py --breakdown  # each layer's own cost, in isolation

Every service is built with ``omnichannel.testing.make_service`` around a
``RecordingChannel`` (an in-memory channel that does no I/O) and the real
``SystemClock``, so what is measured is the framework alone. Scenarios:

* the channel only (the baseline);
* ``+ resilience`` with the ``recommended`` profile and ``shared_state = "memory"``:
  circuit breaker, retry with full jitter and a deadline, retry budget, sender and
  pair rate limits, bulkhead, a 10 s attempt timeout. The rate limits are loosened
  (``sender_max_mps = 1e9``; one message per 1 ms per pair with a burst of 1,000) so
  that they never wait or refuse: the messages cycle through 4,096 recipients of one
  sender, faster than WhatsApp's real limits allow;
* the same with one layer off in turn (``attempt_timeout_s = 0``, bulkhead, rate limits, retry
  budget, retry, circuit breaker), and with every layer off (the plugin's wrapper
  alone): where the microseconds go;
* the ``legacy`` profile (circuit breaker and retry only);
* the ``recommended`` and ``legacy`` profiles with ``shared_state = "redis"``
  against a real Redis (``--redis-url``, default ``redis://127.0.0.1:6379/0``), under
  a key prefix of this run alone whose keys are deleted at the end; and a bare
  ``PING`` on the same Redis, one round trip, for reference;
* a pure-Python loop that touches no omnichannel code: how fast the host was.

Each ``await service.send(message)`` is timed with ``time.perf_counter_ns`` after a
warm-up, sequentially (median, p99); an untimed pass over the same messages gives
CPU per message. As in ``bench_core.py`` each scenario is cut into slices run
round-robin with the others; a row gives the quietest slice (lowest median), and
"added" is that median minus the baseline's quietest median.

Redis commands per send are counted twice, in a dedicated pass after the timed
ones: on the client (every command the resilience stores' Redis clients send,
by command and by store: exact, ours only) and from the server's
``INFO commandstats`` before and after (server-wide: it includes whatever else
uses that Redis meanwhile; it is never reset). The circuit breaker re-reads the
shared state at most once per ``poll_interval_s`` (1 s) per breaker: that refresh is
time-driven, not per send, and is shown apart.

Targets: under 20 µs added per send in memory (recommended profile, median and
CPU per message; the legacy profile is judged too), and at most one Redis round
trip per send with Redis (time-driven breaker refreshes aside). The script exits 0
whatever the outcome; ``--strict`` makes a missed target exit 1. If Redis cannot be
reached or ``omnichannel_resilience.redis_state`` fails to import or to run, the
Redis rows are reported as not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
from _machine import machine

from omnichannel import Message, OmniChannelService, PluginSettings, ServiceConfig, SystemClock, Text
from omnichannel.testing import RecordingChannel, make_service
from omnichannel_resilience import ResiliencePlugin, runtime
from omnichannel_resilience.config import RateLimitSettings, ResilienceConfig

ADDED_TARGET_US = 20.0
"""Target: latency the resilience layer adds to one send in memory (median), in microseconds."""
REDIS_ROUND_TRIPS_TARGET = 1.0
"""Target: Redis round trips per send with ``shared_state = "redis"`` (time-driven refreshes aside)."""

CHANNEL = "recording"
POOL_SIZE = 4096
"""Distinct messages (and recipients) cycled through."""
DEFAULT_REDIS_URL = os.environ.get("OMNICHANNEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

LOOSE_RATE_LIMITS: dict[str, Any] = {
    "sender_max_mps": 1e9,
    "pair_interval_s": 0.001,
    "pair_burst": 1000,
}
"""Rate limits that never wait nor refuse here (the layer still runs: both GCRA keys per send)."""

BASELINE = "channel only (baseline)"
RECOMMENDED = "+ resilience, recommended, memory"
LEGACY = "+ resilience, legacy, memory"
REDIS_RECOMMENDED = "+ resilience, recommended, Redis"
REDIS_LEGACY = "+ resilience, legacy, Redis"
PING = "reference: Redis PING round trip"
REFERENCE = "reference: pure-Python loop"
REFERENCE_SPIN = 400

MEMORY_SCENARIOS: list[tuple[str, dict[str, Any] | None]] = [
    (BASELINE, None),
    (RECOMMENDED, {"rate_limit": LOOSE_RATE_LIMITS}),
    ("  recommended, attempt_timeout_s = 0", {"rate_limit": LOOSE_RATE_LIMITS, "attempt_timeout_s": 0}),
    ("  recommended, bulkhead off", {"rate_limit": LOOSE_RATE_LIMITS, "bulkhead": {"enabled": False}}),
    ("  recommended, rate limits off", {"rate_limit": {"enabled": False}}),
    (
        "  recommended, retry budget off",
        {"rate_limit": LOOSE_RATE_LIMITS, "retry_budget": {"enabled": False}},
    ),
    ("  recommended, retry off", {"rate_limit": LOOSE_RATE_LIMITS, "retry": {"enabled": False}}),
    (
        "  recommended, circuit breaker off",
        {"rate_limit": LOOSE_RATE_LIMITS, "circuit_breaker": {"enabled": False}},
    ),
    (
        "  every layer off (the wrapper alone)",
        {
            "attempt_timeout_s": 0,
            "circuit_breaker": {"enabled": False},
            "retry": {"enabled": False},
            "retry_budget": {"enabled": False},
            "rate_limit": {"enabled": False},
            "bulkhead": {"enabled": False},
        },
    ),
    (LEGACY, {"profile": "legacy"}),
]


# ---------------------------------------------------------------- set-up


@attrs.define
class Rig:
    """A (not yet started) service and its recording channel."""

    service: OmniChannelService
    channel: RecordingChannel


def build_rig(settings: dict[str, Any] | None) -> Rig:
    """The recording channel, plus the resilience plugin configured with ``settings`` unless ``None``."""
    channel = RecordingChannel(CHANNEL)
    plugins: list[object] = [channel]
    config = None
    if settings is not None:
        plugins.append(("resilience", ResiliencePlugin(random.Random(7))))
        config = ServiceConfig(plugins={"resilience": PluginSettings(settings=settings)})
    return Rig(make_service(*plugins, config=config, clock=SystemClock()), channel)


def redis_settings(profile: str, url: str, prefix: str) -> dict[str, Any]:
    """``profile`` with shared state in Redis at ``url``, its keys under ``prefix``."""
    settings: dict[str, Any] = {
        "profile": profile,
        "shared_state": "redis",
        "redis_url": url,
        "redis_prefix": prefix,
    }
    if profile == "recommended":
        settings["rate_limit"] = LOOSE_RATE_LIMITS
    return settings


def message_pool(size: int = POOL_SIZE) -> list[Message]:
    """``size`` messages from one sender to distinct recipients (built before any timing starts)."""
    content = Text("Your verification code is 493027. It expires in 10 minutes.")
    return [Message(f"+1555{i:07d}", content, channel=CHANNEL) for i in range(size)]


# ---------------------------------------------------------------- statistics


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@attrs.define
class Slice:
    """The statistics of one slice of a scenario (times in nanoseconds)."""

    median: float
    p99: float
    cpu: float
    """CPU per message of the untimed pass."""
    wall: float
    """Wall time per message of the untimed pass."""


@attrs.define
class Result:
    """One row of the table (times in microseconds); medians from the quietest slice."""

    name: str
    n: int = 0
    median_us: float | None = None
    p99_us: float | None = None
    cpu_us: float | None = None
    msgs_per_s: float | None = None
    pooled_median_us: float | None = None
    slice_medians_us: list[float] = attrs.field(factory=list)
    added_us: float | None = None
    """Median minus the baseline's median."""
    added_cpu_us: float | None = None
    """CPU per message minus the baseline's."""
    redis: RedisCount | None = None
    note: str = ""
    measured: bool = True

    @property
    def noise(self) -> float:
        """Slowest slice median over quietest slice median (1.0 = a quiet machine)."""
        if not self.slice_medians_us:
            return 1.0
        return max(self.slice_medians_us) / min(self.slice_medians_us)


@attrs.define
class RedisCount:
    """Redis commands of a dedicated pass of ``sends`` messages."""

    sends: int
    seconds: float
    client: dict[str, int] = attrs.field(factory=dict)
    """Commands the stores' clients sent, as ``"<command> <store>"`` (exact; ours only)."""
    server: dict[str, int] = attrs.field(factory=dict)
    """``INFO commandstats`` deltas by command (server-wide)."""
    poll_interval_s: float = 1.0
    storage_errors: int = 0
    server_usec: dict[str, int] = attrs.field(factory=dict)
    """``INFO commandstats`` deltas of the time the server spent, by command (µs; scripts include
    the commands they run)."""

    @property
    def per_send(self) -> float:
        """Client-side round trips per send, everything included."""
        return sum(self.client.values()) / self.sends

    @property
    def breaker_refreshes(self) -> int:
        return sum(count for key, count in self.client.items() if key.endswith(" breaker"))

    @property
    def per_send_on_path(self) -> float:
        """Round trips per send made because of the send (time-driven breaker refreshes left out)."""
        return (sum(self.client.values()) - self.breaker_refreshes) / self.sends

    @property
    def refreshes_allowed(self) -> int:
        """At most one breaker refresh per ``poll_interval_s`` (plus the first)."""
        return math.floor(self.seconds / self.poll_interval_s) + 1

    def server_per_send(self, *commands: str) -> float:
        return sum(self.server.get(c, 0) for c in commands) / self.sends


# ---------------------------------------------------------------- measuring

SendFn = Callable[[Message], Awaitable[Any]]


async def timed_calls(send: SendFn, pool: list[Message], first: int, n: int) -> list[int]:
    """Each call of ``send`` timed, over ``n`` messages of the pool from ``first``."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    size = len(pool)
    for i in range(first, first + n):
        message = pool[i % size]
        start = clock()
        await send(message)
        samples.append(clock() - start)
    return samples


async def untimed(send: SendFn, pool: list[Message], first: int, n: int) -> tuple[int, int]:
    """Send ``n`` messages with no per-call timing; return the (CPU, wall) nanoseconds spent."""
    size = len(pool)
    cpu_start, wall_start = time.process_time_ns(), time.perf_counter_ns()
    for i in range(first, first + n):
        await send(pool[i % size])
    return time.process_time_ns() - cpu_start, time.perf_counter_ns() - wall_start


def spin(iterations: int = REFERENCE_SPIN) -> int:
    """Pure-Python busy work with no allocation: the machine's own speed."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


@attrs.define
class Scenario:
    """One way of sending, timed slice by slice; a failure leaves it "not measured" with the reason."""

    name: str
    start_fn: Callable[[contextlib.AsyncExitStack], Awaitable[SendFn]]
    per_slice: int
    after_warm: Callable[[], Awaitable[None]] | None = None
    """Run after the warm-up (the layer exists then); raising marks the scenario not measured."""
    check: Callable[[int], str | None] | None = None
    """Called with every send made after the warm-up; returns what went wrong, if anything."""
    extra_pass: Callable[[Scenario], Awaitable[None]] | None = None
    """Run once after the timed slices (the Redis command count)."""
    send: SendFn | None = None
    pool: list[Message] = attrs.field(factory=message_pool)
    slices: list[Slice] = attrs.field(factory=list)
    samples: list[int] = attrs.field(factory=list)
    cursor: int = 0
    extra_sends: int = 0
    failure: str | None = None
    redis: RedisCount | None = None

    async def start(self, warm: int, stack: contextlib.AsyncExitStack) -> None:
        try:
            self.send = await self.start_fn(stack)
            await untimed(self.send, self.pool, 0, warm)
            if self.after_warm is not None:
                await self.after_warm()
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        self.failure = f"{type(exc).__name__}: {exc}"
        self.send = None

    async def run_slice(self) -> None:
        if self.send is None:
            return
        n = self.per_slice
        try:
            gc.collect()
            timed = await timed_calls(self.send, self.pool, self.cursor, n)
            gc.collect()
            cpu, wall = await untimed(self.send, self.pool, self.cursor, n)
        except Exception as exc:
            self.fail(exc)
            return
        ordered = sorted(timed)
        self.slices.append(Slice(statistics.median(ordered), percentile(ordered, 99), cpu / n, wall / n))
        self.samples += timed
        self.cursor += n

    async def run_extra(self) -> None:
        if self.send is None or self.extra_pass is None:
            return
        try:
            await self.extra_pass(self)
        except Exception as exc:
            self.fail(exc)

    def result(self) -> Result:
        if self.failure is None and self.slices and self.check is not None:
            self.failure = self.check(2 * len(self.samples) + self.extra_sends)
        if self.failure is not None or not self.slices:
            return Result(self.name, note=f"not measured: {self.failure}", measured=False)
        best = min(self.slices, key=lambda s: s.median)
        return Result(
            name=self.name,
            n=len(self.samples),
            median_us=best.median / 1000,
            p99_us=best.p99 / 1000,
            cpu_us=min(s.cpu for s in self.slices) / 1000,
            msgs_per_s=1e9 / min(s.wall for s in self.slices),
            pooled_median_us=statistics.median(self.samples) / 1000,
            slice_medians_us=[round(s.median / 1000, 2) for s in self.slices],
            redis=self.redis,
        )


def service_scenario(
    name: str, settings: dict[str, Any] | None, per_slice: int
) -> tuple[Scenario, list[Rig]]:
    """A scenario that sends through a service built with ``settings`` (see :func:`build_rig`) and checks
    that every send reached the channel once; the rig is built when the scenario starts (into the list)."""
    warmed: list[int] = []
    rigs: list[Rig] = []

    async def start(stack: contextlib.AsyncExitStack) -> SendFn:
        rig = build_rig(settings)
        rigs.append(rig)
        service = await stack.enter_async_context(rig.service)

        async def send(message: Message) -> Any:
            receipt = await service.send(message)
            rig.channel.payloads.clear()  # the recording channel keeps payloads: do not let it grow
            return receipt

        return send

    async def after_warm() -> None:
        warmed.append(rigs[0].channel.attempts)

    def check(sent: int) -> str | None:
        attempts = rigs[0].channel.attempts - warmed[0]
        if attempts != sent:
            return f"{sent} sends but {attempts} attempts reached the channel (refusals or retries?)"
        return None

    return Scenario(name, start, per_slice, after_warm=after_warm, check=check), rigs


def reference_scenario(per_slice: int) -> Scenario:
    async def start(stack: contextlib.AsyncExitStack) -> SendFn:
        async def send(message: Message) -> int:
            return spin()

        return send

    return Scenario(REFERENCE, start, per_slice)


# ---------------------------------------------------------------- Redis


@attrs.define
class RedisRun:
    """The Redis side of a run: where, the prefix of this run, and why it was not measured (if so)."""

    url: str
    prefix: str
    problem: str | None = None
    client: Any = None
    """An admin client (``INFO``, ``PING``, clean-up); not the stores' clients."""

    async def open(self) -> None:
        try:
            import redis.asyncio as aioredis

            import omnichannel_resilience.redis_state  # noqa: F401  (broken or missing: not measured)
        except Exception as exc:
            self.problem = f"cannot import the Redis stores ({type(exc).__name__}: {exc})"
            return
        self.client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)
        try:
            await self.client.ping()
        except Exception as exc:
            self.problem = f"no Redis at {self.url} ({type(exc).__name__}: {exc})"
            await self.client.aclose()
            self.client = None

    async def commandstats(self) -> dict[str, tuple[int, int]]:
        """``INFO commandstats``: ``{command: (calls, usec)}``, server-wide, since the server started."""
        info: dict[str, Any] = await self.client.info("commandstats")
        return {
            key.removeprefix("cmdstat_"): (int(value["calls"]), int(value.get("usec", 0)))
            for key, value in info.items()
            if isinstance(value, dict) and "calls" in value
        }

    async def close(self) -> int:
        """Delete this run's keys; returns how many there were."""
        if self.client is None:
            return 0
        deleted = 0
        try:
            keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000)]
            for first in range(0, len(keys), 500):
                deleted += await self.client.delete(*keys[first : first + 500])
        finally:
            await self.client.aclose()
        return deleted


def count_commands(client: Any, store: str, counts: Counter[str]) -> None:
    """Count every command ``client`` sends, as ``"<command> <store>"`` (one command, one round trip)."""
    execute = client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        counts[f"{str(args[0]).lower()} {store}"] += 1
        return await execute(*args, **options)

    client.execute_command = counting


def redis_scenario(
    name: str, profile: str, redis: RedisRun, per_slice: int, count_sends: int, count_seconds: float
) -> Scenario:
    """The resilience layer with shared state in Redis; its commands are counted in an extra pass.

    The pass sends at least ``count_sends`` messages for at least ``count_seconds``: long enough for
    the breaker's time-driven refreshes (one per ``poll_interval_s``) to show as such.
    """
    scenario, rigs = service_scenario(name, redis_settings(profile, redis.url, redis.prefix), per_slice)
    counts: Counter[str] = Counter()
    stores: list[object] = []
    channel_check, channel_after_warm = scenario.check, scenario.after_warm
    assert channel_check is not None
    assert channel_after_warm is not None

    async def after_warm() -> None:
        await channel_after_warm()
        layer = runtime(rigs[0].service)
        for store, kind in ((layer.breakers, "breaker"), (layer.limiter, "limiter")):
            if store is None:
                continue
            client = getattr(store, "_redis", None)
            if client is None:
                raise RuntimeError(f"the {kind} store is not a Redis store ({type(store).__name__})")
            count_commands(client, kind, counts)
            stores.append(store)

    def store_errors() -> int:
        return sum(
            int(getattr(store, attr, 0) or 0)
            for store in stores
            for attr in ("storage_errors", "backend_errors")
        )

    async def count_pass(scenario: Scenario) -> None:
        """Send messages and count the Redis commands they took, client- and server-side."""
        assert scenario.send is not None
        counts.clear()
        sent = 0
        before = await redis.commandstats()
        started = time.perf_counter()
        while sent < count_sends or time.perf_counter() - started < count_seconds:
            await untimed(scenario.send, scenario.pool, scenario.cursor + sent, 100)
            sent += 100
        seconds = time.perf_counter() - started
        after = await redis.commandstats()
        scenario.cursor += sent
        scenario.extra_sends += sent
        server = {cmd: calls - before.get(cmd, (0, 0))[0] for cmd, (calls, _) in after.items()}
        server["info"] = server.get("info", 1) - 1  # our own first INFO
        usec = {cmd: spent - before.get(cmd, (0, 0))[1] for cmd, (_, spent) in after.items()}
        poll = min((float(getattr(s, "poll_interval_s", 1.0)) for s in stores), default=1.0)
        scenario.redis = RedisCount(
            sent,
            seconds,
            dict(counts),
            {cmd: calls for cmd, calls in server.items() if calls},
            poll,
            store_errors(),
            {cmd: spent for cmd, spent in usec.items() if server.get(cmd)},
        )

    def check(sent: int) -> str | None:
        errors = store_errors()
        if errors:
            return f"{errors} Redis errors: the stores fell back to local state, so Redis was not measured"
        return channel_check(sent)

    scenario.after_warm, scenario.check, scenario.extra_pass = after_warm, check, count_pass
    return scenario


def ping_scenario(redis: RedisRun, per_slice: int) -> Scenario:
    async def start(stack: contextlib.AsyncExitStack) -> SendFn:
        client = redis.client

        async def send(message: Message) -> Any:
            return await client.ping()

        return send

    return Scenario(PING, start, per_slice)


# ---------------------------------------------------------------- the run


@attrs.define
class Plan:
    sends: int
    """Timed sends per in-memory scenario (and as many untimed ones for the CPU figure)."""
    redis_sends: int
    """The same for the Redis scenarios."""
    slices: int
    """Slices each scenario is cut into, run round-robin across scenarios."""
    warm: int
    count_sends: int
    """Sends of the pass that counts Redis commands (at least)."""
    count_seconds: float
    """Duration of that pass (at least)."""


@attrs.define
class Run:
    results: list[Result]
    redis_url: str
    redis_problem: str | None
    redis_keys_deleted: int


async def run_all(plan: Plan, redis_url: str | None) -> Run:
    per_slice, redis_per_slice = plan.sends // plan.slices, plan.redis_sends // plan.slices
    scenarios = [reference_scenario(per_slice)]
    scenarios += [service_scenario(name, settings, per_slice)[0] for name, settings in MEMORY_SCENARIOS]
    redis = RedisRun(redis_url or DEFAULT_REDIS_URL, f"omnichannel-bench:{uuid.uuid4().hex}")
    if redis_url is None:
        redis.problem = "--no-redis"
    else:
        await redis.open()
    redis_scenarios: list[Scenario] = []
    if redis.problem is None:
        redis_scenarios = [
            redis_scenario(
                REDIS_RECOMMENDED, "recommended", redis, redis_per_slice, plan.count_sends, plan.count_seconds
            ),
            redis_scenario(
                REDIS_LEGACY, "legacy", redis, redis_per_slice, plan.count_sends, plan.count_seconds
            ),
            ping_scenario(redis, redis_per_slice),
        ]
        scenarios += redis_scenarios
    deleted = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            for scenario in scenarios:
                await scenario.start(plan.warm, stack)
            # Round-robin: a noisy moment on a shared machine hits every scenario a little.
            for _ in range(plan.slices):
                for scenario in scenarios:
                    await scenario.run_slice()
            for scenario in redis_scenarios:
                await scenario.run_extra()
            results = [scenario.result() for scenario in scenarios]
    finally:
        if redis.problem is None:
            deleted = await redis.close()
    if redis.problem is not None:
        results += [
            Result(name, note=f"not measured: {redis.problem}", measured=False)
            for name in (REDIS_RECOMMENDED, REDIS_LEGACY)
        ]
    baseline = next((r for r in results if r.name == BASELINE and r.measured), None)
    for r in results:
        if baseline is not None and r.measured and r.name not in (REFERENCE, PING, BASELINE):
            assert r.median_us is not None
            assert baseline.median_us is not None
            assert r.cpu_us is not None
            assert baseline.cpu_us is not None
            r.added_us = r.median_us - baseline.median_us
            r.added_cpu_us = r.cpu_us - baseline.cpu_us
    return Run(results, redis.url, redis.problem, deleted)


# ---------------------------------------------------------------- targets


@attrs.define
class Check:
    """One target; ``measured`` is ``None`` when it could not be measured."""

    target: str
    measured: float | None
    limit: float
    unit: str
    detail: str = ""
    strict_below: bool = True

    @property
    def passed(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured < self.limit if self.strict_below else self.measured <= self.limit


def checks(results: list[Result]) -> list[Check]:
    by_name = {r.name: r for r in results}
    found: list[Check] = []
    for name, label in ((RECOMMENDED, "recommended"), (LEGACY, "legacy")):
        r = by_name.get(name, Result(name, note="not run", measured=False))
        found.append(
            Check(f"added per send in memory, {label} profile (median)", r.added_us, ADDED_TARGET_US, "us")
        )
        found.append(
            Check(
                f"added per send in memory, {label} profile (CPU/msg)", r.added_cpu_us, ADDED_TARGET_US, "us"
            )
        )
    for name, label in ((REDIS_RECOMMENDED, "recommended"), (REDIS_LEGACY, "legacy")):
        r = by_name.get(name, Result(name, note="not run", measured=False))
        count = r.redis if r.measured else None
        if count is None:
            found.append(
                Check(
                    f"Redis round trips per send, {label} profile",
                    None,
                    REDIS_ROUND_TRIPS_TARGET,
                    "",
                    r.note,
                    strict_below=False,
                )
            )
            continue
        within = count.breaker_refreshes <= count.refreshes_allowed
        detail = (
            f"{count.per_send:.4f} with every command; {count.breaker_refreshes} time-driven breaker "
            f"refresh(es) in {count.seconds:.2f} s (at most {count.refreshes_allowed} allowed)"
        )
        found.append(
            Check(
                f"Redis round trips per send, {label} profile",
                count.per_send_on_path if within else count.per_send,
                REDIS_ROUND_TRIPS_TARGET,
                "",
                detail,
                strict_below=False,
            )
        )
    return found


# ---------------------------------------------------------------- reporting


def fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"


def print_table(run: Run, found: list[Check], info: dict[str, Any], seconds: float) -> None:
    versions = info["versions"]
    print(
        f"omnichannel {versions['omnichannel']} ({info['revision'] or 'no git checkout'}) - "
        f"Python {info['python']} - {info['cpus']} CPUs ({info['cpu']}) - "
        f"pluggy {versions['pluggy']}, attrs {versions['attrs']}"
    )
    print(
        "median, p99: the quietest slice; CPU/msg, msgs/s: the quietest untimed pass; "
        "added: minus the baseline; all:med: every slice pooled"
    )
    print()
    header = (
        f"{'scenario':<42} {'n':>7} {'median':>7} {'added':>7} {'p99':>7} {'CPU/msg':>7} {'added':>7}"
        f" {'msgs/s':>7} {'all:med':>7} {'noise':>5}"
    )
    print(header)
    print(f"{'':<50}" + "".join(f"{unit:>8}" for unit in ("us", "us", "us", "us", "us", "", "us")))
    print("-" * len(header))
    for r in run.results:
        if not r.measured:
            print(f"{r.name:<42} {r.note}")
            continue
        print(
            f"{r.name:<42} {r.n:>7,} {fmt(r.median_us):>7} {fmt(r.added_us, sign=True):>7} "
            f"{fmt(r.p99_us):>7} {fmt(r.cpu_us):>7} {fmt(r.added_cpu_us, sign=True):>7} "
            f"{r.msgs_per_s or 0:>7,.0f} {fmt(r.pooled_median_us):>7} {r.noise:>4.1f}x"
        )
        if r.redis is not None:
            c = r.redis
            client = ", ".join(f"{k} {v / c.sends:.4f}" for k, v in sorted(c.client.items())) or "none"
            scripts = c.server_per_send("evalsha", "eval", "evalsha_ro", "eval_ro")
            inner = {
                k: v for k, v in c.server.items() if k not in ("evalsha", "eval", "evalsha_ro", "eval_ro")
            }
            other = ", ".join(f"{k} {v / c.sends:.4f}" for k, v in sorted(inner.items())) or "none"
            print(f"{'':<44}Redis commands per send over {c.sends:,} sends ({c.seconds:.2f} s):")
            print(f"{'':<46}client, round trips (ours): {client}")
            calls = sum(c.server.get(k, 0) for k in ("evalsha", "eval", "evalsha_ro", "eval_ro"))
            spent = sum(c.server_usec.get(k, 0) for k in ("evalsha", "eval", "evalsha_ro", "eval_ro"))
            in_server = f", {spent / calls:.1f} us each in the server" if calls else ""
            print(f"{'':<46}server, INFO commandstats (server-wide): evalsha+eval {scripts:.4f}{in_server};")
            print(f"{'':<48}also counted (run inside the scripts, or others' traffic): {other}")
    print()
    for c in found:
        verdict = {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[c.passed]
        op = "<" if c.strict_below else "<="
        limit = f"{c.limit:,.0f} {c.unit}".strip()
        measured = "-" if c.measured is None else f"{c.measured:,.{1 if c.unit else 4}f} {c.unit}".strip()
        detail = f"; {c.detail}" if c.detail else ""
        print(f"{verdict}  {c.target}: {measured} (target {op} {limit}{detail})")
    if run.redis_problem is None:
        print(f"\nRedis {run.redis_url}: {run.redis_keys_deleted} key(s) of this run deleted")
    noisy = [r.name.strip() for r in run.results if r.measured and r.noise > 1.3]
    if noisy:
        print(f"\nwarning: the host was noisy (slice medians differ by > 30 %) during: {', '.join(noisy)}")
    print(f"\n(run took {seconds:.1f} s)")


# ---------------------------------------------------------------- profile and breakdown


async def profile(n: int, warm: int, top: int) -> str:
    """cProfile of ``send`` with the resilience layer (recommended profile, memory)."""
    rig = build_rig({"rate_limit": LOOSE_RATE_LIMITS})
    pool = message_pool()
    async with rig.service as service:
        await untimed(service.send, pool, 0, warm)
        profiler = cProfile.Profile()
        profiler.enable()
        for first in range(0, n, POOL_SIZE):
            await untimed(service.send, pool, first, min(POOL_SIZE, n - first))
            rig.channel.payloads.clear()
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


async def breakdown(number: int, redis_url: str | None) -> list[tuple[str, float]]:
    """What each building block of the layer costs on its own (recommended profile, memory), in µs.

    With ``redis_url``, also a ``PING``, a trivial ``EVALSHA`` and the Redis limiter's ``acquire``.
    """
    from omnichannel_resilience.breaker import Outcome
    from omnichannel_resilience.retry import call_with_retries

    rig = build_rig({"rate_limit": LOOSE_RATE_LIMITS})
    pool = message_pool()
    rows: list[tuple[str, float]] = []
    async with rig.service as service:
        await untimed(service.send, pool, 0, 100)
        layer = runtime(service)
        message = pool[0]
        sender = service.sender_of(message, CHANNEL)
        name = f"{CHANNEL}:{sender}"
        retry, budget = layer.settings.retry, layer.budget(sender)
        assert retry is not None
        assert layer.breakers is not None
        assert layer.limiter is not None
        assert layer.bulkhead is not None
        breakers, limiter, bulkhead = layer.breakers, layer.limiter, layer.bulkhead

        async def inner() -> int:
            return 1

        async def nothing() -> None:
            await inner()

        async def retries() -> None:
            await call_with_retries(inner, config=retry, clock=service.clock, rng=layer.rng, budget=budget)

        async def breaker() -> None:
            await breakers.record(name, await breakers.acquire(name), Outcome.SUCCESS)

        cursor = 0

        def cycle() -> Message:
            """The next message of the pool: one recipient alone would exhaust its pair burst."""
            nonlocal cursor
            cursor += 1
            return pool[cursor % POOL_SIZE]

        async def limits() -> None:
            recipient = cycle().recipient
            await limiter.acquire(sender, recipient)
            await limiter.on_success(sender, recipient)

        async def slot() -> None:
            async with bulkhead.slot(sender):
                await inner()

        async def timeout() -> None:
            async with asyncio.timeout(10.0):
                await inner()

        async def sender_of() -> None:
            service.sender_of(message, CHANNEL)

        async def wrap() -> None:
            layer.wrap(inner, message, CHANNEL)

        async def wrapped() -> None:
            await layer.wrap(inner, cycle(), CHANNEL)()

        async def send() -> None:
            await service.send(cycle())
            rig.channel.payloads.clear()

        async def bare_send() -> None:
            await bare.service.send(cycle())
            bare.channel.payloads.clear()

        bare = build_rig(None)
        async with bare.service, contextlib.AsyncExitStack() as stack:
            steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("await inner() (a trivial coroutine, for scale)", nothing),
                ("call_with_retries(inner) (python-backoff + budget)", retries),
                ("breaker acquire + record(SUCCESS), memory", breaker),
                ("limiter acquire + on_success, memory (2 GCRA keys)", limits),
                ("async with bulkhead.slot(sender)", slot),
                ("async with asyncio.timeout(10)", timeout),
                ("service.sender_of(message, channel)", sender_of),
                ("layer.wrap(inner, message, channel) (closures only)", wrap),
                ("layer.wrap(...)() (the whole layer around inner)", wrapped),
                ("service.send(Text), channel only", bare_send),
                ("service.send(Text), + resilience recommended", send),
            ]
            if redis_url is not None:
                steps += await redis_steps(redis_url, number, stack)
            for label, step in steps:
                best = math.inf
                for _ in range(5):
                    start = time.perf_counter_ns()
                    for _ in range(number):
                        await step()
                    best = min(best, (time.perf_counter_ns() - start) / number)
                rows.append((label, best / 1000))
    return rows


async def redis_steps(
    url: str, number: int, stack: contextlib.AsyncExitStack
) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """Breakdown steps on a real Redis (none if it cannot be reached); keys deleted on exit."""
    redis = RedisRun(url, f"omnichannel-bench:{uuid.uuid4().hex}")
    await redis.open()
    if redis.problem is not None:
        print(f"(Redis steps left out: {redis.problem})", file=sys.stderr)
        return []
    stack.push_async_callback(redis.close)
    from omnichannel_resilience.redis_state import RedisLimiterStore

    settings = ResilienceConfig(rate_limit=RateLimitSettings(**LOOSE_RATE_LIMITS)).rate_limit
    limiter = RedisLimiterStore(
        url,
        settings.sender(),
        settings.pair(),
        SystemClock(),
        settings.max_wait_sender_s,
        prefix=redis.prefix,
    )
    stack.push_async_callback(limiter.close)
    client = redis.client
    trivial = client.register_script("return 1")
    await trivial()
    pool = message_pool()
    cursor = 0

    async def ping() -> None:
        await client.ping()

    async def evalsha() -> None:
        await trivial()

    async def acquire() -> None:
        nonlocal cursor
        cursor += 1
        await limiter.acquire("recording", pool[cursor % POOL_SIZE].recipient)

    return [
        ("Redis PING (one round trip)", ping),
        ("Redis EVALSHA of 'return 1' (one round trip)", evalsha),
        ("RedisLimiterStore.acquire (one EVALSHA, the limiter script)", acquire),
    ]


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about 15 s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="the Redis for the shared-state rows")
    parser.add_argument("--no-redis", action="store_true", help="measure the in-memory state only")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the per-message path")
    parser.add_argument(
        "--breakdown", action="store_true", help="print the cost of each layer's building block, in isolation"
    )
    args = parser.parse_args(argv)

    if args.profile:
        print(asyncio.run(profile(10_000 if args.quick else 50_000, 1_000, 30)))
        return 0
    if args.breakdown:
        rows = asyncio.run(
            breakdown(2_000 if args.quick else 10_000, None if args.no_redis else args.redis_url)
        )
        for label, us in rows:
            print(f"{label:<58} {us:8.2f} us")
        return 0

    if args.quick:
        plan = Plan(sends=3_000, redis_sends=1_200, slices=3, warm=500, count_sends=500, count_seconds=1.2)
    else:
        plan = Plan(
            sends=20_000, redis_sends=6_000, slices=10, warm=2_000, count_sends=3_000, count_seconds=3.0
        )
    started = time.perf_counter()
    run = asyncio.run(run_all(plan, None if args.no_redis else args.redis_url))
    seconds = time.perf_counter() - started
    found = checks(run.results)
    info = machine()
    if args.json:
        document = {
            "machine": info,
            "mode": "quick" if args.quick else "full",
            "seconds": round(seconds, 2),
            "redis": {
                "url": run.redis_url,
                "problem": run.redis_problem,
                "keys_deleted": run.redis_keys_deleted,
            },
            "results": [attrs.asdict(r) for r in run.results],
            "targets": [{**attrs.asdict(c), "passed": c.passed} for c in found],
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print_table(run, found, info, seconds)
    return 1 if args.strict and not all(c.passed for c in found) else 0


if __name__ == "__main__":
    sys.exit(main())
