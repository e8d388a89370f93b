"""Write a feature store out as NumPy ``.npz``, Parquet or CSV, for pandas and other tools.

Every format holds the same columns, one row per extracted item in the store's order (failed
items have no features and are left out; ``featx info`` lists them):

``id``
    The item's key: its path relative to the source (or ``split/index``, or an absolute path for
    stores of loose files).
``label``
    The class name; empty (NaN/null in pandas) where the item is unlabeled.
``split``
    ``train``, ``val``, ``test`` or empty.
``features``
    The embedding: an (n, d) float32 array in ``.npz``; a fixed-size list column in Parquet
    (``np.stack(df["features"])`` gives the matrix back); ``f0 ... f{d-1}`` columns in CSV,
    written with 9 significant digits so float32 values survive the round trip exactly.

The ``.npz`` file also has ``label_index`` (int, -1 = unlabeled) and ``classes``; the Parquet
file carries the store's backbone, weights, dim and classes as schema metadata (key ``featx``,
JSON). The output is written to a temporary name and renamed, so it is either whole or absent.

Examples
--------
>>> from featx.export import export_store
>>> export_store("cache/digits__efficientnet_lite0-IMAGENET1K_V1__ab12.h5", "digits.parquet")
... # doctest: +SKIP
>>> import pandas as pd, numpy as np  # doctest: +SKIP
>>> df = pd.read_parquet("digits.parquet"); X = np.stack(df["features"])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featx.errors import FeatxError
from featx.files import atomic_path

if TYPE_CHECKING:  # numpy loads when an export runs: `featx --help` lists the formats without it
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_store` wrote."""

    out: str
    format: str
    n_items: int
    dim: int
    n_failed_left_out: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportFormat:
    """One export format: its name (``--format``), file suffix and writer.

    ``write(tmp, cols, meta)`` writes the file at ``tmp`` (:func:`export_store` renames it into
    place); ``cols`` holds ``ids``, ``labels``, ``label_index``, ``split``, ``X`` and ``classes``
    as numpy arrays, ``meta`` the store's provenance.
    """

    name: str
    suffix: str
    write: Callable[[Path, dict[str, Any], dict[str, Any]], None]
    summary: str = ""


_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(fmt: ExportFormat) -> ExportFormat:
    """Add an export format (the CLI's ``--format`` choices and :func:`export_store` follow)."""
    if fmt.name in _FORMATS:
        raise ValueError(f"export format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def export_formats() -> tuple[str, ...]:
    """The registered format names, the default (``npz``) first."""
    return tuple(_FORMATS)


def format_for(out: str | os.PathLike | None, fmt: str | None) -> str:
    """The format asked for, else the one ``out``'s suffix names, else ``npz``."""
    if fmt is not None:
        if fmt not in _FORMATS:
            raise FeatxError(
                f"unknown export format {fmt!r}; use one of {', '.join(export_formats())}"
            )
        return fmt
    if out is not None:
        suffix = Path(out).suffix.lower()
        for f in _FORMATS.values():
            if suffix == f.suffix:
                return f.name
    return "npz"


def _write_npz(tmp: Path, cols: dict[str, Any], meta: dict[str, Any]) -> None:
    import numpy as np

    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            ids=cols["ids"],
            label=cols["labels"],
            label_index=cols["label_index"],
            split=cols["split"],
            features=cols["X"],
            classes=cols["classes"],
        )


def _write_parquet(tmp: Path, cols: dict[str, Any], meta: dict[str, Any]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FeatxError(
            "Parquet export needs pyarrow; install it with: pip install 'featx[parquet]'"
        ) from None
    X = cols["X"]
    n, d = X.shape
    flat = pa.array(X.reshape(-1), type=pa.float32())
    features = pa.FixedSizeListArray.from_arrays(flat, d) if d else pa.nulls(n)

    def nullable(values: np.ndarray) -> Any:
        return pa.array([v if v else None for v in values.tolist()], type=pa.string())

    table = pa.table(
        {
            "id": pa.array(cols["ids"].tolist(), type=pa.string()),
            "label": nullable(cols["labels"]),
            "split": nullable(cols["split"]),
            "features": features,
        }
    )
    table = table.replace_schema_metadata({"featx": json.dumps(meta, default=str)})
    pq.write_table(table, tmp)


def _write_csv(tmp: Path, cols: dict[str, Any], meta: dict[str, Any]) -> None:
    X = cols["X"]
    from featx.csvsafe import safe_cell

    # Names that are not UTF-8 are written as their raw bytes; formula-like cells are quoted.
    with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "split"] + [f"f{j}" for j in range(X.shape[1])])
        for i in range(X.shape[0]):
            w.writerow(
                [safe_cell(cols["ids"][i]), safe_cell(cols["labels"][i]), cols["split"][i]]
                + [f"{v:.9g}" for v in X[i].tolist()]
            )


def export_store(
    store: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    format: str | None = None,  # noqa: A002 - the CLI option's name
    layers: str | None = None,
) -> ExportResult:
    """Export a store's ids, labels, splits and features to ``out``.

    Parameters
    ----------
    store : path-like
        A feature store (``.h5``).
    out : path-like, optional
        The file to write; default: the store's path with the format's suffix.
    format : {"npz", "parquet", "csv"}, optional
        Default: from ``out``'s suffix, else ``npz``.

    Returns
    -------
    ExportResult
    """
    import numpy as np

    from featx.store import load_features, store_info

    fmt = format_for(out, format)
    fs = load_features(store)
    if layers:  # one group (or several side by side) of a multi-layer store
        from featx.groups import one_choice

        fs = one_choice(fs, layers, "export")
        if fs.uses_texts:
            raise FeatxError(
                "tfidf is fitted per head on its training rows, so it is not exported; export "
                "the texts with the store (text/texts) or choose stored groups"
            )
    info = store_info(store)
    out_path = Path(out) if out is not None else Path(store).with_suffix(_FORMATS[fmt].suffix)
    if out_path.resolve() == Path(store).resolve():
        raise FeatxError(f"--out {out_path} is the store itself; give another file name")
    if out_path.is_dir():
        raise FeatxError(f"--out {out_path} is a folder; give a file name")
    classes = np.asarray(fs.classes, dtype=str)
    labels = np.asarray([fs.classes[y] if y >= 0 else "" for y in fs.y], dtype=str)
    split = fs.split if fs.split is not None else np.full(fs.n, "", dtype=object)
    cols = {
        "ids": np.asarray(fs.keys, dtype=str),
        "labels": labels.astype(str) if fs.n else np.empty(0, dtype=str),
        "label_index": fs.y.astype(np.int64),
        "split": np.asarray(split, dtype=str),
        "X": np.ascontiguousarray(fs.X, dtype=np.float32),
        "classes": classes,
    }
    meta = {
        k: info.get(k)
        for k in ("backbone", "weights", "layer", "pool", "dim", "classes", "config_hash")
    }
    meta["store"] = str(store)
    with atomic_path(out_path) as tmp:  # fsynced, renamed; dead exports' temporaries swept
        _FORMATS[fmt].write(tmp, cols, meta)
    log.info("exported %d items of %s to %s", fs.n, store, out_path)
    return ExportResult(
        out=str(out_path),
        format=fmt,
        n_items=fs.n,
        dim=fs.dim,
        n_failed_left_out=int(info["n_failed"]),
        bytes=out_path.stat().st_size,
    )


register_export_format(ExportFormat("npz", ".npz", _write_npz, "NumPy: np.load(...)['features']"))
register_export_format(
    ExportFormat("parquet", ".parquet", _write_parquet, "pandas.read_parquet; needs pyarrow")
)
register_export_format(ExportFormat("csv", ".csv", _write_csv, "id,label,split,f0,f1,..."))
