"""The training loop shared by tail fine-tuning (on cached activations) and full fine-tuning.

A plain PyTorch loop, so its numbers are what such a loop gives:

* AdamW with two parameter groups: the new head at ``lr``, the pretrained blocks at ``tail_lr``
  (discriminative learning rates, as fastai does);
* ``warmup_epochs`` that train the head alone (the pretrained blocks frozen), then every trainable
  block, with a cosine decay of both rates to 5 % over the remaining epochs;
* cross-entropy, mixed precision where the device has it (bf16 autocast on CUDA; fp16 with a
  gradient scaler when asked);
* early stopping on the validation items: the best epoch (validation accuracy, then loss) is kept
  and restored at the end; ``patience`` epochs without improvement stop the run;
* a progress bar (stderr) with epoch, training loss and validation accuracy;
* everything seeded: the initial head, the shuffles and the augmentations come from ``seed``, so a
  rerun, also after a killed run, gives the same weights.

Imports torch at module level: import it lazily.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from featx.options import FinetuneOptions

logger = logging.getLogger(__name__)

#: Cosine decay floor, as a share of the starting learning rates.
LR_FLOOR = 0.05


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

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, self.epochs)


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
) -> torch.Tensor:
    """Logits (float32, CPU) of the rows ``idx`` in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            b = torch.as_tensor(idx[s : s + batch_size])
            xb, mb = data.batch(b)
            x = to_input(xb.to(dev))
            m = None if mb is None else mb.to(dev)
            with _autocast(dev, amp):
                out.append(model(x, m).float().cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def train(
    model: nn.Module,
    data: Data,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    opts: FinetuneOptions,
    *,
    head_params: list[nn.Parameter],
    body_params: list[nn.Parameter],
    seed: int,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    augment: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    desc: str = "finetune",
) -> Fitted:
    """Train ``model`` (``model(x, mask) -> logits``) in place; it ends with the best epoch's
    weights, in eval mode.

    Parameters
    ----------
    head_params, body_params : list of Parameter
        The new head (trained from the first epoch at ``opts.lr``) and the pretrained blocks
        (frozen for ``opts.warmup_epochs``, then trained at ``opts.tail_lr``).
    to_input : callable
        A batch of ``data.x`` already on the device -> the model's float input.
    augment : callable, optional
        ``augment(x, mask, generator) -> (x, mask)`` applied to training batches on the device.
    """
    from featx.progress import progress_bar

    dev, prec, amp = device_and_precision(opts)
    gen = torch.Generator().manual_seed(int(seed))
    model.to(dev)
    for p in head_params:
        p.requires_grad_(True)
    groups = [{"params": head_params, "lr": opts.lr, "base_lr": opts.lr}]
    if body_params:
        groups.append({"params": body_params, "lr": opts.tail_lr, "base_lr": opts.tail_lr})
    optim = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss()
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n = len(train_idx)
    steps = max(1, math.ceil(n / opts.batch_size))
    warm = min(opts.warmup_epochs, opts.epochs - 1) if body_params else 0
    decay_steps = max(1, (opts.epochs - warm) * steps)

    best: dict[str, Any] | None = None
    best_key: tuple[float, float] | None = None
    best_epoch, since_best = 0, 0
    history: list[dict[str, float]] = []
    bar = progress_bar(total=opts.epochs, desc=desc, unit="epoch", enabled=opts.progress)
    t_all = time.perf_counter()
    epoch = 0
    try:
        for epoch in range(1, opts.epochs + 1):
            t0 = time.perf_counter()
            frozen = epoch <= warm
            for p in body_params:
                p.requires_grad_(not frozen)
            model.train()
            perm = torch.as_tensor(train_idx)[torch.randperm(n, generator=gen)]
            total, count = 0.0, 0
            for s in range(0, n, opts.batch_size):
                b = perm[s : s + opts.batch_size]
                if len(b) < 2:  # BatchNorm cannot train on one item
                    continue
                xb, mb = data.batch(b)
                x = to_input(xb.to(dev, non_blocking=True))
                m = None if mb is None else mb.to(dev)
                if augment is not None:
                    x, m = augment(x, m, gen)
                step = (epoch - 1 - warm) * steps + s // opts.batch_size
                factor = 1.0
                if not frozen:
                    t = min(1.0, max(0.0, step / decay_steps))
                    factor = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * t))
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
            logits = predict_logits(model, data, val_idx, to_input, dev=dev, amp=amp)
            yv = y_t[torch.as_tensor(val_idx)]
            val_loss = float(loss_fn(logits, yv)) if len(val_idx) else float("nan")
            val_acc = float((logits.argmax(1) == yv).float().mean()) if len(val_idx) else 0.0
            row = {
                "epoch": epoch,
                "train_loss": total / max(1, count),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": time.perf_counter() - t0,
                "tail_frozen": frozen,
            }
            history.append(row)
            key = (val_acc, -val_loss if math.isfinite(val_loss) else -math.inf)
            if best_key is None or key > best_key:
                best_key, best_epoch, since_best = key, epoch, 0
                best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            elif not frozen:
                since_best += 1
            bar.set_postfix_str(
                f"loss {row['train_loss']:.4f} val_acc {val_acc:.4f} best {best_epoch}",
                refresh=False,
            )
            bar.update(1)
            logger.info(
                "%s epoch %d: loss %.4f, val loss %.4f, val accuracy %.4f (%.1f s)%s",
                desc,
                epoch,
                row["train_loss"],
                val_loss,
                val_acc,
                row["seconds"],
                " [tail frozen]" if frozen else "",
            )
            if since_best >= opts.patience:
                break
    finally:
        bar.close()
    seconds = time.perf_counter() - t_all
    if best is not None:
        model.load_state_dict(copy.deepcopy(best))
    for p in body_params:
        p.requires_grad_(True)
    model.eval()
    return Fitted(
        best_epoch=best_epoch,
        epochs=epoch,
        history=history,
        seconds=seconds,
        device=str(dev),
        precision=prec,
    )
