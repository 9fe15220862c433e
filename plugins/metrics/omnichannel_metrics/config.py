"""Configuration of the metrics plugin: ``[plugins.metrics]``."""

from __future__ import annotations

import re
from typing import Any

import attrs

from omnichannel import InvalidField

__all__ = ["DEFAULT_LATENCY_BUCKETS", "MetricsConfig"]

DEFAULT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds; from a local provider stand-in (milliseconds) to a slow retried send (tens of seconds)."""

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _prefix(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _NAME.match(value):
        raise InvalidField(attribute.name, f"must be a Prometheus name (letters, digits, '_'), got {value!r}")


def _port(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not 0 <= value <= 65535:
        raise InvalidField(attribute.name, f"must be between 0 and 65535, got {value}")


def _path(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.startswith("/"):
        raise InvalidField(attribute.name, f"must start with '/', got {value!r}")


def _buckets(_: object, attribute: attrs.Attribute[Any], value: tuple[float, ...]) -> None:
    if not value or any(b <= 0 for b in value) or list(value) != sorted(set(value)):
        raise InvalidField(attribute.name, f"must be increasing numbers > 0, got {list(value)}")


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise InvalidField(attribute.name, f"must be >= 1, got {value}")


@attrs.frozen
class MetricsConfig:
    """Settings of the metrics plugin.

    :param prefix: the first word of every metric name (``omnichannel_messages_sent_total``).
    :param port: serve ``path`` on this port too, from the process's own small web server: for
        processes without ``omnichannel serve`` (workers, the demo). ``0`` picks a free port
        (logged); ``None`` (default): only ``omnichannel serve``'s route.
    :param host: the address of that server.
    :param path: where the metrics are served, on ``omnichannel serve`` and on ``port``.
    :param latency_buckets: the upper bounds (seconds) of the send latency histogram.
    :param legacy_names: also export the legacy PHP service's series for the ``whatsapp``
        channel, ``whatsapp_circuit_breaker_state{sender}`` (0/1/2, as
        ``circuit_breaker_state``) and ``whatsapp_errors_total`` (failed sends), so that its
        alerts and scrape filters (``whatsapp_.*``) keep working until they are migrated.
    :param max_codes: provider error codes kept as distinct label values per channel; later
        ones are counted as ``other`` (label cardinality stays bounded).
    """

    prefix: str = attrs.field(default="omnichannel", validator=_prefix)
    port: int | None = attrs.field(default=None, validator=_port)
    host: str = "127.0.0.1"
    path: str = attrs.field(default="/metrics", validator=_path)
    latency_buckets: tuple[float, ...] = attrs.field(default=DEFAULT_LATENCY_BUCKETS, validator=_buckets)
    max_codes: int = attrs.field(default=50, validator=_at_least_one)
    legacy_names: bool = True
