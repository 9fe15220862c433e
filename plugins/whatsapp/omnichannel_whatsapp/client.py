"""A small Graph API client: send a message, read a resource; every failure a ``DeliveryError``.

It uses the service's one ``aiohttp.ClientSession`` (it never opens its own)
and a per-request ``ClientTimeout(total=timeout_s)``. The access token goes
only into the ``Authorization`` header: never into a URL, a log line, a repr
or an error's detail.

Whether a failed request had been written decides whether a resend may
duplicate the message. The request body is a payload that notes when aiohttp
starts writing it; a failure before that is ``not_sent``, after it ``unknown``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import attrs

from omnichannel import (
    Certainty,
    ErrorScope,
    PermanentDeliveryError,
    Secret,
    SenderUnavailableError,
    TransientDeliveryError,
)

from .errors import classify_graph_error, translate_client_error

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter

    from .config import WhatsAppConfig

__all__ = ["GraphClient", "SendResult"]


@attrs.frozen
class SendResult:
    """What the Graph API answered to an accepted send (HTTP 200).

    :param wamid: the message id (``messages[0].id``); status webhooks refer to it.
    :param message_status: ``accepted``, ``held_for_quality_assessment`` or ``paused``
        (template sends); None when absent. None of them means "delivered".
    :param wa_id: the recipient's normalised WhatsApp id; store it rather than the input.
    :param input: the ``to`` value exactly as sent.
    """

    wamid: str
    message_status: str | None
    wa_id: str | None
    input: str | None


class _TrackedBody(aiohttp.BytesPayload):
    """A JSON body that records when aiohttp starts writing it to the connection."""

    written = False

    async def write(self, writer: AbstractStreamWriter) -> None:
        self.written = True
        await super().write(writer)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        self.written = True
        await super().write_with_length(writer, content_length)


class GraphClient:
    """Calls the Graph API with the channel's settings.

    :param http: the service's HTTP session.
    :param config: the channel's settings (URL, version, phone number id, token, timeout).
    """

    def __init__(self, http: aiohttp.ClientSession, config: WhatsAppConfig) -> None:
        self._http = http
        self._config = config
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)

    def __repr__(self) -> str:
        return f"GraphClient(graph_url={self._config.graph_url!r})"

    async def send_message(self, body: Mapping[str, Any]) -> SendResult:
        """POST ``body`` to ``/{phone_number_id}/messages``.

        :return: the wamid and what Meta said about the recipient.
        :raises DeliveryError: a subclass saying whether and when to try again.
        """
        token = self._token(self._config.missing_for_sending())
        url = f"{self._config.graph_url}/{self._config.phone_number_id}/messages"
        text = json.dumps(body, ensure_ascii=False, default=_plain)
        payload = _TrackedBody(text.encode(), content_type="application/json")
        status, answer = await self._request("POST", url, token, data=payload)
        return _send_result(status, answer)

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET ``{graph_url}/{path}`` and return its JSON object.

        :param path: a path below the versioned Graph URL (``"<waba_id>/message_templates"``),
            or a full URL on the same host, such as a ``paging.next`` link.
        :param params: query parameters.
        :raises DeliveryError: a subclass saying whether and when to try again.
        """
        missing = [name for name in self._config.missing_for_sending() if name.endswith(".access_token")]
        token = self._token(missing)
        status, answer = await self._request("GET", self._url_for(path), token, params=params)
        if not isinstance(answer, dict):
            raise TransientDeliveryError(
                f"the Graph API answered HTTP {status} with a body that is not a JSON object",
                http_status=status,
                certainty=Certainty.UNKNOWN,
            )
        return answer

    def _token(self, missing: list[str]) -> Secret:
        """The access token, or a ``SenderUnavailableError`` naming the ``missing`` settings."""
        token = self._config.access_token
        if missing or token is None:
            raise SenderUnavailableError(
                f"whatsapp is not configured: set {', '.join(missing or ['plugins.whatsapp.access_token'])}",
                certainty=Certainty.NOT_SENT,
                scope=ErrorScope.SENDER,
            )
        return token

    def _url_for(self, path: str) -> str:
        if not path.startswith(("http://", "https://")):
            return f"{self._config.graph_url}/{path.lstrip('/')}"
        link, base = urlsplit(path), urlsplit(self._config.graph_url)
        if (link.scheme, link.netloc) != (base.scheme, base.netloc):
            raise PermanentDeliveryError(
                f"refusing to send the access token to {link.netloc or 'a URL without a host'}: "
                f"links must stay on {base.netloc}",
                certainty=Certainty.NOT_SENT,
            )
        # Graph's paging links repeat the token in the query; it belongs in the header only.
        query = urlencode(
            [(k, v) for k, v in parse_qsl(link.query, keep_blank_values=True) if k != "access_token"]
        )
        return urlunsplit(link._replace(query=query))

    async def _request(
        self,
        method: str,
        url: str,
        token: Secret,
        *,
        data: _TrackedBody | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, object]:
        """Make one request; return the 2xx status and parsed body, or raise a ``DeliveryError``."""
        headers = {"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"}
        try:
            async with self._http.request(
                method,
                url,
                headers=headers,
                data=data,
                params=params,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                response_headers = response.headers
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Without a body (GET) we cannot tell, and a read is safe to repeat: say "sent".
            request_sent = data.written if data is not None else True
            error = translate_client_error(exc, request_sent=request_sent, redact=[token.reveal()])
            raise error from exc
        answer = _parse(raw)
        if not 200 <= status < 300:
            raise classify_graph_error(status, answer, response_headers, redact=[token.reveal()])
        return status, answer


def _plain(value: object) -> object:
    """``json.dumps`` fallback: a read-only mapping is a JSON object too."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _parse(raw: bytes) -> object:
    """The JSON of a body, else its text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text.strip() else text
    except ValueError:
        return text


def _send_result(status: int, answer: object) -> SendResult:
    """Read ``{"contacts": [{"input", "wa_id"}], "messages": [{"id", "message_status"}]}``."""
    messages = answer.get("messages") if isinstance(answer, dict) else None
    message = messages[0] if isinstance(messages, list) and messages else None
    wamid = message.get("id") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not isinstance(wamid, str) or not wamid:
        # Meta may have accepted the message: a resend could duplicate it.
        raise TransientDeliveryError(
            f"the Graph API answered HTTP {status} without a message id",
            http_status=status,
            certainty=Certainty.UNKNOWN,
        )
    contacts = answer.get("contacts") if isinstance(answer, dict) else None
    contact = contacts[0] if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict) else {}
    return SendResult(
        wamid=wamid,
        message_status=_text(message.get("message_status")),
        wa_id=_text(contact.get("wa_id")),
        input=_text(contact.get("input")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
