"""From a trained head bundle and new raw images to labels.

The bundle remembers the backbone configuration of the store it was trained on. Prediction
rebuilds exactly that backbone, extracts the new images into their own cached store (so a second
prediction over the same folder extracts nothing), checks the feature dimension, and writes a CSV
with the predicted label and per-class probabilities. Cells a spreadsheet would run as formulas
(labels or file names starting with ``=``, ``+``, ``-``, ``@``) are written with a leading quote.

When the cache folder is read-only, an up-to-date cached store is used as it is; otherwise the
features are extracted into a temporary store that is removed afterwards.

Examples
--------
>>> import featx
>>> res = featx.predict("head.npz", "new_photos/", out="preds.csv")  # doctest: +SKIP
>>> res.n_predicted  # doctest: +SKIP
42
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featx.errors import FeatxError, StoreReadOnlyError
from featx.files import atomic_write
from featx.options import BackboneSpec, ExtractOptions, TextFormat

if TYPE_CHECKING:  # pragma: no cover
    from featx.backbones import Backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    out: str
    store: str
    n_predicted: int
    n_failed: int
    n_extracted: int
    classes: tuple[str, ...]
    counts: dict[str, int]
    accuracy: float | None  # when the new source carries labels the head knows

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def rebuild_backbone(
    store_meta: Mapping[str, Any],
    weights_file: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> Backbone:
    """Load the backbone a bundle's store was built with, and prove it is the same one.

    The store's recorded ``config.backbone`` becomes a :class:`~featx.options.BackboneSpec`
    (:meth:`~featx.options.BackboneSpec.from_config`), the backbone is loaded from it, and its
    ``config()`` must equal the recorded one.

    What a bundle may name (the trust model, see RELIABILITY.md): a registered backbone
    (embedded, torchvision, timm, the bundled MiniLM). A bundle is a file anyone can write, so
    a local model folder it names is loaded only when the user passes that folder as
    ``model_dir`` (``--model-dir``), and a local weights file only as ``weights_file``; the
    folder's weights and vocabulary must then hash to what the bundle recorded.
    """
    from featx.backbones import load_backbone

    cfg = (store_meta.get("config") or {}).get("backbone")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
        raise FeatxError("the bundle does not record its backbone; refit it with this featx")
    spec = BackboneSpec.from_recorded(cfg, weights_file=weights_file, model_dir=model_dir)
    crop = spec.image_size
    bb = load_backbone(replace(spec, image_size=None))
    if crop and bb.preprocess.crop_size != crop:
        bb = load_backbone(spec)
    if cfg.get("layers"):  # a multi-layer store: the same layers from one pass
        from featx.backbones.layers import with_layers

        bb = with_layers(bb, cfg["layers"])
    got = bb.config()
    if model_dir is not None:  # the folder may live elsewhere now; its hashes must agree
        got = {**got, "name": cfg["name"]}
    if got != cfg:
        from featx.store import StoreConfig, config_difference

        diff = config_difference(
            StoreConfig(source={}, backbone=cfg), StoreConfig(source={}, backbone=got)
        )
        raise FeatxError(
            f"cannot rebuild the bundle's backbone exactly ({diff}); "
            "use the featx version and weights it was trained with"
        )
    return bb


def prediction_store(src: Any, backbone: Any, options: ExtractOptions) -> Path:
    """Where ``featx predict`` keeps the features of a new source: the source's own store when
    one was extracted before (``featx extract`` with the same backbone), else
    ``<cache>/predict/<store name>`` (``featx cache ls`` lists them, ``featx cache clean --kind
    prediction`` removes them)."""
    from featx.cache import PREDICT_DIR
    from featx.extraction import store_config
    from featx.store import default_store_path

    usual = default_store_path(store_config(src, backbone, options.dtype), src.name)
    return usual if usual.is_file() else usual.parent / PREDICT_DIR / usual.name


def input_order(source: str | os.PathLike, src: Any) -> list[Any]:
    """The source's items in the order of its input: a table's or manifest's rows, a folder's
    sorted walk (its items' order), a torchvision dataset's indices."""
    items = list(src.items)
    if any(getattr(it, "line", 0) for it in items):  # text tables
        return sorted(items, key=lambda it: getattr(it, "line", 0))
    if src.kind == "csv" and Path(os.fspath(source)).is_file():
        rank = _manifest_rows(Path(os.fspath(source)))
        return sorted(items, key=lambda it: rank.get(it.key, len(rank)))
    return items


def _manifest_rows(path: Path) -> dict[str, int]:
    """An image manifest's keys (paths relative to its folder, normalized) -> row number."""
    base = str(path.parent)
    rank: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for i, row in enumerate(csv.DictReader(f)):
                p = (row.get("path") or "").strip()
                if not p:
                    continue
                full = os.path.normpath(os.path.join(base, p))  # as featx.sources keys them
                rel = os.path.relpath(full, base)
                inside = rel != os.pardir and not rel.startswith(os.pardir + os.sep)
                rank.setdefault(rel.replace(os.sep, "/") if inside else full, i)
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return rank


def _lead_columns(
    source: str | os.PathLike, src: Any, items: list[Any]
) -> tuple[list[str], list[list[Any]]]:
    """The columns that say which input each prediction is for, and their values per item.

    Images and text files: ``path``, as reachable from where the command ran (the source as
    typed, joined with the item's path inside it), the same convention as a glob pattern's
    files; a URI manifest gives the file's URI, a torchvision dataset ``key`` (split/index).
    Text tables: ``line``, the user's id column (when it has one) and text column, under their
    own names.
    """
    s = os.fspath(source)
    if src.kind.startswith("text-") and src.kind != "text-folder":
        cols = ["line"]
        id_col = getattr(src, "id_column", "") or ""
        text_col = getattr(src, "text_column", "") or "text"
        if id_col:
            cols.append(id_col)
        cols.append(text_col if text_col not in cols else f"{text_col}_text")
        rows = [
            [it.line, *([it.key] if id_col else []), it.text if it.text is not None else ""]
            for it in items
        ]
        return cols, rows
    if src.kind == "torchvision":
        return ["key"], [[it.key] for it in items]
    if src.kind == "csv":
        base = os.path.dirname(s)
        if "://" in s:
            return ["path"], [[it.path] for it in items]
        return ["path"], [[os.path.join(base, it.key)] for it in items]
    if Path(s).is_dir():
        return ["path"], [[os.path.join(s, it.key)] for it in items]
    return ["path"], [[it.path or it.key] for it in items]  # e.g. sklearn:digits, materialized


@dataclass
class _Features:
    """The features predict labels, and what the CSV says about their rows."""

    keys: Any
    X: np.ndarray
    store: str
    n_failed: int
    n_new: int
    true: Any  # the known label of each row, or None
    columns: dict[str, dict[str, Any]]  # the modality's item columns (text: line)
    key_column: str = "path"  # the modality's name for the key: path, key
    fs: Any = None  # the FeatureSet read back, where there is a store
    lead: Any = None  # (columns, values per row) that say which input each row is for


def _source_features(
    source: Any,
    bb: Any,
    opts: ExtractOptions,
    modality: Any,
    scratch_name: str = "features.h5",
    **how: Any,
) -> _Features:
    """Scan a source and extract it into its cached store (a temporary one, ``scratch_name``,
    when the cache folder is read-only), then read it back."""
    from featx.extraction import extract
    from featx.modalities import open_source
    from featx.store import load_features

    src = open_source(
        source,
        content_hash=opts.content_hash,
        modality=modality.name,
        allow_outside_root=opts.allow_outside_root,
        **how,
    )
    with tempfile.TemporaryDirectory(prefix="featx-predict-") as scratch:
        try:
            r = extract(src, bb, options=opts, store=prediction_store(src, bb, opts))
        except StoreReadOnlyError as exc:
            log.warning("%s; extracting into a temporary store instead (not kept)", exc)
            r = extract(src, bb, options=opts, store=Path(scratch) / scratch_name)
        fs = load_features(r.store)
    columns = {}
    for col in modality.item_columns:
        values = {it.key: getattr(it, col, 0) for it in src.items}
        if any(values.values()):
            columns[col] = values
    true = (
        np.array([fs.classes[y] if y >= 0 else "" for y in fs.y], dtype=object)
        if fs.classes
        else None
    )
    # rows in the input's order (a table's lines, a manifest's rows, a folder's walk), led by
    # the columns that say which input each is for
    at = {k: i for i, k in enumerate(fs.keys)}
    ordered = [it for it in input_order(source, src) if it.key in at]
    pick = np.asarray([at[it.key] for it in ordered], dtype=np.int64)
    return _Features(
        np.asarray([it.key for it in ordered], dtype=object),
        fs.X[pick] if len(pick) else fs.X[:0],
        r.store,
        r.n_failed,
        r.n_new,
        None if true is None else true[pick],
        columns,
        modality.key_column,
        fs,
        lead=_lead_columns(source, src, ordered),
    )


def _file_features(files: list[str], bb: Any, opts: ExtractOptions) -> _Features:
    """Embed loose files through the backbone's store of files; a failed file is left out.

    ``fs`` is the store's feature set restricted to the files, in their order, keyed by the
    paths as given (so the stores of a fused bundle join on them), groups kept."""
    from featx.embedder import embed_files
    from featx.store import load_features

    emb = embed_files(files, bb, options=opts, on_error="nan")
    ok = ~np.isnan(emb.X).any(axis=1)
    for p, why in emb.failed.items():
        log.warning("%s: %s", p, why)
    keys = np.asarray(files, dtype=object)[ok]
    stored = load_features(emb.store)
    at = {k: i for i, k in enumerate(stored.keys)}
    pick = np.asarray([at[p] for p, good in zip(emb.paths, ok, strict=True) if good], np.int64)
    fs = replace(
        stored,
        X=np.asarray(stored.X[pick]),
        y=np.asarray(stored.y)[pick],
        split=None if stored.split is None else np.asarray(stored.split)[pick],
        keys=keys,
        texts=None if stored.texts is None else np.asarray(stored.texts)[pick],
    )
    return _Features(keys, fs.X, emb.store, int((~ok).sum()), emb.n_extracted, None, {}, fs=fs)


def _input_features(
    source: Any,
    bb: Any,
    opts: ExtractOptions,
    modality: Any,
    scratch_name: str = "features.h5",
    **how: Any,
) -> _Features:
    """The features of what ``featx predict`` was given, one way for every kind of bundle:
    one file or a glob pattern (a modality with file lists) goes to the backbone's store of
    loose files, anything else (folder, manifest, table, dataset) through the source kinds."""
    files = image_files(source) if modality.file_lists else None
    if files is None:
        return _source_features(source, bb, opts, modality, scratch_name, **how)
    return _file_features(files, bb, opts)


def _bundle_backbone(
    b: Any, weights_file: str | os.PathLike | None, model_dir: str | os.PathLike | None = None
) -> Backbone:
    """The bundle's backbone, rebuilt exactly, with the feature size the head expects."""
    bb = rebuild_backbone(b.store_meta, weights_file, model_dir)
    if b.dim is not None and int(b.dim) != int(bb.dim):
        raise FeatxError(
            f"the bundle expects {b.dim}-d features but its backbone gives {bb.dim}-d; refit it"
        )
    return bb


def image_files(source: str | os.PathLike) -> list[str] | None:
    """The files SOURCE names when it is one image file or a glob pattern; None otherwise.

    A folder, a ``.csv`` manifest or a ``scheme:NAME`` source is not a file list (None).
    """
    s = os.fspath(source)
    p = Path(s)
    if p.is_file():
        from featx.images import is_image_name

        return [s] if is_image_name(p.name) else None
    if p.exists() or not any(c in s for c in "*?["):
        return None
    import glob

    files = sorted(f for f in glob.glob(s, recursive=True) if os.path.isfile(f))
    if not files:
        raise FeatxError(f"no file matches {s!r}; check the pattern (quote it for the shell)")
    return files


def predict(
    bundle: str | os.PathLike,
    source: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    options: ExtractOptions | None = None,
    weights_file: str | os.PathLike | None = None,
    root: str | None = None,
    download: bool = False,
    text: TextFormat | None = None,
    trust: bool = False,
    model_dir: str | os.PathLike | None = None,
) -> PredictResult:
    """Predict labels of every image or text of ``source`` with a head bundle; write a CSV.

    Parameters
    ----------
    bundle : path-like
        A bundle written by ``featx fit``.
    source : str or path-like
        Folder, CSV manifest or ``torchvision:NAME``, as for ``featx extract``; or one image
        file or a glob pattern (``"photos/*.jpg"``, ``"**"`` recursive), whose features go to
        the backbone's store of loose files (see :func:`featx.embedder.embed_files`).
    out : path-like, optional
        The CSV (default ``preds.csv``), written atomically, one row per readable input in the
        input's order: ``path`` (as reachable from the working directory: the source as typed
        joined with the file's path inside it, or the file as typed; a text table: ``line``, its
        id column when it has one and its text column, under their own names), ``predicted``,
        ``true_label`` when known, and one ``p_<class>`` column per class when the head gives
        probabilities.
    options : ExtractOptions, optional
        How to run the extraction.
    text : TextFormat, optional
        Columns of a text table.
    trust : bool, default False
        Also load a pickle-based bundle (see :func:`featx.bundle.load_bundle`): only for files
        whose origin you trust.
    model_dir : path-like, optional
        The local model folder the bundle's backbone was built from, when it was one (a bundle
        never makes featx load a folder by itself; see :func:`rebuild_backbone`).
    """
    from featx.bundle import load_bundle
    from featx.finetuning.bundle import is_finetune_bundle

    opts = options or ExtractOptions()
    how = {"root": root, "download": download, "text": text}
    if is_finetune_bundle(bundle):  # featx finetune's: frozen prefix, then the tuned tail
        return _predict_finetuned(
            bundle, source, out, opts, weights_file=weights_file, model_dir=model_dir, **how
        )
    b = load_bundle(bundle, trust=trust)
    if b.store_meta.get("feature_groups") or b.store_meta.get("fused"):
        got = _grouped_inputs(b, source, opts, weights_file, model_dir=model_dir, **how)
    else:
        from featx.modalities import get_modality, modality_of

        bb = _bundle_backbone(b, weights_file, model_dir)
        got = _input_features(source, bb, opts, get_modality(modality_of(bb)), **how)
        b.check_compatible(got.X.shape[1])
    return _write_predictions(b, out, got)


def _grouped_inputs(
    b: Any,
    source: str | os.PathLike,
    opts: ExtractOptions,
    weights_file: str | os.PathLike | None,
    model_dir: str | os.PathLike | None = None,
    **how: Any,
) -> _Features:
    """Features of ``source`` for a head on feature groups: every store of a fusion extracted
    (each with its own backbone), joined by key, and the bundle's groups picked in its order;
    the texts go along when a group is TF-IDF."""
    from featx.features import TextRows
    from featx.fusion import fuse
    from featx.groups import GroupChoice, view
    from featx.modalities import get_modality, modality_of

    metas = list(b.store_meta.get("fused") or [b.store_meta])
    if weights_file is not None and len(metas) > 1:
        raise FeatxError("--weights-file applies to a bundle of one store, not a fusion")
    sets: dict[str, Any] = {}
    parts: list[_Features] = []
    key_columns: set[str] = set()
    for i, meta in enumerate(metas):
        bb = rebuild_backbone(meta, weights_file, model_dir)
        modality = get_modality(modality_of(bb))
        key_columns.add(modality.key_column)
        got = _input_features(source, bb, opts, modality, scratch_name=f"features-{i}.h5", **how)
        sets[str(meta.get("fusion_name") or f"store{i}")] = got.fs
        parts.append(got)
    fs = fuse(sets).features if len(sets) > 1 else next(iter(sets.values()))
    names = tuple(str(g[0]) for g in b.store_meta.get("feature_groups") or [])
    v = view(fs, GroupChoice("", names)) if names else fs
    b.check_compatible(v.dim)
    X = v.inputs()
    if isinstance(X, TextRows) and v.texts is None:
        raise FeatxError(
            "this head needs the texts, and the store keeps none; run the same 'featx extract' "
            "again (it adds them without re-embedding)"
        )
    true = (
        np.array([v.classes[y] if y >= 0 else "" for y in v.y], dtype=object) if v.classes else None
    )
    columns: dict[str, dict[str, Any]] = {}
    for got in parts:
        columns.update(got.columns)
    return _Features(
        keys=v.keys,
        X=X,
        store="+".join(got.store for got in parts),
        n_failed=sum(got.n_failed for got in parts),
        n_new=sum(got.n_new for got in parts),
        true=true,
        columns=columns,
        key_column=key_columns.pop() if len(key_columns) == 1 else "key",
    )


class _Probabilities:
    """A fine-tuned model's class probabilities, labelled the way a head bundle labels its
    features (so the predictions CSV is written by one function)."""

    def __init__(self, classes: Any) -> None:
        self.classes = tuple(classes)
        self.estimator = self

    def predict_proba(self, P: np.ndarray) -> np.ndarray:
        return P

    def predict(self, P: np.ndarray) -> np.ndarray:
        return np.array([self.classes[i] for i in np.argmax(P, axis=1)], dtype=object)


def _predict_finetuned(
    bundle: str | os.PathLike,
    source: str | os.PathLike,
    out: str | os.PathLike | None,
    opts: ExtractOptions,
    **how: Any,
) -> PredictResult:
    """Predict with a bundle of ``featx finetune`` (decoded items, no store; on
    ``opts.device``) and write the CSV."""
    from featx.finetuning.predict import predict_rows
    from featx.modalities import get_modality

    rows = predict_rows(
        bundle, source, allow_outside_root=opts.allow_outside_root, batch_size=opts.batch_size,
        device=opts.device, **how,
    )  # fmt: skip
    got = _Features(
        keys=rows.keys,
        X=rows.proba,
        store="",
        n_failed=rows.n_failed,
        n_new=0,
        true=rows.true,
        columns=rows.columns,
        key_column=get_modality(rows.modality).key_column,
    )
    return _write_predictions(_Probabilities(rows.classes), out, got)


def _write_predictions(b: Any, out: str | os.PathLike | None, got: _Features) -> PredictResult:
    """Label the features with the bundle and write the predictions CSV atomically."""
    from featx.csvsafe import safe_cell

    keys, X, true, columns = got.keys, got.X, got.true, got.columns
    pred = np.asarray(b.predict(X), dtype=object) if len(keys) else np.empty(0, dtype=object)
    proba = b.predict_proba(X) if hasattr(b.estimator, "predict_proba") and len(keys) else None

    out_path = Path(out or "preds.csv")
    buf = io.StringIO()
    w = csv.writer(buf)
    first = [got.key_column, *columns] if got.lead is None else list(got.lead[0])
    header = first + ["predicted"] + (["true_label"] if true is not None else [])
    if proba is not None:
        header += [f"p_{c}" for c in b.classes]
    w.writerow([safe_cell(c) for c in header])
    for i, key in enumerate(keys):
        if got.lead is None:
            lead = [key] + [values.get(key, 0) for values in columns.values()]
        else:
            lead = list(got.lead[1][i])
        row = lead + [pred[i]] + ([true[i]] if true is not None else [])
        if proba is not None:
            row += [f"{p:.6f}" for p in proba[i]]
        w.writerow([safe_cell(c) for c in row])
    # A file name that is not UTF-8 is written as its raw bytes, as the file system has it.
    atomic_write(out_path, buf.getvalue().encode("utf-8", "surrogateescape"))

    return PredictResult(
        out=str(out_path),
        store=got.store,
        n_predicted=len(keys),
        n_failed=got.n_failed,
        n_extracted=got.n_new,
        classes=tuple(b.classes),
        counts=_counts(pred),
        accuracy=_accuracy(pred, true, b.classes),
    )


def _counts(pred: np.ndarray) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pred:
        counts[str(p)] = counts.get(str(p), 0) + 1
    return counts


def _accuracy(pred: np.ndarray, true: Any, classes: Any) -> float | None:
    """Accuracy over the rows whose known label the head knows (None without such rows)."""
    if true is None:
        return None
    known = np.array([t in classes for t in true])
    return float(np.mean(pred[known] == true[known])) if known.any() else None
