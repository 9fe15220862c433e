"""Recipients files: CSV and JSON Lines streamed row by row, and each row's content."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from omnichannel import Template, Text, TextParam
from omnichannel.campaigns import Row, RowProblem, SourceError, TemplateSpec, TextSpec, read_rows


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- CSV


def test_csv_rows_keep_their_line_numbers(tmp_path):
    path = write(tmp_path, "r.csv", "recipient,first_name\n+15550001,Ann\n\n+15550002,Bob\n")
    with read_rows(path) as rows:
        assert rows.columns == ("recipient", "first_name")
        assert rows.recipient_column == "recipient"
        result = list(rows)
    assert [(r.line, r.recipient, dict(r.values)) for r in result] == [
        (2, "+15550001", {"recipient": "+15550001", "first_name": "Ann"}),
        (4, "+15550002", {"recipient": "+15550002", "first_name": "Bob"}),
    ]
    assert all(r.error is None for r in result)


def test_csv_quoted_field_over_two_lines_keeps_the_start_line(tmp_path):
    path = write(tmp_path, "r.csv", 'recipient,note\n+1,"two\nlines"\n+2,x\n')
    assert [(r.line, r.values["note"]) for r in read_rows(path)] == [(2, "two\nlines"), (4, "x")]


def test_csv_wrong_column_count_is_a_row_error_and_reading_goes_on(tmp_path):
    path = write(tmp_path, "r.csv", "recipient,name\n+1,Ann\n+2\n+3,Cy,extra\n+4,Di\n")
    rows = list(read_rows(path))
    assert [(r.line, r.recipient, r.error) for r in rows] == [
        (2, "+1", None),
        (3, None, "expected 2 columns, found 1"),
        (4, None, "expected 2 columns, found 3"),
        (5, "+4", None),
    ]


def test_csv_empty_recipient_is_none(tmp_path):
    rows = list(read_rows(write(tmp_path, "r.csv", "recipient,name\n  ,Ann\n")))
    assert rows[0].recipient is None
    assert rows[0].error is None


@pytest.mark.parametrize("alias", ["phone", "to"])
def test_csv_recipient_aliases(tmp_path, alias):
    with read_rows(write(tmp_path, "r.csv", f"name,{alias}\nAnn,+1\n")) as rows:
        assert rows.recipient_column == alias
        (row,) = rows
    assert row.recipient == "+1"
    assert row.recipient_column == alias


def test_csv_recipient_column_option_wins_and_has_no_aliases(tmp_path):
    path = write(tmp_path, "r.csv", "mobile,phone\n+1,+2\n")
    assert [r.recipient for r in read_rows(path, recipient_column="mobile")] == ["+1"]
    with pytest.raises(SourceError, match="no 'cell' column; columns: mobile, phone"):
        read_rows(path, recipient_column="cell")


def test_csv_without_recipient_column_fails_at_once(tmp_path):
    with pytest.raises(SourceError, match=r"no 'recipient' column \(nor 'phone' or 'to'\)"):
        read_rows(write(tmp_path, "r.csv", "name,city\nAnn,Rome\n"))


def test_csv_empty_file(tmp_path):
    with pytest.raises(SourceError, match="header row"):
        read_rows(write(tmp_path, "r.csv", ""))


def test_csv_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("\ufeffrecipient,name\n+1,Ann\n".encode())
    assert [r.recipient for r in read_rows(path)] == ["+1"]


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(SourceError, match="cannot open"):
        read_rows(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match="cannot tell the format"):
        read_rows(write(tmp_path, "r.txt", "recipient\n+1\n"))
    assert [r.recipient for r in read_rows(tmp_path / "r.txt", format="csv")] == ["+1"]


# ---------------------------------------------------------------- JSON Lines


@pytest.mark.parametrize("name", ["r.jsonl", "r.ndjson"])
def test_jsonl_rows(tmp_path, name):
    text = '{"recipient": "+1", "name": "Ann", "n": 3}\n\n{"phone": 15550002, "name": null}\n'
    rows = list(read_rows(write(tmp_path, name, text)))
    assert [(r.line, r.recipient, dict(r.values), r.recipient_column) for r in rows] == [
        (1, "+1", {"recipient": "+1", "name": "Ann", "n": "3"}, "recipient"),
        (3, "15550002", {"phone": "15550002"}, "phone"),
    ]


def test_jsonl_bad_lines_are_row_errors_with_their_line(tmp_path):
    text = (
        '{"recipient": "+1"}\n{"recipient": "+2",\n[1, 2]\n{"recipient": "+3", "tags": ["a"]}\n{"to": "+4"}\n'
    )
    rows = list(read_rows(write(tmp_path, "r.jsonl", text)))
    assert [(r.line, r.recipient) for r in rows] == [(1, "+1"), (2, None), (3, None), (4, None), (5, "+4")]
    assert rows[1].error.startswith("invalid JSON: ")
    assert "+2" not in rows[1].error  # the decoder names a position, not the content
    assert rows[2].error == "expected a JSON object, found list"
    assert rows[3].error == "columns must be strings or numbers: tags"


def test_jsonl_row_without_recipient(tmp_path):
    (row,) = read_rows(write(tmp_path, "r.jsonl", '{"name": "Ann"}\n'))
    assert row.recipient is None
    assert row.error is None


# ---------------------------------------------------------------- streaming


class CountingLines(io.TextIOBase):
    """A text stream that makes its lines on demand and counts how many were read."""

    def __init__(self, header, total):
        self.header = header
        self.total = total
        self.produced = 0

    def readable(self):
        return True

    def readline(self, size=-1):
        if self.produced == 0:
            self.produced += 1
            return self.header
        if self.produced > self.total:
            return ""
        self.produced += 1
        return f"+1555{self.produced:07d},name{self.produced}\n"


def test_rows_are_read_lazily():
    stream = CountingLines("recipient,name\n", 1_000_000)
    rows = read_rows(stream, format="csv")
    first = [next(rows) for _ in range(5)]
    assert [r.line for r in first] == [2, 3, 4, 5, 6]
    assert stream.produced <= 10
    rows.close()
    assert not stream.closed  # a stream given by the caller stays open


def test_a_large_file_is_streamed_in_constant_memory(tmp_path):
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("recipient,first_name,order\n")
        for i in range(100_000):
            handle.write(f"+1555{i:07d},Name{i},{i}\n")
    assert path.stat().st_size > 2_500_000
    tracemalloc.start()
    try:
        count = last = 0
        for row in read_rows(path):
            count += 1
            last = row.line
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last) == (100_000, 100_001)
    assert peak < 1_000_000, peak


def test_the_file_is_closed_at_the_end_and_on_close(tmp_path):
    path = write(tmp_path, "r.csv", "recipient\n+1\n+2\n")
    rows = read_rows(path)
    list(rows)
    assert rows._handle.closed
    rows = read_rows(path)
    next(rows)
    rows.close()
    assert rows._handle.closed


# ---------------------------------------------------------------- content


def row(values, recipient_column="recipient", line=2):
    return Row(line, values.get(recipient_column), values, recipient_column=recipient_column)


def test_template_named_parameters_from_every_other_column():
    spec = TemplateSpec("order_update", language="en_GB")
    template = spec.content(row({"recipient": "+1", "first_name": "Ann", "order": "42"}))
    assert template == Template("order_update", language="en_GB", body={"first_name": "Ann", "order": "42"})
    assert template.uses_named_parameters


def test_template_positional_parameters_from_numbered_columns():
    spec = TemplateSpec("order_update")
    template = spec.content(row({"phone": "+1", "2": "42", "1": "Ann", "note": "ignored"}, "phone"))
    assert template.body == (TextParam("Ann"), TextParam("42"))
    assert not template.uses_named_parameters


def test_template_positional_gap_names_the_missing_column():
    with pytest.raises(RowProblem, match="parameter column '2' is missing"):
        TemplateSpec("t").content(row({"recipient": "+1", "1": "a", "3": "c"}))


def test_template_explicit_columns_and_mode():
    values = {"recipient": "+1", "first_name": "Ann", "city": "Rome", "id": "7"}
    named = TemplateSpec("t", named=True, columns=["first_name", "city"]).content(row(values))
    assert named.body == (TextParam("Ann", name="first_name"), TextParam("Rome", name="city"))
    positional = TemplateSpec("t", named=False, columns=("city", "first_name")).content(row(values))
    assert positional.body == (TextParam("Rome"), TextParam("Ann"))


def test_template_missing_or_empty_parameter_names_the_column_not_the_value():
    spec = TemplateSpec("t", named=True, columns=["first_name", "order"])
    with pytest.raises(RowProblem, match=r"^parameter column 'order' is missing$"):
        spec.content(row({"recipient": "+1", "first_name": "Ann"}))
    with pytest.raises(RowProblem, match=r"^parameter column 'first_name' is empty$"):
        spec.content(row({"recipient": "+1", "first_name": " ", "order": "1"}))


def test_template_without_parameters():
    assert TemplateSpec("hello_world").content(row({"recipient": "+1"})).body == ()


def test_text_placeholders():
    spec = TextSpec("Hi {first_name}, order {order} {{ok}}")
    assert spec.fields == ("first_name", "order")
    text = spec.content(row({"recipient": "+1", "first_name": "Ann", "order": "42"}))
    assert text == Text("Hi Ann, order 42 {ok}")
    with pytest.raises(RowProblem, match=r"^column 'order' of the text is missing$"):
        spec.content(row({"recipient": "+1", "first_name": "Ann"}))


@pytest.mark.parametrize("body", ["Hi {}", "Hi {0}", "Hi {a.b}", "Hi {a[0]}", "Hi {"])
def test_text_placeholders_must_name_columns(body):
    with pytest.raises(ValueError, match=r"placeholder|Single|expected"):
        TextSpec(body)
