"""The checks of a template send against the state's templates, in Graph's order and with its errors.

``_Templates`` finds a definition by (name, language) or by id in
``state.templates``. ``_check_template`` reads the ``template`` object of a
send, finds its definition (132001), refuses a paused (132015) or disabled
(132016) one, then compares what was sent with what the definition needs:
header and body parameters, named or positional (132012, 132000), buttons
(132012, 132000, 131008) and the texts of the parameters (132018).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from .graph_errors import GraphError, _invalid, _missing, _not_valid, _one_of, _path, _required, _wrong_type
from .send_checks import _check_media_source, _number, _object, _string
from .state import SandboxState

__all__ = [
    "AUTHENTICATION_PARAM_MAX",
    "BODY_ONLY_TEXT_PARAM_MAX",
    "BODY_TEXT_PARAM_MAX",
    "HEADER_TEXT_PARAM_MAX",
    "SENDABLE_STATUSES",
]


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_SPACES = re.compile(r" {5,}")
_MEDIA_HEADERS = {
    "IMAGE": "image",
    "VIDEO": "video",
    "GIF": "video",
    "DOCUMENT": "document",
    "LOCATION": "location",
}
"""Header format of a definition -> the parameter type a send carries for it."""
_BUTTON_SUB_TYPES = {
    "QUICK_REPLY": "quick_reply",
    "URL": "url",
    "COPY_CODE": "copy_code",
    "OTP": "url",
    "FLOW": "flow",
    "CATALOG": "catalog",
    "MPM": "mpm",
}
"""Definition button type -> the ``sub_type`` of the button component that fills it."""
_BUTTON_PARAMETER = {
    "quick_reply": "payload",
    "url": "text",
    "copy_code": "coupon_code",
    "flow": "action",
    "catalog": "action",
    "mpm": "action",
}
"""Button ``sub_type`` -> the type of its parameter."""
_REQUIRED_BUTTONS = frozenset({"URL", "COPY_CODE", "OTP", "MPM"})
_COMPONENT_TYPES = frozenset({"header", "body", "button", "carousel", "limited_time_offer", "order_status"})
_PARAMETER_TYPES = frozenset(
    {
        "action",
        "coupon_code",
        "currency",
        "date_time",
        "document",
        "image",
        "limited_time_offer",
        "location",
        "order_status",
        "payload",
        "product",
        "text",
        "video",
    }
)
_LOCALIZABLE = frozenset({"text", "currency", "date_time"})
HEADER_TEXT_PARAM_MAX: Final = 60
BODY_TEXT_PARAM_MAX: Final = 1024
BODY_ONLY_TEXT_PARAM_MAX: Final = 32768
AUTHENTICATION_PARAM_MAX: Final = 15
SENDABLE_STATUSES: Final = frozenset({"APPROVED"})


def _camel(button_type: str) -> str:
    """``QUICK_REPLY`` -> ``QuickReply``, as Meta names button types in details."""
    return "".join(part.capitalize() for part in button_type.split("_"))


def _placeholders(text: object) -> list[str]:
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text)))


class _Spec(NamedTuple):
    """What a send of one template definition must carry."""

    named: bool
    header: str | None
    """The header's format (TEXT, IMAGE, ...), ``None`` without a header."""
    header_params: list[str]
    body_params: list[str]
    buttons: dict[int, str]
    """Index -> button type (URL, QUICK_REPLY, ...)."""
    url_variables: frozenset[int]
    """Indexes of URL buttons whose URL ends in a variable."""
    body_only: bool
    authentication: bool


def _spec(template: Mapping[str, Any]) -> _Spec:
    components = [c for c in template.get("components") or () if isinstance(c, Mapping)]
    by_type = {str(c.get("type") or "").upper(): c for c in components}
    header, body, buttons = by_type.get("HEADER"), by_type.get("BODY"), by_type.get("BUTTONS")
    header_format = str(header.get("format") or "TEXT").upper() if header is not None else None
    header_text = header.get("text") if header is not None and header_format == "TEXT" else None
    used = _placeholders(header_text) + _placeholders(body.get("text") if body is not None else None)
    fmt = str(template.get("parameter_format") or "").upper()
    named = fmt == "NAMED" or (fmt != "POSITIONAL" and any(not p.isdigit() for p in used))
    button_types: dict[int, str] = {}
    url_variables = set()
    for index, button in enumerate(buttons.get("buttons") or () if buttons is not None else ()):
        if isinstance(button, Mapping):
            button_types[index] = str(button.get("type") or "").upper()
            if button_types[index] == "URL" and _placeholders(button.get("url")):
                url_variables.add(index)
    return _Spec(
        named=named,
        header=header_format,
        header_params=_placeholders(header_text),
        body_params=_placeholders(body.get("text") if body is not None else None),
        buttons=button_types,
        url_variables=frozenset(url_variables),
        body_only=set(by_type) <= {"BODY"},
        authentication=str(template.get("category") or "").upper() == "AUTHENTICATION",
    )


class _Param(NamedTuple):
    kind: str
    name: str | None
    text: str | None
    """The value of a ``text`` parameter (checked for 132018)."""


class _Button(NamedTuple):
    sub_type: str
    params: list[_Param]


class _Templates:
    """Finds templates by (name, language) and by id in ``state.templates``, without scanning it.

    The index holds positions in the list and is checked at every use, so that
    the control API may replace, reorder or edit ``state.templates`` freely:
    a stale entry (or a miss) rebuilds the index once.
    """

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._list_key: tuple[int, int] | None = None
        self._by_key: dict[tuple[object, object], int] = {}
        self._by_id: dict[str, int] = {}

    def _current(self) -> list[dict[str, Any]]:
        templates = self._state.templates
        if (id(templates), len(templates)) != self._list_key:
            self._rebuild(templates)
        return templates

    def _rebuild(self, templates: list[dict[str, Any]]) -> None:
        self._by_key, self._by_id = {}, {}
        for position, template in enumerate(templates):
            if isinstance(template, Mapping):
                self._by_key.setdefault((template.get("name"), template.get("language")), position)
                self._by_id.setdefault(str(template.get("id")), position)
        self._list_key = (id(templates), len(templates))

    def find(self, name: str, language: str) -> Mapping[str, Any] | None:
        """The template ``name`` in exactly ``language``."""
        templates = self._current()
        for attempt in range(2):
            position = self._by_key.get((name, language))
            if position is not None and position < len(templates):
                template = templates[position]
                if template.get("name") == name and template.get("language") == language:
                    return template
            if attempt == 0:
                self._rebuild(templates)
        return None

    def by_id(self, template_id: str) -> Mapping[str, Any] | None:
        templates = self._current()
        for attempt in range(2):
            position = self._by_id.get(template_id)
            if position is not None and position < len(templates):
                template = templates[position]
                if str(template.get("id")) == template_id:
                    return template
            if attempt == 0:
                self._rebuild(templates)
        return None


def _check_template(index: _Templates, body: Mapping[str, Any]) -> None:
    template = _object(body, "template")
    name = _string(template, "template", "name")
    language = _object(template, "template", "language")
    code = _string(language, "template", "language", "code")
    components = template.get("components")
    if components is None:
        components = []
    if not isinstance(components, list):
        raise _wrong_type(["template", "components"], "an array")
    header, body_params, buttons = _parse_components(components)

    definition = index.find(name, code)
    if definition is None:
        raise GraphError(132001, details=f"template name ({name}) does not exist in {code}")
    status = str(definition.get("status") or "").upper()
    if status == "PAUSED":
        raise GraphError(132015)
    if status == "DISABLED":
        raise GraphError(132016)
    if status not in SENDABLE_STATUSES:
        raise GraphError(132001, details=f"template name ({name}) does not exist in {code}")

    spec = _spec(definition)
    _check_header(spec, header)
    _check_body(spec, body_params)
    _check_buttons(spec, buttons)
    _check_parameter_texts(spec, header, body_params)


def _parse_components(
    components: list[Any],
) -> tuple[list[_Param] | None, list[_Param] | None, dict[int, _Button]]:
    """The header's and body's parameters (``None`` when the component was not sent) and the buttons."""
    header: list[_Param] | None = None
    body: list[_Param] | None = None
    buttons: dict[int, _Button] = {}
    for i, component in enumerate(components):
        keys: list[str | int] = ["template", "components", i]
        if not isinstance(component, dict):
            raise _wrong_type(keys, "a JSON object")
        kind = _string(component, *keys, "type")
        kind = kind.lower()
        if kind not in _COMPONENT_TYPES:
            raise _one_of([*keys, "type"], sorted(_COMPONENT_TYPES), kind)
        raw = component.get("parameters")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise _wrong_type([*keys, "parameters"], "an array")
        params = [_parameter(p, [*keys, "parameters", j]) for j, p in enumerate(raw)]
        if kind == "header":
            header = (header or []) + params
        elif kind == "body":
            body = (body or []) + params
        elif kind == "button":
            sub_type = _string(component, *keys, "sub_type")
            raw_index = component.get("index")
            if raw_index is None or raw_index == "":
                raise _required(*keys, "index")
            text_index = str(raw_index)
            if isinstance(raw_index, bool) or not text_index.isdigit() or int(text_index) > 9:
                raise _invalid(
                    f"Param {_path(*keys, 'index')} must be a button index from 0 to 9, got {raw_index!r}"
                )
            if int(text_index) in buttons:
                raise _not_valid(f"buttons: Button at index {text_index} is given more than once")
            buttons[int(text_index)] = _Button(sub_type.lower(), params)
    return header, body, buttons


def _parameter(raw: object, keys: list[str | int]) -> _Param:
    if not isinstance(raw, dict):
        raise _wrong_type(keys, "a JSON object")
    kind = _string(raw, *keys, "type")
    kind = kind.lower()
    if kind not in _PARAMETER_TYPES:
        raise _one_of([*keys, "type"], sorted(_PARAMETER_TYPES), kind)
    name = raw.get("parameter_name")
    if name is not None and (not isinstance(name, str) or not name):
        raise _wrong_type([*keys, "parameter_name"], "a non-empty string")
    value = raw.get(kind)
    mandatory = f"Parameter '{kind}' is mandatory for component parameter type '{kind}'"
    if kind in ("text", "payload", "coupon_code"):
        if not isinstance(value, str) or not value:
            raise _invalid(mandatory)
        return _Param(kind, name, value if kind == "text" else None)
    if not isinstance(value, dict):
        raise _invalid(mandatory)
    if kind == "currency":
        for field in ("fallback_value", "code", "amount_1000"):
            if value.get(field) in (None, ""):
                raise _invalid(f"Parameter '{field}' is mandatory for parameter type 'currency'")
        amount = value["amount_1000"]
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise _wrong_type([*keys, "currency", "amount_1000"], "an integer")
    elif kind == "date_time":
        if value.get("fallback_value") in (None, ""):
            raise _invalid("Parameter 'fallback_value' is mandatory for parameter type 'date_time'")
    elif kind in ("image", "video", "document"):
        _check_media_source(value, [*keys, kind])
    elif kind == "location":
        _number(value, *keys, "location", "latitude")
        _number(value, *keys, "location", "longitude")
    return _Param(kind, name, None)


def _count_error(where: str, given: int, expected: int) -> GraphError:
    return GraphError(
        132000,
        details=f"{where}: number of localizable_params ({given}) does not match "
        f"the expected number of params ({expected})",
    )


def _format_error(where: str, expected: str, received: str) -> GraphError:
    return GraphError(132012, details=f"{where}: Format mismatch, expected {expected}, received {received}")


def _check_style(where: str, spec: _Spec, params: list[_Param]) -> None:
    """Named parameters for a NAMED template, positional ones for a POSITIONAL one (132012)."""
    localizable = [p for p in params if p.kind in _LOCALIZABLE]
    if spec.named and any(p.name is None for p in localizable):
        raise _format_error(where, "NAMED", "POSITIONAL")
    if not spec.named and any(p.name is not None for p in localizable):
        raise _format_error(where, "POSITIONAL", "NAMED")


def _check_placeholders(where: str, spec: _Spec, expected: list[str], params: list[_Param]) -> None:
    if len(params) != len(expected):
        raise _count_error(where, len(params), len(expected))
    if spec.named:
        given = [p.name for p in params if p.name is not None]
        if sorted(given) != sorted(expected):
            raise GraphError(
                132000,
                details=f"{where}: parameter names ({', '.join(given)}) do not match the expected "
                f"parameter names ({', '.join(expected)})",
            )


def _check_header(spec: _Spec, given: list[_Param] | None) -> None:
    params = given or []
    media = [p for p in params if p.kind not in _LOCALIZABLE]
    if spec.header in _MEDIA_HEADERS:
        kind = _MEDIA_HEADERS[spec.header]
        if not params:
            raise _format_error("header", spec.header, "UNKNOWN")
        if params[0].kind != kind:
            raise _format_error("header", spec.header, params[0].kind.upper())
        if len(params) > 1:
            raise _count_error("header", len(params), 1)
        return
    if media:
        raise _format_error("header", spec.header or "UNKNOWN", media[0].kind.upper())
    _check_style("header", spec, params)
    _check_placeholders("header", spec, spec.header_params, params)


def _check_body(spec: _Spec, given: list[_Param] | None) -> None:
    params = given or []
    for param in params:
        if param.kind not in _LOCALIZABLE:
            raise _format_error("body", "TEXT", param.kind.upper())
    _check_style("body", spec, params)
    _check_placeholders("body", spec, spec.body_params, params)


def _check_buttons(spec: _Spec, given: dict[int, _Button]) -> None:
    for index, button in sorted(given.items()):
        button_type = spec.buttons.get(index)
        if button_type is None:
            raise _not_valid(f"buttons: Button at index {index} does not exist in the template")
        expected_sub_type = _BUTTON_SUB_TYPES.get(button_type)
        if expected_sub_type is None or (button_type == "URL" and index not in spec.url_variables):
            if button.params:
                raise _count_error(
                    f"buttons: Button at index {index} of type {_camel(button_type)}", len(button.params), 0
                )
            continue
        if button.sub_type != expected_sub_type:
            raise _format_error(
                f"buttons: Button at index {index} of type {_camel(button_type)}",
                expected_sub_type.upper(),
                button.sub_type.upper(),
            )
        if len(button.params) > 1:
            raise _count_error(
                f"buttons: Button at index {index} of type {_camel(button_type)}", len(button.params), 1
            )
        parameter_type = _BUTTON_PARAMETER[expected_sub_type]
        if button.params and button.params[0].kind != parameter_type:
            raise _format_error(
                f"buttons: Button at index {index} of type {_camel(button_type)}",
                parameter_type.upper(),
                button.params[0].kind.upper(),
            )
    for index, button_type in sorted(spec.buttons.items()):
        required = button_type in _REQUIRED_BUTTONS and (button_type != "URL" or index in spec.url_variables)
        sent = given.get(index)
        if required and (sent is None or not sent.params):
            raise _missing(
                f"buttons: Button at index {index} of type {_camel(button_type)} requires a parameter"
            )


def _check_parameter_texts(spec: _Spec, header: list[_Param] | None, body: list[_Param] | None) -> None:
    """No new line, tab or more than 4 consecutive spaces, and the length limits (132018)."""
    body_max = BODY_ONLY_TEXT_PARAM_MAX if spec.body_only else BODY_TEXT_PARAM_MAX
    if spec.authentication:
        body_max = AUTHENTICATION_PARAM_MAX
    for where, params, limit in (
        ("header", header or [], HEADER_TEXT_PARAM_MAX),
        ("body", body or [], body_max),
    ):
        for position, param in enumerate(params):
            if param.text is None:
                continue
            if "\n" in param.text or "\t" in param.text or _SPACES.search(param.text):
                raise GraphError(
                    132018,
                    details=f"{where}: Param text cannot have new-line/tab characters "
                    "or more than 4 consecutive spaces",
                )
            if len(param.text) > limit:
                raise GraphError(
                    132018,
                    details=f"{where}: Parameter at index {position} "
                    f"exceeds the parameter length limit {limit}",
                )
