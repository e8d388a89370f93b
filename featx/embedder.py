"""Image files -> embeddings, cached in a feature store: a function and a scikit-learn transformer.

:func:`embed_files` embeds any list of image files with a backbone. The files form one growing
store per backbone configuration (``files__<backbone>__<hash>.h5`` in the cache folder, keyed by
absolute path): a file already embedded and unchanged since is read back, not recomputed, and
files of earlier calls stay in the store as long as they exist.

:class:`Embedder` wraps it as a scikit-learn transformer, so a backbone can be the first step of a
pipeline that takes image paths::

    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import Pipeline
    from featx import Embedder
    from featx.heads import make_head

    pipe = Pipeline([("emb", Embedder("efficientnet_lite0")), ("clf", make_head("logreg"))])
    cross_val_score(pipe, paths, labels, cv=5)   # each image is embedded once, in the first fold

Examples
--------
>>> from featx.embedder import embed_files
>>> X = embed_files(["a.jpg", "b.png"], "efficientnet_lite0").X  # doctest: +SKIP
>>> X.shape  # doctest: +SKIP
(2, 1280)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from featx.errors import FeatxError
from featx.options import DEFAULT_BACKBONE, DEFAULT_WEIGHTS, ExtractOptions

log = logging.getLogger(__name__)

#: Source identity of the per-backbone store that holds embedded files.
FILES_SOURCE = {"kind": "files", "uri": "files"}


@dataclass(frozen=True)
class Embedded:
    """Result of :func:`embed_files`.

    Attributes
    ----------
    X : ndarray of shape (n, d), float32
        One row per requested file, in the order given.
    paths : list of str
        The requested files as absolute paths, in the same order.
    store : str
        The store that holds them.
    n_extracted : int
        Images the backbone ran on in this call (0 when everything was cached).
    """

    X: np.ndarray
    paths: list[str]
    store: str
    n_extracted: int
    failed: dict[str, str] = field(default_factory=dict)


def as_paths(X: Any) -> list[str]:
    """A 1-d sequence of paths (list, array, Series, or one-column 2-d array) as a list of str."""
    if isinstance(X, str | os.PathLike):
        raise FeatxError("give a list of image paths, not a single path")
    if hasattr(X, "to_numpy"):  # pandas Series / one-column DataFrame
        X = X.to_numpy()
    arr = np.asarray(X, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise FeatxError(
            f"expected a 1-d list of image paths, got an array of shape {arr.shape}; "
            "pass one path per sample"
        )
    out = []
    for v in arr:
        if not isinstance(v, str | os.PathLike):
            raise FeatxError(
                f"expected image paths (str or os.PathLike), got {type(v).__name__} {v!r:.40}"
            )
        out.append(os.fspath(v))
    return out


def _file_item(path: str):
    from featx.sources import Item

    st = os.stat(path)
    return Item(key=path, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def files_source(paths: Iterable[str], keep: Iterable[str] = ()):
    """A :class:`~featx.sources.Source` of absolute file paths (unlabeled).

    ``keep`` are keys already in the store: those whose file still exists stay in the source, so
    a call with other files does not drop them from the store.
    """
    from featx.sources import Source, file_reader

    items = {p: _file_item(p) for p in paths}
    for k in keep:
        if k not in items and os.path.isfile(k):
            items[k] = _file_item(k)
    return Source(
        kind=FILES_SOURCE["kind"],
        uri=FILES_SOURCE["uri"],
        name="files",
        classes=(),
        items=sorted(items.values(), key=lambda it: it.key),
        read=file_reader(),
    )


def _absolute(paths: list[str]) -> list[str]:
    out = [os.path.abspath(p) for p in paths]
    missing = [p for p, a in zip(paths, out, strict=True) if not os.path.isfile(a)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FeatxError(f"image file {missing[0]} does not exist{more}; check the paths")
    return out


def embed_files(
    paths: Iterable[str | os.PathLike],
    backbone: Any = "efficientnet_lite0",
    *,
    weights: str | None = "DEFAULT",
    image_size: int | None = None,
    store: str | os.PathLike | None = None,
    options: Any = None,
    on_error: str = "raise",
) -> Embedded:
    """Embed image files with a backbone, extracting only those not yet in its store.

    Parameters
    ----------
    paths : iterable of path-like
        Image files; relative paths are taken from the current directory.
    backbone : str or Backbone
        A registry name (``featx backbones``) or a loaded backbone.
    weights, image_size
        For :func:`featx.backbones.load_backbone` when ``backbone`` is a name.
    store : path-like, optional
        The store file; default ``files__<backbone>__<hash>.h5`` in the cache folder.
    options : featx.options.ExtractOptions, optional
        Batch size, device, precision, workers, progress.
    on_error : {"raise", "nan"}
        What to do with a file that does not decode: raise a FeatxError naming it, or give it a
        row of NaN (listed in ``failed``).

    Returns
    -------
    Embedded
    """
    from featx.extraction import extract
    from featx.store import load_features, read_index

    if on_error not in ("raise", "nan"):
        raise FeatxError(f"on_error must be 'raise' or 'nan', not {on_error!r}")
    req = _absolute([os.fspath(p) for p in paths])
    opts = options or ExtractOptions()
    if isinstance(backbone, str):
        from featx.backbones import load_backbone

        bb = load_backbone(backbone, weights, image_size=image_size)
    else:
        bb = backbone
    store = Path(store) if store is not None else default_files_store(bb, opts.dtype)
    keep = read_index(store).keys if store.exists() else ()
    res = extract(files_source(req, keep), bb, store=store, options=opts)
    fs = load_features(store)
    row = {k: i for i, k in enumerate(fs.keys)}
    X = np.full((len(req), fs.dim), np.nan, dtype=np.float32)
    failed: dict[str, str] = {}
    reasons = None
    for i, p in enumerate(req):
        r = row.get(p)
        if r is not None:
            X[i] = fs.X[r]
            continue
        if reasons is None:
            idx = read_index(store)
            reasons = dict(zip(idx.failed_keys, idx.failed_reasons, strict=True))
        failed[p] = reasons.get(p, "not extracted")
    if failed and on_error == "raise":
        p, why = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise FeatxError(f"{p}: {why}{more}; remove it, or pass on_error='nan'")
    return Embedded(X=X, paths=req, store=str(store), n_extracted=res.n_new, failed=failed)


def default_files_store(backbone: Any, dtype: str = "float32") -> Path:
    """Where :func:`embed_files` keeps the embeddings of ``backbone`` by default."""
    from featx.extraction import store_config
    from featx.store import default_store_path

    return default_store_path(store_config(files_source([]), backbone, dtype), "files")


class Embedder(TransformerMixin, BaseEstimator):
    """Scikit-learn transformer: image paths -> backbone embeddings, cached in a feature store.

    ``fit`` loads the backbone (nothing is learned); ``transform`` returns one row per path,
    running the backbone only on files not already in the store. Use it as the first step of a
    :class:`~sklearn.pipeline.Pipeline` whose input is a list of image paths.

    Parameters
    ----------
    backbone : str or Backbone, default="efficientnet_lite0"
        A name from ``featx backbones`` or a loaded backbone object.
    weights : str, default="DEFAULT"
        Weights of a named backbone: ``DEFAULT``, an enum name or ``none``.
    image_size : int, optional
        Override the input size of a named backbone.
    store : path-like, optional
        Store file; default ``files__<backbone>__<hash>.h5`` in the cache folder, shared by
        every Embedder with the same backbone configuration.
    batch_size : int, default=64
    device : str, default="auto"
        ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    precision : str, default="auto"
    workers : int, optional
        DataLoader workers (default: by device).
    on_error : {"raise", "nan"}, default="raise"
        A file that does not decode raises, or becomes a row of NaN.
    progress : bool, default=False
        Show a progress bar on stderr while extracting.

    Attributes
    ----------
    backbone_ : Backbone
        The loaded backbone.
    store_ : str
        The store file the embeddings live in.

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline
    >>> from featx import Embedder
    >>> from featx.heads import make_head
    >>> pipe = Pipeline([("emb", Embedder()), ("clf", make_head("logreg"))])
    >>> pipe.fit(train_paths, train_labels).predict(test_paths)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: Any = DEFAULT_BACKBONE,
        *,
        weights: str = DEFAULT_WEIGHTS,
        image_size: int | None = None,
        store: str | os.PathLike | None = None,
        batch_size: int = ExtractOptions.batch_size,  # the defaults of featx.options, once
        device: str = ExtractOptions.device,
        precision: str = ExtractOptions.precision,
        workers: int | None = ExtractOptions.workers,
        on_error: str = "raise",
        progress: bool = ExtractOptions.progress,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.store = store
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.workers = workers
        self.on_error = on_error
        self.progress = progress

    def fit(self, X: Any, y: Any = None) -> Embedder:
        """Check the paths and load the backbone; nothing is learned from ``X`` or ``y``."""
        as_paths(X)
        if isinstance(self.backbone, str):
            from featx.backbones import load_backbone

            self.backbone_ = load_backbone(self.backbone, self.weights, image_size=self.image_size)
        else:
            self.backbone_ = self.backbone
        self._n_features_out = int(self.backbone_.dim)
        self.store_ = str(self.store or default_files_store(self.backbone_))
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Embed the image paths ``X``; returns an array of shape (len(X), backbone dim)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "backbone_")
        opts = ExtractOptions(
            batch_size=self.batch_size,
            workers=self.workers,
            device=self.device,
            precision=self.precision,
            progress=self.progress,
        )
        res = embed_files(
            as_paths(X),
            self.backbone_,
            store=self.store_,
            options=opts,
            on_error=self.on_error,
        )
        return res.X

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``emb0 ... emb{d-1}``."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "backbone_")
        return np.asarray([f"emb{i}" for i in range(self._n_features_out)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
