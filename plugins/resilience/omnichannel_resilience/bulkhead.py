"""The bulkhead: a cap on attempts in flight, per sender and in all (``shared/resilience.md`` §1.9).

One slow sender must not take every connection and worker from the others, and local saturation
must not look like an upstream failure (§1.8, ``pool``). So every attempt runs inside
``async with bulkhead.slot(sender):``, which takes one of the sender's ``sender_max_in_flight``
slots, then one of the ``global_max_in_flight`` slots:

- Waiters are served in arrival order (FIFO) for each cap: a freed slot goes straight to the oldest
  waiter, so a newcomer never overtakes. The sender slot is taken first, so one sender can queue at
  most ``sender_max_in_flight`` attempts for the global cap and never starves the others.
- A waiter waits at most ``max_wait_s`` (the spec's ``pool`` timeout, on the running loop's clock),
  then gets :class:`~omnichannel.RateLimitedError` with scope ``sender`` and certainty ``not_sent``:
  the caller defers the message (IGNORED by the breaker, TO-04). ``max_wait_s = 0`` refuses at once
  when full (resilience4j's default).
- A cancelled or timed-out waiter takes no slot (a slot handed to it meanwhile goes on to the next
  waiter); a slot is released however the body ends.
- A sender's state exists only while it has attempts in flight or waiting: memory follows the live
  senders, not every sender ever seen.

For one event loop; not thread-safe (no locks: every decision runs between two awaits).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from typing import TYPE_CHECKING

from omnichannel import Certainty, ErrorScope, InvalidField, RateLimitedError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Bulkhead"]

_MIN_RETRY_AFTER_S = 0.5
"""The ``retry_after`` of a refusal when ``max_wait_s`` is shorter: about one attempt's latency
(§1.9's Little's-law estimate), so ``max_wait_s = 0`` does not turn into an immediate retry loop."""


class _Slots:
    """A FIFO counting semaphore: a freed slot is handed to the oldest waiter, never up for grabs."""

    __slots__ = ("active", "capacity", "taken", "waiters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.taken = 0
        """Slots held, including those handed to a waiter that has not resumed yet."""
        self.active = 0
        """Attempts past both caps (the in-flight count the metrics show)."""
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        if self.taken < self.capacity and not self.waiters:
            self.taken += 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (the caller bounds the wait); a cancelled waiter holds none."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just before the cancellation: pass it on
            else:
                self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands: ``taken`` stays
                return
        self.taken -= 1

    @property
    def idle(self) -> bool:
        return self.taken == 0 and not self.waiters


class Bulkhead:
    """Caps attempts in flight per sender and in all; see the module docstring.

    :param sender_max_in_flight: slots per sender (the spec's default 50: 68 msg/s x ~0.5 s + headroom).
    :param global_max_in_flight: slots in all (100, like ``[http] max_connections``); size the HTTP
        connector limit at least as big.
    :param max_wait_s: the longest wait for a slot (the spec's ``pool`` timeout, 2 s); 0: never wait.
    """

    def __init__(
        self, sender_max_in_flight: int = 50, global_max_in_flight: int = 100, max_wait_s: float = 2.0
    ) -> None:
        for name, value in (
            ("sender_max_in_flight", sender_max_in_flight),
            ("global_max_in_flight", global_max_in_flight),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidField(name, f"must be an integer >= 1, got {value!r}")
        if (
            isinstance(max_wait_s, bool)
            or not isinstance(max_wait_s, int | float)
            or not math.isfinite(max_wait_s)
            or max_wait_s < 0
        ):
            raise InvalidField("max_wait_s", f"must be a finite number >= 0, got {max_wait_s!r}")
        self.sender_max_in_flight = sender_max_in_flight
        self.global_max_in_flight = global_max_in_flight
        self.max_wait_s = float(max_wait_s)
        self.rejected = 0
        """Attempts refused because a cap stayed full (``omnichannel_bulkhead_rejected_total``)."""
        self._global = _Slots(global_max_in_flight)
        self._senders: dict[str, _Slots] = {}

    def slot(self, sender: str) -> contextlib.AbstractAsyncContextManager[None]:
        """``async with bulkhead.slot(sender):`` runs the body holding a sender slot and a global slot.

        :raises RateLimitedError: no slot freed within ``max_wait_s``; ``detail`` names the full cap,
            ``retry_after`` is ``max_wait_s`` (at least 0.5 s), scope ``sender``, certainty
            ``not_sent``.
        """
        return _Slot(self, sender)

    def in_flight(self, sender: str) -> int:
        """Attempts of ``sender`` running now (``omnichannel_bulkhead_in_flight``)."""
        state = self._senders.get(sender)
        return 0 if state is None else state.active

    @property
    def in_flight_total(self) -> int:
        """Attempts running now, all senders together."""
        return self._global.active

    def waiting(self, sender: str | None = None) -> int:
        """Attempts waiting for a slot: of ``sender`` (for its own cap), or for the global cap."""
        if sender is None:
            return len(self._global.waiters)
        state = self._senders.get(sender)
        return 0 if state is None else len(state.waiters)

    def __len__(self) -> int:
        """The number of senders tracked: those with attempts in flight or waiting."""
        return len(self._senders)

    def try_acquire(self, sender: str) -> _Slots | None:
        """Both slots at once when free (no await); ``None`` when ``slot(sender)`` would wait.

        Settle a non-``None`` result with :meth:`release`.
        """
        state = self._senders.get(sender)
        if state is None:
            state = self._senders[sender] = _Slots(self.sender_max_in_flight)
        if state.try_take():
            if self._global.try_take():
                state.active += 1
                self._global.active += 1
                return state
            state.release()
        if state.taken == 0 and not state.waiters and self._senders.get(sender) is state:
            del self._senders[sender]  # idle: memory follows the live senders
        return None

    def release(self, sender: str, state: _Slots) -> None:
        """Give back the slots :meth:`try_acquire` or :meth:`acquire` took."""
        state.active -= 1
        self._global.active -= 1
        self._global.release()
        state.release()
        if state.taken == 0 and not state.waiters and self._senders.get(sender) is state:
            del self._senders[sender]  # idle: memory follows the live senders

    async def acquire(self, sender: str) -> _Slots:
        """Both slots, waiting up to ``max_wait_s`` as :meth:`slot` does; settle with :meth:`release`.

        :raises RateLimitedError: as :meth:`slot`.
        """
        state = self._senders.get(sender)
        if state is None:
            state = self._senders[sender] = _Slots(self.sender_max_in_flight)
        holds_sender = state.try_take()
        if holds_sender and self._global.try_take():  # the common case: no await, no timer
            state.active += 1
            self._global.active += 1
            return state
        if self.max_wait_s == 0:
            self._give_back(sender, state, holds_sender)
            raise self._refusal(sender, state, global_cap=holds_sender)
        try:
            async with asyncio.timeout(self.max_wait_s) as scope:
                if not holds_sender:
                    await state.take()
                    holds_sender = True
                await self._global.take()
        except TimeoutError:
            self._give_back(sender, state, holds_sender)
            if not scope.expired():  # an inner or outer timeout, not ours
                raise
            raise self._refusal(sender, state, global_cap=holds_sender) from None
        except BaseException:
            self._give_back(sender, state, holds_sender)
            raise
        state.active += 1
        self._global.active += 1
        return state

    def _give_back(self, sender: str, state: _Slots, holds_sender: bool) -> None:
        if holds_sender:
            state.release()
        if state.taken == 0 and not state.waiters and self._senders.get(sender) is state:
            del self._senders[sender]  # idle: memory follows the live senders

    def _refusal(self, sender: str, state: _Slots, *, global_cap: bool) -> RateLimitedError:
        self.rejected += 1
        if global_cap:
            full = f"{_attempts(self._global.taken)} in flight in all (global_max_in_flight)"
        else:
            full = f"sender {sender!r} has {_attempts(state.taken)} in flight (sender_max_in_flight)"
        waited = f"no slot freed within {self.max_wait_s:g} s" if self.max_wait_s else "max_wait_s is 0"
        return RateLimitedError(
            f"bulkhead: {full}; {waited}",
            retry_after=max(self.max_wait_s, _MIN_RETRY_AFTER_S),
            scope=ErrorScope.SENDER,
            certainty=Certainty.NOT_SENT,
        )


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


class _Slot(contextlib.AbstractAsyncContextManager[None]):
    """The async context manager :meth:`Bulkhead.slot` returns; one use."""

    __slots__ = ("_bulkhead", "_sender", "_state")

    def __init__(self, bulkhead: Bulkhead, sender: str) -> None:
        self._bulkhead = bulkhead
        self._sender = sender
        self._state: _Slots | None = None

    async def __aenter__(self) -> None:
        self._state = await self._bulkhead.acquire(self._sender)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        state, self._state = self._state, None
        if state is not None:
            self._bulkhead.release(self._sender, state)
