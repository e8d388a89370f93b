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


def test_up_to_date_text_extract_loads_no_encoder(tmp_path):
    """A text no-op is answered from the memo: neither torch nor transformers is imported; a
    model folder changed in place is not mistaken for the remembered one."""
    import json
    import os

    from test_startup import _run
    from test_text import make_tiny_bert, write_table

    from featx.extraction import extract

    model = make_tiny_bert(tmp_path / "m", st={"pool": "cls", "normalize": True})
    table = write_table(
        tmp_path / "t.csv", [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(6)]
    )
    first = extract(str(table), f"hf:{model}")
    args = ["extract", str(table), "-b", f"hf:{model}", "-q", "--json"]
    out, mods = _run(args)
    res = json.loads(out)
    assert res["noop"] and res["store"] == first.store and res["modality"] == "text"
    assert not mods & {"torch", "transformers"}, sorted(mods & {"torch", "transformers"})
    weights = next(p for p in model.iterdir() if p.suffix in (".safetensors", ".bin"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    out, mods = _run(args)
    assert json.loads(out)["noop"] and "torch" in mods  # loaded and checked, same store
