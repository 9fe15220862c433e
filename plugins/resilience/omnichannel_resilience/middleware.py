"""The resilient sender: what the plugin's ``send`` wrapper puts around the channel's sender.

Order of the layers, outer to inner (shared/resilience.md §0 item 1, §1.2)::

    retry (python-backoff, retry budget, per-message deadline)
      └ circuit breaker of (channel, sender)        refuses with CircuitOpenError
          └ rate limits: sender, then (sender, recipient) pair
              └ bulkhead: attempts in flight per sender and in all
                  └ per-attempt timeout
                      └ the channel's sender (one HTTP attempt)

Every attempt passes the breaker and the limiter: retries are load. An open breaker, a local
rate-limit refusal or an exhausted budget ends the in-process loop: the error goes back to the
caller with its ``retry_after`` so that a queue defers the message instead of holding a worker.

What one attempt tells the breaker (§1.4): :func:`~omnichannel_resilience.breaker.classify`, except
that our own refusals (rate limit, bulkhead) are IGNORED and a provider's throttling slows the
limiter of its scope down. Breaker transitions are emitted as ``CircuitStateChanged`` and retries
as ``RetryScheduled``, so metrics and logs see them without importing this plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from omnichannel import (
    Certainty,
    CircuitStateChanged,
    ErrorInfo,
    ErrorScope,
    Message,
    OmniChannelError,
    RateLimitedError,
    Receipt,
    RetryScheduled,
    Sender,
    SendLimited,
    TransientDeliveryError,
)

from .breaker import Outcome, State, classify
from .bulkhead import Bulkhead
from .config import Resolved
from .limiter import Limiter
from .retry import RetryBudget, call_with_retries
from .state import BreakerStore, LimiterStore, MemoryBreakerStore, MemoryLimiterStore
from .timeouts import Watchdog

if TYPE_CHECKING:
    from omnichannel import OmniChannelService

__all__ = ["Resilience"]

log = logging.getLogger(__name__)


class Resilience:
    """The resilience layer of one service: its breakers, limits, budgets and in-flight caps.

    :param settings: the resolved configuration.
    :param service: the service whose sends it wraps (clock, events).
    :param rng: the source of jitter (seed it in tests).
    :param breakers: overrides the breaker store the settings choose.
    :param limiter: overrides the limiter store the settings choose.
    """

    def __init__(
        self,
        settings: Resolved,
        service: OmniChannelService,
        *,
        rng: random.Random | None = None,
        breakers: BreakerStore | None = None,
        limiter: LimiterStore | None = None,
    ) -> None:
        self.settings = settings
        self._service = service
        self._clock = service.clock
        self.rng = rng or random.Random()
        self._transitions: list[CircuitStateChanged] = []
        self.breakers = breakers if breakers is not None else self._make_breakers()
        self.limiter = limiter if limiter is not None else self._make_limiter()
        bulkhead = settings.bulkhead
        self.bulkhead = (
            Bulkhead(bulkhead.sender_max_in_flight, bulkhead.global_max_in_flight, bulkhead.max_wait_s)
            if bulkhead is not None
            else None
        )
        self._watchdog = Watchdog()
        self._budgets: dict[str, RetryBudget] = {}
        self._opens: dict[str, int] = {}  # breaker name -> times this process saw it open
        self._seen: dict[str, State] = {}  # breaker name -> the state last reported
        self._watcher: asyncio.Task[None] | None = None
        self._initialised: set[str] = set()

    # ------------------------------------------------------------ set-up

    def _make_breakers(self) -> BreakerStore | None:
        config = self.settings.breaker
        if config is None:
            return None
        if self.settings.shared_state == "redis":
            from .redis_state import RedisBreakerStore

            return RedisBreakerStore(
                self.settings.redis_url,
                config,
                self._clock,
                self._on_transition,
                prefix=self.settings.redis_prefix,
                poll_interval_s=self.settings.poll_interval_s,
                # A worker that dies holding a probe lease frees it this long after (§1.3.4); a live
                # probe may first wait for the rate limiter and the bulkhead.
                probe_lease_ttl_s=(self.settings.attempt_timeout_s or config.half_open_max_s)
                + self._max_local_wait()
                + 2.0,
            )
        return MemoryBreakerStore(config, self._clock, self._on_transition)

    def _max_local_wait(self) -> float:
        rate, bulkhead = self.settings.rate_limit, self.settings.bulkhead
        rate_wait = max(rate.max_wait_sender_s, rate.max_wait_pair_s) if rate else 0.0
        return rate_wait + (bulkhead.max_wait_s if bulkhead else 0.0)

    def _make_limiter(self) -> LimiterStore | None:
        rate = self.settings.rate_limit
        if rate is None:
            return None
        if self.settings.shared_state == "redis":
            from .redis_state import RedisLimiterStore

            return RedisLimiterStore(
                self.settings.redis_url,
                rate.sender(),
                rate.pair(),
                self._clock,
                rate.max_wait_sender_s,
                max_wait_pair_s=rate.max_wait_pair_s,
                prefix=self.settings.redis_prefix,
                expected_workers=rate.expected_workers,
            )
        limiter = Limiter(
            rate.sender(),
            rate.pair(),
            self._clock,
            rate.max_wait_sender_s,
            max_wait_pair_s=rate.max_wait_pair_s,
            adaptive=rate.adaptive,
        )
        return MemoryLimiterStore(limiter)

    async def close(self) -> None:
        """Stop watching the breakers and close the stores (their Redis connections)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for store in (self.breakers, self.limiter):
            if store is not None:
                await store.close()

    # ------------------------------------------------------------ watching the breakers

    def start_watching(self) -> None:
        """Call :meth:`report_breakers` every ``poll_interval_s`` (of the loop's time) until :meth:`close`."""
        if self.breakers is not None and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="breaker-watcher")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.report_breakers()
            except Exception:
                log.exception("cannot read the circuit breakers' state; trying again")

    async def report_breakers(self) -> None:
        """Emit ``CircuitStateChanged`` for breakers that moved without a send through this process.

        A breaker's state is computed when read: an idle sender's breaker turns from open to
        half-open only when someone looks, and with shared state another worker may have moved it.
        Reading each breaker this process uses reports such moves, so that a state gauge built from
        the events shows the truth (the legacy alert fires on ``state == 2``).
        """
        breakers = self.breakers
        if breakers is None:
            return
        for name in list(self._initialised):
            state = (await breakers.snapshot(name)).state  # a memory breaker reports its own moves
            previous = self._seen.get(name, State.CLOSED)
            if state is not previous:
                self._on_transition(name, previous, state)
        if self._transitions:
            await self._emit_transitions()

    # ------------------------------------------------------------ events

    def _on_transition(self, name: str, previous: State, current: State) -> None:
        # Called inside the breaker's critical section: queue, emit after the breaker call.
        if current is State.OPEN:
            self._opens[name] = self._opens.get(name, 0) + 1
        self._seen[name] = current
        channel, _, sender = name.partition(":")
        self._transitions.append(
            CircuitStateChanged(channel, sender, previous.value, current.value, occurred_at=self._clock.now())
        )
        log.log(
            logging.WARNING if current in (State.OPEN, State.FORCED_OPEN) else logging.INFO,
            "circuit breaker %s: %s -> %s",
            name,
            previous.value,
            current.value,
        )

    async def _emit_transitions(self) -> None:
        while self._transitions:
            await self._service.emit(self._transitions.pop(0))

    # ------------------------------------------------------------ the sender

    def budget(self, sender: str) -> RetryBudget | None:
        """The retry budget of ``sender`` (``None`` when budgets are off)."""
        settings = self.settings.budget
        if settings is None:
            return None
        budget = self._budgets.get(sender)
        if budget is None:
            budget = self._budgets[sender] = RetryBudget(
                settings.ratio, settings.min_retries, settings.window_s, clock=self._clock
            )
        return budget

    def wrap(self, inner: Sender, message: Message, channel: str) -> Sender:
        """The resilient sender around ``inner`` for one message."""
        sender = self._service.sender_of(message, channel)
        delivery = _Delivery(inner, message, channel, sender)

        async def attempt() -> Receipt:
            return await self._attempt(delivery)

        retry = self.settings.retry
        if retry is None:
            return attempt

        async def on_retry(number: int, delay_s: float, exc: BaseException) -> None:
            await self._service.emit(
                RetryScheduled(
                    message.id,
                    channel,
                    number,
                    delay_s,
                    ErrorInfo.from_exception(exc),
                    occurred_at=self._clock.now(),
                )
            )

        async def with_retries() -> Receipt:
            if retry.deadline_s is not None:
                delivery.deadline = self._clock.monotonic() + retry.deadline_s
            return await call_with_retries(
                attempt,
                config=retry,
                clock=self._clock,
                rng=self.rng,
                budget=self.budget(sender),
                on_retry=on_retry,
                retry_unknown=self.settings.retry_unknown,
                stop=lambda exc: delivery.final or _throttled_beyond_sender(exc),
                deadline=delivery.deadline,
            )

        return with_retries

    async def _attempt(self, delivery: _Delivery) -> Receipt:
        """One attempt through the breaker (when there is one) and the inner layers."""
        breakers = self.breakers
        if breakers is None:
            return await self._limited(delivery)
        name = delivery.breaker
        if name not in self._initialised:
            await self._initialise(breakers, name)
        try:
            token = await breakers.acquire(name)
        finally:
            if self._transitions:
                await self._emit_transitions()
        opens = self._opens.get(name, 0)
        outcome = Outcome.IGNORED
        try:
            receipt = await self._limited(delivery)
            outcome = Outcome.SUCCESS
            return receipt
        except BaseException as exc:
            if not delivery.refused:  # our own refusals say nothing about the endpoint
                outcome = classify(exc)
            raise
        finally:
            await breakers.record(name, token, outcome)
            if self._opens.get(name, 0) != opens:
                delivery.final = True  # the breaker opened meanwhile: a retry would be refused
            if self._transitions:
                await self._emit_transitions()

    async def _limited(self, delivery: _Delivery) -> Receipt:
        """The rate limits, the bulkhead slot, then the timed attempt."""
        limiter, bulkhead = self.limiter, self.bulkhead
        sender, recipient = delivery.sender, delivery.message.recipient
        delivery.refused = False
        limit = "rate"
        try:
            if limiter is not None:
                waited = await limiter.acquire(sender, recipient)
                if waited:
                    await self._limited_event(delivery, limit, waited)
            limit = "in_flight"
            slot = held = None
            if bulkhead is not None:
                # Free slots are taken without an await (the common case); else wait in slot().
                held = bulkhead.try_acquire(sender)
                if held is None:
                    slot = bulkhead.slot(sender)
                    await slot.__aenter__()
        except RateLimitedError as exc:
            delivery.refused = delivery.final = True  # not sent: the queue defers it
            await self._limited_event(delivery, limit, 0.0, exc)
            raise
        try:
            receipt = await self._timed(delivery)
        except RateLimitedError as exc:
            if limiter is not None:
                pause = await limiter.on_throttled(sender, recipient, exc.scope, exc.retry_after)
                # Tell the caller how long this key is paused, when the provider did not.
                if pause > (exc.retry_after or 0.0):
                    exc.retry_after = pause
            raise
        finally:
            if held is not None:
                bulkhead.release(sender, held)  # type: ignore[union-attr]  # held implies a bulkhead
            elif slot is not None:
                await slot.__aexit__(None, None, None)
        if limiter is not None:
            await limiter.on_success(sender, recipient)
        return receipt

    async def _initialise(self, breakers: BreakerStore, name: str) -> None:
        if self.settings.breaker_initial_state == "metrics_only":
            try:
                if (await breakers.snapshot(name)).state is State.CLOSED:
                    await breakers.admin(name, "metrics_only")
            except OmniChannelError as exc:  # shared state unreachable: the breaker stays as it is
                log.warning("circuit breaker %s: cannot set metrics_only: %s", name, exc)
        self._initialised.add(name)

    async def _limited_event(
        self, delivery: _Delivery, limit: str, waited: float, refusal: RateLimitedError | None = None
    ) -> None:
        await self._service.emit(
            SendLimited(
                delivery.message.id,
                delivery.channel,
                delivery.sender,
                limit,
                waited,
                refusal is not None,
                refusal.scope.value if refusal is not None and refusal.scope is not None else None,
                occurred_at=self._clock.now(),
            )
        )

    async def _timed(self, delivery: _Delivery) -> Receipt:
        timeout = self.settings.attempt_timeout_s
        if delivery.deadline is not None:
            # The attempt never outlives the message's deadline (§1.8).
            left = delivery.deadline - self._clock.monotonic()
            if left <= 0:  # the local limits' waits used the rest up: nothing was sent
                delivery.refused = True
                raise TransientDeliveryError(
                    "the message's in-process deadline (retry.deadline_s) passed before the attempt",
                    channel=delivery.channel,
                    message_id=delivery.message.id,
                    certainty=Certainty.NOT_SENT,
                )
            timeout = left if timeout is None else min(timeout, left)
        if timeout is None:
            return await delivery.inner()
        watch = self._watchdog.watch(timeout)
        try:
            receipt = await delivery.inner()
        except asyncio.CancelledError:
            if not watch.expired():
                raise  # cancelled by someone else: let it through
            raise TransientDeliveryError(
                f"the attempt took longer than {timeout:g} s (attempt_timeout_s or what was left of "
                "the message's deadline_s); it may have been processed",
                channel=delivery.channel,
                message_id=delivery.message.id,
                certainty=Certainty.UNKNOWN,
            ) from None
        finally:
            self._watchdog.forget(watch)
        if watch.fired:  # the attempt swallowed the cancellation and finished anyway
            watch.task.uncancel()
        return receipt


class _Delivery:
    """What the attempts of one message share."""

    __slots__ = ("breaker", "channel", "deadline", "final", "inner", "message", "refused", "sender")

    def __init__(self, inner: Sender, message: Message, channel: str, sender: str) -> None:
        self.inner = inner
        self.message = message
        self.channel = channel
        self.sender = sender
        self.breaker = f"{channel}:{sender}"
        self.deadline: float | None = None
        """``clock.monotonic()`` by which the in-process attempts must be over."""
        self.refused = False
        """Whether the current attempt was refused here (rate limit, bulkhead), before sending."""
        self.final = False
        """Set when a retry in this process cannot help: an attempt opened the breaker, or a local
        limit refused it (waiting is the queue's job, not a worker's)."""


def _throttled_beyond_sender(exc: BaseException) -> bool:
    """Provider throttling about a recipient, the account or the app: defer, never retry in-process."""
    return isinstance(exc, RateLimitedError) and exc.scope not in (None, ErrorScope.SENDER)
