"""The circuit breaker's configuration (shared/resilience.md §1.3): defaults, validation, warnings."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

from omnichannel import InvalidField
from omnichannel_resilience.breaker import BreakerConfig

# -- config ---------------------------------------------------------------------------------------------


def test_legacy_defaults() -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.open_s, config.success_threshold, config.half_open_permits) == (
        5,
        60.0,
        2,
        1,
    )
    assert config.half_open_max_s > 0


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold", "must be an integer >= 1, got 0"),
        ({"success_threshold": -1}, "success_threshold", "must be an integer >= 1, got -1"),
        ({"half_open_permits": 1.5}, "half_open_permits", "must be an integer >= 1, got 1.5"),
        ({"open_s": 0}, "open_s", "must be > 0, got 0"),
        ({"half_open_max_s": -2.0}, "half_open_max_s", "must be > 0, got -2.0"),
        ({"half_open_retry_hint_s": 0.0}, "half_open_retry_hint_s", "must be > 0, got 0.0"),
        ({"open_backoff_multiplier": 0.5}, "open_backoff_multiplier", "must be >= 1, got 0.5"),
        ({"open_s": 120.0}, "max_open_s", "must be >= open_s (120.0), got 60.0"),
        ({"mode": "ratio"}, "mode", "must be 'consecutive' or 'rate', got 'ratio'"),
        ({"window_type": "calls"}, "window_type", "must be 'count' or 'time', got 'calls'"),
        ({"window_size": 0}, "window_size", "must be an integer >= 1, got 0"),
        ({"window_size": 10.0}, "window_size", "must be an integer >= 1, got 10.0"),
        ({"minimum_calls": 0}, "minimum_calls", "must be an integer >= 1, got 0"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold", "must be > 0 and <= 100, got 0"),
        ({"failure_rate_threshold": 100.5}, "failure_rate_threshold", "must be > 0 and <= 100, got 100.5"),
        ({"failure_rate_threshold": True}, "failure_rate_threshold", "must be > 0 and <= 100, got True"),
        ({"slow_call_duration_s": 0.0}, "slow_call_duration_s", "must be > 0, got 0.0"),
        ({"slow_call_rate_threshold": -5.0}, "slow_call_rate_threshold", "must be > 0 and <= 100, got -5.0"),
        ({"slow_call_rate_threshold": 101}, "slow_call_rate_threshold", "must be > 0 and <= 100, got 101"),
        (
            {"permitted_calls_in_half_open": 0},
            "permitted_calls_in_half_open",
            "must be an integer >= 1, got 0",
        ),
        ({"count_slow_as_failure": 1}, "count_slow_as_failure", "must be true or false, got 1"),
        (
            {"mode": "rate", "count_slow_as_failure": True},
            "count_slow_as_failure",
            "applies to consecutive mode only; rate mode uses slow_call_rate_threshold",
        ),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidField) as info:
        BreakerConfig(**kwargs)
    assert info.value.field == field
    assert str(info.value) == message


def test_rate_mode_defaults() -> None:
    config = BreakerConfig()
    assert (config.mode, config.window_type, config.window_size, config.minimum_calls) == (
        "consecutive",
        "count",
        100,
        20,
    )
    assert (config.failure_rate_threshold, config.slow_call_duration_s, config.slow_call_rate_threshold) == (
        50.0,
        5.0,
        100.0,
    )
    assert (config.permitted_calls_in_half_open, config.count_slow_as_failure) == (10, False)
    BreakerConfig(failure_rate_threshold=100, slow_call_rate_threshold=0.1)  # bounds are (0, 100]


def test_extra_half_open_permits_warn_in_consecutive_mode(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        BreakerConfig(half_open_permits=2, success_threshold=2)
        BreakerConfig(mode="rate", half_open_permits=5, success_threshold=2)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        config = BreakerConfig(half_open_permits=3, success_threshold=2)
    assert config.half_open_permits == 3
    assert "half_open_permits (3) > success_threshold (2)" in caplog.text


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        BreakerConfig().open_s = 1.0  # type: ignore[misc]
