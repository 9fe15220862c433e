"""Pick a key store from a URL (the ``key_store`` setting), and the error every store raises."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from ..urls import printable_url

if TYPE_CHECKING:
    from ..clock import Clock
    from .keys import KeyStore

__all__ = ["check_key_store_url", "open_key_store"]

_SQLITE_SUFFIXES = (".sqlite3", ".sqlite", ".db")
_ACCEPTED = (
    "sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3, a path ending in "
    ".sqlite3 or .db, redis://host:6379/0, rediss://host:6380/0 or memory://"
)


def open_key_store(url: str, *, clock: Clock | None = None) -> KeyStore:
    """The key store that ``url`` names; SQLite files are created (with their folder) on first use.

    - ``sqlite:///relative/path.sqlite3`` (three slashes: relative to the working directory),
      ``sqlite:////absolute/path`` (four), or a bare path ending in ``.sqlite3``/``.sqlite``/``.db``;
    - ``redis://…``/``rediss://…`` (needs the ``redis`` package);
    - ``memory://`` (this process only).

    :raises ConfigError: anything else, or Redis without the ``redis`` package.
    """
    kind, target = check_key_store_url(url)
    if kind == "sqlite":
        return _sqlite(target, clock)
    if kind == "redis":
        try:
            import redis  # noqa: F401  (only to say clearly that it is missing)
        except ImportError:
            raise ConfigError(
                [
                    f"key_store: {printable_url(target)!r} needs the 'redis' package; "
                    "install it with: pip install 'omnichannel[redis]'"
                ]
            ) from None
        from .redis import RedisKeyStore

        return RedisKeyStore(target, clock=clock)
    from . import MemoryKeyStore

    return MemoryKeyStore(clock)


def check_key_store_url(url: str) -> tuple[str, str]:
    """What ``url`` names, without opening anything: ``("sqlite", path)``, ``("redis", url)`` or
    ``("memory", "")``.

    :raises ConfigError: a URL that names no key store (the message says what is accepted).
    """
    text = url.strip() if isinstance(url, str) else ""
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme == "sqlite":
        return "sqlite", _sqlite_path(text)
    if scheme in ("redis", "rediss"):
        return "redis", text
    if scheme == "memory":
        if text.lower() != "memory://":
            raise ConfigError([f"key_store: {printable_url(text)!r}: memory:// takes no path or options"])
        return "memory", ""
    if not scheme and text.lower().endswith(_SQLITE_SUFFIXES):
        return "sqlite", os.path.expanduser(text)
    shown = printable_url(text) if text else str(url)
    raise ConfigError([f"key_store: {shown!r} is not a key store URL; expected {_ACCEPTED}"])


def _sqlite_path(url: str) -> str:
    """The file of a ``sqlite:`` URL (SQLAlchemy's convention: ``///`` relative, ``////`` absolute)."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigError(
            [
                f"key_store: {printable_url(url)!r}: a sqlite URL has no host; write sqlite:///relative/path.sqlite3"
            ]
        )
    if parts.query or parts.fragment:
        raise ConfigError([f"key_store: {printable_url(url)!r}: a sqlite URL takes no options"])
    path = unquote(parts.path)[1:]  # the path keeps one slash of '///': drop it
    if not path or path.endswith("/"):
        raise ConfigError([f"key_store: {url!r} names no file; write sqlite:///relative/path.sqlite3"])
    return path


def _sqlite(path: str, clock: Clock | None) -> KeyStore:
    from .sqlite import SqliteKeyStore

    return SqliteKeyStore(Path(path), clock=clock)
