"""The WhatsApp sandbox's faults (faults.py): bursts, errors, seeded probabilities, latency, timeouts, drops.

Everything runs on real loopback sockets; where time matters the sandbox runs on a ``FakeClock``.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from sandbox_runtime_support import (
    fixture_http,  # noqa: F401  (the fixture)
    send,
    settings,
    stand_in_graph,
    text_body,
)

from omnichannel.testing import FakeClock
from omnichannel_whatsapp.sandbox import (
    Fault,
    FaultPlan,
    InvalidFault,
    Sandbox,
    SandboxSettings,
    SandboxState,
)

# ---------------------------------------------------------------- faults


async def test_a_burst_of_three_503_then_the_api_recovers(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        fault_id = sandbox.faults.add(Fault("error", http_status=503, code=2, remaining=3))
        answers = [await send(http, sandbox) for _ in range(4)]
        assert [a.status for a in answers] == [503, 503, 503, 200]
        error = (await answers[0].json())["error"]
        assert error["code"] == 2
        assert error["type"] == "OAuthException"
        assert error["message"] == "(#2) Service temporarily unavailable"
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert error["fbtrace_id"].startswith("A")
        assert sandbox.state.counters["fault.error"] == 3
        assert fault_id not in sandbox.faults.faults  # the burst is spent
        assert len(sandbox.state.messages) == 1  # only the fourth reached the Graph routes


async def test_an_error_fault_can_carry_a_retry_after_and_other_codes(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(
            Fault("error", http_status=429, code=130429, retry_after_s=2, is_transient=True, remaining=1)
        )
        sandbox.faults.add(Fault("error", http_status=500, code=131000, message="Boom", remaining=1))
        first, second = await send(http, sandbox), await send(http, sandbox)
        assert first.status == 429
        assert first.headers["Retry-After"] == "2"
        assert (await first.json())["error"]["is_transient"] is True
        assert (await first.json())["error"]["message"] == "(#130429) Rate limit hit"
        assert second.status == 500
        assert (await second.json())["error"]["message"] == "(#131000) Boom"


async def statuses_under(seed: int, http: aiohttp.ClientSession, count: int = 24) -> list[int]:
    async with Sandbox(settings(seed=seed), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("error", http_status=500, code=131000, probability=0.5))
        return [(await send(http, sandbox)).status for _ in range(count)]


async def test_probability_faults_are_reproducible_with_a_seed(http):
    first = await statuses_under(7, http)
    assert first == await statuses_under(7, http)
    assert set(first) == {200, 500}
    assert first != await statuses_under(8, http)


def test_fault_plan_windows_bursts_and_order():
    clock = FakeClock()
    plan = FaultPlan(SandboxState(SandboxSettings(), clock=clock))
    windowed = plan.add(Fault("error", until_s=10.0))
    burst = plan.add(Fault("drop", remaining=2))
    assert plan.decide() == Fault("error", until_s=10.0)  # the first added wins
    clock.advance(10.0)
    assert windowed not in plan.faults
    assert [plan.decide(), plan.decide(), plan.decide()] == [
        Fault("drop", remaining=2),
        Fault("drop", remaining=1),
        None,
    ]
    assert burst not in plan.faults
    plan.add(Fault("latency", latency_s=1, probability=0.0))
    assert plan.decide() is None
    assert plan.clear() == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "boom"}, "kind"),
        ({}, "kind"),
        ({"kind": "error", "probability": 2}, "probability"),
        ({"kind": "error", "http_status": 200}, "http_status"),
        ({"kind": "error", "code": "2"}, "code"),
        ({"kind": "error", "remaining": 0}, "remaining"),
        ({"kind": "latency", "latency_s": -1}, "latency_s"),
        ({"kind": "error", "colour": "red"}, "colour"),
        ([1, 2], "body"),
    ],
)
def test_a_bad_fault_description_names_the_field(data, field):
    with pytest.raises(InvalidFault) as info:
        Fault.from_json(data)
    assert info.value.field == field


def test_a_fault_from_json_with_a_duration():
    fault = Fault.from_json({"kind": "error", "http_status": 500, "code": 131000, "for_s": 5}, now=100.0)
    assert fault == Fault("error", http_status=500, code=131000, until_s=105.0)


async def test_a_latency_fault_waits_on_the_sandbox_clock(http):
    clock = FakeClock()
    async with Sandbox(settings(), clock=clock, graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("latency", latency_s=2.5, remaining=1))
        answer = await send(http, sandbox)
        assert answer.status == 200
        assert clock.sleeps == [2.5]
        assert clock.monotonic() == 2.5
        assert sandbox.state.counters["fault.latency"] == 1
        assert len(sandbox.state.messages) == 1


async def test_a_real_latency_fault_delays_the_answer(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("latency", latency_s=0.1))
        started = time.monotonic()
        assert (await send(http, sandbox)).status == 200
        assert time.monotonic() - started >= 0.1


async def test_a_timeout_fault_never_answers_and_the_sandbox_still_stops_at_once(http):
    sandbox = Sandbox(settings(), graph=stand_in_graph)
    await sandbox.start()
    try:
        sandbox.faults.add(Fault("timeout"))
        url = f"{sandbox.url}/v23.0/{sandbox.settings.phone_number_id}/messages"
        with pytest.raises(TimeoutError):
            await http.post(url, json=text_body(), timeout=aiohttp.ClientTimeout(total=0.2))
        assert sandbox.state.counters["fault.timeout"] == 1
        # the control API is never faulted
        async with http.get(f"{sandbox.url}/_sandbox/health") as health:
            assert health.status == 200
    finally:
        started = time.monotonic()
        await sandbox.stop()
    assert time.monotonic() - started < 1.0
    assert sandbox.state.messages == []


async def test_a_drop_fault_closes_the_connection_without_an_answer(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        sandbox.faults.add(Fault("drop", remaining=1))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await send(http, sandbox)
        assert sandbox.state.counters["fault.drop"] == 1
        assert (await send(http, sandbox)).status == 200
