"""featx's heads on a fine-tuned network's embedding (``FinetuneOptions.tuned_heads``).

After fine-tuning, the network's own linear head is one way to classify; a classical head
(a cosine kNN, an RBF SVM, ...) fitted on the *tuned* embedding is another, and a common one:
the tuned blocks are a better feature extractor, and the heads featx compares on frozen
features often beat a linear layer on them (BBC headlines in BENCHMARKS.md).

Each head gives a row ``<run>+<head>`` (``finetune:tail=1+knn``) in the same leaderboard, fitted
on the protocol's training items (the fine-tune's training and validation items, as for the
frozen heads) and scored on its test items. Which of them to use is decided on the validation
items only: each head is also fitted on the fine-tune's training items and scored on its
validation items, next to the network's own head (its best epoch's validation accuracy); the
best is reported as ``tuned_heads["chosen"]``. The test items never choose anything.

The epochs of such a run are ranked by the same kind of score (:func:`epoch_score`): a kNN
(featx's ``knn`` head) on the tuned embedding, fitted on the fine-tune's training rows and scored
on its validation rows, after every epoch; not by the linear head that will not be used. A kNN
because it costs no iterative fit (the RBF SVM's sweep costs seconds, more than a tail epoch).

Imports torch inside functions only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def parse_heads(spec: str | Sequence[str] | None) -> list[str]:
    """``"knn, svm"`` -> ``["knn", "svm"]`` (empty: none)."""
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    return [p.strip() for p in parts if p and p.strip()]


def tuned_embedding(t: Any) -> tuple[np.ndarray, float]:
    """The trained network's embedding of every row of its data, and the seconds it took."""
    from featx.finetuning.loop import predict_logits

    dev, amp = t.where
    t0 = time.perf_counter()
    rows = np.arange(int(t.data.x.shape[0]))
    emb = predict_logits(t.net, t.data, rows, t.task.to_input, dev=dev, amp=amp, fn=t.net.embed)
    return emb.numpy().astype(np.float32), time.perf_counter() - t0


#: the head whose validation accuracy on the tuned embedding ranks the epochs
EPOCH_HEAD = "knn"


def epoch_score(
    data: Any,
    y: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    to_input: Any,
    proto: Any,
    where: Any,
) -> Any:
    """``score(model) -> float`` for :class:`featx.finetuning.loop.Task`: the validation accuracy
    of :data:`EPOCH_HEAD` fitted on ``model.embed`` of the training rows ``rows[0]`` and scored
    on the validation rows ``rows[1]`` (the protocol's preprocessing and seed, as the rows')."""
    from featx.finetuning.loop import predict_logits
    from featx.heads import make_head

    dev, amp = where
    train_idx, val_idx = (np.asarray(r) for r in rows)
    both = np.concatenate([train_idx, val_idx])
    y = np.asarray(y)

    def score(model: Any) -> float:
        emb = predict_logits(model, data, both, to_input, dev=dev, amp=amp, fn=model.embed)
        emb = emb.numpy().astype(np.float32)
        n = len(train_idx)
        est = make_head(
            EPOCH_HEAD, None, proto.preprocess, proto.class_weight, random_state=proto.seed
        )
        est.fit(emb[:n], y[train_idx])
        return float(np.mean(est.predict(emb[n:]) == y[val_idx]))

    return score


def own_val_accuracy(fitted: Any) -> float | None:
    """The network's own head on the validation items: its best epoch's accuracy."""
    if fitted.best_epoch == 0:
        return None if fitted.start is None else float(fitted.start["val_accuracy"])
    for h in fitted.history:
        if h["epoch"] == fitted.best_epoch:
            return float(h["val_accuracy"])
    return None


def tuned_rows(
    t: Any, heads: Sequence[str], proto: Any, val: np.ndarray, own: Any
) -> tuple[list[Any], dict[str, Any], np.ndarray]:
    """Rows ``<own.label>+<head>`` for each of ``heads`` on ``t``'s tuned embedding, and what
    chose among them (see the module docstring).

    ``t`` is the trained run (:class:`featx.finetuning.api._Trained`), ``val`` its validation
    rows, ``own`` the network's own result row. Each row's ``fit_seconds`` is the fine-tune's
    training time plus the embedding and this head's fits; its params record the head's
    validation accuracy. Also returns the tuned embedding (every row).
    """
    from featx.comparison import compare
    from featx.features import FeatureSet

    emb, emb_s = tuned_embedding(t)
    fs = t.fs
    tuned = FeatureSet(X=emb, y=fs.y, classes=fs.classes, split=fs.split, keys=fs.keys, meta={})
    # validation: fitted on the fine-tune's training rows, scored on its validation rows
    y_val = np.full_like(np.asarray(fs.y), -1)
    side = np.full(len(y_val), "", dtype=object)
    for rows, name in ((t.split.train, "train"), (val, "test")):
        y_val[rows], side[rows] = np.asarray(fs.y)[rows], name
    on_val = dataclasses.replace(tuned, y=y_val, split=side)
    store = t.name
    val_board = compare({store: on_val}, list(heads), protocol=_store_split(proto))
    test_board = compare({store: tuned}, list(heads), protocol=proto.split_only())
    val_acc = {r.label: (r.accuracy, r.fit_seconds) for r in val_board.results}
    rows: list[Any] = []
    for r in test_board.results:
        acc, val_fit = val_acc.get(r.label, (float("nan"), 0.0))
        rows.append(
            dataclasses.replace(
                r,
                label=f"{own.label}+{r.label}",
                params={**own.params, "head": r.label, **r.params, "val_accuracy": acc},
                fit_seconds=own.fit_seconds + emb_s + val_fit + r.fit_seconds,
            )
        )
    scores = {r.label: r.params["val_accuracy"] for r in rows}
    ranked = [k for k, v in scores.items() if np.isfinite(v)]
    # the first of ties, in the order given; the network's own head is not a candidate: its
    # validation accuracy is the best of its epochs on these items, biased upwards
    chosen = max(ranked, key=lambda k: round(scores[k], 6)) if ranked else own.label
    failures = [f"{f.head}: {f.error}" for f in (*val_board.failures, *test_board.failures)]
    info = {
        "val_accuracy": scores,
        "own_val_accuracy": own_val_accuracy(t.fitted),
        "chosen": chosen,
        "chosen_head": next((r.head for r in rows if r.label == chosen), None),
        "embed_seconds": emb_s,
        # what ranked the epochs: a kNN on the tuned embedding, or the network's own head
        "epochs_ranked_by": EPOCH_HEAD if t.task.score is not None else "own head",
        "failures": failures,
    }
    return rows, info, emb


def chosen_head_bundle(
    emb: np.ndarray, t: Any, val: np.ndarray, name: str, proto: Any, label: str
) -> bytes:
    """The head ``name`` fitted as its row was (the protocol's training items: the fine-tune's
    training and validation rows), as the bytes of a safe head bundle
    (:func:`featx.bundle.save_bundle`) for the fine-tuned bundle."""
    import tempfile
    from pathlib import Path

    from featx.bundle import save_bundle
    from featx.heads import make_head

    rows = np.union1d(t.split.train, val)
    fs = t.fs
    est = make_head(name, None, proto.preprocess, proto.class_weight, random_state=proto.seed)
    est.fit(emb[rows], np.asarray(fs.y)[rows])
    with tempfile.TemporaryDirectory(prefix="featx-tuned-") as d:
        meta = {"dim": int(emb.shape[1]), "tuned": label}
        return save_bundle(Path(d) / "head.npz", est, fs.classes, meta).read_bytes()


def _store_split(proto: Any) -> Any:
    return dataclasses.replace(proto.split_only(), split="store")
