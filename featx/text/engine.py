"""The text extraction loop: read, tokenize once, sort by length, batch, encode.

Texts are taken in chunks (a few thousand at a time, so a huge table streams). Each chunk is
tokenized in one call of the fast tokenizer with truncation to ``max_seq_length``, sorted by
token count (longest first, as sentence-transformers does) and cut into batches that are padded
only to their own longest text: on texts of mixed length this removes most padding. Batches run
under ``torch.inference_mode`` with the engine's device and precision options and come back as
:class:`featx.engines.Batch` results, in sorted order (the store sorts rows by key anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from featx.devices import amp_dtype_of, resolve_device, resolve_precision
from featx.engines import Batch, EngineSetup, empty_outputs, named_outputs, register_engine
from featx.errors import FeatxError
from featx.options import ExtractOptions
from featx.text.tokens import CHUNK, count_tokens, tokenize

__all__ = ["CHUNK", "TEXT_ENGINE", "count_tokens", "embed_texts", "iter_text_features", "tokenize"]

log = logging.getLogger(__name__)


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
    opts: ExtractOptions | None = None,
) -> Iterator[Batch]:
    """Embed the texts of ``items`` with a :class:`~featx.backbones._text.TextBackbone`.

    Parameters
    ----------
    backbone : TextBackbone
    items : sequence
        What ``reader`` turns into strings; a ``TextError`` from it becomes a failure.
    opts : ExtractOptions
        ``device`` and ``precision`` as for images (:func:`featx.devices.resolve_device`,
        :func:`~featx.devices.resolve_precision`), ``batch_size`` (texts per forward pass),
        ``compile`` (``torch.compile`` the encoder) and ``progress`` (a bar, texts/s, on stderr).

    Yields
    ------
    featx.engines.Batch
        ``indices`` are positions into ``items``; batches come longest texts first.
    """
    import torch

    opts = opts or ExtractOptions()
    dev = resolve_device(opts.device)
    prec = resolve_precision(opts.precision, dev)
    model = backbone.model.to(dev).eval()
    if opts.compile:
        model = torch.compile(model, dynamic=True)
    log.info("embedding %d texts on %s (%s, batch %d)", len(items), dev, prec, opts.batch_size)

    from featx.progress import progress_bar

    bar = progress_bar(
        total=len(items), desc="extract", unit="text", enabled=opts.progress, smoothing=0.1
    )
    encode = _Encoder(backbone, model, dev, amp_dtype_of(prec))
    n_failed = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(items), CHUNK):
                for batch in _chunk_batches(encode, items, reader, start, opts.batch_size):
                    bar.update(int(batch.indices.size) + len(batch.failures))
                    if batch.failures:
                        n_failed += len(batch.failures)
                        bar.set_postfix(failed=n_failed)
                    yield batch
    finally:
        bar.close()


class _Encoder:
    """Token id lists -> named outputs of the encoder on its device (padded per batch)."""

    def __init__(self, backbone: Any, model: Any, dev: Any, amp_dtype: Any) -> None:
        tok = backbone.tokenizer
        self.tokenizer = tok
        self.max_len = int(backbone.preprocess.max_seq_length)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.type_ids = "token_type_ids" in getattr(tok, "model_input_names", ())
        self.model, self.dev, self.amp_dtype = model, dev, amp_dtype
        self.dim = int(backbone.dim)

    def __call__(self, seqs: list[list[int]]) -> dict[str, np.ndarray]:
        import torch

        x, mask, tt = _pad(seqs, self.pad_id, self.type_ids)
        x, mask = x.to(self.dev), mask.to(self.dev)
        tt = tt.to(self.dev) if tt is not None else None
        amp = self.amp_dtype
        with torch.autocast(self.dev.type, dtype=amp, enabled=amp is not None):
            out = named_outputs(self.model(x, mask, tt))
        return {k: v.float().cpu().numpy() for k, v in out.items()}


def _chunk_batches(
    encode: _Encoder, items: Sequence[Any], reader: Callable, start: int, batch_size: int
) -> Iterator[Batch]:
    """The batches of one chunk of items: read, tokenize once, sort by length, encode."""
    from featx.text.sources import TextError

    texts: list[str] = []
    where: list[int] = []
    failures: list[tuple[int, str]] = []
    for i in range(start, min(len(items), start + CHUNK)):
        try:
            texts.append(reader(items[i]))
            where.append(i)
        except TextError as exc:
            failures.append((i, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bad row must not end a run
            failures.append((i, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    ids = tokenize(encode.tokenizer, texts, encode.max_len)
    order = sorted(range(len(ids)), key=lambda j: -len(ids[j]))
    if failures and not order:
        yield Batch(np.empty(0, dtype=np.int64), empty_outputs(encode.dim), failures)
        return
    for b in range(0, len(order), batch_size):
        sel = order[b : b + batch_size]
        yield Batch(
            np.asarray([where[j] for j in sel], dtype=np.int64),
            encode([ids[j] for j in sel]),
            failures if b == 0 else [],
        )


def embed_texts(
    backbone: Any,
    texts: Sequence[str],
    options: ExtractOptions | None = None,
    **overrides: Any,
) -> np.ndarray:
    """Embeddings of ``texts`` in their order, (n, D) float32 (no store; for notebooks).

    ``options`` (an :class:`~featx.options.ExtractOptions`, default its defaults) with keyword
    ``overrides`` of its fields (``device="cpu"``, ``batch_size=8``) says how to run; an option
    the text engine does not act on is an error. A text longer than the encoder's
    ``max_seq_length`` tokens is cut there, as in a store (which also counts the cut rows); an
    empty text raises :class:`~featx.errors.FeatxError`.

    Examples
    --------
    >>> from featx.backbones import load_backbone
    >>> bb = load_backbone("all-minilm-l6-v2")  # doctest: +SKIP
    >>> embed_texts(bb, ["a cat", "a dog"]).shape  # doctest: +SKIP
    (2, 384)
    """
    from featx.engines import check_options
    from featx.text.sources import check_text

    opts = ExtractOptions.resolve(options, **overrides)
    check_options(TEXT_ENGINE, opts)
    out = np.empty((len(texts), backbone.dim), dtype=np.float32)

    def read(i: int) -> str:
        return check_text(texts[i], f"text {i}: ")

    for batch in iter_text_features(backbone, list(range(len(texts))), read, opts):
        if batch.failures:
            raise FeatxError(batch.failures[0][1])
        out[batch.indices] = batch.features
    return out


class TextEngine:
    """``--engine local`` for text encoders: :func:`iter_text_features` in this process."""

    name = "local"
    modality = "text"
    honours = frozenset({"batch_size", "device", "precision", "compile"})

    def setup(self, opts: ExtractOptions) -> EngineSetup:
        dev = resolve_device(opts.device)
        return EngineSetup(
            device=str(dev), precision=resolve_precision(opts.precision, dev), decode="-"
        )

    def iter_batches(
        self, backbone: Any, items: Sequence[Any], reader: Callable, opts: ExtractOptions
    ) -> Iterator[Batch]:
        return iter_text_features(backbone, items, reader, opts)


TEXT_ENGINE = TextEngine()
register_engine(TEXT_ENGINE)
