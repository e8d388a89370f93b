"""The evaluation protocol: splits, metrics, few-shot sampling, and evaluating a head on features.

Everything here is deterministic given ``seed`` and depends on the items' keys and labels only,
never on row order: two stores of different backbones over the same source get the same splits,
so their heads are compared on the same test items.

Examples
--------
>>> import numpy as np
>>> from featx.features import FeatureSet
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(np.arange(3), 40)
>>> X = (rng.normal(size=(120, 8)) + 3 * np.eye(3, 8)[y]).astype(np.float32)
>>> fs = FeatureSet(X=X, y=y, classes=("a", "b", "c"), split=None,
...                 keys=np.array([f"img{i:03d}" for i in range(120)]))
>>> result = evaluate(fs, "centroid", seed=0)  # or protocol=EvalProtocol(seed=0)
>>> result.n_test, result.accuracy > 0.8
(24, True)

Modules
-------
``splits``    input checks, :func:`make_splits`, :func:`few_shot_splits`, :func:`protocol_splits`
``metrics``   :func:`compute_metrics` of one run (:class:`Metrics`, :class:`ClassReport`)
``results``   :class:`Result`: a head over its runs, and :func:`head_label`
``evaluate``  :func:`evaluate` and :func:`fit_head` (:class:`FittedHead`)
"""

from featx.options import SPLIT_MODES, EvalProtocol
from featx.protocol.evaluate import (
    FOLLOW_UNIT_NORM,
    FittedHead,
    PreparedHead,
    evaluate,
    fit_head,
    follow_features,
    prepare_head,
    unit_norm_rows,
)
from featx.protocol.metrics import ClassReport, Metrics, compute_metrics
from featx.protocol.results import Result, head_label
from featx.protocol.splits import (
    Split,
    check_features,
    describe_splits,
    few_shot_splits,
    make_splits,
    protocol_splits,
)

__all__ = [
    "FOLLOW_UNIT_NORM",
    "SPLIT_MODES",
    "ClassReport",
    "EvalProtocol",
    "FittedHead",
    "Metrics",
    "PreparedHead",
    "Result",
    "Split",
    "check_features",
    "compute_metrics",
    "describe_splits",
    "evaluate",
    "few_shot_splits",
    "fit_head",
    "follow_features",
    "head_label",
    "make_splits",
    "prepare_head",
    "protocol_splits",
    "unit_norm_rows",
]
