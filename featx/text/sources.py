"""Where texts come from: a CSV / TSV / JSONL table, or a folder of ``.txt`` files.

:func:`open_text_source` returns a :class:`TextSource`: the same sorted list of items with keys,
labels, splits and fingerprints that image sources have, so the store's incremental logic works
unchanged (edited rows are re-embedded, removed rows dropped, an unchanged file is a no-op).

Keys
----
Table rows are keyed by their ``id`` column when the table has one (``--id-column``), otherwise
by their content: the first 16 hex digits of the SHA-256 of the text, with ``~2``, ``~3`` ...
for the second and later copies of the same text. Content keys survive re-ordering, insertions
and deletions, so re-exporting a table in another order extracts nothing. Files of a folder are
keyed by their path relative to the folder, as images are.

Fingerprints
------------
Always the SHA-256 of the text's bytes (``fingerprint/sha256`` in the store), plus the byte size;
for files also their modification time. An edited row or file therefore changes fingerprint and
is embedded again.

Bad rows
--------
Never fatal: a row with empty text, text that is not valid in the file's encoding, JSON that
does not parse, a missing text field, a duplicate id, or more than :data:`MAX_CHARS` characters
is recorded as failed with its line number and reason (``featx info`` lists them). Rows longer
than the encoder's ``max_seq_length`` tokens are embedded from their first tokens (as
sentence-transformers does) and counted as truncated in the store (``text/n_tokens``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.backbones._text import is_text_name
from featx.errors import FeatxError
from featx.items import SPLIT_ALIASES, Item, Source
from featx.modalities import (
    Modality,
    SourceKind,
    SourceRequest,
    register_modality,
    register_source_kind,
)
from featx.options import DEFAULT_TEXT_BACKBONE, TextFormat

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TEXT_FILE_SUFFIX = ".txt"
#: Rows with more characters than this are recorded as failed instead of being tokenized.
MAX_CHARS = 1_000_000
TEXT_COLUMNS = (
    "text",
    "sentence",
    "content",
    "body",
    "review",
    "message",
    "document",
    "comment",
    "question",
    "title",
)
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
ID_COLUMNS = ("id",)
SPLIT_COLUMNS = ("split",)


class TextError(Exception):
    """One text that cannot be embedded (empty, undecodable, too long); recorded, not fatal."""


@dataclass(frozen=True)
class TextItem(Item):
    """One text: an :class:`~featx.sources.Item` plus where it is and, for table rows, its text.

    ``line`` is the 1-based line (CSV/TSV: the record's first line) of a table row, 0 for a file;
    ``text`` is None for files (read on demand); ``error`` is a reason found while scanning
    (invalid encoding, bad JSON, duplicate id) that makes the item fail.
    """

    line: int = 0
    text: str | None = None
    error: str = ""


class TextSource(Source):
    """A scanned text source (``kind`` starts with ``text-``); it reads with :class:`TextReader`."""

    def __init__(
        self,
        *args: Any,
        text_column: str = "",
        encoding: str = "utf-8",
        id_column: str = "",
        **kw: Any,
    ):
        kw.setdefault("read", TextReader(encoding))
        super().__init__(*args, modality="text", **kw)
        self.text_column = text_column
        self.id_column = id_column  # the table's id column (keys are its values), if any
        self.encoding = encoding

    def identity(self) -> dict[str, str]:
        ident = {"kind": self.kind, "uri": self.uri}
        if self.text_column:  # two text columns of one table are two sources
            ident["text_column"] = self.text_column
        return ident

    def texts(self, items: Sequence[Item] | None = None) -> list[str | None]:
        """The text of each item (None where it cannot be read)."""
        read = self.reader()
        out: list[str | None] = []
        for it in self.items if items is None else items:
            try:
                out.append(read(it))
            except TextError:
                out.append(None)
        return out


class TextReader:
    """Picklable item -> text; raises :class:`TextError` with a one-line reason."""

    def __init__(self, encoding: str = "utf-8"):
        self.encoding = encoding

    def __call__(self, item: Item) -> str:
        where = f"line {item.line}: " if getattr(item, "line", 0) else ""
        error = getattr(item, "error", "")
        if error:
            raise TextError(f"{where}{error}")
        text = getattr(item, "text", None)
        if text is None:
            if not item.path:
                raise TextError("no text")
            from featx.walk import open_regular

            try:
                with open_regular(item.path) as f:
                    data = f.read()
            except OSError as exc:
                raise TextError(f"cannot read: {exc.strerror or exc}") from None
            text, bad = _decode(data, self.encoding)
            if bad:
                raise TextError(bad)
        return check_text(text, where)


def check_text(text: str, where: str = "") -> str:
    """Return ``text`` or raise :class:`TextError` when it is empty or over :data:`MAX_CHARS`."""
    if not text.strip():
        raise TextError(f"{where}empty text")
    if len(text) > MAX_CHARS:
        raise TextError(
            f"{where}text has {len(text)} characters, more than the limit of {MAX_CHARS}; "
            "split it into smaller rows"
        )
    return text


def _decode(data: bytes, encoding: str) -> tuple[str, str]:
    """bytes -> (text, "" or the reason it is not valid in ``encoding``)."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(enc), ""
    except UnicodeDecodeError as exc:
        byte = data[exc.start : exc.start + 1].hex()
        return "", f"not valid {encoding} (byte 0x{byte} at offset {exc.start})"
    except LookupError:
        raise FeatxError(f"unknown encoding {encoding!r}; use e.g. utf-8 or latin-1") from None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_text_spec(spec: str | os.PathLike, fmt: TextFormat | None = None) -> bool:
    """Whether ``spec`` names a text source (by its form alone; nothing is read but a header).

    ``text:PATH`` always; a ``.tsv`` / ``.jsonl`` / ``.ndjson`` file; a ``.csv`` file without a
    ``path`` column (a ``path`` column makes it an image manifest) or read with a non-default
    :class:`TextFormat`; a folder whose files are all ``.txt``.
    """
    s = str(spec)
    if s.startswith("text:"):
        return True
    if ":" in s.split("/", 1)[0] and not os.path.exists(s):  # sklearn:..., torchvision:...
        return False
    p = Path(s)
    suffix = p.suffix.lower()
    if p.is_file():
        if suffix in (".tsv", ".jsonl", ".ndjson"):
            return True
        if suffix == ".csv":
            if fmt is not None and not fmt.is_default():
                return True
            return "path" not in _csv_header(p, fmt.encoding if fmt else "utf-8")
        return False
    if p.is_dir():
        return _all_txt(p)
    return False


def _all_txt(root: Path) -> bool:
    """Whether a folder holds visible files and all of them are ``.txt`` (stops at the first
    other file, so an image folder costs one listing). Walked by :mod:`featx.walk`: entries it
    cannot read (loops such as ``up -> ..``, FIFOs, broken links) do not decide the kind."""
    from featx.walk import iter_entries

    found = False
    for e in iter_entries(root):
        if e.error:
            continue
        if not e.rel.lower().endswith(TEXT_FILE_SUFFIX):
            return False
        found = True
    return found


def has_text_column(spec: str | os.PathLike, fmt: TextFormat | None = None) -> bool:
    """Whether a CSV's header names a text column (``--text-column`` or a default name)."""
    header = _csv_header(Path(str(spec)), fmt.encoding if fmt else "utf-8")
    if fmt is not None and fmt.text_column:
        return fmt.text_column.strip().lower() in header
    return any(name in header for name in TEXT_COLUMNS)


def _csv_header(path: Path, encoding: str) -> list[str]:
    try:
        with open(path, newline="", encoding=_py_encoding(encoding), errors="replace") as f:
            row = next(csv.reader(f), [])
    except (OSError, csv.Error):
        return []
    return [c.strip().lower() for c in row]


def _py_encoding(encoding: str) -> str:
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def open_text_source(
    spec: str | os.PathLike, fmt: TextFormat | None = None, *, content_hash: bool = True
) -> TextSource:
    """Scan a text table or folder; see the module docstring for keys, fingerprints, failures.

    Parameters
    ----------
    spec : str or path-like
        ``FILE.csv``, ``FILE.tsv``, ``FILE.jsonl`` (one JSON object a line), a folder of ``.txt``
        files in class subfolders (or a flat folder: unlabeled), or any of these as ``text:PATH``.
    fmt : TextFormat, optional
        Column names and encoding of a table.
    content_hash : bool
        Ignored: text sources are always fingerprinted by content.

    Examples
    --------
    >>> src = open_text_source("reviews.csv")  # doctest: +SKIP
    >>> src.kind, src.text_column, src.classes  # doctest: +SKIP
    ('text-csv', 'text', ('neg', 'pos'))
    """
    fmt = fmt or TextFormat()
    s = str(spec)
    if s.startswith("text:"):
        s = s[len("text:") :]
    p = Path(s)
    if not p.exists():
        raise FeatxError(f"text source {s} does not exist; give a .csv, .tsv, .jsonl or a folder")
    if p.is_dir():
        return _scan_folder(p, fmt)
    kind = TABLE_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise FeatxError(
            f"{s}: unknown text file type {p.suffix!r}; use .csv, .tsv, .jsonl or .ndjson "
            "(a folder of .txt files works too)"
        )
    return _scan_table(p, kind, fmt)


# ---------------------------------------------------------------------------------------------
# tables


def _pick(
    columns: Sequence[str], asked: str | None, defaults: Sequence[str], what: str, path: Path
) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    if asked is not None:
        key = asked.strip().lower()
        if key not in lower:
            raise FeatxError(
                f"{path} has no {what} column {asked!r}; its columns are {', '.join(columns)}"
            )
        return lower[key]
    for name in defaults:
        if name in lower:
            return lower[name]
    return None


def _columns(columns: Sequence[str], fmt: TextFormat, path: Path) -> dict[str, str | None]:
    label = _pick(columns, fmt.label_column, LABEL_COLUMNS, "label", path)
    ident = _pick(columns, fmt.id_column, ID_COLUMNS, "id", path)
    split = _pick(columns, fmt.split_column, SPLIT_COLUMNS, "split", path)
    text = _pick(columns, fmt.text_column, TEXT_COLUMNS, "text", path)
    if text is None:
        rest = [c for c in columns if c not in (label, ident, split) and c.strip()]
        if len(rest) != 1:
            raise FeatxError(
                f"{path}: cannot tell which column holds the text (columns: "
                f"{', '.join(columns) or 'none'}); name it with --text-column"
            )
        text = rest[0]
    taken = [c for c in (label, ident, split) if c is not None]
    if text in taken:
        raise FeatxError(f"{path}: column {text!r} cannot be both the text and another column")
    return {"text": text, "label": label, "id": ident, "split": split}


def _records_delimited(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, Any]]]:
    """Header and (first line, row dict or :class:`_Bad`) of a CSV/TSV, read by the strict
    table reader (:mod:`featx.tables`) with surrogate escapes for bad bytes: a row with too few
    or too many fields is a bad row with its line, an unclosed quote refuses the file."""
    from featx.tables import read_delimited

    what = "TSV" if delimiter == "\t" else "CSV"
    table = read_delimited(path, delimiter, encoding="utf-8", what=what)
    records: list[tuple[int, Any]] = []
    for r in table.rows:
        if r.error:
            raw = delimiter.join(r.cells.values()).encode("utf-8", "surrogateescape")
            records.append((r.line, _Bad(raw, r.error)))
        else:
            records.append((r.line, r.cells))
    return list(table.columns), records


def _records_jsonl(path: Path) -> tuple[list[str], list[tuple[int, Any]]]:
    """Columns and (line, object or :class:`_Bad`) of a JSON Lines file (:mod:`featx.tables`)."""
    from featx.tables import read_jsonl

    table = read_jsonl(path)
    records: list[tuple[int, Any]] = [
        (r.line, _Bad(r.raw, r.error) if r.error else r.cells) for r in table.rows
    ]
    return list(table.columns), records


@dataclass(frozen=True)
class _Bad:
    raw: bytes
    reason: str


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _scan_table(path: Path, kind: str, fmt: TextFormat) -> TextSource:
    custom_encoding = _py_encoding(fmt.encoding) not in ("utf-8-sig",)
    if kind == "jsonl":
        if custom_encoding:
            raise FeatxError(f"{path}: JSON Lines files are UTF-8; --encoding does not apply")
        columns, records = _records_jsonl(path)
    else:
        columns, records = _records_delimited(path, "\t" if kind == "tsv" else ",")
    if not records:
        raise FeatxError(f"{path} has no rows; add one text per line below the header")
    cols = _columns(columns, fmt, path)
    log.info(
        "%s: text column %r, label column %r, id column %r, split column %r",
        path,
        cols["text"],
        cols["label"],
        cols["id"],
        cols["split"],
    )
    rows = [_row(line, rec, cols, kind, fmt, path) for line, rec in records]
    classes = tuple(sorted({r[3] for r in rows if r[3] and not r[6]}))
    items = _keyed_items(rows, classes, cols["id"])
    return TextSource(
        kind=f"text-{kind}",
        uri=str(path.resolve()),
        name=path.stem,
        classes=classes,
        items=items,
        text_column=cols["text"] or "",
        encoding=fmt.encoding,
        id_column=cols["id"] or "",
    )


def _row(
    line: int, rec: Any, cols: dict[str, str | None], kind: str, fmt: TextFormat, path: Path
) -> tuple:
    """One record -> (line, id or None, text, label, split, raw bytes, error)."""
    if isinstance(rec, _Bad):
        return (line, None, None, "", "", rec.raw, rec.reason)
    custom_encoding = _py_encoding(fmt.encoding) not in ("utf-8-sig",)
    value = rec.get(cols["text"])
    error = ""
    if kind == "jsonl" and value is not None and not isinstance(value, str):
        error = f"field {cols['text']!r} is not a string"
        value = json.dumps(value)
    text = "" if value is None else value
    if kind == "jsonl" and value is None:
        error = f"no field {cols['text']!r}"
    raw = text.encode("utf-8", errors="surrogateescape")
    if custom_encoding:
        text, bad = _decode(raw, fmt.encoding)
        error = error or bad
    else:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = error or (
                f"not valid UTF-8 (byte 0x{raw[exc.start : exc.start + 1].hex()}); "
                "pass --encoding if the file is not UTF-8"
            )
            text = ""

    def fixed(value: Any) -> str:
        v = _cell(value)
        if custom_encoding:
            v = _decode(v.encode("utf-8", "surrogateescape"), fmt.encoding)[0]
        return v.encode("utf-8", "replace").decode("utf-8", "replace") if v else v

    label = ""
    if cols["label"]:
        value_l = rec.get(cols["label"])
        if kind == "jsonl":  # the strict reader's label rule, shared with every table (#23)
            from featx.tables import label_cell

            if cols["label"] not in rec:
                error = error or f'no field {cols["label"]!r} (null or "" marks unlabeled)'
            value_l, bad_label = label_cell(value_l, cols["label"])
            error = error or bad_label
        label = fixed(value_l)
    split_raw = fixed(rec.get(cols["split"])).lower() if cols["split"] else ""
    if split_raw not in SPLIT_ALIASES:
        raise FeatxError(f"{path} line {line}: unknown split {split_raw!r}; use train, val or test")
    ident = fixed(rec.get(cols["id"])) if cols["id"] else None
    return (line, ident, text, label, SPLIT_ALIASES[split_raw], raw, error)


def _keyed_items(rows: list[tuple], classes: tuple[str, ...], id_column: str | None) -> list:
    """The rows as items sorted by key (their id, else the hash of their text; ``~2``, ``~3``
    for later copies), duplicate and empty ids recorded as errors."""
    index = {c: i for i, c in enumerate(classes)}
    items: list[TextItem] = []
    seen: dict[str, int] = {}  # key base -> count
    first_line: dict[str, int] = {}
    for line, ident, text, label, split, raw, error in rows:
        digest = _sha(raw)
        if ident is not None:
            base = ident or digest[:16]
            if not ident and not error:
                error = f"empty {id_column!r}"
        else:
            base = digest[:16]
        n = seen.get(base, 0) + 1
        seen[base] = n
        key = base if n == 1 else f"{base}~{n}"
        if ident and n > 1 and not error:
            error = f"duplicate id {ident!r} (first on line {first_line[base]})"
        first_line.setdefault(base, line)
        items.append(
            TextItem(
                key=key,
                label=index.get(label, -1) if not error else -1,
                split=split,
                path=None,
                size=len(raw),
                mtime_ns=0,
                sha256=digest,
                line=line,
                text=None if error else text,
                error=error,
            )
        )
    items.sort(key=lambda it: it.key)
    return items


# ---------------------------------------------------------------------------------------------
# folders


def _file_item(e: Any, label: int) -> TextItem:
    """A text item from a walked entry: its content hash, or the reason it cannot be read."""
    from featx.walk import open_regular

    if e.error:
        return TextItem(key=e.rel, label=label, split="", path=e.path, error=e.error)
    try:
        with open_regular(e.path) as f:
            digest = _sha(f.read())
    except OSError as exc:
        from featx.walk import os_reason

        return TextItem(key=e.rel, label=label, split="", path=e.path, error=os_reason(e.path, exc))
    return TextItem(
        key=e.rel,
        label=label,
        split="",
        path=e.path,
        size=e.size,
        mtime_ns=e.mtime_ns,
        sha256=digest,
    )


def _scan_folder(root: Path, fmt: TextFormat) -> TextSource:
    """A folder of .txt files, walked by :func:`featx.walk.scan` like an image folder."""
    from featx.walk import os_reason, scan

    try:
        tree = scan(root)
    except OSError as exc:
        raise FeatxError(f"cannot list text folder {root}: {os_reason(str(root), exc)}") from None
    if tree.classes and tree.top_files:
        raise FeatxError(
            f"{root} mixes .txt files at the top level with class subfolders; move the loose "
            "files into a class folder or a folder of their own"
        )
    index = {c: i for i, c in enumerate(tree.classes)}
    items = [
        _file_item(e, index.get(e.rel.split("/")[0], -1) if "/" in e.rel else -1)
        for e in tree.entries
    ]
    classes: tuple[str, ...] = tree.classes
    if not items:
        raise FeatxError(f"text folder {root} has no files; put .txt files in class subfolders")
    others = [
        it.key for it in items if not it.error and not it.key.lower().endswith(TEXT_FILE_SUFFIX)
    ]
    if others:
        raise FeatxError(
            f"text folder {root} holds files that are not .txt (e.g. {others[0]}); "
            "remove them or point featx at a folder of .txt files only"
        )
    items.sort(key=lambda it: it.key)
    return TextSource(
        kind="text-folder",
        uri=str(root.resolve()),
        name=root.resolve().name,
        classes=classes,
        items=items,
        encoding=fmt.encoding,
    )


# ---------------------------------------------------------------------------------------------
# the text source kind and the text modality


def _claims(spec: str, req: SourceRequest) -> bool:
    """Text tables and folders; with a known modality a ``.csv`` is what the backbone takes,
    unless the table plainly is the other kind (an image backbone on a table with a text
    column gets the text-vs-image error, not a manifest error)."""
    is_csv = spec.lower().endswith(".csv") and not spec.startswith("text:")
    if is_csv and req.modality is not None:
        return req.modality == "text" or (
            is_text_spec(spec, req.text) and has_text_column(spec, req.text)
        )
    return is_text_spec(spec, req.text)


def store_attrs(
    src: Source, bb: Any, rows: Any, kept: Any = None
) -> tuple[dict[str, Any], dict[str, dict[str, int]], int]:
    """What a text store records beyond an image store: the encoder's text settings, the
    per-row token counts (``text/n_tokens``) and texts (``text/texts``) of ``rows`` (the rows a
    commit writes: only those are tokenized), and how many texts of the store were truncated
    (``kept``: the kept rows' stored token counts)."""
    from featx.text.tokens import count_tokens

    items = [it for it in src.items if it.key in rows]
    limit = int(bb.preprocess.max_seq_length)
    texts = list(src.texts(items))  # type: ignore[attr-defined]
    counts = count_tokens(bb.tokenizer, texts, limit)
    n_tokens = {it.key: int(c) for it, c in zip(items, counts, strict=True)}
    n_truncated = int((counts > limit).sum())
    if n_truncated:
        log.warning(
            "%d of %d texts are longer than %d tokens; their embeddings use the first %d "
            "(featx info lists how many)",
            n_truncated,
            len(items),
            limit,
            limit,
        )
    if kept is not None:  # the rows the commit keeps, with their stored token counts
        import numpy as np

        n_truncated += int((np.asarray(kept.get("text/n_tokens", []), np.int64) > limit).sum())
    attrs = {
        "modality": "text",
        "normalize": bool(bb.normalize),
        "max_seq_length": limit,
        "text_column": getattr(src, "text_column", ""),
        "n_truncated": n_truncated,
    }
    # the texts themselves, for heads on their TF-IDF (docs/groups.md)
    text_of = {it.key: "" if t is None else str(t) for it, t in zip(items, texts, strict=True)}
    return attrs, {"text/n_tokens": n_tokens, "text/texts": text_of}, n_truncated


def stored_truncated(path: Path) -> int:
    from featx.store import store_info

    return int((store_info(path).get("text") or {}).get("n_truncated") or 0)


def store_complete(path: Path) -> bool:
    """Whether a text store keeps its texts (``text/texts``; stores before #19 do not).

    Looks at which per-row datasets the store lists (a segmented store's index names them),
    not at any row, so a no-op run of a large store stays cheap."""
    from featx.errors import StoreError
    from featx.store import stored_per_row
    from featx.store.config import TEXTS

    try:
        return TEXTS in stored_per_row(path)
    except StoreError:
        return True  # not readable as a store: the store's own checks say what is wrong


def _request_fingerprint(spec: Any) -> dict:
    from featx.backbones._text import request_fingerprint

    return request_fingerprint(spec.name, spec.max_seq_length, spec.normalize)


register_source_kind(
    SourceKind("text", claims=_claims, open=lambda spec, req: open_text_source(spec, req.text))
)
register_modality(
    Modality(
        name="text",
        default_backbone=DEFAULT_TEXT_BACKBONE,
        backbone_noun="a text encoder",
        source_noun="a text source",
        suggest="all-minilm-l6-v2, or hf:PATH for a local model folder",
        claims_backbone=is_text_name,
        versions=("transformers", "tokenizers"),
        store_attrs=store_attrs,
        stored_truncated=stored_truncated,
        store_complete=store_complete,
        remembers_config=False,  # a model folder can change in place: keyed by its files
        request_fingerprint=_request_fingerprint,
        unit="texts",
        key_column="key",
        item_columns=("line",),
    )
)
