"""The idempotency key contract (``KeyStore``, its records) and the in-memory store."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import attrs

from ..clock import Clock, SystemClock

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Claim", "KeyRecord", "KeyState", "KeyStore", "MemoryKeyStore", "Settlement"]


class KeyState(enum.StrEnum):
    """Where an idempotency key stands."""

    IN_FLIGHT = "in_flight"
    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


@attrs.frozen
class KeyRecord:
    """What a store knows of one key."""

    key: str
    state: KeyState
    owner: str
    attempts: int
    """Claims granted on this key so far."""
    updated_at: datetime
    lease_until: datetime | None = None
    """``in_flight`` only: when the lease expires."""
    channel: str | None = None
    provider_message_id: str | None = None
    """``sent`` (and ``failed`` by :meth:`KeyStore.settle`): the provider's id of the message."""
    error: str | None = None
    """``failed``/``uncertain``: the error's class and detail, for reports (never a secret)."""


@attrs.frozen
class Claim:
    """The answer to :meth:`KeyStore.claim`: ``granted`` means "send it now"."""

    granted: bool
    record: KeyRecord | None
    """The key's record after the claim (the current holder's or final state when refused)."""


@attrs.frozen
class Settlement:
    """A status webhook that carried our key: the provider accepted the send (see
    :meth:`KeyStore.settle`); ``error`` for a ``failed`` status."""

    key: str
    channel: str
    provider_message_id: str | None
    error: str | None = None


class KeyStore(Protocol):
    """Where idempotency keys live; see the module docstring for the states."""

    async def claim(self, key: str, *, owner: str, lease_s: float, resend_uncertain: bool = False) -> Claim:
        """Take a lease of ``lease_s`` seconds on ``key`` for ``owner``, if the key allows it."""

    async def complete(self, key: str, *, owner: str, channel: str, provider_message_id: str | None) -> None:
        """``owner``'s send of ``key`` was accepted: the key becomes ``sent`` for good."""

    async def release(
        self, key: str, *, owner: str, error: str, final: bool, uncertain: bool = False
    ) -> None:
        """``owner``'s send of ``key`` failed: ``final`` → ``failed``; ``uncertain`` → ``uncertain``;
        else the key is forgotten, so that a later delivery may try again."""

    async def settle(
        self, key: str, *, channel: str, provider_message_id: str | None, error: str | None = None
    ) -> bool:
        """A status webhook carrying ``key`` proves the provider accepted the send: an ``uncertain``
        or ``in_flight`` key (any owner, live lease or not) becomes ``sent``, or ``failed`` with
        ``error`` when given (a ``failed`` status). Other keys, and keys never seen, are left alone
        (no record is created). A later ``complete``/``release`` of the old owner changes nothing.

        :returns: whether the key changed.
        """

    async def settle_many(self, settlements: Sequence[Settlement]) -> int:
        """:meth:`settle` each of ``settlements`` in order, in one step (one transaction, one round
        trip); the number of keys changed."""

    async def get(self, key: str) -> KeyRecord | None:
        """The key's record, or ``None`` if it was never claimed (or was released)."""

    async def close(self) -> None:
        """Release connections and files."""


class MemoryKeyStore:
    """Keys in this process's memory: for tests, and for one process that never restarts."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._records: dict[str, KeyRecord] = {}

    async def claim(self, key: str, *, owner: str, lease_s: float, resend_uncertain: bool = False) -> Claim:
        now = self._clock.now()
        record = self._records.get(key)
        if record is not None and record.state is KeyState.IN_FLIGHT:
            assert record.lease_until is not None
            if record.lease_until > now:
                return Claim(False, record)
            # The holder's lease ran out (it crashed?): it may have sent the message.
            record = attrs.evolve(record, state=KeyState.UNCERTAIN, lease_until=None, error="lease expired")
            self._records[key] = record
        if record is not None and (
            record.state in (KeyState.SENT, KeyState.FAILED)
            or (record.state is KeyState.UNCERTAIN and not resend_uncertain)
        ):
            return Claim(False, record)
        attempts = record.attempts + 1 if record is not None else 1
        granted = KeyRecord(
            key,
            KeyState.IN_FLIGHT,
            owner,
            attempts,
            now,
            lease_until=datetime.fromtimestamp(now.timestamp() + lease_s, now.tzinfo),
        )
        self._records[key] = granted
        return Claim(True, granted)

    async def complete(self, key: str, *, owner: str, channel: str, provider_message_id: str | None) -> None:
        record = self._held(key, owner)
        if record is not None:
            self._records[key] = attrs.evolve(
                record,
                state=KeyState.SENT,
                updated_at=self._clock.now(),
                lease_until=None,
                channel=channel,
                provider_message_id=provider_message_id,
            )

    async def release(
        self, key: str, *, owner: str, error: str, final: bool, uncertain: bool = False
    ) -> None:
        record = self._held(key, owner)
        if record is None:
            return
        if not final and not uncertain:
            del self._records[key]
            return
        state = KeyState.FAILED if final else KeyState.UNCERTAIN
        self._records[key] = attrs.evolve(
            record, state=state, updated_at=self._clock.now(), lease_until=None, error=error
        )

    async def settle(
        self, key: str, *, channel: str, provider_message_id: str | None, error: str | None = None
    ) -> bool:
        return self._settle(Settlement(key, channel, provider_message_id, error))

    async def settle_many(self, settlements: Sequence[Settlement]) -> int:
        return sum(self._settle(settlement) for settlement in settlements)

    async def get(self, key: str) -> KeyRecord | None:
        return self._records.get(key)

    async def close(self) -> None:
        return None

    def _settle(self, settlement: Settlement) -> bool:
        record = self._records.get(settlement.key)
        if record is None or record.state not in (KeyState.IN_FLIGHT, KeyState.UNCERTAIN):
            return False
        self._records[settlement.key] = attrs.evolve(
            record,
            state=KeyState.SENT if settlement.error is None else KeyState.FAILED,
            updated_at=self._clock.now(),
            lease_until=None,
            channel=settlement.channel,
            provider_message_id=settlement.provider_message_id,
            error=settlement.error,
        )
        return True

    def _held(self, key: str, owner: str) -> KeyRecord | None:
        """The record if ``owner`` still holds the lease (a late owner changes nothing)."""
        record = self._records.get(key)
        if record is None or record.state is not KeyState.IN_FLIGHT or record.owner != owner:
            return None
        return record
