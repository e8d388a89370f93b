"""The diagnose report folder: Markdown, a self-contained HTML page, CSV/JSON, the manifest, a map.

Files (each written atomically; a failed run leaves earlier files as they were):

==================  ===============================================================================
``report.md``       summary, notes, duplicate groups, label issues, outliers, class overlap
``report.html``     the same as one static page: thumbnails (images) or texts, the map, no
                    external files or scripts (``data:`` URIs only)
``flagged.csv``     one row per flagged item: key, problem, score, label, suggested_label, split,
                    action, detail
``diagnosis.json``  summary, options, duplicate groups, class overlap and every flag
``manifest.csv``    key,action,label,reason: what ``--manifest`` of fit / compare / extract acts on
``map.png``         2-D projection, classes coloured, flagged items marked
==================  ===============================================================================

This module (with :mod:`featx.report`) is where matplotlib is imported, inside functions, with
the Agg canvas only.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featx.csvsafe import safe_cell
from featx.files import atomic_path, atomic_write

# A Diagnosis / Flag of featx.diagnostics.core (not imported: core imports this module).
Diagnosis = Any
Flag = Any

log = logging.getLogger(__name__)

__all__ = ["project_2d", "write_report"]

_TITLES = {
    "leak": "Leakage: test items with a near-duplicate in training",
    "duplicate": "Duplicates within a split",
    "label": "Likely label errors",
    "outlier": "Outliers",
    "class_outlier": "Far from their own class",
}
_MARKERS = {  # problem -> (marker, colour, legend)
    "leak": ("X", "black", "leak / duplicate"),
    "duplicate": ("X", "black", "leak / duplicate"),
    "label": ("o", "red", "label issue"),
    "outlier": ("^", "darkorange", "outlier"),
    "class_outlier": ("v", "purple", "far from its class"),
}
_MAP_MAX = 5000
#: Items up to which ``map="auto"`` runs t-SNE without umap-learn (above: PCA, seconds).
_TSNE_MAX = 3000
_THUMB = 96
_TEXT_CHARS = 400
#: Class pairs listed under "Class overlap" (all are in diagnosis.json).
_OVERLAP_ROWS = 15


# ---------------------------------------------------------------------------------------------
# the 2-D map
# ---------------------------------------------------------------------------------------------


def project_2d(X: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """A 2-D embedding of ``X`` (rows already subsampled) and the method that made it.

    ``auto``: UMAP when umap-learn is installed, else t-SNE (up to 3000 rows), else PCA.
    """
    from sklearn.decomposition import PCA

    n, d = X.shape
    Xs = X.astype(np.float64)
    if n < 3:
        return np.zeros((n, 2)), "none"
    if d > 50 and n > 50:
        Xs = PCA(n_components=50, random_state=seed).fit_transform(Xs)
    if method in ("auto", "umap"):
        try:
            import umap  # noqa: F401

            have_umap = True
        except ImportError:
            have_umap = False
        if method == "umap" and not have_umap:
            from featx.errors import FeatxError

            raise FeatxError("map 'umap' needs umap-learn: pip install umap-learn (or --map tsne)")
        if have_umap:
            import umap

            emb = umap.UMAP(n_components=2, random_state=seed, metric="cosine").fit_transform(Xs)
            return np.asarray(emb), "UMAP"
        method = "tsne" if n <= _TSNE_MAX else "pca"
    if method == "tsne" and n > 5:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        emb = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            random_state=seed,
            metric="cosine",
            max_iter=500,
        ).fit_transform(Xs)
        return np.asarray(emb), "t-SNE"
    comps = min(2, Xs.shape[1])
    emb = PCA(n_components=comps, random_state=seed).fit_transform(Xs)
    if comps < 2:
        emb = np.hstack([emb, np.zeros((n, 2 - comps))])
    return emb, "PCA"


def _map_rows(d: Diagnosis) -> np.ndarray:
    """Rows drawn on the map: every flagged row plus a seeded sample, at most 5000 in all."""
    finite = np.flatnonzero(np.isfinite(d.fs.X).all(axis=1))
    if len(finite) <= _MAP_MAX:
        return finite
    flagged = np.intersect1d(np.unique([f.row for f in d.flags]).astype(np.int64), finite)
    flagged = flagged[:_MAP_MAX]
    rest = np.setdiff1d(finite, flagged)
    rng = np.random.default_rng(d.options.seed)
    sample = rng.choice(rest, size=min(_MAP_MAX - len(flagged), len(rest)), replace=False)
    return np.sort(np.concatenate([flagged, sample]))


def _plot_map(d: Diagnosis, path: Path) -> str:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = _map_rows(d)
    emb, method = project_2d(d.fs.X[rows], d.options.map, d.options.seed)
    fig = Figure(figsize=(8, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    y = d.fs.y[rows]
    K = len(d.fs.classes)
    cmap = colormaps["tab20" if K > 10 else "tab10"]
    colours = np.array([cmap(int(c) % cmap.N) if c >= 0 else (0.6, 0.6, 0.6, 1.0) for c in y])
    size = 8 if len(rows) > 2000 else 22
    ax.scatter(emb[:, 0], emb[:, 1], c=colours, s=size, alpha=0.6, linewidths=0)
    pos = {int(r): i for i, r in enumerate(rows)}
    handles = []
    seen = set()
    for problem, (marker, colour, legend) in _MARKERS.items():
        pts = [pos[f.row] for f in d.flags if f.problem == problem and f.row in pos]
        if not pts:
            continue
        ax.scatter(
            emb[pts, 0],
            emb[pts, 1],
            marker=marker,
            s=46,
            facecolors="none" if marker in "o^v" else colour,
            edgecolors=colour,
            linewidths=1.3,
        )
        if legend not in seen:
            seen.add(legend)
            handles.append(
                Line2D(
                    [],
                    [],
                    marker=marker,
                    color=colour,
                    linestyle="",
                    label=legend,
                    markerfacecolor="none" if marker in "o^v" else colour,
                )
            )
    if 0 < K <= 20:
        for c, name in enumerate(d.fs.classes):
            handles.append(
                Line2D(
                    [], [], marker="o", color=cmap(c % cmap.N), linestyle="", label=str(name)[:24]
                )
            )
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
    ax.set_title(f"{method} of {len(rows)} items (classes coloured, flagged items marked)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return method


# ---------------------------------------------------------------------------------------------
# what each item looks like: thumbnails or texts from the source
# ---------------------------------------------------------------------------------------------


def _item_viewer(d: Diagnosis, keys: Sequence[str]) -> tuple[Callable[[str], str], str]:
    """``(html_of_key, note)``: an ``<img>`` / text snippet per key, read from the store's source.

    The source is opened as the store recorded it; when it is gone or unreadable the report says
    so and shows keys only.
    """
    meta = d.fs.meta or {}
    texts = getattr(d.fs, "texts", None)
    if texts is not None and keys:  # a text store that keeps its texts: no need for the source
        by_key = dict(zip(np.asarray(d.fs.keys).astype(str).tolist(), texts, strict=True))

        def show_text(key: str) -> str:
            t = by_key.get(key)
            if t is None:
                return '<div class="missing">no text stored</div>'
            t = str(t) if len(str(t)) <= _TEXT_CHARS else str(t)[:_TEXT_CHARS] + " …"
            return f'<div class="text">{html.escape(t)}</div>'

        return show_text, ""
    src = meta.get("source") or {}
    uri = src.get("uri") if isinstance(src, dict) else None
    if not uri or not keys:
        return (lambda k: ""), ("" if not keys else "no source recorded: keys only")
    is_text = meta.get("modality") == "text" or str(src.get("kind", "")).startswith("text")
    try:
        from featx.sources import open_source

        text_fmt = None
        if is_text:
            from featx.options import TextFormat

            text_fmt = TextFormat(text_column=meta.get("text_column") or None)
        source = open_source(uri, text=text_fmt, modality="text" if is_text else "image")
    except Exception as exc:  # noqa: BLE001 - the report still works without the source
        return (lambda k: ""), f"source {uri} could not be opened ({exc}): keys only"
    wanted = set(keys)
    items = {it.key: it for it in source.items if it.key in wanted}
    read = source.reader()
    cache: dict[str, str] = {}

    def show(key: str) -> str:
        if key in cache:
            return cache[key]
        it = items.get(key)
        out = ""
        if it is not None:
            try:
                value = read(it)
                if is_text:
                    t = str(value)
                    t = t if len(t) <= _TEXT_CHARS else t[:_TEXT_CHARS] + " …"
                    out = f'<div class="text">{html.escape(t)}</div>'
                else:
                    img = value.copy()
                    img.thumbnail((_THUMB, _THUMB))
                    buf = io.BytesIO()
                    img.save(buf, format="PNG")
                    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
                    out = f'<img alt="{html.escape(key)}" src="data:image/png;base64,{b64}">'
            except Exception as exc:  # noqa: BLE001 - one unreadable item
                out = f'<div class="missing">unreadable: {html.escape(str(exc)[:80])}</div>'
        else:
            out = '<div class="missing">not in the source now</div>'
        cache[key] = out
        return out

    return show, ""


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def _md_escape(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _summary_rows(d: Diagnosis) -> list[tuple[str, str]]:
    s = d.summary()
    rows = [
        ("items", f"{s['items']} x {s['dim']} ({s['labeled']} labelled, {s['classes']} classes)"),
        (
            "duplicate groups",
            f"{s['duplicate_groups']} ({s['exact_duplicate_groups']} exact, "
            f"{s['duplicate_items']} items; threshold cosine >= "
            f"{d.options.duplicate_threshold:g})",
        ),
        ("leaked test items", f"{s['leaked_items']} in {s['leaked_groups']} groups"),
        (
            "label issues",
            "not checked (no labels)"
            if d.label_quality is None
            else f"{s['label_issues']} (confident learning on {d.folds}-fold out-of-fold "
            f"probabilities of {d.options.head})",
        ),
        (
            "outliers",
            f"{s['outliers']} (robust z >= {d.options.outlier_z:g}, k={d.options.neighbors})",
        ),
        ("far from their class", str(s["class_outliers"])),
        ("manifest", f"{s['to_exclude']} to exclude, {s['to_relabel']} to relabel"),
        ("neighbour search", d.index),
    ]
    return rows


def _flag_rows(d: Diagnosis, problem: str) -> list[Flag]:
    return [f for f in d.flags if f.problem == problem]


def _markdown(d: Diagnosis, method: str | None, viewer_note: str, manifest: str) -> str:
    lines = [f"# featx diagnose: {_md_escape(d.store or 'feature set')}", ""]
    lines += ["| check | result |", "| --- | --- |"]
    lines += [f"| {k} | {_md_escape(v)} |" for k, v in _summary_rows(d)]
    lines.append("")
    for n in d.notes + ([viewer_note] if viewer_note else []):
        lines.append(f"- note: {_md_escape(n)}")
    if d.notes or viewer_note:
        lines.append("")
    if method:
        lines += [f"![{method} map of the items](map.png)", ""]
    cap = d.options.max_items
    if d.duplicates:
        lines += [
            "## Duplicate groups",
            "",
            "| leak | keys | labels | splits | min cosine | keep |",
        ]
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for g in d.duplicates[:cap]:
            lines.append(
                f"| {'yes' if g.leak else ''} | {_md_escape(', '.join(g.keys))} | "
                f"{_md_escape(', '.join(g.labels))} | {_md_escape(', '.join(g.splits))} | "
                f"{g.min_similarity:.4f} | {_md_escape(g.keys[g.rows.index(g.keep)])} |"
            )
        if len(d.duplicates) > cap:
            lines.append(f"\n({len(d.duplicates) - cap} more groups in diagnosis.json)")
        lines.append("")
    for problem in ("label", "outlier", "class_outlier"):
        fl = _flag_rows(d, problem)
        if not fl:
            continue
        lines += [f"## {_TITLES[problem]} ({len(fl)})", ""]
        lines += ["| key | label | suggested | score | split | action | detail |"]
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for f in fl[:cap]:
            lines.append(
                f"| {_md_escape(f.key)} | {_md_escape(f.label)} | {_md_escape(f.suggested)} | "
                f"{f.score:.3f} | {f.split} | {f.action} | {_md_escape(f.detail)} |"
            )
        if len(fl) > cap:
            lines.append(f"\n({len(fl) - cap} more in flagged.csv)")
        lines.append("")
    if d.overlap:
        lines += [
            "## Class overlap",
            "",
            "| class a | class b | neighbour share | out-of-fold confused |",
        ]
        lines.append("| --- | --- | --- | --- |")
        for o in d.overlap[:_OVERLAP_ROWS]:
            lines.append(
                f"| {_md_escape(o['a'])} | {_md_escape(o['b'])} | "
                f"{100 * o['neighbour_share']:.1f}% | "
                f"{100 * o['confused']:.1f}% |"
            )
        lines.append("")
    lines += [
        "## Acting on it",
        "",
        "`manifest.csv` lists every item to exclude or relabel (edit it: delete a row to keep an "
        "item as it is). A cleaned run is one command:",
        "",
        "```",
        f"featx compare {d.store or 'STORE'} --manifest {manifest}",
        "```",
        "",
    ]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px;word-break:break-all}
h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px;width:220px;font-size:12px;
background:#fff}
.card img{display:block;margin:0 auto 6px auto;image-rendering:pixelated;width:96px;height:96px;
object-fit:contain;background:#eee}
.card .key{font-family:monospace;word-break:break-all;font-weight:600}
.card .text{max-height:9em;overflow:auto;background:#f8f8f8;padding:4px;margin:4px 0;
white-space:pre-wrap}
.group{border:1px solid #bbb;border-radius:6px;padding:8px;margin:8px 0}
.leak{border-color:#c00;background:#fff5f5}.badge{display:inline-block;padding:1px 6px;
border-radius:8px;background:#eee;margin-right:4px}.badge.bad{background:#c00;color:#fff}
.missing{color:#999;font-style:italic}.note{color:#735c0f;background:#fff8db;padding:6px 10px;
border-radius:4px;margin:4px 0}
img.map{max-width:100%;border:1px solid #ddd}
"""


def _card(show: Callable[[str], str], f: Flag) -> str:
    e = html.escape
    rows = [f'<div class="key">{e(f.key)}</div>', show(f.key)]
    if f.label:
        lab = f"label <b>{e(f.label)}</b>"
        if f.suggested:
            lab += f" → <b>{e(f.suggested)}</b>"
        rows.append(f"<div>{lab}</div>")
    rows.append(f"<div>score {f.score:.3f}{' · ' + e(f.split) if f.split else ''}</div>")
    rows.append(f'<div><span class="badge">{e(f.action)}</span>{e(f.detail)}</div>')
    return '<div class="card">' + "".join(rows) + "</div>"


def _html(
    d: Diagnosis,
    map_png: bytes | None,
    method: str | None,
    show: Callable[[str], str],
    viewer_note: str,
    manifest: str,
) -> str:
    e = html.escape
    cap = d.options.max_items
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>featx diagnose: {e(Path(d.store).name if d.store else 'feature set')}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>featx diagnose: {e(d.store or 'feature set')}</h1>",
        "<table>",
        *[f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary_rows(d)],
        "</table>",
        *[
            f'<div class="note">{e(n)}</div>'
            for n in d.notes + ([viewer_note] if viewer_note else [])
        ],
    ]
    if map_png is not None:
        b64 = base64.b64encode(map_png).decode("ascii")
        parts += [
            f"<h2>Map ({e(method or '')})</h2>",
            f'<img class="map" alt="{e(method or "")} map" src="data:image/png;base64,{b64}">',
        ]
    if d.duplicates:
        parts.append(f"<h2>Duplicate groups ({len(d.duplicates)})</h2>")
        by_row = {f.row: f for f in d.flags if f.problem in ("leak", "duplicate")}
        for g in d.duplicates[:cap]:
            cls = "group leak" if g.leak else "group"
            head = (
                ('<span class="badge bad">leak</span>' if g.leak else "")
                + ('<span class="badge bad">labels differ</span>' if g.conflicting_labels else "")
                + f"{len(g.rows)} items, min cosine {g.min_similarity:.4f}"
                + (" (exact copies)" if g.exact else "")
            )
            cards = []
            for r, k, lab, sp in zip(g.rows, g.keys, g.labels, g.splits, strict=True):
                f = by_row.get(r)
                action = "keep" if r == g.keep else (f.action if f else "exclude")
                cards.append(
                    '<div class="card">'
                    f'<div class="key">{e(k)}</div>{show(k)}'
                    f"<div>label <b>{e(lab or '-')}</b> · {e(sp or 'no split')}</div>"
                    f'<div><span class="badge">{e(action)}</span></div></div>'
                )
            parts.append(
                f'<div class="{cls}"><div>{head}</div>'
                f'<div class="cards">{"".join(cards)}</div></div>'
            )
    for problem in ("label", "outlier", "class_outlier"):
        fl = _flag_rows(d, problem)
        if not fl:
            continue
        parts.append(f"<h2>{e(_TITLES[problem])} ({len(fl)})</h2>")
        if len(fl) > cap:
            parts.append(f"<p>The {cap} worst; all {len(fl)} are in flagged.csv.</p>")
        parts.append('<div class="cards">' + "".join(_card(show, f) for f in fl[:cap]) + "</div>")
    if d.overlap:
        parts.append(
            "<h2>Class overlap</h2><table><tr><th>class a</th><th>class b</th>"
            "<th>neighbour share</th><th>out-of-fold confused</th></tr>"
        )
        for o in d.overlap[:_OVERLAP_ROWS]:
            parts.append(
                f"<tr><td>{e(o['a'])}</td><td>{e(o['b'])}</td>"
                f"<td>{100 * o['neighbour_share']:.1f}%</td>"
                f"<td>{100 * o['confused']:.1f}%</td></tr>"
            )
        parts.append("</table>")
    parts += [
        "<h2>Acting on it</h2>",
        "<p><code>manifest.csv</code> lists every item to exclude or relabel; edit it (delete a "
        "row to keep an item as it is), then run the cleaned comparison in one command:</p>",
        f"<pre>featx compare {e(d.store or 'STORE')} --manifest {e(manifest)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _csv_text(header: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([safe_cell(r.get(h, "")) for h in header])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the folder
# ---------------------------------------------------------------------------------------------


def write_report(d: Diagnosis, folder: str | os.PathLike) -> dict[str, str]:
    """Write the report folder; returns ``{name: path}`` of the files written."""
    from featx.diagnostics.manifest import COLUMNS

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    flag_header = [
        "key",
        "problem",
        "score",
        "label",
        "suggested_label",
        "split",
        "action",
        "detail",
    ]
    written["flagged.csv"] = str(
        atomic_write(out / "flagged.csv", _csv_text(flag_header, [f.to_dict() for f in d.flags]))
    )
    written["manifest.csv"] = str(
        atomic_write(out / "manifest.csv", _csv_text(COLUMNS, d.manifest_rows()))
    )
    written["diagnosis.json"] = str(
        atomic_write(out / "diagnosis.json", json.dumps(d.to_dict(), indent=2, default=str) + "\n")
    )
    method = None
    map_png = None
    if d.options.map != "none" and d.fs.n >= 3:
        method = _plot_map(d, out / "map.png")
        map_png = (out / "map.png").read_bytes()
        written["map.png"] = str(out / "map.png")
    cap = d.options.max_items
    shown: list[str] = []
    for g in d.duplicates[:cap]:
        shown += list(g.keys)
    for problem in ("label", "outlier", "class_outlier"):
        shown += [f.key for f in _flag_rows(d, problem)[:cap]]
    show, viewer_note = _item_viewer(d, sorted(set(shown)))
    manifest = written["manifest.csv"]
    written["report.md"] = str(
        atomic_write(out / "report.md", _markdown(d, method, viewer_note, manifest))
    )
    written["report.html"] = str(
        atomic_write(out / "report.html", _html(d, map_png, method, show, viewer_note, manifest))
    )
    return written
