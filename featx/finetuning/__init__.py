"""Fine-tuning at frozen-feature cost: train the last blocks on cached activations.

* :func:`finetune`: the tail (the last blocks after a cut, initialised from the pretrained
  weights) and a new head, trained on activations cached by ``featx extract
  --cache-activations CUT``;
* :func:`finetune_full`: the reference, the whole network trainable (``featx finetune --full``);
* :func:`load_finetuned`: a fine-tuned bundle, ready to predict (``featx predict``);
* :func:`cut_backbone` / :func:`cut_names`: where a backbone can be cut, per family
  (:func:`register_cutter` adds a family).

Importing this package is cheap: torch loads when a function runs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActivationSet",
    "FinetuneReport",
    "compute_activations",
    "cut_backbone",
    "cut_names",
    "finetune",
    "finetune_full",
    "is_finetune_bundle",
    "load_finetuned",
    "read_activations",
    "register_cutter",
]


def __getattr__(name: str) -> Any:
    if name in ("ActivationSet", "compute_activations"):
        from featx.finetuning import data

        return getattr(data, name)
    if name in ("finetune", "FinetuneReport", "backbone_from_config"):
        from featx.finetuning import api

        return getattr(api, name)
    if name == "finetune_full":
        from featx.finetuning.full import finetune_full

        return finetune_full
    if name == "load_finetuned":
        from featx.finetuning.predict import load_finetuned

        return load_finetuned
    if name == "is_finetune_bundle":
        from featx.finetuning.bundle import is_finetune_bundle

        return is_finetune_bundle
    if name == "read_activations":
        from featx.finetuning.store import read_activations

        return read_activations
    if name in ("cut_backbone", "cut_names", "register_cutter", "unregister_cutter"):
        from featx.finetuning import cuts

        return getattr(cuts, name)
    raise AttributeError(f"module 'featx.finetune' has no attribute {name!r}")
