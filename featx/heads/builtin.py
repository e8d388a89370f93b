"""The built-in heads, registered on import of :mod:`featx.heads`.

Each head names its estimator: featx's own estimator classes (``LinearProbe``, ``LinearSVM``,
``RBFSVM``, ``CosineKNNClassifier``, ``CentroidClassifier``, ``MLPClassifier``,
``RidgeLOOClassifier``). Every head has
``predict_proba``. The parameter defaults
shown by ``featx heads`` are read from those signatures; here each parameter only gets its kind
and help.

- ``logreg``: :class:`LinearProbe`, multinomial logistic regression, C swept (standardize)
- ``linear-svm``: :class:`~featx.heads.svm.LinearSVM`, LinearSVC's objective by a Newton
  solver in torch, C swept on a validation split (standardize)
- ``svm``: :class:`~featx.heads.svm.RBFSVM`, ``SVC(kernel="rbf")`` up to 2000 items and a
  Nystroem approximation above, C x gamma swept on a validation split (standardize)
- ``knn``: :class:`CosineKNNClassifier`, k swept on a validation split (none: cosine)
- ``ridge``: :class:`~featx.heads.ridge.RidgeLOOClassifier`, every alpha's exact leave-one-out
  error from one eigendecomposition, calibrated on the leave-one-out scores (standardize)
- ``centroid``: :class:`CentroidClassifier`, nearest class mean (none: cosine)
- ``mlp``: :class:`MLPClassifier`, torch MLP with early stopping (standardize)

In parentheses: the default preprocessing.
"""

from __future__ import annotations

import numpy as np

from featx.heads._params import Param
from featx.heads.registry import HeadInfo, register_head

# The default sweeps of the wrapped scikit-learn heads.
#: ``linear-svm``: multiples of ``1 / m``, ``m`` the mean squared norm of the centred training
#: rows (``m = d`` for standardized features), so the grid fits embeddings of any width.
LINEAR_SVM_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 3, 13))
#: ``svm``: C of the exact SVC, C of the Nystroem path, gammas as multiples of ``"scale"``.
SVM_CS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
SVM_KERNEL_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-1, 3, 9))
SVM_GAMMAS: tuple[float, ...] = (0.25, 1.0, 4.0)
#: ``svm`` (solver auto): largest training set fitted by the exact SVC.
SVM_EXACT_MAX_N = 2000
#: ``ridge``: the alphas swept by :class:`featx.heads.ridge.RidgeLOOClassifier` (its default).
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 6, 17))

_VAL = Param("float", "share of each class held out to choose hyper-parameters")
_DEVICE = Param("str", "torch device: auto (CUDA when available), cpu, cuda, cuda:N")
_BACKENDS = ("torch", "sklearn")
_SVM_SOLVERS = ("auto", "exact", "nystroem")


# ---------------------------------------------------------------------------------------------
# builders of the heads that wrap scikit-learn estimators (their signatures hold the defaults)
# ---------------------------------------------------------------------------------------------


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
            summary="linear SVM (squared hinge, one-vs-rest), C swept with early stop, Newton",
            estimator="featx.heads.svm:LinearSVM",
            params={
                "backend": Param("str", "torch (fast, GPU) or sklearn (LinearSVC)", _BACKENDS),
                "C": Param("float", "fixed C; skips the sweep"),
                "Cs": Param("floats", "values of C to sweep (default logspace(-3,3,13)/mean|x|^2)"),
                "val_size": _VAL,
                "patience": Param("int", "stop the sweep after this many C without gain"),
                "max_iter": Param("int", "Newton iterations per C (sklearn: liblinear's)"),
                "tol": Param("float", "gradient tolerance"),
                "device": _DEVICE,
                "dtype": Param("str", "torch precision", ("float32", "float64")),
            },
            default_preprocess=("standardize",),
        )
    )
    register_head(
        HeadInfo(
            name="svm",
            summary="RBF-kernel SVM, C x gamma swept; exact SVC up to 2000 items, Nystroem above",
            estimator="featx.heads.svm:RBFSVM",
            params={
                "solver": Param("str", "exact (SVC), nystroem, or auto", _SVM_SOLVERS),
                "C": Param("float", "fixed C; skips its sweep"),
                "Cs": Param("floats", "C values (default exact: 0.1-100, nystroem: 0.1-1000)"),
                "gamma": Param("gamma", "fixed gamma (a number or 'scale'); skips its sweep"),
                "gammas": Param("floats", "gammas to sweep, as multiples of 'scale'"),
                "exact_max_n": Param("int", "largest training set solver=auto fits exactly"),
                "rank": Param("int", "Nystroem landmarks (default min(n, 400 + n/5, 1500))"),
                "val_size": _VAL,
                "patience": Param("int", "nystroem: stop a C sweep after this many without gain"),
                "device": _DEVICE,
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
            summary="ridge classifier, alpha by efficient leave-one-out, calibrated probabilities",
            estimator="featx.heads.ridge:RidgeLOOClassifier",
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
