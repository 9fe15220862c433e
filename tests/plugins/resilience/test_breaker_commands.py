"""``omnichannel breaker ...``: the runbook's commands, against the shared state in a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from omnichannel import SystemClock
from omnichannel.cli import cli
from omnichannel_resilience.breaker import BreakerConfig, Outcome
from omnichannel_resilience.redis_state import RedisBreakerStore

pytestmark = pytest.mark.usefixtures("isolated_env")


def invoke(tmp_path: Path, config: str, *args: str) -> tuple[int, str]:
    path = tmp_path / "omnichannel.toml"
    path.write_text(config, encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "breaker", *args], prog_name="omnichannel")
    return result.exit_code, result.output


def test_with_state_in_memory_the_commands_explain_why_they_cannot_see_the_breakers(tmp_path):
    code, output = invoke(tmp_path, "", "status")
    assert code == 1
    assert "each process's memory" in output
    assert "shared_state = 'redis'" in output


def test_with_the_breaker_disabled_the_commands_say_so(tmp_path):
    code, output = invoke(tmp_path, "[plugins.resilience.circuit_breaker]\nenabled = false\n", "status")
    assert code == 1
    assert "circuit breaker is disabled" in output


@pytest.mark.parametrize("args", [("open",), ("open", "whatsapp:1", "--all")])
def test_an_admin_command_needs_one_breaker_or_all(tmp_path, args):
    code, output = invoke(tmp_path, "", *args)
    assert code == 2
    assert "give one breaker NAME (channel:sender) or --all" in output


def test_a_name_without_a_channel_is_a_usage_error(tmp_path):
    code, output = invoke(tmp_path, "", "open", "106540352242922")
    assert code == 2
    assert "NAME is <channel>:<sender>, e.g. whatsapp:106540352242922" in output


# ---------------------------------------------------------------- against the shared state in Redis

REDIS_URL = os.environ.get("OMNICHANNEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NAME = "whatsapp:106540352242922"


def redis_config(prefix: str) -> str:
    return "\n".join(
        [
            "[plugins.resilience]",
            'shared_state = "redis"',
            f'redis_url = "{REDIS_URL}"',
            f'redis_prefix = "{prefix}"',
        ]
    )


def fail(prefix: str, name: str, times: int) -> None:
    """Record ``times`` failures on breaker ``name``, as a worker would."""

    async def main() -> None:
        store = RedisBreakerStore(REDIS_URL, BreakerConfig(), SystemClock(), prefix=prefix)
        try:
            for _ in range(times):
                await store.record(name, await store.acquire(name), Outcome.FAILURE)
        finally:
            await store.close()

    asyncio.run(main())


def status(tmp_path: Path, prefix: str, *names: str) -> list[dict[str, object]]:
    code, output = invoke(tmp_path, redis_config(prefix), "status", *names, "--json")
    assert code == 0, output
    rows: list[dict[str, object]] = json.loads(output)
    return rows


def test_status_lists_every_breaker_with_its_state_and_failures(tmp_path, redis_prefix):
    code, output = invoke(tmp_path, redis_config(redis_prefix), "status")
    assert (code, output.strip()) == (0, "no circuit breaker has state yet (every sender is closed)")
    fail(redis_prefix, NAME, 5)
    fail(redis_prefix, "whatsapp:2", 2)
    rows = status(tmp_path, redis_prefix)
    assert [(r["breaker"], r["state"], r["gauge"], r["failures"]) for r in rows] == [
        ("whatsapp:106540352242922", "open", 2, 0),
        ("whatsapp:2", "closed", 0, 2),
    ]
    assert 59 < float(rows[0]["half_open_in_s"]) <= 60  # type: ignore[arg-type]
    code, output = invoke(tmp_path, redis_config(redis_prefix), "status")
    assert code == 0
    assert output.splitlines()[0].split() == ["BREAKER", "STATE", "FAILURES", "HALF-OPEN", "IN", "PROBES"]
    assert "whatsapp:106540352242922  open" in output


def test_open_isolates_a_sender_and_close_brings_it_back(tmp_path, redis_prefix):
    code, output = invoke(tmp_path, redis_config(redis_prefix), "open", NAME)
    assert code == 0, output
    assert [r["state"] for r in status(tmp_path, redis_prefix, NAME)] == ["forced_open"]
    code, output = invoke(tmp_path, redis_config(redis_prefix), "close", NAME)
    assert code == 0, output
    assert [r["state"] for r in status(tmp_path, redis_prefix, NAME)] == ["closed"]


def test_close_all_leaves_closed_breakers_and_their_counters_alone_but_reset_clears_them(
    tmp_path, redis_prefix
):
    fail(redis_prefix, NAME, 5)
    fail(redis_prefix, "whatsapp:2", 2)
    code, _ = invoke(tmp_path, redis_config(redis_prefix), "close", "--all")
    assert code == 0
    rows = status(tmp_path, redis_prefix)
    assert [(r["state"], r["failures"]) for r in rows] == [("closed", 0), ("closed", 2)]
    code, _ = invoke(tmp_path, redis_config(redis_prefix), "reset", "--all")
    assert code == 0
    assert [(r["state"], r["failures"]) for r in status(tmp_path, redis_prefix)] == [
        ("closed", 0),
        ("closed", 0),
    ]


@pytest.mark.parametrize(("command", "state"), [("disable", "disabled"), ("metrics-only", "metrics_only")])
def test_disable_and_metrics_only_let_every_send_through(tmp_path, redis_prefix, command, state):
    fail(redis_prefix, NAME, 5)
    code, output = invoke(tmp_path, redis_config(redis_prefix), command, "--all", "--json")
    assert code == 0, output
    assert [(r["breaker"], r["state"], r["gauge"]) for r in json.loads(output)] == [(NAME, state, 0)]
