"""Metrics of one run: accuracy, balanced accuracy, macro F1, top-5, log-loss, ROC-AUC."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassReport:
    """Precision, recall, F1 and support of one class on the test items."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Metrics:
    """The metrics of one fitted head on one test set.

    ``top5_accuracy`` is None with 5 classes or fewer or when the head gives no scores;
    ``log_loss`` is None when the head has no ``predict_proba``; ``roc_auc`` (of the second
    class's probability) is None unless there are two classes, probabilities, and test items of
    both classes. ``solver`` says how the head was fitted when it tells (its ``solver_``, e.g.
    ``"nystroem rank 1200 (cpu)"``), else ``""``.
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    top5_accuracy: float | None
    log_loss: float | None
    per_class: tuple[ClassReport, ...]
    confusion_matrix: np.ndarray
    n_train: int = 0
    n_test: int = 0
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    split: str = ""
    roc_auc: float | None = None
    solver: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "top5_accuracy": self.top5_accuracy,
            "log_loss": self.log_loss,
            "roc_auc": self.roc_auc,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "solver": self.solver,
        }


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    *,
    scores: np.ndarray | None = None,
    proba: np.ndarray | None = None,
) -> Metrics:
    """Metrics of predictions over class indices ``0..len(classes)-1``.

    Parameters
    ----------
    y_true, y_pred : ndarray of int
        True and predicted class indices.
    classes : sequence of str
        All class names (the confusion matrix and per-class report cover every one of them).
    scores : ndarray of shape (n, len(classes)), optional
        Any per-class scores (probabilities or decision values; ``-inf`` for classes the head
        never saw) for the top-5 accuracy.
    proba : ndarray of shape (n, len(classes)), optional
        Class probabilities for the log-loss.

    Examples
    --------
    >>> m = compute_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b"])
    >>> round(m.accuracy, 3), m.per_class[1].recall
    (0.667, 0.5)
    """
    from sklearn import metrics as skm

    K = len(classes)
    labels = np.arange(K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from y_true / y_pred: handled below
        acc = float(skm.accuracy_score(y_true, y_pred))
        bacc = float(skm.balanced_accuracy_score(y_true, y_pred))
        f1 = float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
        p, r, f, s = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
    top5 = None
    if scores is not None and K > 5:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        top5 = float(np.mean((top == np.asarray(y_true)[:, None]).any(axis=1)))
    ll = auc = None
    if proba is not None:
        eps = 1e-15
        pt = np.clip(proba[np.arange(len(y_true)), y_true], eps, 1.0)
        ll = float(-np.mean(np.log(pt)))
        if K == 2 and len(np.unique(y_true)) == 2:
            auc = float(skm.roc_auc_score(y_true, proba[:, 1]))
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    per_class = tuple(
        ClassReport(str(classes[i]), float(p[i]), float(r[i]), float(f[i]), int(s[i]))
        for i in range(K)
    )
    return Metrics(acc, bacc, f1, top5, ll, per_class, cm, roc_auc=auc)
