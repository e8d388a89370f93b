"""Fine-tuning: the tail on cached activations, the whole network as the reference, predictions.

Imports torch inside functions only (``featx --help`` stays instant).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.finetuning.data import ActivationSet, check_enough
from featx.finetuning.tuned import chosen_head_bundle, epoch_score, parse_heads, tuned_rows
from featx.options import BackboneSpec, EvalProtocol, FinetuneOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FinetuneReport:
    """What :func:`finetune` and :func:`finetune_full` return.

    Attributes
    ----------
    result : featx.protocol.Result
        The fine-tuned model on the protocol's test items (label ``finetune:tail=N`` or
        ``finetune:full``), comparable with the heads' results.
    leaderboard : featx.comparison.Leaderboard
        ``result`` and the frozen heads asked for, on the same split, best first.
    history : list of dict
        Per epoch: training loss, validation loss and accuracy, seconds, whether the tail was
        frozen.
    best_epoch, epochs : int
    seconds : float
        Training time: all epochs (validation included), the learning-rate range test and the
        linear probe of the head's start.
    bundle : Path or None
        The fine-tuned bundle, when one was written.
    model : torch.nn.Module
        The trained network (best epoch, eval mode): the tail and head over cached
        activations (``model(acts, mask)``), or the whole network for ``--full``.
    """

    result: Any
    leaderboard: Any
    history: list[dict[str, Any]]
    best_epoch: int
    epochs: int
    seconds: float
    bundle: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)

    @property
    def seconds_per_epoch(self) -> float:
        """Seconds of one epoch (training and validation; the range test and the probe, which
        ``seconds`` includes, aside)."""
        if self.history:
            return sum(float(h["seconds"]) for h in self.history) / len(self.history)
        return self.seconds / max(1, self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result.to_dict(details=False),
            "leaderboard": self.leaderboard.rows(),
            "protocol": self.leaderboard.protocol,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "train_seconds": self.seconds,
            "seconds_per_epoch": self.seconds_per_epoch,
            "history": self.history,
            "bundle": None if self.bundle is None else str(self.bundle),
            **self.extra,
        }


# ---------------------------------------------------------------------------------------------
# shared steps


def _split_opts(
    options: FinetuneOptions | None, protocol: EvalProtocol | None, overrides: Mapping[str, Any]
) -> tuple[FinetuneOptions, EvalProtocol]:
    fo = {f.name for f in dataclasses.fields(FinetuneOptions)}
    po = {f.name for f in dataclasses.fields(EvalProtocol)}
    unknown = sorted(set(overrides) - fo - po)
    if unknown:
        raise FeatxError(f"unknown option {unknown[0]!r}; valid: {', '.join(sorted(fo | po))}")
    opts = FinetuneOptions.resolve(options, {k: v for k, v in overrides.items() if k in fo})
    proto = EvalProtocol.resolve(protocol, {k: v for k, v in overrides.items() if k in po})
    if proto.cv is not None or proto.shots is not None:
        raise FeatxError(
            "fine-tuning trains on one split; cv folds and few-shot trials do not apply "
            "(evaluate heads with them in featx compare)"
        )
    if parse_heads(opts.tuned_heads):  # an unknown head fails now, not after training
        from featx.heads import get_head_info

        for name in parse_heads(opts.tuned_heads):
            get_head_info(name)
    return opts, proto


def _splits(fs: Any, proto: EvalProtocol, opts: FinetuneOptions) -> tuple[Any, np.ndarray]:
    """(the protocol's train/test split, validation rows carved from its train rows)."""
    from featx.protocol import make_splits
    from featx.splits import stratified_holdout

    split = make_splits(fs, split=proto.split, test_size=proto.test_size, seed=proto.seed)[0]
    train = split.train
    if fs.split is not None and split.name.startswith("store split (train+val"):
        s = np.asarray(fs.split).astype(str)[train]
        if (s == "val").any() and (s == "train").any():
            val = np.sort(train[s == "val"])
            return dataclasses.replace(split, train=np.sort(train[s == "train"])), val
    order = train[np.argsort(fs.keys[train], kind="stable")]
    keep, hold = stratified_holdout(fs.y[order], opts.val_size, proto.seed)
    if len(hold) == 0:
        raise FeatxError(
            "too few training items to hold out a validation set for early stopping; add items"
        )
    return dataclasses.replace(split, train=np.sort(order[keep])), np.sort(order[hold])


def _head(dim: int, n_classes: int, dropout: float, seed: int) -> Any:
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))


def _result(
    fs: Any,
    split: Any,
    logits: Any,
    *,
    label: str,
    params: dict[str, Any],
    store: str,
    fit_seconds: float,
    predict_seconds: float,
    solver: str,
    n_train: int,
) -> Any:
    import torch

    from featx.protocol import Result, compute_metrics

    proba = torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
    yte = fs.y[split.test]
    pred = proba.argmax(1)
    m = dataclasses.replace(
        compute_metrics(yte, pred, fs.classes, scores=proba, proba=proba),
        n_train=n_train,
        n_test=len(split.test),
        fit_seconds=fit_seconds,
        predict_seconds=predict_seconds,
        split=split.name,
        solver=solver,
    )
    n_labeled = int((fs.y >= 0).sum())
    return Result(
        head="finetune",
        label=label,
        store=store,
        params=params,
        preprocess=(),
        class_weight=None,
        protocol=split.name,
        classes=tuple(fs.classes),
        n_labeled=n_labeled,
        n_unlabeled=fs.n - n_labeled,
        n_train=n_train,
        n_test=len(split.test),
        accuracy=m.accuracy,
        balanced_accuracy=m.balanced_accuracy,
        macro_f1=m.macro_f1,
        top5_accuracy=m.top5_accuracy,
        log_loss=m.log_loss,
        fit_seconds=fit_seconds,
        predict_seconds=predict_seconds,
        std={},
        per_class=m.per_class,
        confusion_matrix=m.confusion_matrix,
        runs=(m,),
        roc_auc=m.roc_auc,
        solver=solver,
    )


def _leaderboard(
    result: Any,
    heads: Sequence[Any],
    features: Any,
    proto: EvalProtocol,
    name: str,
    tuned: Sequence[Any] = (),
) -> Any:
    from featx.comparison import Leaderboard, compare

    results = [result, *tuned]
    failures: tuple[Any, ...] = ()
    if heads:
        board = compare({name: features}, list(heads), protocol=proto.split_only())
        results += list(board.results)
        failures = board.failures
    results.sort(key=lambda r: (-r.accuracy, -r.balanced_accuracy, r.fit_seconds))
    return Leaderboard(
        results=tuple(results),
        failures=failures,
        protocol=result.protocol,
        n_items=int(features.n) if features is not None else 0,
        stores=(name,),
    )


def backbone_from_config(
    cfg: Mapping[str, Any],
    *,
    bundle: bool = False,
    weights_file: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> Any:
    """Load the backbone a store (or, ``bundle=True``, a fine-tuned bundle) records, with its
    default (pooled) embedding, and check that its weights are the recorded ones.

    A bundle's backbone follows the rule of every bundle
    (:meth:`~featx.options.BackboneSpec.from_recorded`): a local model folder or weights file
    is loaded only when passed as ``model_dir`` / ``weights_file``."""
    from featx.backbones import load_backbone

    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise FeatxError("the store does not record its backbone; re-extract it")
    if bundle:
        spec = BackboneSpec.from_recorded(cfg, weights_file=weights_file, model_dir=model_dir)
    else:
        spec = BackboneSpec.from_config(cfg)
        if str(spec.weights).startswith("file:"):
            raise FeatxError(
                "the backbone was loaded from a local weights file; fine-tuning rebuilds it "
                "from named weights only"
            )
    if cfg.get("family") == "text":
        spec = dataclasses.replace(spec, layer=None)
    else:
        spec = dataclasses.replace(spec, layer=None, pool=None)
    bb = load_backbone(spec)
    if bb.config().get("weights_sha256") != cfg.get("weights_sha256"):
        raise FeatxError(
            f"the weights of {cfg.get('name')} here differ from those the activations were "
            "computed with; re-extract with these weights"
        )
    return bb


def _as_float(x: Any) -> Any:
    return x.float()


def checkpoint_path(bundle: str | os.PathLike | None) -> Path | None:
    """The per-epoch checkpoint of a run that writes ``bundle``: next to it, ``<bundle>.ckpt``
    (no bundle: no checkpoint)."""
    if bundle is None:
        return None
    b = Path(bundle)
    return b.with_name(b.name + ".ckpt")


def _fit(
    net: Any,
    data: Any,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    opts: FinetuneOptions,
    task: Any,
    where: tuple[Any, Any],
) -> tuple[Any, dict[str, Any]]:
    """Pick the learning rates (``opts.lr``, ``opts.tail_lr``), initialise ``net``'s head
    (``opts.head_init``), then train: (Fitted, what the head's start and the range tests did).
    A resumed run skips the first two (its checkpoint has them)."""
    import torch

    from featx.finetuning import lrfind
    from featx.finetuning.loop import fingerprint, init_head, load_checkpoint, predict_logits, train

    dev, amp = where
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    fp = fingerprint(opts, task, train_idx, val_idx, data, y)
    if load_checkpoint(task.checkpoint, fp) is not None:
        fitted = train(net, data, y, train_idx, val_idx, opts, task, (0.0, 0.0, None))
        return fitted, {"head_init": opts.head_init}
    t0 = time.perf_counter()
    net.to(dev)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    ys = (y_t[train_idx], y_t[val_idx])
    emb = None
    if opts.lr == "auto" or opts.head_init == "probe":
        emb = tuple(
            predict_logits(net, data, rows, task.to_input, dev=dev, amp=amp, fn=net.embed)
            for rows in (train_idx, val_idx)
        )
    kw = {
        "batch_size": opts.batch_size,
        "weight_decay": opts.weight_decay,
        "label_smoothing": opts.label_smoothing,
    }
    found: dict[str, Any] = {}
    lr = opts.lr
    if lr == "auto":
        assert emb is not None
        found["head"] = lrfind.head_lr(emb[0], ys[0], linear.out_features, seed=task.seed, **kw)
        lr = found["head"]["lr"]
        if opts.head_init == "probe":  # the head starts trained: it only follows the blocks
            lr *= lrfind.PROBE_SHARE
    init = init_head(linear, opts.head_init, emb, ys)
    tail_lr = opts.tail_lr
    if tail_lr == "auto":
        tail_lr = 0.0
        if task.body_params:
            found["blocks"] = lrfind.blocks_lr(
                net, data, y, train_idx, task, dev=dev, amp=amp, **kw
            )
            head_rate = found["head"]["lr"] if "head" in found else float(lr)
            tail_lr = min(found["blocks"]["lr"], lrfind.BLOCKS_CAP * head_rate)
    setup_s = time.perf_counter() - t0
    fitted = train(
        net, data, y, train_idx, val_idx, opts, task, (float(lr), float(tail_lr), found or None)
    )
    fitted.seconds += setup_s  # the range tests and the probe are part of the training time
    init["setup_seconds"] = setup_s
    return fitted, init


def fit_summary(fitted: Any, init: Mapping[str, Any]) -> dict[str, Any]:
    """The report's extra keys: the learning rates used, the range test, the head's start."""
    found = fitted.lr_find
    return {
        "lr": fitted.lr,
        "tail_lr": fitted.tail_lr,
        "lr_find": None
        if found is None
        else {
            part: {k: v[k] for k in ("lr", "lr_min", "lr_steep", "steps", "seconds")}
            for part, v in found.items()
        },
        "resumed_from_epoch": fitted.resumed_from,
        "start_val_accuracy": None if fitted.start is None else fitted.start["val_accuracy"],
        "start_val_score": None if fitted.start is None else fitted.start.get("val_score"),
        **dict(init),
    }


def _seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(int(seed))


# ---------------------------------------------------------------------------------------------
# tail fine-tuning


def finetune(
    data: ActivationSet | str | os.PathLike,
    *,
    options: FinetuneOptions | None = None,
    protocol: EvalProtocol | None = None,
    heads: Sequence[Any] = (),
    bundle: str | os.PathLike | None = None,
    **overrides: Any,
) -> FinetuneReport:
    """Fine-tune the last blocks of a backbone, and a new head, on cached activations.

    The tail (the blocks after the cut, initialised from the pretrained weights, plus the
    backbone's own pooling) and a new linear head train with AdamW and discriminative learning
    rates, a warm-up with the tail frozen, early stopping on a validation set carved from the
    training items, and activation-space augmentation; see :mod:`featx.finetuning.loop`.

    Parameters
    ----------
    data : ActivationSet or path
        A store extracted with ``--cache-activations`` (or an :class:`ActivationSet`).
    options : FinetuneOptions, optional
        Tail size, epochs, learning rates, ... (see :class:`~featx.options.FinetuneOptions`).
    protocol : EvalProtocol, optional
        The split and seed, as for the heads (so the rows compare on the same test items).
    heads : sequence, optional
        Frozen heads to evaluate on the same split for the leaderboard (``["logreg"]``).
    bundle : path, optional
        Where to write the fine-tuned bundle (``featx predict`` takes it).
    **overrides
        Fields of FinetuneOptions or EvalProtocol.

    Returns
    -------
    FinetuneReport

    Raises
    ------
    FeatxError
        A store without cached activations (says which extract command adds them), too few
        labelled items (says how many are needed), a tail longer than the cache allows.
    """
    import torch

    from featx.finetuning.cuts import TailNet, cut_backbone
    from featx.finetuning.loop import Task, device_and_precision

    opts, proto = _split_opts(options, protocol, overrides)
    data, store_path = _activations(data)
    fs = data.feature_set()
    split, val = _splits(fs, proto, opts)
    bb = backbone_from_config(data.backbone)
    cm = cut_backbone(bb, data.cut)
    if cm.cut != data.cut:
        raise FeatxError(f"the activations were cached at {data.cut}, which {bb.name} lacks")
    n = cm.n_tail if opts.tail is None else int(opts.tail)
    full_tail = cm.tail(None, train_blocks=n)  # checks n against the cache
    k = full_tail.frozen_blocks
    features = None
    if heads:  # the pretrained embedding, before training changes the tail's blocks in place
        features = _frozen_features(data, store_path, bb)
    _seed_all(proto.seed)
    head = _head(cm.dim, len(data.classes), opts.dropout, proto.seed)
    dev, _prec, amp = device_and_precision(opts)
    cached = _cached(data, list(cm.blocks)[:k], cm.kind, dev)
    net = TailNet(torch.nn.ModuleList(list(cm.blocks)[k:]), cm.post, head, cm.kind)
    full_tail.head = head
    task = Task(
        head_params=list(head.parameters()),
        body_params=list(dict.fromkeys(net.tail_parameters())),
        seed=proto.seed,
        to_input=_as_float,
        augment=_tail_augment(cm.kind, opts),
        desc=f"finetune:tail={n}",
        checkpoint=checkpoint_path(bundle),
    )
    if parse_heads(opts.tuned_heads) and val is not None and len(val):
        # the epochs are ranked by a kNN on the tuned embedding (cheap on cached activations)
        task.score = epoch_score(cached, data.y, (split.train, val), _as_float, proto, (dev, amp))
    fitted, init = _fit(net, cached, data.y, split.train, val, opts, task, (dev, amp))
    trained = _Trained(
        net, full_tail, cached, fs, split, task, fitted, init, (dev, amp), str(data.name), val
    )
    info = {
        "mode": "tail",
        "classes": data.classes,
        "backbone": data.backbone,
        "cut": cm.cut,
        "tail_blocks": n,
        "head": {"dim": cm.dim, "n_classes": len(data.classes), "dropout": opts.dropout},
    }
    return _conclude(
        trained,
        opts,
        proto,
        params={"tail": n, "cut": cm.cut},
        heads=heads,
        features=features,
        bundle=bundle,
        bundle_info=info,
    )


@dataclass
class _Trained:
    """What :func:`_conclude` turns into a report: the trained ``net`` (``net(x, mask)``), the
    model the bundle holds, and the run's data, split and settings."""

    net: Any
    model: Any
    data: Any
    fs: Any
    split: Any
    task: Any
    fitted: Any
    init: dict[str, Any]
    where: tuple[Any, Any]
    name: str
    val: Any = None  # the validation rows (early stopping, and choosing among tuned heads)


def _conclude(
    t: _Trained,
    opts: FinetuneOptions,
    proto: EvalProtocol,
    *,
    params: dict[str, Any],
    heads: Sequence[Any],
    features: Any,
    bundle: str | os.PathLike | None,
    bundle_info: Mapping[str, Any],
) -> FinetuneReport:
    """Score the test items, build the leaderboard row (next to ``heads`` on ``features``),
    write the bundle (then drop the checkpoint): the end every fine-tune shares."""
    from featx.finetuning.loop import predict_logits, remove_checkpoint

    dev, amp = t.where
    t0 = time.perf_counter()
    logits = predict_logits(t.net, t.data, t.split.test, t.task.to_input, dev=dev, amp=amp)
    pred_s = time.perf_counter() - t0
    f = t.fitted
    solver = (
        f"AdamW, best epoch {f.best_epoch}/{f.epochs}, "
        f"{f.seconds_per_epoch:.2f} s/epoch ({f.device} {f.precision})"
    )
    result = _result(
        t.fs,
        t.split,
        logits,
        label=t.task.desc,
        params={**params, "epochs": f.epochs, "best_epoch": f.best_epoch},
        store=t.name,
        fit_seconds=f.seconds,
        predict_seconds=pred_s,
        solver=solver,
        n_train=len(t.split.train),
    )
    extra = fit_summary(f, t.init)
    tuned: list[Any] = []
    tuned_head = None
    if parse_heads(opts.tuned_heads) and t.val is not None:
        tuned, info, emb = tuned_rows(t, parse_heads(opts.tuned_heads), proto, t.val, result)
        extra["tuned_heads"] = info
        if bundle is not None and info["chosen_head"] is not None:
            blob = chosen_head_bundle(emb, t, t.val, info["chosen_head"], proto, info["chosen"])
            tuned_head = (info["chosen"], blob)
    board = _leaderboard(result, heads, features, proto, t.name, tuned)
    path = None
    if bundle is not None:
        from featx.finetuning.bundle import save_finetune_bundle

        t.model.cpu()
        path = save_finetune_bundle(
            bundle,
            t.model,
            **bundle_info,
            metrics=result.to_dict(details=False),
            history=f.history,
            options=opts.to_dict(),
            tuned_head=tuned_head,
        )
    remove_checkpoint(t.task.checkpoint)
    return FinetuneReport(
        result=result,
        leaderboard=board,
        history=f.history,
        best_epoch=f.best_epoch,
        epochs=f.epochs,
        seconds=f.seconds,
        bundle=path,
        extra=extra,
        model=t.model.eval(),
    )


def _tail_augment(kind: str, opts: FinetuneOptions) -> Any:
    """The activation-space augmentation of a tail (``augment(x, mask, gen)``) or None."""
    from featx.finetuning import augment as aug

    if not opts.augment:
        return None
    if kind == "map":

        def feature_maps(x: Any, m: Any, gen: Any) -> tuple[Any, Any]:
            return aug.feature_maps(x, gen), m

        return feature_maps
    if kind == "text":

        def token_dropout(x: Any, m: Any, gen: Any) -> tuple[Any, Any]:
            return x, aug.token_dropout(m, gen)

        return token_dropout
    return None


def _activations(data: ActivationSet | str | os.PathLike) -> tuple[ActivationSet, Any]:
    """(the cached activations, read from the store when given a path; the store path or
    None), with enough labelled items (FeatxError otherwise)."""
    store_path = None
    if not isinstance(data, ActivationSet):
        from featx.finetuning.store import read_activations

        store_path = data
        data = read_activations(data)
    check_enough(data.y, data.classes)
    return data, store_path


def _cached(data: ActivationSet, frozen: list[Any], kind: str, dev: Any) -> Any:
    """The training inputs (:class:`~featx.finetuning.loop.Data`): the cache as tensors, run
    once through ``frozen`` blocks (those before the trained ones) when there are any."""
    import torch

    from featx.finetuning.loop import Data

    acts = torch.from_numpy(np.ascontiguousarray(data.acts))
    mask = None if data.mask is None else torch.from_numpy(data.mask.astype(np.int64))
    if frozen:
        acts = _run_frozen(frozen, kind, acts, mask, dev)
    return Data(acts, mask)


def _run_frozen(blocks: list[Any], kind: str, acts: Any, mask: Any, dev: Any) -> Any:
    """``blocks`` (eval, no grad) over every row of ``acts``; the output kept in float16."""
    import torch

    for b in blocks:
        b.to(dev).eval()
    outs = []
    with torch.no_grad():
        for s in range(0, acts.shape[0], 256):
            x = acts[s : s + 256].to(dev).float()
            m = None if mask is None else mask[s : s + 256].to(dev)
            if m is not None:  # only the real tokens' width (the rest is masked padding)
                w = max(1, int(m.sum(1).max()))
                x, m = x[:, :w], m[:, :w]
            for b in blocks:
                x = b(x, m) if kind == "text" else b(x)
            if kind == "text":
                x = torch.nn.functional.pad(x, (0, 0, 0, acts.shape[1] - x.shape[1]))
            outs.append(x.half().cpu())
    return torch.cat(outs)


def _frozen_features(data: ActivationSet, store_path: Any, bb: Any) -> Any:
    """The features the frozen heads get: the store's, or the pretrained tail's embedding of
    the activations (the same numbers, computed from the cache)."""
    import torch

    from featx.features import FeatureSet
    from featx.finetuning.cuts import cut_backbone

    if store_path is not None:
        from featx.store import load_features

        return load_features(store_path)
    cm = cut_backbone(bb, data.cut)
    net = cm.tail(None).eval()
    out = []
    with torch.no_grad():
        for s in range(0, data.n, 256):
            a = torch.from_numpy(np.ascontiguousarray(data.acts[s : s + 256])).float()
            m = None
            if data.mask is not None:
                m = torch.from_numpy(data.mask[s : s + 256].astype(np.int64))
                w = max(1, int(m.sum(1).max()))
                a, m = a[:, :w], m[:, :w]
            out.append(net.embed(a, m).numpy())
    fs = data.feature_set()
    return FeatureSet(
        X=np.concatenate(out).astype(np.float32),
        y=fs.y,
        classes=fs.classes,
        split=fs.split,
        keys=fs.keys,
        meta={},
    )
