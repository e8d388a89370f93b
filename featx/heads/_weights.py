"""Class weights as scikit-learn computes them, and the validation score that follows them."""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_class_weight(class_weight: Any, classes: np.ndarray) -> Any:
    """Re-key a ``class_weight`` dict from class labels to encoded indices (others pass through).

    Raises ValueError (scikit-learn's convention) for labels that are not among ``classes``.
    """
    if not isinstance(class_weight, dict):
        return class_weight
    unknown = set(class_weight) - set(classes.tolist())
    if unknown:
        raise ValueError(
            f"class_weight has labels {sorted(map(str, unknown))} that are not in the "
            f"classes {classes.tolist()}"
        )
    return {i: float(class_weight[c]) for i, c in enumerate(classes.tolist()) if c in class_weight}


def class_weight_vector(y: np.ndarray, n_classes: int, class_weight: Any) -> np.ndarray | None:
    """Weight of each encoded class ``0..n_classes-1`` (None without class weights).

    ``"balanced"`` gives class ``c`` the weight ``n / (n_present_classes * n_c)`` computed on
    ``y``, as ``sklearn.utils.class_weight.compute_class_weight``; a dict (encoded keys) gives its
    values, 1 for missing classes.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, str):  # "balanced"
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        present = counts > 0
        w = np.ones(n_classes)
        w[present] = len(y) / (present.sum() * counts[present])
        return w
    return np.array([float(class_weight.get(c, 1.0)) for c in range(n_classes)])


def sample_weights(y: np.ndarray, n_classes: int, class_weight: Any) -> np.ndarray | None:
    """Per-row weights of encoded labels ``y`` from ``class_weight`` (None without)."""
    w = class_weight_vector(y, n_classes, class_weight)
    return None if w is None else w[y]


def selection_score(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, class_weight: Any
) -> float:
    """Validation accuracy, weighted by ``class_weight`` when given.

    With ``"balanced"`` this is the balanced accuracy (the mean recall over the classes present);
    with a dict it is the accuracy under those class weights. A head trained with class weights
    is chosen by the score those weights stand for.
    """
    hit = (y_true == y_pred).astype(np.float64)
    sw = sample_weights(y_true, n_classes, class_weight)
    if sw is None:
        return float(hit.mean())
    return float((sw * hit).sum() / sw.sum())
