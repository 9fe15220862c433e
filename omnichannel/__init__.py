"""omnichannel: send messages to people over many channels and know what happened to them.

The public API is everything in ``__all__``; plugins use nothing else.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .cli import service_from_context
from .clock import Clock, SystemClock
from .commands import BulkResult, CommandBus, InProcessTransport, SendBulk, SendMessage, Transport
from .config import (
    HttpConfig,
    PluginSettings,
    ServerConfig,
    ServiceConfig,
    load_config,
    setting,
)
from .errors import (
    Certainty,
    CircuitOpenError,
    CommandError,
    ConfigError,
    DeliveryError,
    ErrorScope,
    MessageValidationError,
    OmniChannelError,
    PermanentDeliveryError,
    PluginError,
    RateLimitedError,
    SenderUnavailableError,
    ServiceStateError,
    TransientDeliveryError,
    UnknownChannelError,
    UnknownCommandError,
    WebhookError,
)
from .events import (
    CircuitStateChanged,
    DeliveryFailed,
    Event,
    InboundMessage,
    ListenerFailed,
    MessageSent,
    RetryScheduled,
    SendLimited,
    ServiceStarted,
    ServiceStopping,
    StatusChanged,
    TemplateUsed,
)
from .extensions import Channel, Route, Sender
from .hookspecs import hookimpl
from .message import (
    Buttons,
    ButtonType,
    Content,
    CurrencyParam,
    DateTimeParam,
    DeliveryStatus,
    ErrorInfo,
    ListMenu,
    ListRow,
    ListSection,
    LocationParam,
    Media,
    MediaKind,
    MediaParam,
    Message,
    Param,
    Receipt,
    ReplyButton,
    Template,
    TemplateButton,
    Text,
    TextParam,
    new_message_id,
)
from .serde import EnvStr, InvalidField, InvalidValue, Secret, format_errors, make_converter
from .server import make_app
from .service import EventStats, OmniChannelService
from .sync import SyncOmniChannelService

try:
    __version__ = version("omnichannel")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "BulkResult",
    "ButtonType",
    "Buttons",
    "Certainty",
    "Channel",
    "CircuitOpenError",
    "CircuitStateChanged",
    "Clock",
    "CommandBus",
    "CommandError",
    "ConfigError",
    "Content",
    "CurrencyParam",
    "DateTimeParam",
    "DeliveryError",
    "DeliveryFailed",
    "DeliveryStatus",
    "EnvStr",
    "ErrorInfo",
    "ErrorScope",
    "Event",
    "EventStats",
    "HttpConfig",
    "InProcessTransport",
    "InboundMessage",
    "InvalidField",
    "InvalidValue",
    "ListMenu",
    "ListRow",
    "ListSection",
    "ListenerFailed",
    "LocationParam",
    "Media",
    "MediaKind",
    "MediaParam",
    "Message",
    "MessageSent",
    "MessageValidationError",
    "OmniChannelError",
    "OmniChannelService",
    "Param",
    "PermanentDeliveryError",
    "PluginError",
    "PluginSettings",
    "RateLimitedError",
    "Receipt",
    "ReplyButton",
    "RetryScheduled",
    "Route",
    "Secret",
    "SendBulk",
    "SendLimited",
    "SendMessage",
    "Sender",
    "SenderUnavailableError",
    "ServerConfig",
    "ServiceConfig",
    "ServiceStarted",
    "ServiceStateError",
    "ServiceStopping",
    "StatusChanged",
    "SyncOmniChannelService",
    "SystemClock",
    "Template",
    "TemplateButton",
    "TemplateUsed",
    "Text",
    "TextParam",
    "TransientDeliveryError",
    "Transport",
    "UnknownChannelError",
    "UnknownCommandError",
    "WebhookError",
    "__version__",
    "format_errors",
    "hookimpl",
    "load_config",
    "make_app",
    "make_converter",
    "new_message_id",
    "service_from_context",
    "setting",
]
