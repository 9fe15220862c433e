"""Meta's Graph API errors as the sandbox gives them: the error table, the envelope, the parameter errors.

``ERRORS`` holds the HTTP status and title of each code Meta documents and
``DETAILS`` the ``error_data.details`` Meta always sends with some of them.
``GraphError`` is what the checks and handlers raise; ``GraphError.response``
(or ``graph_error_response``) renders Meta's envelope with a fresh
``fbtrace_id`` and counts ``error.<code>`` in ``state.counters``.

The private builders (``_required``, ``_one_of``, ``_wrong_type``, ...) word a
missing, mistyped or invalid parameter the way Graph does; the other modules of
the Graph side (``send_checks``, ``template_checks``, ``media``, ``graph``) use them.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from .state import SandboxState

__all__ = [
    "DETAILS",
    "ERRORS",
    "GRAPH_DOCS",
    "JSON",
    "GraphError",
    "graph_error_response",
    "new_fbtrace_id",
]

JSON = dict[str, Any]


GRAPH_DOCS: Final = (
    "Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"
)

ERRORS: Mapping[int, tuple[int, str]] = {
    # Graph platform errors.
    1: (400, "An unknown error occurred"),
    2: (503, "An unexpected error has occurred. Please retry your request later."),
    4: (400, "(#4) Application request limit reached"),
    10: (403, "(#10) Application does not have permission for this action"),
    100: (400, "(#100) Invalid parameter"),
    104: (401, "An access token is required to request this resource."),
    190: (401, "Invalid OAuth access token - Cannot parse access token"),
    200: (403, "(#200) Permissions error"),
    368: (403, "(#368) Temporarily blocked for policies violations"),
    2500: (400, "Unknown path components"),
    80007: (400, "(#80007) Rate limit issues"),
    # WhatsApp Cloud API errors (titles of Meta's error-code table).
    130429: (400, "(#130429) Rate limit hit"),
    130472: (400, "(#130472) User's number is part of an experiment"),
    131000: (500, "(#131000) Something went wrong"),
    131005: (403, "(#131005) Access denied"),
    131008: (400, "(#131008) Required parameter is missing"),
    131009: (400, "(#131009) Parameter value is not valid"),
    131016: (500, "(#131016) Service unavailable"),
    131021: (400, "(#131021) Recipient cannot be sender"),
    131026: (400, "(#131026) Message undeliverable"),
    131030: (400, "(#131030) Recipient phone number not in allowed list"),
    131031: (403, "(#131031) Business Account locked"),
    131042: (400, "(#131042) Business eligibility payment issue"),
    131045: (500, "(#131045) Incorrect certificate"),
    131047: (400, "(#131047) Re-engagement message"),
    131048: (400, "(#131048) Spam rate limit hit"),
    131049: (400, "(#131049) This message was not delivered to maintain healthy ecosystem engagement."),
    131050: (400, "(#131050) User has stopped marketing messages"),
    131051: (400, "(#131051) Unsupported message type"),
    131052: (400, "(#131052) Media download error"),
    131053: (400, "(#131053) Media upload error"),
    131056: (400, "(#131056) (Business Account, Consumer Account) pair rate limit hit"),
    131057: (500, "(#131057) Account in maintenance mode"),
    132000: (400, "(#132000) Number of parameters does not match the expected number of params"),
    132001: (404, "(#132001) Template name does not exist in the translation"),
    132005: (400, "(#132005) Translated text too long"),
    132007: (400, "(#132007) Template Format Character Policy Violated"),
    132012: (400, "(#132012) Parameter format does not match format in the created template"),
    132015: (400, "(#132015) Template is Paused"),
    132016: (400, "(#132016) Template is Disabled"),
    132018: (400, "(#132018) There's an issue with the parameters in your template"),
    132068: (400, "(#132068) Flow is in blocked state"),
    132069: (400, "(#132069) Flow is in throttled state"),
    133000: (500, "(#133000) Incomplete deregistration"),
    133004: (503, "(#133004) Server Temporarily Unavailable"),
    133010: (400, "(#133010) Account not registered"),
    135000: (400, "(#135000) Generic user error"),
}
"""Graph ``error.code`` -> (HTTP status of Meta's table, default ``message``)."""

DETAILS: Mapping[int, str] = {
    130429: "Cloud API message throughput has been reached.",
    131000: "Something went wrong. Please try again later.",
    131016: "A service is temporarily unavailable.",
    131021: "Sender and recipient phone number is the same.",
    131026: "Unable to deliver message.",
    131047: (
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number."
    ),
    131048: "Message failed to send because there are restrictions on how many messages can be sent.",
    131056: (
        "Message failed to send because there were too many messages sent from this phone number "
        "to the same phone number in a short period of time."
    ),
    131057: "Business Account is in maintenance mode.",
    132015: "Template is paused due to low quality so it cannot be sent in a template message.",
    132016: ("Template has been paused too many times due to low quality and is now permanently disabled."),
}
"""Default ``error_data.details`` of the codes whose envelope Meta always details."""

_TRACE_ALPHABET = string.ascii_letters + string.digits + "-_"
_TRACE_LENGTH = 23


def new_fbtrace_id(state: SandboxState) -> str:
    """A random trace id shaped like Meta's (23 characters), drawn from ``state.rng``."""
    return "".join(state.rng.choices(_TRACE_ALPHABET, k=_TRACE_LENGTH))


class GraphError(Exception):
    """A Graph API error answer: raise it in a handler, or render it with ``response``.

    :param code: Graph's ``error.code``.
    :param message: ``error.message``; default: the code's title in ``ERRORS``.
    :param details: ``error_data.details``; WhatsApp codes (13xxxx) always carry
        ``error_data`` (``DETAILS`` fills in a default), others only when given.
    :param status: the HTTP status; default: the code's status in ``ERRORS`` (else 400).
    :param subcode: ``error.error_subcode``, when the error has one.
    :param error_type: ``error.type``: ``OAuthException``, or ``GraphMethodException``
        for an unknown object.
    :param is_transient: adds ``error.is_transient`` when not ``None``.
    :param headers: extra response headers (``Retry-After`` ...).
    """

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        details: str | None = None,
        status: int | None = None,
        subcode: int | None = None,
        error_type: str = "OAuthException",
        is_transient: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        default_status, default_message = ERRORS.get(code, (400, f"(#{code}) Graph API error"))
        self.code = code
        self.message = message if message is not None else default_message
        self.details = details if details is not None or code < 130000 else DETAILS.get(code, self.message)
        self.status = status if status is not None else default_status
        self.subcode = subcode
        self.error_type = error_type
        self.is_transient = is_transient
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def envelope(self, fbtrace_id: str) -> JSON:
        """The JSON body, keys in Meta's order."""
        error: JSON = {"message": self.message, "type": self.error_type, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.is_transient is not None:
            error["is_transient"] = self.is_transient
        if self.details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id
        return {"error": error}

    def response(self, state: SandboxState) -> web.Response:
        """The HTTP answer; counts ``error.<code>`` in ``state.counters``."""
        state.counters[f"error.{self.code}"] += 1
        trace = new_fbtrace_id(state)
        headers = {"x-fb-trace-id": trace, **self.headers}
        if self.status == 401:
            headers.setdefault(
                "WWW-Authenticate", f'OAuth "Facebook Platform" "invalid_token" "{self.message}"'
            )
        return web.json_response(self.envelope(trace), status=self.status, headers=headers)


def graph_error_response(state: SandboxState, code: int, **kwargs: Any) -> web.Response:
    """Meta's error answer for ``code`` (``kwargs`` as ``GraphError``'s); counts ``error.<code>``."""
    return GraphError(code, **kwargs).response(state)


def _unknown_object(method: str, object_id: str) -> GraphError:
    return GraphError(
        100,
        f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, cannot be "
        f"loaded due to missing permissions, or does not support this operation. {GRAPH_DOCS}",
        subcode=33,
        error_type="GraphMethodException",
        status=400,
    )


# ---------------------------------------------------------------- Meta-like validation errors


def _path(*keys: str | int) -> str:
    """``text['body']``, ``contacts[0]['name']``: how Graph names nested parameters."""
    head, *rest = keys
    return str(head) + "".join(f"[{key}]" if isinstance(key, int) else f"['{key}']" for key in rest)


def _required(*keys: str | int) -> GraphError:
    return GraphError(100, f"(#100) The parameter {_path(*keys)} is required.")


def _invalid(details: str) -> GraphError:
    return GraphError(100, details=details)


def _not_valid(details: str) -> GraphError:
    return GraphError(131009, details=details)


def _missing(details: str) -> GraphError:
    return GraphError(131008, details=details)


def _one_of(keys: Sequence[str | int], allowed: Iterator[str] | Sequence[str], got: object) -> GraphError:
    choices = ", ".join(sorted(choice.upper() for choice in allowed))
    return GraphError(100, f'(#100) Param {_path(*keys)} must be one of {{{choices}}} - got "{got}".')


def _too_long(keys: Sequence[str | int], limit: int) -> GraphError:
    return GraphError(100, f"(#100) Param {_path(*keys)} must be at most {limit} characters long.")


def _wrong_type(keys: Sequence[str | int], kind: str) -> GraphError:
    return GraphError(100, f"(#100) Param {_path(*keys)} must be {kind}.")
