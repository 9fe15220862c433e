"""Every error omnichannel raises, in one tree.

``str(exc)`` of each is written for a person and is safe to show: no secret
ever appears in it.

::

    OmniChannelError                          base of everything below
    ├── ConfigError(ValueError)               .errors: list[str], one line per problem, path first
    ├── PluginError                           .plugin_name: a plugin failed to import, register or start
    ├── MessageValidationError(ValueError)    .problems: list[str] from every validate hook at once
    ├── UnknownChannelError(LookupError)      .channel: no enabled plugin owns the channel
    ├── ServiceStateError(RuntimeError)       the service was used before start() or after stop()
    ├── CommandError                          the command bus could not run a command
    │   └── UnknownCommandError(LookupError)  .command: no handler is registered for it
    ├── KeyStoreError                         the idempotency key store could not answer: do not send
    ├── StoreError                            the message store could not answer or write
    ├── DeliveryError                         .channel .message_id .code .http_status .certainty .scope
    │   ├── TransientDeliveryError            may succeed if tried again (timeouts, 5xx, connection errors)
    │   │   ├── RateLimitedError              .retry_after: the provider asked us to slow down
    │   │   └── CircuitOpenError              the sender's circuit breaker refused the attempt
    │   ├── PermanentDeliveryError            will fail again unchanged (bad recipient, bad template)
    │   └── SenderUnavailableError            the sender cannot send at all (token, permission, account)
    └── WebhookError                          .status: inbound request rejected (400 payload, 401/403 auth)

Channel plugins translate their transport and provider errors into the
``DeliveryError`` branch (``raise ... from exc``); middleware such as retry and
circuit breaking read only the class and the attributes, so they stay
channel-agnostic. ``certainty`` says whether the provider may have acted on
the request, which decides whether a resend can produce a duplicate.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "Certainty",
    "CircuitOpenError",
    "CommandError",
    "ConfigError",
    "DeliveryError",
    "ErrorScope",
    "KeyStoreError",
    "MessageValidationError",
    "OmniChannelError",
    "PermanentDeliveryError",
    "PluginError",
    "RateLimitedError",
    "SenderUnavailableError",
    "ServiceStateError",
    "StoreError",
    "TransientDeliveryError",
    "UnknownChannelError",
    "UnknownCommandError",
    "WebhookError",
]


class Certainty(enum.StrEnum):
    """Whether the provider may have acted on a failed request."""

    NOT_SENT = "not_sent"
    """The request never left the process (or never reached the provider): resending is safe."""
    REJECTED = "rejected"
    """A complete response said no: nothing was delivered."""
    UNKNOWN = "unknown"
    """The request may have been processed (read timeout, reset after write): a resend may duplicate."""


class ErrorScope(enum.StrEnum):
    """What a delivery error is about: who would have to change for it to succeed."""

    MESSAGE = "message"
    RECIPIENT = "recipient"
    SENDER = "sender"
    ACCOUNT = "account"
    APP = "app"


class OmniChannelError(Exception):
    """Base class of every error raised by omnichannel and its plugins."""

    def __reduce__(self) -> tuple[object, ...]:
        # Our constructors take other arguments than the formatted message in
        # ``args``, so rebuild from the attributes instead of calling __init__.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[OmniChannelError], args: tuple[object, ...], state: dict[str, object]
) -> OmniChannelError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _bulleted(headline: str, lines: Iterable[str]) -> str:
    lines = list(lines)
    if not lines:
        return headline
    return headline + "\n" + "\n".join(f"  - {line}" for line in lines)


class ConfigError(OmniChannelError, ValueError):
    """Raised when configuration (file, environment or arguments) is malformed.

    ``errors`` holds one line per problem, each starting with the path of the
    offending key, for example ``plugins.whatsapp.token: required field missing``.
    """

    def __init__(self, errors: Iterable[str], *, source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        headline = "invalid configuration" + (f" in {source}" if source else "")
        super().__init__(_bulleted(headline + ":", self.errors))


class PluginError(OmniChannelError):
    """Raised when a plugin cannot be imported, registered, configured or started."""

    def __init__(self, plugin_name: str, reason: str) -> None:
        self.plugin_name = plugin_name
        self.reason = reason
        super().__init__(f"plugin {plugin_name!r}: {reason}")


class MessageValidationError(OmniChannelError, ValueError):
    """Raised before sending when a message is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[str], *, message_id: str | None = None) -> None:
        self.problems = list(problems)
        self.message_id = message_id
        super().__init__(_bulleted("message is invalid:", self.problems))


class UnknownChannelError(OmniChannelError, LookupError):
    """Raised when no enabled plugin owns the requested channel."""

    def __init__(self, channel: str, *, available: Iterable[str] = (), reason: str | None = None) -> None:
        self.channel = channel
        self.available = sorted(available)
        self.reason = reason
        if reason is not None:
            super().__init__(f"channel {channel!r} is not available: {reason}")
            return
        hint = f" (available: {', '.join(self.available)})" if self.available else ""
        super().__init__(f"no enabled plugin provides channel {channel!r}{hint}")


class ServiceStateError(OmniChannelError, RuntimeError):
    """Raised when the service is used before ``start()`` (or ``async with``) or after ``stop()``."""


class CommandError(OmniChannelError):
    """Raised when the command bus cannot run a command."""


class KeyStoreError(OmniChannelError):
    """The idempotency key store could not answer (unreachable, locked, closed): the caller must not send."""


class StoreError(OmniChannelError):
    """The message store could not answer (unreachable, locked, closed, a broken schema)."""


class UnknownCommandError(CommandError, LookupError):
    """Raised when a command is dispatched (or decoded) for which no handler is registered."""

    def __init__(self, command: str) -> None:
        self.command = command
        super().__init__(f"no handler is registered for command {command!r}")


class DeliveryError(OmniChannelError):
    """A message could not be delivered by its channel.

    :param detail: what went wrong, written for a person (never a secret).
    :param channel: the channel that failed.
    :param message_id: our id of the message, when known.
    :param code: the provider's error code (e.g. a Graph API ``error.code``).
    :param http_status: the HTTP status of the provider's answer, if any.
    :param certainty: whether the provider may have acted on the request.
    :param scope: what the error is about (message, recipient, sender, account, app).
    :param retry_after: seconds the provider asked us to wait, if it said.
    :param unknown_code: the provider gave a ``code`` the channel does not know (it was
        classified by the HTTP status alone): a worker dead-letters such a message as
        ``unknown_error_code``, so that new codes get noticed.
    """

    retryable: bool = False
    default_certainty: Certainty = Certainty.REJECTED

    def __init__(
        self,
        detail: str,
        *,
        channel: str | None = None,
        message_id: str | None = None,
        code: int | str | None = None,
        http_status: int | None = None,
        certainty: Certainty | None = None,
        scope: ErrorScope | None = None,
        retry_after: float | None = None,
        unknown_code: bool = False,
    ) -> None:
        self.detail = detail
        self.channel = channel
        self.message_id = message_id
        self.code = code
        self.http_status = http_status
        self.certainty = certainty or self.default_certainty
        self.scope = scope
        self.retry_after = retry_after
        self.unknown_code = unknown_code
        super().__init__(detail)

    def __str__(self) -> str:
        context = [
            f"{name}={value}"
            for name, value in (
                ("channel", self.channel),
                ("code", self.code),
                ("http_status", self.http_status),
            )
            if value is not None
        ]
        return f"{self.detail} ({', '.join(context)})" if context else self.detail


class TransientDeliveryError(DeliveryError):
    """Raised when delivery failed for a reason that may go away: timeouts, 5xx, connection errors."""

    retryable = True


class RateLimitedError(TransientDeliveryError):
    """Raised when the provider throttled us; ``scope`` says whose budget ran out.

    ``retry_after`` is the provider's (or a limiter's) advised wait in seconds.
    """


class CircuitOpenError(TransientDeliveryError):
    """Raised without calling the provider when the sender's circuit breaker is open."""

    default_certainty = Certainty.NOT_SENT


class PermanentDeliveryError(DeliveryError):
    """Raised when delivery will fail again unchanged (bad recipient, unknown template, ...)."""


class SenderUnavailableError(DeliveryError):
    """Raised when the sender itself cannot send: bad token, missing permission, locked account.

    Not retryable: an operator must act. Messages should be parked, not dead-lettered.
    """


class WebhookError(OmniChannelError):
    """Raised by a webhook route for an inbound request it rejects; ``status`` is the HTTP answer."""

    def __init__(self, detail: str, *, status: int = 400) -> None:
        self.detail = detail
        self.status = status
        super().__init__(detail)
