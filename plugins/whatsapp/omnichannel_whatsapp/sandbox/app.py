"""The sandbox as an aiohttp application, and ``Sandbox``: one running on a real port.

``make_sandbox_app(state)`` puts together the Graph routes (``graph.py``), the
control API (``/_sandbox/...``), the fault middleware on the Graph routes, and a
``WebhookDispatcher`` that runs, with its own HTTP session, while the
application does. ``Sandbox`` serves that application on a loopback port::

    async with Sandbox(SandboxSettings(webhook_url="http://127.0.0.1:8080/webhooks/whatsapp")) as sandbox:
        sandbox.url                          # "http://127.0.0.1:54321": the plugin's base_url
        sandbox.faults.add(Fault("error", 503, 2, remaining=3))   # an outage of 3 requests
        ...
        await sandbox.dispatcher.drain()     # every status webhook delivered
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from omnichannel import Clock, SystemClock

from .control import control_routes
from .faults import FaultPlan, fault_middleware
from .state import SandboxSettings, SandboxState
from .webhooks import WebhookDispatcher

__all__ = ["DISPATCHER_KEY", "FAULTS_KEY", "STATE_KEY", "GraphRoutes", "Sandbox", "make_sandbox_app"]

STATE_KEY = web.AppKey("sandbox_state", SandboxState)
FAULTS_KEY = web.AppKey("sandbox_faults", FaultPlan)
DISPATCHER_KEY = web.AppKey("sandbox_dispatcher", WebhookDispatcher)

GraphRoutes = Callable[[SandboxState], Iterable[web.AbstractRouteDef]]
"""Makes the Graph routes of a state (``graph.graph_routes``, or a stand-in in tests)."""

_MAX_BODY = 16 * 1024 * 1024
"""Media uploads and big template definitions: more than aiohttp's 1 MiB default."""


def _default_graph_routes(state: SandboxState) -> Iterable[web.AbstractRouteDef]:
    # Imported here: the Graph side is its own module, and this one must import without it.
    from .graph import graph_routes

    if not state.templates:
        from .seed import load_templates

        state.templates = load_templates(state.settings.templates_file)
    return graph_routes(state)


def make_sandbox_app(
    state: SandboxState,
    *,
    graph: GraphRoutes | None = None,
    dispatcher: WebhookDispatcher | None = None,
) -> web.Application:
    """The sandbox's application for ``state``.

    :param graph: makes the Graph routes (default: ``graph.graph_routes``, with the
        templates of ``settings.templates_file`` loaded into ``state.templates`` when empty).
    :param dispatcher: the webhook dispatcher (default: a new one); it is started
        with the application, with a session of its own, and stopped with it.

    ``app[STATE_KEY]``, ``app[FAULTS_KEY]`` and ``app[DISPATCHER_KEY]`` give the parts.
    """
    plan = FaultPlan(state)
    dispatcher = dispatcher or WebhookDispatcher(state)
    app = web.Application(middlewares=[fault_middleware(state, plan)], client_max_size=_MAX_BODY)
    app[STATE_KEY] = state
    app[FAULTS_KEY] = plan
    app[DISPATCHER_KEY] = dispatcher
    app.add_routes(list((graph or _default_graph_routes)(state)))
    app.add_routes(control_routes(state, plan, dispatcher))

    async def webhooks(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as http:
            dispatcher.start(http)
            try:
                yield
            finally:
                await dispatcher.stop()

    async def release_hanging(app: web.Application) -> None:
        # Requests held by a ``timeout`` fault end now, before the server waits for its handlers.
        plan.release()

    app.cleanup_ctx.append(webhooks)
    app.on_shutdown.append(release_hanging)
    return app


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Sandbox:
    """A WhatsApp Cloud API sandbox served on ``settings.host`` / ``settings.port`` (0: a free port).

    :param settings: how it behaves (default: ``SandboxSettings()``).
    :param clock: its clock (default: the system clock); a ``FakeClock`` makes every
        delay (webhooks, retries, latency faults) pass at once.
    :param graph: a stand-in for the Graph routes (see ``make_sandbox_app``).
    :param access_log: log every request (logger ``omnichannel_whatsapp.sandbox.access``).

    Use it with ``async with``, or ``await start()`` and ``await stop()``; one
    start per instance.
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        *,
        clock: Clock | None = None,
        graph: GraphRoutes | None = None,
        access_log: bool = False,
    ) -> None:
        self.state = SandboxState(settings or SandboxSettings(), clock=clock or SystemClock())
        self.app = make_sandbox_app(self.state, graph=graph)
        self.faults: FaultPlan = self.app[FAULTS_KEY]
        self.dispatcher: WebhookDispatcher = self.app[DISPATCHER_KEY]
        self._access_log = access_log
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._used = False

    @property
    def settings(self) -> SandboxSettings:
        return self.state.settings

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (the plugin's ``base_url``)."""
        if self._url is None:
            raise RuntimeError("the sandbox is not started")
        return self._url

    @property
    def started(self) -> bool:
        return self._url is not None

    def set_webhook_url(self, url: str | None) -> None:
        """Send the status webhooks of messages accepted from now on to ``url`` (``None``: none)."""
        self.state.settings = attrs.evolve(self.state.settings, webhook_url=url)

    def plugin_settings(self, **extra: Any) -> dict[str, Any]:
        """``[plugins.whatsapp]`` settings that point the WhatsApp plugin at this sandbox."""
        settings = self.state.settings
        return {
            "base_url": self.url,
            "phone_number_id": settings.phone_number_id,
            "waba_id": settings.waba_id,
            "access_token": settings.access_token,
            "app_secret": settings.app_secret,
            **extra,
        }

    async def start(self) -> None:
        """Listen; ``url`` is known afterwards."""
        if self._used:
            raise RuntimeError("a Sandbox starts once: make a new one")
        self._used = True
        kwargs: dict[str, Any] = {"handle_signals": False, "shutdown_timeout": 5.0}
        if not self._access_log:
            kwargs["access_log"] = None
        else:
            kwargs["access_log"] = logging.getLogger("omnichannel_whatsapp.sandbox.access")
        runner = web.AppRunner(self.app, **kwargs)
        self._runner = runner
        await runner.setup()
        settings = self.state.settings
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
        except BaseException:
            await self.stop()
            raise
        port = int(runner.addresses[0][1])
        if settings.port != port:
            self.state.settings = attrs.evolve(settings, port=port)
        self._url = f"http://{_url_host(settings.host)}:{port}"

    async def stop(self) -> None:
        """Stop listening, end hanging requests, cancel pending webhooks, close the session."""
        runner, self._runner = self._runner, None
        self._url = None
        if runner is not None:
            self.faults.release()
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
