"""The store's REST routes on ``omnichannel serve`` (JSON, read-only).

* ``GET /stats?from=&to=&channel=&template=``: the stats report of ``omnichannel stats --json``
  (``{"messages": ..., "templates": [...]}``) over ``[from, to)``, by default the last 24 hours.
* ``GET /messages/{message_id}``: ``{"message": MessageRecord, "history": [StatusEntry, ...]}``;
  404 when the store does not know the message.

A bad parameter is a 400 whose message says what to fix; a store that is not open (the service
has not started) is a 503. Errors are the server's JSON error answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from omnichannel import Route

from .report import StatsQuery, message_json, stats_json, stats_report

if TYPE_CHECKING:
    from omnichannel import OmniChannelService
    from omnichannel.extensions import Handler
    from omnichannel.store import MessageStore

__all__ = ["store_routes"]


def store_routes(service: OmniChannelService, store_of: Callable[[], MessageStore | None]) -> list[Route]:
    """The routes, reading the store ``store_of()`` returns at each request."""

    def opened() -> MessageStore:
        store = store_of()
        if store is None:
            raise web.HTTPServiceUnavailable(text="the message store is not open (service not started)")
        return store

    async def stats(request: web.Request) -> web.Response:
        params = request.query
        try:
            query = StatsQuery.parse(
                start=params.get("from"),
                end=params.get("to"),
                now=service.clock.now(),
                channel=params.get("channel"),
                template=params.get("template"),
            )
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        found, rows = await stats_report(opened(), query)
        return web.json_response(stats_json(found, rows))

    async def message(request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        store = opened()
        record = await store.get(message_id)
        if record is None:
            raise web.HTTPNotFound(text=f"no message {message_id!r} in the message store")
        history = await store.history(message_id)
        return web.json_response(message_json(record, history))

    handlers: list[tuple[str, Handler, str]] = [
        ("/stats", stats, "store-stats"),
        ("/messages/{message_id}", message, "store-message"),
    ]
    return [Route("GET", path, handler, name=name) for path, handler, name in handlers]
