"""What plugins contribute to the service besides hook results: channels and web routes."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeAlias

import attrs

if TYPE_CHECKING:
    from aiohttp import web

    from .message import Receipt

__all__ = ["Channel", "Handler", "Route", "Sender"]

Sender: TypeAlias = "Callable[[], Awaitable[Receipt]]"
"""A zero-argument coroutine function that performs one delivery attempt."""

Handler: TypeAlias = "Callable[[web.Request], Awaitable[web.StreamResponse]]"
"""An aiohttp request handler."""

_CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def _check_channel_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _CHANNEL_NAME.match(value):
        raise ValueError(
            f"{attribute.name} must be lowercase letters, digits, '-' or '_', "
            f"starting with a letter, at most 64 characters; got {value!r}"
        )


def _str_set(value: Iterable[str]) -> frozenset[str]:
    return frozenset((value,) if isinstance(value, str) else value)


@attrs.frozen
class Channel:
    """A channel a plugin owns, declared through ``register_channels``.

    :param name: the channel's name, as messages and configuration refer to it.
    :param capabilities: what it can carry, e.g. ``{"text", "template", "media"}``;
        the service rejects content a channel does not declare.
    :param description: one line for ``omnichannel plugins``.
    """

    name: str = attrs.field(validator=_check_channel_name)
    capabilities: frozenset[str] = attrs.field(default=frozenset({"text"}), converter=_str_set)
    description: str = ""


def _upper(value: str) -> str:
    return value.upper()


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*"})


def _check_method(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _METHODS:
        raise ValueError(f"{attribute.name} must be one of {sorted(_METHODS)}; got {value!r}")


def _check_path(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"{attribute.name} must start with '/'; got {value!r}")


@attrs.frozen
class Route:
    """A web route a plugin adds to ``omnichannel serve``, through ``register_routes``.

    Channel webhooks conventionally live under ``/webhooks/<channel>``.
    """

    method: str = attrs.field(converter=_upper, validator=_check_method)
    path: str = attrs.field(validator=_check_path)
    handler: Handler = attrs.field(eq=False)
    name: str | None = None
