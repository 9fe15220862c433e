"""The message store: recording sends (sends/s), webhook status ingestion (events/s) and
analytics over one million messages.

Usage::

    python benchmarks/bench_store.py                # full run (a few minutes on 2 cores)
    python benchmarks/bench_store.py --quick        # smoke run (100k messages, fewer events)
    python benchmarks/bench_store.py --json         # machine-readable results on stdout
    python benchmarks/bench_store.py --strict       # exit 1 when a target is missed
    python benchmarks/bench_store.py --no-postgres  # SQLite only
    python benchmarks/bench_store.py --explain      # per-query times and PostgreSQL plans
    python benchmarks/bench_store.py --sends-only   # only the sends

Sends: accepted sends as the store plugin records them (a new message id each, with recipient,
provider id, template and language) through ``record_send`` one by one, then through
``record_sends`` in batches of 100 and 500 (one transaction each), then batches of 500 whose
messages were all recorded already (``queued``, then the batch re-sends them ``accepted``: the
path that reads the rows and histories). Each row gives sends/s, the benchmark process's CPU per
send (``time.process_time``: the event loop and the store's thread) and, on PostgreSQL, the CPU
of the server process that served the store's one connection (``/proc/<pid>/stat``), per send.

Ingestion: ``record_send`` of N accepted messages (with provider ids; untimed), then their status
events (``sent``, ``delivered``, ``read``; a fifth of the messages get one event twice; all the
events shuffled, so most arrive out of order, as webhooks do) through ``record_status`` by K
concurrent writers (K = 1, 10, 50), in events per second; then the same through
``record_statuses`` in batches of 500 (one transaction each), K = 1 and 4 batches at once. SQLite
is a file in a temporary folder; PostgreSQL (``--dsn``, default
``postgresql://postgres@127.0.0.1:5432/test``) a schema of its own with ``pool_size = K``.

Analytics: after ``upgrade()``, 1,000,000 ``messages`` rows (and ``message_statuses`` for a
tenth of them) are bulk-loaded with one ``INSERT ... SELECT`` (PostgreSQL ``generate_series``,
SQLite a recursive CTE) over 30 days, around the store, so the aggregates are then built by
``rebuild_aggregates()`` (the same SQL as the schema migration's backfill; timed). Then
``message_stats`` and ``template_performance`` over the whole range are timed, best of 3, and
``message_stats`` over a range that starts and ends inside an hour (the partial hours read from
``messages``); ``message_stats(exact=True)`` (every latency read and sorted) is timed once, and
its percentiles compared with the approximate ones (the histograms).

Targets: at least 5,000 sends/s through ``record_sends`` (500 per batch) on each backend, at
most 50 µs of CPU per send (this process, plus PostgreSQL's server process); at least 5,000
status events/s into PostgreSQL with batching (``record_statuses``); a stats query over 1M
messages under 1 s. Every schema and file created is dropped at the end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import attrs
from _harness import arguments, verdict_line
from _machine import machine

from omnichannel.message import DeliveryStatus
from omnichannel.store import MessageStore, SendRecord, StatusUpdate
from omnichannel.store.analytics import Fetch, _message_stats, message_stats, template_performance
from omnichannel.store.postgres import PostgresMessageStore
from omnichannel.store.sqlite import SqliteMessageStore

DSN = "postgresql://postgres@127.0.0.1:5432/test"
CHANNEL = "whatsapp"
CONCURRENCY = (1, 10, 50)
BATCH = 500
BATCH_CONCURRENCY = (1, 4)
INGEST_TARGET = 5000.0
SEND_BATCHES = (100, 500)
SENDS_TARGET = 5000.0
SEND_CPU_TARGET_US = 50.0
STATS_TARGET_S = 1.0
DAY_MS = 86_400_000
BASE = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=30)
Event = tuple[str, DeliveryStatus, datetime]

# ---------------------------------------------------------------- ingestion


def events_for(tag: str, n: int, rng: random.Random) -> list[Event]:
    """sent, delivered, read per message; one in five messages has one event twice; shuffled."""
    events: list[Event] = []
    for i in range(n):
        pid = f"wamid.{tag}.{i}"
        at = BASE + timedelta(seconds=i)
        own = [
            (pid, DeliveryStatus.SENT, at + timedelta(seconds=1)),
            (pid, DeliveryStatus.DELIVERED, at + timedelta(seconds=2)),
            (pid, DeliveryStatus.READ, at + timedelta(seconds=30)),
        ]
        if i % 5 == 0:
            own.append(own[rng.randrange(3)])
        events += own
    rng.shuffle(events)
    return events


async def send_one_by_one(store: MessageStore, tag: str, n: int, concurrency: int) -> float:
    """Record ``n`` accepted sends; return sends/s."""

    async def one(i: int) -> None:
        await store.record_send(
            message_id=f"{tag}-{i}",
            channel=CHANNEL,
            status=DeliveryStatus.ACCEPTED,
            at=BASE + timedelta(seconds=i),
            recipient=f"+1555{i:07d}",
            provider_message_id=f"wamid.{tag}.{i}",
            template="order_update",
            language="en",
        )

    return await workers(one, list(range(n)), concurrency)


async def workers(job: Callable[[Any], Awaitable[None]], items: Sequence[Any], concurrency: int) -> float:
    """Run ``job`` on every item with ``concurrency`` workers; return items per second."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await job(item)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(items) / (time.perf_counter() - start)


async def ingest(store: MessageStore, tag: str, n: int, concurrency: int) -> dict[str, Any]:
    sends = await send_one_by_one(store, tag, n, concurrency)
    events = events_for(tag, n, random.Random(tag))

    async def one(event: Event) -> None:
        pid, status, at = event
        await store.record_status(channel=CHANNEL, provider_message_id=pid, status=status, at=at)

    rate = await workers(one, events, concurrency)
    await check_read(store, tag, n)
    return {"concurrency": concurrency, "events": len(events), "events_per_s": rate, "sends_per_s": sends}


async def check_read(store: MessageStore, tag: str, n: int) -> None:
    for i in random.Random(1).sample(range(n), min(n, 25)):
        record = await store.get(f"{tag}-{i}")
        if record is None or record.status is not DeliveryStatus.READ or record.sent_at is None:
            raise RuntimeError(f"message {tag}-{i} not folded to read: {record}")


async def ingest_batched(
    store: MessageStore, tag: str, n: int, batch: int, concurrency: int
) -> dict[str, Any]:
    """The same events through ``record_statuses``, ``batch`` per call, ``concurrency`` calls at once."""
    await send_one_by_one(store, tag, n, 10)
    events = events_for(tag, n, random.Random(tag))
    chunks = [
        [StatusUpdate(CHANNEL, pid, status, at) for pid, status, at in events[first : first + batch]]
        for first in range(0, len(events), batch)
    ]
    rate = await workers(store.record_statuses, chunks, concurrency) * len(events) / len(chunks)
    await check_read(store, tag, n)
    return {"concurrency": concurrency, "batch": batch, "events": len(events), "events_per_s": rate}


# ---------------------------------------------------------------- sends


def send_records(tag: str, n: int, status: DeliveryStatus = DeliveryStatus.ACCEPTED) -> list[SendRecord]:
    """``n`` sends of new messages, as the store plugin records a WhatsApp template send."""
    return [
        SendRecord(
            message_id=f"{tag}-{i}",
            channel=CHANNEL,
            status=status,
            at=BASE + timedelta(milliseconds=i),
            recipient=f"+1555{i:07d}",
            provider_message_id=None if status is DeliveryStatus.QUEUED else f"wamid.{tag}.{i}",
            template="order_update",
            language="en",
        )
        for i in range(n)
    ]


def process_cpu_s(pid: int | None) -> float:
    """The CPU time (user + system) of process ``pid`` so far (0 when there is none)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_pid(store: MessageStore) -> int | None:
    """The PostgreSQL server process of the store's connection (its pool has one), else None."""
    if not isinstance(store, PostgresMessageStore):
        return None
    pool = await store._connected()
    async with pool.acquire() as conn:
        return int(conn.get_server_pid())


async def time_sends(
    store: MessageStore, label: str, records: list[SendRecord], batch: int
) -> dict[str, Any]:
    """Record ``records`` (``batch`` per ``record_sends``, or 1: ``record_send`` each); the rates."""
    keywords = [attrs.asdict(record, recurse=False) for record in records]
    chunks = [records[first : first + batch] for first in range(0, len(records), batch)]
    pid = await server_pid(store)
    gc.collect()
    server, cpu, wall = process_cpu_s(pid), time.process_time(), time.perf_counter()
    if batch == 1:
        for kwargs in keywords:
            await store.record_send(**kwargs)
    else:
        for chunk in chunks:
            await store.record_sends(chunk)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server = process_cpu_s(pid) - server
    n = len(records)
    for record in random.Random(2).sample(records, min(n, 25)):
        got = await store.get(record.message_id)
        if (
            got is None
            or got.status is not record.status
            or got.provider_message_id != record.provider_message_id
        ):
            raise RuntimeError(f"send {record.message_id} not recorded as {record.status.value}: {got}")
    return {
        "writer": label,
        "batch": batch,
        "sends": n,
        "sends_per_s": n / wall,
        "cpu_us_per_send": cpu / n * 1e6,
        "server_cpu_us_per_send": server / n * 1e6 if pid is not None else None,
    }


async def run_sends(store: MessageStore, one_by_one: int, batched: int) -> list[dict[str, Any]]:
    await store.upgrade()
    rows = [await time_sends(store, "record_send", send_records("s1", one_by_one), 1)]
    for batch in SEND_BATCHES:
        rows.append(await time_sends(store, "record_sends", send_records(f"s{batch}", batched), batch))
    # The same messages recorded first as queued: the batch reads and updates existing rows.
    for first in range(0, batched, 500):
        await store.record_sends(send_records("again", batched, DeliveryStatus.QUEUED)[first : first + 500])
    rows.append(await time_sends(store, "record_sends, re-sends", send_records("again", batched), 500))
    return rows


# ---------------------------------------------------------------- one million messages

# Row i: channel by i % 3, a pseudo-random bucket b = (i * 7919) % 100 for the status
# (5 % accepted, 10 % failed (half at the send), 15 % sent, 30 % delivered, 40 % read),
# 70 % templated (7 templates x 2 languages), created evenly over 30 days.
_PG_LOAD = """
INSERT INTO messages (message_id, channel, status, created_at, updated_at, recipient,
  provider_message_id, template, language, error_kind, error_code, error_detail,
  accepted_at, sent_at, delivered_at, read_at, failed_at)
SELECT 'm' || i, (ARRAY['whatsapp','sms','email'])[i % 3 + 1],
  CASE WHEN b < 5 THEN 'accepted' WHEN b < 15 THEN 'failed' WHEN b < 30 THEN 'sent'
       WHEN b < 60 THEN 'delivered' ELSE 'read' END,
  c, c + interval '1 hour', '+1555' || i, 'pid.' || i,
  CASE WHEN i % 10 < 7 THEN 'tpl_' || (i % 7) END,
  CASE WHEN i % 10 < 7 THEN (ARRAY['en','de'])[i % 2 + 1] END,
  CASE WHEN b >= 5 AND b < 15 THEN 'provider' END,
  CASE WHEN b >= 5 AND b < 15 THEN '13' || (i % 4) END,
  CASE WHEN b >= 5 AND b < 15 THEN 'error detail' END,
  CASE WHEN b < 10 OR b >= 15 THEN c + interval '100 milliseconds' END,
  CASE WHEN b >= 15 THEN c + interval '1 second' END,
  CASE WHEN b >= 30 THEN c + make_interval(secs => 2 + i % 60) END,
  CASE WHEN b >= 60 THEN c + make_interval(secs => 60 + i % 3600) END,
  CASE WHEN b >= 5 AND b < 15 THEN c + interval '1 second' END
FROM (SELECT i, (i * 7919) % 100 AS b,
        $2::timestamptz + (i * $3::float8) * interval '1 millisecond' AS c
      FROM generate_series(0::bigint, $1::bigint - 1) AS i) AS g
"""
_SQLITE_LOAD = """
WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?),
g AS (SELECT i, (i * 7919) % 100 AS b, ? + CAST(i * ? AS INTEGER) AS c FROM s)
INSERT INTO messages (message_id, channel, status, created_at, updated_at, recipient,
  provider_message_id, template, language, error_kind, error_code, error_detail,
  accepted_at, sent_at, delivered_at, read_at, failed_at)
SELECT 'm' || i, CASE i % 3 WHEN 0 THEN 'whatsapp' WHEN 1 THEN 'sms' ELSE 'email' END,
  CASE WHEN b < 5 THEN 'accepted' WHEN b < 15 THEN 'failed' WHEN b < 30 THEN 'sent'
       WHEN b < 60 THEN 'delivered' ELSE 'read' END,
  c, c + 3600000, '+1555' || i, 'pid.' || i,
  CASE WHEN i % 10 < 7 THEN 'tpl_' || (i % 7) END,
  CASE WHEN i % 10 < 7 THEN (CASE i % 2 WHEN 0 THEN 'en' ELSE 'de' END) END,
  CASE WHEN b >= 5 AND b < 15 THEN 'provider' END,
  CASE WHEN b >= 5 AND b < 15 THEN '13' || (i % 4) END,
  CASE WHEN b >= 5 AND b < 15 THEN 'error detail' END,
  CASE WHEN b < 10 OR b >= 15 THEN c + 100 END,
  CASE WHEN b >= 15 THEN c + 1000 END,
  CASE WHEN b >= 30 THEN c + (2 + i % 60) * 1000 END,
  CASE WHEN b >= 60 THEN c + (60 + i % 3600) * 1000 END,
  CASE WHEN b >= 5 AND b < 15 THEN c + 1000 END
FROM g
"""
_STATUS_COLUMNS = ("accepted", "sent", "delivered", "read", "failed")


def _statuses_sql(placeholder_like: str) -> list[str]:
    """The status rows of one message in ten (ids ending in 0), one statement per status."""
    return [
        f"INSERT INTO message_statuses (message_id, status, occurred_at) "
        f"SELECT message_id, '{s}', {s}_at FROM messages "
        f"WHERE {s}_at IS NOT NULL AND message_id LIKE {placeholder_like}"
        for s in _STATUS_COLUMNS
    ]


async def load_postgres(store: PostgresMessageStore, n: int) -> float:
    await store.upgrade()
    pool = await store._connected()
    start = time.perf_counter()
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(_PG_LOAD, n, BASE, SPAN / timedelta(milliseconds=1) / n)
            for sql in _statuses_sql("'%0'"):
                await conn.execute(sql)
        await conn.execute("ANALYZE messages")
        await conn.execute("ANALYZE message_statuses")
    return time.perf_counter() - start


def load_sqlite(path: Path, n: int) -> float:
    import sqlite3

    start = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.execute(_SQLITE_LOAD, (n, round(BASE.timestamp() * 1000), 30 * DAY_MS / n))
        for sql in _statuses_sql("'%0'"):
            db.execute(sql)
        db.execute("COMMIT")
        db.execute("ANALYZE")
    finally:
        db.close()
    return time.perf_counter() - start


async def best_of(step: Callable[[], Awaitable[Any]], repeat: int = 3) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = await step()
        best = min(best, time.perf_counter() - start)
    return best, result


async def raw_count(store: MessageStore, start: datetime, end: datetime) -> int:
    """The messages created in ``[start, end)``, counted in ``messages`` (not the aggregates)."""
    if isinstance(store, SqliteMessageStore):
        from omnichannel.store.sqlite_stats import DIALECT, runner
    else:
        from omnichannel.store.postgres_stats import DIALECT, runner  # type: ignore[assignment]

    async def work(fetch: Fetch) -> int:
        rows = await fetch(
            "SELECT count(*) FROM messages WHERE created_at >= ? AND created_at < ?",
            [DIALECT.time(start), DIALECT.time(end)],
        )
        return int(rows[0][0])

    return await runner(store)(work)  # type: ignore[arg-type]


def worst_error(approximate: Any, exact: Any) -> float:
    """The largest relative difference of the approximate percentiles from the exact ones."""
    worst = 0.0
    for name in ("to_delivered", "to_read"):
        a, e = getattr(approximate, name), getattr(exact, name)
        if a.count != e.count:
            raise RuntimeError(f"{name}: {a.count} latencies, exact scan {e.count}")
        for got, want in ((a.p50, e.p50), (a.p95, e.p95)):
            if got is not None and want:
                worst = max(worst, abs(got - want) / abs(want))
    return worst


async def time_stats(store: MessageStore, n: int, explain: bool) -> dict[str, Any]:
    start, end = BASE, BASE + SPAN + timedelta(days=1)
    stats_s, stats = await best_of(lambda: message_stats(store, start=start, end=end))
    perf_s, rows = await best_of(lambda: template_performance(store, start=start, end=end))
    if stats.total != n:
        raise RuntimeError(f"message_stats counted {stats.total} messages, not {n}")
    t0 = time.perf_counter()
    exact = await message_stats(store, start=start, end=end, exact=True)
    exact_s = time.perf_counter() - t0
    # A range that starts and ends inside an hour: aggregates plus two partial hours.
    inner = (BASE + timedelta(hours=5, minutes=17, seconds=3), BASE + SPAN - timedelta(hours=3, minutes=41))
    inner_s, inner_stats = await best_of(lambda: message_stats(store, start=inner[0], end=inner[1]))
    expected = await raw_count(store, *inner)
    if inner_stats.total != expected:
        raise RuntimeError(
            f"message_stats counted {inner_stats.total} messages in the inner range, not {expected}"
        )
    return {
        "messages": n,
        "message_stats_s": stats_s,
        "template_performance_s": perf_s,
        "templates": len(rows),
        "message_stats_exact_s": exact_s,
        "percentile_error": worst_error(stats, exact),
        "inner_range_s": inner_s,
        "inner_range_messages": inner_stats.total,
        "to_delivered": [
            stats.to_delivered.p50,
            stats.to_delivered.p95,
            exact.to_delivered.p50,
            exact.to_delivered.p95,
        ],
        "to_read": [stats.to_read.p50, stats.to_read.p95, exact.to_read.p50, exact.to_read.p95],
        "queries": await query_breakdown(store, start, end, explain),
    }


async def query_breakdown(store: MessageStore, start: datetime, end: datetime, explain: bool) -> list[Any]:
    """Each query of one ``message_stats`` call, timed (and, with ``explain``, its plan)."""
    if isinstance(store, SqliteMessageStore):
        from omnichannel.store.sqlite_stats import DIALECT, runner
    else:
        from omnichannel.store.postgres_stats import DIALECT, runner  # type: ignore[assignment]
    out: list[Any] = []

    async def work(fetch: Fetch) -> Any:
        async def timed(sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
            t0 = time.perf_counter()
            rows = await fetch(sql, args)
            entry: dict[str, Any] = {"sql": " ".join(sql.split())[:110], "s": time.perf_counter() - t0}
            if explain:
                prefix = (
                    "EXPLAIN QUERY PLAN " if isinstance(store, SqliteMessageStore) else "EXPLAIN ANALYZE "
                )
                entry["plan"] = [" | ".join(str(c) for c in row) for row in await fetch(prefix + sql, args)]
            out.append(entry)
            return rows

        return await _message_stats(
            timed, DIALECT, start=start, end=end, channel=None, template=None, top_errors=10
        )

    await runner(store)(work)  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------- driver


async def run_backend(
    name: str,
    make: Callable[[int, str], MessageStore],
    sizes: tuple[int, int, int, int],
    explain: bool,
    sends_only: bool,
    log: Any,
) -> dict[str, Any]:
    one_by_one, batched, events_n, stats_n = sizes
    result: dict[str, Any] = {"backend": name, "sends": [], "ingestion": [], "batched": []}
    store = make(1, "sends")
    try:
        result["sends"] = await run_sends(store, one_by_one, batched)
    finally:
        await store.close()
    for row in result["sends"]:
        server = row["server_cpu_us_per_send"]
        log(
            f"{name:<10} {row['writer']:<23} batch {row['batch']:>3}  {row['sends']:>6,} sends "
            f"{row['sends_per_s']:>8,.0f} sends/s  CPU {row['cpu_us_per_send']:6.1f} µs/send"
            + ("" if server is None else f" + server {server:5.1f} µs/send")
        )
    if sends_only:
        return result
    for k in CONCURRENCY:
        store = make(k, "ingest")
        try:
            await store.upgrade()
            row = await ingest(store, f"k{k}", events_n, k)
        finally:
            await store.close()
        result["ingestion"].append(row)
        log(
            f"{name:<10} ingest  K={k:<3} {row['events']:>7,} events  {row['events_per_s']:>8,.0f} events/s"
            f"  (record_send {row['sends_per_s']:,.0f}/s)"
        )
    for k in BATCH_CONCURRENCY:
        store = make(max(k, 10), "ingest")
        try:
            await store.upgrade()
            row = await ingest_batched(store, f"b{k}", events_n, BATCH, k)
        finally:
            await store.close()
        result["batched"].append(row)
        log(
            f"{name:<10} record_statuses, {BATCH} per batch, K={k:<3} {row['events']:>7,} events  "
            f"{row['events_per_s']:>8,.0f} events/s"
        )
    store = make(10, "stats")
    try:
        if isinstance(store, PostgresMessageStore):
            load_s = await load_postgres(store, stats_n)
        else:
            assert isinstance(store, SqliteMessageStore)
            await store.upgrade()
            await store.close()
            load_s = load_sqlite(Path(store.path), stats_n)
            store = make(10, "stats")
        assert isinstance(store, SqliteMessageStore | PostgresMessageStore)
        t0 = time.perf_counter()
        await store.rebuild_aggregates()
        rebuild_s = time.perf_counter() - t0
        stats = await time_stats(store, stats_n, explain)
    finally:
        await store.close()
    stats["load_s"] = load_s
    stats["rebuild_s"] = rebuild_s
    result["stats"] = stats
    log(
        f"{name:<10} load {stats_n:,} messages {load_s:6.1f} s, aggregates built in {rebuild_s:.1f} s; "
        f"message_stats {stats['message_stats_s']:.3f} s, "
        f"template_performance {stats['template_performance_s']:.3f} s (best of 3)"
    )
    log(
        f"{'':<10} message_stats of a range cut inside hours ({stats['inner_range_messages']:,} messages) "
        f"{stats['inner_range_s']:.3f} s; exact=True {stats['message_stats_exact_s']:.3f} s; "
        f"approximate percentiles at most {stats['percentile_error'] * 100:.2f} % off "
        f"(delivered p50/p95 {stats['to_delivered'][0]:.2f}/{stats['to_delivered'][1]:.2f} s vs "
        f"{stats['to_delivered'][2]:.2f}/{stats['to_delivered'][3]:.2f} s exact; read "
        f"{stats['to_read'][0]:.1f}/{stats['to_read'][1]:.1f} s vs "
        f"{stats['to_read'][2]:.1f}/{stats['to_read'][3]:.1f} s)"
    )
    for q in sorted(stats["queries"], key=lambda q: -q["s"]):
        log(f"{'':<10}   {q['s'] * 1000:8.1f} ms  {q['sql']}")
        for line in q.get("plan", []):
            log(f"{'':<10}       {line}")
    return result


async def main_async(
    quick: bool, postgres: bool, dsn: str, explain: bool, sends_only: bool, log: Any
) -> list[dict[str, Any]]:
    # record_send one by one, record_sends per row, status events' messages, stats messages
    sizes = (300, 4000, 500, 100_000) if quick else (1000, 20_000, 2000, 1_000_000)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_store_") as folder:

        def sqlite(k: int, part: str) -> MessageStore:
            return SqliteMessageStore(Path(folder) / f"{part}.sqlite3")

        results.append(await run_backend("sqlite", sqlite, sizes, explain, sends_only, log))
    if postgres:
        base = f"bench_store_{uuid.uuid4().hex[:10]}"

        def pg(k: int, part: str) -> MessageStore:
            return PostgresMessageStore(dsn, schema=f"{base}_{part}", pool_size=k)

        try:
            results.append(await run_backend("postgres", pg, sizes, explain, sends_only, log))
        finally:
            conn = await asyncpg.connect(dsn)
            try:
                for part in ("sends", "ingest", "stats"):
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{base}_{part}" CASCADE')
            finally:
                await conn.close()
    return results


def send_verdicts(results: list[dict[str, Any]]) -> list[tuple[bool | None, str]]:
    lines: list[tuple[bool | None, str]] = []
    for r in results:
        rows = {(row["writer"], row["batch"]): row for row in r["sends"]}
        best, single = rows["record_sends", 500], rows["record_send", 1]
        ok = best["sends_per_s"] >= SENDS_TARGET
        detail = f"record_send one by one {single['sends_per_s']:,.0f}/s"
        lines.append(
            (
                ok,
                verdict_line(
                    ok,
                    f"{r['backend']} sends (record_sends, 500 per batch)",
                    f"{best['sends_per_s']:,.0f} sends/s",
                    f"{SENDS_TARGET:,.0f} sends/s",
                    detail,
                    op=">=",
                ),
            )
        )
        cost = best["cpu_us_per_send"] + (best["server_cpu_us_per_send"] or 0.0)
        ok = cost <= SEND_CPU_TARGET_US
        where = "this process" + (" + PostgreSQL's" if best["server_cpu_us_per_send"] is not None else "")
        single_cost = single["cpu_us_per_send"] + (single["server_cpu_us_per_send"] or 0.0)
        detail = f"{where}; record_send one by one {single_cost:.0f} µs"
        lines.append(
            (
                ok,
                verdict_line(
                    ok,
                    f"{r['backend']} CPU per send (record_sends, 500 per batch)",
                    f"{cost:.1f} µs",
                    f"{SEND_CPU_TARGET_US:.0f} µs",
                    detail,
                    op="<=",
                ),
            )
        )
    return lines


def verdicts(results: list[dict[str, Any]], quick: bool, sends_only: bool) -> list[tuple[bool | None, str]]:
    lines = send_verdicts(results)
    if sends_only:
        return lines
    pg = next((r for r in results if r["backend"] == "postgres"), None)
    if pg is None:
        lines.append(
            (None, verdict_line(None, "PostgreSQL status ingestion", "-", "5,000 events/s", op=">="))
        )
    else:
        best = max(pg["batched"], key=lambda r: r["events_per_s"])
        ok = best["events_per_s"] >= INGEST_TARGET
        single = max(pg["ingestion"], key=lambda r: r["events_per_s"])
        detail = (
            f"record_statuses, {BATCH} per batch, best at K={best['concurrency']}; "
            f"record_status one by one {single['events_per_s']:,.0f}/s (K={single['concurrency']})"
        )
        lines.append(
            (
                ok,
                verdict_line(
                    ok,
                    "PostgreSQL status ingestion (batched)",
                    f"{best['events_per_s']:,.0f} events/s",
                    "5,000 events/s",
                    detail,
                    op=">=",
                ),
            )
        )
    for r in results:
        s = r["stats"]
        ok = s["message_stats_s"] < STATS_TARGET_S
        size = f"{s['messages']:,} messages" + (" (--quick)" if quick else "")
        lines.append(
            (
                ok,
                verdict_line(
                    ok,
                    f"{r['backend']} message_stats over {size}",
                    f"{s['message_stats_s']:.3f} s",
                    "1 s",
                    f"template_performance {s['template_performance_s']:.3f} s",
                ),
            )
        )
    return lines


def main() -> int:
    parser = arguments(__doc__ or "", "100k messages and 500 messages' events per run")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--dsn", default=DSN, help=f"PostgreSQL (default {DSN}); a schema of its own is used")
    parser.add_argument("--explain", action="store_true", help="print each stats query's plan")
    parser.add_argument("--sends-only", action="store_true", help="only the sends (no statuses, no stats)")
    args = parser.parse_args()

    def log(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    info = machine()
    if not args.json:
        v = info["versions"]
        print(
            f"omnichannel {v['omnichannel']} ({info['revision'] or 'no git checkout'}) - "
            f"Python {info['python']} - {info['cpus']} CPUs ({info['cpu']})\n"
        )
    started = time.perf_counter()
    results = asyncio.run(
        main_async(args.quick, not args.no_postgres, args.dsn, args.explain, args.sends_only, log)
    )
    seconds = time.perf_counter() - started
    found = verdicts(results, args.quick, args.sends_only)
    if args.json:
        doc = {
            "machine": info,
            "mode": "quick" if args.quick else "full",
            "seconds": round(seconds, 1),
            "results": results,
            "targets": [{"line": line, "passed": ok} for ok, line in found],
        }
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        print()
        for _, line in found:
            print(line)
        print(f"\n(run took {seconds:.1f} s)")
    return 1 if args.strict and not all(ok for ok, _ in found) else 0


if __name__ == "__main__":
    sys.exit(main())
