"""The rate limiter's adaptive sender rate (AIMD; shared/resilience.md §1.7, RL-06), virtual time only."""

from __future__ import annotations

import pytest
from limiter_support import SENDER_T, make_limiter

from omnichannel import ErrorScope, InvalidField
from omnichannel.testing import FakeClock
from omnichannel_resilience.limiter import WHATSAPP_PAIR, WHATSAPP_SENDER, Limiter, RateConfig, pair_key

# -- Adaptive sender rate (AIMD) ----------------------------------------------------------------


def make_adaptive(clock: FakeClock, *, sender: RateConfig = WHATSAPP_SENDER, **kwargs: object) -> Limiter:
    return Limiter(sender, WHATSAPP_PAIR, clock, 2.0, max_wait_pair_s=0.0, adaptive=True, **kwargs)  # type: ignore[arg-type]


async def spacing(limiter: Limiter, clock: FakeClock, sender: str, count: int) -> list[float]:
    """The sleeps of ``count`` back-to-back acquires from ``sender`` (distinct recipients)."""
    start = len(clock.sleeps)
    for i in range(count):
        await limiter.acquire(sender, f"spacing-{clock.monotonic()}-{i}")
    return clock.sleeps[start:]


async def test_adaptive_130429_halves_the_sender_rate() -> None:
    """RL-06: 130429 halves the rate: the gauge value and the admission spacing (1/34 s, not 1/68)."""
    clock = FakeClock()
    limiter = make_adaptive(clock)
    assert limiter.current_rate("s") == 68.0
    assert limiter.on_throttled("s", "A", ErrorScope.SENDER, None) == 1.0  # the pause is unchanged
    assert limiter.current_rate("s") == pytest.approx(34.0)
    assert limiter.adapted_senders() == {"s": pytest.approx(34.0)}
    assert await spacing(limiter, clock, "s", 3) == [
        pytest.approx(1.0),  # the pause, then one every 1/34 s
        pytest.approx(1 / 34),
        pytest.approx(1 / 34),
    ]
    # Only that sender adapts, and never the pairs.
    assert limiter.current_rate("other") == 68.0
    assert limiter.senders.rate("other") == 68.0
    assert limiter.pairs.rate(pair_key("s", "A")) == WHATSAPP_PAIR.rate_per_s


async def test_adaptive_repeated_130429_floors_at_one_per_second() -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock)
    rates = []
    for _ in range(8):
        limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
        rates.append(limiter.current_rate("s"))
        clock.advance(1.0)  # past the 1 s pause: the next one is a new episode
    assert rates == pytest.approx([34.0, 17.0, 8.5, 4.25, 2.125, 1.0625, 1.0, 1.0])
    # The last pause is over: one at once, then one per second.
    assert await spacing(limiter, clock, "s", 3) == [pytest.approx(1.0)] * 2


async def test_adaptive_throttles_of_one_episode_halve_once() -> None:
    """Answers to attempts already in flight (during the pause) do not halve again."""
    clock = FakeClock()
    limiter = make_adaptive(clock)
    for _ in range(30):
        limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == pytest.approx(34.0)
    clock.advance(0.999)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == pytest.approx(34.0)
    clock.advance(0.001)  # the pause is over: still throttled means still too fast
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == pytest.approx(17.0)


async def test_adaptive_recovers_in_five_percent_steps() -> None:
    """RL-06: +5 % of 68/s (3.4/s) every 10 s without 130429, back to 68/s after 100 s.

    60 s after the halving the rate is 34 + 6 x 3.4 = 54.4/s: the spec's AIMD row (x 0.5, then +5 %
    per 10 s) restores the full rate after 10 steps, 100 s.
    """
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    observed = []
    for step in range(11):
        clock.advance(10.0 - 0.001 if step else 0.0)
        before_step = limiter.current_rate("s")
        clock.advance(0.001 if step else 0.0)
        observed.append(limiter.current_rate("s"))
        if step:
            assert before_step == pytest.approx(observed[-2])  # no change inside an interval
    assert observed == pytest.approx([34.0 + 3.4 * k for k in range(11)])
    assert observed[6] == pytest.approx(54.4)  # 60 s
    assert observed[10] == 68.0
    assert limiter.adapted_senders() == {}
    assert limiter.senders.rate("s") == 68.0  # the override is gone


async def test_adaptive_spacing_follows_the_increase_lazily() -> None:
    """No timer: the sender Gcra picks the grown rate up at the next acquire."""
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    clock.advance(50.0)  # 5 steps: 34 + 17 = 51/s, and idle long enough to have the burst back
    sleeps = await spacing(limiter, clock, "s", 12)
    assert sleeps == [pytest.approx(1 / 51), pytest.approx(1 / 51)]  # the burst (10) went at once
    assert limiter.senders.rate("s") == pytest.approx(51.0)


async def test_adaptive_throttle_during_recovery_halves_the_current_rate() -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    clock.advance(30.0)
    assert limiter.current_rate("s") == pytest.approx(44.2)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, 2.0)
    assert limiter.current_rate("s") == pytest.approx(22.1)
    clock.advance(9.999)  # the increase clock restarted at the last throttle
    assert limiter.current_rate("s") == pytest.approx(22.1)
    clock.advance(0.001)
    assert limiter.current_rate("s") == pytest.approx(25.5)


@pytest.mark.parametrize(
    "scope", [ErrorScope.RECIPIENT, ErrorScope.ACCOUNT, ErrorScope.APP, ErrorScope.MESSAGE, None]
)
async def test_adaptive_only_sender_scope_adapts(scope: ErrorScope | None) -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock)
    limiter.on_throttled("s", "A", scope, None)
    assert limiter.current_rate("s") == 68.0
    assert limiter.adapted_senders() == {}
    assert limiter.senders.rate("s") == 68.0


async def test_not_adaptive_by_default() -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    assert limiter.adaptive is False
    assert limiter.on_throttled("s", "A", ErrorScope.SENDER, None) == 1.0
    assert limiter.current_rate("s") == 68.0
    assert limiter.adapted_senders() == {}
    assert await spacing(limiter, clock, "s", 3) == [
        pytest.approx(1.0),
        pytest.approx(SENDER_T),
        pytest.approx(SENDER_T),
    ]


async def test_adaptive_configured_rate_below_the_floor_does_not_adapt() -> None:
    clock = FakeClock()
    limiter = make_adaptive(clock, sender=RateConfig(rate_per_s=0.5, burst=1))
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == 0.5
    assert limiter.adapted_senders() == {}


async def test_adaptive_custom_parameters() -> None:
    clock = FakeClock()
    limiter = make_adaptive(
        clock,
        sender=RateConfig(rate_per_s=100.0, burst=1),
        adaptive_floor_per_s=40.0,
        adaptive_step=0.25,
        adaptive_interval_s=2.0,
    )
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == 50.0
    clock.advance(1.0)
    limiter.on_throttled("s", "A", ErrorScope.SENDER, None)
    assert limiter.current_rate("s") == 40.0  # 25 is below the floor
    clock.advance(2.0)
    assert limiter.current_rate("s") == 65.0
    clock.advance(4.0)
    assert limiter.current_rate("s") == 100.0


async def test_adapted_senders_are_bounded() -> None:
    clock = FakeClock()
    limiter = Limiter(WHATSAPP_SENDER, WHATSAPP_PAIR, clock, 2.0, max_keys=2, adaptive=True)
    for sender in ("a", "b", "c"):
        limiter.on_throttled(sender, "A", ErrorScope.SENDER, None)
    assert set(limiter.adapted_senders()) == {"b", "c"}
    assert limiter.current_rate("a") == 68.0  # forgotten: back at the configured rate
    assert limiter.senders.rate("a") == 68.0


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"adaptive": "yes"}, "adaptive", "must be true or false, got 'yes'"),
        ({"adaptive_floor_per_s": 0}, "adaptive_floor_per_s", "must be a finite number > 0, got 0"),
        (
            {"adaptive_floor_per_s": float("nan")},
            "adaptive_floor_per_s",
            "must be a finite number > 0, got nan",
        ),
        ({"adaptive_step": 0.0}, "adaptive_step", "must be a finite number > 0, got 0.0"),
        ({"adaptive_step": 1.5}, "adaptive_step", "must be <= 1 (a fraction of the rate), got 1.5"),
        ({"adaptive_step": True}, "adaptive_step", "must be a finite number > 0, got True"),
        ({"adaptive_interval_s": -10}, "adaptive_interval_s", "must be a finite number > 0, got -10"),
        (
            {"adaptive_interval_s": float("inf")},
            "adaptive_interval_s",
            "must be a finite number > 0, got inf",
        ),
    ],
)
def test_adaptive_validation(kwargs: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidField) as raised:
        Limiter(WHATSAPP_SENDER, WHATSAPP_PAIR, FakeClock(), 2.0, **kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert str(raised.value) == problem
