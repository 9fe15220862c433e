"""Status webhooks of the sandbox, sent the way Meta sends them.

For every message the send endpoint accepts, ``WebhookDispatcher`` plans the
statuses Meta would report and POSTs them to ``settings.webhook_url``, on the
sandbox's clock:

* ``sent`` at once, ``delivered`` ``delivered_after_s`` later, and, for a share
  ``read_probability`` of the messages, ``read`` ``read_after_s`` after ``sent``;
* a recipient in ``not_on_whatsapp`` gets only ``failed`` with 131026, and one in
  ``outside_window`` gets ``failed`` with 131047 for anything but a template;
* every status carries ``recipient_id``, ``timestamp`` (Unix seconds, a string),
  the ``biz_opaque_callback_data`` of the sent message, and, for ``sent`` and
  ``delivered``, ``pricing`` and ``conversation``;
* with ``duplicate_probability`` a notification is delivered twice, and with
  ``reorder_probability`` a status is held back until the next one was
  delivered (``delivered`` before ``sent``), as Meta does.

Every body is serialised once (``json.dumps(..., ensure_ascii=True)``) and
signed over exactly those bytes (``X-Hub-Signature-256: sha256=<HMAC of the
app secret>``). A delivery that fails (an answer other than 2xx, a timeout, a
refused connection) is retried with exponential back-off on the clock, up to
``max_attempts`` attempts. Every attempt is a ``WebhookRecord`` in
``state.webhooks`` and counts in ``state.counters``: ``webhooks.sent`` (2xx),
``webhooks.failed`` (anything else), ``webhooks.retried``, ``webhooks.gave_up``,
``webhooks.duplicated``, ``webhooks.reordered``.

All random choices for a message are drawn from ``state.rng`` when it is
accepted, so a seeded run makes the same choices; the order in which one
message's statuses are delivered is fixed by the plan (the retries of failed
deliveries run on their own).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import attrs

from .state import RecordedMessage, SandboxState, WebhookRecord

__all__ = ["ERROR_HREF", "PlannedStatus", "WebhookDispatcher", "sign", "status_error"]

log = logging.getLogger("omnichannel_whatsapp.sandbox.webhooks")

ERROR_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
SIGNATURE_HEADER = "X-Hub-Signature-256"
_CONVERSATION_S = 24 * 3600

_STATUS_ERRORS = {
    131026: ("Message undeliverable", "Message Undeliverable."),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number.",
    ),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131050: (
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business",
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business",
    ),
    131053: ("Media upload error", "Unable to upload the media used in the message."),
    132015: ("Template is paused", "Template is paused due to low quality so it cannot be sent."),
}


def status_error(code: int, title: str | None = None, details: str | None = None) -> dict[str, Any]:
    """A webhook error object: ``{code, title, message, error_data: {details}, href}``."""
    known_title, known_details = _STATUS_ERRORS.get(code, ("Something went wrong", "Unknown error."))
    title = title or known_title
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details or known_details},
        "href": ERROR_HREF,
    }


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


@attrs.frozen
class PlannedStatus:
    """One status of a message, as planned when the message was accepted.

    :param status: ``sent``, ``delivered``, ``read`` or ``failed``.
    :param happened_s: when it happened, in seconds after the message was accepted (its timestamp).
    :param deliver_s: when its webhook goes out, in seconds after the message was accepted.
    :param duplicate: delivered twice.
    :param error: the error object of a ``failed`` status.
    """

    status: str
    happened_s: float
    deliver_s: float
    duplicate: bool = False
    error: dict[str, Any] | None = None


def _timestamp(when: datetime) -> str:
    return str(int(when.timestamp()))


class WebhookDispatcher:
    """Plans and sends the status webhooks of accepted messages.

    :param state: the sandbox's state; the dispatcher registers itself in
        ``state.accepted_listeners``.
    :param http: the session to send with; ``None``: ``start()`` opens one and ``stop()`` closes it.
    :param max_attempts: attempts per notification before giving up.
    :param retry_base_s: the wait before the first retry; doubled for each next one.
    :param request_timeout_s: how long one attempt may take.
    """

    def __init__(
        self,
        state: SandboxState,
        http: aiohttp.ClientSession | None = None,
        *,
        max_attempts: int = 5,
        retry_base_s: float = 1.0,
        request_timeout_s: float = 10.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.state = state
        self.http = http
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.request_timeout_s = request_timeout_s
        self._owns_http = False
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        state.accepted_listeners.append(self._on_accepted)

    # ---------------------------------------------------------------- life

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pending(self) -> int:
        """Status plans and deliveries scheduled or in flight."""
        return len(self._tasks)

    def start(self, http: aiohttp.ClientSession | None = None) -> None:
        """Begin sending webhooks for accepted messages (call it with the event loop running)."""
        if http is not None:
            self.http = http
        if self.http is None:
            self.http = aiohttp.ClientSession()
            self._owns_http = True
        if self._on_accepted not in self.state.accepted_listeners:
            self.state.accepted_listeners.append(self._on_accepted)
        self._running = True

    async def stop(self) -> None:
        """Stop: cancel what is scheduled, and close the session if ``start()`` opened it."""
        self._running = False
        if self._on_accepted in self.state.accepted_listeners:
            self.state.accepted_listeners.remove(self._on_accepted)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_http and self.http is not None:
            await self.http.close()
            self.http = None
            self._owns_http = False

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait until no webhook is scheduled or in flight (retries included).

        :param timeout_s: give up after this many (real) seconds.
        :raises TimeoutError: when ``timeout_s`` passed first.
        """
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.wait(list(self._tasks))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.state.counters["webhooks.crashed"] += 1
            log.error("sandbox webhook task failed", exc_info=task.exception())

    # ---------------------------------------------------------------- planning

    def _chance(self, probability: float) -> bool:
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        return self.state.rng.random() < probability

    def plan(self, record: RecordedMessage) -> list[PlannedStatus]:
        """The statuses of ``record`` and when they go out (draws the random choices)."""
        settings = self.state.settings
        recipient = record.recipient
        is_template = record.body.get("type") == "template"
        failure = None
        if recipient in settings.not_on_whatsapp:
            failure = 131026
        elif recipient in settings.outside_window and not is_template:
            failure = 131047
        if failure is not None:
            duplicate = self._chance(settings.duplicate_probability)
            return [PlannedStatus("failed", 0.0, 0.0, duplicate, status_error(failure))]
        delivered_s = max(settings.delivered_after_s, 0.0)
        ladder = [("sent", 0.0), ("delivered", delivered_s)]
        if self._chance(settings.read_probability):
            ladder.append(("read", max(settings.read_after_s, delivered_s)))
        planned = [
            PlannedStatus(status, at, at, self._chance(settings.duplicate_probability))
            for status, at in ladder
        ]
        # Reordering: a status held back until the next one is out, then delivered right after it.
        i = 0
        while i < len(planned) - 1:
            if self._chance(settings.reorder_probability):
                first, second = planned[i], planned[i + 1]
                planned[i] = attrs.evolve(second)
                planned[i + 1] = attrs.evolve(first, deliver_s=second.deliver_s)
                self.state.counters["webhooks.reordered"] += 1
                i += 2
            else:
                i += 1
        return planned

    def _on_accepted(self, record: RecordedMessage) -> None:
        url = self.state.settings.webhook_url
        if not self._running or not url:
            return
        self._spawn(self._run_plan(url, record, self.plan(record)))

    # ---------------------------------------------------------------- payloads

    def _category(self, body: dict[str, Any]) -> str:
        if body.get("type") != "template":
            return "service"
        template = body.get("template")
        if not isinstance(template, dict):
            return "utility"
        name = template.get("name")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        for known in self.state.templates:
            if known.get("name") == name and known.get("language") in (code, None):
                category = known.get("category")
                if isinstance(category, str) and category:
                    return category.lower()
        return "utility"

    def status_object(self, record: RecordedMessage, planned: PlannedStatus) -> dict[str, Any]:
        """The ``statuses[]`` item of ``planned``."""
        happened = record.received_at + timedelta(seconds=planned.happened_s)
        status: dict[str, Any] = {
            "id": record.wamid,
            "status": planned.status,
            "timestamp": _timestamp(happened),
            "recipient_id": record.recipient,
        }
        callback = record.body.get("biz_opaque_callback_data")
        if isinstance(callback, str):
            status["biz_opaque_callback_data"] = callback
        if planned.status == "failed":
            status["errors"] = [planned.error or status_error(131000)]
            return status
        if planned.status in ("sent", "delivered"):
            category = self._category(record.body)
            key = f"{self.state.settings.phone_number_id}:{record.recipient}:{category}"
            conversation: dict[str, Any] = {"id": hashlib.sha256(key.encode()).hexdigest()[:32]}
            if planned.status == "sent":
                conversation["expiration_timestamp"] = _timestamp(
                    record.received_at + timedelta(seconds=_CONVERSATION_S)
                )
            conversation["origin"] = {"type": category}
            status["conversation"] = conversation
            status["pricing"] = {
                "billable": category != "service",
                "pricing_model": "PMP",
                "type": "free_customer_service" if category == "service" else "regular",
                "category": category,
            }
        return status

    def notification(self, statuses: list[dict[str, Any]]) -> dict[str, Any]:
        """The whole notification carrying ``statuses``."""
        settings = self.state.settings
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": settings.waba_id,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": settings.display_phone_number,
                                    "phone_number_id": settings.phone_number_id,
                                },
                                "statuses": statuses,
                            },
                        }
                    ],
                }
            ],
        }

    # ---------------------------------------------------------------- delivery

    async def _run_plan(self, url: str, record: RecordedMessage, plan: list[PlannedStatus]) -> None:
        clock = self.state.clock
        at = 0.0
        for planned in plan:
            if planned.deliver_s > at:
                await clock.sleep(planned.deliver_s - at)
                at = planned.deliver_s
            status = self.status_object(record, planned)
            body = json.dumps(self.notification([status]), ensure_ascii=True).encode("ascii")
            pairs = [(record.wamid, planned.status)]
            self.state.counters[f"statuses.{planned.status}"] += 1
            for copy in range(2 if planned.duplicate else 1):
                if copy:
                    self.state.counters["webhooks.duplicated"] += 1
                if not await self._attempt(url, body, pairs):
                    self._spawn(self._retry(url, body, pairs))

    async def _retry(self, url: str, body: bytes, pairs: list[tuple[str, str]]) -> None:
        for attempt in range(2, self.max_attempts + 1):
            self.state.counters["webhooks.retried"] += 1
            await self.state.clock.sleep(self.retry_base_s * 2 ** (attempt - 2))
            if await self._attempt(url, body, pairs):
                return
        self.state.counters["webhooks.gave_up"] += 1
        log.warning("sandbox webhook to %s given up after %d attempts: %s", url, self.max_attempts, pairs)

    async def _attempt(self, url: str, body: bytes, pairs: list[tuple[str, str]]) -> bool:
        """One POST of ``body``; whether the receiver answered 2xx."""
        record = WebhookRecord(url=url, body=body, statuses=list(pairs), sent_at=self.state.clock.now())
        self.state.webhooks.append(record)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self.state.settings.app_secret),
            "X-Hub-Signature": "sha1="
            + hmac.new(self.state.settings.app_secret.encode(), body, hashlib.sha1).hexdigest(),
            "User-Agent": "facebookexternalua",
        }
        http = self._session()
        try:
            async with http.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            ) as answer:
                record.answer_status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        ok = record.answer_status is not None and 200 <= record.answer_status < 300
        if not ok and record.error is None:
            record.error = f"answered HTTP {record.answer_status}"
        self.state.counters["webhooks.sent" if ok else "webhooks.failed"] += 1
        return ok

    def _session(self) -> aiohttp.ClientSession:
        if self.http is None:
            raise RuntimeError("the webhook dispatcher is not started")
        return self.http

    # ---------------------------------------------------------------- handshake

    async def handshake(self, verify_token: str, *, challenge: str | None = None) -> bool:
        """Meta's verification handshake against ``webhook_url``: whether it echoed the challenge.

        ``GET <webhook_url>?hub.mode=subscribe&hub.verify_token=...&hub.challenge=...`` must
        answer 200 with exactly the challenge as its body.
        """
        url = self.state.settings.webhook_url
        if not url:
            raise RuntimeError("settings.webhook_url is not set: there is nobody to verify")
        challenge = challenge or str(self.state.rng.randrange(10**9, 10**10))
        params = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
        try:
            async with self._session().get(
                url, params=params, timeout=aiohttp.ClientTimeout(total=self.request_timeout_s)
            ) as answer:
                ok = answer.status == 200 and (await answer.text()) == challenge
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("sandbox webhook handshake with %s failed: %s", url, exc)
            ok = False
        self.state.counters["handshake.ok" if ok else "handshake.failed"] += 1
        return ok
