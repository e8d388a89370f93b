"""Seeded, stratified hold-out splits shared by the heads (validation sweeps) and the protocol.

Unlike ``StratifiedShuffleSplit`` these never fail on small classes: every class with at least two
items keeps at least one item on each side, and a class with a single item stays on the fitting
side. That is what a few-shot sweep needs (2 shots per class still leaves one item to validate on).
"""

from __future__ import annotations

import numpy as np


def stratified_holdout(
    y: np.ndarray,
    fraction: float,
    random_state: int | np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (keep, holdout), stratified by ``y``.

    Each class ``c`` with ``n_c >= 2`` items sends ``round(fraction * n_c)`` of them, clipped to
    ``[1, n_c - 1]``, to the hold-out side; a class with one item stays on the keep side.

    Parameters
    ----------
    y : ndarray of shape (n,)
        Labels (any sortable dtype).
    fraction : float in (0, 1)
        Share of each class to hold out.
    random_state : int, RandomState or None
        Seed of the shuffle inside each class.

    Returns
    -------
    keep, holdout : ndarray of int64
        Sorted row indices; ``holdout`` is empty when no class has two items.

    Examples
    --------
    >>> keep, val = stratified_holdout(np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]), 0.2, 0)
    >>> len(keep), len(val)
    (8, 2)
    """
    from sklearn.utils import check_random_state

    rng = check_random_state(random_state)
    y = np.asarray(y)
    holdout: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            continue
        n_hold = int(np.clip(round(fraction * len(idx)), 1, len(idx) - 1))
        holdout.append(rng.permutation(idx)[:n_hold])
    hold = np.sort(np.concatenate(holdout)) if holdout else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(y)), hold)
    return keep.astype(np.int64), hold.astype(np.int64)
