"""Idempotency keys: a message whose key was already sent is not sent again.

A campaign re-run after a crash, a command the broker delivers twice, two workers racing: each
asks the key store before sending. :meth:`KeyStore.claim` grants one owner a *lease* on the key;
the owner then records the outcome with :meth:`KeyStore.complete` (sent) or
:meth:`KeyStore.release` (failed, to try again later, or failed for good, or uncertain). Only a
granted claim may send.

States of a key:

========== ==========================================================================
(absent)   never claimed: a claim is granted
in_flight  an owner holds a lease: other claims are refused until it ends or expires
sent       the provider accepted it: never granted again
failed     failed for good (the message cannot succeed unchanged): never granted again
uncertain  the last attempt may have reached the provider (certainty ``unknown``):
           granted again only with ``resend_uncertain=True`` (a possible duplicate)
========== ==========================================================================

A ``release`` that is not final deletes the key (a later delivery may try again). A status
webhook that carries our key proves the provider accepted the send: :meth:`KeyStore.settle`
(or :meth:`KeyStore.settle_many`, for a listener that batches) turns an ``uncertain`` or
``in_flight`` key into ``sent`` (or ``failed``, for a failed status), whoever holds it, so the
reconcile policy does not resend it; the old owner's late ``complete``/``release`` then change
nothing. A lease that expires (its owner crashed) makes the key claimable again, as ``uncertain``
when ``resend_uncertain`` is false: the crashed owner may have sent it. The stores are
``MemoryKeyStore`` (one process, tests), ``SqliteKeyStore`` (a file; the default) and
``RedisKeyStore`` (shared by many workers); :func:`open_key_store` picks one from a URL.
"""

from __future__ import annotations

from ..errors import KeyStoreError
from .factory import open_key_store
from .keys import Claim, KeyRecord, KeyState, KeyStore, MemoryKeyStore, Settlement
from .redis import RedisKeyStore
from .sqlite import SqliteKeyStore

__all__ = [
    "Claim",
    "KeyRecord",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "MemoryKeyStore",
    "RedisKeyStore",
    "Settlement",
    "SqliteKeyStore",
    "open_key_store",
]
