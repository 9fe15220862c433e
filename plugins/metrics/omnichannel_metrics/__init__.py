"""Prometheus metrics: what was sent, failed, delivered and read, and what the middleware did.

The outermost ``send`` wrapper (``tryfirst``) times each logical send, retries and waits
included; an ``on_event`` listener counts the rest from events (sends and failures, webhook
statuses, retries, breaker moves, rate-limit waits and deferrals, listener failures), so no other
plugin is imported. ``omnichannel serve`` serves them at ``/metrics``; a process without a server
(a worker, the demo) sets ``[plugins.metrics] port`` to serve them itself (with ``GET /health``,
the health report, beside them).

Several processes: each has its own registry and its own endpoint, and Prometheus scrapes each
one (docs/plugins/metrics.md says why this, not prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from omnichannel import Event, Receipt, Route, Sender, hookimpl
from omnichannel.health import health_report

from .config import MetricsConfig
from .instruments import BREAKER_STATES, Instruments

if TYPE_CHECKING:
    from omnichannel import OmniChannelService

__all__ = [
    "BREAKER_STATES",
    "Instruments",
    "MetricsConfig",
    "MetricsPlugin",
    "exposition",
    "instruments",
    "plugin",
]

log = logging.getLogger(__name__)

PLUGIN_NAME = "metrics"


def instruments(service: OmniChannelService) -> Instruments:
    """The service's metrics (created on first use, kept in ``service.state``)."""
    found = service.state.get(PLUGIN_NAME)
    if not isinstance(found, Instruments):
        found = service.state[PLUGIN_NAME] = Instruments(service.plugin_config(MetricsConfig), service)
    return found


def exposition(service: OmniChannelService) -> bytes:
    """The service's metrics in Prometheus's text format."""
    return generate_latest(instruments(service).registry)


class MetricsPlugin:
    """The plugin object; ``omnichannel_metrics:plugin`` is the installed instance."""

    def __init__(self) -> None:
        self._servers: dict[int, web.AppRunner] = {}  # id(service) -> the standalone server

    @hookimpl
    def register_config(self) -> type:
        return MetricsConfig

    @hookimpl(wrapper=True, tryfirst=True)
    def send(
        self, channel: str, service: OmniChannelService
    ) -> Generator[None, Sender | None, Sender | None]:
        inner = yield
        if inner is None:
            return None
        logical_send = inner
        metrics = instruments(service)
        clock = service.clock

        async def timed() -> Receipt:
            started = clock.monotonic()
            outcome = "failed"
            try:
                receipt = await logical_send()
                if receipt.ok:  # a channel may also report a failure in its receipt
                    outcome = "sent"
                return receipt
            finally:
                metrics.observe_send(channel, outcome, clock.monotonic() - started)

        return timed

    @hookimpl
    def on_event(self, event: Event, service: OmniChannelService) -> None:
        instruments(service).record(event)

    @hookimpl
    def register_routes(self, service: OmniChannelService) -> list[Route]:
        return [Route("GET", service.plugin_config(MetricsConfig).path, _handler(service))]

    @hookimpl
    async def startup(self, service: OmniChannelService) -> None:
        config = instruments(service).config
        if config.port is None:
            return
        app = web.Application()
        app.router.add_get(config.path, _handler(service))
        if config.path != "/health":  # a worker's liveness probe, as omnichannel serve answers it
            app.router.add_get("/health", _health_handler(service))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        self._servers[id(service)] = runner
        log.info("metrics at http://%s:%d%s", config.host, bound_port(runner), config.path)

    @hookimpl
    async def shutdown(self, service: OmniChannelService) -> None:
        runner = self._servers.pop(id(service), None)
        if runner is not None:
            await runner.cleanup()

    def port(self, service: OmniChannelService) -> int | None:
        """The port of the service's own metrics server (``port = 0`` picks one), if it runs."""
        runner = self._servers.get(id(service))
        return None if runner is None else bound_port(runner)


def _health_handler(service: OmniChannelService) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def health(request: web.Request) -> web.Response:
        return web.json_response(await health_report(service))

    return health


def bound_port(runner: web.AppRunner) -> int:
    """The port a started runner listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the metrics server listens on no TCP port")


def _handler(service: OmniChannelService) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(service), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


plugin = MetricsPlugin()
