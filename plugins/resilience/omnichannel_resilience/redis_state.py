"""Breaker and rate-limit state shared by every worker through Redis (``shared/resilience.md`` §1.3.4, §1.7).

:class:`RedisBreakerStore` implements :class:`~omnichannel_resilience.state.BreakerStore` and
:class:`RedisLimiterStore` implements :class:`~omnichannel_resilience.state.LimiterStore`; the middleware
uses them exactly like the in-memory stores. Each decision is one Lua script run with the Redis
server's clock (``TIME``), so workers with skewed clocks agree; when Redis cannot be reached both
stores fall back to local state, count the errors and go back to Redis after ``storage_retry_s``.
The designs are described in :mod:`~omnichannel_resilience.redis_breaker` and
:mod:`~omnichannel_resilience.redis_limiter`; the scripts live in ``lua/``. Needs the ``redis``
extra (``pip install 'omnichannel[redis]'``).
"""

from __future__ import annotations

from .redis_breaker import RedisBreakerStore, RedisPermit
from .redis_limiter import RedisLimiterStore

__all__ = ["RedisBreakerStore", "RedisLimiterStore", "RedisPermit"]
