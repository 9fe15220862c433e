"""Latency and CPU the metrics plugin adds to one send, and the cost of a scrape.

Usage::

    python benchmarks/bench_metrics.py              # full run (about 11 s on 2 cores)
    python benchmarks/bench_metrics.py --quick      # smoke run (about 3 s)
    python benchmarks/bench_metrics.py --json       # machine-readable results on stdout
    python benchmarks/bench_metrics.py --strict     # exit 1 when a target is missed
    python benchmarks/bench_metrics.py --breakdown  # the plugin's steps, each alone

Services come from ``omnichannel.testing.make_service`` around a ``RecordingChannel`` (no I/O)
with the real ``SystemClock``, as in ``bench_core.py``. ``MetricsPlugin`` runs its two per-send
hooks: the outermost ``send`` wrapper (a histogram observation) and the ``on_event`` listener
(three counters per ``MessageSent``, plain numbers that a scrape folds into prometheus-client
families). Two pairs of services, each pair timed interleaved
message by message and round-robin with the other and a pure-Python loop (``_harness.py``):

* the channel only (baseline) against ``+ metrics``: the plugin alone, the core's attempt
  counter that any send middleware brings included;
* ``+ resilience`` (``recommended``, memory, ``bench_resilience.py``'s loose rate limits) against
  ``+ resilience + metrics``: the metrics' own cost on top of the resilience middleware.

Every send must reach its channel once, and be counted once in ``messages_sent_total``. Then
``omnichannel_metrics.exposition(service)`` (``GET /metrics``; it runs on the event loop) is timed
with 10 channels x 5 senders of series (a sent Text, a sent Template, a failure per pair).

Target: under 10 µs added per send (median and CPU per message; alone and on top of
resilience). The script exits 0 whatever the outcome; ``--strict`` makes a miss exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs
from _harness import (
    CHANNEL,
    NOISY,
    REFERENCE,
    Figures,
    Scenario,
    SendFn,
    Step,
    arguments,
    best_of,
    fmt,
    message_pool,
    noise,
    print_head,
    print_steps,
    print_tail,
    report,
    round_robin,
    text_content,
    untimed,
)
from bench_resilience import LOOSE_RATE_LIMITS, Check, fixed_scenario, spin_send

from omnichannel import (
    DeliveryStatus,
    Message,
    MessageSent,
    OmniChannelService,
    PermanentDeliveryError,
    PluginSettings,
    Receipt,
    ServiceConfig,
    SystemClock,
    Template,
    hookimpl,
)
from omnichannel.testing import RecordingChannel, make_service
from omnichannel_metrics import MetricsPlugin, exposition, instruments
from omnichannel_resilience import ResiliencePlugin

TARGET_US = 10.0
"""Target: what the metrics plugin adds to one send (median, CPU per message), in microseconds."""
SCRAPE_CHANNELS, SCRAPE_SENDERS = 10, 5
PAIRS = (
    ("channel only (baseline)", "+ metrics", False),
    ("+ resilience, recommended, memory", "+ resilience + metrics", True),
)
"""(without metrics, with metrics, resilience on) of each pair timed interleaved."""


class SenderFromMetadata:
    """Names the sender after ``message.metadata["sender"]`` (a ``sender_id`` owning no channel)."""

    @hookimpl
    def sender_id(self, message: Message) -> str | None:
        return message.metadata.get("sender")


def build(
    *, metrics: bool, resilience: bool = False, channels: tuple[str, ...] = (CHANNEL,), extra: object = None
) -> tuple[OmniChannelService, list[RecordingChannel]]:
    """A (not yet started) service on recording channels, with the plugins asked for."""
    recording = [RecordingChannel(name) for name in channels]
    plugins: list[object] = [*recording] + ([("bench-senders", extra)] if extra else [])
    settings = {}
    if resilience:
        plugins.append(("resilience", ResiliencePlugin(random.Random(7))))
        settings["resilience"] = PluginSettings(settings={"rate_limit": LOOSE_RATE_LIMITS})
    if metrics:
        plugins.append(("metrics", MetricsPlugin()))
    return make_service(*plugins, config=ServiceConfig(plugins=settings), clock=SystemClock()), recording


def sent_count(service: OmniChannelService) -> float:
    labels = {"channel": CHANNEL, "sender": CHANNEL}
    return instruments(service).registry.get_sample_value("omnichannel_messages_sent_total", labels) or 0.0


def pair_scenario(names: tuple[str, str], resilience: bool, per_slice: int) -> Scenario:
    """Two services, without and with metrics, timed interleaved message by message; every send must
    reach its channel once and the metrics must count each of theirs once."""
    (bare, (bare_channel,)), (full, (full_channel,)) = [
        build(metrics=m, resilience=resilience) for m in (0, 1)
    ]
    counts = [0.0]

    async def start(stack: contextlib.AsyncExitStack) -> list[SendFn]:
        return [(await stack.enter_async_context(s)).send for s in (bare, full)]

    def clear() -> None:
        bare_channel.payloads.clear()
        full_channel.payloads.clear()

    async def after_warm() -> None:
        counts[:] = [bare_channel.attempts + full_channel.attempts, sent_count(full)]

    def check(sent: int) -> str | None:
        attempts = bare_channel.attempts + full_channel.attempts - counts[0]
        counted = sent_count(full) - counts[1]
        if attempts != sent or counted * 2 != sent:
            return f"{sent} sends: {attempts} attempts, {counted:.0f} counted by the metrics"
        return None

    return Scenario(list(names), start, per_slice, clear=clear, after_warm=after_warm, check=check)


@attrs.define
class Result:
    name: str
    figures: Figures | None
    added_us: float | None = None
    """Median minus the median of the same service without metrics."""
    added_cpu_us: float | None = None
    note: str = ""


def as_step(call: Callable[[], object]) -> Step:
    async def step() -> None:
        call()

    return step


async def scrape(number: int) -> dict[str, Any]:
    """``exposition`` (best of 5 loops) with, per channel and sender, a sent ``Text`` and ``Template``
    and a failed ``Text`` (its own provider code)."""
    names = tuple(f"ch{i}" for i in range(SCRAPE_CHANNELS))
    service, recording = build(metrics=True, channels=names, extra=SenderFromMetadata())
    template = Template("order_update", language="en_US", body={"1": "Ann"})
    async with service:
        for channel in recording:
            for s in range(SCRAPE_SENDERS):
                meta = {"sender": f"10654035224{s:04d}"}
                for content in (text_content(), template, None):
                    if content is None:  # the third one fails
                        channel.fail_next(1, PermanentDeliveryError("refused", code=131000 + s))
                    message = Message("+15550000001", content or text_content(), channel.name, metadata=meta)
                    with contextlib.suppress(PermanentDeliveryError):
                        await service.send(message)
        body, us = exposition(service), await best_of(as_step(lambda: exposition(service)), number)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {
        "channels": SCRAPE_CHANNELS,
        "senders": SCRAPE_SENDERS,
        "series": series,
        "bytes": len(body),
        "ms": us / 1000,
    }


async def run_all(sends: int, slices: int, warm: int, scrapes: int) -> tuple[list[Result], dict[str, Any]]:
    per_slice = sends // slices
    scenarios = [fixed_scenario(REFERENCE, spin_send, per_slice)]
    scenarios += [pair_scenario((bare, full), res, per_slice) for bare, full, res in PAIRS]
    async with contextlib.AsyncExitStack() as stack:
        await round_robin(scenarios, slices, warm, stack)
    results: list[Result] = []
    for scenario in scenarios:
        figures = scenario.figures() or [None] * len(scenario.names)
        rows = [Result(name, f) for name, f in zip(scenario.names, figures, strict=True)]
        if len(rows) == 2 and rows[0].figures and rows[1].figures:
            (base, full), row = (rows[0].figures, rows[1].figures), rows[1]
            row.added_us, row.added_cpu_us = full.median_us - base.median_us, full.cpu_us - base.cpu_us
        for row in rows:
            row.note = "" if row.figures else f"not measured: {scenario.failure}"
        results += rows
    return results, await scrape(scrapes)


def checks(results: list[Result]) -> list[Check]:
    by_name = {r.name: r for r in results}
    found = []
    for (_, name, _), label in zip(PAIRS, ("alone", "on top of resilience"), strict=True):
        r = by_name[name]
        found.append(Check(f"metrics overhead per send, {label} (median)", r.added_us, TARGET_US, "us"))
        found.append(Check(f"metrics overhead per send, {label} (CPU/msg)", r.added_cpu_us, TARGET_US, "us"))
    return found


def print_table(
    results: list[Result], found: list[Check], cost: dict[str, Any], info: dict[str, Any], seconds: float
) -> None:
    legend = (
        "median, p99: the quietest slice; CPU/msg, msgs/s: the quietest untimed pass; "
        "added: minus the row above (the same service without metrics), timed interleaved with it"
    )
    units = [("median", "us"), ("added", "us"), ("p99", "us"), ("CPU/msg", "us"), ("added", "us")]
    print_head(info, legend, 36, [*units, ("msgs/s", ""), ("all:med", "us")])
    for r in results:
        f = r.figures
        if f is None:
            print(f"{r.name:<36} {r.note}")
            continue
        print(
            f"{r.name:<36} {f.n:>7,} {fmt(f.median_us):>7} {fmt(r.added_us, sign=True):>7} "
            f"{fmt(f.p99_us):>7} {fmt(f.cpu_us):>7} {fmt(r.added_cpu_us, sign=True):>7} "
            f"{f.msgs_per_s:>7,.0f} {fmt(f.pooled_median_us):>7} {noise(f.slice_medians_us):>4.1f}x"
        )
    extra = (
        f"scrape: exposition(service) with {cost['channels']} channels x {cost['senders']} senders of "
        f"series: {cost['ms']:.2f} ms per call ({cost['series']:,} series, {cost['bytes']:,} bytes), "
        "on the event loop"
    )
    noisy = [r.name for r in results if r.figures and noise(r.figures.slice_medians_us) > NOISY]
    print_tail([c.line() for c in found], noisy, seconds, extra)


async def breakdown(number: int) -> list[tuple[str, float]]:
    """The plugin's per-send steps, each alone, in µs (the table has the whole send)."""
    service, pool = build(metrics=True)[0], message_pool()
    receipt = Receipt(pool[0].id, CHANNEL, DeliveryStatus.ACCEPTED, provider_message_id="rec-1")
    event, metrics = MessageSent(pool[0], receipt), instruments(service)
    calls = {
        "instruments(service)": lambda: instruments(service),
        "observe_send (the wrapper's histogram)": lambda: metrics.observe_send(CHANNEL, "sent", 0.01),
        "record(MessageSent) (the listener: 3 counters)": lambda: metrics.record(event),
        "service.sender_of (a label of record)": lambda: service.sender_of(event.message, CHANNEL),
    }
    async with service:
        await untimed(service.send, pool, 0, 100)
        return [(label, await best_of(as_step(call), number)) for label, call in calls.items()]


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "fewer iterations (about 3 s)")
    parser.add_argument("--breakdown", action="store_true", help="time the plugin's per-send steps alone")
    args = parser.parse_args(argv)
    if args.breakdown:
        print_steps(asyncio.run(breakdown(2_000 if args.quick else 10_000)), 56)
        return 0
    started = time.perf_counter()
    plan = (4_000, 4, 500, 20) if args.quick else (20_000, 10, 2_000, 100)
    results, cost = asyncio.run(run_all(*plan))
    seconds = time.perf_counter() - started
    found = checks(results)
    table = lambda info: print_table(results, found, cost, info, seconds)  # noqa: E731
    return report(args, seconds, results, found, table, {"scrape": cost})


if __name__ == "__main__":
    sys.exit(main())
