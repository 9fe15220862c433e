"""Helpers shared by the rate limiter tests (``test_limiter_*.py``).

``SENDER_T`` is the spacing of WhatsApp's default sender rate; ``make_limiter`` builds a :class:`Limiter`
on a fake clock with the WhatsApp defaults.
"""

from __future__ import annotations

from omnichannel.testing import FakeClock
from omnichannel_resilience.limiter import WHATSAPP_PAIR, WHATSAPP_SENDER, Limiter, RateConfig

SENDER_T = 1 / 68


def make_limiter(
    clock: FakeClock,
    *,
    sender: RateConfig = WHATSAPP_SENDER,
    pair: RateConfig = WHATSAPP_PAIR,
    max_wait_s: float = 2.0,
    max_wait_pair_s: float | None = 0.0,
) -> Limiter:
    return Limiter(sender, pair, clock, max_wait_s, max_wait_pair_s=max_wait_pair_s)
