"""Tokenizing texts once: token ids with truncation, and untruncated counts (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Texts tokenized and length-sorted together; also bounds memory for huge tables.
CHUNK = 4096


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with special tokens, truncated to ``max_length``."""
    if not texts:
        return []
    enc = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return enc["input_ids"]


def count_tokens(tokenizer: Any, texts: Sequence[str | None], max_length: int) -> np.ndarray:
    """Untruncated token count (with special tokens) of each text; -1 where the text is None.

    Texts are first tokenized with truncation; only those that reach ``max_length`` are
    tokenized again in full, so counting costs little more than one tokenization pass.
    """
    out = np.full(len(texts), -1, dtype=np.int64)
    pos = [i for i, t in enumerate(texts) if t is not None]
    for a in range(0, len(pos), CHUNK):
        part = pos[a : a + CHUNK]
        ids = tokenize(tokenizer, [texts[i] for i in part], max_length)
        full = [i for i, x in zip(part, ids, strict=True) if len(x) >= max_length]
        for i, x in zip(part, ids, strict=True):
            out[i] = len(x)
        if full:
            enc = tokenizer(
                [texts[i] for i in full],
                add_special_tokens=True,
                truncation=False,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
            for i, x in zip(full, enc["input_ids"], strict=True):
                out[i] = len(x)
    return out
