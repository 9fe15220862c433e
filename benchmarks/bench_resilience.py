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
uses that Redis meanwhile; it is never reset). The circuit breaker reads the shared
state in the background, twice per ``poll_interval_s`` (1 s) per breaker: the admission
path refreshes its local copy once it is that old, and a watcher task reads every
breaker once per interval to report moves made by time or by another worker. Those
reads are time-driven, not per send: they are told apart by the breaker script's
action (``acquire`` or ``read``), left out of the per-send count as long as there are
at most two per interval per breaker (more would count in full), and printed on a line
of their own: about 2 per second per breaker expected, and no target.

Targets: under 20 µs added per send in memory (recommended profile, median and
CPU per message; the legacy profile is judged too), and at most one Redis round
trip per send with Redis (time-driven breaker reads aside). The script exits 0
whatever the outcome; ``--strict`` makes a missed target exit 1. If Redis cannot be
reached or ``omnichannel_resilience.redis_state`` fails to import or to run, the
Redis rows are reported as not measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from _harness import (
    CHANNEL,
    NOISY,
    POOL_SIZE,
    REFERENCE,
    Scenario,
    SendFn,
    arguments,
    best_of,
    fmt,
    message_pool,
    noise,
    print_head,
    print_steps,
    print_tail,
    profile_sends,
    report,
    round_robin,
    spin,
    untimed,
    verdict_line,
)
from _redis_probe import RedisCount, RedisRun, StoreCounter, redis_steps

from omnichannel import Message, OmniChannelService, PluginSettings, ServiceConfig, SystemClock
from omnichannel.testing import RecordingChannel, make_service
from omnichannel_resilience import ResiliencePlugin, runtime

ADDED_TARGET_US = 20.0
"""Target: latency the resilience layer adds to one send in memory (median), in microseconds."""
REDIS_ROUND_TRIPS_TARGET = 1.0
"""Target: Redis round trips per send with ``shared_state = "redis"`` (time-driven reads aside)."""

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


# ---------------------------------------------------------------- results


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
        return noise(self.slice_medians_us)

    @classmethod
    def of(cls, scenario: Scenario) -> Result:
        """The row of a scenario (one way of sending), or "not measured" with the reason."""
        figures = scenario.figures()
        if figures is None:
            return cls(scenario.names[0], note=f"not measured: {scenario.failure}", measured=False)
        f = figures[0]
        return cls(
            name=scenario.names[0],
            n=f.n,
            median_us=f.median_us,
            p99_us=f.p99_us,
            cpu_us=f.cpu_us,
            msgs_per_s=f.msgs_per_s,
            pooled_median_us=f.pooled_median_us,
            slice_medians_us=f.slice_medians_us,
            redis=scenario.extra,
        )


# ---------------------------------------------------------------- scenarios


def service_scenario(
    name: str, settings: dict[str, Any] | None, per_slice: int
) -> tuple[Scenario, list[Rig]]:
    """A scenario that sends through a service built with ``settings`` (see :func:`build_rig`) and checks
    that every send reached the channel once; the rig is built when the scenario starts (into the list)."""
    warmed: list[int] = []
    rigs: list[Rig] = []

    async def start(stack: contextlib.AsyncExitStack) -> list[SendFn]:
        rig = build_rig(settings)
        rigs.append(rig)
        service = await stack.enter_async_context(rig.service)

        async def send(message: Message) -> Any:
            receipt = await service.send(message)
            rig.channel.payloads.clear()  # the recording channel keeps payloads: do not let it grow
            return receipt

        return [send]

    async def after_warm() -> None:
        warmed.append(rigs[0].channel.attempts)

    def check(sent: int) -> str | None:
        attempts = rigs[0].channel.attempts - warmed[0]
        if attempts != sent:
            return f"{sent} sends but {attempts} attempts reached the channel (refusals or retries?)"
        return None

    return Scenario([name], start, per_slice, after_warm=after_warm, check=check), rigs


def fixed_scenario(name: str, send: SendFn, per_slice: int) -> Scenario:
    """A scenario that times ``send`` as it is (a reference)."""

    async def start(stack: contextlib.AsyncExitStack) -> list[SendFn]:
        return [send]

    return Scenario([name], start, per_slice)


async def spin_send(message: Message) -> int:
    return spin()


# ---------------------------------------------------------------- Redis


def redis_scenario(
    name: str, profile: str, redis: RedisRun, per_slice: int, count_sends: int, count_seconds: float
) -> Scenario:
    """The resilience layer with shared state in Redis; its commands are counted in an extra pass.

    The pass sends at least ``count_sends`` messages for at least ``count_seconds``: long enough for
    the breaker's time-driven reads (two per ``poll_interval_s``) to show as such.
    """
    scenario, rigs = service_scenario(name, redis_settings(profile, redis.url, redis.prefix), per_slice)
    counter = StoreCounter()
    channel_check, channel_after_warm = scenario.check, scenario.after_warm
    assert channel_check is not None
    assert channel_after_warm is not None

    async def after_warm() -> None:
        await channel_after_warm()
        layer = runtime(rigs[0].service)
        for store, kind in ((layer.breakers, "breaker"), (layer.limiter, "limiter")):
            if store is not None:
                counter.instrument(store, kind)

    async def count_pass(scenario: Scenario) -> RedisCount:
        send, first = scenario.sends[0], scenario.cursor
        count = await counter.count_pass(redis, send, scenario.pool, first, count_sends, count_seconds)
        scenario.cursor += count.sends
        scenario.extra_sends += count.sends
        return count

    def check(sent: int) -> str | None:
        errors = counter.errors()
        if errors:
            return f"{errors} Redis errors: the stores fell back to local state, so Redis was not measured"
        return channel_check(sent)

    scenario.after_warm, scenario.check, scenario.extra_pass = after_warm, check, count_pass
    return scenario


def ping(client: Any) -> SendFn:
    """A bare ``PING`` on ``client``: one round trip."""

    async def send(message: Message) -> Any:
        return await client.ping()

    return send


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
    scenarios = [fixed_scenario(REFERENCE, spin_send, per_slice)]
    scenarios += [service_scenario(name, settings, per_slice)[0] for name, settings in MEMORY_SCENARIOS]
    redis = RedisRun(redis_url or DEFAULT_REDIS_URL)
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
            fixed_scenario(PING, ping(redis.client), redis_per_slice),
        ]
        scenarios += redis_scenarios
    deleted = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            await round_robin(scenarios, plan.slices, plan.warm, stack)
            for scenario in redis_scenarios:
                await scenario.run_extra()
            results = [Result.of(scenario) for scenario in scenarios]
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

    def line(self) -> str:
        limit = f"{self.limit:,.0f} {self.unit}".strip()
        measured = "-" if self.measured is None else f"{self.measured:,.{1 if self.unit else 4}f} {self.unit}"
        op = "<" if self.strict_below else "<="
        return verdict_line(self.passed, self.target, measured.strip(), limit, self.detail, op)


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
        within = count.breaker_reads <= count.reads_allowed
        detail = (
            f"{count.per_send:.4f} with every command; {count.breaker_reads} time-driven breaker "
            f"read(s) in {count.seconds:.2f} s left out (at most {count.reads_allowed}, else all count)"
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


def background(results: list[Result]) -> dict[str, float]:
    """Time-driven breaker reads per second per breaker, by Redis row (not a target: expected about
    ``2 / poll_interval_s``, the admission path's refresh and the watcher's read)."""
    return {r.name: round(r.redis.background_per_s, 3) for r in results if r.measured and r.redis}


# ---------------------------------------------------------------- reporting


def print_table(run: Run, found: list[Check], info: dict[str, Any], seconds: float) -> None:
    legend = (
        "median, p99: the quietest slice; CPU/msg, msgs/s: the quietest untimed pass; "
        "added: minus the baseline; all:med: every slice pooled"
    )
    units = [("median", "us"), ("added", "us"), ("p99", "us"), ("CPU/msg", "us"), ("added", "us")]
    print_head(info, legend, 42, [*units, ("msgs/s", ""), ("all:med", "us")])
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
            for indent, line in r.redis.lines():
                print(f"{'':<{indent}}{line}")
    deleted = ""
    if run.redis_problem is None:
        deleted = f"Redis {run.redis_url}: {run.redis_keys_deleted} key(s) of this run deleted"
        for name, per_s in background(run.results).items():
            deleted += (
                f"\nbackground Redis reads, {name.removeprefix('+ resilience, ')}: {per_s:.2f} per second "
                "per breaker (expected about 2: the admission refresh and the watcher, each once per "
                "poll_interval_s; not per send)"
            )
    noisy = [r.name.strip() for r in run.results if r.measured and r.noise > NOISY]
    print_tail([c.line() for c in found], noisy, seconds, deleted)


# ---------------------------------------------------------------- profile and breakdown


async def profile(n: int, warm: int, top: int) -> str:
    """cProfile of ``send`` with the resilience layer (recommended profile, memory)."""
    rig = build_rig({"rate_limit": LOOSE_RATE_LIMITS})
    async with rig.service as service:
        return await profile_sends(service.send, message_pool(), n, warm, top, rig.channel.payloads.clear)


async def breakdown(number: int, redis_url: str | None) -> list[tuple[str, float]]:
    """What each building block of the layer costs on its own (recommended profile, memory), in µs.

    With ``redis_url``, also a ``PING``, a trivial ``EVALSHA`` and the Redis limiter's ``acquire``.
    """
    from omnichannel_resilience.breaker import Outcome
    from omnichannel_resilience.retry import call_with_retries
    from omnichannel_resilience.timeouts import Watchdog

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
        watchdog = Watchdog()

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
            held = bulkhead.try_acquire(sender)
            assert held is not None
            try:
                await inner()
            finally:
                bulkhead.release(sender, held)

        async def watched() -> None:
            watch = watchdog.watch(10.0)
            try:
                await inner()
            finally:
                watchdog.forget(watch)

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
                ("bulkhead try_acquire + release (a free slot)", slot),
                ("attempt timeout: a Watchdog entry around inner", watched),
                ("async with asyncio.timeout(10) (not used; for scale)", timeout),
                ("service.sender_of(message, channel), outside a send", sender_of),
                ("layer.wrap(inner, message, channel) (the per-send object)", wrap),
                ("layer.wrap(...)() (the whole layer around inner)", wrapped),
                ("service.send(Text), channel only", bare_send),
                ("service.send(Text), + resilience recommended", send),
            ]
            if redis_url is not None:
                steps += await redis_steps(redis_url, LOOSE_RATE_LIMITS, stack)
            rows += [(label, await best_of(step, number)) for label, step in steps]
    return rows


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "fewer iterations (about 15 s)")
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
        redis_url = None if args.no_redis else args.redis_url
        print_steps(asyncio.run(breakdown(2_000 if args.quick else 10_000, redis_url)), 58)
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
    redis = {
        "url": run.redis_url,
        "problem": run.redis_problem,
        "keys_deleted": run.redis_keys_deleted,
        "background_reads_per_s_per_breaker": background(run.results),
    }
    table = lambda info: print_table(run, found, info, seconds)  # noqa: E731
    return report(args, seconds, run.results, found, table, {"redis": redis})


if __name__ == "__main__":
    sys.exit(main())
