"""URLs that may hold a password (Redis, RabbitMQ, PostgreSQL), made safe to print.

- :func:`printable_url`: for messages and log lines: scheme, host, port and path only (no user,
  no password, no query, which may carry credentials too).
- :func:`redact_url`: for showing a configured value (``omnichannel config show``): the URL as
  written, its password replaced by the redaction marker.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .serde import REDACTED

__all__ = ["printable_url", "redact_url"]


def printable_url(url: str) -> str:
    """``url`` without user, password or query, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if not parts.scheme or not parts.netloc:
        return url.split("?", 1)[0]
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by the redaction marker."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable url>"  # it could hold a password we cannot find: show nothing of it
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:{REDACTED}@{host}"))
