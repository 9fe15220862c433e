"""URLs with passwords, made safe to print: ``printable_url`` for logs, ``redact_url`` for config show."""

from __future__ import annotations

import pytest

from omnichannel import printable_url, redact_url


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("amqp://guest:guest@rabbit:5672/vhost", "amqp://rabbit:5672/vhost"),
        ("postgresql://app:pw@db/messages?sslpassword=x", "postgresql://db/messages"),
        ("sqlite:///keys.sqlite3?mode=rw", "sqlite:///keys.sqlite3"),
        ("/var/lib/omnichannel/keys.sqlite3", "/var/lib/omnichannel/keys.sqlite3"),
        ("redis://host:notaport/0", "redis://host/0"),
        ("redis://[::1/0", "<unparsable url>"),
    ],
)
def test_printable_url_keeps_no_credential(url, printed):
    assert printable_url(url) == printed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:**********@127.0.0.1:6379/0"),
        ("amqp://guest:guest@rabbit:5672/", "amqp://guest:**********@rabbit:5672/"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://[::1/0", "<unparsable url>"),
    ],
)
def test_redact_url_masks_the_password_only(url, shown):
    assert redact_url(url) == shown
