"""The account's approved templates, and whether a template message fits one.

Meta rejects a template message whose name, language, status or parameters do
not match the approved definition (132001, 132000, 132012, 131008), and the
error names neither what was expected nor what was wrong. So the channel lists
the templates of the WhatsApp Business Account once, keeps them in a cache, and
checks every ``Template`` against them before sending::

    registry = TemplateRegistry(client.get_json, config.waba_id, MemoryTemplateCache(300, clock))
    problems = check_template(message.content, await registry.templates())

* ``parse_template`` turns one entry of ``GET /{waba}/message_templates`` into a
  ``TemplateInfo``: what a send must carry (header kind, placeholders, buttons).
* ``check_template`` compares a ``Template`` with the known definitions and says,
  per field, what the template expects.
* ``TemplateRegistry`` lists every page of templates and keeps the raw list in a
  ``TemplateCache``: ``MemoryTemplateCache`` for one process, or
  ``RedisTemplateCache`` so that every worker shares one fetched list. A Redis
  that cannot be reached never stops a send: it reads as a miss.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs

from omnichannel import (
    Clock,
    CurrencyParam,
    LocationParam,
    MediaParam,
    Param,
    PermanentDeliveryError,
    SystemClock,
    Template,
    TextParam,
)

from .template_cache import MemoryTemplateCache, RedisTemplateCache, TemplateCache

__all__ = [
    "ButtonInfo",
    "MemoryTemplateCache",
    "RedisTemplateCache",
    "TemplateCache",
    "TemplateInfo",
    "TemplateRegistry",
    "check_template",
    "parse_template",
]

log = logging.getLogger("omnichannel.whatsapp")

FIELDS = "name,language,status,category,parameter_format,components,id"
"""The fields the registry asks for when it lists templates."""
PAGE_SIZE = 100
MAX_PAGES = 1000
"""A WABA holds at most a few thousand templates; more pages than this means the paging loops."""

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_MEDIA_HEADERS = {"IMAGE": "image", "VIDEO": "video", "GIF": "video", "DOCUMENT": "document"}
"""Header format -> the kind of media parameter a send must carry (a GIF header is sent as a video)."""
_BUTTON_SUB_TYPES = {
    "QUICK_REPLY": "quick_reply",
    "URL": "url",
    "COPY_CODE": "copy_code",
    "OTP": "url",  # authentication templates take the code as a url parameter at index 0
    "FLOW": "flow",
    "CATALOG": "catalog",
    "MPM": "mpm",
}
"""Definition button type -> the ``sub_type`` of the button component sent for it."""
_REQUIRED_BUTTONS = frozenset({"URL", "COPY_CODE", "OTP", "MPM"})
"""Button types that fail the send without a parameter (when they take one at all)."""


# ---------------------------------------------------------------- definitions


class ButtonInfo(NamedTuple):
    """A button of a template definition: its ``index``, ``type`` and whether it takes a parameter."""

    # A tuple, so that ``for index, kind, takes in info.buttons`` reads naturally; the
    # field shadows ``tuple.index``, which nobody calls on a button.
    index: int  # type: ignore[assignment]
    type: str
    takes_parameter: bool

    @property
    def requires_parameter(self) -> bool:
        """Whether a send without a parameter for this button fails (a quick reply's payload is optional)."""
        return self.takes_parameter and self.type in _REQUIRED_BUTTONS

    @property
    def sub_type(self) -> str | None:
        """The ``sub_type`` a parameter for this button is sent with, if it takes one."""
        return _BUTTON_SUB_TYPES.get(self.type) if self.takes_parameter else None


@attrs.frozen
class TemplateInfo:
    """What a send of one approved translation of a template must carry.

    ``header_parameters`` and ``body_parameters`` describe text placeholders:
    a count for ``POSITIONAL`` templates (``{{1}}``), the names in order of
    appearance for ``NAMED`` ones (``{{first_name}}``). A media or location
    header (``header_format`` IMAGE, VIDEO, GIF, DOCUMENT or LOCATION) takes one
    parameter of that kind instead.
    """

    name: str
    language: str
    status: str
    category: str | None = None
    parameter_format: str = "POSITIONAL"
    id: str | None = None
    header_format: str | None = None
    header_parameters: int | tuple[str, ...] = 0
    body_parameters: int | tuple[str, ...] = 0
    buttons: tuple[ButtonInfo, ...] = ()

    @property
    def ref(self) -> str:
        """``'name' (language)``, as problems quote the template."""
        return f"{self.name!r} ({self.language})"


def _placeholders(text: object) -> list[str]:
    """The distinct placeholders of ``text``, in order of first appearance."""
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text)))


def _expected(placeholders: list[str], parameter_format: str) -> int | tuple[str, ...]:
    if parameter_format == "NAMED":
        return tuple(p for p in placeholders if not p.isdigit())
    return sum(1 for p in placeholders if p.isdigit())


def _button(index: int, button: Mapping[str, Any]) -> ButtonInfo:
    kind = str(button.get("type") or "").upper()
    # A URL button takes a parameter only when its URL ends in a variable.
    takes = bool(_placeholders(button.get("url"))) if kind == "URL" else kind in _BUTTON_SUB_TYPES
    return ButtonInfo(index, kind, takes)


def parse_template(data: Mapping[str, Any]) -> TemplateInfo:
    """Read one entry of the template list (``GET /{waba}/message_templates``).

    :raises ValueError: when the entry has no ``name`` or ``language``.
    """
    name, language = data.get("name"), data.get("language")
    if not isinstance(name, str) or not name:
        raise ValueError(f"template entry without a name: {dict(data)!r:.200}")
    if not isinstance(language, str) or not language:
        raise ValueError(f"template {name!r} has no language")
    components = [c for c in data.get("components") or () if isinstance(c, Mapping)]
    by_type = {str(c.get("type") or "").upper(): c for c in components}
    header, body = by_type.get("HEADER"), by_type.get("BODY")
    header_format = str(header.get("format") or "TEXT").upper() if header is not None else None
    header_text = header.get("text") if header is not None and header_format == "TEXT" else None

    parameter_format = str(data.get("parameter_format") or "").upper()
    if parameter_format not in ("POSITIONAL", "NAMED"):
        # Old entries, and lists fetched without the field: the placeholders tell.
        used = _placeholders(header_text) + _placeholders(body.get("text") if body else None)
        parameter_format = "NAMED" if any(not p.isdigit() for p in used) else "POSITIONAL"

    buttons = by_type.get("BUTTONS")
    template_id = data.get("id")
    category = data.get("category")
    return TemplateInfo(
        name=name,
        language=language,
        status=str(data.get("status") or "UNKNOWN").upper(),
        category=str(category) if category is not None else None,
        parameter_format=parameter_format,
        id=str(template_id) if template_id is not None else None,
        header_format=header_format,
        header_parameters=_expected(_placeholders(header_text), parameter_format),
        body_parameters=_expected(_placeholders(body.get("text") if body else None), parameter_format),
        buttons=tuple(
            _button(i, b)
            for i, b in enumerate(buttons.get("buttons") or () if buttons else ())
            if isinstance(b, Mapping)
        ),
    )


def _parse_all(raw: Sequence[Mapping[str, Any]], *, warn: bool) -> list[TemplateInfo]:
    parsed = []
    for entry in raw:
        try:
            parsed.append(parse_template(entry))
        except ValueError as exc:
            if warn:
                log.warning("whatsapp: ignoring a template the Graph API listed: %s", exc)
    return parsed


# ---------------------------------------------------------------- checking a message


def _a(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeio" else f"a {word}"


def _n(count: int, noun: str) -> str:
    if count == 0:
        return f"no {noun}s"
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _describe(param: Param) -> str:
    if isinstance(param, MediaParam):
        return _a(str(param.kind))
    if isinstance(param, LocationParam):
        return "a location"
    if isinstance(param, TextParam):
        return "text"
    return "a currency" if isinstance(param, CurrencyParam) else "a date_time"


def _known(known: Sequence[TemplateInfo], limit: int = 10) -> str:
    names = sorted({t.name for t in known})
    if not names:
        return "the account has no templates"
    shown = ", ".join(names[:limit])
    return f"known: {shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_template(template: Template, known: Sequence[TemplateInfo]) -> list[str]:
    """Problems that Meta would report for ``template`` (132001, 132000, 132012, 131008).

    Each problem names the field and says what the approved template expects,
    for example ``content.body: template 'order_update' (en_US) expects 3
    positional parameters, got 2``. An empty list means the message fits.
    """
    same_name = [t for t in known if t.name == template.name]
    if not same_name:
        return [f"content.name: no template {template.name!r} exists ({_known(known)})"]
    info = next((t for t in same_name if t.language == template.language), None)
    if info is None:
        languages = ", ".join(sorted({t.language for t in same_name}))
        return [
            f"content.language: template {template.name!r} exists in {languages}, not in {template.language}"
        ]
    problems = []
    if info.status != "APPROVED":
        problems.append(
            f"content.name: template {info.ref} is {info.status}, only APPROVED templates can be sent"
        )
    problems.extend(_header_problems(template.header, info))
    problems.extend(_placeholder_problems("body", info.ref, info.body_parameters, template.body))
    problems.extend(_button_problems(template, info))
    return problems


def _header_problems(given: tuple[Param, ...], info: TemplateInfo) -> list[str]:
    fmt = info.header_format
    if fmt is not None and (fmt in _MEDIA_HEADERS or fmt == "LOCATION"):
        kind = _MEDIA_HEADERS.get(fmt, "location")
        fits = len(given) == 1 and (
            isinstance(given[0], LocationParam)
            if kind == "location"
            else isinstance(given[0], MediaParam) and given[0].kind == kind
        )
        if fits:
            return []
        got = "none" if not given else _describe(given[0]) if len(given) == 1 else f"{len(given)} parameters"
        return [
            f"content.header: template {info.ref} has {_a(fmt)} header and needs {_a(kind)} "
            f"parameter with every message, got {got}"
        ]
    if fmt is None:
        if given:
            return [f"content.header: template {info.ref} has no header, got {_n(len(given), 'parameter')}"]
        return []
    if fmt != "TEXT":
        return []  # a header kind this check does not know: let Meta judge it
    media = [p for p in given if isinstance(p, MediaParam | LocationParam)]
    if media:
        got = _describe(media[0])
        return [f"content.header: template {info.ref} has a TEXT header, which takes text, got {got}"]
    return _placeholder_problems("header", info.ref, info.header_parameters, given)


def _placeholder_problems(
    field: str, ref: str, expected: int | tuple[str, ...], given: tuple[Param, ...]
) -> list[str]:
    """Compare the text placeholders of the body or the header with the values given for them."""
    qualifier = "" if field == "body" else f"{field} "
    where = f"content.{field}: template {ref}"
    names = [p.name for p in given if p.name is not None]
    unnamed = len(given) - len(names)
    if given and not expected:
        return [f"{where} takes no {field} parameters, got {len(given)}"]
    if isinstance(expected, tuple):
        wanted = ", ".join(expected)
        if given and not names:
            return [
                f"{where} expects named {qualifier}parameters {wanted}, "
                f"got {_n(unnamed, 'positional parameter')}; give each value its name"
            ]
        missing = [n for n in expected if n not in names]
        unknown = [n for n in names if n not in expected]
        details = [
            label + ", ".join(values)
            for label, values in (("missing: ", missing), ("unknown: ", unknown))
            if values
        ]
        if unnamed:
            details.append(f"{_n(unnamed, 'value')} without a name")
        if not details:
            return []
        return [f"{where} expects named {qualifier}parameters {wanted}; {'; '.join(details)}"]
    expects = f"{where} expects {_n(expected, f'positional {qualifier}parameter')}"
    if names:
        return [f"{expects}, got named ones ({', '.join(names)}); send the values in order, without names"]
    if len(given) != expected:
        return [f"{expects}, got {len(given)}"]
    return []


def _button_problems(template: Template, info: TemplateInfo) -> list[str]:
    problems = []
    by_index = {b.index: b for b in info.buttons}
    for i, given in enumerate(template.buttons):
        where = f"content.buttons[{i}]: template {info.ref}"
        button = by_index.get(given.index)
        if button is None:
            has = _n(len(info.buttons), "button")
            problems.append(f"{where} has no button at index {given.index} (it has {has})")
        elif button.sub_type is None:
            problems.append(
                f"{where} has {_a(button.type)} button at index {button.index}, which takes no parameter"
            )
        elif button.sub_type != given.sub_type:
            problems.append(
                f"{where} has {_a(button.type)} button at index {button.index}, "
                f"which takes {_a(button.sub_type)} parameter, not {given.sub_type}"
            )
    sent = {b.index for b in template.buttons}
    problems.extend(
        f"content.buttons: template {info.ref} has {_a(b.type)} button at index {b.index}, "
        f"which needs {_a(str(b.sub_type))} parameter; none was given"
        for b in info.buttons
        if b.requires_parameter and b.index not in sent
    )
    return problems


# ---------------------------------------------------------------- registry

FetchPage = Callable[[str, Mapping[str, str] | None], Awaitable[dict[str, Any]]]
"""``get_json(path_or_url, params)`` of the Graph client."""


class TemplateRegistry:
    """The templates of one WhatsApp Business Account, fetched page by page and cached.

    :param fetch_page: the Graph client's ``get_json(path_or_url, params)``.
    :param waba_id: the account whose templates are listed; also the cache key.
    :param cache: where the raw list is kept between fetches.
    :param clock: tells how long ago this registry fetched the list (:meth:`fetched_before`).
    """

    def __init__(
        self, fetch_page: FetchPage, waba_id: str, cache: TemplateCache, *, clock: Clock | None = None
    ) -> None:
        self._fetch_page = fetch_page
        self._waba_id = waba_id
        self._cache = cache
        self._clock: Clock = clock or SystemClock()
        self._fetched_at: float | None = None
        self._inflight: asyncio.Task[list[TemplateInfo]] | None = None
        self._parsed: tuple[object, list[TemplateInfo]] | None = None
        """The cached list last parsed, and its parse: a send must not parse every template."""

    @property
    def cache(self) -> TemplateCache:
        """The cache the registry reads and fills."""
        return self._cache

    async def fetch_all(self) -> list[TemplateInfo]:
        """List every template of the account from the Graph API and store the list in the cache.

        :raises DeliveryError: what ``fetch_page`` raises, or ``PermanentDeliveryError``
            when the answer is not a template list or its paging never ends.
        """
        path = f"{self._waba_id}/message_templates"
        first: dict[str, str] = {"fields": FIELDS, "limit": str(PAGE_SIZE)}
        target: str = path
        params: Mapping[str, str] | None = first
        raw: list[dict[str, Any]] = []
        cursors: set[str] = set()
        for _ in range(MAX_PAGES):
            page = await self._fetch_page(target, params)
            data = page.get("data") if isinstance(page, Mapping) else None
            if not isinstance(data, list):
                raise PermanentDeliveryError(
                    f"the template list of WhatsApp Business Account {self._waba_id} "
                    "came back without a 'data' list",
                    channel="whatsapp",
                )
            raw.extend(entry for entry in data if isinstance(entry, dict))
            paging = page.get("paging")
            paging = paging if isinstance(paging, Mapping) else {}
            next_url = paging.get("next")
            if not isinstance(next_url, str) or not next_url:
                break  # Graph sends "next" only when another page exists
            paging_cursors = paging.get("cursors")
            after = paging_cursors.get("after") if isinstance(paging_cursors, Mapping) else None
            if isinstance(after, str) and after:
                if after in cursors:
                    raise PermanentDeliveryError(
                        f"the template list of WhatsApp Business Account {self._waba_id} "
                        f"repeats the paging cursor {after!r}",
                        channel="whatsapp",
                    )
                cursors.add(after)
                # Same path and parameters plus the cursor: the token goes only where we sent it first.
                target, params = path, {**first, "after": after}
            else:
                target, params = next_url, None
        else:
            raise PermanentDeliveryError(
                f"the template list of WhatsApp Business Account {self._waba_id} "
                f"has more than {MAX_PAGES} pages",
                channel="whatsapp",
            )
        await self._cache.put(self._waba_id, raw)
        self._fetched_at = self._clock.monotonic()
        return _parse_all(raw, warn=True)

    def fetched_before(self, seconds: float) -> bool:
        """Whether this registry's last fetch is at least ``seconds`` old (or it never fetched:
        the cached list may come from another process)."""
        return self._fetched_at is None or self._clock.monotonic() - self._fetched_at >= seconds

    async def templates(self, *, refresh: bool = False) -> list[TemplateInfo]:
        """The account's templates: from the cache unless ``refresh`` or it has none.

        Concurrent callers that miss the cache share one fetch.
        """
        if not refresh:
            cached = await self._cache.get(self._waba_id)
            if cached is not None:
                if self._parsed is None or self._parsed[0] is not cached:
                    self._parsed = (cached, _parse_all(cached, warn=False))
                return self._parsed[1]
        if self._inflight is None:
            self._inflight = asyncio.create_task(self.fetch_all())
            self._inflight.add_done_callback(self._fetched)
        # Shielded: one caller giving up must not cancel the fetch the others wait for.
        return await asyncio.shield(self._inflight)

    def _fetched(self, task: asyncio.Task[list[TemplateInfo]]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch nobody awaits any more is not logged as lost

    async def find(self, name: str, language: str) -> TemplateInfo | None:
        """The template ``name`` in ``language`` (exactly, ``en`` is not ``en_US``), if the account has it."""
        for info in await self.templates():
            if info.name == name and info.language == language:
                return info
        return None
