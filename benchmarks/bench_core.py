"""CPU cost per message through the omnichannel core, and command-bus dispatch latency.

Usage::

    python benchmarks/bench_core.py            # full run (about 30 s on 2 cores)
    python benchmarks/bench_core.py --quick    # smoke run (under 10 s)
    python benchmarks/bench_core.py --json     # machine-readable results on stdout
    python benchmarks/bench_core.py --profile  # cProfile of the per-message path
    python benchmarks/bench_core.py --breakdown  # cost of each step of a send, in isolation

Every service is built with ``omnichannel.testing.make_service`` around a
``RecordingChannel`` (an in-memory channel that does no I/O), so what is measured
is the core alone: route, validate, build, pluggy hook dispatch, the send
middleware, the receipt and the event dispatch. The services use the real
``SystemClock``, as production does.

Scenarios (each on its own started service, warmed up first), and a reference:

* ``send`` of ``Text`` and of ``Template`` content, with the channel only, and
  with a ``wrapper=True`` send middleware plus an ``on_event`` listener;
* the same middleware configured with ``rollout = 50`` (half the recipients get it);
* ``service.bus.dispatch(SendMessage(msg))`` against a direct ``service.send(msg)``,
  interleaved message by message on the same service;
* ``send_many`` of 10,000 messages at concurrency 100 (with the recording channel,
  which never suspends, and with a middleware that yields to the event loop once
  per message, which makes the 100 workers really interleave);
* a pure-Python loop of about the same duration, which touches no omnichannel
  code: how fast the host was during the run, and how much jitter (p99) any
  code of that duration sees on it.

Per message, each ``await`` is timed with ``time.perf_counter_ns`` (median, p99,
mean); a second, untimed pass over the same messages gives the CPU time per
message (``time.process_time_ns``) and the throughput. The garbage collector
stays enabled, as in production: its pauses are part of the mean and the p99.

Shared and virtual machines change speed while a benchmark runs. So each
scenario is cut into slices run round-robin with the others, and the table
gives the quietest slice (lowest median; lowest CPU per message) next to the
figures over every slice pooled ("all"). "noise" is the slowest slice median
over the quietest: near 1.0x the two agree.

The script exits 0 whatever the outcome; ``--strict`` makes a missed target exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
import timeit
from collections import Counter
from collections.abc import Awaitable, Generator
from typing import Any

import attrs
from _harness import (
    CHANNEL,
    NOISY,
    REFERENCE,
    REFERENCE_SPIN,
    Figures,
    Scenario,
    SendFn,
    Series,
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
    text_content,
    untimed,
    verdict_line,
)

from omnichannel import (
    DeliveryStatus,
    Message,
    MessageSent,
    OmniChannelService,
    PluginSettings,
    Receipt,
    SendMessage,
    ServiceConfig,
    SystemClock,
    Template,
    Text,
    hookimpl,
)
from omnichannel.plugins import in_rollout
from omnichannel.testing import RecordingChannel, make_service

CORE_TARGET_US = 20.0
"""Target: CPU cost of one message through the core (median), in microseconds."""
BUS_TARGET_US = 50.0
"""Target: p99 of ``bus.dispatch(SendMessage(msg))``, in microseconds."""
LEGACY_BUS_TARGET_US = 50_000.0
"""The legacy system's goal for command dispatch: under 50 ms."""

MIDDLEWARE = "bench-middleware"
LISTENER = "bench-listener"
FULL_TEXT = "send(Text) + middleware + listener"
BARE_TEXT = "send(Text), channel only"
BUS = "bus.dispatch(SendMessage(Text))"
BUS_DIRECT = "send(Text), interleaved with the bus"
BARE_BUS = "bus.dispatch(SendMessage(Text)), channel only"
BARE_BUS_DIRECT = "send(Text), channel only, interleaved with the bus"
BULK = "send_many 10k @100, recording channel"
BULK_YIELDING = "send_many 10k @100, yielding middleware"


# ---------------------------------------------------------------- plugins under test


class PassThroughMiddleware:
    """The cheapest real middleware: wraps the inner sender and calls it once."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(wrapper=True)
    def send(self) -> Generator[None, Any, Any]:
        inner = yield
        if inner is None:
            return None

        async def wrapped() -> Receipt:
            self.calls += 1
            result: Receipt = await inner()
            return result

        return wrapped


class YieldingMiddleware:
    """Like ``PassThroughMiddleware``, but gives the event loop a turn before each send,
    as a channel doing network I/O would: concurrent workers then really interleave."""

    @hookimpl(wrapper=True)
    def send(self) -> Generator[None, Any, Any]:
        inner = yield
        if inner is None:
            return None

        async def wrapped() -> Receipt:
            await asyncio.sleep(0)
            result: Receipt = await inner()
            return result

        return wrapped


class CountingListener:
    """A synchronous ``on_event`` listener that counts events by type."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    @hookimpl
    def on_event(self, event: object) -> None:
        self.seen[type(event).__name__] += 1


# ---------------------------------------------------------------- set-up


@attrs.define
class Rig:
    """A service (started by the scenario that uses it) and the plugins it was built with."""

    service: OmniChannelService
    channel: RecordingChannel
    middleware: PassThroughMiddleware | None = None
    listener: CountingListener | None = None
    deliveries: int = 0
    """The channel's attempts after the warm-up."""
    middleware_calls: int = 0
    """The middleware's calls after the warm-up."""


def build_rig(*, pipeline: bool, rollout: float | None = None, yielding: bool = False) -> Rig:
    """A (not yet started) service: the recording channel, plus middleware and listener if ``pipeline``."""
    channel = RecordingChannel(CHANNEL)
    plugins: list[object] = [channel]
    middleware = listener = None
    if pipeline:
        middleware = PassThroughMiddleware()
        listener = CountingListener()
        plugins += [(MIDDLEWARE, middleware), (LISTENER, listener)]
    if yielding:
        plugins.append(("bench-yield", YieldingMiddleware()))
    config = None
    if rollout is not None:
        config = ServiceConfig(plugins={MIDDLEWARE: PluginSettings(rollout=rollout)})
    service = make_service(*plugins, config=config, clock=SystemClock())
    return Rig(service, channel, middleware, listener)


def template_content() -> Template:
    return Template(
        "order_shipped",
        language="en_US",
        body={"first_name": "Ann", "order_id": "A-10421", "eta": "Tuesday"},
    )


@attrs.define
class Result:
    """One row of the table (times in microseconds): see :class:`_harness.Figures`."""

    name: str
    n: int
    median_us: float | None
    p99_us: float | None
    mean_us: float | None
    cpu_us: float
    msgs_per_s: float
    pooled_median_us: float | None = None
    pooled_p99_us: float | None = None
    slice_medians_us: list[float] = attrs.field(factory=list)
    note: str = ""

    @property
    def noise(self) -> float:
        """Slowest slice median over quietest slice median (1.0 = a quiet machine)."""
        return noise(self.slice_medians_us)


def row(name: str, figures: Figures, note: str = "") -> Result:
    return Result(name=name, **attrs.asdict(figures), note=note)


# ---------------------------------------------------------------- measuring


def via_bus(service: OmniChannelService) -> SendFn:
    """``bus.dispatch(SendMessage(message))``, as a caller of the bus writes it."""
    bus = service.bus

    def dispatch(message: Message) -> Awaitable[Any]:
        return bus.dispatch(SendMessage(message))

    return dispatch


def rig_scenario(names: list[str], rig: Rig, content: Text | Template, per_slice: int) -> Scenario:
    """``service.send`` on ``rig`` (and ``via_bus`` interleaved with it, given two names); every send
    must reach the channel once."""

    async def start(stack: contextlib.AsyncExitStack) -> list[SendFn]:
        service = await stack.enter_async_context(rig.service)
        return [service.send] if len(names) == 1 else [service.send, via_bus(service)]

    async def after_warm() -> None:
        rig.deliveries = rig.channel.attempts
        rig.middleware_calls = rig.middleware.calls if rig.middleware else 0

    def check(expected: int) -> str | None:
        sent = rig.channel.attempts - rig.deliveries
        return None if sent == expected else f"expected {expected} deliveries, the channel saw {sent}"

    clear = rig.channel.payloads.clear
    return Scenario(names, start, per_slice, message_pool(content), clear, after_warm, check)


def rig_results(scenario: Scenario, rig: Rig) -> list[Result]:
    figures = scenario.figures()
    if scenario.error is not None:
        raise scenario.error
    if figures is None:
        raise RuntimeError(f"{scenario.names[0]}: {scenario.failure}")
    results = [row(name, f) for name, f in zip(scenario.names, figures, strict=True)]
    if rig.middleware is not None and rig.service.config.plugins:
        share = (rig.middleware.calls - rig.middleware_calls) / (rig.channel.attempts - rig.deliveries)
        results[0].note = f"the middleware ran for {share:.0%} of messages"
    if len(results) == 2:
        direct, bus = results
        assert direct.median_us is not None
        assert bus.median_us is not None
        bus.note = f"bus overhead {bus.median_us - direct.median_us:+.2f} us (median, vs direct send)"
    return results


@attrs.define
class Reference:
    """A fixed pure-Python loop timed like the scenarios, in the same round-robin.

    It does not touch omnichannel: its median says how fast the host was during the
    run (shared machines switch between speeds), and its p99 is the host's own jitter
    (interrupts, neighbours) that any code of that duration also sees.
    """

    per_slice: int
    series: Series = attrs.field(factory=Series)

    async def start(self, warm: int, stack: contextlib.AsyncExitStack) -> None:
        for _ in range(warm):
            spin()

    async def run_slice(self) -> None:
        n = self.per_slice
        gc.collect()
        clock = time.perf_counter_ns
        timed: list[int] = []
        for _ in range(n):
            start = clock()
            spin()
            timed.append(clock() - start)
        cpu_start, wall_start = time.process_time_ns(), time.perf_counter_ns()
        for _ in range(n):
            spin()
        cpu, wall = time.process_time_ns() - cpu_start, time.perf_counter_ns() - wall_start
        self.series.add(timed, cpu, wall, n)

    def results(self) -> list[Result]:
        note = f"{REFERENCE_SPIN} iterations of `total += i * i`; no omnichannel code"
        return [row(REFERENCE, self.series.figures(), note)]


async def bench_send_many(name: str, rig: Rig, n: int, concurrency: int, repeats: int, warm: int) -> Result:
    """``send_many`` of ``n`` messages; the quietest of ``repeats`` batches."""
    pool = message_pool(text_content(), n)
    async with rig.service as service:
        await untimed(service.send, pool, 0, warm)
        runs: list[tuple[int, int]] = []
        for _ in range(repeats):
            rig.channel.payloads.clear()
            gc.collect()
            cpu_start, wall_start = time.process_time_ns(), time.perf_counter_ns()
            receipts = await service.send_many(pool, concurrency=concurrency)
            runs.append((time.perf_counter_ns() - wall_start, time.process_time_ns() - cpu_start))
            if len(receipts) != n or not all(r.status is DeliveryStatus.ACCEPTED for r in receipts):
                raise RuntimeError(f"{name}: not every message was accepted")
        rig.channel.payloads.clear()
    wall, cpu = min(runs)
    return Result(
        name=name,
        n=n,
        median_us=None,
        p99_us=None,
        mean_us=wall / n / 1000,
        cpu_us=cpu / n / 1000,
        msgs_per_s=n / (wall / 1e9),
        slice_medians_us=[round(w / n / 1000, 2) for w, _ in runs],
        note=f"{n:,} messages in {wall / 1e6:.0f} ms (best of {repeats})",
    )


@attrs.define
class Plan:
    sends: int
    """Timed sends per scenario (and as many untimed ones for the CPU figure)."""
    slices: int
    """Slices each scenario is cut into, run round-robin across scenarios."""
    warm: int
    bulk_repeats: int


async def run_all(plan: Plan) -> list[Result]:
    n = plan.sends // plan.slices
    reference = Reference(n)
    rigs: list[tuple[list[str], Rig, Text | Template]] = [
        ([BARE_TEXT], build_rig(pipeline=False), text_content()),
        (["send(Template), channel only"], build_rig(pipeline=False), template_content()),
        ([FULL_TEXT], build_rig(pipeline=True), text_content()),
        (["send(Template) + middleware + listener"], build_rig(pipeline=True), template_content()),
        (["send(Text) + middleware@50% + listener"], build_rig(pipeline=True, rollout=50), text_content()),
        ([BUS_DIRECT, BUS], build_rig(pipeline=True), text_content()),
        ([BARE_BUS_DIRECT, BARE_BUS], build_rig(pipeline=False), text_content()),
    ]
    scenarios = [rig_scenario(names, rig, content, n) for names, rig, content in rigs]
    async with contextlib.AsyncExitStack() as stack:
        await round_robin([reference, *scenarios], plan.slices, plan.warm, stack)
    results = reference.results()
    for scenario, (_, rig, _) in zip(scenarios, rigs, strict=True):
        results += rig_results(scenario, rig)
    for name, yielding, how in (
        (BULK, False, "nothing suspends, so one of the 100 workers sends them all"),
        (BULK_YIELDING, True, "each send yields once, so the 100 workers interleave"),
    ):
        rig = build_rig(pipeline=True, yielding=yielding)
        result = await bench_send_many(name, rig, 10_000, 100, plan.bulk_repeats, plan.warm)
        result.note += f"; {how}"
        results.append(result)
    return results


# ---------------------------------------------------------------- targets


@attrs.define
class Check:
    """One target: judged on the quietest slice; the figure over all slices is shown beside it."""

    target: str
    measured_us: float
    limit_us: float
    pooled_us: float | None = None

    @property
    def passed(self) -> bool:
        return self.measured_us < self.limit_us

    def line(self) -> str:
        pooled = "" if self.pooled_us is None else f"all slices: {self.pooled_us:,.1f} us"
        return verdict_line(
            self.passed, self.target, f"{self.measured_us:,.1f} us", f"{self.limit_us:,.0f} us", pooled
        )


def checks(results: list[Result]) -> list[Check]:
    by_name = {r.name: r for r in results}
    full, bare, bus, bare_bus = by_name[FULL_TEXT], by_name[BARE_TEXT], by_name[BUS], by_name[BARE_BUS]
    assert full.median_us is not None
    assert bare.median_us is not None
    assert bus.p99_us is not None
    assert bare_bus.p99_us is not None
    return [
        Check(
            "core per message, Text + middleware + listener (median)",
            full.median_us,
            CORE_TARGET_US,
            full.pooled_median_us,
        ),
        Check("core per message, Text + middleware + listener (CPU/msg)", full.cpu_us, CORE_TARGET_US),
        Check(
            "core per message, channel only (median)", bare.median_us, CORE_TARGET_US, bare.pooled_median_us
        ),
        Check("bus dispatch p99, middleware + listener", bus.p99_us, BUS_TARGET_US, bus.pooled_p99_us),
        Check("bus dispatch p99, channel only", bare_bus.p99_us, BUS_TARGET_US, bare_bus.pooled_p99_us),
        Check("bus dispatch p99, legacy goal (50 ms)", bus.p99_us, LEGACY_BUS_TARGET_US, bus.pooled_p99_us),
    ]


# ---------------------------------------------------------------- reporting


def print_table(results: list[Result], found: list[Check], info: dict[str, Any], seconds: float) -> None:
    legend = (
        "median, p99, mean: the quietest slice; CPU/msg, msgs/s: the quietest untimed pass; "
        "all: every slice pooled"
    )
    units = [("median", "us"), ("p99", "us"), ("mean", "us"), ("CPU/msg", "us"), ("msgs/s", "")]
    print_head(info, legend, 50, [*units, ("all:med", "us"), ("all:p99", "us")])
    for r in results:
        print(
            f"{r.name:<50} {r.n:>7,} {fmt(r.median_us):>7} {fmt(r.p99_us):>7} {fmt(r.mean_us):>7} "
            f"{fmt(r.cpu_us):>7} {r.msgs_per_s:>7,.0f} {fmt(r.pooled_median_us):>7} "
            f"{fmt(r.pooled_p99_us):>7} {r.noise:>4.1f}x"
        )
        if r.note:
            print(f"{'':<52}{r.note}")
    print_tail([c.line() for c in found], [r.name for r in results if r.noise > NOISY], seconds)


# ---------------------------------------------------------------- profile and breakdown


async def profile(n: int, warm: int, top: int) -> str:
    """cProfile of ``send(Text)`` with middleware and listener; the top functions by own time."""
    rig = build_rig(pipeline=True)
    async with rig.service as service:
        return await profile_sends(service.send, message_pool(), n, warm, top, rig.channel.payloads.clear)


async def breakdown(number: int) -> list[tuple[str, float]]:
    """The cost of each step of one send (Text, middleware + listener), measured in isolation."""
    rig = build_rig(pipeline=True)
    rows: list[tuple[str, float]] = []
    async with rig.service as service:
        message = message_pool(text_content(), 1)[0]
        receipt = await service.send(message)
        hook = service.plugin_manager.hook
        payload = hook.build(message=message, channel=CHANNEL, service=service)
        event = MessageSent(message, receipt, occurred_at=receipt.finished_at)
        env = {
            "attrs": attrs,
            "hook": hook,
            "service": service,
            "m": message,
            "r": receipt,
            "payload": payload,
            "Receipt": Receipt,
            "ACCEPTED": DeliveryStatus.ACCEPTED,
            "MessageSent": MessageSent,
            "Message": Message,
            "Text": Text,
            "in_rollout": in_rollout,
            "clock": service.clock,
        }
        steps = [
            (
                "hook.validate(...) via pluggy (1 impl)",
                "hook.validate(message=m, channel='recording', service=service)",
            ),
            (
                "hook.build(...) via pluggy (1 impl)",
                "hook.build(message=m, channel='recording', service=service)",
            ),
            (
                "hook.send(...) via pluggy (2 wrappers + channel)",
                "hook.send(payload=payload, message=m, channel='recording', service=service)",
            ),
            (
                "Receipt(...) in the channel (4 fields)",
                "Receipt(message_id='i', channel='c', status=ACCEPTED, provider_message_id='p')",
            ),
            (
                "attrs.evolve(receipt, 5 fields)",
                "attrs.evolve(r, message_id='i', channel='c', attempts=1, started_at=None, finished_at=None)",
            ),
            ("MessageSent(...)", "MessageSent(m, r, occurred_at=None)"),
            ("clock.now() (SystemClock)", "clock.now()"),
            ("in_rollout(50, plugin, recipient)", "in_rollout(50, 'bench-middleware', '+15550000001')"),
            (
                "Message(...) construction (caller side)",
                "Message('+15550000001', Text('hi'), channel='recording')",
            ),
        ]
        for label, stmt in steps:
            best = min(timeit.repeat(stmt, globals=env, number=number, repeat=5))
            rows.append((label, best / number * 1e6))

        clear, per = rig.channel.payloads.clear, number // 10
        emit, send = (lambda: service.emit(event)), (lambda: service.send(message))
        rows.append(("service.emit(MessageSent) (1 listener)", await best_of(emit, per, before=clear)))
        rows.append(("service.send(Text), the whole thing", await best_of(send, per, before=clear)))
        rig.channel.payloads.clear()
    return rows


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "fewer iterations (under 10 s)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the per-message path")
    parser.add_argument(
        "--breakdown", action="store_true", help="print the cost of each step of a send, in isolation"
    )
    args = parser.parse_args(argv)

    if args.profile:
        print(asyncio.run(profile(10_000 if args.quick else 50_000, 1_000, 30)))
        return 0
    if args.breakdown:
        print_steps(asyncio.run(breakdown(10_000 if args.quick else 50_000)), 52)
        return 0

    if args.quick:
        plan = Plan(sends=4_000, slices=4, warm=500, bulk_repeats=1)
    else:
        plan = Plan(sends=30_000, slices=10, warm=2_000, bulk_repeats=3)
    started = time.perf_counter()
    results = asyncio.run(run_all(plan))
    seconds = time.perf_counter() - started
    found = checks(results)
    return report(args, seconds, results, found, lambda info: print_table(results, found, info, seconds))


if __name__ == "__main__":
    sys.exit(main())
