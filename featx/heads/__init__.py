"""Heads: scikit-learn classifiers trained on cached features, looked up by name.

Every head is a scikit-learn estimator, and :func:`make_head` wraps it with its feature
preprocessing in a :class:`sklearn.pipeline.Pipeline` (last step ``"head"``), so ``clone``,
``GridSearchCV``, ``cross_val_score`` and joblib all just work.

- ``logreg``: :class:`LinearProbe`, multinomial logistic regression, C swept (standardize)
- ``linear-svm``: ``LinearSVC``, C swept on a validation split (standardize)
- ``svm``: ``SVC(kernel="rbf")``, C x gamma swept on a validation split (standardize)
- ``knn``: :class:`CosineKNNClassifier`, k swept on a validation split (none: cosine)
- ``ridge``: ``RidgeClassifierCV``, alpha chosen by efficient leave-one-out (standardize)
- ``centroid``: :class:`CentroidClassifier`, nearest class mean (none: cosine)
- ``mlp``: :class:`MLPClassifier`, torch MLP with early stopping (standardize)

In parentheses: the default preprocessing.

Examples
--------
>>> from featx.heads import list_heads, make_head
>>> "logreg" in list_heads()
True
>>> pipe = make_head("mlp", {"hidden_sizes": "256,128", "max_epochs": "20"})
>>> [name for name, _ in pipe.steps], pipe[-1].hidden_sizes
(['standardize', 'head'], (256, 128))

Importing this package is cheap: scikit-learn and torch are imported when a head is made.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featx.errors import FeatxError

if TYPE_CHECKING:  # pragma: no cover
    from sklearn.pipeline import Pipeline

__all__ = [
    "CentroidClassifier",
    "CosineKNNClassifier",
    "HeadInfo",
    "LinearProbe",
    "MLPClassifier",
    "Param",
    "RelativeGamma",
    "SweepClassifier",
    "get_head_info",
    "list_heads",
    "make_head",
    "parse_params",
    "parse_preprocess",
    "register_head",
    "unregister_head",
]

logger = logging.getLogger(__name__)

_LAZY = {
    "LinearProbe": "featx.heads.linear",
    "MLPClassifier": "featx.heads.mlp",
    "CosineKNNClassifier": "featx.heads.neighbors",
    "CentroidClassifier": "featx.heads.neighbors",
    "SweepClassifier": "featx.heads.sweep",
    "RelativeGamma": "featx.heads.sweep",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featx.heads' has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------

_KINDS = ("float", "int", "bool", "str", "floats", "ints", "gamma")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Param:
    """One parameter a head accepts from ``--param key=value``.

    Parameters
    ----------
    kind : {"float", "int", "bool", "str", "floats", "ints", "gamma"}
        How a string value is read: ``"floats"``/``"ints"`` are comma-separated lists,
        ``"gamma"`` is a float or ``"scale"``.
    default : Any
        Shown in the help; None means "the head's own default (often: sweep)".
    help : str
    choices : tuple of str, optional
        Allowed values of a ``"str"`` parameter.
    """

    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Param kind must be one of {_KINDS}")

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` (a CLI string or a Python value) as this parameter's type."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            if self.kind == "ints":  # hidden_sizes=none -> no hidden layer
                return ()
            if self.default is None:
                return None
            raise FeatxError(f"{where} needs a value")
        k = self.kind
        try:
            if k == "float":
                return _as_float(value)
            if k == "int":
                return _as_int(value)
            if k == "bool":
                return _as_bool(value)
            if k == "gamma":
                if isinstance(value, str) and value.strip().lower() in ("scale", "auto"):
                    return value.strip().lower()
                return _as_float(value)
            if k in ("floats", "ints"):
                items = value.split(",") if isinstance(value, str) else value
                if np.isscalar(items):
                    items = [items]
                out = tuple((_as_float if k == "floats" else _as_int)(v) for v in items)
                if not out:
                    raise ValueError
                return out
            # "str"
            if not isinstance(value, str):
                raise ValueError
            v = value.strip()
            if self.choices is not None and v not in self.choices:
                raise FeatxError(f"{where} must be one of {', '.join(self.choices)}; got {v!r}")
            return v
        except (ValueError, TypeError):
            what = {
                "float": "a number",
                "int": "an integer",
                "bool": "true or false",
                "gamma": "a number or 'scale'",
                "floats": "comma-separated numbers (e.g. 0.1,1,10)",
                "ints": "comma-separated integers (e.g. 256,128)",
                "str": "a string",
            }[k]
            raise FeatxError(f"{where} must be {what}; got {value!r}") from None


def _as_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    f = float(v.strip()) if isinstance(v, str) else float(v)
    if not math.isfinite(f):
        raise ValueError
    return f


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, str):
        return int(v.strip())
    if isinstance(v, float | np.floating):
        if not float(v).is_integer():
            raise ValueError
        return int(v)
    if isinstance(v, int | np.integer):
        return int(v)
    raise ValueError


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """Turn CLI ``key=value`` strings into a dict (values stay strings; heads coerce them).

    Examples
    --------
    >>> parse_params(["C=0.1", "hidden_sizes=256,128"])
    {'C': '0.1', 'hidden_sizes': '256,128'}
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FeatxError(f"--param {item!r} is not key=value; write e.g. --param C=0.1")
        if key in out:
            raise FeatxError(f"--param {key} is given twice; give each parameter once")
        out[key] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadInfo:
    """A registered head: how to build it from coerced parameters, and what it supports.

    Parameters
    ----------
    name : str
    summary : str
        One line for ``featx heads``.
    params : mapping of str to Param
    build : callable
        ``build(params: dict, class_weight, random_state) -> estimator``; ``params`` holds only
        the parameters the user gave, already coerced.
    default_preprocess : tuple of str
        Preprocessing used for ``preprocess="default"``.
    class_weight : bool
        Whether the head uses ``class_weight`` (heads that do not are balanced by construction
        or cannot weight classes; they log that they ignore it).
    """

    name: str
    summary: str
    params: Mapping[str, Param]
    build: Callable[[dict[str, Any], Any, int | None], Any]
    default_preprocess: tuple[str, ...] = ()
    class_weight: bool = True


_REGISTRY: dict[str, HeadInfo] = {}


def register_head(info: HeadInfo) -> None:
    """Add a head to the registry; a name can only be registered once."""
    if info.name in _REGISTRY:
        raise ValueError(f"head {info.name!r} is already registered")
    _REGISTRY[info.name] = info


def unregister_head(name: str) -> None:
    """Remove a head (for tests and plugins that register temporary heads)."""
    _REGISTRY.pop(name, None)


def list_heads() -> list[str]:
    """Names of the registered heads, sorted."""
    return sorted(_REGISTRY)


def get_head_info(name: str) -> HeadInfo:
    """The :class:`HeadInfo` of a head; FeatxError naming the valid heads when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FeatxError(
            f"unknown head {name!r}; choose one of: {', '.join(list_heads())}"
        ) from None


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------

_PREPROCESS_HELP = "standardize, l2, pca:N (N components, or a fraction of variance like pca:0.95)"


def parse_preprocess(spec: str | Sequence[Any] | None, head: str | None = None) -> list[Any]:
    """Canonical preprocessing steps from ``"standardize,pca:128"``, a list, or None.

    ``"default"`` is the head's default (needs ``head``); None, ``"none"`` or ``""`` is no
    preprocessing. List items may also be scikit-learn transformers, kept as they are.

    Examples
    --------
    >>> parse_preprocess("std+pca:64")
    ['standardize', 'pca:64']
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "default":
            if head is None:
                raise FeatxError("preprocess='default' needs a head name")
            return list(get_head_info(head).default_preprocess)
        if s in ("", "none"):
            return []
        items: list[Any] = [t for t in s.replace("+", ",").split(",") if t.strip()]
    else:
        items = list(spec)
    out: list[Any] = []
    for item in items:
        if not isinstance(item, str):
            if hasattr(item, "fit") and hasattr(item, "transform"):
                out.append(item)
                continue
            raise FeatxError(f"preprocess step {item!r} is not understood; use {_PREPROCESS_HELP}")
        t = item.strip().lower()
        if t in ("standardize", "std", "scale"):
            out.append("standardize")
        elif t in ("l2", "normalize"):
            out.append("l2")
        elif t.startswith("pca"):
            _, _, n = t.partition(":")
            try:
                v = float(n)
            except ValueError:
                v = -1.0
            if v >= 1 and v.is_integer():
                out.append(f"pca:{int(v)}")
            elif 0 < v < 1:
                out.append(f"pca:{v:g}")
            else:
                raise FeatxError(
                    f"preprocess step {item!r} needs a size: pca:N with N >= 1 components, "
                    "or pca:F with 0 < F < 1 of the variance"
                )
        elif t in ("none", ""):
            continue
        else:
            raise FeatxError(f"unknown preprocess step {item!r}; use {_PREPROCESS_HELP}")
    return out


def _preprocess_steps(tokens: list[Any], random_state: int | None) -> list[tuple[str, Any]]:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer, StandardScaler

    steps: list[tuple[str, Any]] = []
    for tok in tokens:
        if not isinstance(tok, str):
            name, est = type(tok).__name__.lower(), tok
        elif tok == "standardize":
            name, est = "standardize", StandardScaler()
        elif tok == "l2":
            name, est = "l2", Normalizer(norm="l2")
        else:
            v = float(tok.split(":")[1])
            name, est = "pca", PCA(n_components=int(v) if v >= 1 else v, random_state=random_state)
        used = {n for n, _ in steps}
        base, i = name, 2
        while name in used:
            name, i = f"{base}_{i}", i + 1
        steps.append((name, est))
    return steps


# ---------------------------------------------------------------------------------------------
# make_head
# ---------------------------------------------------------------------------------------------


def make_head(
    name: str,
    params: Mapping[str, Any] | None = None,
    preprocess: str | Sequence[Any] | None = "default",
    class_weight: str | dict | None = None,
    random_state: int | None = 0,
) -> Pipeline:
    """Build a head by name: a ``Pipeline`` of its preprocessing and the estimator (``"head"``).

    Parameters
    ----------
    name : str
        One of :func:`list_heads`.
    params : mapping, optional
        Head parameters; CLI strings are coerced (``"0.1"`` -> 0.1, ``"3"`` -> 3, ``"true"``,
        ``"256,128"`` -> (256, 128)). See ``get_head_info(name).params``.
    preprocess : str, list or None, default="default"
        ``"default"`` (the head's own), None / ``"none"``, or steps such as
        ``"standardize,pca:128"`` (see :func:`parse_preprocess`).
    class_weight : "balanced", dict or None
        Class weights for heads that support them.
    random_state : int or None, default=0
        Seed of every random choice the head makes (validation splits, initialization).

    Returns
    -------
    sklearn.pipeline.Pipeline
        Unfitted.

    Raises
    ------
    FeatxError
        Unknown head, unknown or ill-typed parameter (naming the valid ones), bad preprocessing.

    Examples
    --------
    >>> pipe = make_head("logreg", {"C": "0.5"}, preprocess="standardize,pca:32")
    >>> [n for n, _ in pipe.steps], pipe.named_steps["head"].C
    (['standardize', 'pca', 'head'], 0.5)
    """
    from sklearn.pipeline import Pipeline

    info = get_head_info(name)
    coerced: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if key not in info.params:
            raise FeatxError(
                f"unknown parameter {key!r} for head {name!r}; "
                f"valid: {', '.join(sorted(info.params))}"
            )
        coerced[key] = info.params[key].coerce(value, f"parameter {key!r} of head {name!r}")
    if not (class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict)):
        raise FeatxError(f"class_weight must be 'balanced' or None; got {class_weight!r}")
    if class_weight is not None and not info.class_weight:
        logger.info("head %r ignores class_weight (it does not depend on class frequencies)", name)
        class_weight = None
    est = info.build(coerced, class_weight, random_state)
    steps = [*_preprocess_steps(parse_preprocess(preprocess, name), random_state), ("head", est)]
    pipe = Pipeline(steps)
    _validate(pipe, name)
    return pipe


def _validate(pipe: Any, name: str) -> None:
    """Run each estimator's parameter constraints now, so a bad value fails before any fit."""
    from sklearn.utils._param_validation import InvalidParameterError

    todo = [est for _, est in pipe.steps]
    while todo:
        est = todo.pop()
        inner = getattr(est, "estimator", None)
        if inner is not None and hasattr(inner, "get_params"):
            todo.append(inner)
        check = getattr(est, "_validate_params", None)
        if check is None:
            continue
        try:
            check()
        except InvalidParameterError as e:
            msg = str(e).replace("\n", " ")
            raise FeatxError(f"bad parameter for head {name!r}: {msg}") from None


# ---------------------------------------------------------------------------------------------
# the built-in heads
# ---------------------------------------------------------------------------------------------

LINEAR_SVM_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))
SVM_CS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
SVM_GAMMAS: tuple[float, ...] = (0.25, 1.0, 4.0)
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 6, 17))

_VAL = Param("float", 0.2, "share of each class held out to choose hyper-parameters")
_DEVICE = Param("str", "auto", "torch device: auto (CUDA when available), cpu, cuda, cuda:N")


def _build_logreg(p: dict[str, Any], cw: Any, rs: int | None) -> Any:
    from featx.heads.linear import LinearProbe

    return LinearProbe(**p, class_weight=cw, random_state=rs)


def _build_linear_svm(p: dict[str, Any], cw: Any, rs: int | None) -> Any:
    from sklearn.svm import LinearSVC

    from featx.heads.sweep import SweepClassifier

    base = LinearSVC(
        C=p.get("C") or 1.0,
        max_iter=p.get("max_iter", 2000),
        tol=p.get("tol", 1e-4),
        class_weight=cw,
        random_state=rs,
    )
    if p.get("C") is not None:
        return base
    grid = {"C": list(p.get("Cs", LINEAR_SVM_CS))}
    return SweepClassifier(base, grid, val_size=p.get("val_size", 0.2), random_state=rs)


def _build_svm(p: dict[str, Any], cw: Any, rs: int | None) -> Any:
    from sklearn.svm import SVC

    from featx.heads.sweep import RelativeGamma, SweepClassifier

    base = SVC(
        kernel="rbf",
        C=p.get("C") or 1.0,
        gamma=p["gamma"] if p.get("gamma") is not None else "scale",
        class_weight=cw,
        random_state=rs,
    )
    grid: dict[str, list] = {}
    if p.get("C") is None:
        grid["C"] = list(p.get("Cs", SVM_CS))
    if p.get("gamma") is None:
        grid["gamma"] = [RelativeGamma(g) for g in p.get("gammas", SVM_GAMMAS)]
    if not grid:
        return base
    return SweepClassifier(base, grid, val_size=p.get("val_size", 0.2), random_state=rs)


def _build_knn(p: dict[str, Any], cw: Any, rs: int | None) -> Any:
    from featx.heads.neighbors import CosineKNNClassifier

    return CosineKNNClassifier(**p, class_weight=cw, random_state=rs)


def _build_ridge(p: dict[str, Any], cw: Any, rs: int | None) -> Any:
    from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV

    if p.get("alpha") is not None:
        return RidgeClassifier(alpha=p["alpha"], class_weight=cw)
    return RidgeClassifierCV(alphas=list(p.get("alphas", RIDGE_ALPHAS)), class_weight=cw)


def _build_centroid(p: dict[str, Any], cw: Any, rs: int | None) -> Any:
    from featx.heads.neighbors import CentroidClassifier

    return CentroidClassifier(**p)


def _build_mlp(p: dict[str, Any], cw: Any, rs: int | None) -> Any:
    from featx.heads.mlp import MLPClassifier

    return MLPClassifier(**p, class_weight=cw, random_state=rs)


def _register_builtins() -> None:
    register_head(
        HeadInfo(
            name="logreg",
            summary="multinomial logistic regression (linear probe), L2 swept over 45 values",
            params={
                "backend": Param(
                    "str", "torch", "torch (fast, GPU) or sklearn", ("torch", "sklearn")
                ),
                "C": Param("float", None, "fixed inverse L2 strength; skips the sweep"),
                "Cs": Param("floats", None, "values of C to sweep (default 1/logspace(-6,5,45))"),
                "val_size": _VAL,
                "max_iter": Param("int", 1000, "L-BFGS iterations per C"),
                "tol": Param("float", 1e-4, "gradient tolerance"),
                "patience": Param("int", None, "stop the sweep after this many C without gain"),
                "device": _DEVICE,
                "dtype": Param("str", "float32", "torch precision", ("float32", "float64")),
            },
            build=_build_logreg,
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="linear-svm",
            summary="linear SVM (LinearSVC), C swept on a validation split",
            params={
                "C": Param("float", None, "fixed C; skips the sweep"),
                "Cs": Param("floats", None, "values of C to sweep (default logspace(-4,2,13))"),
                "val_size": _VAL,
                "max_iter": Param("int", 2000, "liblinear iterations"),
                "tol": Param("float", 1e-4, "stopping tolerance"),
            },
            build=_build_linear_svm,
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="svm",
            summary="RBF-kernel SVM, C x gamma swept on a validation split",
            params={
                "C": Param("float", None, "fixed C; skips its sweep"),
                "Cs": Param("floats", None, "values of C to sweep (default 0.1,1,10,100)"),
                "gamma": Param("gamma", None, "fixed gamma (a number or 'scale'); skips its sweep"),
                "gammas": Param("floats", None, "gammas to sweep, as multiples of 'scale'"),
                "val_size": _VAL,
            },
            build=_build_svm,
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="knn",
            summary="k nearest neighbours by cosine similarity, weighted vote, k swept",
            params={
                "k": Param("int", None, "fixed k; skips the sweep"),
                "ks": Param("ints", None, "k values to sweep (default 1,3,5,10,20,50,100)"),
                "weights": Param("str", "similarity", "vote weights", ("similarity", "uniform")),
                "temperature": Param("float", 0.07, "temperature of the similarity weights"),
                "val_size": _VAL,
            },
            build=_build_knn,
            default_preprocess=(),
        )
    )
    register_head(
        HeadInfo(
            name="ridge",
            summary="ridge classifier, alpha chosen by efficient leave-one-out",
            params={
                "alpha": Param("float", None, "fixed alpha; skips the sweep"),
                "alphas": Param("floats", None, "alphas to sweep (default logspace(-2,6,17))"),
            },
            build=_build_ridge,
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="centroid",
            summary="nearest class mean (cosine or euclidean)",
            params={
                "metric": Param("str", "cosine", "similarity", ("cosine", "euclidean")),
            },
            build=_build_centroid,
            default_preprocess=(),
            class_weight=False,
        )
    )
    register_head(
        HeadInfo(
            name="mlp",
            summary="torch MLP (ReLU, AdamW, early stopping), GPU when present",
            params={
                "hidden_sizes": Param("ints", (512,), "hidden layer widths, e.g. 512 or 256,128"),
                "dropout": Param("float", 0.0, "dropout probability"),
                "weight_decay": Param("float", 1e-4, "AdamW weight decay"),
                "lr": Param("float", 1e-3, "learning rate"),
                "max_epochs": Param("int", 100, "epochs at most"),
                "batch_size": Param("int", 256, "mini-batch size"),
                "early_stopping": Param("bool", True, "stop on a held-out validation loss"),
                "validation_fraction": Param("float", 0.1, "share held out for early stopping"),
                "patience": Param("int", 10, "epochs without improvement before stopping"),
                "device": _DEVICE,
            },
            build=_build_mlp,
            default_preprocess=("standardize",),
        )
    )


_register_builtins()
