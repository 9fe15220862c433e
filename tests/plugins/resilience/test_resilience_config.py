"""``[plugins.resilience]``: profiles, legacy variables, and errors at start-up that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from omnichannel import ConfigError, PluginSettings, ServiceConfig
from omnichannel.testing import RecordingChannel, make_service
from omnichannel_resilience import ResilienceConfig, ResiliencePlugin
from omnichannel_resilience.config import Resolved


def resolved(settings: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Resolved:
    service = service_with(settings, environ)
    return service.plugin_config(ResilienceConfig).resolve()


def service_with(settings: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Any:
    config = ServiceConfig(plugins={"resilience": PluginSettings(settings=settings or {})})
    return make_service(
        RecordingChannel(), ("resilience", ResiliencePlugin()), config=config, environ=environ
    )


def errors(settings: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        service_with(settings, environ)
    return [line.strip().removeprefix("- ") for line in str(caught.value).splitlines()[1:]]


def test_the_recommended_profile():
    r = resolved()
    assert r.breaker is not None
    assert (r.breaker.failure_threshold, r.breaker.open_s, r.breaker.success_threshold) == (5, 60.0, 2)
    assert (r.breaker.max_open_s, r.breaker.half_open_max_s) == (600.0, 20.0)
    assert r.retry is not None
    assert (r.retry.max_attempts, r.retry.initial_delay_s, r.retry.max_delay_s) == (3, 1.0, 10.0)
    assert (r.retry.jitter, r.retry.deadline_s, r.retry_unknown) == ("full", 30.0, False)
    assert r.budget is not None
    assert r.rate_limit is not None
    assert r.rate_limit.sender().rate_per_s == pytest.approx(68.0)
    assert r.bulkhead is not None
    assert r.attempt_timeout_s == 10.0


def test_the_legacy_profile_has_the_php_numbers_and_nothing_more():
    r = resolved({"profile": "legacy"})
    assert r.breaker is not None
    assert (r.breaker.failure_threshold, r.breaker.open_s, r.breaker.max_open_s) == (5, 60.0, 60.0)
    assert r.retry is not None
    assert (r.retry.jitter, r.retry.deadline_s, r.retry_unknown) == ("none", None, True)
    assert (r.budget, r.rate_limit, r.bulkhead) == (None, None, None)


def test_the_legacy_variables_are_read_and_milliseconds_converted():
    environ = {
        "WHATSAPP_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "7",
        "WHATSAPP_CIRCUIT_BREAKER_TIMEOUT": "90",
        "WHATSAPP_CIRCUIT_BREAKER_SUCCESS_THRESHOLD": "3",
        "WHATSAPP_RETRY_MAX_ATTEMPTS": "4",
        "WHATSAPP_RETRY_INITIAL_DELAY": "250",
        "WHATSAPP_RETRY_MAX_DELAY": "5000",
    }
    r = resolved({"profile": "legacy"}, environ)
    assert r.breaker is not None
    assert r.retry is not None
    assert (r.breaker.failure_threshold, r.breaker.open_s, r.breaker.success_threshold) == (7, 90.0, 3)
    assert r.breaker.max_open_s == 90.0  # the default cap follows a longer open time
    assert (r.retry.max_attempts, r.retry.initial_delay_s, r.retry.max_delay_s) == (4, 0.25, 5.0)
    # The file wins over a legacy variable.
    r = resolved({"retry": {"max_attempts": 2}}, environ)
    assert r.retry is not None
    assert r.retry.max_attempts == 2
    assert resolved(environ={"WHATSAPP_CIRCUIT_BREAKER_ENABLED": "false"}).breaker is None


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"profile": "fast"},
            "plugins.resilience.profile: must be one of 'recommended', 'legacy', got 'fast'",
        ),
        (
            {"retry": {"jitter": "some"}},
            "plugins.resilience.retry.jitter: must be one of 'full', 'equal', 'none'",
        ),
        (
            {"retry_budget": {"ratio": 2}},
            "plugins.resilience.retry_budget.ratio: must be between 0 and 1, got 2",
        ),
        ({"retry_budget": {"min_retries": -1}}, "plugins.resilience.retry_budget.min_retries: must be >= 0"),
        (
            {"bulkhead": {"sender_max_in_flight": 0}},
            "plugins.resilience.bulkhead.sender_max_in_flight: must be >= 1",
        ),
        ({"bulkhead": {"max_wait_s": -1}}, "plugins.resilience.bulkhead.max_wait_s: must be >= 0"),
        (
            {"rate_limit": {"max_wait_sender_s": -1}},
            "plugins.resilience.rate_limit.max_wait_sender_s: must be >= 0",
        ),
        ({"rate_limit": {"sender_burst": 0}}, "plugins.resilience.rate_limit.sender_burst: must be >= 1"),
        ({"rate_limit": {"sender_max_mps": 0}}, "plugins.resilience.rate_limit.sender_max_mps: must be > 0"),
        (
            {"rate_limit": {"sender_utilization": 1.5}},
            "plugins.resilience.rate_limit.sender_utilization: must be",
        ),
        (
            {"rate_limit": {"pair_interval_s": 0}},
            "plugins.resilience.rate_limit.pair_interval_s: must be > 0",
        ),
        (
            {"circuit_breaker": {"half_open_max_s": 0}},
            "plugins.resilience.circuit_breaker.half_open_max_s: must be > 0",
        ),
        (
            {"circuit_breaker": {"open_s": 120, "max_open_s": 60}},
            "plugins.resilience.circuit_breaker.max_open_s",
        ),
        (
            {"circuit_breaker": {"mode": "rate", "minimum_calls": 0}},
            "plugins.resilience.circuit_breaker.minimum_calls: must be an integer >= 1",
        ),
        ({"shared_state": "redis"}, "plugins.resilience.redis_url: must be set when shared_state is 'redis'"),
        (
            {
                "shared_state": "redis",
                "redis_url": "redis://127.0.0.1:6379/0",
                "circuit_breaker": {"mode": "rate"},
            },
            "plugins.resilience.circuit_breaker.mode: 'rate' keeps its window in each process",
        ),
    ],
)
def test_a_bad_value_is_refused_when_the_service_is_created(settings, expected):
    assert any(line.startswith(expected) for line in errors(settings)), errors(settings)


def test_a_bad_legacy_variable_names_itself():
    [line] = errors({}, {"WHATSAPP_RETRY_MAX_ATTEMPTS": "three"})
    assert line == (
        "plugins.resilience.retry.max_attempts: expected an integer, got 'three' "
        "(from $WHATSAPP_RETRY_MAX_ATTEMPTS)"
    )


def test_config_show_redacts_the_redis_password():
    service = service_with({"shared_state": "redis", "redis_url": "redis://:hunter2@127.0.0.1:6379/0"})
    section = service.describe_config()["plugins"]["resilience"]
    assert section["redis_url"] == "redis://:**********@127.0.0.1:6379/0"
    assert section["redis_prefix"] == "omnichannel"
    assert "hunter2" not in repr(service.describe_config())
