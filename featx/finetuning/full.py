"""The reference: full fine-tuning, the whole network trainable, as the tutorials show it.

Every item is decoded once (images resized and centre-cropped to the backbone's size, kept as
uint8 in memory; texts tokenized), then the whole network and a new head train with the loop of
:mod:`featx.finetuning.loop`: the head alone for ``warmup_epochs`` (the classic "train the head
first, then unfreeze"), then everything, the pretrained weights at ``tail_lr``; images are
augmented with a random resized crop and a flip, texts with token dropout. On the same split as
the heads and the tail fine-tunes, so all of them compare in one table.

Meant for small sets on a CPU and for GPUs (``benchmarks/gpu_suite.sh``): everything is held in
memory (n x 3 x S x S bytes for images).

Imports torch inside functions only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.finetuning.api import (
    FinetuneReport,
    _conclude,
    _fit,
    _head,
    _seed_all,
    _split_opts,
    _splits,
    _Trained,
    checkpoint_path,
)
from featx.finetuning.data import check_enough
from featx.options import BackboneSpec, EvalProtocol, FinetuneOptions

logger = logging.getLogger(__name__)


def full_network(cut_model: Any, head: Any) -> Any:
    """The whole network as one module ``net(x, mask) -> logits``: stem, every block, the
    backbone's pooling and ``head`` (``cut_model`` must be cut at the first block)."""
    from torch import nn

    class FullNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = cut_model.prefix
            self.tail = cut_model.tail(head)

        def embed(self, x: Any, mask: Any = None) -> Any:
            if self.tail.kind == "text":
                return self.tail.embed(self.stem(x, mask), mask)
            return self.tail.embed(self.stem(x))

        def forward(self, x: Any, mask: Any = None) -> Any:
            return self.tail.head(self.embed(x, mask))

    return FullNet()


def finetune_full(
    source: str | os.PathLike | Any,
    backbone: str | BackboneSpec | None = None,
    *,
    options: FinetuneOptions | None = None,
    protocol: EvalProtocol | None = None,
    heads: Sequence[Any] = (),
    bundle: str | os.PathLike | None = None,
    text: Any = None,
    **overrides: Any,
) -> FinetuneReport:
    """Fine-tune the whole backbone and a new head on ``source`` (the reference recipe).

    Parameters
    ----------
    source : str, path or Source
        A folder, CSV, ``sklearn:``/``torchvision:`` dataset or text table, as ``featx extract``
        takes it.
    backbone : str or BackboneSpec, optional
        Default: the default image or text backbone.
    options, protocol, heads, bundle, **overrides
        As for :func:`featx.finetuning.finetune`; ``options.tail`` is ignored (all blocks train).
    text : TextFormat, optional
        Columns of a text table.

    Returns
    -------
    FinetuneReport
        ``result.label`` is ``finetune:full``.
    """
    from featx.backbones import load_backbone
    from featx.finetuning.cuts import cut_backbone, cut_names
    from featx.finetuning.loop import (
        Task,
        device_and_precision,
    )

    opts, proto = _split_opts(options, protocol, overrides)
    src, spec = _open(source, backbone, text)
    check_enough(np.array([it.label for it in src.items]), src.classes)
    bb = load_backbone(spec)
    names = cut_names(bb)
    cm = cut_backbone(bb, names[0])
    is_text = cm.kind == "text"
    data, fs = _decoded(src, bb, cm)
    name = str(getattr(src, "name", "source"))
    split, val = _splits(fs, proto, opts)
    features = None
    if heads:  # the frozen backbone's embedding, before training changes it
        features = _pretrained_features(bb, data, is_text, fs)
    _seed_all(proto.seed)
    head = _head(cm.dim, len(src.classes), opts.dropout, proto.seed)
    net = full_network(cm, head)
    net.requires_grad_(True)
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in net.parameters() if id(p) not in head_ids]
    dev, _prec, amp = device_and_precision(opts)
    to_input, augment = _full_io(bb, is_text)
    task = Task(
        head_params=list(head.parameters()),
        body_params=body,
        seed=proto.seed,
        to_input=to_input,
        augment=augment if opts.augment else None,
        desc="finetune:full",
        checkpoint=checkpoint_path(bundle),
    )
    fitted, init = _fit(net, data, fs.y, split.train, val, opts, task, (dev, amp))
    trained = _Trained(net, net, data, fs, split, task, fitted, init, (dev, amp), name, val)
    info = {
        "mode": "full",
        "classes": src.classes,
        "backbone": bb.config(),
        "cut": cm.cut,
        "tail_blocks": cm.n_tail,
        "head": {"dim": cm.dim, "n_classes": len(src.classes), "dropout": opts.dropout},
    }
    return _conclude(
        trained,
        opts,
        proto,
        params={"tail": "all"},
        heads=heads,
        features=features,
        bundle=bundle,
        bundle_info=info,
    )


def _open(source: Any, backbone: str | BackboneSpec | None, text: Any) -> tuple[Any, Any]:
    """(the source opened, the backbone spec; default: the default image or text backbone)."""
    from featx.sources import open_source

    spec = backbone if isinstance(backbone, BackboneSpec) else BackboneSpec(name=backbone)
    if not isinstance(source, str | os.PathLike):
        return source, spec
    from featx.backbones._text import is_text_name
    from featx.options import DEFAULT_BACKBONE, DEFAULT_TEXT_BACKBONE

    modality = "text" if spec.name is not None and is_text_name(spec.name) else None
    src = open_source(source, text=text, modality=modality)
    if spec.name is None:
        is_text = type(src).__name__ == "TextSource"
        spec = BackboneSpec.resolve(
            spec, name=DEFAULT_TEXT_BACKBONE if is_text else DEFAULT_BACKBONE
        )
    return src, spec


def _full_io(bb: Any, is_text: bool) -> tuple[Any, Any]:
    """(to_input, augment) of full fine-tuning: token ids as they are with token dropout, or
    uint8 images normalized, with a random resized crop and a flip."""
    from featx.finetuning import augment as aug

    if is_text:

        def ids(x: Any) -> Any:
            return x

        def token_dropout(x: Any, m: Any, gen: Any) -> tuple[Any, Any]:
            return x, aug.token_dropout(m, gen)

        return ids, token_dropout
    pre = bb.preprocess

    def normalize(x: Any) -> Any:
        return pre.normalize(x)

    def crop_flip(x: Any, m: Any, gen: Any) -> tuple[Any, Any]:
        return aug.images(x, gen), m

    return normalize, crop_flip


def _decoded(src: Any, bb: Any, cm: Any) -> tuple[Any, Any]:
    """(Data of every readable item, a FeatureSet of their labels, splits and keys)."""
    from featx.features import FeatureSet
    from featx.finetuning.data import decode_images, read_texts, tokenize_texts
    from featx.finetuning.loop import Data

    if cm.kind == "text":
        texts, ok, failed = read_texts(src)
        ids, mask, _tt = tokenize_texts(bb, texts)
        data = Data(ids, mask)
    else:
        imgs, ok, failed = decode_images(src, bb.preprocess)
        data = Data(imgs, None)
    for key, why in failed[:5]:
        logger.warning("left out %s: %s", key, why)
    items = [src.items[i] for i in ok]
    y = np.array([it.label for it in items], dtype=np.int64)
    check_enough(y, src.classes)
    splits = np.array([it.split for it in items], dtype=object)
    fs = FeatureSet(
        X=np.zeros((len(items), 1), np.float32),
        y=y,
        classes=tuple(src.classes),
        split=splits if any(splits) else None,
        keys=np.array([it.key for it in items], dtype=object),
        meta={},
    )
    return data, fs


def _pretrained_features(bb: Any, data: Any, is_text: bool, fs: Any) -> Any:
    """The frozen backbone's embedding of every decoded item (for the heads' rows)."""
    import torch

    from featx.features import FeatureSet

    model = bb.model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, data.x.shape[0], 64):
            if is_text:
                ids, m = data.x[s : s + 64], data.mask[s : s + 64]
                out.append(model(ids, m).float().numpy())
            else:
                out.append(model(bb.preprocess.normalize(data.x[s : s + 64])).float().numpy())
    if not out:
        raise FeatxError("nothing to embed")
    return FeatureSet(
        X=np.concatenate(out), y=fs.y, classes=fs.classes, split=fs.split, keys=fs.keys, meta={}
    )
