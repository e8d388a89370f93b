"""Declarative experiments: ``featx run PIPELINE.toml`` = sources x backbones x heads.

Every (source, backbone) pair is extracted into its cached store (a no-op when the store is
up to date), then every head is evaluated on every backbone of a source with the same splits, and
the leaderboard, tables and plots are written to the report folder.

A pipeline file::

    name = "demo"
    report = "reports/demo"          # relative to the pipeline file's folder

    fuse = true                      # optional: also the backbones' stores joined by key
                                     # (or a list of label lists: [["lite0", "resnet18"]])
    sources = ["sklearn:digits"]     # or a table: {spec = "torchvision:CIFAR10", root = "data"}
                                     # text: {spec = "reviews.csv", text_column = "body", ...}:
                                     # the fields of featx.options.TextFormat

    [[backbones]]
    name = "efficientnet_lite0"      # also the other fields of featx.options.BackboneSpec

    [extract]                        # the fields of featx.options.ExtractOptions
    batch_size = 64

    [protocol]                       # the fields of featx.options.EvalProtocol
    test_size = 0.2
    seed = 0

    [[heads]]
    name = "logreg"
    [[heads]]
    name = "knn"
    params = { k = 10 }              # optional; also preprocess = "l2"

    [finetune]                       # optional: fine-tuned rows beside the heads (docs/finetune.md)
    tails = [1, 2]                   # finetune:tail=1 and :tail=2 on activations cached at -2
    full = false                     # also finetune:full, the whole network (slow)
    epochs = 10                      # and the other fields of featx.options.FinetuneOptions
    [diagnose]                       # optional: featx diagnose on every store, its report in
    duplicate_threshold = 0.95       # <report>/diagnose/<backbone>; the fields of
                                     # featx.options.DiagnoseOptions ({} for the defaults)
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from featx.errors import FeatxError
from featx.options import (
    BackboneSpec,
    DiagnoseOptions,
    EvalProtocol,
    ExtractOptions,
    FinetuneOptions,
    TextFormat,
)

log = logging.getLogger(__name__)

_TOP = {
    "name",
    "description",
    "report",
    "sources",
    "backbones",
    "heads",
    "extract",
    "protocol",
    "diagnose",
    "fuse",
    "finetune",
}
_TEXT_SOURCE = set(TextFormat.toml_keys())  # text_column, label_column, ... of a text table
_SOURCE = {"spec", "root", "download", "name"} | _TEXT_SOURCE
# The keys of [[backbones]], [extract] and [protocol] are the fields of the specs in
# featx.options: an option added there is accepted here.
_BACKBONE = {*BackboneSpec.toml_keys(), "label"}
_HEAD = {"name", "params", "preprocess"}
_EXTRACT = set(ExtractOptions.toml_keys())
_PROTOCOL = set(EvalProtocol.toml_keys())
#: [finetune]: the FinetuneOptions fields, the tails to train, the cache's cut, the reference.
_FINETUNE_STEP = {"tails", "cut", "full"}
_FINETUNE = set(FinetuneOptions.toml_keys()) | _FINETUNE_STEP
_DIAGNOSE = set(DiagnoseOptions.toml_keys())


@dataclass(frozen=True)
class Pipeline:
    """A parsed, validated pipeline file."""

    name: str
    path: Path
    report: Path
    sources: tuple[dict[str, Any], ...]
    backbones: tuple[dict[str, Any], ...]
    heads: tuple[dict[str, Any], ...]
    extract: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    diagnose: dict[str, Any] | None = None  # None: no [diagnose] table, no diagnose step
    fuse: tuple[tuple[str, ...], ...] = ()  # backbone labels whose stores are joined by key
    finetune: dict[str, Any] | None = None  # the [finetune] table, when the file has one


def _check_keys(where: str, d: Any, allowed: set[str], path: Path) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise FeatxError(f"pipeline {path}: {where} must be a table")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise FeatxError(
            f"pipeline {path}: unknown key {unknown[0]!r} in {where}; "
            f"valid keys: {', '.join(sorted(allowed))}"
        )
    return d


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and validate a pipeline TOML file (no extraction, no fitting)."""
    p = Path(path)
    if not p.is_file():
        raise FeatxError(f"pipeline file {p} does not exist")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeatxError(f"pipeline {p} is not valid TOML: {exc}") from None
    _check_keys("the top level", doc, _TOP, p)
    for key in ("sources", "backbones", "heads"):
        if not doc.get(key):
            raise FeatxError(f"pipeline {p}: needs at least one entry in '{key}'")
    sources = []
    for s in doc["sources"]:
        s = {"spec": s} if isinstance(s, str) else dict(_check_keys("[[sources]]", s, _SOURCE, p))
        if "spec" not in s:
            raise FeatxError(f"pipeline {p}: every source needs a 'spec'")
        spec = str(s["spec"])
        if ":" not in spec and not os.path.isabs(spec):
            spec = str((p.parent / spec).resolve())
        s["spec"] = spec
        sources.append(s)
    backbones = []
    for b in doc["backbones"]:
        b = (
            {"name": b}
            if isinstance(b, str)
            else dict(_check_keys("[[backbones]]", b, _BACKBONE, p))
        )
        if "name" not in b:
            raise FeatxError(f"pipeline {p}: every backbone needs a 'name'")
        backbones.append(b)
    heads = []
    for h in doc["heads"]:
        h = {"name": h} if isinstance(h, str) else dict(_check_keys("[[heads]]", h, _HEAD, p))
        if "name" not in h:
            raise FeatxError(f"pipeline {p}: every head needs a 'name'")
        heads.append(h)
    ext = dict(_check_keys("[extract]", doc.get("extract", {}), _EXTRACT, p))
    proto = dict(_check_keys("[protocol]", doc.get("protocol", {}), _PROTOCOL, p))
    tune = None
    if "finetune" in doc:
        tune = dict(_check_keys("[finetune]", doc["finetune"], _FINETUNE, p))
        tails = tune.get("tails", [1])
        if (
            not isinstance(tails, list)
            or not tails
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tails)
        ):
            raise FeatxError(f"pipeline {p}: [finetune] tails must be a list of integers >= 1")
        if not isinstance(tune.get("full", False), bool):
            raise FeatxError(f"pipeline {p}: [finetune] full must be true or false")
    diag = None
    if "diagnose" in doc:
        diag = dict(_check_keys("[diagnose]", doc["diagnose"], _DIAGNOSE, p))
    try:  # the same value checks as the CLI and the Python API
        ExtractOptions.from_mapping(ext)
        EvalProtocol.from_mapping(proto)
        if diag is not None:
            DiagnoseOptions.from_mapping(diag)
        if tune is not None:
            FinetuneOptions.from_mapping({k: v for k, v in tune.items() if k not in _FINETUNE_STEP})
    except FeatxError as exc:
        raise FeatxError(f"pipeline {p}: {exc}") from None
    fuse = _fuse_groups(doc.get("fuse", False), [_backbone_label(b) for b in backbones], p)
    report = Path(doc.get("report", f"reports/{p.stem}"))
    if not report.is_absolute():
        report = Path(os.path.normpath(p.parent / report))
    # Validate heads and parameters now, before any extraction.
    from featx.heads import make_head

    for h in heads:
        make_head(
            h["name"], h.get("params"), h.get("preprocess", proto.get("preprocess", "default"))
        )
    return Pipeline(
        name=str(doc.get("name", p.stem)),
        path=p,
        report=report,
        sources=tuple(sources),
        backbones=tuple(backbones),
        heads=tuple(heads),
        extract=ext,
        protocol=proto,
        diagnose=diag,
        fuse=fuse,
        finetune=tune,
    )


def _fuse_groups(value: Any, labels: list[str], path: Path) -> tuple[tuple[str, ...], ...]:
    """``fuse = true`` (every backbone) or a list of label lists -> the fusions to add."""
    if value is False or value is None:
        return ()
    if value is True:
        if len(labels) < 2:
            raise FeatxError(f"pipeline {path}: fuse needs at least two backbones")
        return (tuple(labels),)
    if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
        raise FeatxError(
            f"pipeline {path}: fuse must be true or a list of backbone label lists, "
            'e.g. fuse = [["efficientnet_lite0", "resnet18"]]'
        )
    out = []
    for g in value:
        missing = [x for x in g if x not in labels]
        if missing or len(g) < 2:
            raise FeatxError(
                f"pipeline {path}: fuse {g} must name two or more backbones of this pipeline "
                f"({', '.join(labels)})"
            )
        out.append(tuple(str(x) for x in g))
    return tuple(out)


@dataclass(frozen=True)
class PipelineResult:
    pipeline: Pipeline
    stores: dict[str, dict[str, str]]  # source -> backbone label -> store path
    leaderboards: dict[str, Any]  # source -> Leaderboard
    reports: dict[str, Path]  # source -> report folder
    diagnoses: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> label -> summary

    def to_dict(self) -> dict[str, Any]:
        import json

        return {
            "pipeline": self.pipeline.name,
            "stores": self.stores,
            "reports": {k: str(v) for k, v in self.reports.items()},
            "leaderboards": {k: json.loads(lb.to_json()) for k, lb in self.leaderboards.items()},
            **({"diagnose": self.diagnoses} if self.diagnoses else {}),
        }

    def to_markdown(self) -> str:
        parts = []
        for src, lb in self.leaderboards.items():
            parts += [f"## {src}", "", lb.to_markdown(), "", f"report: {self.reports[src]}", ""]
            for label, s in self.diagnoses.get(src, {}).items():
                parts += [
                    f"diagnose {label}: {s['leaked_items']} leaked test items, "
                    f"{s['duplicate_groups']} duplicate groups, {s['label_issues']} label "
                    f"issues, {s['outliers']} outliers ({s['report']}/report.html)",
                    "",
                ]
        return "\n".join(parts).rstrip() + "\n"

    def to_text(self) -> str:
        """Aligned plain-text leaderboards, one per source (what the terminal shows)."""
        parts = []
        for src, lb in self.leaderboards.items():
            parts += [f"{src}", "", lb.to_text(), f"report: {self.reports[src]}", ""]
        return "\n".join(parts).rstrip() + "\n"


def _backbone_label(b: dict[str, Any]) -> str:
    if b.get("label"):
        return str(b["label"])
    keys = ("weights", "layer", "pool", "image_size", "max_seq_length")
    extra = [str(b[k]) for k in keys if b.get(k)]
    if b.get("normalize") is not None:
        extra.append(f"normalize={b['normalize']}")
    return b["name"] + (f"[{','.join(extra)}]" if extra else "")


def run_pipeline(
    path: str | os.PathLike, *, progress: bool = False, report: str | os.PathLike | None = None
) -> PipelineResult:
    """Run a pipeline file end to end; see the module docstring for the format."""
    from featx.comparison import compare
    from featx.extraction import extract
    from featx.store import load_features

    pl = load_pipeline(path)
    opts = ExtractOptions(**pl.extract, progress=progress)
    proto = EvalProtocol.from_mapping(pl.protocol)
    heads = [
        (h["name"], h.get("params") or {}, h["preprocess"])
        if "preprocess" in h
        else (h["name"], h.get("params") or {})
        for h in pl.heads
    ]
    tune = pl.finetune
    if tune is not None:
        tails = [int(t) for t in tune.get("tails", [1])]
        cut = str(tune.get("cut", f"-{max(tails)}"))
        opts = replace(opts, cache_activations=cut)  # one store: features and activations
        tune_opts = FinetuneOptions.from_mapping(
            {k: v for k, v in tune.items() if k not in _FINETUNE_STEP}
        )
        tune_opts = replace(tune_opts, progress=progress)
    report_root = Path(report) if report else pl.report
    stores: dict[str, dict[str, str]] = {}
    boards: dict[str, Any] = {}
    reports: dict[str, Path] = {}
    diagnoses: dict[str, dict[str, Any]] = {}
    multi = len(pl.sources) > 1
    for s in pl.sources:
        src_name = s.get("name") or Path(s["spec"].split(":", 1)[-1]).name or s["spec"]
        stores[src_name] = {}
        feature_sets = {}
        for b in pl.backbones:
            label = _backbone_label(b)
            spec = BackboneSpec.from_mapping({k: v for k, v in b.items() if k != "label"})
            log.info("extracting %s with %s", s["spec"], label)
            r = extract(
                s["spec"],
                spec,
                options=opts,
                root=s.get("root"),
                download=bool(s.get("download", False)),
                text=TextFormat.from_mapping({k: s[k] for k in _TEXT_SOURCE if k in s})
                if any(k in s for k in _TEXT_SOURCE)
                else None,
            )
            stores[src_name][label] = r.store
            feature_sets[label] = load_features(r.store)
        for group in pl.fuse:  # stores of this source joined by key, one group per backbone
            from featx.fusion import fuse

            fused = fuse({lab: feature_sets[lab] for lab in group})
            feature_sets["+".join(group)] = fused.features
        lb = compare(feature_sets, heads, protocol=proto, progress=progress)
        if tune is not None:
            lb = _with_finetuned(lb, s, stores[src_name], tails, bool(tune.get("full")), pl,
                                 tune_opts, proto)  # fmt: skip
        out = report_root / src_name if multi else report_root
        if pl.diagnose is not None:
            from featx.diagnostics import diagnose

            dopts = DiagnoseOptions.from_mapping(pl.diagnose)
            diagnoses[src_name] = {}
            for label, fs in feature_sets.items():
                folder = out / "diagnose" / _slug(label)
                d = diagnose(fs, options=dopts, report=folder, protocol=proto, progress=progress)
                diagnoses[src_name][label] = {**d.summary(), "report": str(folder)}
        lb.write_report(out)
        boards[src_name] = lb
        reports[src_name] = out
    return PipelineResult(
        pipeline=pl, stores=stores, leaderboards=boards, reports=reports, diagnoses=diagnoses
    )


def _slug(label: str) -> str:
    """A folder name for a backbone label (``resnet18[none]`` -> ``resnet18_none``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "store"


def _with_finetuned(
    board: Any,
    source: dict[str, Any],
    stores: dict[str, str],
    tails: list[int],
    full: bool,
    pl: Pipeline,
    opts: FinetuneOptions,
    proto: EvalProtocol,
) -> Any:
    """``board`` with the fine-tuned rows of every backbone of ``source`` (same split)."""
    from featx.comparison import Leaderboard
    from featx.finetuning import finetune, finetune_full, read_activations

    results = list(board.results)
    for b in pl.backbones:
        label = _backbone_label(b)
        acts = read_activations(stores[label])
        for t in tails:
            rep = finetune(acts, options=replace(opts, tail=t), protocol=proto)
            results.append(replace(rep.result, store=label))
        if full:
            spec = BackboneSpec.from_mapping({k: v for k, v in b.items() if k != "label"})
            rep = finetune_full(source["spec"], spec, options=opts, protocol=proto)
            results.append(replace(rep.result, store=label))
    results.sort(key=lambda r: (-r.accuracy, -r.balanced_accuracy, r.fit_seconds))
    return Leaderboard(
        results=tuple(results),
        failures=board.failures,
        protocol=board.protocol,
        n_items=board.n_items,
        stores=board.stores,
    )
