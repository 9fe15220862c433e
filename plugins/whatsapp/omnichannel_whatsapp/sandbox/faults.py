"""Injected trouble on the sandbox's Graph routes: errors, latency, timeouts and dropped connections.

A ``FaultPlan`` holds the faults in force; ``fault_middleware`` asks it, for every
request under ``/v...`` (the Graph routes; the ``/_sandbox/`` control API is never
affected), whether one applies::

    error    answer Meta's error envelope with ``http_status`` and Graph ``code``
             (503 / 2 is "temporary downtime", 500 / 131000 "something went wrong" ...)
    latency  wait ``latency_s`` on the sandbox's clock, then answer normally
    timeout  never answer: the request hangs until the client gives up (or the sandbox stops)
    drop     close the connection without an answer (the client sees a disconnection)

A fault applies with ``probability`` (drawn from the sandbox's seeded random
generator, so a seeded run is reproducible), to the next ``remaining`` requests
it hits (a burst; ``None``: no limit) and until ``until_s`` on the sandbox's
monotonic clock (``None``: no end). One fault per request: the first one that
fires, in the order they were added. Each one that fires is counted in
``state.counters`` as ``fault.<kind>``.
"""

from __future__ import annotations

import asyncio
import itertools
import string
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import attrs
from aiohttp import web
from aiohttp.typedefs import Middleware

from .state import SandboxState

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "InvalidFault",
    "fault_middleware",
    "graph_error_body",
]

FaultKind = Literal["error", "latency", "timeout", "drop"]
FAULT_KINDS: tuple[str, ...] = ("error", "latency", "timeout", "drop")

GRAPH_PREFIX = "/v"
"""Requests whose path starts with this are Graph requests, subject to faults."""

_TITLES = {
    0: "AuthException",
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    3: "Capability or permissions issue",
    4: "Application request limit reached",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131016: "Service unavailable",
    131048: "Spam rate limit hit",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    131057: "Business Account is in maintenance mode",
    133004: "Server temporarily unavailable",
}
_FBTRACE_CHARS = string.ascii_letters + string.digits


class InvalidFault(ValueError):
    """A fault description that cannot be used; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _check_kind(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in FAULT_KINDS:
        raise InvalidFault(attribute.name, f"must be one of {', '.join(FAULT_KINDS)}, got {value!r}")


def _check_status(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 400 <= value <= 599:
        raise InvalidFault(attribute.name, f"must be an HTTP error status (400..599), got {value}")


def _check_probability(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidFault(attribute.name, f"must be between 0 and 1, got {value}")


def _check_non_negative(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise InvalidFault(attribute.name, f"must be >= 0, got {value}")


def _check_remaining(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise InvalidFault(attribute.name, f"must be >= 1 (or null for no limit), got {value}")


@attrs.frozen
class Fault:
    """One kind of trouble, and when it applies.

    :param kind: ``error``, ``latency``, ``timeout`` or ``drop``.
    :param http_status: the HTTP status of an ``error`` (400..599).
    :param code: the Graph ``error.code`` of an ``error`` (2, 4, 130429, 131000, 133004 ...).
    :param message: the error's title (default: Meta's title for the code);
        the envelope's ``message`` is ``(#<code>) <title>``.
    :param error_subcode: an optional ``error.error_subcode``.
    :param is_transient: an optional ``error.is_transient``.
    :param retry_after_s: an optional ``Retry-After`` header on the error answer.
    :param latency_s: the delay of a ``latency`` fault.
    :param probability: the share of requests it hits (0..1).
    :param remaining: how many more requests it hits (a burst); ``None``: no limit.
    :param until_s: in force until this time of the sandbox clock's ``monotonic()``;
        ``None``: no end.
    """

    kind: FaultKind = attrs.field(validator=_check_kind)
    http_status: int = attrs.field(default=503, validator=_check_status)
    code: int = 2
    message: str | None = None
    error_subcode: int | None = None
    is_transient: bool | None = None
    retry_after_s: float | None = attrs.field(default=None, validator=_check_non_negative)
    latency_s: float = attrs.field(default=0.0, validator=_check_non_negative)
    probability: float = attrs.field(default=1.0, validator=_check_probability)
    remaining: int | None = attrs.field(default=None, validator=_check_remaining)
    until_s: float | None = None

    @classmethod
    def from_json(cls, data: object, *, now: float | None = None) -> Fault:
        """A fault from its JSON description (the control API's ``POST /_sandbox/faults``).

        The keys are the field names; ``for_s`` (seconds from ``now``) may stand
        for ``until_s``.

        :raises InvalidFault: naming the field that is missing, unknown or of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise InvalidFault("body", f"must be a JSON object, got {type(data).__name__}")
        fields = {a.name: a for a in attrs.fields(cls)}
        known = {*fields, "for_s"}
        for key in data:
            if key not in known:
                raise InvalidFault(str(key), f"unknown field (known: {', '.join(sorted(known))})")
        if "kind" not in data:
            raise InvalidFault("kind", f"is required (one of {', '.join(FAULT_KINDS)})")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "for_s":
                seconds = _number("for_s", value)
                if seconds is not None:
                    if seconds < 0:
                        raise InvalidFault("for_s", f"must be >= 0, got {seconds}")
                    values["until_s"] = (now or 0.0) + seconds
            elif key in ("http_status", "code", "error_subcode", "remaining"):
                values[key] = _integer(key, value)
            elif key in ("retry_after_s", "latency_s", "probability", "until_s"):
                values[key] = _number(key, value)
            elif key == "is_transient":
                if value is not None and not isinstance(value, bool):
                    raise InvalidFault(key, f"must be true, false or null, got {value!r}")
                values[key] = value
            elif key in ("kind", "message"):
                if not isinstance(value, str) and not (key == "message" and value is None):
                    raise InvalidFault(key, f"must be a string, got {value!r}")
                values[key] = value
        for key in ("http_status", "code", "latency_s", "probability"):
            if values.get(key, 0) is None:
                raise InvalidFault(key, "must not be null")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The fault as the control API shows it."""
        return attrs.asdict(self)


def _integer(field: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFault(field, f"must be an integer, got {value!r}")
    return value


def _number(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFault(field, f"must be a number, got {value!r}")
    return float(value)


def graph_error_body(
    state: SandboxState,
    code: int,
    message: str | None = None,
    *,
    error_subcode: int | None = None,
    is_transient: bool | None = None,
    details: str | None = None,
) -> dict[str, Any]:
    """Meta's error envelope: ``{"error": {"message": "(#code) title", "type", "code", ...}}``."""
    title = message or _TITLES.get(code, "An unknown error occurred")
    error: dict[str, Any] = {
        "message": f"(#{code}) {title}",
        "type": "OAuthException",
        "code": code,
    }
    if error_subcode is not None:
        error["error_subcode"] = error_subcode
    error["error_data"] = {"messaging_product": "whatsapp", "details": details or title}
    if is_transient is not None:
        error["is_transient"] = is_transient
    error["fbtrace_id"] = "A" + "".join(state.rng.choice(_FBTRACE_CHARS) for _ in range(22))
    return {"error": error}


class FaultPlan:
    """The faults in force, by id; ``decide()`` picks the one (if any) that hits the next request."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._faults: dict[str, Fault] = {}
        self._ids = itertools.count(1)
        self._released: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._faults)

    @property
    def faults(self) -> dict[str, Fault]:
        """The faults in force, by id, in the order they were added (expired ones pruned)."""
        self._prune()
        return dict(self._faults)

    def add(self, fault: Fault) -> str:
        """Put ``fault`` in force; returns its id (for ``remove``)."""
        fault_id = f"f{next(self._ids)}"
        self._faults[fault_id] = fault
        return fault_id

    def remove(self, fault_id: str) -> bool:
        """Take a fault out of force; whether it was in force."""
        return self._faults.pop(fault_id, None) is not None

    def clear(self) -> int:
        """Take every fault out of force; how many there were."""
        count = len(self._faults)
        self._faults.clear()
        return count

    def _prune(self) -> None:
        now = self.state.clock.monotonic()
        for fault_id, fault in list(self._faults.items()):
            if fault.until_s is not None and now >= fault.until_s:
                del self._faults[fault_id]

    def decide(self) -> Fault | None:
        """The fault that hits the next request, or ``None``; consumes one request of its burst."""
        self._prune()
        for fault_id, fault in list(self._faults.items()):
            if fault.probability <= 0.0:
                continue
            if fault.probability < 1.0 and self.state.rng.random() >= fault.probability:
                continue
            if fault.remaining is not None:
                if fault.remaining <= 1:
                    del self._faults[fault_id]
                else:
                    self._faults[fault_id] = attrs.evolve(fault, remaining=fault.remaining - 1)
            return fault
        return None

    # ---- hanging requests (the ``timeout`` fault)

    def _event(self) -> asyncio.Event:
        if self._released is None:
            self._released = asyncio.Event()
        return self._released

    async def hang(self) -> None:
        """Wait until ``release()``: what a request hit by a ``timeout`` fault does."""
        await self._event().wait()

    def release(self) -> None:
        """Let every hanging request end (called when the sandbox shuts down)."""
        self._event().set()


def fault_middleware(state: SandboxState, plan: FaultPlan) -> Middleware:
    """An aiohttp middleware that applies ``plan`` to the Graph routes (paths under ``/v``)."""

    @web.middleware
    async def faults(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith(GRAPH_PREFIX):
            return await handler(request)
        fault = plan.decide()
        if fault is None:
            return await handler(request)
        state.counters[f"fault.{fault.kind}"] += 1
        if fault.kind == "latency":
            await state.clock.sleep(fault.latency_s)
            return await handler(request)
        if fault.kind == "error":
            body = graph_error_body(
                state,
                fault.code,
                fault.message,
                error_subcode=fault.error_subcode,
                is_transient=fault.is_transient,
            )
            headers = {}
            if fault.retry_after_s is not None:
                headers["Retry-After"] = f"{fault.retry_after_s:g}"
            return web.json_response(body, status=fault.http_status, headers=headers)
        if fault.kind == "timeout":
            await plan.hang()
        # drop (and a timeout released at shutdown): close the connection, answer nothing.
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=503)  # never reaches the client: the connection is closed

    return faults
