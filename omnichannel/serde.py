"""The one converter between our attrs classes and plain data (JSON, TOML, environment).

``make_converter()`` builds a strict converter: a string is never silently
turned into a number, unknown keys are errors, and every problem is reported
with the path of the offending value by ``format_errors``. The service owns one
instance (``service.converter``); plugins register their own hooks on it or on
a ``.copy()``. Nobody touches ``cattrs.global_converter``.

Values read from environment variables arrive as ``EnvStr``, a ``str`` that
remembers its variable: only those are parsed into numbers, booleans and lists.
"""

from __future__ import annotations

import difflib
import enum
import hmac
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from .message import (
    Buttons,
    Content,
    CurrencyParam,
    DateTimeParam,
    ListMenu,
    LocationParam,
    Media,
    MediaParam,
    Param,
    Template,
    Text,
    TextParam,
)

__all__ = ["EnvStr", "InvalidField", "InvalidValue", "Secret", "format_errors", "make_converter"]

REDACTED = "**********"


class EnvStr(str):
    """A string read from the environment variable ``source``; it may be parsed."""

    source: str

    def __new__(cls, value: str, source: str) -> EnvStr:
        self = super().__new__(cls, value)
        self.source = source
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # type: ignore[override]
        return (str(self), self.source)


@attrs.frozen(repr=False)
class Secret:
    """A secret string (token, key, password) that never shows itself.

    ``repr``, ``str`` and the converter's unstructure all give a redacted
    placeholder; only ``reveal()`` returns the value.
    """

    _value: str = attrs.field(eq=False, hash=False)

    def reveal(self) -> str:
        """Return the secret itself: pass it to the provider, never to a log."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)


class InvalidValue(ValueError):
    """A structuring error whose message is already written for a person."""


class InvalidField(InvalidValue):
    """Raised by an attrs validator: field ``field`` has a bad value.

    ``format_errors`` reports it at the field's own path
    (``http.timeout_s: must be > 0``), which a plain ``ValueError`` cannot give.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(problem)


def _describe(value: object) -> str:
    if isinstance(value, EnvStr):
        return f"{str(value)!r} (from ${value.source})"
    return f"{type(value).__name__} {value!r}"


def _kind(value: object) -> str:
    if isinstance(value, EnvStr):
        return f"str (from ${value.source})"
    return type(value).__name__


def _structure_optional_int_or_str(value: object, tp: Any) -> int | str | None:
    return None if value is None else _structure_int_or_str(value, tp)


def _structure_str(value: object, _: type) -> str:
    if isinstance(value, str):
        return str(value)  # a plain str, also for an EnvStr
    raise InvalidValue(f"expected a string, got {_describe(value)}")


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, EnvStr):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidValue(f"expected an integer, got {_describe(value)}")


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, EnvStr):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise InvalidValue(f"expected a number, got {_describe(value)}")


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _structure_bool(value: object, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, EnvStr):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise InvalidValue(f"expected true or false, got {_describe(value)}")


def _structure_datetime(value: object, _: type) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidValue(f"expected an ISO 8601 date-time, got {_describe(value)}")


def _structure_secret(value: object, _: type) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str) and value:
        return Secret(str(value))
    # Never echo the value: it may be the secret in the wrong place.
    raise InvalidValue(f"expected a non-empty secret string, got {type(value).__name__}")


def _is_str_sequence(tp: Any) -> bool:
    origin = get_origin(tp)
    if origin not in (tuple, list, frozenset, set, Sequence):
        return False
    args = get_args(tp)
    return bool(args) and args[0] is str and (origin is not tuple or args[1:] in ((...,), ()))


def _str_sequence_hook(tp: Any) -> Callable[[object, Any], object]:
    origin = get_origin(tp)
    container: Callable[[Any], object] = tuple if origin is Sequence else origin

    def structure(value: object, _: Any) -> object:
        if isinstance(value, EnvStr):
            return container(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
            raise InvalidValue(f"expected a list of strings, got {_describe(value)}")
        items, problems = [], []
        for index, item in enumerate(value):
            try:
                items.append(_structure_str(item, str))
            except InvalidValue as exc:
                exc.__notes__ = [IterableValidationNote(f"item {index}", index, str)]
                problems.append(exc)
        if problems:
            raise IterableValidationError(f"While structuring {tp}", problems, tp)
        return container(items)

    return structure


def _structure_int_or_str(value: object, _: Any) -> int | str:
    """Provider error codes: numbers (Graph) or strings (other vendors)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidValue(f"expected an integer or a string, got {_describe(value)}")


def _table_hook(tp: Any, converter: cattrs.Converter) -> Callable[[object, Any], object]:
    """Structure attrs classes and mappings only from tables, with a clear error otherwise."""
    inner = make_dict_structure_fn(tp, converter) if attrs.has(tp) else converter.gen_structure_mapping(tp)

    def structure(value: object, _: Any) -> object:
        if not isinstance(value, Mapping):
            # The type only: a value found where a table belongs may be a misplaced secret.
            raise InvalidValue(f"expected a table, got {_kind(value)}")
        try:
            return inner(value, tp)
        except ClassValidationError as exc:
            more = _validator_problems(converter, tp, value, exc) if attrs.has(tp) else []
            if not more:
                raise
            raise ClassValidationError(exc.message, [*exc.exceptions, *more], tp) from None

    return structure


def _validator_problems(
    converter: cattrs.Converter, tp: type, value: Mapping[str, Any], exc: ClassValidationError
) -> list[Exception]:
    """Run the validators of the fields that did structure, so one bad type does not hide them.

    cattrs stops before ``__init__`` when any field fails, and attrs validators run in ``__init__``.
    """
    with_notes, without_notes = exc.group_exceptions()
    if without_notes or not with_notes:
        return []  # __init__ ran (and raised): the validators have spoken
    failed = {getattr(note, "name", None) for _, note in with_notes}
    problems: list[Exception] = []
    for field in attrs.fields(tp):
        if field.validator is None or field.name in failed or field.name not in value:
            continue
        try:
            field.validator(None, field, converter.structure(value[field.name], field.type))
        except InvalidField as problem:
            found = InvalidValue(str(problem))
        except (ValueError, TypeError):
            continue  # a validator that needs the instance, or a value that fails to structure
        else:
            continue
        found.__notes__ = [AttributeValidationNote(str(found), field.name, field.type)]
        problems.append(found)
    return problems


def _is_table(tp: Any) -> bool:
    origin: object = get_origin(tp)
    return origin in (dict, Mapping) or (isinstance(tp, type) and attrs.has(tp))


def _structure_enum(value: object, tp: type[enum.Enum]) -> enum.Enum:
    try:
        return tp(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in tp)
        raise InvalidValue(f"expected one of {allowed}, got {_describe(value)}") from None


_CONTENT_TAGS: dict[type, str] = {
    Text: "text",
    Template: "template",
    Media: "media",
    Buttons: "buttons",
    ListMenu: "list",
}
_PARAM_TAGS: dict[type, str] = {
    TextParam: "text",
    CurrencyParam: "currency",
    DateTimeParam: "date_time",
    MediaParam: "media",
    LocationParam: "location",
}


def _register_tagged_union(converter: cattrs.Converter, union: Any, tags: Mapping[type, str]) -> None:
    """(Un)structure the members of ``union`` as tables with a ``type`` key naming the member."""
    classes = {tag: cls for cls, tag in tags.items()}
    allowed = ", ".join(repr(tag) for tag in classes)

    def structure(value: object, _: Any) -> object:
        if not isinstance(value, Mapping):
            raise InvalidValue(f"expected a table with a 'type' key, got {_describe(value)}")
        tag = value.get("type")
        if tag not in classes:
            raise InvalidValue(f"'type' must be one of {allowed}, got {tag!r}")
        rest = {k: v for k, v in value.items() if k != "type"}
        return converter.structure(rest, classes[tag])

    def unstructure(value: Any) -> dict[str, Any]:
        return {"type": tags[type(value)], **converter.unstructure(value, type(value))}

    converter.register_structure_hook(union, structure)
    converter.register_unstructure_hook(union, unstructure)


def make_converter() -> cattrs.Converter:
    """Build the strict converter the service owns (see the module docstring)."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(datetime, _structure_datetime)
    converter.register_unstructure_hook(datetime, datetime.isoformat)
    converter.register_structure_hook(Secret, _structure_secret)
    converter.register_unstructure_hook(Secret, lambda _: REDACTED)
    converter.register_structure_hook_factory(_is_table, _table_hook)
    converter.register_structure_hook_factory(_is_str_sequence, _str_sequence_hook)
    converter.register_structure_hook(int | str, _structure_int_or_str)
    converter.register_structure_hook(int | str | None, _structure_optional_int_or_str)
    # StrEnum is registered by name: otherwise the str hooks above win by MRO.
    for base in (enum.Enum, enum.StrEnum):
        converter.register_structure_hook(base, _structure_enum)
        converter.register_unstructure_hook(base, lambda member: member.value)
    _register_tagged_union(converter, Param, _PARAM_TAGS)
    _register_tagged_union(converter, Content, _CONTENT_TAGS)
    return converter


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _message(exc: BaseException) -> str:
    if isinstance(exc, InvalidValue):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError | TypeError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def format_errors(exc: BaseException, path: str = "") -> list[str]:
    """Turn a cattrs structuring error into lines ``<path>: <problem>``.

    ``path`` is the dotted location of the structured value, e.g. ``plugins.whatsapp``.
    Our own validators' messages are kept as written.
    """
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without_notes = exc.group_exceptions()
        lines: list[str] = []
        for inner, note in with_notes:
            name = getattr(note, "name", None)
            key: str | int = name if name is not None else getattr(note, "index", "?")
            lines.extend(format_errors(inner, _join(path, key)))
        for inner in without_notes:
            lines.extend(format_errors(inner, path))
        return lines
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        lines = []
        for key in sorted(exc.extra_fields):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{_join(path, key)}: unknown key{hint}")
        return lines
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in format_errors(inner, path)]
    if isinstance(exc, InvalidField):
        path = _join(path, exc.field)
    return [f"{path or '$'}: {_message(exc)}"]
