"""The text extraction loop: read, tokenize once, sort by length, batch, encode.

Texts are taken in chunks (a few thousand at a time, so a huge table streams). Each chunk is
tokenized in one call of the fast tokenizer with truncation to ``max_seq_length``, sorted by
token count (longest first, as sentence-transformers does) and cut into batches that are padded
only to their own longest text: on texts of mixed length this removes most padding. Batches run
under ``torch.inference_mode`` with the engine's device and precision options and come back as
:class:`featx.engine.Batch` results, in sorted order (the store sorts rows by key anyway).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from featx.engine import Batch
from featx.errors import FeatxError

log = logging.getLogger(__name__)

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


def _pad(seqs: list[list[int]], pad_id: int, type_ids: bool):
    import torch

    n, width = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    tt = torch.zeros_like(ids) if type_ids else None
    return ids, mask, tt


def iter_text_features(
    backbone: Any,
    items: Sequence[Any],
    reader: Callable[[Any], str],
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    compile: bool = False,
    progress: bool = False,
    **_ignored: Any,
) -> Iterator[Batch]:
    """Embed the texts of ``items`` with a :class:`~featx.backbones._text.TextBackbone`.

    Parameters
    ----------
    backbone : TextBackbone
    items : sequence
        What ``reader`` turns into strings; a ``TextError`` from it becomes a failure.
    device, precision : str
        As for images (:func:`featx.engine.resolve_device`,
        :func:`~featx.engine.resolve_precision`).
    batch_size : int
        Texts per forward pass.
    compile : bool
        ``torch.compile`` the encoder.
    progress : bool
        A tqdm bar (texts/s) on stderr.

    Yields
    ------
    featx.engine.Batch
        ``indices`` are positions into ``items``; batches come longest texts first.
    """
    import torch

    from featx.engine import resolve_device, resolve_precision
    from featx.text.sources import TextError

    if batch_size < 1:
        raise FeatxError("--batch-size must be at least 1")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
    tok = backbone.tokenizer
    max_len = int(backbone.preprocess.max_seq_length)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    type_ids = "token_type_ids" in getattr(tok, "model_input_names", ())
    model = backbone.model.to(dev).eval()
    if compile:
        model = torch.compile(model, dynamic=True)
    log.info("embedding %d texts on %s (%s, batch %d)", len(items), dev, prec, batch_size)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(items),
        unit="text",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
        desc="extract",
    )
    n_failed = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(items), CHUNK):
                positions = range(start, min(len(items), start + CHUNK))
                texts: list[str] = []
                where: list[int] = []
                failures: list[tuple[int, str]] = []
                for i in positions:
                    try:
                        texts.append(reader(items[i]))
                        where.append(i)
                    except TextError as exc:
                        failures.append((i, str(exc)))
                    except Exception as exc:  # noqa: BLE001 - a bad row must not end a run
                        failures.append((i, f"{type(exc).__name__}: {exc}".splitlines()[0]))
                n_failed += len(failures)
                ids = tokenize(tok, texts, max_len)
                order = sorted(range(len(ids)), key=lambda j: -len(ids[j]))
                if failures and not order:
                    bar.update(len(failures))
                    bar.set_postfix(failed=n_failed)
                    yield Batch(np.empty(0, dtype=np.int64), np.empty((0, backbone.dim)), failures)
                    continue
                for b in range(0, len(order), batch_size):
                    sel = order[b : b + batch_size]
                    x, mask, tt = _pad([ids[j] for j in sel], pad_id, type_ids)
                    x, mask = x.to(dev), mask.to(dev)
                    tt = tt.to(dev) if tt is not None else None
                    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        out = model(x, mask, tt)
                    feats = out.float().cpu().numpy()
                    batch_failures = failures if b == 0 else []
                    bar.update(len(sel) + len(batch_failures))
                    if batch_failures:
                        bar.set_postfix(failed=n_failed)
                    yield Batch(
                        np.asarray([where[j] for j in sel], dtype=np.int64), feats, batch_failures
                    )
    finally:
        bar.close()


def embed_texts(
    backbone: Any,
    texts: Sequence[str],
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
) -> np.ndarray:
    """Embeddings of ``texts`` in their order, (n, D) float32 (no store; for notebooks).

    A text longer than the encoder's ``max_seq_length`` tokens is cut there, as in a store
    (which also counts the cut rows); an empty text raises :class:`~featx.errors.FeatxError`.

    Examples
    --------
    >>> from featx.backbones import load_backbone
    >>> bb = load_backbone("all-minilm-l6-v2")  # doctest: +SKIP
    >>> embed_texts(bb, ["a cat", "a dog"]).shape  # doctest: +SKIP
    (2, 384)
    """
    from featx.text.sources import check_text

    out = np.empty((len(texts), backbone.dim), dtype=np.float32)

    def read(i: int) -> str:
        return check_text(texts[i], f"text {i}: ")

    for batch in iter_text_features(
        backbone,
        list(range(len(texts))),
        read,
        device=device,
        precision=precision,
        batch_size=batch_size,
    ):
        if batch.failures:
            raise FeatxError(batch.failures[0][1])
        out[batch.indices] = batch.features
    return out
