"""The sandbox's own API, under ``/_sandbox/``: what happened, and trouble on demand.

::

    GET    /_sandbox/health            {"status": "ok"}
    GET    /_sandbox/messages?since=N  the messages accepted, oldest first, from index N
    GET    /_sandbox/webhooks?since=N  the webhook attempts and their answers, from index N
    GET    /_sandbox/stats             the counters, and how much is recorded or pending
    GET    /_sandbox/faults            the faults in force, by id
    POST   /_sandbox/faults            a fault (JSON, the fields of ``Fault``) -> {"id": ...}
    DELETE /_sandbox/faults/{id}       take one fault out of force
    DELETE /_sandbox/faults            take every fault out of force
    POST   /_sandbox/reset             forget messages, webhooks, counters and faults; reseed
    POST   /_sandbox/drain             wait until no webhook is pending ({"timeout_s": ...} optional)
    POST   /_sandbox/handshake         {"verify_token": ...}: run Meta's verification handshake

Errors are JSON: ``{"error": {"message": ..., "field": ...}}`` with 400 for bad
input (naming the field), 404 for an unknown fault.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .faults import Fault, FaultPlan, InvalidFault
from .state import SandboxState
from .webhooks import WebhookDispatcher

__all__ = ["CONTROL_PREFIX", "control_routes"]

CONTROL_PREFIX = "/_sandbox"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    error: dict[str, Any] = {"message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status)


class _BadInput(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _since(request: web.Request) -> int:
    raw = request.query.get("since", "0")
    try:
        since = int(raw)
    except ValueError:
        raise _BadInput("since", f"since must be a non-negative integer, got {raw!r}") from None
    if since < 0:
        raise _BadInput("since", f"since must be a non-negative integer, got {since}")
    return since


async def _json_body(request: web.Request, *, optional: bool = False) -> Any:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise _BadInput("body", "the body must be a JSON object, got nothing")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _BadInput("body", f"the body is not valid JSON ({exc})") from None


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def control_routes(state: SandboxState, plan: FaultPlan, dispatcher: WebhookDispatcher) -> list[web.RouteDef]:
    """The routes of the control API, for ``app.add_routes``."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def messages(request: web.Request) -> web.Response:
        since = _since(request)
        items = [
            {
                "index": index,
                "wamid": m.wamid,
                "recipient": m.recipient,
                "received_at": m.received_at.isoformat(),
                "body": m.body,
            }
            for index, m in enumerate(state.messages[since:], start=since)
        ]
        return web.json_response({"messages": items, "next": len(state.messages)})

    async def webhooks(request: web.Request) -> web.Response:
        since = _since(request)
        items = [
            {
                "index": index,
                "url": w.url,
                "statuses": [list(pair) for pair in w.statuses],
                "sent_at": w.sent_at.isoformat(),
                "answer_status": w.answer_status,
                "error": w.error,
                "body": _decode(w.body),
            }
            for index, w in enumerate(state.webhooks[since:], start=since)
        ]
        return web.json_response({"webhooks": items, "next": len(state.webhooks)})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "counters": dict(sorted(state.counters.items())),
                "messages": len(state.messages),
                "webhooks": len(state.webhooks),
                "faults": len(plan.faults),
                "pending_webhooks": dispatcher.pending,
            }
        )

    async def list_faults(request: web.Request) -> web.Response:
        return web.json_response({"faults": {i: f.to_json() for i, f in plan.faults.items()}})

    async def add_fault(request: web.Request) -> web.Response:
        data = await _json_body(request)
        try:
            fault = Fault.from_json(data, now=state.clock.monotonic())
        except InvalidFault as exc:
            raise _BadInput(exc.field, str(exc)) from None
        except TypeError as exc:  # pragma: no cover - from_json checks the fields first
            raise _BadInput("body", str(exc)) from None
        return web.json_response({"id": plan.add(fault), "fault": fault.to_json()}, status=201)

    async def remove_fault(request: web.Request) -> web.Response:
        fault_id = request.match_info["id"]
        if not plan.remove(fault_id):
            return _error(404, f"no fault {fault_id!r} is in force", "id")
        return web.json_response({"removed": 1})

    async def clear_faults(request: web.Request) -> web.Response:
        return web.json_response({"removed": plan.clear()})

    async def reset(request: web.Request) -> web.Response:
        plan.clear()
        state.reset()
        return web.json_response({"status": "reset"})

    async def drain(request: web.Request) -> web.Response:
        data = await _json_body(request, optional=True)
        if not isinstance(data, dict):
            raise _BadInput("body", "the body must be a JSON object")
        timeout = data.get("timeout_s", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise _BadInput("timeout_s", f"timeout_s must be a number > 0, got {timeout!r}")
        try:
            await dispatcher.drain(float(timeout))
        except TimeoutError:
            return web.json_response({"drained": False, "pending_webhooks": dispatcher.pending})
        return web.json_response({"drained": True, "pending_webhooks": 0})

    async def handshake(request: web.Request) -> web.Response:
        data = await _json_body(request)
        token = data.get("verify_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise _BadInput("verify_token", "verify_token must be a non-empty string")
        if not state.settings.webhook_url:
            raise _BadInput("webhook_url", "the sandbox has no webhook_url to verify")
        return web.json_response({"ok": await dispatcher.handshake(token)})

    def guarded(handler: _Handler) -> _Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except _BadInput as exc:
                return _error(400, exc.message, exc.field)

        return run

    p = CONTROL_PREFIX
    return [
        web.get(f"{p}/health", guarded(health), allow_head=False),
        web.get(f"{p}/messages", guarded(messages), allow_head=False),
        web.get(f"{p}/webhooks", guarded(webhooks), allow_head=False),
        web.get(f"{p}/stats", guarded(stats), allow_head=False),
        web.get(f"{p}/faults", guarded(list_faults), allow_head=False),
        web.post(f"{p}/faults", guarded(add_fault)),
        web.delete(f"{p}/faults/{{id}}", guarded(remove_fault)),
        web.delete(f"{p}/faults", guarded(clear_faults)),
        web.post(f"{p}/reset", guarded(reset)),
        web.post(f"{p}/drain", guarded(drain)),
        web.post(f"{p}/handshake", guarded(handshake)),
    ]
