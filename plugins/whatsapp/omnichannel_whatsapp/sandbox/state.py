"""What the sandbox knows and remembers: its settings, the messages it accepted, the webhooks it sent.

Every part of the sandbox (the Graph routes, the limits, the faults, the
webhook delivery, the control API) reads and writes one ``SandboxState``.
Time comes from an injected ``Clock`` and chance from a seeded ``random.Random``,
so a test (or a benchmark) that fixes both sees the same run every time.
"""

from __future__ import annotations

import base64
import itertools
import random
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from omnichannel import Clock, SystemClock

__all__ = ["RecordedMessage", "SandboxSettings", "SandboxState", "WebhookRecord"]


@attrs.frozen
class SandboxSettings:
    """How the sandbox behaves. The defaults behave like a healthy WhatsApp account.

    Identity and credentials (what the plugin must be configured with):

    :param phone_number_id: the only phone-number id that exists (others: 400 / code 100, subcode 33).
    :param waba_id: the only WhatsApp Business Account id that exists.
    :param access_token: the Bearer token it accepts (any other: 401 / code 190).
    :param app_secret: signs the webhooks it sends (``X-Hub-Signature-256``).

    Behaviour:

    :param webhook_url: where status webhooks go; ``None`` sends none.
    :param throughput_mps: per phone number; beyond it, 130429.
    :param pair_interval_s, pair_burst: per recipient, one message per interval with this
        burst; beyond it, 131056.
    :param not_on_whatsapp: recipients (digits) that are accepted, then fail by webhook with 131026.
    :param outside_window: recipients whose 24 h window is closed: a non-template message is
        accepted, then fails by webhook with 131047.
    :param templates_file: a JSON or TOML seed of templates; ``None`` uses the shipped examples.
    :param delivered_after_s, read_after_s: delays of the ``delivered`` and ``read`` webhooks
        after ``sent``.
    :param read_probability: the share of delivered messages that are read.
    :param duplicate_probability, reorder_probability: the share of webhooks sent twice, and
        the share of status pairs delivered out of order, as Meta does.
    :param seed: the seed of every random choice.
    """

    host: str = "127.0.0.1"
    port: int = 0
    phone_number_id: str = "106540352242922"
    display_phone_number: str = "15550783881"
    waba_id: str = "102290129340398"
    access_token: str = "sandbox-access-token"
    app_secret: str = "sandbox-app-secret"
    webhook_url: str | None = None
    throughput_mps: float = 80.0
    pair_interval_s: float = 6.0
    pair_burst: int = 45
    not_on_whatsapp: tuple[str, ...] = ("15550000404",)
    outside_window: tuple[str, ...] = ("15550000424",)
    templates_file: str | None = None
    delivered_after_s: float = 0.05
    read_after_s: float = 0.1
    read_probability: float = 0.7
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0
    seed: int = 0


@attrs.define
class RecordedMessage:
    """A message the send endpoint accepted."""

    wamid: str
    body: dict[str, Any]
    received_at: datetime
    recipient: str
    """The digits of ``to``: the ``wa_id``."""


@attrs.define
class WebhookRecord:
    """One webhook delivery attempt and its answer."""

    url: str
    body: bytes
    statuses: list[tuple[str, str]]
    """(wamid, status) pairs in the body."""
    sent_at: datetime
    answer_status: int | None = None
    """The HTTP status the receiver answered; ``None`` when the request failed."""
    error: str | None = None


@attrs.define
class SandboxState:
    """The sandbox's memory; shared by all of its parts."""

    settings: SandboxSettings
    clock: Clock = attrs.field(factory=SystemClock)
    rng: random.Random = attrs.field(init=False)
    messages: list[RecordedMessage] = attrs.field(factory=list)
    webhooks: list[WebhookRecord] = attrs.field(factory=list)
    counters: Counter[str] = attrs.field(factory=Counter)
    """Requests and outcomes by name (``requests``, ``accepted``, ``error.130429``, ``webhooks.sent`` ...)."""
    templates: list[dict[str, Any]] = attrs.field(factory=list)
    """The template definitions, as ``GET /{waba}/message_templates`` returns them."""
    accepted_listeners: list[Callable[[RecordedMessage], None]] = attrs.field(factory=list)
    """Called for each accepted message (the webhook delivery schedules its statuses)."""
    reset_listeners: list[Callable[[], None]] = attrs.field(factory=list)
    """Called by ``reset()`` (the rate limits forget their budgets)."""
    _ids: itertools.count[int] = attrs.field(factory=itertools.count)

    def __attrs_post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)

    def new_wamid(self) -> str:
        """A new message id shaped like Meta's: ``wamid.`` and base64."""
        raw = f"sandbox.{self.settings.phone_number_id}.{next(self._ids):012d}".encode()
        return "wamid." + base64.b64encode(raw).decode()

    def reset(self) -> None:
        """Forget messages, webhooks and counters, reseed, and tell the listeners."""
        self.messages.clear()
        self.webhooks.clear()
        self.counters.clear()
        self.rng.seed(self.settings.seed)
        for listener in self.reset_listeners:
            listener()

    def accept(self, body: dict[str, Any], recipient: str) -> RecordedMessage:
        """Record an accepted message, tell the listeners, and return it."""
        record = RecordedMessage(self.new_wamid(), body, self.clock.now(), recipient)
        self.messages.append(record)
        self.counters["accepted"] += 1
        for listener in self.accepted_listeners:
            listener(record)
        return record
