"""The exception tree of ``omnichannel.errors``: shape, attributes, messages, pickling."""

from __future__ import annotations

import inspect
import pickle

import pytest

import omnichannel
from omnichannel import errors
from omnichannel.errors import (
    Certainty,
    CircuitOpenError,
    CommandError,
    ConfigError,
    DeliveryError,
    ErrorScope,
    KeyStoreError,
    MessageValidationError,
    OmniChannelError,
    PermanentDeliveryError,
    PluginError,
    RateLimitedError,
    SenderUnavailableError,
    ServiceStateError,
    StoreError,
    TransientDeliveryError,
    UnknownChannelError,
    UnknownCommandError,
    WebhookError,
)
from omnichannel.message import ErrorInfo

ERROR_CLASSES = [
    obj
    for obj in vars(errors).values()
    if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]

DELIVERY_ERRORS = [
    DeliveryError,
    TransientDeliveryError,
    RateLimitedError,
    CircuitOpenError,
    PermanentDeliveryError,
    SenderUnavailableError,
]

# (class, its direct omnichannel parent, the stdlib bases a caller may catch it by)
TREE = [
    (ConfigError, OmniChannelError, (ValueError,)),
    (PluginError, OmniChannelError, ()),
    (MessageValidationError, OmniChannelError, (ValueError,)),
    (UnknownChannelError, OmniChannelError, (LookupError,)),
    (ServiceStateError, OmniChannelError, (RuntimeError,)),
    (CommandError, OmniChannelError, ()),
    (UnknownCommandError, CommandError, (LookupError,)),
    (KeyStoreError, OmniChannelError, ()),
    (StoreError, OmniChannelError, ()),
    (DeliveryError, OmniChannelError, ()),
    (TransientDeliveryError, DeliveryError, ()),
    (RateLimitedError, TransientDeliveryError, ()),
    (CircuitOpenError, TransientDeliveryError, ()),
    (PermanentDeliveryError, DeliveryError, ()),
    (SenderUnavailableError, DeliveryError, ()),
    (WebhookError, OmniChannelError, ()),
]


# ---------------------------------------------------------------- the tree


def test_every_error_class_is_in_the_drawn_tree():
    drawn = {cls for cls, _, _ in TREE} | {OmniChannelError}
    assert set(ERROR_CLASSES) == drawn


@pytest.mark.parametrize(("cls", "parent", "stdlib"), TREE, ids=[c.__name__ for c, _, _ in TREE])
def test_tree_relations(cls, parent, stdlib):
    assert issubclass(cls, parent)
    assert issubclass(cls, OmniChannelError)
    for base in stdlib:
        assert issubclass(cls, base)


def test_base_is_a_plain_exception():
    assert OmniChannelError.__bases__ == (Exception,)


@pytest.mark.parametrize(
    ("cls", "not_a"),
    [
        (PluginError, ValueError),
        (DeliveryError, ValueError),
        (DeliveryError, RuntimeError),
        (WebhookError, ValueError),
        (CommandError, LookupError),
        (PermanentDeliveryError, TransientDeliveryError),
        (SenderUnavailableError, TransientDeliveryError),
        (SenderUnavailableError, PermanentDeliveryError),
        (RateLimitedError, CircuitOpenError),
    ],
)
def test_tree_has_no_accidental_relations(cls, not_a):
    assert not issubclass(cls, not_a)


def test_docstring_draws_every_class():
    for cls in ERROR_CLASSES:
        assert cls.__name__ in errors.__doc__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_documented_named_and_public(cls):
    assert cls.__doc__
    assert cls.__doc__.strip()
    assert cls.__name__.endswith("Error")
    assert cls.__name__ in errors.__all__
    assert cls.__name__ in omnichannel.__all__
    assert getattr(omnichannel, cls.__name__) is cls


def test_catching_by_stdlib_base():
    with pytest.raises(LookupError):
        raise UnknownChannelError("sms")
    with pytest.raises(ValueError, match="invalid configuration"):
        raise ConfigError(["x: bad"])
    with pytest.raises(RuntimeError, match="not started"):
        raise ServiceStateError("not started")


# ---------------------------------------------------------------- delivery errors


def test_delivery_error_defaults():
    error = DeliveryError("provider said no")
    assert error.detail == "provider said no"
    assert error.channel is None
    assert error.message_id is None
    assert error.code is None
    assert error.http_status is None
    assert error.certainty is Certainty.REJECTED
    assert error.scope is None
    assert error.retry_after is None
    assert error.retryable is False
    assert error.args == ("provider said no",)


def test_delivery_error_keeps_every_attribute():
    error = RateLimitedError(
        "too many messages",
        channel="whatsapp",
        message_id="m-1",
        code=131056,
        http_status=429,
        certainty=Certainty.UNKNOWN,
        scope=ErrorScope.RECIPIENT,
        retry_after=2.5,
    )
    assert (error.channel, error.message_id, error.code, error.http_status) == (
        "whatsapp",
        "m-1",
        131056,
        429,
    )
    assert error.certainty is Certainty.UNKNOWN
    assert error.scope is ErrorScope.RECIPIENT
    assert error.retry_after == 2.5


@pytest.mark.parametrize(
    ("cls", "retryable", "certainty"),
    [
        (DeliveryError, False, Certainty.REJECTED),
        (TransientDeliveryError, True, Certainty.REJECTED),
        (RateLimitedError, True, Certainty.REJECTED),
        (CircuitOpenError, True, Certainty.NOT_SENT),
        (PermanentDeliveryError, False, Certainty.REJECTED),
        (SenderUnavailableError, False, Certainty.REJECTED),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_retryable_flag_and_default_certainty(cls, retryable, certainty):
    error = cls("failed")
    assert error.retryable is retryable
    assert cls.retryable is retryable
    assert error.certainty is certainty


def test_circuit_open_certainty_can_be_overridden():
    assert CircuitOpenError("open", certainty=Certainty.UNKNOWN).certainty is Certainty.UNKNOWN


def test_certainty_and_scope_values():
    assert [c.value for c in Certainty] == ["not_sent", "rejected", "unknown"]
    assert [s.value for s in ErrorScope] == ["message", "recipient", "sender", "account", "app"]
    assert Certainty("unknown") is Certainty.UNKNOWN


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "recipient is not on WhatsApp"),
        ({"channel": "whatsapp"}, "recipient is not on WhatsApp (channel=whatsapp)"),
        (
            {"channel": "whatsapp", "code": 131026, "http_status": 400},
            "recipient is not on WhatsApp (channel=whatsapp, code=131026, http_status=400)",
        ),
        ({"code": "E42"}, "recipient is not on WhatsApp (code=E42)"),
        (
            {"message_id": "m-1", "scope": ErrorScope.RECIPIENT, "retry_after": 1.0},
            "recipient is not on WhatsApp",
        ),
    ],
)
def test_delivery_error_str(kwargs, expected):
    assert str(PermanentDeliveryError("recipient is not on WhatsApp", **kwargs)) == expected


@pytest.mark.parametrize("cls", DELIVERY_ERRORS, ids=lambda c: c.__name__)
def test_delivery_errors_pickle_with_their_attributes(cls):
    error = cls(
        "upstream timeout",
        channel="whatsapp",
        message_id="m-7",
        code=2,
        http_status=503,
        certainty=Certainty.UNKNOWN,
        scope=ErrorScope.APP,
        retry_after=30.0,
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error) == "upstream timeout (channel=whatsapp, code=2, http_status=503)"
    assert copy.detail == "upstream timeout"
    assert copy.channel == "whatsapp"
    assert copy.message_id == "m-7"
    assert copy.code == 2
    assert copy.http_status == 503
    assert copy.certainty is Certainty.UNKNOWN
    assert copy.scope is ErrorScope.APP
    assert copy.retry_after == 30.0
    assert copy.retryable is cls.retryable


def test_pickled_delivery_error_keeps_default_certainty():
    copy = pickle.loads(pickle.dumps(CircuitOpenError("open")))
    assert copy.certainty is Certainty.NOT_SENT


# ---------------------------------------------------------------- the other errors


def test_config_error():
    error = ConfigError(["http.timeout_s: must be > 0, got 0.0", "nope: unknown key"], source="prod.toml")
    assert error.errors == ["http.timeout_s: must be > 0, got 0.0", "nope: unknown key"]
    assert error.source == "prod.toml"
    assert str(error) == (
        "invalid configuration in prod.toml:\n  - http.timeout_s: must be > 0, got 0.0\n  - nope: unknown key"
    )


def test_config_error_without_source_or_lines():
    assert str(ConfigError(["x: bad"])) == "invalid configuration:\n  - x: bad"
    assert str(ConfigError([])) == "invalid configuration:"
    assert ConfigError(iter(["a: b"])).errors == ["a: b"]


def test_plugin_error():
    error = PluginError("whatsapp", "startup failed: boom")
    assert error.plugin_name == "whatsapp"
    assert error.reason == "startup failed: boom"
    assert str(error) == "plugin 'whatsapp': startup failed: boom"


def test_message_validation_error():
    error = MessageValidationError(
        ["content.body: must not be empty", "recipient: must not be empty"], message_id="m-1"
    )
    assert error.problems == ["content.body: must not be empty", "recipient: must not be empty"]
    assert error.message_id == "m-1"
    assert str(error) == (
        "message is invalid:\n  - content.body: must not be empty\n  - recipient: must not be empty"
    )
    assert MessageValidationError(["x"]).message_id is None


def test_unknown_channel_error():
    error = UnknownChannelError("sms", available=["whatsapp", "console"])
    assert error.channel == "sms"
    assert error.available == ["console", "whatsapp"]
    assert str(error) == "no enabled plugin provides channel 'sms' (available: console, whatsapp)"
    assert str(UnknownChannelError("sms")) == "no enabled plugin provides channel 'sms'"


def test_unknown_command_error():
    error = UnknownCommandError("SendFax")
    assert error.command == "SendFax"
    assert str(error) == "no handler is registered for command 'SendFax'"


def test_webhook_error():
    error = WebhookError("signature mismatch", status=401)
    assert (error.detail, error.status, str(error)) == ("signature mismatch", 401, "signature mismatch")
    assert WebhookError("bad payload").status == 400


PICKLE_CASES = [
    (ConfigError(["a: b", "c: d"], source="f.toml"), {"errors": ["a: b", "c: d"], "source": "f.toml"}),
    (PluginError("whatsapp", "failed to import"), {"plugin_name": "whatsapp", "reason": "failed to import"}),
    (MessageValidationError(["x: y"], message_id="m"), {"problems": ["x: y"], "message_id": "m"}),
    (UnknownChannelError("sms", available=["console"]), {"channel": "sms", "available": ["console"]}),
    (UnknownCommandError("SendFax"), {"command": "SendFax"}),
    (WebhookError("bad signature", status=401), {"detail": "bad signature", "status": 401}),
    (ServiceStateError("not started"), {}),
]


@pytest.mark.parametrize(
    ("error", "attributes"), PICKLE_CASES, ids=[type(e).__name__ for e, _ in PICKLE_CASES]
)
def test_other_errors_pickle_unchanged(error, attributes):
    # Errors cross process boundaries (workers, pytest-xdist, concurrent.futures).
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    for name, value in attributes.items():
        assert getattr(copy, name) == value


# ---------------------------------------------------------------- ErrorInfo


def test_error_info_from_delivery_error():
    error = RateLimitedError(
        "slow down", code=4, http_status=429, scope=ErrorScope.APP, channel="whatsapp", retry_after=3
    )
    assert ErrorInfo.from_exception(error) == ErrorInfo(
        kind="RateLimitedError",
        detail="slow down",
        code=4,
        http_status=429,
        certainty=Certainty.REJECTED,
        scope=ErrorScope.APP,
        retryable=True,
    )


def test_error_info_detail_is_the_bare_detail():
    # str(exc) would append "(channel=..., code=...)": the info keeps them as fields.
    info = ErrorInfo.from_exception(PermanentDeliveryError("bad recipient", channel="sms", code="21211"))
    assert info.detail == "bad recipient"
    assert info.code == "21211"
    assert info.retryable is False


def test_error_info_from_other_exceptions():
    assert ErrorInfo.from_exception(WebhookError("bad signature", status=401)) == ErrorInfo(
        kind="WebhookError", detail="bad signature"
    )
    assert ErrorInfo.from_exception(RuntimeError("boom")) == ErrorInfo(kind="RuntimeError", detail="boom")
    # An exception without a message is described by its class name.
    assert ErrorInfo.from_exception(TimeoutError()) == ErrorInfo(kind="TimeoutError", detail="TimeoutError")
