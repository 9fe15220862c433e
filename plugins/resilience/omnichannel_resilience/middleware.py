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
from .bulkhead import Bulkhead, _Slots
from .config import Resolved
from .limiter import Limiter
from .retry import RetryBudget, RetryConfig, retry_after, worth_retrying
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
        return _Send(self, inner, message, channel, self._service.sender_of(message, channel)).send

    async def _initialise(self, breakers: BreakerStore, name: str) -> None:
        if self.settings.breaker_initial_state == "metrics_only":
            try:
                if (await breakers.snapshot(name)).state is State.CLOSED:
                    await breakers.admin(name, "metrics_only")
            except OmniChannelError as exc:  # shared state unreachable: the breaker stays as it is
                log.warning("circuit breaker %s: cannot set metrics_only: %s", name, exc)
        self._initialised.add(name)


class _Send:
    """One message through the layers; :meth:`send` is the sender the plugin's wrapper returns.

    Every attempt, the first and each retry, runs in one frame (:meth:`send`): the breaker, the
    rate limits and the bulkhead admit it, the attempt timeout watches it, and what it tells is
    settled with each of them, in the order of the module docstring. The retry loop (python-backoff)
    starts only when a first attempt failed in a way worth retrying; then it calls :meth:`send`
    again for each retry. So the common send, admitted at once and successful at its first attempt,
    costs one coroutine, and the stores' calls that cannot wait (memory) return at once.
    """

    __slots__ = (
        "breaker",
        "channel",
        "deadline",
        "final",
        "inner",
        "layer",
        "message",
        "opens",
        "refused",
        "retrying",
        "sender",
    )

    def __init__(self, layer: Resilience, inner: Sender, message: Message, channel: str, sender: str) -> None:
        self.layer = layer
        self.inner = inner
        self.message = message
        self.channel = channel
        self.sender = sender
        self.breaker = f"{channel}:{sender}"
        self.deadline: float | None = None
        """``clock.monotonic()`` by which the in-process attempts must be over."""
        self.retrying = False
        """Whether the retry loop runs: later calls of :meth:`send` are its attempts."""
        self.opens = 0
        """How often this process had seen the breaker open when the current attempt was admitted."""
        self.refused = False
        """Whether the current attempt was refused here (rate limit, bulkhead, deadline), before sending."""
        self.final = False
        """Set when a retry in this process cannot help: an attempt opened the breaker, or a local
        limit refused it (waiting is the queue's job, not a worker's)."""

    async def send(self) -> Receipt:
        """One attempt through breaker, rate limits, bulkhead and timeout; the first starts the retries."""
        layer = self.layer
        retry = layer.settings.retry
        first = not self.retrying
        budget = None
        if first and retry is not None:
            now = layer._clock.monotonic()
            if retry.deadline_s is not None:
                self.deadline = now + retry.deadline_s
            budget = layer.budget(self.sender)
            if budget is not None:
                budget.record_attempt(now)
        breakers, name = layer.breakers, self.breaker
        token: object = _NOT_ADMITTED
        try:
            # The circuit breaker: CircuitOpenError when it refuses.
            if breakers is not None:
                if name not in layer._initialised:
                    await layer._initialise(breakers, name)
                try:
                    token = await breakers.acquire(name)
                finally:
                    if layer._transitions:
                        await layer._emit_transitions()
                self.opens = layer._opens.get(name, 0)
            # The rate limits, then a bulkhead slot (taken without an await when one is free).
            limiter, bulkhead = layer.limiter, layer.bulkhead
            self.refused = False
            if limiter is not None:
                await self._rate_limit(limiter)
            held = None
            if bulkhead is not None:
                held = bulkhead.try_acquire(self.sender) or await self._wait_for_slot(bulkhead)
            # The attempt, under its timeout.
            try:
                timeout = self._timeout()
                if timeout is None:
                    receipt = await self.inner()
                else:
                    watchdog = layer._watchdog
                    watch = watchdog.watch(timeout)
                    try:
                        receipt = await self.inner()
                    except asyncio.CancelledError:
                        if not watch.expired():
                            raise  # cancelled by someone else: let it through
                        raise self._timed_out(timeout) from None
                    finally:
                        watchdog.forget(watch)
                    if watch.fired:  # the attempt swallowed the cancellation and finished anyway
                        watch.task.uncancel()
            except RateLimitedError as exc:
                if limiter is not None:
                    await self._throttled(limiter, exc)
                raise
            finally:
                if held is not None:
                    bulkhead.release(self.sender, held)  # type: ignore[union-attr]  # held implies a bulkhead
            if limiter is not None:
                await limiter.on_success(self.sender, self.message.recipient)
        except BaseException as exc:
            if token is not _NOT_ADMITTED:
                # Our own refusals say nothing about the endpoint.
                outcome = Outcome.IGNORED if self.refused else classify(exc)
                await self._settle(breakers, token, outcome)  # type: ignore[arg-type]  # admitted by breakers
            if not first or retry is None or not isinstance(exc, Exception):
                raise
            if not worth_retrying(exc, retry, retry_unknown=layer.settings.retry_unknown):
                raise
            failure = exc
        else:
            if token is not _NOT_ADMITTED:
                await breakers.record(self.breaker, token, Outcome.SUCCESS)  # type: ignore[union-attr]
                if layer._transitions:  # a success may close a half-open breaker
                    await layer._emit_transitions()
            return receipt
        return await self._retry(retry, budget, failure)

    async def _rate_limit(self, limiter: LimiterStore) -> None:
        """Wait for the sender's and the pair's rate limits; a refusal raises ``RateLimitedError``."""
        try:
            waited = await limiter.acquire(self.sender, self.message.recipient)
        except RateLimitedError as exc:
            await self._refused("rate", exc)
            raise
        if waited:
            await self._limited_event("rate", waited)

    async def _wait_for_slot(self, bulkhead: Bulkhead) -> _Slots:
        """Wait for the bulkhead's slots (up to its ``max_wait_s``); a refusal raises ``RateLimitedError``."""
        try:
            return await bulkhead.acquire(self.sender)
        except RateLimitedError as exc:
            await self._refused("in_flight", exc)
            raise

    async def _refused(self, limit: str, exc: RateLimitedError) -> None:
        self.refused = self.final = True  # not sent: the queue defers it
        await self._limited_event(limit, 0.0, exc)

    def _timeout(self) -> float | None:
        """The attempt's timeout: ``attempt_timeout_s``, or less when the message's deadline is nearer."""
        timeout = self.layer.settings.attempt_timeout_s
        if self.deadline is None:
            return timeout
        # The attempt never outlives the message's deadline (§1.8).
        left = self.deadline - self.layer._clock.monotonic()
        if left <= 0:  # the local limits' waits used the rest up: nothing was sent
            self.refused = True
            raise TransientDeliveryError(
                "the message's in-process deadline (retry.deadline_s) passed before the attempt",
                channel=self.channel,
                message_id=self.message.id,
                certainty=Certainty.NOT_SENT,
            )
        return left if timeout is None else min(timeout, left)

    def _timed_out(self, timeout: float) -> TransientDeliveryError:
        return TransientDeliveryError(
            f"the attempt took longer than {timeout:g} s (attempt_timeout_s or what was left of "
            "the message's deadline_s); it may have been processed",
            channel=self.channel,
            message_id=self.message.id,
            certainty=Certainty.UNKNOWN,
        )

    async def _throttled(self, limiter: LimiterStore, exc: RateLimitedError) -> None:
        """The provider throttled the attempt: slow down the key it is about."""
        pause = await limiter.on_throttled(self.sender, self.message.recipient, exc.scope, exc.retry_after)
        # Tell the caller how long this key is paused, when the provider did not.
        if pause > (exc.retry_after or 0.0):
            exc.retry_after = pause

    async def _settle(self, breakers: BreakerStore, token: object, outcome: Outcome) -> None:
        """Tell the breaker what a failed attempt said; report its moves."""
        layer = self.layer
        await breakers.record(self.breaker, token, outcome)
        if layer._opens.get(self.breaker, 0) != self.opens:
            self.final = True  # the breaker opened meanwhile: a retry would be refused
        if layer._transitions:
            await layer._emit_transitions()

    async def _retry(self, retry: RetryConfig, budget: RetryBudget | None, failure: Exception) -> Receipt:
        """The first attempt failed with ``failure``: python-backoff retries, calling :meth:`send`."""
        self.retrying = True
        layer, message = self.layer, self.message

        async def on_retry(number: int, delay_s: float, exc: BaseException) -> None:
            await layer._service.emit(
                RetryScheduled(
                    message.id,
                    self.channel,
                    number,
                    delay_s,
                    ErrorInfo.from_exception(exc),
                    occurred_at=layer._clock.now(),
                )
            )

        try:
            return await retry_after(
                failure,
                self.send,
                config=retry,
                clock=layer._clock,
                rng=layer.rng,
                budget=budget,
                on_retry=on_retry,
                retry_unknown=layer.settings.retry_unknown,
                stop=lambda exc: self.final or _throttled_beyond_sender(exc),
                deadline=self.deadline,
            )
        finally:
            self.retrying = False  # an outer layer calling this sender again starts a new send

    async def _limited_event(
        self, limit: str, waited: float, refusal: RateLimitedError | None = None
    ) -> None:
        layer = self.layer
        await layer._service.emit(
            SendLimited(
                self.message.id,
                self.channel,
                self.sender,
                limit,
                waited,
                refusal is not None,
                refusal.scope.value if refusal is not None and refusal.scope is not None else None,
                occurred_at=layer._clock.now(),
            )
        )


_NOT_ADMITTED = object()
"""The breaker's token of an attempt that it did not admit (or that has no breaker)."""


def _throttled_beyond_sender(exc: BaseException) -> bool:
    """Provider throttling about a recipient, the account or the app: defer, never retry in-process."""
    return isinstance(exc, RateLimitedError) and exc.scope not in (None, ErrorScope.SENDER)
