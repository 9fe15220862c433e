"""The resilience plugin's section of the health report (``../shared/resilience.md`` §1.12).

``GET /health`` (and ``omnichannel health``) shows, under ``resilience``: every breaker this
process knows (all of them with shared Redis state) with its state, time left open, failures
and rates; the senders whose rate the limiter lowered after throughput errors (cool-downs, in
memory only: with Redis the limits live there); the bulkhead's attempts running and waiting;
and ``degraded`` while the Redis state is unreachable and local state stands in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._breaker_types import BreakerSnapshot
from .state import MemoryLimiterStore

if TYPE_CHECKING:
    from .middleware import Resilience

__all__ = ["breaker_row", "health_section"]


def breaker_row(snapshot: BreakerSnapshot) -> dict[str, object]:
    """One breaker as ``breaker list --json`` and the health report show it."""
    return {
        "breaker": snapshot.name,
        "state": snapshot.state.value,
        "gauge": snapshot.gauge,
        "failures": snapshot.failures,
        "half_open_in_s": None if snapshot.open_remaining_s is None else round(snapshot.open_remaining_s, 3),
        "probes_in_flight": snapshot.in_flight,
        "open_count": snapshot.open_count,
        "generation": snapshot.generation,
        "failure_rate": snapshot.failure_rate,
        "slow_call_rate": snapshot.slow_call_rate,
    }


async def health_section(layer: Resilience) -> dict[str, Any]:
    """The section of ``layer`` (one service's resilience layer)."""
    section: dict[str, Any] = {"shared_state": layer.settings.shared_state}
    degraded = False
    if layer.breakers is not None:
        section["breakers"] = [breaker_row(s) for s in await layer.breakers.snapshots()]
        degraded = degraded or getattr(layer.breakers, "degraded", False) is True
    if layer.limiter is not None:
        limits: dict[str, Any] = {}
        if isinstance(layer.limiter, MemoryLimiterStore):
            limiter = layer.limiter.limiter
            limits["sender_rate_per_s"] = limiter.senders.config.rate_per_s
            limits["lowered"] = {sender: round(rate, 3) for sender, rate in limiter.adapted_senders().items()}
        section["rate_limits"] = limits
        degraded = degraded or getattr(layer.limiter, "degraded", False) is True
    if layer.bulkhead is not None:
        bulkhead = layer.bulkhead
        section["bulkhead"] = {"in_flight": bulkhead.in_flight_total, "waiting": bulkhead.waiting()}
    section["degraded"] = degraded
    return section
