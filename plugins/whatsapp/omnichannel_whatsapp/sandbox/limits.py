"""The sandbox's rate limits: the phone number's throughput (130429) and the per-recipient pair rate (131056).

Both are GCRA buckets (the "virtual scheduling" form of a token bucket) on
``state.clock.monotonic()``, so a test that drives a ``FakeClock`` sees the same
answers every time and never sleeps:

* per phone number, ``settings.throughput_mps`` messages a second with a burst of
  ``max(1, throughput_mps)`` (Meta: 80 mps by default, 1,000 after the upgrade);
* per recipient, one message every ``settings.pair_interval_s`` seconds with a
  burst of ``settings.pair_burst`` (Meta: one per 6 s, bursts of 45 that borrow
  future quota: after a burst of N, the next N x 6 s are spent).

A refused request consumes nothing. The settings are read at every check, so
replacing ``state.settings`` (``attrs.evolve``) takes effect at once; a rate of
0 or less switches that limit off.
"""

from __future__ import annotations

from .state import SandboxState

__all__ = ["PAIR_RATE_LIMIT", "THROUGHPUT_LIMIT", "Limits"]

THROUGHPUT_LIMIT = 130429
"""The code of a refusal by the phone number's throughput."""
PAIR_RATE_LIMIT = 131056
"""The code of a refusal by the (business, consumer) pair rate."""

_EPSILON = 1e-9
"""Float slack, so that N requests at one instant fit a burst of exactly N."""
_PRUNE_AT_LEAST = 1024
"""Forget recipients whose budget is full again once the table doubles (at least this big): amortised O(1)."""


class Limits:
    """Decides whether one more message may go out now.

    :param state: the sandbox state: its settings and its clock.
    """

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._number_tat = float("-inf")
        """Theoretical arrival time of the next message of the phone number."""
        self._pair_tat: dict[str, float] = {}
        """Theoretical arrival time of the next message, per recipient."""
        self._prune_at = _PRUNE_AT_LEAST

    def check(self, recipient: str) -> int | None:
        """Take one message from both budgets, or refuse it without taking anything.

        :param recipient: the recipient's ``wa_id`` (digits), the key of the pair limit.
        :return: ``None`` when the message may go; 130429 when the phone number's
            throughput is spent (it wins when both are); 131056 when this recipient's is.
        """
        settings = self._state.settings
        now = self._state.clock.monotonic()

        number_tat: float | None = None
        if settings.throughput_mps > 0:
            interval = 1.0 / settings.throughput_mps
            tolerance = (max(1.0, settings.throughput_mps) - 1.0) * interval
            tat = max(self._number_tat, now)
            if tat - now > tolerance + _EPSILON:
                return THROUGHPUT_LIMIT
            number_tat = tat + interval

        pair_tat: float | None = None
        if settings.pair_interval_s > 0:
            interval = settings.pair_interval_s
            tolerance = (max(1, settings.pair_burst) - 1) * interval
            tat = max(self._pair_tat.get(recipient, now), now)
            if tat - now > tolerance + _EPSILON:
                return PAIR_RATE_LIMIT
            pair_tat = tat + interval

        if number_tat is not None:
            self._number_tat = number_tat
        if pair_tat is not None:
            self._pair_tat[recipient] = pair_tat
            if len(self._pair_tat) >= self._prune_at:
                self._prune(now)
        return None

    def reset(self) -> None:
        """Full budgets again, for every recipient."""
        self._number_tat = float("-inf")
        self._pair_tat.clear()
        self._prune_at = _PRUNE_AT_LEAST

    def _prune(self, now: float) -> None:
        """Drop the recipients whose next message is due already: a missing entry means the same."""
        self._pair_tat = {key: tat for key, tat in self._pair_tat.items() if tat > now}
        self._prune_at = max(_PRUNE_AT_LEAST, 2 * len(self._pair_tat))
