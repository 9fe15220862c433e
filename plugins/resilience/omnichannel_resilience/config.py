"""Configuration of the resilience plugin: ``[plugins.resilience]`` and its tables.

The file holds what the operator wrote; :meth:`ResilienceConfig.resolve` turns it into the
building blocks' configurations (:class:`BreakerConfig`, :class:`RetryConfig`, ...), filling
what is left out from the chosen ``profile`` (shared/resilience.md §1.13):

- ``recommended`` (default): full jitter, a 30 s in-process deadline, a retry budget, WhatsApp's
  rate limits with adaptive slow-down, an in-flight cap, breakers that stay open up to 600 s
  when ``open_backoff_multiplier`` grows them.
- ``legacy``: the PHP service's numbers and nothing it did not have (no jitter, no budget,
  no rate limits, no in-flight cap).

The PHP service's variables are read when a key is not set (``WHATSAPP_CIRCUIT_BREAKER_*``,
``WHATSAPP_RETRY_*``; delays in milliseconds are converted).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from omnichannel import InvalidField, setting

from .breaker import BreakerConfig
from .limiter import (
    WHATSAPP_PAIR_BURST,
    WHATSAPP_PAIR_INTERVAL_S,
    WHATSAPP_SENDER_BURST,
    WHATSAPP_SENDER_MAX_MPS,
    WHATSAPP_SENDER_UTILIZATION,
    RateConfig,
)
from .retry import Jitter, RetryConfig

__all__ = [
    "BudgetSettings",
    "BulkheadSettings",
    "CircuitBreakerSettings",
    "RateLimitSettings",
    "ResilienceConfig",
    "Resolved",
    "RetrySettings",
]

Profile = Literal["recommended", "legacy"]
_PROFILES = ("recommended", "legacy")


def _one_of(*allowed: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in allowed:
            raise InvalidField(
                attribute.name, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}"
            )

    return check


def _positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise InvalidField(attribute.name, f"must be > 0, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise InvalidField(attribute.name, f"must be >= 1, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise InvalidField(attribute.name, f"must be >= 0, got {value!r}")


def _utilization(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value <= 1:
        raise InvalidField(attribute.name, f"must be > 0 and <= 1, got {value!r}")


def _share(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 1:
        raise InvalidField(attribute.name, f"must be between 0 and 1, got {value!r}")


@attrs.frozen
class CircuitBreakerSettings:
    """``[plugins.resilience.circuit_breaker]``: one breaker per ``(channel, sender)``."""

    enabled: bool = setting(default=True, env="WHATSAPP_CIRCUIT_BREAKER_ENABLED")
    initial_state: str = attrs.field(default="closed", validator=_one_of("closed", "metrics_only"))
    """``metrics_only`` counts and reports but never blocks (shadow roll-out)."""
    mode: str = attrs.field(default="consecutive", validator=_one_of("consecutive", "rate"))
    failure_threshold: int = setting(default=5, env="WHATSAPP_CIRCUIT_BREAKER_FAILURE_THRESHOLD")
    open_s: float = setting(default=60.0, env="WHATSAPP_CIRCUIT_BREAKER_TIMEOUT")
    success_threshold: int = setting(default=2, env="WHATSAPP_CIRCUIT_BREAKER_SUCCESS_THRESHOLD")
    half_open_permits: int = 1
    half_open_max_s: float | None = attrs.field(default=None, validator=_positive)
    """Default: twice the attempt timeout."""
    half_open_retry_hint_s: float = 1.0
    open_backoff_multiplier: float = 1.0
    max_open_s: float | None = attrs.field(default=None, validator=_positive)
    """Default: 600 s (recommended), ``open_s`` (legacy)."""
    window_type: str = attrs.field(default="count", validator=_one_of("count", "time"))
    window_size: int = 100
    minimum_calls: int = 20
    failure_rate_threshold: float = 50.0
    slow_call_duration_s: float = 5.0
    slow_call_rate_threshold: float = 100.0
    permitted_calls_in_half_open: int = 10
    count_slow_as_failure: bool = False
    """Consecutive mode: a success slower than ``slow_call_duration_s`` counts as a failure."""


@attrs.frozen
class RetrySettings:
    """``[plugins.resilience.retry]``: in-process retries of transient failures."""

    enabled: bool = True
    max_attempts: int = setting(default=3, env="WHATSAPP_RETRY_MAX_ATTEMPTS")
    initial_delay_s: float = setting(default=1.0, env="WHATSAPP_RETRY_INITIAL_DELAY", env_scale=0.001)
    multiplier: float = 2.0
    max_delay_s: float = setting(default=10.0, env="WHATSAPP_RETRY_MAX_DELAY", env_scale=0.001)
    jitter: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_one_of("full", "equal", "none"))
    )
    """Default: ``full`` (recommended), ``none`` (legacy)."""
    max_retry_after_in_process_s: float | None = attrs.field(default=None, validator=_positive)
    deadline_s: float | None = attrs.field(default=None, validator=_positive)
    """In-process time for one message, attempts and waits. Default: 30 s (recommended), none (legacy)."""
    min_attempt_time_s: float = 1.0
    ambiguous: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_one_of("retry", "give_up"))
    )
    """An attempt that may have reached the provider (certainty ``unknown``): ``give_up`` (recommended:
    the caller defers or reconciles) or ``retry`` (legacy: at-least-once, duplicates possible)."""


@attrs.frozen
class BudgetSettings:
    """``[plugins.resilience.retry_budget]``: retries per sender as a share of first attempts."""

    enabled: bool | None = None
    """Default: on (recommended), off (legacy)."""
    ratio: float = attrs.field(default=0.2, validator=_share)
    """Retries allowed as a share of first attempts (0.2: 20 % more load at most)."""
    window_s: float = attrs.field(default=10.0, validator=_positive)
    min_retries: int = attrs.field(default=3, validator=_non_negative)
    """Retries always allowed per window, however few first attempts there were."""


@attrs.frozen
class RateLimitSettings:
    """``[plugins.resilience.rate_limit]``: GCRA per sender and per (sender, recipient) pair."""

    enabled: bool | None = None
    """Default: on (recommended), off (legacy)."""
    sender_max_mps: float = attrs.field(default=WHATSAPP_SENDER_MAX_MPS, validator=_positive)
    sender_utilization: float = attrs.field(default=WHATSAPP_SENDER_UTILIZATION, validator=_utilization)
    """The share of ``sender_max_mps`` we use: the rest is headroom for inbound messages."""
    sender_burst: int = attrs.field(default=WHATSAPP_SENDER_BURST, validator=_at_least_one)
    pair_interval_s: float = attrs.field(default=WHATSAPP_PAIR_INTERVAL_S, validator=_positive)
    pair_burst: int = attrs.field(default=WHATSAPP_PAIR_BURST, validator=_at_least_one)
    max_wait_sender_s: float = attrs.field(default=2.0, validator=_non_negative)
    max_wait_pair_s: float = attrs.field(default=0.0, validator=_non_negative)
    adaptive: bool = True
    expected_workers: int = attrs.field(default=1, validator=_at_least_one)
    """With shared state in Redis and Redis down, each worker falls back to ``rate / expected_workers``."""

    def sender(self) -> RateConfig:
        return RateConfig(rate_per_s=self.sender_max_mps * self.sender_utilization, burst=self.sender_burst)

    def pair(self) -> RateConfig:
        return RateConfig.every(self.pair_interval_s, self.pair_burst)


@attrs.frozen
class BulkheadSettings:
    """``[plugins.resilience.bulkhead]``: a cap on attempts in flight."""

    enabled: bool | None = None
    """Default: on (recommended), off (legacy)."""
    sender_max_in_flight: int = attrs.field(default=50, validator=_at_least_one)
    global_max_in_flight: int = attrs.field(default=100, validator=_at_least_one)
    """Like ``[http] max_connections`` (100): more in flight would only queue in the HTTP pool,
    where the wait counts against the attempt timeout."""
    max_wait_s: float = attrs.field(default=2.0, validator=_non_negative)


@attrs.frozen
class Resolved:
    """The effective settings after the profile filled the gaps; what the middleware runs with."""

    profile: str
    breaker: BreakerConfig | None
    """``None``: no circuit breaker."""
    breaker_initial_state: str
    retry: RetryConfig | None
    """``None``: one attempt per delivery."""
    retry_unknown: bool
    budget: BudgetSettings | None
    rate_limit: RateLimitSettings | None
    bulkhead: BulkheadSettings | None
    attempt_timeout_s: float | None
    shared_state: str
    redis_url: str | None
    redis_prefix: str
    poll_interval_s: float


@attrs.frozen
class ResilienceConfig:
    """``[plugins.resilience]``.

    :param profile: ``recommended`` or ``legacy``; fills every setting left out.
    :param attempt_timeout_s: the time one attempt may take (0: no timeout of our own).
    :param shared_state: ``memory`` (each process its own breakers and limits) or ``redis``
        (one breaker and one rate budget per sender across every worker).
    :param redis_url: the Redis for ``shared_state = "redis"``.
    :param redis_prefix: prefix of every Redis key.
    :param poll_interval_s: how stale a worker's copy of a shared CLOSED/OPEN state may be.
    """

    profile: str = attrs.field(default="recommended", validator=_one_of(*_PROFILES))
    attempt_timeout_s: float = 10.0
    shared_state: str = attrs.field(default="memory", validator=_one_of("memory", "redis"))
    redis_url: str | None = None
    redis_prefix: str = "omnichannel"
    poll_interval_s: float = attrs.field(default=1.0, validator=_positive)
    circuit_breaker: CircuitBreakerSettings = attrs.field(factory=CircuitBreakerSettings)
    retry: RetrySettings = attrs.field(factory=RetrySettings)
    retry_budget: BudgetSettings = attrs.field(factory=BudgetSettings)
    rate_limit: RateLimitSettings = attrs.field(factory=RateLimitSettings)
    bulkhead: BulkheadSettings = attrs.field(factory=BulkheadSettings)

    def __attrs_post_init__(self) -> None:
        if self.shared_state == "redis" and not self.redis_url:
            raise InvalidField("redis_url", "must be set when shared_state is 'redis'")
        if self.shared_state == "redis" and self.circuit_breaker.mode == "rate":
            raise InvalidField(
                "circuit_breaker.mode",
                "'rate' keeps its window in each process; with shared_state = 'redis' use 'consecutive'",
            )
        if self.attempt_timeout_s < 0:
            raise InvalidField("attempt_timeout_s", f"must be >= 0, got {self.attempt_timeout_s!r}")
        self.resolve()  # every building block checks its numbers now, not on the first send

    def resolve(self) -> Resolved:
        """The effective settings: the profile's defaults, then what the file and environment say.

        :raises InvalidField: naming the table and key of a bad value.
        """
        legacy = self.profile == "legacy"
        timeout = self.attempt_timeout_s or None
        return Resolved(
            profile=self.profile,
            breaker=_in("circuit_breaker", self._breaker, legacy, timeout)
            if self.circuit_breaker.enabled
            else None,
            breaker_initial_state=self.circuit_breaker.initial_state,
            retry=_in("retry", self._retry, legacy, timeout) if self.retry.enabled else None,
            retry_unknown=(self.retry.ambiguous or ("retry" if legacy else "give_up")) == "retry",
            budget=self.retry_budget if _on(self.retry_budget.enabled, legacy) else None,
            rate_limit=_in("rate_limit", self._rate_limit, legacy, timeout)
            if _on(self.rate_limit.enabled, legacy)
            else None,
            bulkhead=self.bulkhead if _on(self.bulkhead.enabled, legacy) else None,
            attempt_timeout_s=timeout,
            shared_state=self.shared_state,
            redis_url=self.redis_url,
            redis_prefix=self.redis_prefix,
            poll_interval_s=self.poll_interval_s,
        )

    def _breaker(self, legacy: bool, timeout: float | None) -> BreakerConfig:
        cb = self.circuit_breaker
        max_open = cb.max_open_s if cb.max_open_s is not None else max(cb.open_s, 60.0 if legacy else 600.0)
        half_open_max = cb.half_open_max_s if cb.half_open_max_s is not None else 2 * (timeout or 10.0)
        return BreakerConfig(
            failure_threshold=cb.failure_threshold,
            open_s=cb.open_s,
            success_threshold=cb.success_threshold,
            half_open_permits=cb.half_open_permits,
            half_open_max_s=half_open_max,
            half_open_retry_hint_s=cb.half_open_retry_hint_s,
            open_backoff_multiplier=cb.open_backoff_multiplier,
            max_open_s=max_open,
            mode=cb.mode,  # type: ignore[arg-type]  # checked by the field's validator
            window_type=cb.window_type,  # type: ignore[arg-type]
            window_size=cb.window_size,
            minimum_calls=cb.minimum_calls,
            failure_rate_threshold=cb.failure_rate_threshold,
            slow_call_duration_s=cb.slow_call_duration_s,
            slow_call_rate_threshold=cb.slow_call_rate_threshold,
            permitted_calls_in_half_open=cb.permitted_calls_in_half_open,
            count_slow_as_failure=cb.count_slow_as_failure,
        )

    def _retry(self, legacy: bool, timeout: float | None) -> RetryConfig:
        r = self.retry
        jitter: Jitter = r.jitter or ("none" if legacy else "full")  # type: ignore[assignment]
        return RetryConfig(
            max_attempts=r.max_attempts,
            initial_delay_s=r.initial_delay_s,
            multiplier=r.multiplier,
            max_delay_s=r.max_delay_s,
            jitter=jitter,
            max_retry_after_in_process_s=r.max_retry_after_in_process_s,
            deadline_s=r.deadline_s if r.deadline_s is not None or legacy else 30.0,
            min_attempt_time_s=r.min_attempt_time_s,
        )

    def _rate_limit(self, legacy: bool, timeout: float | None) -> RateLimitSettings:
        self.rate_limit.sender()  # validates the numbers
        self.rate_limit.pair()
        return self.rate_limit


def _on(enabled: bool | None, legacy: bool) -> bool:
    return enabled if enabled is not None else not legacy


def _in(table: str, build: Any, legacy: bool, timeout: float | None) -> Any:
    """Call ``build``; a bad value's :class:`InvalidField` names its table (``retry.max_attempts``)."""
    try:
        return build(legacy, timeout)
    except InvalidField as exc:
        raise InvalidField(f"{table}.{exc.field}", str(exc)) from None
