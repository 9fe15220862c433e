"""The web application of ``omnichannel serve``: health, readiness and plugin routes.

``make_app(service)`` builds an aiohttp application that starts the service
when the server starts and stops it on shutdown. Plugins add routes (channel
webhooks under ``/webhooks/<channel>``) with the ``register_routes`` hook.

Every error answer is JSON, never a stack trace::

    {"error": {"type": "WebhookError", "message": "signature mismatch"}}
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .errors import (
    DeliveryError,
    MessageValidationError,
    OmniChannelError,
    UnknownChannelError,
    WebhookError,
)
from .extensions import Handler
from .health import health_report
from .service import OmniChannelService

__all__ = ["SERVICE_KEY", "make_app", "run"]

log = logging.getLogger("omnichannel.server")

SERVICE_KEY = web.AppKey("omnichannel_service", OmniChannelService)

RESERVED_ROUTES = (("GET", "/health", "health"), ("GET", "/ready", "ready"))
"""The server's own routes (method, path, name), which plugins cannot take."""


def error_response(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    """The JSON error answer: ``{"error": {"type": ..., "message": ..., ...}}``."""
    return web.json_response({"error": {"type": kind, "message": message, **extra}}, status=status)


def _status_of(exc: OmniChannelError) -> int:
    if isinstance(exc, WebhookError):
        return exc.status
    if isinstance(exc, MessageValidationError):
        return 422
    if isinstance(exc, UnknownChannelError):
        return 404
    if isinstance(exc, DeliveryError):
        return 502
    return 500


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason, exc.text or exc.reason)
        if "Allow" in exc.headers:  # a 405 must say which methods are allowed
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except OmniChannelError as exc:
        status = _status_of(exc)
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, exc)
        extra = {"problems": exc.problems} if isinstance(exc, MessageValidationError) else {}
        return error_response(status, type(exc).__name__, str(exc), **extra)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "InternalError", "internal server error")


async def _health(request: web.Request) -> web.Response:
    """Liveness and the plugins' health sections; always 200 (never depends on channels or breakers)."""
    return web.json_response(await health_report(request.app[SERVICE_KEY]))


async def _ready(request: web.Request) -> web.Response:
    """Readiness: the service has started and can send."""
    service = request.app[SERVICE_KEY]
    if not service.started:
        return web.json_response({"status": "not ready"}, status=503)
    return web.json_response({"status": "ready", "channels": sorted(service.channels)})


def make_app(service: OmniChannelService, *, manage_service: bool = True) -> web.Application:
    """Build the application for ``service``.

    :param manage_service: start the service with the server and stop it on
        shutdown (turn off when the host application manages its life itself).
    :raises PluginError: when two plugins add the same route.
    """
    app = web.Application(middlewares=[_json_errors])
    app[SERVICE_KEY] = service
    app.router.add_get("/health", _health, name="health")
    app.router.add_get("/ready", _ready, name="ready")
    for route in service.routes(reserved=RESERVED_ROUTES):
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
    if manage_service:

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            await service.start()
            yield
            await service.stop()

        app.cleanup_ctx.append(lifecycle)
    return app


def run(service: OmniChannelService, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (what ``omnichannel serve`` does)."""
    config = service.config.server
    web.run_app(
        make_app(service),
        host=host or config.host,
        port=port if port is not None else config.port,
        shutdown_timeout=config.shutdown_timeout_s,
        # Flushed: stdout is often a pipe (a supervisor, a test), and the banner says we are up.
        print=lambda text: print(text, flush=True),
        access_log=logging.getLogger("omnichannel.server.access"),
    )
