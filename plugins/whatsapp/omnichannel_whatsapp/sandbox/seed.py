"""The sandbox's templates: the shipped examples, or a JSON or TOML seed file.

A seed holds template definitions exactly as ``GET /{waba}/message_templates``
lists them (shared WhatsApp spec, section 5). JSON: a list of templates, or an
object with a ``templates`` (or Graph's ``data``) list. TOML: ``[[templates]]``
tables, their components as ``[[templates.components]]``::

    [[templates]]
    name = "order_update"
    language = "en_US"
    category = "UTILITY"          # default UTILITY
    status = "APPROVED"           # default APPROVED

    [[templates.components]]
    type = "BODY"
    text = "Hi {{1}}, your order {{2}} ships {{3}}."

Missing ``id``s are derived from the name and language (stable numeric
strings), ``parameter_format`` from the placeholders. Everything that the
sandbox relies on is checked, and every problem is reported at once in a
``ConfigError`` that names the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omnichannel import ConfigError

__all__ = ["CATEGORIES", "STATUSES", "load_templates", "normalize_templates", "template_id"]

STATUSES = frozenset(
    {
        "APPROVED",
        "PENDING",
        "REJECTED",
        "PAUSED",
        "DISABLED",
        "IN_APPEAL",
        "PENDING_DELETION",
        "DELETED",
        "FLAGGED",
        "REINSTATED",
        "LIMIT_EXCEEDED",
        "ARCHIVED",
        "UNARCHIVED",
        "LOCKED",
    }
)
"""Template statuses Meta uses; only APPROVED ones can be sent."""
CATEGORIES = frozenset({"MARKETING", "UTILITY", "AUTHENTICATION"})

_SHIPPED = "templates.json"
_NAME = re.compile(r"[a-z0-9_]+")
_NAME_MAX = 512
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_ID = re.compile(r"[0-9]+")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_COMPONENT_TYPES = ("HEADER", "BODY", "FOOTER", "BUTTONS")
_HEADER_FORMATS = frozenset({"TEXT", "IMAGE", "VIDEO", "GIF", "DOCUMENT", "LOCATION"})
_BUTTON_TYPES = frozenset(
    {"QUICK_REPLY", "URL", "PHONE_NUMBER", "COPY_CODE", "OTP", "FLOW", "CATALOG", "MPM", "VOICE_CALL"}
)
_KEY_ORDER = ("id", "name", "language", "status", "category", "parameter_format", "components")


def load_templates(path: str | None) -> list[dict[str, Any]]:
    """Read the templates of a seed file, or the shipped examples when ``path`` is ``None``.

    :param path: a ``.json`` or ``.toml`` file.
    :return: the template definitions, each with an ``id``, in the order of the file.
    :raises ConfigError: when the file cannot be read, cannot be parsed, or holds a
        template the sandbox cannot use; every problem is listed.
    """
    if path is None:
        text = resources.files(__package__).joinpath(_SHIPPED).read_text(encoding="utf-8")
        return normalize_templates(json.loads(text), source=f"the shipped {_SHIPPED}")
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(
            [f"templates file: must end in .json or .toml, got {suffix or 'no suffix'!r}"], source=path
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"templates file: cannot be read: {reason}"], source=path) from None
    data: object
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [f"templates file: not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"], source=path
            ) from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"templates file: not TOML: {exc}"], source=path) from None
    return normalize_templates(data, source=path)


def normalize_templates(data: object, *, source: str | None = None) -> list[dict[str, Any]]:
    """Check and complete parsed template definitions (see the module's docstring).

    :param data: a list of templates, or a mapping with a ``templates`` or ``data`` list.
    :param source: what the data came from, for the error.
    :raises ConfigError: listing every problem, each starting with ``templates[i]``.
    """
    if isinstance(data, Mapping):
        key = "templates" if "templates" in data else "data" if "data" in data else None
        if key is None:
            raise ConfigError(["templates: missing (give a list of [[templates]] tables)"], source=source)
        items = data[key]
    else:
        key, items = "templates", data
    if not isinstance(items, list):
        raise ConfigError([f"{key}: must be a list of templates, got {_kind(items)}"], source=source)

    errors: list[str] = []
    templates: list[dict[str, Any]] = []
    seen_keys: dict[tuple[str, str], int] = {}
    seen_ids: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"templates[{i}]"
        if not isinstance(item, Mapping):
            errors.append(f"{where}: must be a table (object), got {_kind(item)}")
            continue
        problems = list(_problems(item))
        errors += [f"{where}.{problem}" for problem in problems]
        if problems:
            continue
        template = _normalized(item)
        name_language = (template["name"], template["language"])
        if name_language in seen_keys:
            errors.append(
                f"{where}: {template['name']!r} in {template['language']} is already templates"
                f"[{seen_keys[name_language]}] (a template is keyed by name and language)"
            )
            continue
        if template["id"] in seen_ids:
            errors.append(
                f"{where}.id: {template['id']} is already the id of templates[{seen_ids[template['id']]}]"
            )
            continue
        seen_keys[name_language] = i
        seen_ids[template["id"]] = i
        templates.append(template)
    if errors:
        raise ConfigError(errors, source=source)
    return templates


def template_id(name: str, language: str) -> str:
    """A stable 16-digit id for a template without one."""
    digest = int(hashlib.sha256(f"{name}\0{language}".encode()).hexdigest(), 16)
    return str(10**15 + digest % (9 * 10**15))


# ---------------------------------------------------------------- checks


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return names.get(type(value), "a table" if isinstance(value, Mapping) else type(value).__name__)


def _placeholders(text: object) -> list[str]:
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text)))


def _problems(item: Mapping[str, Any]) -> Iterator[str]:
    name, language = item.get("name"), item.get("language")
    if not isinstance(name, str) or not name:
        yield "name: required, a string such as 'order_update'"
    elif not _NAME.fullmatch(name) or len(name) > _NAME_MAX:
        yield f"name: only lowercase letters, digits and '_' (at most {_NAME_MAX}), got {name!r}"
    if not isinstance(language, str) or not language:
        yield "language: required, a code such as 'en_US'"
    elif not _LANGUAGE.fullmatch(language):
        yield f"language: must look like 'en' or 'en_US', got {language!r}"
    for field, allowed in (("status", STATUSES), ("category", CATEGORIES)):
        value = item.get(field)
        if value is not None and (not isinstance(value, str) or value.upper() not in allowed):
            yield f"{field}: must be one of {', '.join(sorted(allowed))}, got {value!r}"
    fmt = item.get("parameter_format")
    if fmt is not None and (not isinstance(fmt, str) or fmt.upper() not in ("POSITIONAL", "NAMED")):
        yield f"parameter_format: must be POSITIONAL or NAMED, got {fmt!r}"
    identifier = item.get("id")
    if identifier is not None and (
        isinstance(identifier, bool)
        or not isinstance(identifier, int | str)
        or not _ID.fullmatch(str(identifier))
    ):
        yield f"id: must be a numeric string such as '1192339204654487', got {identifier!r}"
    components = item.get("components")
    if not isinstance(components, list) or not components:
        yield "components: required, a non-empty list (at least a BODY)"
        return
    yield from _component_problems(components, fmt.upper() if isinstance(fmt, str) else None)


def _component_problems(components: list[Any], parameter_format: str | None) -> Iterator[str]:
    seen: set[str] = set()
    placeholders: list[str] = []
    for j, component in enumerate(components):
        where = f"components[{j}]"
        if not isinstance(component, Mapping):
            yield f"{where}: must be a table (object), got {_kind(component)}"
            continue
        kind = component.get("type")
        if not isinstance(kind, str) or kind.upper() not in _COMPONENT_TYPES:
            yield f"{where}.type: must be one of {', '.join(_COMPONENT_TYPES)}, got {kind!r}"
            continue
        kind = kind.upper()
        if kind in seen:
            yield f"{where}: a second {kind}; a template has at most one"
        seen.add(kind)
        text = component.get("text")
        if kind == "HEADER":
            fmt = component.get("format", "TEXT")
            if not isinstance(fmt, str) or fmt.upper() not in _HEADER_FORMATS:
                yield f"{where}.format: must be one of {', '.join(sorted(_HEADER_FORMATS))}, got {fmt!r}"
            elif fmt.upper() == "TEXT":
                if not isinstance(text, str) or not text:
                    yield f"{where}.text: a TEXT header needs its text"
                elif len(_placeholders(text)) > 1:
                    yield f"{where}.text: a header has at most one variable, got {text!r}"
                placeholders += _placeholders(text)
        elif kind in ("BODY", "FOOTER"):
            if not isinstance(text, str) or not text:
                yield f"{where}.text: required, a string"
            elif kind == "FOOTER" and _placeholders(text):
                yield f"{where}.text: a footer has no variables, got {text!r}"
            elif kind == "BODY":
                yield from _positional_problems(f"{where}.text", text)
                placeholders += _placeholders(text)
        else:
            yield from _button_problems(where, component.get("buttons"))
    if "BODY" not in seen:
        yield "components: a BODY is required"
    named = [p for p in placeholders if not p.isdigit()]
    if parameter_format == "POSITIONAL" and named:
        yield f"components: a POSITIONAL template uses {{{{1}}}}, {{{{2}}}}..., got {{{{{named[0]}}}}}"
    elif parameter_format == "NAMED" and len(named) != len(placeholders):
        yield "components: a NAMED template uses {{name}} placeholders, not numbers"
    elif parameter_format is None and named and len(named) != len(placeholders):
        yield "components: do not mix {{1}} and {{name}} placeholders"


def _positional_problems(where: str, text: str) -> Iterator[str]:
    numbers = [int(p) for p in _placeholders(text) if p.isdigit()]
    if numbers and sorted(numbers) != list(range(1, len(numbers) + 1)):
        yield f"{where}: variables must be {{{{1}}}} to {{{{{len(numbers)}}}}}, got {sorted(numbers)}"


def _button_problems(where: str, buttons: object) -> Iterator[str]:
    if not isinstance(buttons, list) or not buttons:
        yield f"{where}.buttons: required, a non-empty list"
        return
    if len(buttons) > 10:
        yield f"{where}.buttons: {len(buttons)} buttons, at most 10"
    for k, button in enumerate(buttons):
        at = f"{where}.buttons[{k}]"
        if not isinstance(button, Mapping):
            yield f"{at}: must be a table (object), got {_kind(button)}"
            continue
        kind = button.get("type")
        if not isinstance(kind, str) or kind.upper() not in _BUTTON_TYPES:
            yield f"{at}.type: must be one of {', '.join(sorted(_BUTTON_TYPES))}, got {kind!r}"
        elif kind.upper() == "URL":
            url = button.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                yield f"{at}.url: a URL button needs an http(s) url, got {url!r}"
            elif len(_placeholders(url)) > 1 or (_placeholders(url) and not url.rstrip().endswith("}}")):
                yield f"{at}.url: at most one variable, at the end of the URL, got {url!r}"


# ---------------------------------------------------------------- completion


def _normalized(item: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a checked template with ids, upper-case enums and the parameter format filled in."""
    # A deep copy holding JSON types only (a TOML date becomes its text).
    data: dict[str, Any] = json.loads(json.dumps(item, default=str))
    name, language = data["name"], data["language"]
    data["id"] = str(data["id"]) if data.get("id") is not None else template_id(name, language)
    data["status"] = str(data.get("status") or "APPROVED").upper()
    data["category"] = str(data.get("category") or "UTILITY").upper()
    components = data["components"]
    for component in components:
        component["type"] = component["type"].upper()
        if component["type"] == "HEADER":
            component["format"] = str(component.get("format", "TEXT")).upper()
        for button in component.get("buttons") or ():
            button["type"] = button["type"].upper()
    fmt = data.get("parameter_format")
    if fmt is None:
        used = [
            p for c in components if c["type"] in ("HEADER", "BODY") for p in _placeholders(c.get("text"))
        ]
        fmt = "NAMED" if any(not p.isdigit() for p in used) else "POSITIONAL"
    data["parameter_format"] = fmt.upper()
    ordered = {key: data.pop(key) for key in _KEY_ORDER}
    return {**ordered, **data}
