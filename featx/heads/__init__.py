"""Heads: scikit-learn classifiers trained on cached features, looked up by name.

Every head is a scikit-learn estimator, and :func:`make_head` wraps it with its feature
preprocessing in a :class:`sklearn.pipeline.Pipeline` (last step ``"head"``), so ``clone``,
``GridSearchCV``, ``cross_val_score`` and joblib all just work.

Where things live:

- :mod:`featx.heads.registry`: :class:`HeadInfo`, :func:`register_head`, :func:`make_head`,
  :func:`parse_preprocess` (the one place to add a head: register a ``HeadInfo``).
- :mod:`featx.heads._params`: :class:`Param` and the coercion of ``--param key=value`` strings.
- :mod:`featx.heads.builtin`: the built-in heads (``logreg``, ``linear-svm``, ``svm``, ``knn``,
  ``ridge``, ``centroid``, ``mlp``) and their registration.
- :mod:`featx.heads.linear`, :mod:`~featx.heads.neighbors`, :mod:`~featx.heads.mlp`,
  :mod:`~featx.heads.sweep`: featx's own estimators.

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

from typing import Any

from featx.heads import builtin as _builtin  # noqa: F401  (registers the built-in heads)
from featx.heads._params import FROM_ESTIMATOR, Param, parse_params
from featx.heads.builtin import LINEAR_SVM_CS, RIDGE_ALPHAS, SVM_CS, SVM_GAMMAS
from featx.heads.registry import (
    HeadInfo,
    get_head_info,
    list_heads,
    make_head,
    parse_preprocess,
    register_head,
    unregister_head,
)

__all__ = [
    "FROM_ESTIMATOR",
    "LINEAR_SVM_CS",
    "RIDGE_ALPHAS",
    "SVM_CS",
    "SVM_GAMMAS",
    "CentroidClassifier",
    "CosineKNNClassifier",
    "HeadInfo",
    "LinearProbe",
    "MLPClassifier",
    "Param",
    "RelativeGamma",
    "RidgeLOOClassifier",
    "SweepClassifier",
    "get_head_info",
    "list_heads",
    "make_head",
    "parse_params",
    "parse_preprocess",
    "register_head",
    "unregister_head",
]

_LAZY = {
    "LinearProbe": "featx.heads.linear",
    "MLPClassifier": "featx.heads.mlp",
    "CosineKNNClassifier": "featx.heads.neighbors",
    "CentroidClassifier": "featx.heads.neighbors",
    "SweepClassifier": "featx.heads.sweep",
    "RelativeGamma": "featx.heads.sweep",
    "RidgeLOOClassifier": "featx.heads.ridge",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featx.heads' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
