"""The head registry: name -> how to build the estimator, its parameters and its preprocessing.

A head is registered once, by :func:`register_head` with a :class:`HeadInfo`; the built-in heads
do so in :mod:`featx.heads.builtin`. **To add a head**, register a ``HeadInfo`` whose
``estimator`` is a scikit-learn estimator class (or a function returning one, for heads that wrap
or sweep another estimator) and whose ``params`` declare the user-settable parameters with their
kind and help; their defaults are read from the estimator's signature. :func:`make_head` then
builds it, with parameter coercion, preprocessing and early parameter validation.

Examples
--------
>>> from featx.heads import HeadInfo, Param, make_head, register_head, unregister_head
>>> register_head(HeadInfo(
...     name="nearest-centroid",
...     summary="scikit-learn's NearestCentroid",
...     estimator="sklearn.neighbors:NearestCentroid",
...     params={"shrink_threshold": Param("float", "shrink the centroids")},
...     class_weight=False,
... ))
>>> get_head_info("nearest-centroid").params["shrink_threshold"].default is None
True
>>> make_head("nearest-centroid", {"shrink_threshold": "0.1"})[-1]
NearestCentroid(shrink_threshold=0.1)
>>> unregister_head("nearest-centroid")
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from featx.errors import FeatxError
from featx.heads._params import FROM_ESTIMATOR, Param

if TYPE_CHECKING:  # pragma: no cover
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

__all__ = [
    "HeadInfo",
    "coerce_params",
    "get_head_info",
    "list_heads",
    "make_head",
    "parse_preprocess",
    "register_head",
    "unregister_head",
]


@dataclass(frozen=True)
class HeadInfo:
    """A registered head: how to build it from coerced parameters, and what it supports.

    Parameters
    ----------
    name : str
    summary : str
        One line for ``featx heads``.
    params : mapping of str to Param
        The parameters a user may set (``--param key=value``, ``make_head(name, params)``).
    estimator : class, callable or str, optional
        What builds the head: an estimator class or a function returning an estimator, or its
        ``"module:attribute"`` path (imported on first use, so registering stays cheap). It is
        called with the user's parameters plus ``class_weight`` and ``random_state`` where its
        signature takes them, and its signature supplies the defaults of ``params``.
    build : callable, optional
        Instead of ``estimator``: ``build(params: dict, class_weight, random_state) ->
        estimator``; ``params`` then need explicit defaults.
    default_preprocess : tuple of str
        Preprocessing used for ``preprocess="default"``.
    class_weight : bool
        Whether the head uses ``class_weight`` (heads that do not are balanced by construction
        or cannot weight classes; they log that they ignore it).
    """

    name: str
    summary: str
    params: Mapping[str, Param]
    build: Callable[[dict[str, Any], Any, int | None], Any] | None = None
    default_preprocess: tuple[str, ...] = ()
    class_weight: bool = True
    estimator: type | Callable[..., Any] | str | None = None

    def __post_init__(self) -> None:
        if (self.build is None) == (self.estimator is None):
            raise ValueError(f"head {self.name!r}: give exactly one of estimator= and build=")

    def factory(self) -> Callable[..., Any]:
        """The estimator class or builder function (imported when given as a path)."""
        est = self.estimator
        if isinstance(est, str):
            module, _, attr = est.partition(":")
            return getattr(importlib.import_module(module), attr)
        if est is None:
            raise ValueError(f"head {self.name!r} is built by build=, not by an estimator")
        return est

    def make(self, params: dict[str, Any], class_weight: Any, random_state: int | None) -> Any:
        """The unfitted estimator for already coerced ``params``."""
        if self.build is not None:
            return self.build(params, class_weight, random_state)
        factory = self.factory()
        accepted = inspect.signature(factory).parameters
        kw = dict(params)
        if "class_weight" in accepted:
            kw["class_weight"] = class_weight
        if "random_state" in accepted:
            kw["random_state"] = random_state
        return factory(**kw)


_REGISTRY: dict[str, HeadInfo] = {}
_RESOLVED: dict[str, HeadInfo] = {}


def register_head(info: HeadInfo) -> None:
    """Add a head to the registry; a name can only be registered once (ValueError)."""
    if info.name in _REGISTRY:
        raise ValueError(f"head {info.name!r} is already registered")
    _REGISTRY[info.name] = info


def unregister_head(name: str) -> None:
    """Remove a head (for tests and plugins that register temporary heads)."""
    _REGISTRY.pop(name, None)
    _RESOLVED.pop(name, None)


def list_heads() -> list[str]:
    """Names of the registered heads, sorted."""
    return sorted(_REGISTRY)


def get_head_info(name: str) -> HeadInfo:
    """The :class:`HeadInfo` of a head, with every parameter default filled in.

    Raises
    ------
    FeatxError
        An unknown head, naming the valid ones.
    """
    if name not in _RESOLVED:
        try:
            info = _REGISTRY[name]
        except (KeyError, TypeError):
            raise FeatxError(
                f"unknown head {name!r}; choose one of: {', '.join(list_heads())}"
            ) from None
        _RESOLVED[name] = _with_defaults(info)
    return _RESOLVED[name]


def _with_defaults(info: HeadInfo) -> HeadInfo:
    """``info`` with each FROM_ESTIMATOR default read from the estimator's signature."""
    todo = [k for k, p in info.params.items() if p.default is FROM_ESTIMATOR]
    if not todo:
        return info
    if info.estimator is None:
        raise ValueError(f"head {info.name!r}: parameters {todo} need defaults (no estimator=)")
    static = _source_defaults(info.estimator)
    if static is not None and all(k in static for k in todo):
        found = static  # read from the source: no scikit-learn or torch import (`featx heads`)
    else:
        sig = inspect.signature(info.factory()).parameters
        found = {k: p.default for k, p in sig.items() if p.default is not inspect.Parameter.empty}
    params = dict(info.params)
    for k in todo:
        if k not in found:
            raise ValueError(f"head {info.name!r}: its estimator has no default for {k!r}")
        params[k] = replace(params[k], default=found[k])
    return replace(info, params=params)


def _source_defaults(estimator: Any) -> dict[str, Any] | None:
    """The literal keyword defaults of a ``"module:Class"`` estimator's ``__init__``, read from
    its source with :mod:`ast` instead of importing it (which would import scikit-learn and
    torch). Defaults that are not plain literals are left out (the caller then imports);
    ``None`` when the source cannot be read. ``tests/test_heads.py`` checks that the result
    equals :func:`inspect.signature` for every built-in head."""
    if not isinstance(estimator, str) or ":" not in estimator:
        return None
    module, _, cls = estimator.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        with open(spec.origin, encoding="utf-8") as f:  # type: ignore[union-attr, arg-type]
            tree = ast.parse(f.read())
    except (ImportError, AttributeError, TypeError, OSError, SyntaxError, ValueError):
        return None
    names: dict[str, Any] = {}  # module-level names a default may refer to
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in sys.modules:
            for alias in node.names:  # only from modules already imported (cheap)
                if hasattr(sys.modules[node.module], alias.name):
                    names[alias.asname or alias.name] = getattr(
                        sys.modules[node.module], alias.name
                    )
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                with contextlib.suppress(ValueError):
                    names[target.id] = ast.literal_eval(node.value)
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == cls):
            continue
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                a = item.args
                positional = a.posonlyargs + a.args
                pairs = list(
                    zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True)
                )
                pairs += [
                    (k, d)
                    for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
                    if d is not None
                ]
                out: dict[str, Any] = {}
                for arg, default in pairs:
                    if isinstance(default, ast.Name) and default.id in names:
                        out[arg.arg] = names[default.id]
                        continue
                    with contextlib.suppress(ValueError):
                        out[arg.arg] = ast.literal_eval(default)
                return out
        return None  # no __init__ of its own: inherited, so ask inspect
    return None


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


def coerce_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` (``--param`` strings or Python values) typed as head ``name`` declares them.

    Raises FeatxError for an unknown head or parameter, or a value of the wrong type.

    Examples
    --------
    >>> coerce_params("knn", {"k": "5"})
    {'k': 5}
    """
    info = get_head_info(name)
    coerced: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if key not in info.params:
            raise FeatxError(
                f"unknown parameter {key!r} for head {name!r}; "
                f"valid: {', '.join(sorted(info.params))}"
            )
        coerced[key] = info.params[key].coerce(value, f"parameter {key!r} of head {name!r}")
    return coerced


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
    coerced = coerce_params(name, params)
    if not (class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict)):
        raise FeatxError(f"class_weight must be 'balanced' or None; got {class_weight!r}")
    if class_weight is not None and not info.class_weight:
        logger.info("head %r ignores class_weight (it does not depend on class frequencies)", name)
        class_weight = None
    est = info.make(coerced, class_weight, random_state)
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
