"""What fine-tuning trains on: cached activations at a cut, or decoded images, with their labels.

:class:`ActivationSet` is the in-memory form of a store's cached activations (numpy only). It
comes from a store extracted with ``--cache-activations``
(:func:`featx.finetuning.read_activations`) or is computed here directly from a source
(:func:`compute_activations`, what tests and small experiments use without a store).

Imports torch inside functions only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.errors import FeatxError

logger = logging.getLogger(__name__)

#: Fewest labelled items per class a fine-tune needs: training, validation and test each get
#: at least one, and training two.
MIN_PER_CLASS = 4


@dataclass(frozen=True, eq=False)
class ActivationSet:
    """Activations of one backbone at one cut, for every item of a source.

    Attributes
    ----------
    acts : ndarray (n, ...) float16
        CNN maps (n, C, H, W), ViT tokens (n, T, C) or text hidden states (n, T, C).
    mask : ndarray (n, T) uint8 or None
        Text: the attention mask (1 for real tokens).
    y, classes, split, keys
        As in :class:`featx.features.FeatureSet`.
    backbone : dict
        The backbone's configuration (``Backbone.config()``): what rebuilds the prefix and tail.
    cut : str
        The block whose input ``acts`` are.
    name : str
        What to call it in a leaderboard (the store's or source's name).
    """

    acts: np.ndarray
    mask: np.ndarray | None
    y: np.ndarray
    classes: tuple[str, ...]
    split: np.ndarray | None
    keys: np.ndarray
    backbone: dict[str, Any]
    cut: str
    name: str = "activations"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.acts.shape[0])

    def feature_set(self) -> Any:
        """A :class:`~featx.features.FeatureSet` with these labels, keys and splits (no
        features): what the protocol draws the same splits from as it does for the heads."""
        from featx.features import FeatureSet

        return FeatureSet(
            X=np.zeros((self.n, 1), dtype=np.float32),
            y=np.asarray(self.y, dtype=np.int64),
            classes=tuple(self.classes),
            split=self.split,
            keys=np.asarray(self.keys),
            meta={},
        )


def check_enough(y: np.ndarray, classes: Sequence[str], what: str = "fine-tuning") -> None:
    """FeatxError unless every labelled class has :data:`MIN_PER_CLASS` items (says how many)."""
    y = np.asarray(y)
    labeled = y[y >= 0]
    counts = np.bincount(labeled, minlength=len(classes)) if labeled.size else np.zeros(0, int)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise FeatxError(
            f"{what} needs labelled items of at least 2 classes, {MIN_PER_CLASS} or more each; "
            f"this source has {int(labeled.size)} labelled item(s) in {len(present)} class(es)"
        )
    short = [c for c in present if counts[c] < MIN_PER_CLASS]
    if short:
        c = min(short, key=lambda c: counts[c])
        raise FeatxError(
            f"{what} needs at least {MIN_PER_CLASS} labelled items per class (training, "
            f"validation and test each need some); class {classes[c]!r} has {int(counts[c])} "
            f"({len(short)} class(es) short, {sum(MIN_PER_CLASS - int(counts[k]) for k in short)} "
            "items missing in all): add items or drop those classes"
        )


# ---------------------------------------------------------------------------------------------
# decoding


def decode_images(source: Any, preprocess: Any) -> tuple[Any, np.ndarray, list[tuple[str, str]]]:
    """Every image of ``source`` resized and cropped: (uint8 tensor (n, 3, S, S), positions of
    the decoded items in ``source.items``, failures as (key, reason))."""
    import torch

    from featx.images import ImageDecodeError

    reader = source.reader()
    out, ok, failed = [], [], []
    for i, item in enumerate(source.items):
        if item.error:
            failed.append((item.key, item.error))
            continue
        try:
            out.append(preprocess.to_uint8(reader(item)))
            ok.append(i)
        except (ImageDecodeError, OSError, ValueError) as e:
            failed.append((item.key, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if not out:
        raise FeatxError(f"no image of {source.uri} could be decoded")
    return torch.stack(out), np.asarray(ok, dtype=np.int64), failed


def tokenize_texts(backbone: Any, texts: Sequence[str]) -> tuple[Any, Any, Any]:
    """Token ids, attention mask and token type ids (or None), padded to the longest text;
    tokenized exactly as the text engine does."""
    import torch

    from featx.text.engine import tokenize

    tok = backbone.tokenizer
    ids = tokenize(tok, list(texts), int(backbone.preprocess.max_seq_length))
    width = max((len(s) for s in ids), default=1)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    x = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, s in enumerate(ids):
        x[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    tt = torch.zeros_like(x) if "token_type_ids" in getattr(tok, "model_input_names", ()) else None
    return x, mask, tt


def read_texts(source: Any) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """The texts of a text source: (texts, positions in ``source.items``, failures)."""
    from featx.text.sources import TextError

    reader = source.reader()
    texts, ok, failed = [], [], []
    for i, item in enumerate(source.items):
        try:
            texts.append(reader(item))
            ok.append(i)
        except TextError as e:
            failed.append((item.key, str(e)))
    if not texts:
        raise FeatxError(f"no text of {source.uri} could be read")
    return texts, np.asarray(ok, dtype=np.int64), failed


def run_prefix(
    cut_model: Any,
    inputs: Any,
    *,
    preprocess: Any = None,
    batch_size: int = 64,
    device: Any = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The prefix over decoded images (uint8) or tokenized texts ``(ids, mask, type_ids)``:
    (activations float16, mask uint8 or None)."""
    import torch

    dev = device if device is not None else torch.device("cpu")
    prefix = cut_model.prefix.to(dev).eval()
    outs = []
    with torch.inference_mode():
        if cut_model.kind == "text":
            ids, mask, tt = inputs
            for s in range(0, ids.shape[0], batch_size):
                sl = slice(s, s + batch_size)
                a = prefix(
                    ids[sl].to(dev), mask[sl].to(dev), None if tt is None else tt[sl].to(dev)
                )
                outs.append(a.float().cpu().numpy().astype(np.float16))
            return np.concatenate(outs), mask.numpy().astype(np.uint8)
        for s in range(0, inputs.shape[0], batch_size):
            x = preprocess.normalize(inputs[s : s + batch_size].to(dev))
            outs.append(prefix(x).float().cpu().numpy().astype(np.float16))
    return np.concatenate(outs), None


def compute_activations(
    backbone: Any,
    source: Any,
    cut: str | int | None = "auto",
    *,
    batch_size: int = 64,
) -> ActivationSet:
    """The activations of every item of ``source`` at ``cut``, in memory (no store).

    ``source`` is what :func:`featx.sources.open_source` returns (images or texts). Items that
    do not decode are left out (logged).
    """
    from featx.finetuning.cuts import cut_backbone

    cm = cut_backbone(backbone, cut)
    if cm.kind == "text":
        texts, ok, failed = read_texts(source)
        acts, mask = run_prefix(cm, tokenize_texts(backbone, texts), batch_size=batch_size)
    else:
        imgs, ok, failed = decode_images(source, backbone.preprocess)
        acts, mask = run_prefix(cm, imgs, preprocess=backbone.preprocess, batch_size=batch_size)
    for key, why in failed[:5]:
        logger.warning("left out %s: %s", key, why)
    items = [source.items[i] for i in ok]
    split = np.array([it.split for it in items], dtype=object)
    return ActivationSet(
        acts=acts,
        mask=mask,
        y=np.array([it.label for it in items], dtype=np.int64),
        classes=tuple(source.classes),
        split=split if any(split) else None,
        keys=np.array([it.key for it in items], dtype=object),
        backbone=backbone.config(),
        cut=cm.cut,
        name=str(getattr(source, "name", "source")),
    )
