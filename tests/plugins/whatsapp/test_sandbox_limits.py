"""The sandbox's throughput limits (limits.py): per second, per recipient pair, and their bookkeeping."""

from __future__ import annotations

import aiohttp
from sandbox_graph_support import (
    Graph,
    error,
    fixture_clock,  # noqa: F401  (the fixture)
    fixture_graph,  # noqa: F401  (the fixture)
    fixture_state,  # noqa: F401  (the fixture)
    start_graph,
    text_body,
    without_trace,
)

from omnichannel_whatsapp.sandbox.limits import Limits
from omnichannel_whatsapp.sandbox.state import SandboxSettings, SandboxState

# ---------------------------------------------------------------- limits


async def test_the_81st_message_in_one_second_is_130429(graph, clock):
    for i in range(80):
        status, answer = await graph.send(text_body(to=f"1650555{i:04d}"))
        assert status == 200, (i, answer)

    status, answer = await graph.send(text_body(to="16505559999"))

    assert status == 400
    assert without_trace(answer) == error(
        130429, "(#130429) Rate limit hit", details="Cloud API message throughput has been reached."
    )
    assert graph.state.counters["accepted"] == 80

    clock.advance(1 / 80)
    assert (await graph.send(text_body(to="16505559999")))[0] == 200
    assert (await graph.send(text_body(to="16505559998")))[1]["error"]["code"] == 130429

    clock.advance(1.0)
    for i in range(80):
        assert (await graph.send(text_body(to=f"1650556{i:04d}")))[0] == 200


async def test_the_pair_limit_is_131056_for_that_recipient_only(graph, clock):
    for _ in range(45):
        clock.advance(0.02)  # below the number's 80 mps: only the pair limit counts
        assert (await graph.send(text_body()))[0] == 200

    clock.advance(0.02)
    status, answer = await graph.send(text_body())

    assert status == 400
    assert without_trace(answer) == error(
        131056,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        details="Message failed to send because there were too many messages sent from this phone number "
        "to the same phone number in a short period of time.",
    )
    assert (await graph.send(text_body(to="16505550000")))[0] == 200

    clock.advance(6.0)
    assert (await graph.send(text_body()))[0] == 200
    assert (await graph.send(text_body()))[1]["error"]["code"] == 131056


def limits_for(clock, **settings):
    return Limits(SandboxState(SandboxSettings(**settings), clock=clock))


def test_a_refused_message_consumes_nothing(clock):
    limits = limits_for(clock, throughput_mps=2, pair_interval_s=10, pair_burst=2)
    assert limits.check("a") is None
    clock.advance(0.5)
    assert limits.check("a") is None  # the pair's burst of 2 is spent

    clock.advance(0.5)
    assert limits.check("a") == 131056
    # The refusal took nothing from the number: its burst of 2 is still there.
    assert [limits.check("b"), limits.check("c"), limits.check("d")] == [None, None, 130429]
    for _ in range(100):
        assert limits.check("a") == 130429

    clock.advance(10)
    # Nor did 100 refusals take anything from the pair: one slot came back in 10 s.
    assert limits.check("a") is None
    assert limits.check("a") == 131056


def test_the_pair_burst_borrows_future_quota(clock):
    limits = limits_for(clock, throughput_mps=0, pair_interval_s=6, pair_burst=45)

    assert all(limits.check("a") is None for _ in range(20))
    clock.advance(6 * 20 - 0.001)
    assert sum(limits.check("a") is None for _ in range(45)) == 44
    clock.advance(0.001)
    assert limits.check("a") is None


def test_limits_can_be_switched_off_and_reset(clock):
    off = limits_for(clock, throughput_mps=0, pair_interval_s=0)
    assert all(off.check("a") is None for _ in range(1000))

    limits = limits_for(clock, throughput_mps=1)
    assert limits.check("a") is None
    assert limits.check("b") == 130429
    limits.reset()
    assert limits.check("b") is None


def test_limits_forget_idle_recipients(clock):
    limits = limits_for(clock, throughput_mps=0)
    for i in range(3000):
        assert limits.check(str(i)) is None
    clock.advance(7)
    for i in range(3000, 6000):
        assert limits.check(str(i)) is None

    assert len(limits._pair_tat) <= 4096


async def test_routes_share_the_limits_they_are_given(state, clock):
    limits = Limits(state)
    server = await start_graph(state, limits=limits)
    try:
        async with aiohttp.ClientSession() as http:
            graph = Graph(state, server, http)
            for _ in range(45):
                assert (await graph.send(text_body()))[0] == 200
            assert (await graph.send(text_body()))[1]["error"]["code"] == 131056
            limits.reset()
            assert (await graph.send(text_body()))[0] == 200
    finally:
        await server.close()
