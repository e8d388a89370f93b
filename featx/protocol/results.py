"""A head's evaluation over its runs (:class:`Result`) and its printed label."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.protocol.metrics import ClassReport, Metrics

_MEANED = ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "log_loss", "roc_auc")


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Result:
    """A head evaluated on a feature set: the mean over runs (folds, trials) and each run.

    Attributes
    ----------
    head : str
        Registry name of the head (or the estimator's class name).
    label : str
        ``head`` with its parameters, e.g. ``"mlp(hidden_sizes=256,128)"``.
    store : str or None
        Name of the feature set (e.g. the backbone).
    accuracy, balanced_accuracy, macro_f1 : float
        Means over runs.
    top5_accuracy, log_loss, roc_auc : float or None
        ``roc_auc`` for two classes only.
    solver : str
        How the head was fitted, when it says (e.g. ``"nystroem rank 1200 (cpu)"``, ``"exact
        SVC"``, ``"torch newton (cpu)"``); the distinct values of the runs joined by ``"; "``.
    std : dict of str to float
        Sample standard deviation (ddof=1) of each metric over runs; empty for a single run.
    fit_seconds, predict_seconds : float
        Mean per run (fit includes the head's own hyper-parameter sweep).
    per_class : tuple of ClassReport
        From the predictions of all runs pooled.
    confusion_matrix : ndarray of shape (n_classes, n_classes)
        Summed over runs; rows are true classes, columns predicted ones.
    n_unlabeled : int
        Unlabeled items of the store, which were left out.
    """

    head: str
    label: str
    store: str | None
    params: dict[str, Any]
    preprocess: tuple[str, ...]
    class_weight: str | None
    protocol: str
    classes: tuple[str, ...]
    n_labeled: int
    n_unlabeled: int
    n_train: int
    n_test: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    top5_accuracy: float | None
    log_loss: float | None
    fit_seconds: float
    predict_seconds: float
    std: dict[str, float]
    per_class: tuple[ClassReport, ...]
    confusion_matrix: np.ndarray
    runs: tuple[Metrics, ...] = field(default=())
    roc_auc: float | None = None
    solver: str = ""

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    def to_dict(self, *, details: bool = True) -> dict[str, Any]:
        """JSON-able dict; ``details=False`` leaves out per-class, confusion matrix and runs."""
        d: dict[str, Any] = {
            "head": self.head,
            "label": self.label,
            "store": self.store,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "top5_accuracy": self.top5_accuracy,
            "log_loss": self.log_loss,
            "roc_auc": self.roc_auc,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "solver": self.solver,
            "std": dict(self.std),
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "preprocess": list(self.preprocess),
            "class_weight": self.class_weight,
            "protocol": self.protocol,
            "n_runs": self.n_runs,
            "n_classes": len(self.classes),
            "n_labeled": self.n_labeled,
            "n_unlabeled": self.n_unlabeled,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }
        if details:
            d["classes"] = list(self.classes)
            d["per_class"] = [c.to_dict() for c in self.per_class]
            d["confusion_matrix"] = self.confusion_matrix.tolist()
            d["runs"] = [m.to_dict() for m in self.runs]
        return d


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple | list | np.ndarray):
        return [_jsonable(x) for x in v]
    return v


def head_label(head: str, params: Mapping[str, Any] | None) -> str:
    """``"mlp(hidden_sizes=256,128, lr=0.01)"``: a head name with the parameters given to it.

    ``device`` is left out: it changes where a head runs, not what it is.
    """
    params = {k: v for k, v in (params or {}).items() if k != "device"}
    if not params:
        return head

    def fmt(v: Any) -> str:
        if isinstance(v, tuple | list | np.ndarray):
            return ",".join(fmt(x) for x in v)
        return f"{v:g}" if isinstance(v, float) else str(v)

    return f"{head}({', '.join(f'{k}={fmt(v)}' for k, v in params.items())})"
