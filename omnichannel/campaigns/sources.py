"""Recipients of a campaign, streamed from CSV or JSON Lines, and the content made from each row.

:func:`read_rows` never loads a whole file: it yields one :class:`Row` at a time, with the
line number it started on. A line that cannot be read (bad JSON, a wrong number of CSV
columns) becomes a row with an ``error``; reading goes on with the next line. Only problems
with the file as a whole (it cannot be opened, the CSV header has no recipient column) raise
:class:`SourceError`.

The content of each row's message comes from a spec: :class:`TemplateSpec` fills a
template's body parameters from the row's columns, :class:`TextSpec` fills ``{column}``
placeholders of a text. A row that lacks what the spec needs gets a problem naming the
column, never the row's values.
"""

from __future__ import annotations

import csv
import json
import os
import string
from collections.abc import Generator, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Self, TypeAlias

import attrs

from ..errors import OmniChannelError
from ..message import Template, Text, TextParam, _str_tuple

__all__ = [
    "RECIPIENT_ALIASES",
    "ContentSpec",
    "Row",
    "RowProblem",
    "RowReader",
    "SourceError",
    "TemplateSpec",
    "TextSpec",
    "read_rows",
]

RECIPIENT_ALIASES = ("phone", "to")
"""Columns taken as the recipient when the default ``recipient`` column is absent."""

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class SourceError(OmniChannelError, ValueError):
    """Raised when a recipients file cannot be read at all (not for one bad line)."""


class RowProblem(ValueError):
    """A row cannot become a message; ``str()`` names the column, never a value."""


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Row:
    """One recipient line of the file.

    :param line: the file's line number where the row starts (1 is the first line).
    :param recipient: the recipient column's value, stripped; ``None`` when missing or empty.
    :param values: every column of the row by name (the recipient's included).
    :param error: why the line could not be read; the row is then skipped.
    :param recipient_column: the column the recipient was read from.
    """

    line: int
    recipient: str | None
    values: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen, hash=False)
    error: str | None = None
    recipient_column: str | None = None


class RowReader:
    """An iterator of :class:`Row` over one open file; close it (or use ``with``) when done early.

    It closes the file itself once the last row was read.
    """

    def __init__(self, handle: IO[str], *, format: str, recipient_column: str, close: bool) -> None:
        self.format = format
        self._handle = handle
        self._close = close
        self._requested = recipient_column
        self.columns: tuple[str, ...] | None = None
        """The CSV header; ``None`` for JSON Lines."""
        self.recipient_column: str | None = None
        """CSV: the column the recipients are read from (``recipient_column`` or an alias)."""
        self._rows: Generator[Row, None, None]
        if format == "csv":
            try:
                self._rows = self._csv_rows(csv.reader(handle))
            except BaseException:
                if close:
                    handle.close()
                raise
        else:
            self._rows = self._jsonl_rows()

    def _recipient_of(self, names: Mapping[str, object] | tuple[str, ...]) -> str | None:
        if self._requested in names:
            return self._requested
        if self._requested == "recipient":
            return next((alias for alias in RECIPIENT_ALIASES if alias in names), None)
        return None

    def _csv_rows(self, reader: Any) -> Generator[Row, None, None]:
        """Read the header now; return the generator of the rows after it."""
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise SourceError(f"line 1: unreadable CSV header: {exc}") from None
        except UnicodeDecodeError as exc:
            raise SourceError(f"the file is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        if not header:
            raise SourceError("the CSV file is empty: a header row naming the columns is required")
        self.columns = columns = tuple(name.strip() for name in header)
        column = self._recipient_of(columns)
        if column is None:
            aliases = " or ".join(map(repr, RECIPIENT_ALIASES))
            also = f" (nor {aliases})" if self._requested == "recipient" else ""
            raise SourceError(
                f"the CSV header has no {self._requested!r} column{also}; columns: {', '.join(columns)}"
            )
        self.recipient_column = column
        return self._csv_body(reader, columns, column)

    @staticmethod
    def _csv_body(reader: Any, columns: tuple[str, ...], column: str) -> Generator[Row, None, None]:
        width = len(columns)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Row(start, None, error=f"unreadable CSV: {exc}")
                continue
            if not fields:
                continue  # a blank line
            if len(fields) != width:
                yield Row(start, None, error=f"expected {width} columns, found {len(fields)}")
                continue
            values = dict(zip(columns, fields, strict=True))
            yield Row(start, values[column].strip() or None, values, recipient_column=column)

    def _jsonl_rows(self) -> Generator[Row, None, None]:
        for number, text in enumerate(self._handle, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError as exc:
                # The decoder's message gives a position, not the line's content.
                yield Row(number, None, error=f"invalid JSON: {exc}")
                continue
            if not isinstance(data, dict):
                yield Row(number, None, error=f"expected a JSON object, found {type(data).__name__}")
                continue
            values: dict[str, str] = {}
            bad = []
            for key, value in data.items():
                if value is None:
                    continue
                if isinstance(value, bool | dict | list):
                    bad.append(key)
                else:
                    values[key] = value if isinstance(value, str) else str(value)
            if bad:
                yield Row(number, None, error=f"columns must be strings or numbers: {', '.join(bad)}")
                continue
            column = self._recipient_of(values)
            recipient = (values[column].strip() or None) if column is not None else None
            yield Row(number, recipient, values, recipient_column=column)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Row:
        try:
            return next(self._rows)
        except StopIteration:
            self.close()
            raise
        except UnicodeDecodeError as exc:
            self.close()
            raise SourceError(f"the file is not UTF-8 text: {exc.reason} at byte {exc.start}") from None

    def close(self) -> None:
        """Stop reading and close the file (if this reader opened it)."""
        self._rows.close()
        if self._close:
            self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _name(source: str | os.PathLike[str] | IO[str]) -> str:
    return os.fsdecode(source) if isinstance(source, str | os.PathLike) else "the stream"


def read_rows(
    source: str | os.PathLike[str] | IO[str],
    *,
    format: str | None = None,
    recipient_column: str = "recipient",
) -> RowReader:
    """Stream the rows of a CSV or JSON Lines file, one at a time.

    :param source: a path, or an open text stream (then give ``format``).
    :param format: ``"csv"`` or ``"jsonl"``; by default from the extension (``.csv``,
        ``.jsonl``, ``.ndjson``).
    :param recipient_column: the column holding the recipient; when it is the default
        ``recipient`` and the file has none, ``phone`` or ``to`` is used.
    :raises SourceError: the file cannot be opened, its format is unknown, or (CSV) its header
        is missing or has no recipient column.
    """
    if format is None:
        suffix = Path(source).suffix.lower() if isinstance(source, str | os.PathLike) else ""
        format = _FORMATS.get(suffix)
        if format is None:
            raise SourceError(
                f"cannot tell the format of {_name(source)}: name it .csv, .jsonl or .ndjson, "
                "or give the format"
            )
    format = "jsonl" if format == "ndjson" else format
    if format not in ("csv", "jsonl"):
        raise SourceError(f"unknown format {format!r}: use csv or jsonl")
    if not isinstance(source, str | os.PathLike):
        return RowReader(source, format=format, recipient_column=recipient_column, close=False)
    try:
        # utf-8-sig: spreadsheets often start CSV files with a byte-order mark.
        handle = open(source, encoding="utf-8-sig", newline="" if format == "csv" else None)  # noqa: SIM115
    except OSError as exc:
        raise SourceError(f"cannot open {os.fsdecode(source)}: {exc.strerror}") from None
    return RowReader(handle, format=format, recipient_column=recipient_column, close=True)


# ---------------------------------------------------------------- content of a row


def _is_position(column: str) -> bool:
    return column.isdigit() and not column.startswith("0")


@attrs.frozen
class TemplateSpec:
    """A template whose body parameters come from each row.

    :param name: the template's name.
    :param language: its language code.
    :param named: ``True`` for named parameters, ``False`` for positional; ``None`` decides
        from the columns: a file with a column ``1`` is positional, else named.
    :param columns: the parameter columns, in order. By default: positional, the columns
        ``1``, ``2``, ... (every other column is ignored); named, every column but the
        recipient's.
    """

    name: str
    language: str = "en_US"
    named: bool | None = None
    columns: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    def content(self, row: Row) -> Template:
        """The row's template.

        :raises RowProblem: a parameter column is missing or empty.
        """
        values = row.values
        named = self.named if self.named is not None else "1" not in values
        columns = list(self.columns)
        if not columns and named:
            columns = [c for c in values if c != row.recipient_column]
        elif not columns:
            positions = sorted(int(c) for c in values if _is_position(c))
            if positions:
                missing = sorted(set(range(1, positions[-1] + 1)) - set(positions))
                if missing:
                    raise RowProblem(f"parameter column {str(missing[0])!r} is missing")
            columns = [str(p) for p in positions]
        params = []
        for column in columns:
            value = values.get(column)
            if value is None:
                raise RowProblem(f"parameter column {column!r} is missing")
            if not value.strip():
                raise RowProblem(f"parameter column {column!r} is empty")
            params.append(TextParam(value, name=column if named else None))
        return Template(self.name, language=self.language, body=params)


def _text_fields(body: str) -> tuple[str, ...]:
    fields = []
    for _, field, _, _ in string.Formatter().parse(body):
        if field is None:
            continue
        if not field or field.isdigit() or any(c in field for c in ".[]"):
            raise ValueError(f"text placeholders must name a column, like {{name}}; got {{{field}}}")
        fields.append(field)
    return tuple(dict.fromkeys(fields))


@attrs.frozen
class TextSpec:
    """A text with ``{column}`` placeholders filled from each row (``{{`` for a literal brace).

    :raises ValueError: for a malformed text or a placeholder that is not a column name.
    """

    body: str
    fields: tuple[str, ...] = attrs.field(init=False)

    @fields.default
    def _fields(self) -> tuple[str, ...]:
        return _text_fields(self.body)

    def content(self, row: Row) -> Text:
        """The row's text.

        :raises RowProblem: a placeholder's column is missing.
        """
        for field in self.fields:
            if field not in row.values:
                raise RowProblem(f"column {field!r} of the text is missing")
        return Text(self.body.format_map(row.values))


ContentSpec: TypeAlias = TemplateSpec | TextSpec
