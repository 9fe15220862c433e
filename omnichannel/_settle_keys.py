"""Status webhooks settle idempotency keys (``../shared/resilience.md`` §1.10).

A channel attaches the message's idempotency key to the send (WhatsApp:
``biz_opaque_callback_data``) and its status webhooks carry it back as
``StatusChanged.message_id``. A ``sent``, ``delivered``, ``read`` or ``failed`` status
proves the provider accepted the send, so the key becomes ``sent`` (or ``failed``) in the
configured key store (``ServiceConfig.key_store``) even when the send's own answer was lost:
the worker's reconcile policy then acks the message instead of sending it again.

Registered in every service (a core module), it only acts when a key store can hold such a
key: a SQLite file that does not exist yet is never created for it (no campaign or worker
has claimed a key there), and ``memory://`` belongs to another process. Keys the store does
not know are left alone: most webhooks are for messages sent without a claim.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .events import Event, StatusChanged
from .hookspecs import hookimpl
from .message import DeliveryStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .idempotency import KeyStore
    from .service import OmniChannelService

STATE = "omnichannel.settle_keys"

_ACCEPTED = frozenset({DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ})


class KeySettler:
    """The key store of one service, opened at the first webhook that can settle a key."""

    def __init__(self, service: OmniChannelService) -> None:
        from .idempotency import open_key_store
        from .idempotency.factory import check_key_store_url

        kind, target = check_key_store_url(service.config.key_store)
        self._store: KeyStore | None = None
        if kind != "memory":  # another process's memory holds no key of ours
            self._store = open_key_store(service.config.key_store, clock=service.clock)
        self._file = target if kind == "sqlite" else None
        """The SQLite file, until it exists (no campaign or worker claimed a key in it yet)."""

    def store(self) -> KeyStore | None:
        """The key store, or ``None`` while there is none to settle keys in."""
        if self._file is not None:
            if not os.path.exists(self._file):
                return None
            self._file = None
        return self._store

    async def settle(self, event: StatusChanged) -> None:
        """Settle the key ``event`` carries, if the store holds it uncertain or in flight."""
        assert event.message_id is not None
        store = self.store()
        if store is None:
            return
        error = None
        if event.status is DeliveryStatus.FAILED:
            error = _describe(event)
        await store.settle(
            event.message_id,
            channel=event.channel,
            provider_message_id=event.provider_message_id,
            error=error,
        )

    async def close(self) -> None:
        """Close the key store (a SQLite store never used opened nothing)."""
        if self._store is not None:
            await self._store.close()


def _describe(event: StatusChanged) -> str:
    if event.error is None:
        return "failed status webhook"
    code = f" (code {event.error.code})" if event.error.code is not None else ""
    return f"{event.error.kind}: {event.error.detail}{code}"


@hookimpl
def on_event(event: Event, service: OmniChannelService) -> Awaitable[None] | None:
    # A plain function: the events of every send cost no coroutine; a webhook's is awaited.
    if not isinstance(event, StatusChanged) or event.message_id is None:
        return None
    if event.status not in _ACCEPTED and event.status is not DeliveryStatus.FAILED:
        return None
    settler: KeySettler | None = service.state.get(STATE)
    if settler is None:
        settler = service.state[STATE] = KeySettler(service)
    return settler.settle(event)


@hookimpl
async def shutdown(service: OmniChannelService) -> None:
    settler: KeySettler | None = service.state.pop(STATE, None)
    if settler is not None:
        await settler.close()
