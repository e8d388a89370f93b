"""Save and load a fitted head bundle: the head with its preprocessing, the class names, and the
configuration of the features it was trained on, so predictions on new images use the same
backbone and preprocessing.

The safe format
---------------
A bundle is a zip file (numpy's ``.npz`` layout) that loading never executes:

- ``featx-bundle.json``: format version, featx and scikit-learn versions, classes, feature dim,
  store configuration, metrics, and the estimator as a *state tree*: each object is its class
  name plus its attributes, each array a reference to a member below with its SHA-256;
- ``arrays/N.npy``: the arrays, read with ``allow_pickle=False``;
- ``featx-bundle.sha256``: the SHA-256 of ``featx-bundle.json``, so damage to any part is caught.

Loading rebuilds only classes it knows: the scikit-learn estimators featx heads are made of
(:data:`SAFE_CLASSES`), classes added with :func:`register_safe_class`, and scikit-learn
estimators defined in ``featx`` modules (so a new head plugs in without changes here). An object
is rebuilt like pickle does (``cls.__new__`` then its attribute dict), but from JSON and arrays:
nothing in the file can name a function to call. A class may instead declare its own state with
a ``_featx_state_()`` method and a ``_featx_from_state_(state)`` classmethod. A scikit-learn
estimator featx does not know (a custom preprocessing step) is stored with skops and loaded with
skops' audited loader, which refuses types it does not trust.

Bundles written by featx before this format are pickles (joblib): loading one can run any code
inside it, so :func:`load_bundle` refuses them unless ``trust=True`` (``--trust-pickle``).

A bundle is written atomically: a temporary file in the same folder, then ``os.replace``, so a
crash never leaves a half-written bundle under the final name. The checksums detect damage, not
forgery: anyone can write a bundle, but no bundle can run code when loaded.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from sklearn.linear_model import LogisticRegression
>>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]]); y = np.array([0, 1, 0, 1])
>>> est = LogisticRegression().fit(X, y)
>>> path = os.path.join(tempfile.mkdtemp(), "head.npz")
>>> meta = {"backbone": "resnet18", "dim": 2}
>>> _ = save_bundle(path, est, ("cat", "dog"), meta, {"accuracy": 1.0})
>>> b = load_bundle(path)
>>> b.predict(np.array([[0.0, 1.0]])).tolist(), b.dim
(['cat'], 2)
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import math
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.files import atomic_path

logger = logging.getLogger(__name__)

#: Version of the bundle layout: 2 is the safe zip format; 1 was a joblib pickle.
BUNDLE_FORMAT = 2
PICKLE_FORMAT = 1
_MAGIC = "featx-head-bundle"
_JSON = "featx-bundle.json"
_SUM = "featx-bundle.sha256"
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# what a joblib / pickle file starts with: a pickle protocol opcode, or joblib's compressors
_PICKLE_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00")

#: Limits checked before anything is read, so a forged bundle costs bounded time and memory.
#: A head bundle holds one JSON document and its arrays; featx writes the arrays uncompressed.
#: (featx.safezip adds the ratio, header and depth checks every bundle loader shares.)
MAX_MEMBERS = 10_000
MAX_JSON_BYTES = 64 << 20
MAX_TOTAL_BYTES = 8 << 30  # every array together (the largest real heads are ~1 GB)


class UnsafeBundleError(FeatxError):
    """The bundle is a pickle and loading it was not trusted explicitly."""


# ---------------------------------------------------------------------------------------------
# classes a bundle may rebuild
# ---------------------------------------------------------------------------------------------
#: Public name -> class of everything a bundle may rebuild besides featx estimators; filled on
#: first use with the scikit-learn pieces featx heads are made of.
SAFE_CLASSES: dict[str, type] = {}

_SKLEARN_SAFE = (
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing.StandardScaler",
    "sklearn.preprocessing.Normalizer",
    "sklearn.preprocessing.LabelBinarizer",
    "sklearn.preprocessing.LabelEncoder",
    "sklearn.decomposition.PCA",
    "sklearn.svm.LinearSVC",
    "sklearn.svm.SVC",
    "sklearn.linear_model.RidgeClassifier",
    "sklearn.linear_model.RidgeClassifierCV",
    "sklearn.linear_model.LogisticRegression",
    "featx.heads.sweep.RelativeGamma",
)


def register_safe_class(cls: type, name: str | None = None) -> type:
    """Let bundles store and rebuild ``cls`` (usable as a class decorator).

    Only register classes whose methods treat their attributes as data (arrays, numbers,
    strings): a bundle sets those attributes to whatever its file says.
    """
    _safe_classes()
    SAFE_CLASSES[name or f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _safe_classes() -> dict[str, type]:
    if not SAFE_CLASSES:
        for name in _SKLEARN_SAFE:
            module, _, attr = name.rpartition(".")
            SAFE_CLASSES[name] = getattr(importlib.import_module(module), attr)
    return SAFE_CLASSES


def _is_featx_estimator(cls: type) -> bool:
    from sklearn.base import BaseEstimator

    return cls.__module__.split(".")[0] == "featx" and issubclass(cls, BaseEstimator)


def _class_name(cls: type) -> str | None:
    """The stable name a bundle records for ``cls``, or None when it is not a safe class."""
    for name, known in _safe_classes().items():
        if known is cls:
            return name
    if _is_featx_estimator(cls):
        import featx.heads

        if getattr(featx.heads, cls.__name__, None) is cls:  # survives module moves
            return f"featx.heads.{cls.__name__}"
        return f"{cls.__module__}.{cls.__qualname__}"
    return None


def _resolve_class(name: str) -> type:
    known = _safe_classes().get(name)
    if known is not None:
        return known
    module, _, attr = name.rpartition(".")
    if module.split(".")[0] == "featx" and attr.isidentifier():
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and _is_featx_estimator(cls):
            return cls
    raise FeatxError(
        f"the bundle holds a {name}, which featx does not rebuild; "
        "refit the head with this featx (featx fit)"
    )


# ---------------------------------------------------------------------------------------------
# state trees: JSON + arrays, no code
# ---------------------------------------------------------------------------------------------
_NP_SCALARS = {
    "float64",
    "float32",
    "float16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
}


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> dict[str, Any]:
        if a.dtype.kind == "O":
            return {"$": "objarray", "shape": list(a.shape), "v": [self(x) for x in a.ravel()]}
        if a.dtype.kind not in "biufcU" or a.dtype.hasobject:
            raise FeatxError(f"cannot save an array of dtype {a.dtype} in a bundle")
        ref = f"arrays/{len(self.arrays)}.npy"
        self.arrays[ref] = a
        return {"$": "ndarray", "ref": ref}

    def __call__(self, o: Any) -> Any:
        if o is None or isinstance(o, bool | str):
            return o
        if isinstance(o, int):
            return o
        if isinstance(o, float):
            return o if math.isfinite(o) else {"$": "float", "v": repr(o)}
        if isinstance(o, np.ndarray):
            return self.array(o)
        if isinstance(o, np.generic):
            if o.dtype.name not in _NP_SCALARS:
                raise FeatxError(f"cannot save a numpy {o.dtype} scalar in a bundle")
            return {"$": "npscalar", "dtype": o.dtype.name, "v": self(o.item())}
        if isinstance(o, np.dtype):
            if o.hasobject:
                raise FeatxError("cannot save an object dtype in a bundle")
            return {"$": "dtype", "v": o.str}
        if isinstance(o, list):
            return [self(x) for x in o]
        if isinstance(o, tuple):
            return {"$": "tuple", "v": [self(x) for x in o]}
        if isinstance(o, dict):
            return {"$": "dict", "v": [[self(k), self(v)] for k, v in o.items()]}
        if isinstance(o, type):
            if o in (float, int, bool, str) or (
                issubclass(o, np.generic) and np.dtype(o).name in _NP_SCALARS
            ):
                return {
                    "$": "type",
                    "v": np.dtype(o).str if issubclass(o, np.generic) else o.__name__,
                }
            raise FeatxError(f"cannot save the type {o.__name__} in a bundle")
        return self.obj(o)

    def obj(self, o: Any) -> dict[str, Any]:
        cls = type(o)
        name = _class_name(cls)
        if name is None:
            return self.skops(o)
        if hasattr(cls, "_featx_state_"):
            return {"$": "custom", "cls": name, "state": self(o._featx_state_())}
        state = o.__getstate__() if hasattr(o, "__getstate__") else vars(o)
        if state is None:
            state = {}
        if not isinstance(state, dict):
            raise FeatxError(f"cannot save a {cls.__name__} in a bundle (no attribute state)")
        return {"$": "object", "cls": name, "state": self(dict(state))}

    def skops(self, o: Any) -> dict[str, Any]:
        from sklearn.base import BaseEstimator

        if not isinstance(o, BaseEstimator):
            raise FeatxError(
                f"cannot save a {type(o).__module__}.{type(o).__qualname__} in a bundle: "
                "featx saves scikit-learn estimators and arrays, never pickles"
            )
        import skops.io as sio

        data = np.frombuffer(sio.dumps(o), dtype=np.uint8)
        return {"$": "skops", "data": self.array(data)}


class _Decoder:
    def __init__(self, arrays: Mapping[str, np.ndarray], trust: bool) -> None:
        self.arrays = arrays
        self.trust = trust

    def __call__(self, o: Any) -> Any:
        if o is None or isinstance(o, bool | str | int | float):
            return o
        if isinstance(o, list):
            return [self(x) for x in o]
        if not isinstance(o, dict) or "$" not in o:
            raise ValueError(f"unexpected node {str(o)[:40]}")
        t = o["$"]
        if t == "ndarray":
            return self.arrays[o["ref"]]
        if t == "objarray":
            a = np.empty(len(o["v"]), dtype=object)
            a[:] = [self(x) for x in o["v"]]
            return a.reshape(o["shape"])
        if t == "float":
            if o["v"] not in ("nan", "inf", "-inf"):
                raise ValueError(f"bad float {o['v']!r}")
            return float(o["v"])
        if t == "npscalar":
            if o["dtype"] not in _NP_SCALARS:
                raise ValueError(f"bad scalar dtype {o['dtype']!r}")
            return np.dtype(o["dtype"]).type(self(o["v"]))
        if t == "dtype":
            d = np.dtype(str(o["v"]))
            if d.hasobject:
                raise ValueError("object dtype")
            return d
        if t == "type":
            v = str(o["v"])
            builtin = {"float": float, "int": int, "bool": bool, "str": str}
            if v in builtin:
                return builtin[v]
            d = np.dtype(v)
            if d.name not in _NP_SCALARS:
                raise ValueError(f"bad type {v!r}")
            return d.type
        if t == "tuple":
            return tuple(self(x) for x in o["v"])
        if t == "dict":
            return {self(k): self(v) for k, v in o["v"]}
        if t == "custom":
            cls = _resolve_class(str(o["cls"]))
            if not hasattr(cls, "_featx_from_state_"):
                raise ValueError(f"{o['cls']} has no _featx_from_state_")
            return cls._featx_from_state_(self(o["state"]))
        if t == "object":
            cls = _resolve_class(str(o["cls"]))
            state = self(o["state"])
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise ValueError(f"bad state for {o['cls']}")
            obj = cls.__new__(cls)
            setstate = getattr(cls, "__setstate__", None)
            if setstate is not None and setstate is not getattr(object, "__setstate__", None):
                obj.__setstate__(state)
            else:
                obj.__dict__.update(state)
            return obj
        if t == "skops":
            return self.skops(self(o["data"]))
        raise ValueError(f"unknown node type {t!r}")

    def skops(self, data: np.ndarray) -> Any:
        import skops.io as sio

        raw = np.asarray(data, dtype=np.uint8).tobytes()
        untrusted = sio.get_untrusted_types(data=raw)
        if untrusted and not self.trust:
            raise UnsafeBundleError(
                "the bundle holds a preprocessing step of a type skops does not trust "
                f"({', '.join(untrusted[:3])}); load it with trust=True (--trust-pickle) only if "
                "you trust where it came from"
            )
        return sio.loads(raw, trusted=untrusted or None)


def _feature_dim(estimator: Any) -> int | None:
    n = getattr(estimator, "n_features_in_", None)
    if n is None and hasattr(estimator, "steps"):
        n = getattr(estimator.steps[0][1], "n_features_in_", None)
    return None if n is None else int(n)


def save_bundle(
    path: str | os.PathLike,
    estimator: Any,
    classes: Sequence[str],
    store_meta: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a fitted head and everything needed to use it to ``path`` (atomically).

    Parameters
    ----------
    path : path-like
        The bundle file (conventionally ``*.npz``: it is a numpy zip that ``np.load`` reads);
        its folder is created if needed.
    estimator : fitted scikit-learn classifier
        Usually the ``Pipeline`` from :func:`featx.heads.make_head`, fitted on class indices
        into ``classes``.
    classes : sequence of str
        Class names; ``classes[i]`` is the name of class index ``i``.
    store_meta : mapping, optional
        The feature store's configuration (backbone, weights, layer, pool, preprocess, dim, ...);
        kept as given. Its ``"dim"``, when present, must match the head's input size.
    metrics : mapping, optional
        Evaluation results to keep with the head (e.g. ``Result.to_dict(details=False)``).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FeatxError
        An unfitted estimator, class indices outside ``classes``, a dim that disagrees with
        the store's, or an object that cannot be saved without pickle (not a scikit-learn
        estimator, array, number or string).
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise FeatxError("the head is not fitted; fit it before saving a bundle") from None
    except TypeError as e:
        raise FeatxError(
            f"cannot save {type(estimator).__name__}: not an estimator ({e})"
        ) from None
    classes = tuple(str(c) for c in classes)
    est_classes = np.asarray(getattr(estimator, "classes_", []))
    if est_classes.size and (
        not np.issubdtype(est_classes.dtype, np.integer)
        or est_classes.min() < 0
        or est_classes.max() >= len(classes)
    ):
        raise FeatxError(
            f"the head's classes {est_classes.tolist()[:5]} are not indices into the "
            f"{len(classes)} class names; fit the head on FeatureSet.y"
        )
    meta = dict(store_meta or {})
    dim = _feature_dim(estimator)
    if dim is None:
        dim = meta.get("dim")
    if dim is None:
        raise FeatxError("cannot tell the feature dimension of the head; fit it on a 2-D array")
    if meta.get("dim") is not None and int(meta["dim"]) != int(dim):
        raise FeatxError(
            f"the head takes {dim}-dim features but the store's dim is {meta['dim']}; "
            "fit the head on this store's features"
        )
    import sklearn

    from featx._version import __version__

    enc = _Encoder()
    payload = {
        "magic": _MAGIC,
        "format_version": BUNDLE_FORMAT,
        "featx_version": __version__,
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": list(classes),
        "dim": int(dim),
        "store_meta": json.loads(json.dumps(meta, default=_json_default)),
        "metrics": json.loads(json.dumps(dict(metrics or {}), default=_json_default)),
        "estimator": enc(estimator),
    }
    members = {ref: npy_bytes(arr) for ref, arr in enc.arrays.items()}
    payload["arrays"] = {ref: hashlib.sha256(b).hexdigest() for ref, b in members.items()}
    path = Path(path)
    write_safe_zip(path, (_JSON, _SUM), payload, members, allow_nan=False)
    logger.info("saved head bundle %s (%d classes, dim %d)", path, len(classes), dim)
    return path


def npy_bytes(arr: Any) -> bytes:
    """``arr`` as the bytes of a ``.npy`` file, never pickled."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_safe_zip(
    path: Path,
    names: tuple[str, str],
    payload: Mapping[str, Any],
    members: Mapping[str, bytes],
    *,
    allow_nan: bool = False,
) -> None:
    """The one writer of featx's safe bundles (head bundles here, fine-tuned bundles in
    :mod:`featx.finetuning.bundle`): ``payload`` as JSON (``names[0]``, deflated), its SHA-256
    (``names[1]``), then ``members`` (``.npy`` bytes, stored; the payload lists their SHA-256s),
    written atomically (a temporary file, then ``os.replace``)."""
    json_name, sum_name = names
    text = json.dumps(payload, indent=1, sort_keys=True, allow_nan=allow_nan).encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as f, zipfile.ZipFile(f, "w") as z:
        z.writestr(json_name, text, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(sum_name, hashlib.sha256(text).hexdigest() + "\n")
        for ref, data in members.items():
            z.writestr(ref, data, compress_type=zipfile.ZIP_STORED)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Bundle:
    """A loaded head bundle.

    Attributes
    ----------
    estimator : fitted scikit-learn classifier (with its preprocessing)
    classes : tuple of str
    dim : int
        Feature dimension the head takes.
    store_meta : dict
        Configuration of the store it was trained on (backbone, weights, layer, pool, ...).
    metrics : dict
    featx_version : str
        featx version that wrote it.
    format_version : int
    created : str
        ISO time of writing (UTC).
    path : Path or None
    """

    estimator: Any
    classes: tuple[str, ...]
    dim: int
    store_meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    featx_version: str = ""
    format_version: int = BUNDLE_FORMAT
    created: str = ""
    path: Path | None = None

    def check_compatible(self, dim: int) -> None:
        """Raise FeatxError unless features of size ``dim`` fit this head."""
        if int(dim) != self.dim:
            backbone = self.store_meta.get("backbone")
            hint = f" (backbone {backbone!r})" if backbone else ""
            raise FeatxError(
                f"the head takes {self.dim}-dim features but got {dim}-dim ones; extract features "
                f"with the bundle's backbone configuration{hint}"
            )

    def _X(self, X: Any) -> Any:
        if hasattr(X, "texts") and hasattr(X, "X"):  # TextRows: texts beside dense features
            self.check_compatible(X.X.shape[1])
            if not np.isfinite(X.X).all():
                raise FeatxError("features contain NaN or inf; re-extract them")
            return X
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2:
            raise FeatxError(f"features must be a 2-D array (items x dim); got shape {X.shape}")
        self.check_compatible(X.shape[1])
        if not np.isfinite(X).all():
            raise FeatxError("features contain NaN or inf; re-extract them")
        return X

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n, len(classes)), columns in the order of ``classes``."""
        X = self._X(X)
        if not hasattr(self.estimator, "predict_proba"):
            raise FeatxError(
                "this head gives no probabilities (every built-in head does; a custom estimator "
                "needs predict_proba); use predict"
            )
        P = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        out = np.zeros((P.shape[0], len(self.classes)))
        out[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = P
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class names, an array of str of shape (n,)."""
        X = self._X(X)
        idx = np.asarray(self.estimator.predict(X), dtype=np.int64)
        return np.asarray(self.classes, dtype=object)[idx].astype(str)


def load_bundle(path: str | os.PathLike, *, trust: bool = False) -> Bundle:
    """Load a bundle written by :func:`save_bundle`; nothing in the file is executed.

    Parameters
    ----------
    path : path-like
        The bundle file.
    trust : bool, default False
        Also load a pickle-based bundle (written by featx before the safe format, or by hand)
        and skops types that skops does not trust. Unpickling runs whatever code the file
        holds: pass True only for files whose origin you trust.

    Raises
    ------
    FeatxError
        The file is missing, corrupt (a checksum does not match), not a featx bundle, written in
        a bundle format this featx cannot read, or holds a class featx does not rebuild.
    UnsafeBundleError
        The file is a pickle and ``trust`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"no head bundle at {str(path)!r}; check the path or run featx fit")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        payload, version = _read_safe(path, trust)
    elif head.startswith(_HDF5_MAGIC):
        raise FeatxError(
            f"{str(path)!r} is a feature store (HDF5), not a head bundle; give the file "
            "written by featx fit --out (or fit one: featx fit STORE --out head.npz)"
        )
    elif head.startswith(_PICKLE_MAGICS):
        payload, version = _read_pickle(path, trust)
    else:
        raise FeatxError(
            f"{str(path)!r} is not a featx head bundle (neither a bundle zip nor an old "
            "pickle bundle); give the file written by featx fit --out"
        )
    import sklearn

    saved_with = payload.get("sklearn_version")
    if saved_with and saved_with != sklearn.__version__:
        logger.warning(
            "bundle %s was saved with scikit-learn %s, this is %s; predictions may differ",
            path,
            saved_with,
            sklearn.__version__,
        )
    classes = payload.get("classes")
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        raise FeatxError(
            f"{str(path)!r} is not a usable head bundle (its class names are not a list of "
            "strings); refit with featx fit"
        )
    try:
        b = Bundle(
            estimator=payload["estimator"],
            classes=tuple(classes),
            dim=int(payload["dim"]),
            store_meta=dict(payload.get("store_meta") or {}),
            metrics=dict(payload.get("metrics") or {}),
            featx_version=str(payload.get("featx_version", "")),
            format_version=int(version),
            created=str(payload.get("created", "")),
            path=path,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise FeatxError(
            f"{str(path)!r} is an incomplete head bundle (missing {e}); refit with featx fit"
        ) from None
    _check_structure(b)
    return b


def _corrupt(path: Path, why: str) -> FeatxError:
    return FeatxError(
        f"{str(path)!r} is not a readable head bundle ({why}); "
        "it is corrupt or not a featx bundle: refit with featx fit"
    )


def _check_version(path: Path, version: Any, expected: int) -> None:
    if version != expected:
        newer = isinstance(version, int) and version > BUNDLE_FORMAT
        raise FeatxError(
            f"{str(path)!r} has bundle format {version!r} but this featx reads format "
            f"{expected}; " + ("upgrade featx" if newer else "refit the head with this featx")
        )


def _member(z: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """One member, its declared size and ratio checked first (:mod:`featx.safezip`)."""
    from featx.safezip import ZipLimitError, read_member

    try:
        return read_member(z, name, limit)
    except ZipLimitError as e:
        raise _corrupt(path, str(e)) from None


def _npy(data: bytes, ref: str, path: Path) -> np.ndarray:
    """An array whose ``.npy`` header must describe exactly its bytes (:mod:`featx.safezip`)."""
    from featx.safezip import ZipLimitError, read_npy

    try:
        return read_npy(data, ref)
    except ZipLimitError as e:
        raise _corrupt(path, str(e)) from None


def _read_safe(path: Path, trust: bool) -> tuple[dict[str, Any], int]:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise _corrupt(path, f"{len(infos)} members, more than {MAX_MEMBERS}")
            from featx.safezip import ZipLimitError, load_json

            names = {i.filename for i in infos}
            if _JSON not in names:
                raise FeatxError(
                    f"{str(path)!r} is a zip file but not a featx head bundle; "
                    "give the file written by featx fit"
                )
            text = _member(z, _JSON, MAX_JSON_BYTES, path)
            want = _member(z, _SUM, 1024, path).decode().strip() if _SUM in names else ""
            if hashlib.sha256(text).hexdigest() != want:
                raise _corrupt(path, f"{_JSON} does not match its SHA-256")
            try:
                meta = load_json(text, _JSON)
            except ZipLimitError as e:
                raise _corrupt(path, str(e)) from None
            if not isinstance(meta, dict) or meta.get("magic") != _MAGIC:
                raise FeatxError(
                    f"{str(path)!r} is a zip file but not a featx head bundle; "
                    "give the file written by featx fit"
                )
            version = meta.get("format_version")
            _check_version(path, version, BUNDLE_FORMAT)
            listed = meta.get("arrays") or {}
            if not isinstance(listed, dict) or not all(
                isinstance(r, str) and isinstance(d, str) for r, d in listed.items()
            ):
                raise _corrupt(path, "its array list is not a table of names and SHA-256s")
            total = sum(z.getinfo(r).file_size for r in listed if r in names)
            if total > MAX_TOTAL_BYTES:
                raise _corrupt(path, f"its arrays declare {total} bytes, more than allowed")
            arrays: dict[str, np.ndarray] = {}
            for ref, digest in listed.items():
                data = _member(z, ref, MAX_TOTAL_BYTES, path)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise _corrupt(path, f"{ref} does not match its SHA-256")
                arrays[ref] = _npy(data, ref, path)
    except FeatxError:
        raise
    except (
        OSError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        KeyError,
        ValueError,
        UnicodeDecodeError,
        EOFError,
        NotImplementedError,  # an unsupported compression method
        RuntimeError,  # an encrypted member
        zlib.error,  # a damaged deflate stream
    ) as e:
        raise _corrupt(path, type(e).__name__) from None
    try:
        meta["estimator"] = _Decoder(arrays, trust)(meta.get("estimator"))
    except FeatxError:
        raise
    except Exception as e:  # noqa: BLE001 - the state is untrusted input: any failure is damage
        raise _corrupt(path, f"bad estimator state: {type(e).__name__} {str(e)[:80]}") from None
    return meta, int(version)


def _check_structure(b: Bundle) -> None:
    """Refuse a bundle whose head cannot predict into its classes, before any real prediction.

    The checks: an estimator with ``predict``, a positive dim, class names that are strings,
    the head's ``classes_`` indices into them, and one probe prediction on a zero row giving a
    known class index (and probabilities of the right shape).
    """
    where = str(b.path) if b.path else "the bundle"
    bad = f"{where!r} is not a usable head bundle"
    est = b.estimator
    if est is None or not callable(getattr(est, "predict", None)):
        raise FeatxError(f"{bad} (it holds no estimator with predict); refit with featx fit")
    grouped = bool(b.store_meta.get("feature_groups"))  # inputs beside texts, not one matrix
    if not (0 if grouped else 1) <= b.dim <= 1 << 24:
        raise FeatxError(f"{bad} (feature dim {b.dim}); refit with featx fit")
    if not b.classes:
        raise FeatxError(f"{bad} (no class names); refit with featx fit")
    idx = np.asarray(getattr(est, "classes_", np.arange(len(b.classes))))
    if (
        idx.ndim != 1
        or not idx.size
        or not np.issubdtype(idx.dtype, np.integer)
        or idx.min() < 0
        or idx.max() >= len(b.classes)
    ):
        raise FeatxError(
            f"{bad} (the head's classes are not indices into its {len(b.classes)} class "
            "names); refit with featx fit"
        )
    if grouped:
        return  # a grouped head takes texts too: no probe row; predict guards its calls
    probe = np.zeros((1, b.dim))
    try:
        with np.errstate(all="ignore"):
            p = np.asarray(est.predict(probe))
            if p.shape != (1,) or int(p[0]) not in set(idx.tolist()):
                raise ValueError(f"predicted {p.ravel()[:3].tolist()}")
            if hasattr(est, "predict_proba"):
                q = np.asarray(est.predict_proba(probe))
                if q.shape != (1, idx.size):
                    raise ValueError(f"probabilities of shape {q.shape}")
    except FeatxError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of forged state means "unusable"
        raise FeatxError(
            f"{bad} (its head fails on a probe row: {type(e).__name__} {str(e)[:80]}); "
            "refit with featx fit"
        ) from None


def _read_pickle(path: Path, trust: bool) -> tuple[dict[str, Any], int]:
    if not trust:
        raise UnsafeBundleError(
            f"{str(path)!r} is a pickle-based bundle (joblib): loading it can run any code it "
            "contains, so featx refuses it by default. If you trust where it came from, pass "
            "--trust-pickle (trust=True in Python), then refit or re-save it as a safe bundle"
        )
    import joblib

    try:
        payload = joblib.load(path)
    except Exception as e:  # noqa: BLE001  (unpickling raises anything; all mean "corrupt")
        raise _corrupt(path, type(e).__name__) from None
    if not isinstance(payload, dict) or payload.get("magic") != _MAGIC:
        raise FeatxError(
            f"{str(path)!r} is a joblib file but not a featx head bundle; "
            "give the file written by featx fit"
        )
    version = payload.get("format_version")
    _check_version(path, version, PICKLE_FORMAT)
    return payload, int(version)
