"""featx.embed_texts truncates a text longer than the encoder's limit, as the store path does."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")


def test_embed_texts_truncates_like_the_store(tmp_path):
    from test_text import make_tiny_bert

    import featx
    from featx.backbones import load_backbone

    model = make_tiny_bert(
        tmp_path / "tiny-sbert", st={"pool": "cls", "normalize": True, "max_seq_length": 12}
    )
    bb = load_backbone(f"hf:{model}")
    words = "refund my money the parcel is late ship my order " * 20  # far over 12 tokens
    X = featx.embed_texts(bb, [words, "pay the bill"], device="cpu")
    assert X.shape == (2, bb.dim) and np.isfinite(X).all()
    # what is embedded is the text cut at the limit: adding words past it changes nothing
    Y = featx.embed_texts(bb, [words + " and more words at the end"], device="cpu")
    np.testing.assert_allclose(X[0], Y[0], rtol=1e-5, atol=1e-6)
