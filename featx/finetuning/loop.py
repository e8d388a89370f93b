"""The training loop shared by tail fine-tuning (on cached activations) and full fine-tuning.

A plain PyTorch loop, so its numbers are what such a loop gives:

* the new head starts from a linear probe (``head_init="probe"``: a multinomial logistic
  regression fitted by full-batch L-BFGS on the pretrained embedding of the training items, its
  L2 penalty picked on the validation items), so fine-tuning starts where the frozen linear head
  ends ("LP-FT", Kumar et al. 2022), rather than spending its first epochs scaling a random head;
* AdamW with two parameter groups: the new head at ``lr``, the pretrained blocks at ``tail_lr``
  (discriminative learning rates, as fastai does); ``"auto"`` picks either with a learning-rate
  range test (:mod:`featx.finetuning.lrfind`);
* ``warmup_epochs`` that train the head alone (the pretrained blocks frozen), then every trainable
  block, with a cosine decay of both rates to 5 % over the remaining epochs;
* cross-entropy (``label_smoothing``), mixed precision where the device has it (bf16 autocast on
  CUDA; fp16 with a gradient scaler when asked);
* early stopping on the validation items: the best epoch (validation accuracy, then loss) is kept
  and restored at the end; ``patience`` epochs without improvement stop the run; the untrained
  start is scored first as "epoch 0" and restored instead when it scored strictly better, so a
  run never ends below its start on the validation items (patience counts from the best trained
  epoch, since fine-tuning often dips below its start before it climbs past it); a task with
  a ``score`` (tail runs with ``tuned_heads``: a kNN on the tuned embedding) ranks the epochs
  and the start by that validation score first (then accuracy, then loss);
* a checkpoint after every epoch (``checkpoint=``: written atomically, read back with
  ``torch.load(weights_only=True)``): a killed run resumes from its last finished epoch and ends
  with the same weights as an uninterrupted one; the caller removes it on success;
* a progress bar (stderr) with epoch, training loss and validation accuracy;
* everything seeded: the initial head, the shuffles, dropout and the augmentations come from
  ``seed``, so a rerun gives the same weights.

Imports torch at module level: import it lazily.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featx.options import FinetuneOptions

logger = logging.getLogger(__name__)

#: Cosine decay floor, as a share of the starting learning rates.
LR_FLOOR = 0.05
#: L2 penalties (on the mean cross-entropy) the linear probe tries; the best on validation wins.
PROBE_L2 = (1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class Data:
    """Training inputs held on the CPU: ``x`` (N, ...) activations (float16) or uint8 images,
    ``mask`` (N, T) for text (else None)."""

    x: torch.Tensor
    mask: torch.Tensor | None = None

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``idx``; text is cut to the longest real sequence among them (the padding
        after it is masked out of attention and pooling, so the result is the same)."""
        if self.mask is None:
            return self.x[idx], None
        m = self.mask[idx]
        width = max(1, int(m.sum(1).max())) if len(idx) else 1
        return self.x[idx][:, :width], m[:, :width]


@dataclass
class Fitted:
    """What :func:`train` returns."""

    best_epoch: int
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    lr: float = 0.0
    tail_lr: float = 0.0
    lr_find: dict[str, Any] | None = None
    resumed_from: int = 0
    #: the untrained start's validation loss and accuracy ("epoch 0"; None without val rows)
    start: dict[str, float] | None = None

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, self.epochs)


@dataclass
class Task:
    """What :func:`train` trains besides the model and the data.

    Attributes
    ----------
    head_params, body_params : list of Parameter
        The new head (trained from the first epoch at ``lr``) and the pretrained blocks
        (frozen for ``opts.warmup_epochs``, then trained at ``tail_lr``).
    to_input : callable
        A batch of ``data.x`` already on the device -> the model's float input.
    augment : callable, optional
        ``augment(x, mask, generator) -> (x, mask)`` applied to training batches on the device.
    checkpoint : path, optional
        Where the per-epoch checkpoint lives (a killed run resumes from it).
    score : callable, optional
        ``score(model) -> float``: a validation score that ranks the epochs (and the start)
        before the own head's validation accuracy and loss (recorded as ``val_score``).
    """

    head_params: list[nn.Parameter]
    body_params: list[nn.Parameter]
    seed: int
    to_input: Callable[[torch.Tensor], torch.Tensor]
    augment: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None = None
    desc: str = "finetune"
    checkpoint: Path | None = None
    score: Callable[[nn.Module], float] | None = None


def device_and_precision(opts: FinetuneOptions) -> tuple[torch.device, str, Any]:
    """(device, resolved precision, autocast dtype or None)."""
    from featx.engine import resolve_device, resolve_precision

    dev = resolve_device(opts.device)
    prec = resolve_precision(opts.precision, dev)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
    return dev, prec, amp


def _autocast(dev: torch.device, amp: Any) -> Any:
    if amp is None:
        return torch.autocast(dev.type, enabled=False)
    return torch.autocast(dev.type, dtype=amp)


def predict_logits(
    model: nn.Module,
    data: Data,
    idx: np.ndarray,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    *,
    dev: torch.device,
    amp: Any = None,
    batch_size: int = 256,
    fn: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits (float32, CPU) of the rows ``idx`` in eval mode (``fn(x, mask)`` instead of
    ``model(x, mask)`` when given, e.g. ``model.embed``)."""
    model.eval()
    call = model if fn is None else fn
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            b = torch.as_tensor(idx[s : s + batch_size])
            xb, mb = data.batch(b)
            x = to_input(xb.to(dev))
            m = None if mb is None else mb.to(dev)
            with _autocast(dev, amp):
                out.append(call(x, m).float().cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# the head's initialisation


def init_head(
    head: nn.Linear,
    how: str,
    emb: tuple[torch.Tensor, torch.Tensor] | None,
    ys: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, Any]:
    """Initialise the new linear ``head`` in place: ``random`` (PyTorch's default, seeded by the
    caller), ``zero``, or ``probe``: the linear probe on the pretrained embeddings ``emb`` =
    (training rows, validation rows) with labels ``ys``. Returns what was done (for the
    report)."""
    if how == "random":
        return {"head_init": "random"}
    with torch.no_grad():
        if how == "zero":
            head.weight.zero_()
            head.bias.zero_()
            return {"head_init": "zero"}
        assert emb is not None and ys is not None
        t0 = time.perf_counter()
        w, b, info = _probe(emb[0], ys[0], emb[1], ys[1], head.out_features)
        head.weight.copy_(w)
        head.bias.copy_(b)
    info["probe_seconds"] = time.perf_counter() - t0
    return {"head_init": "probe", **info}


def _probe(
    xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Multinomial logistic regression by full-batch L-BFGS for each penalty of PROBE_L2; the
    best on the validation rows (accuracy, then loss). Deterministic: starts from zero."""
    best: tuple[Any, ...] | None = None
    for l2 in PROBE_L2:
        w = torch.zeros(k, xt.shape[1], requires_grad=True)
        b = torch.zeros(k, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w, b], lr=1, max_iter=200, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure(
            w: torch.Tensor = w, b: torch.Tensor = b, l2: float = l2, opt: Any = opt
        ) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(xt @ w.T + b, yt) + l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            lv = xv @ w.T + b
            acc = float((lv.argmax(1) == yv).float().mean()) if len(yv) else 0.0
            loss = float(nn.functional.cross_entropy(lv, yv)) if len(yv) else 0.0
        key = (acc, -loss)
        if best is None or key > best[0]:
            best = (key, w.detach(), b.detach(), l2)
    assert best is not None
    (acc, neg_loss), w, b, l2 = best
    return w, b, {"probe_l2": l2, "probe_val_accuracy": acc, "probe_val_loss": -neg_loss}


# ---------------------------------------------------------------------------------------------
# checkpoints


def fingerprint(
    opts: FinetuneOptions, task: Task, train_idx: Any, val_idx: Any, data: Data, y: Any
) -> str:
    """What a checkpoint must match to be resumed: the options (progress aside), the seed, the
    run's label, the split, the labels, and the data's shape and first and last rows."""
    d = {k: v for k, v in opts.to_dict().items() if k != "progress"}
    h = hashlib.sha256(json.dumps([d, task.seed, task.desc], sort_keys=True, default=str).encode())
    h.update(repr(tuple(data.x.shape)).encode())
    for part in (train_idx, val_idx, y, data.x[:2].numpy(), data.x[-2:].numpy()):
        h.update(np.ascontiguousarray(np.asarray(part)).tobytes())
    return h.hexdigest()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from featx.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path | None, fp: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this run (same fingerprint), else None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file: start over
        logger.warning("ignoring the checkpoint %s (%s); starting over", path, e)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fp:
        logger.warning("the checkpoint %s is from another run; starting over", path)
        return None
    return state


def remove_checkpoint(path: Path | None) -> None:
    if path is not None:
        Path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# the loop


def lr_factor(step: int, decay_steps: int) -> float:
    """The cosine decay from 1 to LR_FLOOR over ``decay_steps``."""
    t = min(1.0, max(0.0, step / decay_steps))
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class _State:
    """The loop's state between epochs (what a checkpoint holds)."""

    epoch: int = 0
    best: dict[str, Any] | None = None
    best_key: tuple[float, ...] | None = None
    best_epoch: int = 0
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    start: dict[str, float] | None = None
    start_state: dict[str, Any] | None = None


def train(
    model: nn.Module,
    data: Data,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    opts: FinetuneOptions,
    task: Task,
    lrs: tuple[float, float, dict[str, Any] | None],
) -> Fitted:
    """Train ``model`` (``model(x, mask) -> logits``) in place; it ends with the best epoch's
    weights, in eval mode. See the module docstring for the recipe and :class:`Task` for what
    it trains. ``lrs``: (head lr, tail lr, what the range tests found or None); a resumed run
    takes them from its checkpoint."""
    from featx.progress import progress_bar

    dev, prec, amp = device_and_precision(opts)
    model.to(dev)
    for p in task.head_params:
        p.requires_grad_(True)
    fp = fingerprint(opts, task, train_idx, val_idx, data, y)
    saved = load_checkpoint(task.checkpoint, fp)
    if saved is not None:
        lr, tail_lr, found = saved["lr"], saved["tail_lr"], saved["lr_find"]
    else:
        lr, tail_lr, found = lrs
    groups = [{"params": task.head_params, "lr": lr, "base_lr": lr}]
    if task.body_params:
        groups.append({"params": task.body_params, "lr": tail_lr, "base_lr": tail_lr})
    optim = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
    gen = torch.Generator().manual_seed(int(task.seed))
    torch.manual_seed(int(task.seed))  # dropout inside the model
    st = _State() if saved is None else _restore(saved, model, optim, gen, dev)
    if saved is not None:
        logger.info("%s: resuming after epoch %d (%s)", task.desc, st.epoch, task.checkpoint)
    resumed_from = st.epoch
    if saved is None and len(val_idx):
        _score_start(model, data, y, val_idx, task, st, dev, amp)
    bar = progress_bar(
        total=opts.epochs, desc=task.desc, unit="epoch", enabled=opts.progress, initial=st.epoch
    )
    try:
        while st.epoch < opts.epochs and st.since_best < opts.patience:
            _epoch(model, data, y, train_idx, val_idx, opts, task, optim, gen, st, (dev, amp))
            h = st.history[-1]
            bar.set_postfix_str(
                f"loss {h['train_loss']:.4f} val_acc {h['val_accuracy']:.4f} best {st.best_epoch}",
                refresh=False,
            )
            bar.update(1)
            if task.checkpoint is not None:
                state = _snapshot(st, model, optim, gen, dev)
                state.update(fingerprint=fp, lr=lr, tail_lr=tail_lr, lr_find=found)
                _save_checkpoint(Path(task.checkpoint), state)
    finally:
        bar.close()
    if _start_wins(st):
        model.load_state_dict(copy.deepcopy(st.start_state))
        st.best_epoch = 0
    elif st.best is not None:
        model.load_state_dict(copy.deepcopy(st.best))
    for p in task.body_params:
        p.requires_grad_(True)
    model.eval()
    return Fitted(
        best_epoch=st.best_epoch,
        epochs=st.epoch,
        history=st.history,
        seconds=st.seconds,
        device=str(dev),
        precision=prec,
        lr=lr,
        tail_lr=tail_lr,
        lr_find=found,
        resumed_from=resumed_from,
        start=st.start,
    )


def _snapshot(
    st: _State, model: nn.Module, optim: Any, gen: torch.Generator, dev: torch.device
) -> dict[str, Any]:
    """The loop's state after an epoch, with every random state a resumed run needs."""
    state = {k: getattr(st, k) for k in _State.__dataclass_fields__}
    state.update(
        model=model.state_dict(),
        optim=optim.state_dict(),
        gen=gen.get_state(),
        rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
    )
    return state


def _restore(
    saved: dict[str, Any], model: nn.Module, optim: Any, gen: torch.Generator, dev: torch.device
) -> _State:
    """Put a checkpoint's weights, optimizer and random states back; its loop state."""
    model.load_state_dict(saved["model"])
    optim.load_state_dict(saved["optim"])
    gen.set_state(saved["gen"])
    torch.set_rng_state(saved["rng"])
    if dev.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], dev)
    st = _State(**{k: saved[k] for k in _State.__dataclass_fields__ if k in saved})
    st.best_key = None if st.best_key is None else tuple(st.best_key)
    return st


def _epoch(
    model: nn.Module,
    data: Data,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    opts: FinetuneOptions,
    task: Task,
    optim: Any,
    gen: torch.Generator,
    st: _State,
    where: tuple[torch.device, Any],
) -> None:
    """One epoch (training, then validation), recorded in ``st``."""
    dev, amp = where
    t0 = time.perf_counter()
    st.epoch += 1
    warm = min(opts.warmup_epochs, opts.epochs - 1) if task.body_params else 0
    frozen = st.epoch <= warm
    for p in task.body_params:
        p.requires_grad_(not frozen)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n = len(train_idx)
    steps = max(1, math.ceil(n / opts.batch_size))
    decay_steps = max(1, (opts.epochs - warm) * steps)
    model.train()
    perm = torch.as_tensor(train_idx)[torch.randperm(n, generator=gen)]
    total, count = 0.0, 0
    for s in range(0, n, opts.batch_size):
        b = perm[s : s + opts.batch_size]
        if len(b) < 2:  # BatchNorm cannot train on one item
            continue
        xb, mb = data.batch(b)
        x = task.to_input(xb.to(dev, non_blocking=True))
        m = None if mb is None else mb.to(dev)
        if task.augment is not None:
            x, m = task.augment(x, m, gen)
        factor = 1.0
        if not frozen:
            factor = lr_factor((st.epoch - 1 - warm) * steps + s // opts.batch_size, decay_steps)
        for g in optim.param_groups:
            g["lr"] = g["base_lr"] * factor
        with _autocast(dev, amp):
            loss = loss_fn(model(x, m).float(), y_t[b].to(dev))
        optim.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
        else:
            loss.backward()
            optim.step()
        total += float(loss.detach()) * len(b)
        count += len(b)
    _validate(model, data, y_t, val_idx, task, st, dev, amp, total / max(1, count), frozen, t0)
    if not frozen and st.best_epoch != st.epoch:
        st.since_best += 1


def _score_start(
    model: nn.Module,
    data: Data,
    y: np.ndarray,
    val_idx: np.ndarray,
    task: Task,
    st: _State,
    dev: torch.device,
    amp: Any,
) -> None:
    """Score the untrained start (the pretrained blocks and the head's start) on the validation
    rows: "epoch 0", a candidate for the best epoch at the end, so training never ends below
    its start on the validation items (with ``head_init="probe"``: below the linear probe).
    Early stopping counts from the best trained epoch only: fine-tuning often dips below its
    start for a few epochs before it climbs past it."""
    logits = predict_logits(model, data, val_idx, task.to_input, dev=dev, amp=amp)
    yv = torch.as_tensor(np.asarray(y), dtype=torch.long)[torch.as_tensor(val_idx)]
    loss = float(nn.functional.cross_entropy(logits, yv))
    acc = float((logits.argmax(1) == yv).float().mean())
    st.start = {"val_loss": loss, "val_accuracy": acc}
    if task.score is not None:
        st.start["val_score"] = float(task.score(model))
    st.start_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _start_wins(st: _State) -> bool:
    """Whether the untrained start scored strictly better on the validation rows than the best
    trained epoch (ties go to training: the probe's penalty was picked on the same items)."""
    if st.start is None or st.start_state is None:
        return False
    key = _key(st.start)
    return st.best_key is None or key > tuple(st.best_key)


def _key(row: dict[str, Any]) -> tuple[float, ...]:
    """How an epoch (or the start) ranks: its ``val_score`` when the task has one, then the
    own head's validation accuracy, then its validation loss (lower is better)."""
    loss = row["val_loss"]
    key = (row["val_accuracy"], -loss if math.isfinite(loss) else -math.inf)
    return (row["val_score"], *key) if "val_score" in row else key


def _validate(
    model: nn.Module,
    data: Data,
    y_t: torch.Tensor,
    val_idx: np.ndarray,
    task: Task,
    st: _State,
    dev: torch.device,
    amp: Any,
    train_loss: float,
    frozen: bool,
    t0: float,
) -> None:
    """Score the epoch on the validation rows; keep the best weights (see :func:`_key`)."""
    logits = predict_logits(model, data, val_idx, task.to_input, dev=dev, amp=amp)
    yv = y_t[torch.as_tensor(val_idx)]
    val_loss = float(nn.functional.cross_entropy(logits, yv)) if len(val_idx) else float("nan")
    val_acc = float((logits.argmax(1) == yv).float().mean()) if len(val_idx) else 0.0
    seconds = time.perf_counter() - t0
    row = {
        "epoch": st.epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "seconds": seconds,
        "tail_frozen": frozen,
    }
    if task.score is not None and len(val_idx):
        row["val_score"] = float(task.score(model))
        row["seconds"] = seconds = time.perf_counter() - t0
    st.seconds += seconds
    st.history.append(row)
    key = _key(row)
    if st.best_key is None or key > st.best_key:
        st.best_key, st.best_epoch, st.since_best = key, st.epoch, 0
        st.best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    logger.info(
        "%s epoch %d: loss %.4f, val loss %.4f, val accuracy %.4f (%.1f s)%s",
        task.desc,
        st.epoch,
        train_loss,
        val_loss,
        val_acc,
        seconds,
        " [tail frozen]" if frozen else "",
    )
