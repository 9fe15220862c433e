"""Template messages through the full WhatsApp pipeline, against a bare aiohttp loop, on the sandbox.

Usage::

    python benchmarks/bench_whatsapp.py                  # full run (about 2 min on 2 cores)
    python benchmarks/bench_whatsapp.py --quick          # smoke run (under 30 s)
    python benchmarks/bench_whatsapp.py --json           # machine-readable results on stdout
    python benchmarks/bench_whatsapp.py --templates 100  # an account with 100 templates
    python benchmarks/bench_whatsapp.py --profile        # cProfile of the pipeline at concurrency 50, 0 ms
    python benchmarks/bench_whatsapp.py --ab             # A/B in one process: with and without the plugins
    python benchmarks/bench_whatsapp.py --disable-plugin store  # the pipeline without an installed plugin

The WhatsApp Cloud API sandbox runs in its own process
(``python -m omnichannel whatsapp sandbox``, no webhooks, a phone-number
throughput far above what one client can reach). This process drives it in
two ways, with the same messages:

* **pipeline**: an ``OmniChannelService`` with the installed plugins loaded from
  their entry points (so resilience, metrics and any other installed plugin take
  part), the ``whatsapp`` plugin pointed at the sandbox with ``check_templates``
  on (the account's templates are fetched and cached before timing starts), and
  ``service.send_many(messages, concurrency=c)``: validate, build, template
  check, the Graph client, receipts and events, for every message. The
  resilience plugin runs its default (``recommended``) profile with
  ``[plugins.resilience] rate_limit.enabled = false``: its sender limit (WhatsApp's
  real one, about 68 messages a second with a burst of 10) would otherwise refuse
  the benchmark's bursts (``wait 2.004 s exceeds max_wait 2.000 s``) and measure our
  deliberate throttling, not the framework. The breaker, retry and its budget,
  bulkhead (at most 50 attempts in flight per sender: it caps the pipeline's
  concurrency 200) and attempt timeouts stay on. The metrics plugin (its outermost
  ``send`` wrapper and its ``on_event`` listener) takes part with its defaults;
* **bare**: the request bodies built once beforehand
  (``omnichannel_whatsapp.payload.build_payload(message).body``), then ``c``
  workers on one ``aiohttp.ClientSession`` (the same connector limit as the
  service's session) that POST each body with the Bearer header and read the
  JSON answer: the least any client must do.

Each message goes to its own recipient, so the sandbox's per-recipient pair
limit never refuses one. Before every run the sandbox is reset
(``POST /_sandbox/reset``) and, for the latency cells, given a ``latency``
fault (``POST /_sandbox/faults``) that delays every Graph answer.

Per run: wall time (messages per second), the CPU time of this process
(``time.process_time``) per message, and the sandbox process's CPU per message
(from ``/proc``, Linux only). The table gives the median of the runs; the two
modes alternate run by run, so that a host that changes speed affects both.
Peak memory comes from a separate, untimed run per cell and mode under
``tracemalloc``: the peak of Python allocations during that run above what was
allocated when it started (the messages are built before), in MiB. tracemalloc
slows allocation down, so it never runs during a timed run.

``--ab [VARIANT ...]`` compares, at concurrency 50 and 0 ms, pipelines with the
resilience and metrics plugins on or off (``pipeline``, ``resilience-only``,
``metrics-only``, ``neither``) and the bare loop, in this one process against
one sandbox, alternated run by run (``--runs``, default 6, of ``--messages``,
default 2,500): on a noisy host, fairer than separate full runs. Any other
installed plugin (a message store, ...) is off in every variant.

Target: at concurrency 50, the pipeline sends at least 0.85x the messages per
second of the bare loop, with 0 ms and with 50 ms of sandbox latency. The
script exits 0 whatever the outcome; ``--strict`` makes a missed target exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any, TypeVar

import aiohttp
import attrs
from _machine import machine

from omnichannel import (
    DeliveryStatus,
    Message,
    OmniChannelService,
    PluginSettings,
    ServiceConfig,
    Template,
    TemplateButton,
)
from omnichannel_whatsapp import runtime
from omnichannel_whatsapp.payload import build_payload
from omnichannel_whatsapp.sandbox import SandboxSettings
from omnichannel_whatsapp.sandbox.seed import load_templates
from omnichannel_whatsapp.templates import TemplateInfo

T = TypeVar("T")

TARGET_RATIO = 0.85
"""Target: the pipeline's messages per second over the bare loop's, at concurrency 50."""
TARGET_CONCURRENCY = 50
CONCURRENCIES = (1, 50, 200)
LATENCIES_MS = (0.0, 50.0)
TEMPLATE = ("order_update", "en_US")
"""A positional template of the sandbox's seed, with a text header, three body parameters and buttons."""
THROUGHPUT_MPS = 1e9
"""The sandbox's phone-number throughput: far above anything this client reaches."""
RESILIENCE_SETTINGS: dict[str, Any] = {"rate_limit": {"enabled": False}}
"""``[plugins.resilience]`` of the pipeline: the recommended profile without its deliberate throttling."""
PIPELINE = "pipeline"
BARE = "bare"
START_TIMEOUT_S = 30.0
"""How long the sandbox process may take to answer its health check."""
STOP_TIMEOUT_S = 10.0
SERVER_CPU_MIN_S = 0.1
"""The sandbox's CPU time comes in clock ticks (10 ms): a run that used less than this reports none."""


# ---------------------------------------------------------------- plan


@attrs.frozen
class Cell:
    """One concurrency x latency combination, and how many messages each of its runs sends."""

    concurrency: int
    latency_ms: float
    messages: int


@attrs.frozen
class Plan:
    cells: tuple[Cell, ...]
    runs: int
    """Timed runs per cell and mode; one more per cell and mode measures memory."""


def make_plan(quick: bool, runs: int | None) -> Plan:
    """Enough messages per run for about a second of sending (fewer with ``quick``).

    At concurrency 1 and 50 ms, a message takes a round trip of 50 ms or more: 20 of
    them already take a second.
    """
    sizes = {
        (1, 0.0): 600,
        (1, 50.0): 20,
        (50, 0.0): 2_500,
        (50, 50.0): 2_000,
        (200, 0.0): 2_500,
        (200, 50.0): 2_500,
    }
    scale = 0.2 if quick else 1.0
    cells = tuple(
        Cell(c, latency, max(10, round(sizes[(c, latency)] * scale)))
        for latency in LATENCIES_MS
        for c in CONCURRENCIES
    )
    return Plan(cells, runs or (2 if quick else 5))


# ---------------------------------------------------------------- the sandbox process


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.define
class SandboxProcess:
    """The sandbox, started as ``python -m omnichannel whatsapp sandbox`` in a process of its own."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: str

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the sandbox process has used so far (Linux ``/proc``)."""
        try:
            with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # After the command name: state is field 3, utime 14 and stime 15 (1-based).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_sandbox/health", timeout=0.5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def seed_file(total: int, directory: str) -> str:
    """A seed with the sandbox's shipped templates plus copies of ``TEMPLATE``, ``total`` templates in all."""
    shipped = load_templates(None)
    model = next(t for t in shipped if (t["name"], t["language"]) == TEMPLATE)
    extra = [
        {**{k: v for k, v in model.items() if k != "id"}, "name": f"bench_template_{i:04d}"}
        for i in range(max(0, total - len(shipped)))
    ]
    path = os.path.join(directory, "templates.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"templates": shipped + extra}, fh)
    return path


@contextlib.contextmanager
def sandbox_process(templates: int | None = None) -> Iterator[SandboxProcess]:
    """Start the sandbox, wait until it answers, and stop it (SIGTERM, then wait) whatever happens.

    :param templates: how many templates the account holds (default: the shipped seed's).
    """
    host = "127.0.0.1"
    port = free_port(host)
    command = [
        sys.executable,
        "-m",
        "omnichannel",
        "whatsapp",
        "sandbox",
        "--host",
        host,
        "--port",
        str(port),
        "--throughput",
        f"{THROUGHPUT_MPS:g}",
    ]
    scratch = tempfile.TemporaryDirectory(prefix="bench-whatsapp-")
    process: subprocess.Popen[bytes] | None = None
    try:
        if templates is not None:
            command += ["--seed-file", seed_file(templates, scratch.name)]
        log_path = os.path.join(scratch.name, "sandbox.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        sandbox = SandboxProcess(f"http://{host}:{port}", process, log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _health(sandbox.url):
            if process.poll() is not None:
                raise RuntimeError(f"the sandbox exited with {process.returncode}:\n{sandbox.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the sandbox did not answer within {START_TIMEOUT_S:g} s:\n{sandbox.output()}"
                )
            time.sleep(0.05)
        yield sandbox
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        scratch.cleanup()


class Control:
    """The sandbox's control API (``/_sandbox/...``), on a session of its own."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self._url = f"{url}/_sandbox"

    async def _call(self, method: str, path: str, body: object = None) -> Any:
        async with self._http.request(method, f"{self._url}/{path}", json=body) as answer:
            data = await answer.json()
            if answer.status >= 400:
                raise RuntimeError(f"{method} /_sandbox/{path}: HTTP {answer.status}: {data}")
            return data

    async def prepare(self, latency_ms: float) -> None:
        """Forget messages, counters, faults and rate budgets; then delay every Graph answer."""
        await self._call("POST", "reset")
        if latency_ms > 0:
            await self._call("POST", "faults", {"kind": "latency", "latency_s": latency_ms / 1000})

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", "stats")
        return data


# ---------------------------------------------------------------- the two clients


def fill(info: TemplateInfo) -> Template:
    """A ``Template`` with every parameter ``info`` asks for (as the demo fills its campaign)."""
    samples = ["Ann", "A-10421", "on Tuesday", "Lisbon", "2", "blue"]
    body = info.body_parameters
    count = body if isinstance(body, int) else len(body)
    header = info.header_parameters
    buttons = [
        TemplateButton("url" if kind == "URL" else "quick_reply", index, "A-10421")
        for index, kind, takes in info.buttons
        if takes and kind in ("URL", "QUICK_REPLY")
    ]
    return Template(
        info.name,
        info.language,
        header=["A-10421"] * (header if isinstance(header, int) else 0),
        body=samples[:count],
        buttons=buttons,
    )


def make_messages(content: Template, count: int) -> list[Message]:
    """``count`` messages, each to a recipient of its own (the pair limit never refuses one).

    Not +1555...: the sandbox treats two of those numbers specially (``not_on_whatsapp``,
    ``outside_window``).
    """
    return [Message(f"+1650{i:07d}", content, channel="whatsapp") for i in range(count)]


def make_service(url: str, disabled: Sequence[str] = ()) -> OmniChannelService:
    """The service as an application configures it: installed plugins, the whatsapp plugin on the
    sandbox; resilience, if installed, with its default profile but no rate limits (see the module).

    :param disabled: plugins switched off (``enabled = false``), for the A/B comparison.
    """
    defaults = SandboxSettings()
    plugins = {
        "whatsapp": PluginSettings(
            settings={
                "base_url": url,
                "phone_number_id": defaults.phone_number_id,
                "waba_id": defaults.waba_id,
                "access_token": defaults.access_token,
                "app_secret": defaults.app_secret,
                "check_templates": True,
            }
        )
    }
    if "resilience" in {e.name for e in entry_points(group="omnichannel")}:
        plugins["resilience"] = PluginSettings(settings=RESILIENCE_SETTINGS)
    for name in disabled:
        plugins[name] = PluginSettings(enabled=False)
    return OmniChannelService(ServiceConfig(plugins=plugins))


@attrs.define
class Outcome:
    sent: int
    failed: int
    first_error: str | None = None


class PipelineClient:
    """``service.send_many(messages, concurrency=c)`` on a started service."""

    mode = PIPELINE

    def __init__(self, service: OmniChannelService) -> None:
        self.service = service

    def prepare(self, messages: list[Message]) -> list[Message]:
        return messages

    async def run(self, work: list[Message], concurrency: int) -> Outcome:
        receipts = await self.service.send_many(work, concurrency=concurrency)
        failed = [r for r in receipts if r.status is DeliveryStatus.FAILED]
        error = failed[0].error if failed else None
        return Outcome(len(receipts) - len(failed), len(failed), None if error is None else repr(error))


class BareClient:
    """``c`` workers that POST ready-made JSON bodies on one ``aiohttp.ClientSession``."""

    mode = BARE

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        defaults = SandboxSettings()
        self.http = http
        self.url = f"{url}/v23.0/{defaults.phone_number_id}/messages"
        self.headers = {"Authorization": f"Bearer {defaults.access_token}", "Accept": "application/json"}

    def prepare(self, messages: list[Message]) -> list[dict[str, Any]]:
        return [build_payload(message).body for message in messages]

    async def run(self, work: list[dict[str, Any]], concurrency: int) -> Outcome:
        wamids: list[str | None] = [None] * len(work)
        errors: list[str] = []
        indexes = iter(range(len(work)))
        http, url, headers = self.http, self.url, self.headers

        async def worker() -> None:
            for i in indexes:
                try:
                    async with http.post(url, json=work[i], headers=headers) as answer:
                        data = await answer.json()
                        if answer.status == 200:
                            wamids[i] = data["messages"][0]["id"]
                        else:
                            errors.append(f"HTTP {answer.status}: {data}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(repr(exc))

        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(work))):
                group.create_task(worker())
        sent = sum(1 for w in wamids if w is not None)
        return Outcome(sent, len(work) - sent, errors[0] if errors else None)


Client = PipelineClient | BareClient


# ---------------------------------------------------------------- measuring


@attrs.define
class Run:
    """One timed run of one mode in one cell."""

    seconds: float
    msgs_per_s: float
    cpu_us: float
    """CPU time of this process per message."""
    server_cpu_us: float | None
    """CPU time of the sandbox process per message."""


@attrs.define
class Row:
    """One mode in one cell: the median of its runs, and the peak memory of its tracemalloc run."""

    mode: str
    concurrency: int
    latency_ms: float
    messages: int
    runs: list[Run] = attrs.field(factory=list)
    peak_mib: float | None = None
    failed: int = 0
    first_error: str | None = None

    @property
    def msgs_per_s(self) -> float:
        return statistics.median(r.msgs_per_s for r in self.runs)

    @property
    def cpu_us(self) -> float:
        return statistics.median(r.cpu_us for r in self.runs)

    @property
    def server_cpu_us(self) -> float | None:
        values = [r.server_cpu_us for r in self.runs if r.server_cpu_us is not None]
        return statistics.median(values) if values else None

    @property
    def spread(self) -> float:
        """Fastest run over slowest run (1.0: every run agreed)."""
        rates = [r.msgs_per_s for r in self.runs]
        return max(rates) / min(rates)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "latency_ms": self.latency_ms,
            "messages": self.messages,
            "msgs_per_s": round(self.msgs_per_s, 1),
            "cpu_us_per_msg": round(self.cpu_us, 1),
            "server_cpu_us_per_msg": None if self.server_cpu_us is None else round(self.server_cpu_us, 1),
            "peak_mib": None if self.peak_mib is None else round(self.peak_mib, 3),
            "spread": round(self.spread, 3),
            "failed": self.failed,
            "first_error": self.first_error,
            "runs": [attrs.asdict(r) for r in self.runs],
        }


async def timed_run(
    client: Client, messages: list[Message], cell: Cell, control: Control, sandbox: SandboxProcess, row: Row
) -> None:
    work: Any = client.prepare(messages)
    await control.prepare(cell.latency_ms)
    gc.collect()
    server_start = sandbox.cpu_seconds()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    outcome = await client.run(work, cell.concurrency)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    server_end = sandbox.cpu_seconds()
    server = None if server_start is None or server_end is None else server_end - server_start
    if server is not None and server < SERVER_CPU_MIN_S:
        server = None  # a few clock ticks: too coarse to say anything per message
    n = len(messages)
    row.runs.append(Run(wall, n / wall, cpu / n * 1e6, None if server is None else server / n * 1e6))
    row.failed += outcome.failed
    row.first_error = row.first_error or outcome.first_error


async def memory_run(client: Client, messages: list[Message], cell: Cell, control: Control, row: Row) -> None:
    """The peak of Python allocations during one run, above the start (tracemalloc; untimed)."""
    work: Any = client.prepare(messages)
    await control.prepare(cell.latency_ms)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        outcome = await client.run(work, cell.concurrency)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    row.peak_mib = (peak - base) / 2**20
    row.failed += outcome.failed
    row.first_error = row.first_error or outcome.first_error


async def warm(clients: Sequence[Client], content: Template, control: Control, concurrency: int) -> None:
    """Open the connections that ``concurrency`` workers use, in both clients, before timing."""
    await control.prepare(0.0)
    for client in clients:
        work: Any = client.prepare(make_messages(content, max(concurrency * 2, 50)))
        outcome = await client.run(work, concurrency)
        if outcome.failed:
            raise RuntimeError(f"{client.mode}: warm-up failed: {outcome.first_error}")


@attrs.frozen
class Rig:
    service: OmniChannelService
    pipeline: PipelineClient
    bare: BareClient
    control: Control
    content: Template
    """The template message content every message of the benchmark carries."""
    account_templates: int

    @property
    def clients(self) -> list[Client]:
        return [self.pipeline, self.bare]


@contextlib.asynccontextmanager
async def rig(sandbox: SandboxProcess, disabled: Sequence[str] = ()) -> AsyncIterator[Rig]:
    """The started service (templates fetched), the bare session, the control API and the template.

    :param disabled: installed plugins the pipeline runs without (``--disable-plugin``).
    """
    service = make_service(sandbox.url, disabled)
    async with service, aiohttp.ClientSession() as control_http:
        limit = service.config.http.max_connections
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as bare_http:
            state = runtime(service)
            assert state.registry is not None, "check_templates needs waba_id"
            known = await state.registry.templates()
            info = next((t for t in known if (t.name, t.language) == TEMPLATE), None)
            if info is None:
                raise RuntimeError(f"the sandbox has no template {TEMPLATE}")
            yield Rig(
                service,
                PipelineClient(service),
                BareClient(bare_http, sandbox.url),
                Control(control_http, sandbox.url),
                fill(info),
                len(known),
            )


async def measure(
    plan: Plan, sandbox: SandboxProcess, disabled: Sequence[str] = ()
) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    async with rig(sandbox, disabled) as r:
        service, clients, control, content = r.service, r.clients, r.control, r.content
        context = {
            "plugins": [p.name for p in service.plugins() if not p.builtin],
            "resilience_settings": RESILIENCE_SETTINGS if "resilience" in service.config.plugins else None,
            "max_connections": service.config.http.max_connections,
            "template": {"name": content.name, "language": content.language},
            "account_templates": r.account_templates,
            "body": build_payload(make_messages(content, 1)[0]).body,
        }
        for cell in plan.cells:
            await warm(clients, content, control, cell.concurrency)
            by_mode = {
                client.mode: Row(client.mode, cell.concurrency, cell.latency_ms, cell.messages)
                for client in clients
            }
            for run in range(plan.runs):
                # Alternate which mode goes first, so that a drifting host weighs on both.
                order = clients if run % 2 == 0 else clients[::-1]
                for client in order:
                    messages = make_messages(content, cell.messages)
                    await timed_run(client, messages, cell, control, sandbox, by_mode[client.mode])
            for client in clients:
                messages = make_messages(content, cell.messages)
                await memory_run(client, messages, cell, control, by_mode[client.mode])
            rows += by_mode.values()
        context["sandbox_counters"] = (await control.stats())["counters"]
    return rows, context


# ---------------------------------------------------------------- checks and report


@attrs.define
class Check:
    latency_ms: float
    pipeline: float
    bare: float

    @property
    def ratio(self) -> float:
        return self.pipeline / self.bare

    @property
    def passed(self) -> bool:
        return self.ratio >= TARGET_RATIO

    def as_json(self) -> dict[str, Any]:
        return {
            "target": f"pipeline >= {TARGET_RATIO}x bare msgs/s at concurrency {TARGET_CONCURRENCY}",
            "latency_ms": self.latency_ms,
            "pipeline_msgs_per_s": round(self.pipeline, 1),
            "bare_msgs_per_s": round(self.bare, 1),
            "ratio": round(self.ratio, 3),
            "passed": self.passed,
        }


def pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    """(pipeline, bare) rows of each cell."""
    cells: dict[tuple[int, float], dict[str, Row]] = {}
    for row in rows:
        cells.setdefault((row.concurrency, row.latency_ms), {})[row.mode] = row
    return [(modes[PIPELINE], modes[BARE]) for modes in cells.values()]


def checks(rows: list[Row]) -> list[Check]:
    return [
        Check(p.latency_ms, p.msgs_per_s, b.msgs_per_s)
        for p, b in pairs(rows)
        if p.concurrency == TARGET_CONCURRENCY
    ]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(
    rows: list[Row], found: list[Check], info: dict[str, Any], context: dict[str, Any], seconds: float
) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    host = f"{info['implementation']} {info['python']} on {info['platform']}"
    print(f"{host}, {info['cpus']} CPUs ({info['cpu']})")
    print(f"{versions}; revision {info['revision']}")
    print(
        f"plugins: {', '.join(context['plugins'])}; template {context['template']['name']} "
        f"({context['template']['language']}) of {context['account_templates']} on the account; "
        f"connector limit {context['max_connections']}"
    )
    if context["resilience_settings"] is not None:
        print(f"[plugins.resilience] {context['resilience_settings']} (the recommended profile otherwise)")
    print()
    header = (
        f"{'c':>4} {'latency':>7}  {'mode':<8} {'n':>6} {'msgs/s':>8} {'ratio':>6} "
        f"{'CPU/msg':>8} {'CPU x':>6} {'srv CPU':>8} {'peak MiB':>8} {'spread':>6}"
    )
    print(header)
    print("-" * len(header))
    for pipeline, bare in pairs(rows):
        for row in (pipeline, bare):
            ratio = row.msgs_per_s / bare.msgs_per_s
            cpu_ratio = row.cpu_us / bare.cpu_us
            server = "-" if row.server_cpu_us is None else f"{row.server_cpu_us:,.0f}us"
            print(
                f"{row.concurrency:>4} {row.latency_ms:>5.0f}ms  {row.mode:<8} {row.messages:>6,} "
                f"{row.msgs_per_s:>8,.0f} {ratio:>5.2f}x {row.cpu_us:>6,.0f}us {cpu_ratio:>5.2f}x "
                f"{server:>8} {fmt(row.peak_mib, 2):>8} {row.spread:>5.2f}x"
            )
        print()
    print("msgs/s, CPU/msg (this process) and srv CPU (the sandbox process): median of the runs;")
    print("ratio and CPU x: over the bare loop; peak MiB: tracemalloc peak of one extra run;")
    print("spread: fastest over slowest run.")
    print()
    failures = [r for r in rows if r.failed]
    for row in failures:
        where = f"{row.mode} c={row.concurrency} {row.latency_ms:g} ms"
        print(f"warning: {where}: {row.failed} failed ({row.first_error})")
    for check in found:
        verdict = "PASS" if check.passed else "FAIL"
        print(
            f"{verdict}  pipeline at concurrency {TARGET_CONCURRENCY}, {check.latency_ms:g} ms latency: "
            f"{check.pipeline:,.0f} msgs/s, {check.ratio:.2f}x the bare loop's {check.bare:,.0f} "
            f"(target >= {TARGET_RATIO}x)"
        )
    print(f"\n(run took {seconds:.1f} s)")


# ---------------------------------------------------------------- same-process A/B

AB_VARIANTS: dict[str, tuple[str, ...]] = {
    "pipeline": (),
    "resilience-only": ("metrics",),
    "metrics-only": ("resilience",),
    "neither": ("metrics", "resilience"),
}
"""Pipeline variants of ``--ab``, by the plugins each switches off (``enabled = false``)."""
AB_PLUGINS = {"console", "metrics", "resilience", "whatsapp"}
"""The plugins ``--ab`` leaves on (but those its variant switches off); any other installed one is off."""


async def ab(sandbox: SandboxProcess, variants: Sequence[str], runs: int, messages: int) -> str:
    """The pipeline's variants and the bare loop at concurrency 50, 0 ms, alternated run by run in
    this one process against one sandbox: fairer comparisons on a noisy host than separate runs."""
    # Other installed plugins (a message store, ...) sit out: the variants differ by these two only.
    others = sorted({e.name for e in entry_points(group="omnichannel")} - AB_PLUGINS)
    async with contextlib.AsyncExitStack() as stack:
        r = await stack.enter_async_context(rig(sandbox, others))
        clients: dict[str, Client] = {"bare": r.bare}
        for name in variants:
            service = make_service(sandbox.url, (*AB_VARIANTS[name], *others))
            await stack.enter_async_context(service)
            registry = runtime(service).registry
            assert registry is not None
            await registry.templates()
            clients[name] = PipelineClient(service)
        await r.control.prepare(0.0)
        for client in clients.values():
            await warm([client], r.content, r.control, TARGET_CONCURRENCY)
        cell = Cell(TARGET_CONCURRENCY, 0.0, messages)
        rows = {name: Row(client.mode, cell.concurrency, 0.0, messages) for name, client in clients.items()}
        names = list(clients)
        for run in range(runs):
            # Rotate the order, so that a drifting host weighs on every variant.
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                work = make_messages(r.content, messages)
                await timed_run(clients[name], work, cell, r.control, sandbox, rows[name])
    bare = rows["bare"]
    lines = [
        f"concurrency {TARGET_CONCURRENCY}, 0 ms, {runs} runs of {messages:,} messages per variant (median)"
        + (f"; installed plugins switched off in every variant: {', '.join(others)}" if others else ""),
        f"{'variant':<16} {'msgs/s':>8} {'vs bare':>8} {'CPU/msg':>9} {'CPU x':>6} {'spread':>7}",
    ]
    for name, row in rows.items():
        lines.append(
            f"{name:<16} {row.msgs_per_s:>8,.0f} {row.msgs_per_s / bare.msgs_per_s:>7.2f}x "
            f"{row.cpu_us:>7,.0f}us {row.cpu_us / bare.cpu_us:>5.2f}x {row.spread:>6.2f}x"
            + (f"  ({row.failed} failed: {row.first_error})" if row.failed else "")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- profile


async def profile(sandbox: SandboxProcess, messages: int, top: int) -> str:
    """cProfile of the pipeline's ``send_many`` at concurrency 50, 0 ms: the top by own, then total time."""
    async with rig(sandbox) as r:
        await warm([r.pipeline], r.content, r.control, TARGET_CONCURRENCY)
        await r.control.prepare(0.0)
        work = make_messages(r.content, messages)
        profiler = cProfile.Profile()
        profiler.enable()
        outcome = await r.pipeline.run(work, TARGET_CONCURRENCY)
        profiler.disable()
    out = io.StringIO()
    out.write(f"{outcome.sent} sent, {outcome.failed} failed\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ---------------------------------------------------------------- main


def run(coro_fn: Callable[[SandboxProcess], Coroutine[Any, Any, T]], templates: int | None = None) -> T:
    """Run ``coro_fn(sandbox)`` with a sandbox process that lives as long as it does."""
    with sandbox_process(templates) as sandbox:
        return asyncio.run(coro_fn(sandbox))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs, fewer messages (under 30 s)")
    parser.add_argument("--runs", type=int, help="timed runs per cell and mode (default 5, quick 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument(
        "--templates",
        type=int,
        metavar="N",
        help="give the account N templates (copies of order_update added to the 9 shipped ones)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of the pipeline at concurrency 50, 0 ms"
    )
    parser.add_argument(
        "--ab",
        metavar="VARIANT",
        nargs="*",
        choices=list(AB_VARIANTS),
        help="same-process A/B at concurrency 50, 0 ms: the pipeline's variants (default: all of "
        f"{', '.join(AB_VARIANTS)}) and the bare loop, alternated run by run",
    )
    parser.add_argument("--messages", type=int, default=2_500, help="messages per --ab run (2,500)")
    parser.add_argument(
        "--disable-plugin",
        metavar="NAME",
        action="append",
        default=[],
        help="run the pipeline without this installed plugin (repeatable), as omnichannel --disable-plugin",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")

    if args.ab is not None:
        variants = args.ab or list(AB_VARIANTS)
        print(run(lambda sandbox: ab(sandbox, variants, args.runs or 6, args.messages), args.templates))
        return 0

    if args.profile:
        print(run(lambda sandbox: profile(sandbox, 2_000 if args.quick else 10_000, 35), args.templates))
        return 0

    plan = make_plan(args.quick, args.runs)
    started = time.perf_counter()
    rows, context = run(lambda sandbox: measure(plan, sandbox, args.disable_plugin), args.templates)
    seconds = time.perf_counter() - started
    found = checks(rows)
    info = machine()
    if args.json:
        document = {
            "machine": info,
            "mode": "quick" if args.quick else "full",
            "runs": plan.runs,
            "seconds": round(seconds, 2),
            "context": context,
            "results": [row.as_json() for row in rows],
            "targets": [check.as_json() for check in found],
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print_table(rows, found, info, context, seconds)
    return 1 if args.strict and not all(check.passed for check in found) else 0


if __name__ == "__main__":
    sys.exit(main())
