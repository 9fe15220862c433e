"""The measuring harness the benchmarks share (``bench_core``, ``bench_resilience``, ``bench_metrics``).

Each scenario is cut into slices run round-robin with the others (:func:`round_robin`), so
that a noisy moment on a shared machine hits every scenario a little instead of one
scenario entirely. A slice times every call (``time.perf_counter_ns``: median, p99, mean),
then sends the same messages again untimed for the CPU (``time.process_time_ns``) and
wall time per message. A row gives the quietest slice (lowest median; lowest CPU per
message) next to every slice pooled (:class:`Series`, :class:`Figures`). The garbage
collector stays enabled, as in production; it is run before each pass.

Also here: the report's frame (the machine line, the column header, the PASS/FAIL lines,
the noise warning), the ``--json`` document, the common command-line options, and the
helpers of ``--profile`` and ``--breakdown``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import math
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
from _machine import machine

from omnichannel import Message, Template, Text

CHANNEL = "recording"
"""The name of the ``RecordingChannel`` every service is built around."""
POOL_SIZE = 4096
"""Distinct messages (and recipients) cycled through."""
REFERENCE = "reference: pure-Python loop"
REFERENCE_SPIN = 400
"""Iterations of the reference loop: about as long as one message through the core."""
NOISY = 1.3
"""Slowest slice median over the quietest above which the report warns."""

SendFn = Callable[[Message], Awaitable[Any]]
Step = Callable[[], Awaitable[Any]]


def text_content() -> Text:
    return Text("Your verification code is 493027. It expires in 10 minutes.")


def message_pool(content: Text | Template | None = None, size: int = POOL_SIZE) -> list[Message]:
    """``size`` messages (``Text`` by default) from one sender to distinct recipients, built before
    any timing starts."""
    content = text_content() if content is None else content
    return [Message(f"+1555{i:07d}", content, channel=CHANNEL) for i in range(size)]


def spin(iterations: int = REFERENCE_SPIN) -> int:
    """Pure-Python busy work with no allocation: the machine's own speed and jitter."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


# ---------------------------------------------------------------- statistics


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def noise(slice_medians_us: Sequence[float]) -> float:
    """Slowest slice median over quietest slice median (1.0 = a quiet machine)."""
    if not slice_medians_us:
        return 1.0
    return max(slice_medians_us) / min(slice_medians_us)


@attrs.define
class Slice:
    """The statistics of one slice of a scenario (times in nanoseconds)."""

    median: float
    p99: float
    mean: float
    cpu: float
    """CPU per message of the untimed pass."""
    wall: float
    """Wall time per message of the untimed pass."""

    @classmethod
    def of(cls, samples_ns: list[int], cpu_ns: int, wall_ns: int, batch: int) -> Slice:
        ordered = sorted(samples_ns)
        return cls(
            median=statistics.median(ordered),
            p99=percentile(ordered, 99),
            mean=statistics.fmean(ordered),
            cpu=cpu_ns / batch,
            wall=wall_ns / batch,
        )


@attrs.define
class Figures:
    """The figures of one row (times in microseconds).

    ``median_us``, ``p99_us`` and ``mean_us`` come from the quietest slice (the one with the
    lowest median), ``cpu_us`` and ``msgs_per_s`` from the quietest untimed pass; ``pooled_*``
    from all samples of all slices, host noise included; ``slice_medians_us`` shows that noise.
    """

    n: int
    median_us: float
    p99_us: float
    mean_us: float
    cpu_us: float
    msgs_per_s: float
    pooled_median_us: float
    pooled_p99_us: float
    slice_medians_us: list[float]


@attrs.define
class Series:
    """The slices of one way of sending, and every sample they timed (nanoseconds)."""

    slices: list[Slice] = attrs.field(factory=list)
    samples: list[int] = attrs.field(factory=list)

    def add(self, timed: list[int], cpu_ns: int, wall_ns: int, n: int) -> None:
        self.slices.append(Slice.of(timed, cpu_ns, wall_ns, n))
        self.samples += timed

    def figures(self) -> Figures:
        best = min(self.slices, key=lambda s: s.median)
        ordered = sorted(self.samples)
        return Figures(
            n=len(ordered),
            median_us=best.median / 1000,
            p99_us=best.p99 / 1000,
            mean_us=best.mean / 1000,
            cpu_us=min(s.cpu for s in self.slices) / 1000,
            msgs_per_s=1e9 / min(s.wall for s in self.slices),
            pooled_median_us=statistics.median(ordered) / 1000,
            pooled_p99_us=percentile(ordered, 99) / 1000,
            slice_medians_us=[round(s.median / 1000, 2) for s in self.slices],
        )


# ---------------------------------------------------------------- measuring


async def timed_calls(sends: Sequence[SendFn], pool: list[Message], first: int, n: int) -> list[list[int]]:
    """Time each call of each function of ``sends``, interleaved message by message."""
    samples: list[list[int]] = [[] for _ in sends]
    clock = time.perf_counter_ns
    size = len(pool)
    for i in range(first, first + n):
        message = pool[i % size]
        for send, out in zip(sends, samples, strict=True):
            start = clock()
            await send(message)
            out.append(clock() - start)
    return samples


async def untimed(send: SendFn, pool: list[Message], first: int, n: int) -> tuple[int, int]:
    """Send ``n`` messages with no per-call timing; return the (CPU, wall) nanoseconds spent."""
    size = len(pool)
    cpu_start, wall_start = time.process_time_ns(), time.perf_counter_ns()
    for i in range(first, first + n):
        await send(pool[i % size])
    return time.process_time_ns() - cpu_start, time.perf_counter_ns() - wall_start


def _nothing() -> None:
    return None


@attrs.define
class Scenario:
    """One or more ways of sending on one set-up, timed interleaved message by message, slice by
    slice; each one is then sent untimed for its CPU figure.

    ``start_fn`` enters what it needs into the stack and returns the send functions. A failure (an
    exception, or what ``check`` returns) stops the scenario: ``failure`` says why, ``error`` is the
    exception if there was one, and :meth:`figures` returns ``None``.
    """

    names: list[str]
    start_fn: Callable[[contextlib.AsyncExitStack], Awaitable[Sequence[SendFn]]]
    per_slice: int
    pool: list[Message] = attrs.field(factory=message_pool)
    clear: Callable[[], None] = _nothing
    """Called after the warm-up and after every pass (the recording channel keeps its payloads)."""
    after_warm: Callable[[], Awaitable[None]] | None = None
    """Run after the warm-up; raising fails the scenario."""
    check: Callable[[int], str | None] | None = None
    """Called with the number of sends made after the warm-up; returns what went wrong, if anything."""
    extra_pass: Callable[[Scenario], Awaitable[Any]] | None = None
    """Run once after the timed slices (:meth:`run_extra`); what it returns is kept in ``extra``."""
    sends: list[SendFn] = attrs.field(factory=list)
    series: list[Series] = attrs.field(factory=list)
    cursor: int = 0
    extra_sends: int = 0
    """Sends made by ``extra_pass`` (it counts them), for ``check``."""
    extra: Any = None
    failure: str | None = None
    error: BaseException | None = None

    async def start(self, warm: int, stack: contextlib.AsyncExitStack) -> None:
        try:
            self.sends = list(await self.start_fn(stack))
            self.series = [Series() for _ in self.sends]
            for send in self.sends:
                await untimed(send, self.pool, 0, warm)
            self.clear()
            if self.after_warm is not None:
                await self.after_warm()
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: Exception) -> None:
        self.failure, self.error = f"{type(exc).__name__}: {exc}", exc
        self.sends = []

    async def run_slice(self) -> None:
        """One slice: every send function timed per call, then each one untimed for CPU."""
        if not self.sends:
            return
        n = self.per_slice
        try:
            gc.collect()
            timed = await timed_calls(self.sends, self.pool, self.cursor, n)
            self.clear()
            for send, series, samples in zip(self.sends, self.series, timed, strict=True):
                gc.collect()
                cpu, wall = await untimed(send, self.pool, self.cursor, n)
                self.clear()
                series.add(samples, cpu, wall, n)
        except Exception as exc:
            self.fail(exc)
            return
        self.cursor += n

    async def run_extra(self) -> None:
        if not self.sends or self.extra_pass is None:
            return
        try:
            self.extra = await self.extra_pass(self)
        except Exception as exc:
            self.fail(exc)

    def figures(self) -> list[Figures] | None:
        """One :class:`Figures` per way of sending, or ``None`` if the scenario was not measured."""
        measured = bool(self.series) and bool(self.series[0].slices)
        if self.failure is None and measured and self.check is not None:
            sent = 2 * len(self.series) * len(self.series[0].samples) + self.extra_sends
            self.failure = self.check(sent)
        if self.failure is not None or not measured:
            return None
        return [series.figures() for series in self.series]


class Sliced(Protocol):
    async def start(self, warm: int, stack: contextlib.AsyncExitStack) -> None: ...

    async def run_slice(self) -> None: ...


async def round_robin(
    scenarios: Sequence[Sliced], slices: int, warm: int, stack: contextlib.AsyncExitStack
) -> None:
    """Start (and warm up) every scenario, then run their slices in turn."""
    for scenario in scenarios:
        await scenario.start(warm, stack)
    for _ in range(slices):
        for scenario in scenarios:
            await scenario.run_slice()


# ---------------------------------------------------------------- reporting


def fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"


def print_head(info: dict[str, Any], legend: str, width: int, columns: Sequence[tuple[str, str]]) -> None:
    """The machine line, the legend and the table's header: scenario (``width``), n, then
    ``columns`` (title, unit) and noise."""
    versions = info["versions"]
    print(
        f"omnichannel {versions['omnichannel']} ({info['revision'] or 'no git checkout'}) - "
        f"Python {info['python']} - {info['cpus']} CPUs ({info['cpu']}) - "
        f"pluggy {versions['pluggy']}, attrs {versions['attrs']}"
    )
    print(legend)
    print()
    header = f"{'scenario':<{width}} {'n':>7}" + "".join(f" {title:>7}" for title, _ in columns)
    header += f" {'noise':>5}"
    print(header)
    print(f"{'':<{width + 8}}" + "".join(f"{unit:>8}" for _, unit in columns))
    print("-" * len(header))


def verdict_line(
    passed: bool | None, target: str, measured: str, limit: str, detail: str = "", op: str = "<"
) -> str:
    word = {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[passed]
    return f"{word}  {target}: {measured} (target {op} {limit}{'; ' + detail if detail else ''})"


def print_tail(verdicts: Sequence[str], noisy: Sequence[str], seconds: float, extra: str = "") -> None:
    """The PASS/FAIL lines, ``extra`` (a paragraph), the noise warning for the rows named in
    ``noisy`` (if any) and the run's duration."""
    print()
    for line in verdicts:
        print(line)
    if extra:
        print(f"\n{extra}")
    if noisy:
        print(f"\nwarning: the host was noisy (slice medians differ by > 30 %) during: {', '.join(noisy)}")
    print(f"\n(run took {seconds:.1f} s)")


# ---------------------------------------------------------------- command line


def arguments(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--quick``, ``--json``, ``--strict``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def report(
    args: argparse.Namespace,
    seconds: float,
    results: Sequence[Any],
    found: Sequence[Any],
    print_table: Callable[[dict[str, Any]], None],
    extra: dict[str, Any] | None = None,
) -> int:
    """Print the results (attrs rows) and targets (attrs, with ``passed``) as a table or, with
    ``--json``, as a document (``extra`` after ``seconds``); the exit status ``--strict`` asks for."""
    info = machine()
    if args.json:
        document = {
            "machine": info,
            "mode": "quick" if args.quick else "full",
            "seconds": round(seconds, 2),
            **(extra or {}),
            "results": [attrs.asdict(r) for r in results],
            "targets": [{**attrs.asdict(c), "passed": c.passed} for c in found],
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print_table(info)
    return 1 if args.strict and not all(c.passed for c in found) else 0


# ---------------------------------------------------------------- profile and breakdown


async def profile_sends(
    send: SendFn, pool: list[Message], n: int, warm: int, top: int, clear: Callable[[], None]
) -> str:
    """cProfile of ``n`` untimed sends after ``warm`` ones: the top functions by own time."""
    await untimed(send, pool, 0, warm)
    clear()
    profiler = cProfile.Profile()
    profiler.enable()
    for first in range(0, n, len(pool)):
        await untimed(send, pool, first, min(len(pool), n - first))
        clear()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


async def best_of(step: Step, number: int, repeat: int = 5, before: Callable[[], None] = _nothing) -> float:
    """The lowest time per call of ``number`` awaited calls of ``step``, over ``repeat`` loops, in µs."""
    best = math.inf
    for _ in range(repeat):
        before()
        start = time.perf_counter_ns()
        for _ in range(number):
            await step()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best / 1000


def print_steps(rows: Sequence[tuple[str, float]], width: int) -> None:
    for label, us in rows:
        print(f"{label:<{width}} {us:8.2f} us")
