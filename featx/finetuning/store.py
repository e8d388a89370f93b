"""Cached activations in a feature store (the ``activations`` named output).

``featx extract SRC --cache-activations CUT`` writes them (see :mod:`featx.finetuning.cache`);
:func:`read_activations` reads them back with the store's labels, splits and keys.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.finetuning.cache import ACTIVATION_MASK, ACTIVATIONS
from featx.finetuning.data import ActivationSet


def extract_hint(info: dict[str, Any]) -> str:
    """The ``featx extract`` command that adds cached activations to the store ``info`` is of."""
    src = (info.get("source") or {}).get("uri") or "SRC"
    parts = ["featx extract", str(src), "-b", str(info.get("backbone") or "BACKBONE")]
    weights = info.get("weights")
    if weights and weights != "DEFAULT":
        parts += ["--weights", str(weights)]
    text = info.get("text") or {}
    if info.get("modality") == "text" and text.get("max_seq_length"):
        parts += ["--max-seq-length", str(text["max_seq_length"])]
    crop = (info.get("preprocess") or {}).get("crop_size")
    if info.get("modality") != "text" and crop:
        parts += ["--image-size", str(crop)]
    return " ".join(parts + ["--cache-activations", "auto"])


def read_activations(path: str | os.PathLike) -> ActivationSet:
    """The cached activations of a store as an :class:`ActivationSet`.

    Raises
    ------
    FeatxError
        The store has no cached activations: the message names the extract command that adds
        them.
    """
    from featx.store import read_config, read_index, read_output, store_info

    info = store_info(path)
    cfg = read_config(path)
    spec = cfg.outputs.get(ACTIVATIONS)
    if spec is None:
        raise FeatxError(
            f"store {path} has no cached activations; add them with `{extract_hint(info)}` "
            "(a store of its own), then run featx finetune on that store"
        )
    idx = read_index(path)
    mask = read_output(path, ACTIVATION_MASK) if ACTIVATION_MASK in cfg.outputs else None
    split = idx.split if any(idx.split) else None
    return ActivationSet(
        acts=read_output(path, ACTIVATIONS),
        mask=mask,
        y=np.asarray(idx.labels, dtype=np.int64),
        classes=tuple(idx.classes),
        split=split,
        keys=idx.keys,
        backbone=dict(cfg.backbone),
        cut=str(spec["cut"]),
        name=str(info.get("backbone") or "store"),
    )
