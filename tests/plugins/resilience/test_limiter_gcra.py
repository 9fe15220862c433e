"""The GCRA under the rate limiter (shared/resilience.md §1.7; RL-01, RL-09), virtual time only.

:class:`RateConfig` and its validation, :class:`Gcra` (bursts, exact waits, penalties, refunds, idle
keys, a property test of the bound over any window) and its per-key rate overrides.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from limiter_support import SENDER_T

from omnichannel import InvalidField
from omnichannel.testing import FakeClock
from omnichannel_resilience.limiter import WHATSAPP_PAIR, WHATSAPP_SENDER, Gcra, Limiter, RateConfig


def admitted_in_one_instant(gcra: Gcra, key: str, tries: int) -> int:
    return sum(gcra.try_acquire(key) == 0.0 for _ in range(tries))


# -- RateConfig ---------------------------------------------------------------------------------


def test_whatsapp_defaults() -> None:
    assert RateConfig(rate_per_s=68.0, burst=10) == WHATSAPP_SENDER
    assert WHATSAPP_PAIR.burst == 5
    assert WHATSAPP_PAIR.interval_s == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"rate_per_s": 0, "burst": 1}, "rate_per_s", "must be a finite number > 0, got 0"),
        ({"rate_per_s": -1.5, "burst": 1}, "rate_per_s", "must be a finite number > 0, got -1.5"),
        ({"rate_per_s": float("inf"), "burst": 1}, "rate_per_s", "must be a finite number > 0, got inf"),
        ({"rate_per_s": "5", "burst": 1}, "rate_per_s", "must be a finite number > 0, got '5'"),
        ({"rate_per_s": True, "burst": 1}, "rate_per_s", "must be a finite number > 0, got True"),
        ({"rate_per_s": 1.0, "burst": 0}, "burst", "must be an integer >= 1, got 0"),
        ({"rate_per_s": 1.0, "burst": 2.5}, "burst", "must be an integer >= 1, got 2.5"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidField) as raised:
        RateConfig(**kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert str(raised.value) == problem


def test_every_validates_interval() -> None:
    with pytest.raises(InvalidField) as raised:
        RateConfig.every(0, 5)
    assert raised.value.field == "interval_s"


def test_limiter_validation() -> None:
    clock = FakeClock()
    with pytest.raises(InvalidField) as raised:
        Limiter(WHATSAPP_SENDER, WHATSAPP_PAIR, clock, max_wait_s=-1)
    assert raised.value.field == "max_wait_s"
    with pytest.raises(InvalidField) as raised:
        Gcra(WHATSAPP_SENDER, clock, max_keys=0)
    assert raised.value.field == "max_keys"


# -- Gcra ---------------------------------------------------------------------------------------


def test_burst_then_exact_wait() -> None:
    """RL-01: first 10 immediate, the 11th after 1/68 s, and refusals consume nothing."""
    clock = FakeClock()
    gcra = Gcra(WHATSAPP_SENDER, clock)
    assert admitted_in_one_instant(gcra, "s", 10) == 10
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T)
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T)  # the refusal did not consume
    clock.advance(SENDER_T / 2)
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T / 2)
    clock.advance(SENDER_T / 2)
    assert gcra.try_acquire("s") == 0.0
    assert gcra.try_acquire("s") == pytest.approx(SENDER_T)


def test_steady_rate_after_burst() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=2.0, burst=3), clock)
    assert admitted_in_one_instant(gcra, "s", 5) == 3
    admitted = 0
    for _ in range(20):  # 10 s in 0.5 s steps: exactly one per step
        clock.advance(0.5)
        admitted += admitted_in_one_instant(gcra, "s", 5)
    assert admitted == 20


def test_one_second_window_at_whatsapp_defaults() -> None:
    """RL-01: any 1 s window holds at most 78 admissions (burst 10 + 68)."""
    clock = FakeClock()
    gcra = Gcra(WHATSAPP_SENDER, clock)
    times: list[float] = []
    while clock.monotonic() <= 3.0:
        wait = gcra.try_acquire("s")
        if wait == 0.0:
            times.append(clock.monotonic())
        else:
            clock.advance(wait)
    assert max(sum(t <= start + 1.0 for t in times[i:]) for i, start in enumerate(times)) <= 78


def test_explicit_now_argument() -> None:
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), FakeClock())
    assert gcra.try_acquire("k", now=100.0) == 0.0
    assert gcra.try_acquire("k", now=100.25) == pytest.approx(0.75)
    assert gcra.try_acquire("k", now=101.0) == 0.0


def test_keys_are_independent() -> None:
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), FakeClock())
    assert gcra.try_acquire("a") == 0.0
    assert gcra.try_acquire("a") == pytest.approx(1.0)
    assert gcra.try_acquire("b") == 0.0


def test_penalize_sets_the_next_admission() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=10.0, burst=5), clock)
    gcra.penalize("s", 3.0)
    assert gcra.try_acquire("s") == pytest.approx(3.0)
    clock.advance(3.0)
    assert gcra.try_acquire("s") == 0.0
    assert gcra.try_acquire("s") == pytest.approx(0.1)  # burst spent: one per interval after the pause


def test_penalize_never_shortens_a_wait() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), clock)
    gcra.penalize("s", 10.0)
    gcra.penalize("s", 1.0)
    assert gcra.try_acquire("s") == pytest.approx(10.0)


def test_refund_gives_one_slot_back() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=2), clock)
    assert admitted_in_one_instant(gcra, "s", 2) == 2
    gcra.refund("s")
    assert gcra.try_acquire("s") == 0.0
    assert gcra.try_acquire("s") == pytest.approx(1.0)


def test_idle_keys_are_forgotten() -> None:
    """RL-09: 100,000 distinct recipients, then idle past their TAT: the state is reclaimed."""
    clock = FakeClock()
    gcra = Gcra(WHATSAPP_PAIR, clock)
    for i in range(100_000):
        assert gcra.try_acquire(f"r{i}") == 0.0
    assert len(gcra) == 100_000
    clock.advance(6.0)  # one pair interval: every TAT is now in the past
    assert gcra.try_acquire("other") == 0.0
    assert len(gcra) == 1


def test_live_keys_are_kept() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=1.0, burst=1), clock)
    assert gcra.try_acquire("a") == 0.0
    clock.advance(0.5)
    assert gcra.try_acquire("b") == 0.0
    assert gcra.tat("a") == pytest.approx(1.0)
    clock.advance(0.5)
    assert gcra.try_acquire("c") == 0.0
    assert gcra.tat("a") is None  # expired at 1.0, forgotten
    assert gcra.tat("b") == pytest.approx(1.5)


def test_cap_on_tracked_keys() -> None:
    gcra = Gcra(RateConfig(rate_per_s=0.001, burst=1), FakeClock(), max_keys=3)
    for key in "abcd":
        assert gcra.try_acquire(key) == 0.0
    assert len(gcra) == 3
    assert gcra.tat("a") is None  # the least recently updated key went first
    assert gcra.tat("d") is not None


@given(
    rate=st.floats(min_value=0.1, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=120),
)
def test_property_admissions_bounded_over_any_window(rate: float, burst: int, gaps: list[float]) -> None:
    """RL-01: over any window of ``w`` seconds, admissions never exceed ``burst + rate·w``."""
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=rate, burst=burst), clock)
    times: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        if gcra.try_acquire("k") == 0.0:
            times.append(clock.monotonic())
    # The fullest window starts and ends on admissions: check every such pair.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-6


# -- Gcra per-key rate --------------------------------------------------------------------------


def test_gcra_per_key_rate_override() -> None:
    clock = FakeClock()
    gcra = Gcra(RateConfig(rate_per_s=10.0, burst=2), clock)
    gcra.set_rate("slow", 2.0)
    assert gcra.rate("slow") == 2.0
    assert gcra.rate("fast") == 10.0
    assert admitted_in_one_instant(gcra, "slow", 5) == 2  # the burst count is the config's
    assert gcra.try_acquire("slow") == pytest.approx(0.5)
    assert admitted_in_one_instant(gcra, "fast", 5) == 2
    assert gcra.try_acquire("fast") == pytest.approx(0.1)
    gcra.refund("slow")
    assert gcra.tat("slow") == pytest.approx(0.5)
    gcra.set_rate("slow", None)
    assert gcra.rate("slow") == 10.0
    gcra.set_rate("fast", 10.0)  # the config's rate: no override kept
    assert gcra._intervals == {}


def test_gcra_override_validation_and_cap() -> None:
    gcra = Gcra(RateConfig(rate_per_s=10.0, burst=1), FakeClock(), max_keys=2)
    with pytest.raises(InvalidField) as raised:
        gcra.set_rate("k", 0.0)
    assert raised.value.field == "rate_per_s"
    for key in "abc":
        gcra.set_rate(key, 1.0)
    assert [gcra.rate(key) for key in "abc"] == [10.0, 1.0, 1.0]
