"""classify_graph_error and translate_client_error, without a network."""

import errno
import pickle
from datetime import UTC, datetime

import aiohttp
import pytest

from omnichannel import (
    Certainty,
    DeliveryError,
    ErrorScope,
    PermanentDeliveryError,
    RateLimitedError,
    SenderUnavailableError,
    TransientDeliveryError,
)
from omnichannel_whatsapp.errors import (
    GRAPH_ERROR_CODES,
    classify_graph_error,
    parse_retry_after,
    translate_client_error,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
TOKEN = "EAAG-super-secret-token"


def envelope(code, message=None, *, details=None, subcode=None, is_transient=None, **extra):
    error = {
        "message": message if message is not None else f"(#{code}) Some title",
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AOnodi98JaYHcSTvVvrOtJs",
        **extra,
    }
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if subcode is not None:
        error["error_subcode"] = subcode
    if is_transient is not None:
        error["is_transient"] = is_transient
    return {"error": error}


R, S, A, C, M = (
    ErrorScope.RECIPIENT,
    ErrorScope.SENDER,
    ErrorScope.ACCOUNT,
    ErrorScope.APP,
    ErrorScope.MESSAGE,
)
REJ, UNK = Certainty.REJECTED, Certainty.UNKNOWN

# (code, HTTP status from Meta's table, class, scope, certainty)
CODES = [
    # transient server errors
    (1, 400, TransientDeliveryError, None, REJ),
    (2, 503, TransientDeliveryError, None, REJ),
    (131000, 500, TransientDeliveryError, None, UNK),
    (131016, 500, TransientDeliveryError, None, REJ),
    (131057, 500, TransientDeliveryError, None, REJ),
    (133004, 503, TransientDeliveryError, None, REJ),
    (132015, 400, TransientDeliveryError, M, REJ),
    # throttling
    (4, 400, RateLimitedError, C, REJ),
    (17, 400, RateLimitedError, A, REJ),
    (32, 400, RateLimitedError, A, REJ),
    (613, 400, RateLimitedError, C, REJ),
    (80007, 400, RateLimitedError, A, REJ),
    (80008, 400, RateLimitedError, A, REJ),
    (130429, 400, RateLimitedError, S, REJ),
    (131056, 400, RateLimitedError, R, REJ),
    (131048, 400, RateLimitedError, S, REJ),
    (131049, 400, RateLimitedError, R, REJ),
    (132069, 400, RateLimitedError, M, REJ),
    (131064, 400, RateLimitedError, A, REJ),
    # sender unusable
    (0, 401, SenderUnavailableError, S, REJ),
    (3, 500, SenderUnavailableError, C, REJ),
    (10, 403, SenderUnavailableError, C, REJ),
    (33, 400, SenderUnavailableError, S, REJ),
    (104, 400, SenderUnavailableError, S, REJ),
    (190, 401, SenderUnavailableError, S, REJ),
    (200, 403, SenderUnavailableError, C, REJ),
    (299, 403, SenderUnavailableError, C, REJ),
    (368, 403, SenderUnavailableError, A, REJ),
    (130497, 400, SenderUnavailableError, A, REJ),
    (131005, 403, SenderUnavailableError, C, REJ),
    (131031, 403, SenderUnavailableError, A, REJ),
    (131037, 400, SenderUnavailableError, S, REJ),
    (131042, 400, SenderUnavailableError, A, REJ),
    (131045, 500, SenderUnavailableError, S, REJ),
    (133010, 400, SenderUnavailableError, S, REJ),
    # recipient permanent
    (131021, 400, PermanentDeliveryError, R, REJ),
    (131026, 400, PermanentDeliveryError, R, REJ),
    (131030, 400, PermanentDeliveryError, R, REJ),
    (131047, 400, PermanentDeliveryError, R, REJ),
    (131050, 400, PermanentDeliveryError, R, REJ),
    (130472, 400, PermanentDeliveryError, R, REJ),
    # message permanent
    (100, 400, PermanentDeliveryError, M, REJ),
    (131008, 400, PermanentDeliveryError, M, REJ),
    (131009, 400, PermanentDeliveryError, M, REJ),
    (131051, 400, PermanentDeliveryError, M, REJ),
    (131053, 400, PermanentDeliveryError, M, REJ),
    (132000, 400, PermanentDeliveryError, M, REJ),
    (132001, 404, PermanentDeliveryError, M, REJ),
    (132005, 400, PermanentDeliveryError, M, REJ),
    (132012, 400, PermanentDeliveryError, M, REJ),
    (132016, 400, PermanentDeliveryError, M, REJ),
    (132018, 400, PermanentDeliveryError, M, REJ),
    (135000, 400, PermanentDeliveryError, M, REJ),
]


@pytest.mark.parametrize(
    ("code", "status", "cls", "scope", "certainty"), CODES, ids=[str(c[0]) for c in CODES]
)
def test_graph_codes_are_classified_by_the_table(code, status, cls, scope, certainty):
    error = classify_graph_error(status, envelope(code), {})

    assert type(error) is cls
    assert (error.code, error.http_status, error.scope, error.certainty) == (code, status, scope, certainty)
    assert error.retry_after == DOCUMENTED_WAITS.get(code)


# Cool-downs Meta documents but does not send: the least retry_after of these codes.
DOCUMENTED_WAITS = {132015: 3600.0, 131048: 900.0, 131049: 86400.0, 132069: 3600.0, 131064: 3600.0}


def test_a_longer_retry_after_from_meta_wins_over_the_documented_wait():
    error = classify_graph_error(400, envelope(131048), {"Retry-After": "7200"})
    assert error.retry_after == 7200.0


def test_every_code_in_the_table_is_a_delivery_error_class():
    assert all(issubclass(rule.error, DeliveryError) for rule in GRAPH_ERROR_CODES.values())


@pytest.mark.parametrize("status", [400, 500, 503])
def test_code_wins_over_http_status(status):
    error = classify_graph_error(status, envelope(131026), {})

    assert type(error) is PermanentDeliveryError
    assert error.http_status == status


def test_detail_reads_like_graph_with_details_and_fbtrace_id():
    body = envelope(
        131056,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        details="Message failed to send because there were too many messages sent.",
    )

    error = classify_graph_error(400, body, {})

    assert error.detail == (
        "(#131056) (Business Account, Consumer Account) pair rate limit hit: "
        "Message failed to send because there were too many messages sent. "
        "[fbtrace_id AOnodi98JaYHcSTvVvrOtJs]"
    )
    assert str(error) == error.detail + " (code=131056, http_status=400)"


def test_detail_adds_the_code_when_the_message_lacks_it():
    error = classify_graph_error(
        401, envelope(190, "Invalid OAuth access token - Cannot parse access token"), {}
    )

    assert error.detail.startswith("(#190) Invalid OAuth access token - Cannot parse access token")


def test_unknown_object_subcode_33_means_the_phone_number_id_is_wrong():
    body = envelope(100, "Unsupported post request. Object with ID '123' does not exist", subcode=33)
    body["error"]["type"] = "GraphMethodException"

    error = classify_graph_error(400, body, {})

    assert type(error) is SenderUnavailableError
    assert error.scope is ErrorScope.SENDER
    assert "[subcode 33]" in error.detail


def test_expired_token_subcode_keeps_the_code_rule():
    error = classify_graph_error(401, envelope(190, "Error validating access token", subcode=463), {})

    assert type(error) is SenderUnavailableError
    assert error.code == 190


def test_is_transient_true_is_honoured_for_a_permanent_code():
    error = classify_graph_error(400, envelope(131009, is_transient=True), {})

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.REJECTED
    assert error.scope is ErrorScope.MESSAGE


def test_is_transient_true_is_honoured_for_an_unknown_code():
    error = classify_graph_error(400, envelope(999_999, is_transient=True), {})

    assert type(error) is TransientDeliveryError
    assert error.code == 999_999


def test_is_transient_false_does_not_demote_a_rate_limit():
    error = classify_graph_error(400, envelope(131056, is_transient=False), {})

    assert type(error) is RateLimitedError


def test_unknown_4xx_code_is_permanent_for_the_message():
    error = classify_graph_error(400, envelope(424242), {})

    assert type(error) is PermanentDeliveryError
    assert (error.code, error.scope, error.certainty) == (424242, ErrorScope.MESSAGE, Certainty.REJECTED)
    assert error.unknown_code  # a worker dead-letters it as unknown_error_code


@pytest.mark.parametrize(("status", "body"), [(400, envelope(132000)), (400, "Bad Request"), (404, {})])
def test_a_known_code_or_no_code_is_not_an_unknown_code(status, body):
    assert not classify_graph_error(status, body, {}).unknown_code


@pytest.mark.parametrize(
    ("status", "certainty"), [(500, UNK), (502, UNK), (503, REJ), (504, UNK), (599, UNK)]
)
def test_unknown_code_on_5xx_is_transient(status, certainty):
    error = classify_graph_error(status, envelope(424242), {})

    assert type(error) is TransientDeliveryError
    assert error.certainty is certainty


@pytest.mark.parametrize("code", [131026, 190, 130429, None])
def test_http_429_is_always_a_rate_limit(code):
    body = envelope(code) if code is not None else "Too Many Requests"

    error = classify_graph_error(429, body, {"Retry-After": "7"})

    assert type(error) is RateLimitedError
    assert error.certainty is Certainty.REJECTED
    assert error.retry_after == 7.0
    assert error.code == code


def test_http_429_keeps_the_scope_of_a_throttling_code():
    assert classify_graph_error(429, envelope(131056), {}).scope is ErrorScope.RECIPIENT
    assert classify_graph_error(429, "slow down", {}).scope is ErrorScope.SENDER


@pytest.mark.parametrize("name", ["Retry-After", "retry-after", "RETRY-AFTER"])
def test_retry_after_seconds_any_header_case(name):
    error = classify_graph_error(400, envelope(130429), {name: "30"})

    assert error.retry_after == 30.0


def test_retry_after_http_date():
    error = classify_graph_error(
        400, envelope(130429), {"Retry-After": "Thu, 01 Jan 2026 12:02:00 GMT"}, now=NOW
    )

    assert error.retry_after == 120.0


def test_retry_after_in_the_past_is_zero_and_garbage_is_ignored():
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now=NOW) == 0.0
    assert parse_retry_after("soon", now=NOW) is None
    assert classify_graph_error(400, envelope(130429), {"Retry-After": "soon"}).retry_after is None


def test_retry_after_on_a_503_transient():
    error = classify_graph_error(503, envelope(2), {"Retry-After": "5"})

    assert type(error) is TransientDeliveryError
    assert error.retry_after == 5.0


def test_retry_after_is_not_set_on_errors_that_are_not_retried():
    error = classify_graph_error(401, envelope(190), {"Retry-After": "5"})

    assert error.retry_after is None


def test_business_use_case_usage_gives_the_wait_of_a_waba_limit():
    usage = (
        '{"102290129340398": [{"type": "whatsapp_business_management", "call_count": 100, '
        '"estimated_time_to_regain_access": 3}]}'
    )

    error = classify_graph_error(400, envelope(80007), {"X-Business-Use-Case-Usage": usage})

    assert error.retry_after == 180.0


def test_malformed_business_use_case_usage_is_ignored():
    error = classify_graph_error(400, envelope(80007), {"X-Business-Use-Case-Usage": "{nope"})

    assert error.retry_after is None


def test_non_json_error_body_is_classified_by_status_and_says_so():
    error = classify_graph_error(502, "<html><body>Bad   Gateway</body></html>", {})

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.UNKNOWN
    assert error.code is None
    assert error.detail == (
        "the Graph API answered HTTP 502 without a Graph error envelope: "
        "<html><body>Bad Gateway</body></html>"
    )


def test_json_body_that_is_not_an_envelope_says_so():
    error = classify_graph_error(400, {"oops": True}, {})

    assert type(error) is PermanentDeliveryError
    assert "without a Graph error envelope" in error.detail


def test_empty_body_says_so():
    error = classify_graph_error(503, "", {})

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.REJECTED
    assert error.detail.endswith("(empty body)")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, SenderUnavailableError),
        (403, SenderUnavailableError),
        (404, SenderUnavailableError),
        (408, TransientDeliveryError),
        (413, PermanentDeliveryError),
        (422, PermanentDeliveryError),
        (500, TransientDeliveryError),
    ],
)
def test_non_envelope_answers_by_status(status, cls):
    assert type(classify_graph_error(status, b"nope", {})) is cls


def test_long_bodies_are_cut_short():
    error = classify_graph_error(500, "x" * 10_000, {})

    assert len(error.detail) < 300
    assert error.detail.endswith("...")


def test_code_as_a_digit_string_is_read():
    assert classify_graph_error(400, envelope("131056"), {}).code == 131056


def test_envelope_without_a_code_is_classified_by_status():
    error = classify_graph_error(500, {"error": {"message": "Internal error"}}, {})

    assert type(error) is TransientDeliveryError
    assert error.code is None
    assert error.detail == "Internal error"


def test_envelope_without_a_code_on_401_means_the_sender_cannot_send():
    error = classify_graph_error(401, {"error": {"message": "Authentication failed"}}, {})

    assert type(error) is SenderUnavailableError


def test_secrets_are_redacted_from_the_detail():
    body = envelope(190, f"Malformed access token {TOKEN}", details=f"token={TOKEN}")

    error = classify_graph_error(401, body, {}, redact=[TOKEN])

    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    assert "***" in error.detail


def test_classified_errors_pickle():
    error = classify_graph_error(400, envelope(131056), {"Retry-After": "4"})

    copy = pickle.loads(pickle.dumps(error))

    assert (type(copy), copy.code, copy.scope, copy.retry_after) == (RateLimitedError, 131056, R, 4.0)


# ---------------------------------------------------------------- transport


def connector_error(os_error):
    key = aiohttp.client_reqrep.ConnectionKey("graph.facebook.com", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, os_error)


@pytest.mark.parametrize("request_sent", [False, True])
@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(
            connector_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connect refused")), id="refused"
        ),
        pytest.param(
            aiohttp.ConnectionTimeoutError("Connection timeout to host https://x"), id="connect-timeout"
        ),
    ],
)
def test_before_the_request_left_is_not_sent(exc, request_sent):
    error = translate_client_error(exc, request_sent=request_sent)

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.NOT_SENT
    assert error.code is None


@pytest.mark.parametrize("request_sent", [False, True])
@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(aiohttp.SocketTimeoutError("Timeout on reading data from socket"), id="read-timeout"),
        pytest.param(aiohttp.ClientPayloadError("Response payload is not completed"), id="payload"),
    ],
)
def test_reading_the_answer_failed_is_unknown(exc, request_sent):
    error = translate_client_error(exc, request_sent=request_sent)

    assert type(error) is TransientDeliveryError
    assert error.certainty is Certainty.UNKNOWN


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(aiohttp.ServerDisconnectedError(), id="disconnected"),
        pytest.param(aiohttp.ClientOSError(errno.EPIPE, "Broken pipe"), id="os-error"),
        pytest.param(aiohttp.ClientConnectionResetError("Cannot write to closing transport"), id="reset"),
        pytest.param(TimeoutError(), id="timeout"),
        pytest.param(aiohttp.ClientConnectionError("boom"), id="client-error"),
    ],
)
@pytest.mark.parametrize(
    ("request_sent", "certainty"), [(False, Certainty.NOT_SENT), (True, Certainty.UNKNOWN)]
)
def test_ambiguous_failures_depend_on_whether_the_request_was_written(exc, request_sent, certainty):
    error = translate_client_error(exc, request_sent=request_sent)

    assert type(error) is TransientDeliveryError
    assert error.certainty is certainty


def test_connector_error_detail_names_host_and_reason():
    exc = connector_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"))

    error = translate_client_error(exc, request_sent=False)

    assert error.detail == "could not connect to the Graph API (graph.facebook.com:443): Connect call failed"


def test_transport_detail_never_carries_the_url_or_the_token():
    exc = aiohttp.ConnectionTimeoutError(f"Connection timeout to host https://x/?access_token={TOKEN}")

    error = translate_client_error(exc, request_sent=False, redact=[TOKEN])

    assert "access_token" not in str(error)
    assert TOKEN not in repr(error)


def test_invalid_url_means_the_sender_is_misconfigured():
    error = translate_client_error(aiohttp.InvalidURL("nope://"), request_sent=False)

    assert type(error) is SenderUnavailableError
    assert error.certainty is Certainty.NOT_SENT


def test_response_error_is_classified_by_its_status():
    exc = aiohttp.ClientResponseError(None, (), status=503, message="Service Unavailable")  # type: ignore[arg-type]

    error = translate_client_error(exc, request_sent=True)

    assert type(error) is TransientDeliveryError
    assert (error.http_status, error.certainty) == (503, Certainty.REJECTED)
