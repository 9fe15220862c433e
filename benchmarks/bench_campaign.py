"""A 100k-recipient campaign against the WhatsApp sandbox: in-process and through RabbitMQ.

Usage::

    python benchmarks/bench_campaign.py               # 100,000 recipients (about 8 minutes on 2 cores)
    python benchmarks/bench_campaign.py --quick       # 10,000 recipients (under 2 minutes)
    python benchmarks/bench_campaign.py --size 50000  # another campaign size
    python benchmarks/bench_campaign.py --json        # machine-readable results on stdout
    python benchmarks/bench_campaign.py --no-amqp     # without the RabbitMQ part
    python benchmarks/bench_campaign.py --keys        # the key stores alone (about 10 s)

The recipients are a CSV file (``recipient,first_name``) written line by line into a temporary
folder; every recipient is distinct (``+1650...``). Every message is the sandbox's ``welcome``
template (en_US, one named body parameter ``first_name`` from the row). The sandbox runs in its
own process, as in ``bench_whatsapp.py`` (whose pieces this script imports), with a throughput
far above what the client reaches, and is reset before every run.

* **bare**: ``bench_whatsapp.BareClient``: ``c`` workers on one ``aiohttp`` session (the
  service's connector limit) POST the same Graph bodies
  (``build_payload(Message(row.recipient, spec.content(row))).body``, built before timing).
* **in-process**: in a fresh subprocess per run, ``run_campaign(service, campaign,
  read_rows(csv), keys)``: the service of ``bench_whatsapp.make_service`` (installed plugins:
  resilience without rate limits, metrics with its defaults; ``whatsapp`` on the sandbox with
  ``check_templates``), a new SQLite key store in the temporary folder, ``concurrency = c``.
  It runs at two sizes (``size // 10`` and ``size``); after a 200-row warm-up the child samples
  its RSS (``/proc/self/status``) every 20 ms during the campaign: the highest sample minus the
  RSS after the warm-up is what the campaign held at its peak (``ru_maxrss`` is reported too, but
  start-up already sets it higher than the campaign reaches). A third run of ``size`` with a
  ``MemoryKeyStore`` (``in-process, mem``) shows what the SQLite key store costs.
* **amqp, 1 and 2 workers**: ``W`` subprocesses each run ``omnichannel.amqp.Worker`` (the loop
  behind ``omnichannel worker``; same service, concurrency ``c``, prefetch ``2c``) on a unique
  queue, sharing one SQLite key store. This process publishes the campaign from the CSV as
  ``service.bus.dispatch(SendMessage(message))`` (key ``<campaign_id>:<recipient>``; 16
  publishers at a time, each waiting for the broker's confirm) and the clock stops when the
  sandbox has accepted every message (``/_sandbox/stats``, polled every 50 ms). The workers
  report their peak RSS. The queues are deleted afterwards. These runs send 20,000 recipients by
  default (``--amqp-size``; their rate is steady), to keep the full run under 10 minutes.

* **keys** (``--keys``, instead of the above): each key store alone, in a fresh subprocess:
  ``c`` tasks take keys one after another and ``claim`` + ``complete`` each (what a campaign row
  asks of the store); keys per second and CPU per key. Memory, SQLite (a new file) and Redis
  (``--redis-url``, a unique prefix whose keys are deleted afterwards; skipped if unreachable).

Targets: in-process at least 0.80x the bare loop's messages per second; the SQLite key store
costs the in-process campaign under 10 % of its messages per second (``in-process`` at least
0.90x ``in-process, mem``); the in-process peak RSS growth of the ``size`` run within 10 % (or
5 MiB) of the ``size // 10`` run's (streaming).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import attrs
from _harness import verdict_line
from _machine import machine
from bench_whatsapp import BareClient, Control, SandboxProcess, make_service, sandbox_process

from omnichannel import Message, OmniChannelService
from omnichannel.amqp import Worker, delay_queue_name
from omnichannel.campaigns import Campaign, Row, TemplateSpec, campaign_key, read_rows, run_campaign
from omnichannel.commands import SendMessage
from omnichannel.config import AmqpConfig, Secret
from omnichannel.idempotency import KeyStore, MemoryKeyStore, RedisKeyStore, SqliteKeyStore
from omnichannel_whatsapp.payload import build_payload

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SPEC = TemplateSpec("welcome", "en_US", named=True, columns=("first_name",))
CHANNEL = "whatsapp"
CONCURRENCY = 50
PUBLISHERS = 16
"""Publishing tasks at a time in the AMQP runs (each waits for its confirm)."""
WARM_ROWS = 200
TARGET_RATIO = 0.80
KEY_STORE_RATIO = 0.90
"""The in-process campaign with the SQLite key store vs with a ``MemoryKeyStore``."""
KEYS_SIZE = 50_000
"""Keys of each ``--keys`` run by default."""
REDIS_URL = "redis://127.0.0.1:6379/0"
MEMORY_TOLERANCE = 0.10
MEMORY_SLACK_MIB = 5.0
WAIT_TIMEOUT_S = 900.0
"""How long an AMQP run may take before it is given up."""
MEMORY = "memory://"
AMQP_SIZE = 20_000
"""Recipients of each RabbitMQ run by default (they run at a steady rate; ``--amqp-size``)."""
NAMES = ("Ann", "Bo", "Chidi", "Dana", "Emil", "Fatima", "Goran", "Hana")


# ---------------------------------------------------------------- recipients


def recipient(i: int) -> str:
    return f"+1650{i:07d}"


def write_csv(path: str, size: int) -> str:
    """``size`` rows written one at a time (never held in memory)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["recipient", "first_name"])
        for i in range(size):
            out.writerow([recipient(i), NAMES[i % len(NAMES)]])
    return path


def message_of(row: Row, campaign_id: str | None = None) -> Message:
    assert row.recipient is not None
    key = None if campaign_id is None else campaign_key(campaign_id, row.recipient)
    return Message(row.recipient, SPEC.content(row), channel=CHANNEL, idempotency_key=key)


def warm_rows(count: int = WARM_ROWS) -> list[Row]:
    """Rows to other recipients than the CSV's (``+1651...``) to open connections before timing."""
    return [
        Row(i + 2, f"+1651{i:07d}", {"recipient": f"+1651{i:07d}", "first_name": "Warm"}, None, "recipient")
        for i in range(count)
    ]


def peak_rss_mib() -> float:
    """This process's peak resident set so far: ``VmHWM`` (reset by exec; ``ru_maxrss`` is not,
    a child started by a parent that held 200 MiB reports 200 MiB)."""
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float | None:
    """This process's resident set now (Linux ``/proc/self/status``)."""
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


async def sample_rss(samples: list[float], every_s: float = 0.02) -> None:
    """Append the current RSS every ``every_s`` until cancelled."""
    while True:
        rss = current_rss_mib()
        if rss is not None:
            samples.append(rss)
        await asyncio.sleep(every_s)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- children


async def child_inprocess(url: str, csv_path: str, keys_path: str, concurrency: int) -> dict[str, Any]:
    """One campaign in this (fresh) process; peak RSS before and after it.

    ``keys_path`` ``memory://``: a ``MemoryKeyStore`` (the diagnostic row: what SQLite costs).
    """
    keys: KeyStore = MemoryKeyStore() if keys_path == MEMORY else SqliteKeyStore(keys_path)
    service = make_service(url)
    try:
        async with service:
            if isinstance(keys, SqliteKeyStore):
                await keys.open()
            warm = Campaign(f"warm-{uuid.uuid4().hex[:8]}", SPEC, channel=CHANNEL, concurrency=concurrency)
            await run_campaign(service, warm, warm_rows(), keys)
            gc.collect()
            before, now_before = peak_rss_mib(), current_rss_mib() or 0.0
            samples: list[float] = []
            sampler = asyncio.create_task(sample_rss(samples))
            campaign = Campaign(
                f"bench-{uuid.uuid4().hex[:8]}", SPEC, channel=CHANNEL, concurrency=concurrency
            )
            cpu0, wall0 = cpu_s(), time.perf_counter()
            with read_rows(csv_path) as rows:
                summary = await run_campaign(service, campaign, rows, keys)
            wall, cpu = time.perf_counter() - wall0, cpu_s() - cpu0
            after = peak_rss_mib()
            sampler.cancel()
    finally:
        await keys.close()
    return {
        "seconds": wall,
        "cpu_s": cpu,
        "counts": {k.value: v for k, v in summary.counts.items()},
        "rss_before_mib": before,
        "rss_after_mib": after,
        "rss_now_mib": current_rss_mib(),
        "rss_start_mib": now_before,
        "rss_sampled_peak_mib": max(samples, default=now_before),
    }


async def child_worker(url: str, keys_path: str, queue: str, concurrency: int) -> dict[str, Any]:
    """A ``Worker`` until SIGTERM; prints ``ready`` once it consumes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    config = amqp_config(queue, concurrency)
    keys = SqliteKeyStore(keys_path)
    service = make_service(url)
    try:
        async with service:
            runner = Worker(service, config, keys)
            await runner.start()
            rss_ready = peak_rss_mib()
            print("ready", flush=True)
            try:
                await stop.wait()
            finally:
                await runner.stop()
    finally:
        await keys.close()
    return {
        "counts": {k.value: v for k, v in runner.counts.items()},
        "cpu_s": cpu_s(),
        "rss_ready_mib": rss_ready,
        "rss_peak_mib": peak_rss_mib(),
    }


async def child_keys(kind: str, target: str, size: int, concurrency: int) -> dict[str, Any]:
    """``claim`` + ``complete`` of ``size`` new keys by ``concurrency`` tasks; wall and CPU time."""
    prefix = f"bench-keys-{uuid.uuid4().hex[:8]}"
    keys: KeyStore
    if kind == "memory":
        keys = MemoryKeyStore()
    elif kind == "sqlite":
        keys = SqliteKeyStore(target)
    else:
        keys = RedisKeyStore(target, prefix=prefix, ttl_s=600)

    async def worker(names: Iterator[str]) -> None:
        for name in names:  # one shared iterator: every task takes the next key
            claim = await keys.claim(name, owner="bench", lease_s=60)
            if not claim.granted:
                raise RuntimeError(f"{name} was not granted: {claim.record}")
            await keys.complete(name, owner="bench", channel=CHANNEL, provider_message_id=f"wamid.{name}")

    async def run(names: Iterator[str]) -> None:
        await asyncio.gather(*(worker(names) for _ in range(concurrency)))

    try:
        await run(iter([f"warm-{i}" for i in range(WARM_ROWS)]))
        gc.collect()
        cpu0, wall0 = cpu_s(), time.perf_counter()
        await run(f"key-{i}" for i in range(size))
        wall, cpu = time.perf_counter() - wall0, cpu_s() - cpu0
        batches = getattr(keys, "batches", None)
    finally:
        await keys.close()
        if kind == "redis":
            await delete_redis_keys(target, prefix)
    return {"seconds": wall, "cpu_s": cpu, "batches": batches}


async def delete_redis_keys(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for name in client.scan_iter(match=f"{prefix}:*", count=5000):
            batch.append(name)
            if len(batch) >= 5000:
                await client.delete(*batch)
                batch = []
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


def redis_reachable(url: str) -> str | None:
    """``None`` if Redis answers at ``url``, else why not."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def keys_run(kind: str, folder: str, size: int, concurrency: int, redis_url: str) -> Result:
    target = redis_url if kind == "redis" else os.path.join(folder, f"keys-{uuid.uuid4().hex[:6]}.sqlite3")
    done = subprocess.run(
        child_command("keys", kind, target, str(size), str(concurrency)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"key store child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    data = last_json(done.stdout)
    detail = {"batches": data["batches"]} if data["batches"] is not None else {}
    return Result(
        f"keys: {kind}",
        size,
        data["seconds"],
        size / data["seconds"],
        size,
        0,
        data["cpu_s"] / size * 1e6,
        detail=detail,
    )


def amqp_config(queue: str, concurrency: int) -> AmqpConfig:
    return AmqpConfig(url=Secret(AMQP_URL), queue=queue, concurrency=concurrency, prefetch=2 * concurrency)


def child_command(*args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--child", *args]


def last_json(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return data


# ---------------------------------------------------------------- results


@attrs.define
class Result:
    mode: str
    size: int
    seconds: float
    msgs_per_s: float
    sent: int
    failed: int
    cpu_us: float | None = None
    """CPU of the sending process(es) per message."""
    server_cpu_us: float | None = None
    rss_growth_mib: float | None = None
    """In-process: the highest RSS sampled (every 20 ms) during the campaign minus the RSS after
    the warm-up."""
    rss_peak_mib: float | None = None
    """Peak RSS of the (largest) sending process."""
    publish_s: float | None = None
    detail: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class Check:
    target: str
    measured: str
    limit: str
    passed: bool | None
    detail: str = ""
    op: str = ">="


# ---------------------------------------------------------------- runs


LATENCY_MS = 0.0
"""The sandbox's answer delay for every run (``--latency-ms``): 0 compares CPU per message."""


async def reset(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        await Control(http, url).prepare(LATENCY_MS)


async def sandbox_counters(url: str) -> Counter[str]:
    async with aiohttp.ClientSession() as http:
        return Counter((await Control(http, url).stats())["counters"])


async def bare_run(sandbox: SandboxProcess, csv_path: str, size: int, concurrency: int) -> Result:
    limit = make_service(sandbox.url).config.http.max_connections
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as http:
        client = BareClient(http, sandbox.url)
        await Control(http, sandbox.url).prepare(LATENCY_MS)
        warm = await client.run(client.prepare([message_of(r) for r in warm_rows()]), concurrency)
        if warm.failed:
            raise RuntimeError(f"bare warm-up failed: {warm.first_error}")
        with read_rows(csv_path) as rows:
            bodies = [build_payload(message_of(row)).body for row in rows]
        await Control(http, sandbox.url).prepare(LATENCY_MS)
        gc.collect()
        server0, cpu0, wall0 = sandbox.cpu_seconds(), time.process_time(), time.perf_counter()
        outcome = await client.run(bodies, concurrency)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server1 = sandbox.cpu_seconds()
    server = None if server0 is None or server1 is None else (server1 - server0) / size * 1e6
    detail = {"first_error": outcome.first_error} if outcome.first_error else {}
    return Result(
        "bare", size, wall, size / wall, outcome.sent, outcome.failed, cpu / size * 1e6, server, detail=detail
    )


def inprocess_run(
    sandbox: SandboxProcess, folder: str, csv_path: str, size: int, concurrency: int, memory: bool = False
) -> Result:
    asyncio.run(reset(sandbox.url))
    keys_path = os.path.join(folder, f"keys-inprocess-{size}-{uuid.uuid4().hex[:6]}.sqlite3")
    if memory:
        keys_path = MEMORY
    server0 = sandbox.cpu_seconds()
    done = subprocess.run(
        child_command("inprocess", sandbox.url, csv_path, keys_path, str(concurrency)),
        cwd=folder,  # the message store's default file goes there
        capture_output=True,
        text=True,
        check=False,
    )
    server1 = sandbox.cpu_seconds()
    if done.returncode != 0:
        raise RuntimeError(f"in-process child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    data = last_json(done.stdout)
    counts: dict[str, int] = data["counts"]
    sent = counts.get("sent", 0)
    server = None if server0 is None or server1 is None else (server1 - server0) / size * 1e6
    return Result(
        "in-process, mem" if memory else "in-process",
        size,
        data["seconds"],
        size / data["seconds"],
        sent,
        size - sent,
        data["cpu_s"] / size * 1e6,
        server,
        rss_growth_mib=data["rss_sampled_peak_mib"] - data["rss_start_mib"],
        rss_peak_mib=data["rss_after_mib"],
        detail={
            "counts": counts,
            "rss_before_mib": data["rss_before_mib"],
            "rss_now_mib": data["rss_now_mib"],
            "rss_start_mib": data["rss_start_mib"],
            "rss_sampled_peak_mib": data["rss_sampled_peak_mib"],
            "ru_maxrss_growth_mib": data["rss_after_mib"] - data["rss_before_mib"],
        },
    )


@contextlib.contextmanager
def workers(
    url: str, keys_path: str, queue: str, count: int, concurrency: int
) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` worker processes, consuming once this yields; SIGTERM on the way out."""
    started: list[subprocess.Popen[str]] = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                child_command("worker", url, keys_path, queue, str(concurrency)),
                cwd=os.path.dirname(keys_path),  # the message store's default file goes there
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started.append(process)
        for process in started:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "ready":
                process.kill()
                raise RuntimeError(f"worker did not start: {line}{process.communicate()[1][-3000:]}")
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)


async def publish(url: str, queue: str, csv_path: str, campaign_id: str, concurrency: int) -> int:
    base = make_service(url).config
    service = OmniChannelService(attrs.evolve(base, amqp=amqp_config(queue, concurrency)))
    published = 0
    async with service:
        bus = service.bus
        with read_rows(csv_path) as rows:

            async def publisher() -> None:
                nonlocal published
                for row in rows:  # one shared iterator: every task takes the next row
                    await bus.dispatch(SendMessage(message_of(row, campaign_id)))
                    published += 1

            async with asyncio.TaskGroup() as group:
                for _ in range(PUBLISHERS):
                    group.create_task(publisher())
    return published


async def wait_accepted(url: str, size: int, processes: list[subprocess.Popen[str]]) -> Counter[str]:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        control = Control(http, url)
        while True:
            counters = Counter((await control.stats())["counters"])
            if counters["accepted"] >= size:
                return counters
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a worker exited during the run")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {counters['accepted']} of {size} accepted after {WAIT_TIMEOUT_S:g} s"
                )
            await asyncio.sleep(0.05)


async def delete_queues(queue: str) -> None:
    import aio_pika

    names = [queue, f"{queue}.dlq", *(delay_queue_name(queue, d) for d in AmqpConfig().delays)]
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()


def amqp_run(
    sandbox: SandboxProcess, folder: str, csv_path: str, size: int, count: int, concurrency: int
) -> Result:
    tag = uuid.uuid4().hex[:8]
    queue = f"bench-campaign-{tag}-{count}w"
    keys_path = os.path.join(folder, f"keys-amqp-{count}w-{tag}.sqlite3")
    campaign_id = f"bench-{tag}"
    asyncio.run(reset(sandbox.url))
    outputs: list[dict[str, Any]] = []
    try:
        with workers(sandbox.url, keys_path, queue, count, concurrency) as processes:

            async def drive() -> tuple[float, float, Counter[str]]:
                wall0 = time.perf_counter()
                published = await publish(sandbox.url, queue, csv_path, campaign_id, concurrency)
                publish_s = time.perf_counter() - wall0
                if published != size:
                    raise RuntimeError(f"published {published} of {size}")
                counters = await wait_accepted(sandbox.url, size, processes)
                return time.perf_counter() - wall0, publish_s, counters

            server0 = sandbox.cpu_seconds()
            wall, publish_s, counters = asyncio.run(drive())
            server1 = sandbox.cpu_seconds()
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                out, err = process.communicate(timeout=60)
                if process.returncode != 0:
                    raise RuntimeError(f"worker exited with {process.returncode}:\n{err[-3000:]}")
                outputs.append(last_json(out))
    finally:
        asyncio.run(delete_queues(queue))
    fates: Counter[str] = Counter()
    for output in outputs:
        fates.update(output["counts"])
    server = None if server0 is None or server1 is None else (server1 - server0) / size * 1e6
    return Result(
        f"amqp {count} worker{'s' if count > 1 else ''}",
        size,
        wall,
        size / wall,
        fates["sent"],
        size - fates["sent"],
        sum(o["cpu_s"] for o in outputs) / size * 1e6,
        server,
        rss_peak_mib=max(o["rss_peak_mib"] for o in outputs),
        publish_s=publish_s,
        detail={
            "fates": dict(fates),
            "workers": outputs,
            "sandbox_accepted": counters["accepted"],
            "sandbox_requests": counters["requests"],
        },
    )


# ---------------------------------------------------------------- checks and report


def checks(results: list[Result]) -> list[Check]:
    by = {(r.mode, r.size): r for r in results}
    size = max(r.size for r in results)
    found: list[Check] = []
    bare, inproc = by.get(("bare", size)), by.get(("in-process", size))
    if bare and inproc:
        ratio = inproc.msgs_per_s / bare.msgs_per_s
        found.append(
            Check(
                f"in-process campaign of {size:,} vs the bare aiohttp loop, {LATENCY_MS:g} ms latency",
                f"{ratio:.2f}x ({inproc.msgs_per_s:,.0f} vs {bare.msgs_per_s:,.0f} msgs/s)",
                f"{TARGET_RATIO:.2f}x",
                ratio >= TARGET_RATIO,
            )
        )
    memory = by.get(("in-process, mem", size))
    if inproc and memory:
        ratio = inproc.msgs_per_s / memory.msgs_per_s
        extra = (
            f"; CPU/msg {inproc.cpu_us:,.0f} vs {memory.cpu_us:,.0f} µs"
            if inproc.cpu_us and memory.cpu_us
            else ""
        )
        found.append(
            Check(
                "in-process campaign with the SQLite key store vs a MemoryKeyStore",
                f"{ratio:.2f}x ({inproc.msgs_per_s:,.0f} vs {memory.msgs_per_s:,.0f} msgs/s{extra})",
                f"{KEY_STORE_RATIO:.2f}x",
                ratio >= KEY_STORE_RATIO,
                "the SQLite key store costs under 10 %",
            )
        )
    small = [r for r in results if r.mode == "in-process" and r.size < size]
    if inproc and small and inproc.rss_growth_mib is not None and small[0].rss_growth_mib is not None:
        a, b = small[0].rss_growth_mib, inproc.rss_growth_mib
        allowed = max(a * (1 + MEMORY_TOLERANCE), a + MEMORY_SLACK_MIB)
        found.append(
            Check(
                "in-process peak RSS growth independent of the campaign size",
                f"{b:.1f} MiB at {size:,} vs {a:.1f} MiB at {small[0].size:,}",
                f"{allowed:.1f} MiB",
                b <= allowed,
                "10 % or 5 MiB over the smaller run",
                op="<=",
            )
        )
    return found


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_keys_table(results: list[Result], info: dict[str, Any], seconds: float) -> None:
    print_machine(info)
    print(f"claim + complete per key, {CONCURRENCY} tasks, each store in a fresh process")
    print()
    header = f"{'store':<14} {'keys':>8} {'seconds':>8} {'keys/s':>9} {'CPU/key':>9} {'batches':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        batches = r.detail.get("batches")
        print(
            f"{r.mode.removeprefix('keys: '):<14} {r.size:>8,} {r.seconds:>8.2f} {r.msgs_per_s:>9,.0f} "
            f"{fmt(r.cpu_us, 1) + 'us':>9} {'-' if batches is None else f'{batches:,}':>8}"
        )
    print()
    print("CPU/key: this process (the event loop and the store's thread; not the Redis server);")
    print("batches: transactions (SQLite) or pipelines (Redis) for the warm-up and the run together.")
    for r in results:
        if r.detail.get("skipped"):
            print(f"{r.mode}: skipped ({r.detail['skipped']})")
    print(f"\n(run took {seconds:.1f} s)")


def print_machine(info: dict[str, Any]) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    host = f"{info['implementation']} {info['python']} on {info['platform']}"
    print(f"{host}, {info['cpus']} CPUs ({info['cpu']})")
    print(f"{versions}; revision {info['revision']}")


def print_table(results: list[Result], found: list[Check], info: dict[str, Any], seconds: float) -> None:
    print_machine(info)
    print(f"template {SPEC.name} ({SPEC.language}), concurrency {CONCURRENCY} (per worker), SQLite key store")
    print()
    header = (
        f"{'mode':<16} {'n':>8} {'seconds':>8} {'msgs/s':>8} {'vs bare':>7} {'failed':>6} "
        f"{'CPU/msg':>8} {'srv CPU':>8} {'RSS+ MiB':>8} {'peak MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    bare = {r.size: r for r in results if r.mode == "bare"}
    top = max(bare) if bare else None
    for r in results:
        ref = bare.get(r.size) or (bare[top] if top is not None else None)
        ratio = f"{r.msgs_per_s / ref.msgs_per_s:.2f}x" if ref else "-"
        print(
            f"{r.mode:<16} {r.size:>8,} {r.seconds:>8.1f} {r.msgs_per_s:>8,.0f} {ratio:>7} {r.failed:>6} "
            f"{fmt(r.cpu_us, 0) + 'us':>8} {fmt(r.server_cpu_us, 0) + 'us':>8} "
            f"{fmt(r.rss_growth_mib):>8} {fmt(r.rss_peak_mib):>8}"
        )
    print()
    print("CPU/msg: the sending process(es); srv CPU: the sandbox; RSS+: peak RSS growth during the")
    print("campaign, sampled every 20 ms (in-process); peak: VmHWM of the sending process (the")
    print("largest worker for amqp).")
    for r in results:
        if r.publish_s is not None:
            rate = r.size / r.publish_s
            print(
                f"{r.mode}: publishing took {r.publish_s:.1f} s ({rate:,.0f} msgs/s); "
                f"fates {r.detail['fates']}"
            )
        if r.failed:
            print(f"warning: {r.mode} {r.size:,}: {r.failed} not sent: {r.detail}")
    print()
    for c in found:
        print(verdict_line(c.passed, c.target, c.measured, c.limit, c.detail, c.op))
    print(f"\n(run took {seconds:.1f} s)")


# ---------------------------------------------------------------- main


def measure(args: argparse.Namespace) -> list[Result]:
    size: int = args.size
    small = max(1_000, size // 10)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as folder, sandbox_process() as sandbox:
        big_csv = write_csv(os.path.join(folder, f"recipients-{size}.csv"), size)
        small_csv = write_csv(os.path.join(folder, f"recipients-{small}.csv"), small)
        results.append(asyncio.run(bare_run(sandbox, big_csv, size, CONCURRENCY)))
        results.append(inprocess_run(sandbox, folder, small_csv, small, CONCURRENCY))
        results.append(inprocess_run(sandbox, folder, big_csv, size, CONCURRENCY))
        results.append(inprocess_run(sandbox, folder, big_csv, size, CONCURRENCY, memory=True))
        if not args.no_amqp:
            amqp_size = min(size, args.amqp_size or AMQP_SIZE)
            amqp_csv = (
                big_csv if amqp_size == size else write_csv(os.path.join(folder, "amqp.csv"), amqp_size)
            )
            for count in (1, 2):
                results.append(amqp_run(sandbox, folder, amqp_csv, amqp_size, count, CONCURRENCY))
    return results


def measure_keys(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as folder:
        for kind in ("memory", "sqlite", "redis"):
            why = redis_reachable(args.redis_url) if kind == "redis" else None
            if why is not None:
                results.append(Result(f"keys: {kind}", 0, 0.0, 0.0, 0, 0, detail={"skipped": why}))
                continue
            results.append(keys_run(kind, folder, args.keys_size, CONCURRENCY, args.redis_url))
    return [r for r in results if not r.detail.get("skipped")] + [
        r for r in results if r.detail.get("skipped")
    ]


def run_child(argv: list[str]) -> int:
    kind, url, *rest = argv
    if kind == "keys":
        store, size, concurrency = rest
        print(json.dumps(asyncio.run(child_keys(url, store, int(size), int(concurrency)))), flush=True)
        return 0
    if kind == "inprocess":
        csv_path, keys_path, concurrency = rest
        data = asyncio.run(child_inprocess(url, csv_path, keys_path, int(concurrency)))
    else:
        keys_path, queue, concurrency = rest
        data = asyncio.run(child_worker(url, keys_path, queue, int(concurrency)))
    print(json.dumps(data), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return run_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 recipients (about a minute)")
    parser.add_argument("--size", type=int, help="recipients (default 100,000; --quick 10,000)")
    parser.add_argument(
        "--amqp-size", type=int, help="recipients of the RabbitMQ runs (default 20,000, at most --size)"
    )
    parser.add_argument("--no-amqp", action="store_true", help="skip the RabbitMQ runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--keys", action="store_true", help="measure the key stores alone (claim + complete per key) instead"
    )
    parser.add_argument(
        "--keys-size", type=int, default=KEYS_SIZE, help=f"keys of each --keys run (default {KEYS_SIZE:,})"
    )
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"the Redis of --keys (default {REDIS_URL})")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the sandbox delays every answer this long (default 0: CPU-bound; 50: closer to Graph)",
    )
    args = parser.parse_args(argv)
    global LATENCY_MS
    LATENCY_MS = args.latency_ms
    if args.keys:
        started = time.perf_counter()
        results = measure_keys(args)
        if args.json:
            document = {
                "machine": machine(),
                "concurrency": CONCURRENCY,
                "results": [attrs.asdict(r) for r in results],
            }
            json.dump(document, sys.stdout, indent=2)
            print()
        else:
            print_keys_table(results, machine(), time.perf_counter() - started)
        return 0
    args.size = args.size or (10_000 if args.quick else 100_000)
    if args.size < 1_000:
        parser.error("--size must be at least 1000")
    started = time.perf_counter()
    results = measure(args)
    seconds = time.perf_counter() - started
    found = checks(results)
    info = machine()
    if args.json:
        document = {
            "machine": info,
            "mode": "quick" if args.quick else "full",
            "size": args.size,
            "concurrency": CONCURRENCY,
            "seconds": round(seconds, 2),
            "results": [attrs.asdict(r) for r in results],
            "targets": [{**attrs.asdict(c)} for c in found],
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print_table(results, found, info, seconds)
    return 1 if args.strict and not all(c.passed for c in found) else 0


if __name__ == "__main__":
    sys.exit(main())
