"""Configuration of the message-store plugin: ``[plugins.store]``."""

from __future__ import annotations

from typing import Any

import attrs

from omnichannel import InvalidField, redact_url

__all__ = ["DEFAULT_URL", "StoreConfig", "display_url"]

DEFAULT_URL = "sqlite:///omnichannel-messages.sqlite3"
"""A SQLite file in the working directory: no set-up, one process (or a few on one host)."""


def display_url(url: str) -> str:
    """``url`` with its password (if any) masked: the only form of a store URL that is printed or logged."""
    return redact_url(url)


def _url(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise InvalidField(
            attribute.name, "must be a database URL (sqlite:///path or postgresql://user@host/db)"
        )


def _masked_repr(url: str) -> str:
    return repr(display_url(url))


def _retention(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise InvalidField(attribute.name, f"must be > 0 days, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise InvalidField(attribute.name, f"must be > 0, got {value!r}")


@attrs.frozen
class StoreConfig:
    """Settings of the message-store plugin.

    :param url: where messages are kept: ``sqlite:///path/to/file.sqlite3`` (the default, a file
        in the working directory) or ``postgresql://user:password@host:5432/db``. A secret: its
        password never shows in a repr, a log or ``omnichannel config show``.
    :param upgrade_on_start: apply pending schema migrations when the service starts (else run
        ``omnichannel db upgrade`` before starting).
    :param retention_days: after this many days a message's recipient and error details are
        dropped (its counts and times stay for the analytics); applied when the service starts
        and every ``retention_interval_s`` while it runs.
        ``None`` (default): kept.
    :param retention_interval_s: how often a running service applies the retention again.
    :param max_batch: the most events one write of the store takes (events that arrive while
        the store is busy are written together).
    """

    url: str = attrs.field(default=DEFAULT_URL, validator=_url, repr=_masked_repr)
    upgrade_on_start: bool = True
    retention_days: float | None = attrs.field(default=None, validator=_retention)
    retention_interval_s: float = attrs.field(default=3600.0, validator=_positive)
    max_batch: int = attrs.field(default=500, validator=_positive)
