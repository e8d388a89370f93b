"""The built-in heads, registered on import of :mod:`featx.heads`.

Each head names its estimator: featx's own estimator classes (``LinearProbe``,
``CosineKNNClassifier``, ``CentroidClassifier``, ``MLPClassifier``) or, for the heads that wrap a
scikit-learn estimator in a validation sweep, a builder function below. The parameter defaults
shown by ``featx heads`` are read from those signatures; here each parameter only gets its kind
and help.

- ``logreg``: :class:`LinearProbe`, multinomial logistic regression, C swept (standardize)
- ``linear-svm``: ``LinearSVC``, C swept on a validation split (standardize)
- ``svm``: ``SVC(kernel="rbf")``, C x gamma swept on a validation split (standardize)
- ``knn``: :class:`CosineKNNClassifier`, k swept on a validation split (none: cosine)
- ``ridge``: ``RidgeClassifierCV``, alpha chosen by efficient leave-one-out (standardize)
- ``centroid``: :class:`CentroidClassifier`, nearest class mean (none: cosine)
- ``mlp``: :class:`MLPClassifier`, torch MLP with early stopping (standardize)

In parentheses: the default preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featx.heads._params import Param
from featx.heads.registry import HeadInfo, register_head

# The default sweeps of the wrapped scikit-learn heads.
LINEAR_SVM_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))
SVM_CS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
SVM_GAMMAS: tuple[float, ...] = (0.25, 1.0, 4.0)
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 6, 17))

_VAL = Param("float", "share of each class held out to choose hyper-parameters")
_DEVICE = Param("str", "torch device: auto (CUDA when available), cpu, cuda, cuda:N")


# ---------------------------------------------------------------------------------------------
# builders of the heads that wrap scikit-learn estimators (their signatures hold the defaults)
# ---------------------------------------------------------------------------------------------


def linear_svm(
    C: float | None = None,
    Cs: Sequence[float] | None = None,
    val_size: float = 0.2,
    max_iter: int = 2000,
    tol: float = 1e-4,
    class_weight: Any = None,
    random_state: int | None = None,
) -> Any:
    """``LinearSVC``; without ``C``, C is swept over ``Cs`` (default logspace(-4,2,13))."""
    from sklearn.svm import LinearSVC

    from featx.heads.sweep import SweepClassifier

    base = LinearSVC(
        C=C or 1.0, max_iter=max_iter, tol=tol, class_weight=class_weight, random_state=random_state
    )
    if C is not None:
        return base
    grid = {"C": list(Cs if Cs is not None else LINEAR_SVM_CS)}
    return SweepClassifier(base, grid, val_size=val_size, random_state=random_state)


def rbf_svm(
    C: float | None = None,
    Cs: Sequence[float] | None = None,
    gamma: float | str | None = None,
    gammas: Sequence[float] | None = None,
    val_size: float = 0.2,
    class_weight: Any = None,
    random_state: int | None = None,
) -> Any:
    """``SVC(kernel="rbf")``; C and gamma not given are swept (gammas: multiples of 'scale')."""
    from sklearn.svm import SVC

    from featx.heads.sweep import RelativeGamma, SweepClassifier

    base = SVC(
        kernel="rbf",
        C=C or 1.0,
        gamma=gamma if gamma is not None else "scale",
        class_weight=class_weight,
        random_state=random_state,
    )
    grid: dict[str, list] = {}
    if C is None:
        grid["C"] = list(Cs if Cs is not None else SVM_CS)
    if gamma is None:
        grid["gamma"] = [RelativeGamma(g) for g in (gammas if gammas is not None else SVM_GAMMAS)]
    if not grid:
        return base
    return SweepClassifier(base, grid, val_size=val_size, random_state=random_state)


def ridge(
    alpha: float | None = None, alphas: Sequence[float] | None = None, class_weight: Any = None
) -> Any:
    """``RidgeClassifier(alpha)``, or ``RidgeClassifierCV`` over ``alphas`` without ``alpha``."""
    from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV

    if alpha is not None:
        return RidgeClassifier(alpha=alpha, class_weight=class_weight)
    return RidgeClassifierCV(
        alphas=list(alphas if alphas is not None else RIDGE_ALPHAS), class_weight=class_weight
    )


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


def _register_builtins() -> None:
    register_head(
        HeadInfo(
            name="logreg",
            summary="multinomial logistic regression (linear probe), L2 swept over 45 values",
            estimator="featx.heads.linear:LinearProbe",
            params={
                "backend": Param("str", "torch (fast, GPU) or sklearn", ("torch", "sklearn")),
                "C": Param("float", "fixed inverse L2 strength; skips the sweep"),
                "Cs": Param("floats", "values of C to sweep (default 1/logspace(-6,5,45))"),
                "val_size": _VAL,
                "max_iter": Param("int", "L-BFGS iterations per C"),
                "tol": Param("float", "gradient tolerance"),
                "patience": Param("int", "stop the sweep after this many C without gain"),
                "device": _DEVICE,
                "dtype": Param("str", "torch precision", ("float32", "float64")),
            },
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="linear-svm",
            summary="linear SVM (LinearSVC), C swept on a validation split",
            estimator=linear_svm,
            params={
                "C": Param("float", "fixed C; skips the sweep"),
                "Cs": Param("floats", "values of C to sweep (default logspace(-4,2,13))"),
                "val_size": _VAL,
                "max_iter": Param("int", "liblinear iterations"),
                "tol": Param("float", "stopping tolerance"),
            },
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="svm",
            summary="RBF-kernel SVM, C x gamma swept on a validation split",
            estimator=rbf_svm,
            params={
                "C": Param("float", "fixed C; skips its sweep"),
                "Cs": Param("floats", "values of C to sweep (default 0.1,1,10,100)"),
                "gamma": Param("gamma", "fixed gamma (a number or 'scale'); skips its sweep"),
                "gammas": Param("floats", "gammas to sweep, as multiples of 'scale'"),
                "val_size": _VAL,
            },
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="knn",
            summary="k nearest neighbours by cosine similarity, weighted vote, k swept",
            estimator="featx.heads.neighbors:CosineKNNClassifier",
            params={
                "k": Param("int", "fixed k; skips the sweep"),
                "ks": Param("ints", "k values to sweep (default 1,3,5,10,20,50,100)"),
                "weights": Param("str", "vote weights", ("similarity", "uniform")),
                "temperature": Param("float", "temperature of the similarity weights"),
                "val_size": _VAL,
            },
            default_preprocess=(),
        )
    )
    register_head(
        HeadInfo(
            name="ridge",
            summary="ridge classifier, alpha chosen by efficient leave-one-out",
            estimator=ridge,
            params={
                "alpha": Param("float", "fixed alpha; skips the sweep"),
                "alphas": Param("floats", "alphas to sweep (default logspace(-2,6,17))"),
            },
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="centroid",
            summary="nearest class mean (cosine or euclidean)",
            estimator="featx.heads.neighbors:CentroidClassifier",
            params={"metric": Param("str", "similarity", ("cosine", "euclidean"))},
            default_preprocess=(),
            class_weight=False,
        )
    )
    register_head(
        HeadInfo(
            name="mlp",
            summary="torch MLP (ReLU, AdamW, early stopping), GPU when present",
            estimator="featx.heads.mlp:MLPClassifier",
            params={
                "hidden_sizes": Param("ints", "hidden layer widths, e.g. 512 or 256,128"),
                "dropout": Param("float", "dropout probability"),
                "weight_decay": Param("float", "AdamW weight decay"),
                "lr": Param("float", "learning rate"),
                "max_epochs": Param("int", "epochs at most"),
                "batch_size": Param("int", "mini-batch size"),
                "early_stopping": Param("bool", "stop on a held-out validation loss"),
                "validation_fraction": Param("float", "share held out for early stopping"),
                "patience": Param("int", "epochs without improvement before stopping"),
                "device": _DEVICE,
            },
            default_preprocess=("standardize",),
        )
    )


_register_builtins()
