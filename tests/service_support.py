"""Helpers shared by the ``test_service_*.py`` files: a fixed start time and a text message."""

from __future__ import annotations

from datetime import UTC, datetime

from omnichannel import Message, Text

START = datetime(2026, 1, 1, tzinfo=UTC)


def text(recipient: str = "+15551234567", body: str = "hello", **kwargs) -> Message:
    return Message(recipient, Text(body), **kwargs)
