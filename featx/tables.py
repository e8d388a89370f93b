"""The one strict table reader for image manifests and text tables (CSV, TSV, JSON Lines).

A table written by hand or by another tool can be wrong in ways a lenient reader hides: a row
with a field missing or one too many, a quote opened and never closed (which swallows every later
row into one field), a JSON label that is a list. Every table featx reads goes through here, and
each such row comes back with an ``error`` naming its line (the caller records it as a failed
item, or refuses the table) instead of being read as something else:

- every CSV/TSV row must have as many fields as the header (``a.png,`` is two fields: an explicit
  empty label, which means "unlabeled");
- quotes are parsed strictly: a quote that is never closed is a :class:`~featx.errors.FeatxError`
  naming the line where it opened, and text after a closing quote is an error of that row;
- a JSON Lines row is an object; its label (:func:`label_cell`) is a string, an integer or null
  (unlabeled), never a list, object or fraction; a row without the label field when the table
  has one is an error, not "unlabeled";
- line numbers are the first line of each record in the file (1-based, the header is line 1).

Examples
--------
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "t.csv")
>>> _ = open(p, "w").write('text,label\\nhello,a\\nno label field\\n"x,y",b,extra\\n')
>>> t = read_delimited(p)
>>> [(r.line, r.cells, r.error) for r in t.rows]  # doctest: +NORMALIZE_WHITESPACE
[(2, {'text': 'hello', 'label': 'a'}, ''),
 (3, {'text': 'no label field', 'label': ''}, '1 field(s) but the header has 2'),
 (4, {'text': 'x,y', 'label': 'b'}, '3 field(s) but the header has 2')]
>>> label_cell(["l"], "label")
('', "field 'label' is a list; a label is a string or an integer")
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from featx.errors import FeatxError

__all__ = [
    "Row",
    "Table",
    "field_count_error",
    "label_cell",
    "read_delimited",
    "read_delimited_columns",
    "read_delimited_fields",
    "read_delimited_stream",
    "read_jsonl",
]


@dataclass(frozen=True)
class Row:
    """One record: its first line, its cells by column, and why it is unusable ("" if fine)."""

    line: int
    cells: dict[str, Any]
    error: str = ""
    raw: bytes = b""  # JSON Lines: the line's bytes (fingerprints of bad rows)
    present: frozenset[str] = field(default_factory=frozenset)  # JSONL: the keys it has


@dataclass(frozen=True)
class Table:
    path: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


def _field_limit() -> int:
    return min(sys.maxsize, 2**31 - 1)


def read_delimited(
    path: str | os.PathLike,
    delimiter: str = ",",
    *,
    encoding: str = "utf-8-sig",
    errors: str = "surrogateescape",
    what: str | None = None,
) -> Table:
    """Read a CSV (or TSV) with a header line, strictly (see the module docstring).

    Raises
    ------
    FeatxError
        The file cannot be read, is empty, or has a quote that is never closed.
    """
    what = what or ("TSV" if delimiter == "\t" else "CSV")
    try:
        from featx.walk import open_regular

        with (
            open_regular(path) as raw,
            io.TextIOWrapper(raw, encoding=encoding, errors=errors, newline="") as f,
        ):
            return read_delimited_stream(f, os.fspath(path), delimiter, what=what)
    except UnicodeDecodeError as exc:
        raise FeatxError(
            f"{what} {path} is not valid {encoding} (byte offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise FeatxError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_delimited_stream(
    f: Any, name: str, delimiter: str = ",", *, what: str | None = None
) -> Table:
    """:func:`read_delimited` on an open text stream (``newline=""``), e.g. a manifest fetched
    from a URI; ``name`` is what messages call it."""
    header, records = read_delimited_fields(f, name, delimiter, what=what)
    width = len(header)
    rows: list[Row] = []
    for line, fields in records:
        if len(fields) == width:
            rows.append(Row(line, dict(zip(header, fields, strict=True))))
        else:
            cells = {h: (fields[i] if i < len(fields) else "") for i, h in enumerate(header)}
            rows.append(Row(line, cells, field_count_error(len(fields), width)))
    return Table(name, tuple(header), tuple(rows))


def field_count_error(n: int, width: int) -> str:
    """The error of a row with ``n`` fields under a header of ``width`` ("" when they agree)."""
    return "" if n == width else f"{n} field(s) but the header has {width}"


def read_delimited_fields(
    f: Any, name: str, delimiter: str = ",", *, what: str | None = None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The strict parse under :func:`read_delimited_stream`: the stripped header and every
    non-blank record as (first line, fields), with no per-row objects (a manifest of a million
    rows reads at the csv module's speed, #21). Rows with the wrong number of fields are
    returned as they are (see :func:`field_count_error`); a quote that is never closed raises.
    """
    what = what or ("TSV" if delimiter == "\t" else "CSV")
    text = f.read()
    old = csv.field_size_limit()
    csv.field_size_limit(_field_limit())
    try:
        fast = _one_line_records(text, delimiter)
        if fast is not None:
            return fast
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise FeatxError(f"{what} {name} line 1: {exc}") from None
        if header is None:
            raise FeatxError(f"{what} {name} is empty; it needs a header line")
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        header = [h.strip() for h in header]
        records: list[tuple[int, list[str]]] = []
        append = records.append
        start = reader.line_num + 1
        while True:
            try:
                for fields in reader:  # the fast loop; errors leave it with the line known
                    if fields:  # csv gives [] for blank lines
                        append((start, fields))
                    start = reader.line_num + 1
                break
            except csv.Error as exc:
                if "end of data" in str(exc):
                    raise FeatxError(
                        f"{what} {name} line {start}: a quote opened here is never closed "
                        "(the field would run to the end of the file); close the quote"
                    ) from None
                raise FeatxError(
                    f"{what} {name} line {start}: {exc} (a quoted field must end at its "
                    'closing quote; double a quote inside it: "")'
                ) from None
    finally:
        csv.field_size_limit(old)
    return header, records


def read_delimited_columns(
    f: Any, name: str, delimiter: str = ",", *, what: str | None = None
) -> tuple[list[str], list[int], list[list[str]], tuple[int, int] | None]:
    """:func:`read_delimited_fields` column by column, for tables of millions of rows:
    (header, each record's first line, the cells of each column, and (line, fields) of the
    first record whose field count differs from the header's, or None; the columns are then
    not to be used).

    A table without quotes, carriage returns or blank lines (what tools write for plain paths
    and labels) is split at the speed of ``str.split``; anything else goes through the strict
    csv parse, with the same results."""
    text = f.read()
    if not ('"' in text or "\r" in text) and text.strip():
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        if "" not in lines:
            header = lines[0].split(delimiter)
            if header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            header = [h.strip() for h in header]
            width = len(header)
            numbers = list(range(2, len(lines) + 1))
            for j, line in enumerate(lines[1:]):
                if line.count(delimiter) != width - 1:
                    return header, numbers, [], (j + 2, line.count(delimiter) + 1)
            flat = delimiter.join(lines[1:]).split(delimiter) if len(lines) > 1 else []
            return header, numbers, [flat[c::width] for c in range(width)], None
    header, records = read_delimited_fields(io.StringIO(text, newline=""), name, delimiter,
                                            what=what)  # fmt: skip
    width = len(header)
    numbers = [line for line, _ in records]
    bad = next(((line, len(r)) for line, r in records if len(r) != width), None)
    if bad is not None:
        return header, numbers, [], bad
    return (
        header,
        numbers,
        [list(c) for c in zip(*(r for _, r in records), strict=True)] or [[] for _ in header],
        None,
    )


def _one_line_records(
    text: str, delimiter: str
) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """The common case at the csv module's own speed: no blank line and every record on one
    line, so record ``j`` is on line ``j + 2``. None when that is not so (or the text has an
    error): the caller's record-by-record loop then finds the lines (and the error)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        rows = list(reader)
    except csv.Error:
        return None
    if not rows or reader.line_num != len(rows) or not all(rows):
        return None
    header = rows[0]
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    header = [h.strip() for h in header]
    return header, list(zip(range(2, len(rows) + 1), rows[1:], strict=True))


def read_jsonl(path: str | os.PathLike) -> Table:
    """Read JSON Lines: one object a line (blank lines skipped); bad lines are rows with errors.

    Columns are the union of the objects' keys, in order of first appearance.
    """
    from featx.walk import open_regular

    try:
        with open_regular(path) as f:
            data = f.read()
    except OSError as exc:
        raise FeatxError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows: list[Row] = []
    columns: dict[str, None] = {}
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="surrogateescape")
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = getattr(exc, "msg", "nested too deeply")
            rows.append(Row(lineno, {}, f"not valid JSON ({msg})", raw))
            continue
        if not isinstance(obj, dict):
            rows.append(Row(lineno, {}, "not a JSON object", raw))
            continue
        cells = {str(k): v for k, v in obj.items()}
        for k in cells:
            columns.setdefault(k, None)
        rows.append(Row(lineno, cells, "", raw, frozenset(cells)))
    return Table(os.fspath(path), tuple(columns), tuple(rows))


def label_cell(value: Any, column: str) -> tuple[str, str]:
    """A label value as (class name, error): strings and integers name classes, null or ""
    is unlabeled, anything else (a list, an object, a fraction, true/false) is an error."""
    if value is None:
        return "", ""
    if isinstance(value, bool):
        return "", f"field {column!r} is true/false; a label is a string or an integer"
    if isinstance(value, int):
        return str(value), ""
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value)), ""
        return "", f"field {column!r} is the fraction {value}; a label is a string or an integer"
    if isinstance(value, str):
        return value.strip(), ""
    kind = "a list" if isinstance(value, list) else "an object"
    return "", f"field {column!r} is {kind}; a label is a string or an integer"
