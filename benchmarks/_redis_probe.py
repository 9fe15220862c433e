"""The Redis side of ``bench_resilience.py``: a run's key prefix and admin client, the count of
the commands the resilience stores send (client side, exact) and of ``INFO commandstats``
(server side, server-wide), and the Redis steps of ``--breakdown``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
import uuid
from collections import Counter
from typing import Any

import attrs
from _harness import POOL_SIZE, SendFn, Step, message_pool, untimed

from omnichannel import Message, SystemClock
from omnichannel_resilience.config import RateLimitSettings, ResilienceConfig

SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro")
"""The commands that run a Lua script (one round trip each)."""


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
    breakers: int = 0
    """Distinct breaker keys the breaker store's commands touched."""
    server_usec: dict[str, int] = attrs.field(factory=dict)
    """``INFO commandstats`` deltas of the time the server spent, by command (µs; scripts include
    the commands they run)."""

    @property
    def per_send(self) -> float:
        """Client-side round trips per send, everything included."""
        return sum(self.client.values()) / self.sends

    @property
    def breaker_reads(self) -> int:
        """The breaker store's time-driven reads: the admission path's refresh of its local copy
        (``acquire`` once the copy is ``poll_interval_s`` old) and the watcher's ``read``."""
        return sum(self.client.get(f"evalsha breaker-{op}", 0) for op in ("acquire", "read"))

    @property
    def per_send_on_path(self) -> float:
        """Round trips per send made because of the send (time-driven breaker reads left out)."""
        return (sum(self.client.values()) - self.breaker_reads) / self.sends

    @property
    def reads_allowed(self) -> int:
        """At most two breaker reads per ``poll_interval_s`` per breaker (refresh and watcher), plus
        the first of each: more than that would be per-send reads."""
        return 2 * max(1, self.breakers) * (math.floor(self.seconds / self.poll_interval_s) + 1)

    @property
    def background_per_s(self) -> float:
        """Time-driven breaker reads per second per breaker (expected about ``2 / poll_interval_s``)."""
        return self.breaker_reads / self.seconds / max(1, self.breakers)

    def server_per_send(self, *commands: str) -> float:
        return sum(self.server.get(c, 0) for c in commands) / self.sends

    def lines(self) -> list[tuple[int, str]]:
        """The report's lines under the row, with their indent."""
        client = ", ".join(f"{k} {v / self.sends:.4f}" for k, v in sorted(self.client.items())) or "none"
        inner = {k: v for k, v in self.server.items() if k not in SCRIPTS}
        other = ", ".join(f"{k} {v / self.sends:.4f}" for k, v in sorted(inner.items())) or "none"
        calls = sum(self.server.get(k, 0) for k in SCRIPTS)
        spent = sum(self.server_usec.get(k, 0) for k in SCRIPTS)
        in_server = f", {spent / calls:.1f} us each in the server" if calls else ""
        scripts = f"evalsha+eval {self.server_per_send(*SCRIPTS):.4f}{in_server}"
        reads = {op: self.client.get(f"evalsha breaker-{op}", 0) for op in ("acquire", "read")}
        background = (
            f"breaker reads, time-driven: {self.breaker_reads} ({reads['acquire']} admission refreshes, "
            f"{reads['read']} watcher reads) = {self.background_per_s:.2f}/s per breaker "
            f"({self.breakers} breaker(s), poll_interval_s {self.poll_interval_s:g})"
        )
        return [
            (44, f"Redis commands per send over {self.sends:,} sends ({self.seconds:.2f} s):"),
            (46, f"client, round trips (ours): {client}"),
            (46, background),
            (46, f"server, INFO commandstats (server-wide): {scripts};"),
            (48, f"also counted (run inside the scripts, or others' traffic): {other}"),
        ]


@attrs.define
class RedisRun:
    """The Redis side of a run: where, the prefix of this run, and why it was not measured (if so)."""

    url: str
    prefix: str = attrs.field(factory=lambda: f"omnichannel-bench:{uuid.uuid4().hex}")
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


@attrs.define
class StoreCounter:
    """Counts every command the resilience stores' Redis clients send, as ``"<command> <store>"``
    (one command, one round trip)."""

    counts: Counter[str] = attrs.field(factory=Counter)
    stores: list[object] = attrs.field(factory=list)
    breaker_keys: set[str] = attrs.field(factory=set)

    def instrument(self, store: object, kind: str) -> None:
        client = getattr(store, "_redis", None)
        if client is None:
            raise RuntimeError(f"the {kind} store is not a Redis store ({type(store).__name__})")
        execute, counts, keys = client.execute_command, self.counts, self.breaker_keys

        async def counting(*args: Any, **options: Any) -> Any:
            command, store = str(args[0]).lower(), kind
            if kind == "breaker" and command in SCRIPTS and len(args) > 3:
                # EVALSHA sha 1 key now config... action: the breaker script's action says who reads
                words = {a.decode() if isinstance(a, bytes) else str(a) for a in args[4:]}
                store += "-" + next((op for op in ("acquire", "read") if op in words), "record")
                keys.add(str(args[3]))
            counts[f"{command} {store}"] += 1
            return await execute(*args, **options)

        client.execute_command = counting
        self.stores.append(store)

    def errors(self) -> int:
        """The stores' Redis errors (they fall back to local state on one)."""
        return sum(
            int(getattr(store, attr, 0) or 0)
            for store in self.stores
            for attr in ("storage_errors", "backend_errors")
        )

    async def count_pass(
        self, redis: RedisRun, send: SendFn, pool: list[Message], first: int, sends: int, seconds: float
    ) -> RedisCount:
        """Send at least ``sends`` messages for at least ``seconds`` (untimed, from ``first`` in the
        pool) and count the Redis commands they took, client- and server-side."""
        self.counts.clear()
        self.breaker_keys.clear()
        sent = 0
        before = await redis.commandstats()
        started = time.perf_counter()
        while sent < sends or time.perf_counter() - started < seconds:
            await untimed(send, pool, first + sent, 100)
            sent += 100
            # The recording channel never suspends, nor does a send with the legacy profile (no
            # limiter) but for the breaker's refresh once a second: without this turn, the loop would
            # not run the breaker watcher for a second at a time, and a connection it opens meanwhile
            # would time out (redis-py's 1 s connect timeout) and send the store to local state.
            await asyncio.sleep(0)
        took = time.perf_counter() - started
        after = await redis.commandstats()
        server = {cmd: calls - before.get(cmd, (0, 0))[0] for cmd, (calls, _) in after.items()}
        server["info"] = server.get("info", 1) - 1  # our own first INFO
        usec = {cmd: spent - before.get(cmd, (0, 0))[1] for cmd, (_, spent) in after.items()}
        poll = min((float(getattr(s, "poll_interval_s", 1.0)) for s in self.stores), default=1.0)
        return RedisCount(
            sent,
            took,
            dict(self.counts),
            {cmd: calls for cmd, calls in server.items() if calls},
            poll,
            self.errors(),
            len(self.breaker_keys),
            {cmd: spent for cmd, spent in usec.items() if server.get(cmd)},
        )


async def redis_steps(
    url: str, rate_limits: dict[str, Any], stack: contextlib.AsyncExitStack
) -> list[tuple[str, Step]]:
    """Breakdown steps on a real Redis (none if it cannot be reached); keys deleted on exit."""
    redis = RedisRun(url)
    await redis.open()
    if redis.problem is not None:
        print(f"(Redis steps left out: {redis.problem})", file=sys.stderr)
        return []
    stack.push_async_callback(redis.close)
    from omnichannel_resilience.redis_state import RedisLimiterStore

    settings = ResilienceConfig(rate_limit=RateLimitSettings(**rate_limits)).rate_limit
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
