"""Cached activations in a feature store (the ``activations`` named output).

Imports h5py inside functions only (through :mod:`featx.store`).
"""

from __future__ import annotations

import os
from typing import Any

from featx.errors import FeatxError
from featx.finetuning.data import ActivationSet


def extract_hint(info: dict[str, Any]) -> str:
    """The ``featx extract`` command that adds cached activations to the store ``info`` is of."""
    src = (info.get("source") or {}).get("uri") or "SRC"
    bb = info.get("backbone") or "BACKBONE"
    return f"featx extract {src} -b {bb} --cache-activations auto"


def read_activations(path: str | os.PathLike) -> ActivationSet:
    """The cached activations of a store as an :class:`ActivationSet`.

    Raises
    ------
    FeatxError
        The store has no cached activations: the message names the extract command that adds
        them.
    """
    from featx.store import store_info

    info = store_info(path)
    raise FeatxError(
        f"store {path} has no cached activations; add them with `{extract_hint(info)}`, "
        "then run featx finetune on that store"
    )
