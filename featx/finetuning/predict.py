"""Using a fine-tuned bundle: the frozen prefix, then the tuned tail and head.

The prefix's output is rounded to float16 before the tail, as the cached activations the tail
was trained on were: so a prediction from files equals the training forward on the cache.

Imports torch inside functions only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import FeatxError


@dataclass(frozen=True, eq=False)
class Finetuned:
    """A loaded fine-tuned bundle, ready to predict.

    Attributes
    ----------
    classes : tuple of str
    backbone : Backbone or TextBackbone
        The rebuilt backbone (its preprocessing / tokenizer).
    net : torch.nn.Module
        ``net(x, mask) -> logits`` from normalized images (mode ``full``) or activations
        (mode ``tail``).
    prefix : torch.nn.Module or None
        The frozen prefix (mode ``tail``).
    mode : {"tail", "full"}
    kind : {"map", "tokens", "text"}
    meta : FinetuneBundleFile
    device : torch.device
        Where ``net`` and ``prefix`` run (inputs move there, logits come back to the CPU).
    """

    classes: tuple[str, ...]
    backbone: Any
    net: Any
    prefix: Any
    mode: str
    kind: str
    meta: Any
    device: Any = "cpu"
    #: a featx head (:class:`featx.bundle.Bundle`) on the tuned embedding that predicts instead
    #: of the linear head (``--tuned-heads``), or None
    tuned_head: Any = None

    @property
    def path(self) -> Path:
        return self.meta.path

    def _out(self, x: Any, mask: Any) -> Any:
        """The linear head's logits, or the tuned head's log-probabilities (the same after a
        softmax), on the CPU."""
        import torch

        if self.tuned_head is None:
            return self.net(x, mask).cpu()
        emb = self.net.embed(x, mask).float().cpu().numpy()
        proba = torch.as_tensor(self.tuned_head.predict_proba(emb), dtype=torch.float32)
        return torch.log(proba.clamp_min(1e-12))

    def logits_from_activations(self, acts: Any, mask: Any = None) -> Any:
        """Logits from cached activations (mode ``tail``), as training computed them."""
        import torch

        with torch.no_grad():
            a = torch.as_tensor(np.asarray(acts)).float().to(self.device)
            m = None if mask is None else torch.as_tensor(np.asarray(mask)).long().to(self.device)
            self.net.eval()
            return self._out(a, m)

    def _logits_images(self, batch_uint8: Any) -> Any:
        import torch

        x = self.backbone.preprocess.normalize(batch_uint8.to(self.device))
        with torch.no_grad():
            if self.mode == "full":
                return self._out(x, None)
            a = self.prefix(x).half().float()
            return self._out(a, None)

    def _logits_texts(self, texts: Sequence[str]) -> Any:
        import torch

        from featx.finetuning.data import tokenize_texts

        ids, mask, tt = (
            None if t is None else t.to(self.device) for t in tokenize_texts(self.backbone, texts)
        )
        with torch.no_grad():
            if self.mode == "full":
                return self._out(ids, mask)
            a = self.prefix(ids, mask, tt).half().float()
            return self._out(a, mask)

    def predict_proba(self, inputs: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (n, K) for image paths / PIL images, or texts (text backbones)."""
        import torch

        out = []
        for s in range(0, len(inputs), batch_size):
            chunk = list(inputs[s : s + batch_size])
            if self.kind == "text":
                logits = self._logits_texts([str(t) for t in chunk])
            else:
                from featx.images import load_rgb

                pre = self.backbone.preprocess
                imgs = [load_rgb(x) if isinstance(x, str | os.PathLike) else x for x in chunk]
                logits = self._logits_images(torch.stack([pre.to_uint8(im) for im in imgs]))
            out.append(torch.softmax(logits.float(), dim=1).numpy())
        if not out:
            return np.zeros((0, len(self.classes)))
        return np.concatenate(out)

    def predict(self, inputs: Sequence[Any]) -> list[str]:
        """Class names of ``inputs``."""
        return [self.classes[i] for i in self.predict_proba(inputs).argmax(1)]


def load_finetuned(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    weights_file: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> Finetuned:
    """Load a bundle written by :func:`featx.finetuning.finetune` (``--bundle``) or
    :func:`~featx.finetuning.finetune_full`; nothing in the file is executed (no pickle).

    ``device`` (auto, cpu, cuda[:N], mps) is where it predicts. Its backbone is rebuilt as
    every bundle's is (:meth:`featx.options.BackboneSpec.from_recorded`): a local model folder
    or weights file only when passed again as ``model_dir`` / ``weights_file``, and its weights
    must hash to the recorded ones."""
    from torch import nn

    from featx.engine import resolve_device
    from featx.finetuning.api import backbone_from_config
    from featx.finetuning.bundle import load_state, read_finetune_bundle
    from featx.finetuning.cuts import cut_backbone
    from featx.finetuning.full import full_network

    dev = resolve_device(device)
    meta = read_finetune_bundle(path)
    bb = backbone_from_config(
        meta.backbone, bundle=True, weights_file=weights_file, model_dir=model_dir
    )
    cm = cut_backbone(bb, meta.cut)
    if cm.cut != meta.cut:
        raise FeatxError(f"{meta.path}: {bb.name} has no cut {meta.cut}")
    h = meta.head
    head = nn.Sequential(
        nn.Dropout(float(h["dropout"])), nn.Linear(int(h["dim"]), int(h["n_classes"]))
    )
    if meta.mode == "full":
        net = full_network(cm, head)
        prefix = None
    else:
        net = cm.tail(head, train_blocks=meta.tail_blocks)
        prefix = cm.prefix
    load_state(net, meta.state, meta.path)
    net.to(dev).eval()
    if prefix is not None:
        prefix.to(dev).eval()
    if len(meta.classes) != int(h["n_classes"]):
        raise FeatxError(
            f"{meta.path} names {len(meta.classes)} classes for a {h['n_classes']}-way head"
        )
    return Finetuned(
        classes=meta.classes,
        backbone=bb,
        net=net,
        prefix=prefix,
        mode=meta.mode,
        kind=cm.kind,
        meta=meta,
        device=dev,
        tuned_head=_tuned_head(meta, int(h["dim"])),
    )


def _tuned_head(meta: Any, dim: int) -> Any:
    """The bundle's tuned head (a head bundle inside it), loaded by the safe head-bundle
    loader, or None."""
    if meta.tuned_head is None:
        return None
    import tempfile

    from featx.bundle import load_bundle

    with tempfile.TemporaryDirectory(prefix="featx-tuned-") as d:
        p = Path(d) / "tuned_head.npz"
        p.write_bytes(meta.tuned_head[1])
        head = load_bundle(p)
    if tuple(head.classes) != tuple(meta.classes) or head.dim != dim:
        raise FeatxError(f"{meta.path}: its tuned head does not fit the network; fine-tune again")
    return head


@dataclass(frozen=True, eq=False)
class PredictRows:
    """What a fine-tuned bundle predicts for a source, row by row (``featx predict`` writes it).

    ``keys``: the item keys (a file list: the paths); ``predicted``: class names; ``proba``:
    (n, K) probabilities in the order of ``classes``; ``true``: the known labels (or None);
    ``columns``: extra per-key columns (text tables: ``line``); ``n_failed``: items left out.
    """

    keys: np.ndarray
    predicted: np.ndarray
    proba: np.ndarray
    true: np.ndarray | None
    classes: tuple[str, ...]
    columns: dict[str, dict[str, Any]]
    n_failed: int
    modality: str


def _file_list(source: str) -> list[str] | None:
    """One image file, or the files of a glob pattern; None for a folder, manifest or dataset."""
    import glob

    from featx.images import is_image_name

    p = Path(source)
    if p.is_file():
        return [source] if is_image_name(p.name) else None
    if p.exists() or not any(c in source for c in "*?["):
        return None
    files = sorted(f for f in glob.glob(source, recursive=True) if os.path.isfile(f))
    if not files:
        raise FeatxError(f"no file matches {source!r}; check the pattern (quote it for the shell)")
    return files


def predict_rows(
    bundle: str | os.PathLike | Finetuned,
    source: str | os.PathLike,
    *,
    root: str | None = None,
    download: bool = False,
    text: Any = None,
    allow_outside_root: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    weights_file: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> PredictRows:
    """Predict every image or text of ``source`` with a fine-tuned bundle (no store: the items
    are decoded and run through the frozen prefix and the tuned tail directly, on ``device``;
    ``weights_file`` / ``model_dir`` as for :func:`load_finetuned`)."""
    from featx.finetuning.data import decode_images, read_texts
    from featx.sources import open_source

    ft = bundle
    if not isinstance(bundle, Finetuned):
        ft = load_finetuned(bundle, device=device, weights_file=weights_file, model_dir=model_dir)
    is_text = ft.kind == "text"
    files = None if is_text else _file_list(os.fspath(source))
    columns: dict[str, dict[str, Any]] = {}
    true = None
    if files is not None:
        from featx.images import ImageDecodeError, load_rgb

        keys, imgs, n_failed = [], [], 0
        for f in files:
            try:
                imgs.append(load_rgb(f))
                keys.append(f)
            except (ImageDecodeError, OSError) as e:
                n_failed += 1
                import logging

                logging.getLogger(__name__).warning("%s: %s", f, e)
        proba = ft.predict_proba(imgs, batch_size=batch_size)
    else:
        src = open_source(
            source,
            root=root,
            download=download,
            text=text,
            modality="text" if is_text else "image",
            allow_outside_root=allow_outside_root,
        )
        if is_text:
            texts, ok, failed = read_texts(src)
            proba = ft.predict_proba(texts, batch_size=batch_size)
        else:
            imgs_u8, ok, failed = decode_images(src, ft.backbone.preprocess)
            proba = _proba_uint8(ft, imgs_u8, batch_size)
        items = [src.items[i] for i in ok]
        keys = [it.key for it in items]
        n_failed = len(failed)
        if src.classes:
            true = np.array(
                [src.classes[it.label] if it.label >= 0 else "" for it in items], dtype=object
            )
        lines = {it.key: getattr(it, "line", 0) for it in items}
        if any(lines.values()):
            columns["line"] = lines
    pred = np.array([ft.classes[i] for i in proba.argmax(1)], dtype=object)
    return PredictRows(
        keys=np.asarray(keys, dtype=object),
        predicted=pred,
        proba=proba,
        true=true,
        classes=ft.classes,
        columns=columns,
        n_failed=n_failed,
        modality="text" if is_text else "image",
    )


def _proba_uint8(ft: Finetuned, imgs: Any, batch_size: int) -> np.ndarray:
    import torch

    out = []
    for s in range(0, imgs.shape[0], batch_size):
        logits = ft._logits_images(imgs[s : s + batch_size])
        out.append(torch.softmax(logits.float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(ft.classes)))
