"""The learning-rate range test (Smith 2017; fastai's ``lr_find``) behind ``--lr auto`` and
``--tail-lr auto``.

A range test trains on seeded minibatches of the training items while the learning rate grows
exponentially from ``START`` to ``END``; the loss is smoothed (exponential moving average,
bias-corrected) and the sweep stops once it exceeds ``DIVERGE`` times its minimum. The rate
picked is the *min/10* rule: a tenth of the rate at the smoothed loss's minimum (the minimum
itself already trains too fast to stay stable). The *steepest descent* rate is reported next
to it.

Fine-tuning runs two tests, because the new head and the pretrained blocks want rates that
differ by orders of magnitude (a linear head on MiniLM's L2-normalised embedding learns well
at ~1e-1, its last transformer layer at ~1e-4), so no fixed ratio between them fits every
backbone:

1. the head's rate: a fresh linear head on the pretrained embedding of the training items
   (computed once; the test costs milliseconds); a head that starts from the linear probe (the
   default) trains at a tenth of it (``PROBE_SHARE``);
2. the blocks' rate: the blocks alone, the head fixed where it will start (the linear probe),
   with dropout and augmentation as in training; capped at a tenth of the head's rate
   (``BLOCKS_CAP``), the discriminative rule. The cap matters for blocks with batch norm
   (EfficientNet's last stage): their loss barely rises at any rate, since the norm undoes the
   scale of a step, so the test's minimum sits at the end of the range and says little.

Model weights and the global random state are put back after a test, so the run that follows
is the one that the rates, given explicitly, would give. The rules were chosen by measurement
on the two sets of ``benchmarks/bench_finetune.py`` (BENCHMARKS.md, #20).

Imports torch at module level: import it lazily.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: The sweep's range of learning rates and its most steps (minibatches). AdamW's step is
#: about the rate itself per weight, so a rate above 1 is never one to train at.
START, END, STEPS = 1e-7, 1.0, 100
#: Smoothing of the loss (as fastai) and the divergence threshold (x the minimum).
BETA, DIVERGE = 0.98, 4.0
#: The rate picked is the minimum's rate divided by this.
MIN_DIVISOR = 10.0
#: The blocks' rate is at most this share of the head's (the range test's rate).
BLOCKS_CAP = 0.1
#: A head that starts from the linear probe (``head_init="probe"``) trains at this share of
#: the range test's rate: the test finds the rate that trains a head from zero; a head already
#: at the probe's optimum only has to follow the tuned blocks (LP-FT's small second-stage rate).
#: At the full rate the MiniLM tail's validation accuracy jumped by up to 4 points between
#: epochs; test accuracy moved within noise on both benchmark sets (BENCHMARKS.md, #20).
PROBE_SHARE = 0.1


def range_test(step: Callable[[float], float], steps: int = STEPS) -> dict[str, Any]:
    """Call ``step(lr)`` (one training step at ``lr``, returning its loss) for exponentially
    growing rates; returns :func:`suggest`'s rates plus ``lrs``, ``losses`` (smoothed),
    ``steps`` and ``seconds``."""
    t0 = time.perf_counter()
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    for i in range(steps):
        lr = START * (END / START) ** (i / max(1, steps - 1))
        v = step(lr)
        if not math.isfinite(v):
            break
        avg = BETA * avg + (1 - BETA) * v
        smooth = avg / (1 - BETA ** (i + 1))
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if i > 10 and smooth > DIVERGE * best:
            break
    out: dict[str, Any] = dict(suggest(lrs, losses))
    out.update(steps=len(lrs), seconds=time.perf_counter() - t0, lrs=lrs, losses=losses)
    return out


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """The rates a range test suggests: ``lr_min`` (a tenth of the rate at the lowest smoothed
    loss), ``lr_steep`` (the steepest descent before it) and ``lr`` (the one picked:
    ``lr_min``).

    >>> lrs = [10 ** (-6 + i / 10) for i in range(61)]
    >>> losses = [2.0 - (i / 40) ** 2 if i <= 40 else 1.0 + (i - 40) for i in range(61)]
    >>> r = suggest(lrs, losses)
    >>> round(math.log10(r["lr_min"]), 1), round(math.log10(r["lr_steep"]), 1)
    (-3.0, -2.1)
    """
    if len(lrs) < 3:
        return {"lr": START, "lr_min": START, "lr_steep": START}
    i_min = int(np.argmin(losses))
    lr_min = lrs[i_min] / MIN_DIVISOR
    slope = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
    i_steep = int(np.argmin(slope[: max(1, i_min)]))
    return {"lr": lr_min, "lr_min": lr_min, "lr_steep": lrs[i_steep]}


def _batches(train_idx: np.ndarray, batch_size: int, gen: torch.Generator) -> Any:
    """Endless seeded minibatches of ``train_idx`` (reshuffled every pass)."""
    while True:
        perm = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        for s in range(0, len(perm) - 1, batch_size):
            if len(perm[s : s + batch_size]) >= 2:
                yield perm[s : s + batch_size]


def head_lr(
    emb: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    batch_size: int,
    weight_decay: float,
    label_smoothing: float,
    seed: int,
) -> dict[str, Any]:
    """Range test of a fresh linear head (zero start) on embeddings ``emb`` with labels ``y``
    (the training items only)."""
    gen = torch.Generator().manual_seed(int(seed) + 1)
    lin = nn.Linear(emb.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    optim = torch.optim.AdamW(lin.parameters(), lr=START, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    batches = _batches(np.arange(len(y)), batch_size, gen)

    def step(lr: float) -> float:
        b = next(batches)
        for g in optim.param_groups:
            g["lr"] = lr
        with torch.enable_grad():
            loss = loss_fn(lin(emb[b].float()), y[b])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        return float(loss.detach())

    return range_test(step)


def blocks_lr(
    model: nn.Module,
    data: Any,
    y: np.ndarray,
    train_idx: np.ndarray,
    task: Any,
    *,
    batch_size: int,
    weight_decay: float,
    label_smoothing: float,
    dev: torch.device,
    amp: Any = None,
) -> dict[str, Any]:
    """Range test of the pretrained blocks (``task.body_params``) alone, the head fixed, in
    training mode with ``task.augment``; ``model`` and the random state are restored."""
    from featx.finetuning.loop import _autocast

    saved = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    gen = torch.Generator().manual_seed(int(task.seed) + 2)
    torch.manual_seed(int(task.seed) + 2)
    head_ids = {id(p) for p in task.head_params}
    grads = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in head_ids and p.requires_grad)
    for p in task.body_params:
        p.requires_grad_(True)
    optim = torch.optim.AdamW(task.body_params, lr=START, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    batches = _batches(train_idx, batch_size, gen)
    model.train()

    def step(lr: float) -> float:
        b = next(batches)
        for g in optim.param_groups:
            g["lr"] = lr
        xb, mb = data.batch(b)
        x = task.to_input(xb.to(dev))
        m = None if mb is None else mb.to(dev)
        if task.augment is not None:
            x, m = task.augment(x, m, gen)
        with _autocast(dev, amp):
            loss = loss_fn(model(x, m).float(), y_t[b].to(dev))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return float(loss.detach())

    try:
        return range_test(step)
    finally:
        model.load_state_dict(saved)
        torch.set_rng_state(rng)
        for p in model.parameters():
            p.requires_grad_(grads[id(p)])
            p.grad = None
