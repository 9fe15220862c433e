"""Translate Graph API answers and aiohttp failures into omnichannel's delivery errors.

Two entry points, both pure functions:

- ``classify_graph_error(status, body, headers)`` reads a non-2xx answer of the
  Graph API. It keys on Graph's ``error.code`` first (Meta tells integrators
  to key on the code, never on the HTTP status or the title), then on the
  HTTP status, and returns one of::

      TransientDeliveryError   try again (server trouble, maintenance, ``is_transient: true``)
      RateLimitedError         slow down; ``scope`` says whose budget ran out, ``retry_after`` how long
      SenderUnavailableError   the sender cannot send at all (token, permission, account): park
      PermanentDeliveryError   this message (or this recipient) will fail again unchanged

- ``translate_client_error(exc, request_sent=...)`` maps aiohttp exceptions and
  timeouts to ``TransientDeliveryError`` with the right ``certainty``: a failure
  before the request left (``not_sent``) may be resent freely, one after it was
  written (``unknown``) may have been acted on.

The per-code classification is the table ``GRAPH_ERROR_CODES`` below, derived
from the shared WhatsApp spec (section 3.4) and resilience spec (section 1.4).
No detail ever contains a secret: callers pass the secrets to ``redact``.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import aiohttp
import attrs

from omnichannel import (
    Certainty,
    DeliveryError,
    ErrorScope,
    PermanentDeliveryError,
    RateLimitedError,
    SenderUnavailableError,
    TransientDeliveryError,
)

__all__ = [
    "GRAPH_ERROR_CODES",
    "GRAPH_ERROR_SUBCODES",
    "GraphErrorRule",
    "classify_graph_error",
    "parse_retry_after",
    "translate_client_error",
]

_REDACTED = "***"
_SNIPPET_CHARS = 200


@attrs.frozen
class GraphErrorRule:
    """How one Graph error code is classified.

    :param error: the delivery error class raised for the code.
    :param scope: what the error is about (who would have to change).
    :param certainty: whether Meta may have acted on the request.
    :param wait_s: the least ``retry_after`` of the error, for codes whose cool-down Meta
        documents but does not send (spam limit, paused template, per-user marketing cap).
    """

    error: type[DeliveryError]
    scope: ErrorScope | None = None
    certainty: Certainty = Certainty.REJECTED
    wait_s: float | None = None


def _transient(certainty: Certainty = Certainty.REJECTED) -> GraphErrorRule:
    return GraphErrorRule(TransientDeliveryError, None, certainty)


def _throttled(scope: ErrorScope, wait_s: float | None = None) -> GraphErrorRule:
    return GraphErrorRule(RateLimitedError, scope, wait_s=wait_s)


def _sender(scope: ErrorScope) -> GraphErrorRule:
    return GraphErrorRule(SenderUnavailableError, scope)


def _permanent(scope: ErrorScope) -> GraphErrorRule:
    return GraphErrorRule(PermanentDeliveryError, scope)


_MINUTE, _HOUR = 60.0, 3600.0
_APP, _ACCOUNT, _SENDER = ErrorScope.APP, ErrorScope.ACCOUNT, ErrorScope.SENDER
_RECIPIENT, _MESSAGE = ErrorScope.RECIPIENT, ErrorScope.MESSAGE

GRAPH_ERROR_CODES: Mapping[int, GraphErrorRule] = {
    # -- transient server errors (retry "T"). A complete answer that says "not now"
    # is ``rejected``; 131000 "something went wrong" does not say whether the message
    # went out, so it stays ``unknown`` like a bare 500.
    1: _transient(),  # API Unknown: invalid request or possible server error (retry <= 2)
    2: _transient(),  # API Service: temporary downtime or overload (HTTP 503)
    131000: _transient(Certainty.UNKNOWN),  # something went wrong (HTTP 500)
    131016: _transient(),  # service unavailable (HTTP 500)
    131057: _transient(),  # account in maintenance mode, <= 1 min (HTTP 500)
    133004: _transient(),  # server temporarily unavailable (HTTP 503)
    # -- template paused for low quality (retry "L"): resend after unpause, the message
    # may succeed later unchanged: deferred for an hour (the endpoint itself is fine).
    132015: GraphErrorRule(TransientDeliveryError, _MESSAGE, wait_s=_HOUR),
    # -- throttling (RL), rejected; ``scope`` is whose budget ran out.
    4: _throttled(_APP),  # API Too Many Calls: app-level call limit (X-App-Usage)
    17: _throttled(_ACCOUNT),  # Graph user request limit (the business's system user)
    32: _throttled(_ACCOUNT),  # Graph page-level call limit
    613: _throttled(_APP),  # Graph API call-rate limit
    80007: _throttled(_ACCOUNT),  # WABA rate limit (estimated_time_to_regain_access)
    80008: _throttled(_ACCOUNT),  # too many calls to this WABA (template endpoints)
    130429: _throttled(_SENDER),  # Cloud API throughput (mps) of the business number
    131056: _throttled(_RECIPIENT),  # (business, consumer) pair rate limit: that recipient only
    131048: _throttled(_SENDER, 15 * _MINUTE),  # spam rate limit: quality restriction of the number
    131049: _throttled(_RECIPIENT, 24 * _HOUR),  # per-user marketing cap (>= 24 h for that user)
    131064: _throttled(_ACCOUNT, _HOUR),  # messaging limit after template-classification violations: long
    132069: _throttled(_MESSAGE, _HOUR),  # flow throttled: 10 messages with this flow in the last hour
    133016: _throttled(_SENDER),  # register/deregister rate limit of the number
    # -- sender unusable (retry "N"/"L" by an operator): park the sender's messages.
    0: _sender(_SENDER),  # AuthException: could not authenticate (get a new token)
    3: _sender(_APP),  # API Method: capability or permission issue of the app
    10: _sender(_APP),  # permission denied (not granted or removed)
    33: _sender(_SENDER),  # business phone number deleted
    104: _sender(_SENDER),  # access token missing
    190: _sender(_SENDER),  # access token expired (subcode 463) or invalid (460 password changed)
    **{code: _sender(_APP) for code in range(200, 300)},  # 200-299: API permission missing
    368: _sender(_ACCOUNT),  # temporarily blocked for policy violations
    130497: _sender(_ACCOUNT),  # WABA restricted from messaging users in this country
    131005: _sender(_APP),  # access denied
    131031: _sender(_ACCOUNT),  # account locked
    131037: _sender(_SENDER),  # 555 number without an approved display name
    131042: _sender(_ACCOUNT),  # business eligibility or payment issue (fix billing first)
    131045: _sender(_SENDER),  # incorrect certificate: phone number registration error
    133000: _sender(_SENDER),  # incomplete deregistration of the number
    **{code: _sender(_SENDER) for code in range(133005, 133010)},  # two-step PIN / re-verification
    133010: _sender(_SENDER),  # phone number not registered on the platform
    133015: _sender(_SENDER),  # number recently deleted: wait 5 min before registering
    # -- this recipient cannot be reached by this sender (retry "N").
    130472: _permanent(_RECIPIENT),  # user's number is part of an experiment
    131021: _permanent(_RECIPIENT),  # recipient cannot be the sender
    131026: _permanent(_RECIPIENT),  # undeliverable: not on WhatsApp, old app, blocked, ...
    131030: _permanent(_RECIPIENT),  # recipient not in the test number's allowed list
    131047: _permanent(_RECIPIENT),  # re-engagement: > 24 h since the user's last message
    131050: _permanent(_RECIPIENT),  # user stopped marketing messages (opt-out)
    131062: _permanent(_RECIPIENT),  # BSUID recipient not supported
    137000: _permanent(_RECIPIENT),  # recipient identity key hash mismatch
    # -- this message is wrong and fails again unchanged (retry "N").
    100: _permanent(_MESSAGE),  # invalid parameter
    131008: _permanent(_MESSAGE),  # required parameter missing
    131009: _permanent(_MESSAGE),  # parameter value not valid
    131051: _permanent(_MESSAGE),  # unsupported message type
    131052: _permanent(_MESSAGE),  # media download error
    131053: _permanent(_MESSAGE),  # media upload error (bad link, type or size)
    131063: _permanent(_MESSAGE),  # marketing messages disabled on the Cloud API
    132000: _permanent(_MESSAGE),  # template parameter count mismatch
    132001: _permanent(_MESSAGE),  # template does not exist in that language, or not approved
    132005: _permanent(_MESSAGE),  # hydrated template text too long
    132007: _permanent(_MESSAGE),  # template format character policy violated
    132012: _permanent(_MESSAGE),  # parameter format mismatch
    132016: _permanent(_MESSAGE),  # template disabled (paused too often)
    132018: _permanent(_MESSAGE),  # issue with template parameters (newline, tab, length)
    132068: _permanent(_MESSAGE),  # flow blocked
    135000: _permanent(_MESSAGE),  # generic user error
}
"""Graph ``error.code`` -> classification (shared WhatsApp spec 3.4, resilience spec 1.4)."""

GRAPH_ERROR_SUBCODES: Mapping[tuple[int, int], GraphErrorRule] = {
    # Code 100 subcode 33: the object in the URL (for a send: the phone number id)
    # does not exist or the token has no permission on it. Every send fails alike.
    (100, 33): _sender(_SENDER),
}
"""``(error.code, error.error_subcode)`` pairs that override ``GRAPH_ERROR_CODES``."""

# Answers without a Graph code (no envelope, or one without a code) go by HTTP status alone.
_SENDER_STATUSES = frozenset({401, 403, 404, 405, 407})  # auth, or not talking to the Graph API at all


@attrs.frozen
class _GraphError:
    """The parts of Graph's error envelope we use; any of them may be missing."""

    code: int | None = None
    subcode: int | None = None
    message: str | None = None
    details: str | None = None
    fbtrace_id: str | None = None
    is_transient: bool = False


def classify_graph_error(
    status: int,
    body: object,
    headers: Mapping[str, str],
    *,
    redact: Iterable[str] = (),
    now: datetime | None = None,
) -> DeliveryError:
    """Classify a failed Graph API answer.

    :param status: the HTTP status of the answer.
    :param body: the answer's body: parsed JSON when it was JSON, else its text (or bytes).
    :param headers: the answer's headers (looked up case-insensitively).
    :param redact: secrets (tokens) that must not appear in the detail.
    :param now: the current time, to read a ``Retry-After`` HTTP date (default: the clock).
    :return: the error to raise; ``code`` is Graph's ``error.code``, ``http_status`` the status.
    """
    graph = _parse_envelope(body)
    has_code = graph is not None and graph.code is not None
    rule = None
    if graph is not None and graph.code is not None:
        if graph.subcode is not None:
            rule = GRAPH_ERROR_SUBCODES.get((graph.code, graph.subcode))
        rule = rule or GRAPH_ERROR_CODES.get(graph.code)

    error_cls: type[DeliveryError]
    scope: ErrorScope | None
    if status == 429:  # whoever sent it (Meta, a proxy, the simulator): slow down
        error_cls, certainty = RateLimitedError, Certainty.REJECTED
        scope = rule.scope if rule is not None and rule.scope is not None else ErrorScope.SENDER
    elif rule is not None:
        error_cls, scope, certainty = rule.error, rule.scope, rule.certainty
        if graph is not None and graph.is_transient and not error_cls.retryable:
            error_cls, certainty = TransientDeliveryError, _certainty_of_status(status)
    elif (graph is not None and graph.is_transient) or status >= 500:
        error_cls, scope, certainty = TransientDeliveryError, None, _certainty_of_status(status)
    elif not has_code and status == 408:  # the server gave up waiting for our request
        error_cls, scope, certainty = TransientDeliveryError, None, Certainty.REJECTED
    elif not has_code and (status in _SENDER_STATUSES or status < 400):
        error_cls, scope, certainty = SenderUnavailableError, ErrorScope.SENDER, Certainty.REJECTED
    else:  # an unknown code (or a bare 4xx): this message fails again unchanged
        error_cls, scope, certainty = PermanentDeliveryError, ErrorScope.MESSAGE, Certainty.REJECTED

    retry_after = _retry_after(headers, error_cls, now) if error_cls.retryable else None
    if rule is not None and rule.wait_s is not None and error_cls.retryable:
        retry_after = max(retry_after or 0.0, rule.wait_s)
    return error_cls(
        _redact(_detail(status, body, graph), redact),
        code=graph.code if graph is not None else None,
        http_status=status,
        certainty=certainty,
        scope=scope,
        retry_after=retry_after,
        unknown_code=has_code and rule is None,
    )


def _certainty_of_status(status: int) -> Certainty:
    # 503 says "not processed"; other 5xx (500, 502, 504, ...) may hide a processed request.
    if status >= 500 and status != 503:
        return Certainty.UNKNOWN
    return Certainty.REJECTED


def _parse_envelope(body: object) -> _GraphError | None:
    """Graph's ``{"error": {...}}``, or None when the body is something else."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if not isinstance(error, Mapping):
        return None
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, Mapping) else None
    return _GraphError(
        code=_as_int(error.get("code")),
        subcode=_as_int(error.get("error_subcode")),
        message=_as_text(error.get("message")),
        details=_as_text(details) or _as_text(error.get("error_user_msg")),
        fbtrace_id=_as_text(error.get("fbtrace_id")),
        is_transient=error.get("is_transient") is True,
    )


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _as_text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _detail(status: int, body: object, graph: _GraphError | None) -> str:
    if graph is None:
        snippet = _snippet(body)
        described = f": {snippet}" if snippet else " (empty body)"
        return f"the Graph API answered HTTP {status} without a Graph error envelope{described}"
    if graph.code is None:
        head = graph.message or f"the Graph API answered HTTP {status} with an error without a code"
    elif graph.message is None:
        head = f"(#{graph.code}) Graph API error"
    elif graph.message.startswith("(#"):
        head = graph.message
    else:
        head = f"(#{graph.code}) {graph.message}"
    if graph.subcode is not None:
        head += f" [subcode {graph.subcode}]"
    if graph.details and graph.details not in head:
        head += f": {graph.details}"
    if graph.fbtrace_id:
        head += f" [fbtrace_id {graph.fbtrace_id}]"
    return head


def _snippet(body: object) -> str:
    if isinstance(body, bytes | bytearray):
        text = bytes(body).decode("utf-8", errors="replace")
    elif isinstance(body, str):
        text = body
    elif body is None:
        text = ""
    else:
        text = json.dumps(body, default=str)[: _SNIPPET_CHARS * 2]
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 3] + "..."


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


_DELTA_SECONDS = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def parse_retry_after(value: str, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date; None if unreadable."""
    if _DELTA_SECONDS.match(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _retry_after(
    headers: Mapping[str, str], error_cls: type[DeliveryError], now: datetime | None
) -> float | None:
    """The provider's advised wait: ``Retry-After``, else Graph's business-use-case usage header."""
    value = _header(headers, "Retry-After")
    if value is not None and (seconds := parse_retry_after(value, now=now)) is not None:
        return seconds
    if issubclass(error_cls, RateLimitedError):
        return _regain_access_after(_header(headers, "X-Business-Use-Case-Usage"))
    return None


def _regain_access_after(value: str | None) -> float | None:
    """``estimated_time_to_regain_access`` (minutes) of ``X-Business-Use-Case-Usage``, in seconds."""
    if not value:
        return None
    try:
        usage = json.loads(value)
    except ValueError:
        return None
    minutes = [
        entry.get("estimated_time_to_regain_access")
        for entries in (usage.values() if isinstance(usage, dict) else ())
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict)
    ]
    waits = [m for m in minutes if isinstance(m, int | float) and not isinstance(m, bool) and m > 0]
    return float(max(waits)) * 60.0 if waits else None


# ---------------------------------------------------------------- transport errors


@attrs.frozen
class _TransportRule:
    """How an aiohttp exception class is translated; ``certainty=None``: it depends on ``request_sent``."""

    types: tuple[type[BaseException], ...]
    certainty: Certainty | None
    what: str
    error: type[DeliveryError] = TransientDeliveryError


# First match wins, so subclasses come before their bases: ConnectionTimeoutError and
# SocketTimeoutError are both TimeoutError (resilience spec 1.1, transport mapping).
_TRANSPORT_RULES: tuple[_TransportRule, ...] = (
    # Before the request bytes left: resending is safe.
    _TransportRule((aiohttp.ConnectionTimeoutError,), Certainty.NOT_SENT, "timed out connecting to"),
    _TransportRule((aiohttp.ClientConnectorError,), Certainty.NOT_SENT, "could not connect to"),  # DNS, TLS
    _TransportRule(
        (aiohttp.ServerFingerprintMismatch,),
        Certainty.NOT_SENT,
        "TLS certificate fingerprint mismatch for",
        SenderUnavailableError,
    ),
    _TransportRule(
        (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError),
        Certainty.NOT_SENT,
        "invalid URL for",
        SenderUnavailableError,
    ),
    # After the request was written: Meta may have acted on it.
    _TransportRule((aiohttp.SocketTimeoutError,), Certainty.UNKNOWN, "timed out reading the answer of"),
    _TransportRule((aiohttp.ClientPayloadError,), Certainty.UNKNOWN, "incomplete answer from"),
    # Either, depending on whether the request had been written.
    _TransportRule((aiohttp.ServerDisconnectedError,), None, "connection closed by"),
    _TransportRule((ConnectionResetError, aiohttp.ClientConnectionResetError), None, "connection reset by"),
    _TransportRule((TimeoutError,), None, "timed out talking to"),
    _TransportRule((OSError,), None, "network error talking to"),  # ClientOSError is an OSError
    _TransportRule((aiohttp.ClientError,), None, "HTTP client error talking to"),
)


def translate_client_error(
    exc: BaseException, *, request_sent: bool, redact: Iterable[str] = ()
) -> DeliveryError:
    """Translate an aiohttp exception (or a timeout) of a Graph API call.

    :param exc: the exception; never pass ``asyncio.CancelledError``, which must propagate.
    :param request_sent: whether the request had been written when it failed; decides
        the certainty of ambiguous failures (reset, disconnect, timeout).
    :param redact: secrets (tokens) that must not appear in the detail.
    :return: a ``TransientDeliveryError`` (``SenderUnavailableError`` for a bad URL or
        certificate) whose ``certainty`` says whether a resend may duplicate.
    """
    if isinstance(exc, aiohttp.ClientResponseError):  # a complete answer: classify its status
        return classify_graph_error(exc.status, None, exc.headers or {}, redact=redact)
    unsent_or_unknown = Certainty.UNKNOWN if request_sent else Certainty.NOT_SENT
    for rule in _TRANSPORT_RULES:
        if isinstance(exc, rule.types):
            detail = f"{rule.what} the Graph API{_reason(exc)}"
            return rule.error(_redact(detail, redact), certainty=rule.certainty or unsent_or_unknown)
    detail = f"unexpected error talking to the Graph API: {type(exc).__name__}"
    return TransientDeliveryError(detail, certainty=unsent_or_unknown)


def _reason(exc: BaseException) -> str:
    """A short, URL-free description: aiohttp's messages may carry the request URL."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        reason = os_error.strerror or type(os_error).__name__
        return f" ({exc.host}:{exc.port}): {reason}"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return f" ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return f" ({type(exc).__name__}): {exc.strerror}"
    return f" ({type(exc).__name__})"
