"""Configuration of the WhatsApp channel: ``[plugins.whatsapp]``.

Everything is optional so that an installation without WhatsApp still starts;
sending on the channel without ``phone_number_id`` and ``access_token`` fails
with a ``SenderUnavailableError`` that says what to set. Credentials are
``Secret`` values: they never show in a repr, a log line or ``config show``.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from omnichannel import InvalidField, Secret, setting

__all__ = ["DEFAULT_API_VERSION", "DEFAULT_BASE_URL", "WhatsAppConfig"]

DEFAULT_API_VERSION = "v23.0"
DEFAULT_BASE_URL = "https://graph.facebook.com"
_VERSION = re.compile(r"^v\d+\.\d+$")


def _api_version(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _VERSION.match(value):
        raise InvalidField(attribute.name, f"must look like 'v23.0', got {value!r}")


def _base_url(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.startswith(("http://", "https://")):
        raise InvalidField(attribute.name, f"must be an http(s) URL, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise InvalidField(attribute.name, f"must be > 0, got {value}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise InvalidField(attribute.name, f"must be >= 0, got {value}")


@attrs.frozen
class WhatsAppConfig:
    """Settings of the ``whatsapp`` channel.

    :param phone_number_id: the Graph id of the business phone number (not the number).
    :param waba_id: the WhatsApp Business Account id (templates are listed from it).
    :param access_token: the system-user or app token (``Authorization: Bearer``).
    :param app_secret: signs webhook deliveries (``X-Hub-Signature-256``).
    :param verify_token: answers Meta's webhook verification handshake.
    :param api_version: the Graph API version, e.g. ``v23.0``.
    :param base_url: the Graph API root; point it at the sandbox for tests and demos.
    :param timeout_s: per-request timeout of Graph calls.
    :param template_cache_ttl_s: how long fetched templates are trusted (0: no cache).
    :param redis_url: share the template cache between processes through Redis.
    :param check_templates: check template messages against the approved templates
        before sending (needs ``waba_id``).
    """

    phone_number_id: str | None = setting(default=None, env="WHATSAPP_PHONE_NUMBER_ID")
    waba_id: str | None = setting(default=None, env=("WHATSAPP_WABA_ID", "WHATSAPP_BUSINESS_ACCOUNT_ID"))
    access_token: Secret | None = setting(default=None, env="WHATSAPP_ACCESS_TOKEN")
    app_secret: Secret | None = setting(default=None, env="WHATSAPP_APP_SECRET")
    verify_token: Secret | None = setting(default=None, env="WHATSAPP_VERIFY_TOKEN")
    api_version: str = setting(
        default=DEFAULT_API_VERSION, validator=_api_version, env="WHATSAPP_API_VERSION"
    )
    base_url: str = setting(default=DEFAULT_BASE_URL, validator=_base_url, env="WHATSAPP_BASE_URL")
    timeout_s: float = attrs.field(default=10.0, validator=_positive)
    template_cache_ttl_s: float = attrs.field(default=300.0, validator=_non_negative)
    redis_url: str | None = None
    check_templates: bool = True

    @property
    def graph_url(self) -> str:
        """``<base_url>/<api_version>``, without a trailing slash."""
        return f"{self.base_url.rstrip('/')}/{self.api_version}"

    def missing_for_sending(self) -> list[str]:
        """The settings that sending needs and that are not set."""
        missing = []
        if not self.phone_number_id:
            missing.append("plugins.whatsapp.phone_number_id")
        if self.access_token is None:
            missing.append("plugins.whatsapp.access_token")
        return missing
