"""Group commit on the event loop: the key stores' operations queue up and go in batches.

A caller queues an :class:`Op` and awaits its future. The first operation queued while the
:class:`Batcher` is idle schedules a flush on the next loop iteration (so that whatever is queued
in the same iteration joins it); the flush hands every queued operation to the store's
``dispatch`` as one batch, and the store calls :meth:`Batcher.resolve` once, on the loop, with
one outcome per operation. Operations queued while a batch runs wait for the next one, which
starts as soon as the running batch is resolved: one batch in flight at a time, in queue order.

Cancellation: a caller cancelled while its operation is still queued takes it out when the kind is
``droppable`` (a claim, a read); other operations still run, since they record what happened. An
operation already handed on runs to its end; if its caller was cancelled meanwhile, the store's
``orphaned`` callback sees the outcome (to give a granted claim back).

Closing queues a ``close`` operation after everything else; the store runs it last in its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..errors import KeyStoreError

__all__ = ["CLOSE", "Batcher", "Op", "Outcome"]

CLOSE = "close"

Outcome = tuple[bool, Any]
"""``(True, result)`` or ``(False, exception)``."""


class Op:
    """One queued operation; ``future`` is ``None`` for a store's own (nobody awaits them)."""

    __slots__ = ("args", "future", "key", "kind", "undo")

    def __init__(
        self, kind: str, key: str, args: tuple[Any, ...], future: asyncio.Future[Any] | None
    ) -> None:
        self.kind = kind
        self.key = key
        self.args = args
        self.future = future
        self.undo: Any = None
        """What the store needs to give a granted claim back (set while the batch runs)."""


class Batcher:
    """The queue of one store; see the module docstring.

    :param dispatch: starts a batch (never blocks the loop); ``resolve`` must follow exactly once.
    :param droppable: kinds taken out of the queue when their caller is cancelled.
    :param orphaned: called with an operation whose caller was cancelled and its result.
    :param where: the store, as its errors name it (``idempotency key store '/path'``).
    """

    def __init__(
        self,
        dispatch: Callable[[list[Op]], None],
        *,
        droppable: frozenset[str],
        orphaned: Callable[[Op, Any], None],
        where: str,
    ) -> None:
        self._dispatch = dispatch
        self._droppable = droppable
        self._orphaned = orphaned
        self._where = where
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Op] = []
        self._busy = False  # a flush is scheduled or a batch is out
        self.closed = False
        """:meth:`close` was called: nothing more is accepted."""
        self.shut = False
        """The close operation ran."""
        self._closing: asyncio.Future[Any] | None = None

    @property
    def used(self) -> bool:
        """Something was ever queued."""
        return self.loop is not None

    async def submit(self, kind: str, key: str, args: tuple[Any, ...]) -> Any:
        """Queue an operation and wait for its outcome."""
        if self.closed:
            raise KeyStoreError(f"{self._where} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._enqueue(loop, Op(kind, key, args, future))
        return await future

    def put(self, op: Op) -> None:
        """Queue a store's own operation (before a queued close); ignored once the store is shut."""
        if self.shut or self.loop is None or self.loop.is_closed():
            return
        if self._pending and self._pending[-1].kind == CLOSE:
            self._pending.insert(-1, op)
        else:
            self._enqueue(self.loop, op)

    async def close(self) -> None:
        """Queue the close operation once (after everything queued) and wait until it ran."""
        if self._closing is None:
            self.closed = True
            loop = asyncio.get_running_loop()
            self._closing = loop.create_future()
            self._enqueue(loop, Op(CLOSE, "", (), self._closing))
        await asyncio.shield(self._closing)

    def mark_closed(self) -> None:
        """Closed without a close operation (nothing was ever opened)."""
        self.closed = self.shut = True

    def resolve(self, batch: list[Op], outcomes: list[Outcome]) -> None:
        """Settle the batch's futures (on the loop), then let the next batch start."""
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            future = op.future
            if future is None:
                continue
            if future.done():  # its caller was cancelled
                if ok:
                    self._orphaned(op, value)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if batch[-1].kind == CLOSE:
            self.shut = True
        assert self.loop is not None
        # Not at once: the callers just woken may queue more for the next batch.
        self.loop.call_soon(self._flush)

    def _enqueue(self, loop: asyncio.AbstractEventLoop, op: Op) -> None:
        if loop is not self.loop:
            if self.loop is not None and not self.loop.is_closed() and self._busy:
                raise KeyStoreError(f"{self._where} is in use by another event loop; open one per loop")
            # A closed loop took its callers with it: start afresh.
            self.loop, self._pending, self._busy = loop, [], False
        self._pending.append(op)
        if not self._busy:
            self._busy = True
            # Not at once: operations queued in the same loop iteration join this batch.
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch = [op for op in self._pending if not self._dropped(op)]
        self._pending = []
        if not batch:
            self._busy = False
            return
        try:
            self._dispatch(batch)
        except Exception as exc:  # the store cannot start it (say, its thread is gone)
            self.resolve(batch, [(False, exc) for _ in batch])

    def _dropped(self, op: Op) -> bool:
        return op.kind in self._droppable and op.future is not None and op.future.done()
