"""Several worker processes share one breaker and one rate budget per sender through a real Redis.

Each "worker" is a separate Python process running its own ``OmniChannelService`` with the
resilience plugin (``shared_state = "redis"``) and a recording channel; the test reads what each
one saw. Needs the Redis at ``OMNICHANNEL_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``):
a failure on CI when it is missing, a skip elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

REDIS_URL = os.environ.get("OMNICHANNEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

WORKER = r"""
import asyncio, json, sys

from omnichannel import (
    CircuitOpenError, Message, OmniChannelService, PluginSettings, RateLimitedError, ServiceConfig, Text,
    TransientDeliveryError,
)
from omnichannel.testing import RecordingChannel
from omnichannel_resilience import ResiliencePlugin


async def main(args):
    channel = RecordingChannel()
    channel.fail_next(args["failures"], TransientDeliveryError("Graph 503", code=2, http_status=503))
    settings = {
        "profile": "legacy",
        "shared_state": "redis",
        "redis_url": args["url"],
        "redis_prefix": args["prefix"],
        "retry": {"enabled": False},
        "circuit_breaker": {"failure_threshold": args["threshold"]},
        "rate_limit": args["rate_limit"],
    }
    config = ServiceConfig(plugins={"resilience": PluginSettings(settings=settings)})
    service = OmniChannelService(
        config, plugins=[channel, ("resilience", ResiliencePlugin())], load_entrypoints=False, environ={}
    )
    seen = []
    async with service:
        for i in range(args["sends"]):
            message = Message(f"+1555000{i:04d}", Text("hi"), channel="recording")
            try:
                await service.send(message)
                seen.append("accepted")
            except CircuitOpenError:
                seen.append("circuit_open")
            except RateLimitedError as exc:
                seen.append(f"rate_limited:{exc.scope}")
            except TransientDeliveryError:
                seen.append("failed")
    print(json.dumps({"seen": seen, "attempts": channel.attempts}))


asyncio.run(main(json.loads(sys.argv[1])))
"""


async def run_worker(
    prefix: str, *, sends: int, failures: int = 0, threshold: int = 5, rate_limit=None
) -> Any:
    args = {
        "url": REDIS_URL,
        "prefix": prefix,
        "sends": sends,
        "failures": failures,
        "threshold": threshold,
        "rate_limit": rate_limit or {"enabled": False},
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def test_failures_of_two_workers_add_up_and_the_open_breaker_stops_a_third(redis_prefix):
    # Worker 1 fails 3 times; worker 2 fails 3 more: the 6th failure fleet-wide opens the breaker.
    first = await run_worker(redis_prefix, sends=3, failures=3, threshold=6)
    assert first["seen"] == ["failed"] * 3
    second = await run_worker(redis_prefix, sends=4, failures=3, threshold=6)
    assert second["seen"] == ["failed", "failed", "failed", "circuit_open"]
    # A worker started now neither resets the breaker nor reaches the channel.
    third = await run_worker(redis_prefix, sends=2, threshold=6)
    assert third == {"seen": ["circuit_open", "circuit_open"], "attempts": 0}


async def test_two_workers_running_at_once_share_one_sender_rate_budget(redis_prefix):
    # Burst of 10, then one message per 1000 s: however the two workers interleave, 10 go out.
    rate_limit = {
        "enabled": True,
        "sender_max_mps": 0.001,
        "sender_utilization": 1.0,
        "sender_burst": 10,
        "max_wait_sender_s": 0.0,
        "pair_burst": 100,
    }
    results = await asyncio.gather(
        *(run_worker(redis_prefix, sends=8, rate_limit=rate_limit) for _ in range(2))
    )
    seen = [outcome for result in results for outcome in result["seen"]]
    assert seen.count("accepted") == 10
    assert seen.count("rate_limited:sender") == 6
    assert sum(result["attempts"] for result in results) == 10
