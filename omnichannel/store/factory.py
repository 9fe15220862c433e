"""Pick a message store from a URL, and the error every store raises."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError, StoreError
from ..idempotency.factory import _sqlite_path
from ..urls import printable_url

if TYPE_CHECKING:
    from ..clock import Clock
    from . import MessageStore

__all__ = ["StoreError", "open_message_store"]

_SQLITE_SUFFIXES = (".sqlite3", ".sqlite", ".db")
_ACCEPTED = (
    "sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3, a path ending in .sqlite3 or .db, "
    "or postgresql://user@host:5432/database[?schema=name]"
)


def open_message_store(url: str, *, clock: Clock | None = None) -> MessageStore:
    """The message store that ``url`` names; nothing is opened until first use.

    - ``sqlite:///relative/path.sqlite3`` (three slashes), ``sqlite:////absolute/path`` (four), or a
      bare path ending in ``.sqlite3``/``.sqlite``/``.db``;
    - ``postgresql://…``/``postgres://…`` (needs ``asyncpg``); ``?schema=name`` puts the tables in
      that schema (created if missing), every other option goes to asyncpg.

    :raises ConfigError: anything else, or PostgreSQL without ``asyncpg``.
    """
    text = url.strip() if isinstance(url, str) else ""
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme == "sqlite":
        try:
            path = _sqlite_path(text)
        except ConfigError as exc:  # the key store's wording, with this setting's name
            raise ConfigError([line.replace("key_store:", "store:", 1) for line in exc.errors]) from None
        return _sqlite(path, clock)
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("asyncpg") is None:
            raise ConfigError(
                [
                    f"store: {printable_url(text)!r} needs the 'asyncpg' package; "
                    "install it with: pip install 'omnichannel[postgres]'"
                ]
            )
        from .postgres import PostgresMessageStore, check_schema

        parts = urlsplit(text)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schemas = [value for key, value in query if key == "schema"]
        schema = schemas[-1] if schemas else None
        if schema is not None:
            try:
                check_schema(schema)
            except ValueError as exc:
                raise ConfigError([f"store: {printable_url(text)!r}: {exc}"]) from None
        dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
        return PostgresMessageStore(dsn, clock=clock, schema=schema)
    if not scheme and text.lower().endswith(_SQLITE_SUFFIXES):
        return _sqlite(os.path.expanduser(text), clock)
    shown = printable_url(text) if text else str(url)
    raise ConfigError([f"store: {shown!r} is not a message store URL; expected {_ACCEPTED}"])


def _sqlite(path: str, clock: Clock | None) -> MessageStore:
    from .sqlite import SqliteMessageStore

    return SqliteMessageStore(Path(path), clock=clock)
