"""A blocking facade over ``OmniChannelService`` for host applications that are not async.

::

    with SyncOmniChannelService(load_config()) as service:
        receipt = service.send(Message("+15551234567", Text("hi"), channel="console"))

It runs its own event loop (``asyncio.Runner``) for its whole life, so the
service's HTTP session and plugin resources stay on one loop. Do not use it
from inside a running event loop: await ``OmniChannelService`` there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from .errors import ServiceStateError
from .message import Message, Receipt
from .service import OmniChannelService

__all__ = ["SyncOmniChannelService"]


class SyncOmniChannelService:
    """Blocking ``send``/``send_many``/``dispatch``; takes the arguments of ``OmniChannelService``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.service = OmniChannelService(*args, **kwargs)
        self._runner: asyncio.Runner | None = None

    def start(self) -> None:
        """Start the loop and the service."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ServiceStateError(
                "SyncOmniChannelService cannot run inside an event loop; use OmniChannelService and await it"
            )
        if self._runner is None:
            runner = asyncio.Runner()
            try:
                runner.run(self.service.start())
            except BaseException:
                runner.close()
                raise
            self._runner = runner

    def close(self) -> None:
        """Stop the service and close the loop."""
        if self._runner is not None:
            try:
                self._runner.run(self.service.stop())
            finally:
                self._runner.close()
                self._runner = None

    def _run(self, coro: Any) -> Any:
        if self._runner is None:
            coro.close()
            raise ServiceStateError("the service is not started: use 'with' or call start()")
        return self._runner.run(coro)

    def send(self, message: Message) -> Receipt:
        """Like ``OmniChannelService.send``."""
        receipt: Receipt = self._run(self.service.send(message))
        return receipt

    def send_many(self, messages: Iterable[Message], *, concurrency: int | None = None) -> list[Receipt]:
        """Like ``OmniChannelService.send_many``."""
        receipts: list[Receipt] = self._run(self.service.send_many(messages, concurrency=concurrency))
        return receipts

    def dispatch(self, command: object) -> Any:
        """Run ``command`` through the service's command bus."""
        return self._run(self.service.bus.dispatch(command))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
