"""``SandboxThread``: a sandbox on its own thread and event loop.

For tests and tools whose service runs on another loop (a module-scoped sandbox shared by
async tests, each on its own loop) or that block (a CLI run through click's ``CliRunner``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from .app import Sandbox
from .faults import Fault
from .state import RecordedMessage, SandboxSettings

__all__ = ["SandboxThread"]

T = TypeVar("T")

WAIT_S = 10.0
"""How long starting, stopping and each ``call`` may take."""


class SandboxThread:
    """A ``Sandbox`` served by its own event loop in a background thread.

    ``start()`` returns once the sandbox listens; ``stop()`` runs ``Sandbox.stop()``
    on the sandbox's loop, ends the loop and joins the thread. ``call`` runs a
    function of the sandbox on its loop and returns the result (the sandbox's
    state belongs to that loop); never call it from code that the sandbox waits on.
    """

    def __init__(self, settings: SandboxSettings) -> None:
        self._settings = settings
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._sandbox: Sandbox | None = None
        self._thread = threading.Thread(target=self._main, name="whatsapp-sandbox", daemon=True)

    # ---------------------------------------------------------------- life

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._done = asyncio.Event()
            self._sandbox = Sandbox(self._settings)
            await self._sandbox.start()
        except BaseException as exc:  # reported by start(), in the test's thread
            self._error = exc
            return
        finally:
            self._ready.set()
        try:
            await self._done.wait()
        finally:
            await self._sandbox.stop()  # a no-op after stop(); the last word if anything else ended the loop

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(WAIT_S):
            raise RuntimeError(f"the sandbox did not start within {WAIT_S} s")
        if self._error is not None:
            self._thread.join(WAIT_S)
            raise RuntimeError("the sandbox did not start") from self._error

    def stop(self) -> None:
        sandbox, loop, done = self._sandbox, self._loop, self._done
        assert sandbox is not None
        assert loop is not None
        assert done is not None
        try:
            asyncio.run_coroutine_threadsafe(sandbox.stop(), loop).result(WAIT_S)
        finally:
            loop.call_soon_threadsafe(done.set)
            self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the sandbox's thread did not end"

    # ---------------------------------------------------------------- on the sandbox's loop

    def call(self, work: Callable[[Sandbox], T]) -> T:
        """``work(sandbox)``, run on the sandbox's loop; its result."""
        sandbox, loop = self._sandbox, self._loop
        assert sandbox is not None
        assert loop is not None

        async def run() -> T:
            return work(sandbox)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(WAIT_S)

    @property
    def url(self) -> str:
        """The plugin's ``base_url`` (fixed once started)."""
        assert self._sandbox is not None
        return self._sandbox.url

    @property
    def settings(self) -> SandboxSettings:
        """The settings it runs with (immutable; fixed once started)."""
        assert self._sandbox is not None
        return self._sandbox.settings

    def reset(self) -> None:
        """What ``POST /_sandbox/reset`` does: forget messages, webhooks, counters, budgets and faults."""

        def reset(sandbox: Sandbox) -> None:
            sandbox.faults.clear()
            sandbox.state.reset()

        self.call(reset)

    def messages(self) -> list[RecordedMessage]:
        """The messages the send endpoint accepted since the last reset, oldest first."""
        return self.call(lambda sandbox: list(sandbox.state.messages))

    def counters(self) -> dict[str, int]:
        """Requests and outcomes by name (``requests``, ``accepted``, ``error.<code>`` ...)."""
        return self.call(lambda sandbox: dict(sandbox.state.counters))

    def add_fault(self, fault: Fault) -> str:
        """Add a fault (see ``Fault``); returns its id."""
        return self.call(lambda sandbox: sandbox.faults.add(fault))

    def clear_faults(self) -> int:
        """Remove every fault; returns how many there were."""
        return self.call(lambda sandbox: sandbox.faults.clear())

    def faults_left(self) -> int:
        """Faults still active (a fault with ``remaining`` goes away once used up)."""
        return self.call(lambda sandbox: len(sandbox.faults.faults))
