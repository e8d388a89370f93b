"""The ``featx`` command: a thin shell over the library.

Each command parses its arguments, calls one library function and prints the result: a table on
stdout, or JSON with ``--json``. Progress and logs go to stderr. A :class:`~featx.errors.FeatxError`
is printed as one line (``error: ...``) with exit code 1; ``-v`` adds the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from featx._version import __version__
from featx.errors import FeatxError
from featx.export import export_formats
from featx.options import (
    DEFAULT_HEAD,
    DEFAULT_HEADS,
    DEFAULT_REFIT,
    REFIT_MODES,
    BackboneSpec,
    DiagnoseOptions,
    EvalProtocol,
    ExtractOptions,
    FinetuneOptions,
    TextFormat,
    option_fields,
)
from featx.terminal import clean as _clean
from featx.terminal import echo

log = logging.getLogger("featx")


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------
class OutputOption(click.Option):
    """An option that names an output file or folder: checked by :func:`featx.files.check_output`
    before the command runs (exists -> only with ``--force``; below a file or in a folder that
    cannot be written -> one line), the same for every command."""

    def __init__(self, *args: Any, folder: bool = False, update: bool = False, **kw: Any):
        kw.setdefault("type", click.Path())
        super().__init__(*args, **kw)
        self.folder = folder
        self.update = update


def output_option(*decls: str, folder: bool = False, update: bool = False, **kw: Any):
    """``click.option`` for an output path (see :class:`OutputOption`)."""
    return click.option(*decls, cls=OutputOption, folder=folder, update=update, **kw)


force_option = click.option(
    "--force",
    is_flag=True,
    help="Replace outputs that exist already (without it featx refuses to overwrite them).",
)


class FeatxGroup(click.Group):  # the top-level group; its subgroups use FeatxCommands
    """The one error boundary: every error becomes one line and a non-zero exit.

    A :class:`~featx.errors.FeatxError` is printed as it is; any ``OSError`` (a read-only or
    missing folder, a path below a file, a full disk, ...) as one line naming the path and what
    to do (:func:`featx.errors.os_error_message`); anything else as its type and first line.
    Every message is cleaned for the terminal. ``-v`` shows the traceback instead.
    """

    command_class = None  # set below, once FeatxCommand is defined

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeatxError as exc:
            if ctx.meta.get("featx.verbose"):
                raise
            echo(f"error: {_clean(exc)}", err=True)
            ctx.exit(1)
        except BrokenPipeError:  # e.g. `featx ... --json | head`: the reader left; stop quietly
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except KeyboardInterrupt:
            echo("interrupted; run the same command again to resume", err=True)
            ctx.exit(130)
        except click.ClickException as exc:
            exc.message = _clean(exc.message)  # a bad value echoed back stays harmless
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except OSError as exc:
            from featx.errors import disk_full_error, is_disk_full, os_error_message

            if ctx.meta.get("featx.verbose"):
                raise
            if is_disk_full(exc):
                import os

                where = os.path.dirname(os.path.abspath(exc.filename)) if exc.filename else "."
                msg = str(disk_full_error(where))
            else:
                msg = os_error_message(exc)
            echo(f"error: {_clean(msg)}", err=True)
            ctx.exit(1)
        except Exception as exc:  # noqa: BLE001 - no traceback unless -v
            if ctx.meta.get("featx.verbose"):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else ""
            echo(
                f"error: {type(exc).__name__}: {_clean(msg)} (re-run with -v for the traceback)",
                err=True,
            )
            ctx.exit(1)


class FeatxCommand(click.Command):
    """A command whose ``--help`` lists its options in titled sections (``sections``: title ->
    parameter names; options not named there follow under "Other options", so none is hidden),
    and whose line in ``featx --help`` is its whole first sentence, never cut with ``...``."""

    def __init__(self, *args: Any, sections: dict[str, tuple[str, ...]] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.sections = sections or {}

    def invoke(self, ctx: click.Context) -> Any:
        import os

        from featx.files import check_output

        inputs = set()  # an output may never be one of the command's inputs, --force or not
        for p in self.params:
            if isinstance(p, click.Argument):
                values = ctx.params.get(p.name or "")
                for v in values if isinstance(values, tuple | list) else [values]:
                    if isinstance(v, str) and os.path.isfile(v):
                        inputs.add(os.path.realpath(v))
        for p in self.params:
            value = ctx.params.get(p.name or "")
            if isinstance(p, OutputOption) and value:
                if not p.update and os.path.realpath(value) in inputs:
                    raise FeatxError(
                        f"{p.opts[0]} {value!r} is an input of this command itself; "
                        "give another file name"
                    )
                check_output(
                    value,
                    force=bool(ctx.params.get("force")),
                    folder=p.folder,
                    update=p.update,
                    option=p.opts[0],
                )
        return super().invoke(ctx)

    def get_short_help_str(self, limit: int = 45) -> str:
        return _first_sentence(self)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.sections:
            return super().format_options(ctx, formatter)
        records = {}
        help_names = set(ctx.help_option_names)
        for p in self.get_params(ctx):
            if not isinstance(p, click.Option):
                continue  # arguments are in the usage line and the text
            rec = p.get_help_record(ctx)
            if rec is not None:
                records["help" if help_names & set(p.opts) else p.name] = rec
        shown: set[str] = set()
        for title, names in self.sections.items():
            rows = [records[n] for n in names if n in records]
            shown.update(n for n in names if n in records)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [rec for n, rec in records.items() if n not in shown]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)


def _first_sentence(cmd: click.Command) -> str:
    """A command's first paragraph, whole (click would cut it to fit one line)."""
    if cmd.short_help:
        return cmd.short_help
    import inspect

    return " ".join(inspect.cleandoc(cmd.help or "").split("\n\n")[0].split())


class FeatxCommands(click.Group):
    """A command group listed, and listing its commands, with whole first sentences."""

    command_class = FeatxCommand

    def get_short_help_str(self, limit: int = 45) -> str:
        return _first_sentence(self)


FeatxGroup.command_class = FeatxCommand
FeatxGroup.group_class = FeatxCommands


def spec_options(spec: type, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()):
    """Click options for the fields of a spec in :mod:`featx.options` (flag, type, default, help).

    Each option's parameter name is the field name, so ``spec(**{k: kw[k] ...})`` rebuilds it.
    """
    decorators = []
    for f in option_fields(spec):
        if not f.flag or f.name in exclude or (only is not None and f.name not in only):
            continue
        info = f.info
        decls = [f.flag, f.name] if info.short is None else [info.short, f.flag, f.name]
        kw: dict[str, Any] = {"help": info.help, "default": f.default}
        if f.kind is bool:
            kw["is_flag"] = True
            if f.default or f.default is None:  # None: unset unless one of the pair is given
                decls[-2] = f"{f.flag}/--no-{f.flag[2:]}"
                kw["show_default"] = f.default is not None
        elif info.choices is not None:
            kw["type"] = click.Choice(list(info.choices))
        elif f.kind in (int, float):
            rng = click.IntRange if f.kind is int else click.FloatRange
            extra = {} if f.kind is int else {"min_open": info.min_open, "max_open": info.max_open}
            if info.min is None and info.max is None:
                kw["type"] = f.kind
            else:
                kw["type"] = rng(info.min, info.max, **extra)
        if f.default is not None and f.kind is not bool:
            kw["show_default"] = True
        decorators.append(click.option(*decls, **kw))

    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def _pick(spec: type, kw: dict[str, Any], **extra: Any) -> Any:
    """Build ``spec`` from the CLI keywords that are its fields (plus ``extra``)."""
    names = {f.name for f in option_fields(spec)}
    return spec(**{k: v for k, v in kw.items() if k in names}, **extra)


def _print_json(obj: Any) -> None:
    echo(json.dumps(obj, indent=2, default=str))


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {_clean(v)}" for k, v in rows)


def _setup_logging(verbose: int, quiet: bool = False) -> None:
    level = logging.WARNING
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    if quiet:
        level = logging.ERROR
    from featx.terminal import CleanFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CleanFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


@click.group(cls=FeatxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featx")
@click.option("-v", "--verbose", count=True, help="More logging; show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """featx: extract frozen-backbone embeddings once, then fit and compare heads in seconds.

    \b
    Typical session:
      featx backbones 'resnet*'
      featx extract photos/ --backbone resnet50
      featx info cache/photos__resnet50-...h5
    """
    ctx.meta["featx.verbose"] = verbose > 0
    _setup_logging(verbose)


# ---------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backbones(pattern: str | None, as_json: bool) -> None:
    """List backbones, optionally filtered by a shell PATTERN.

    \b
    Examples:
      featx backbones               # the embedded default and every torchvision model
      featx backbones 'vit_*'
      featx backbones 'timm/convnext*'   # timm models are listed under timm/
    """
    from featx.backbones import list_backbones

    infos = list_backbones(pattern)
    if not infos:
        raise FeatxError(f"no backbone matches {pattern!r}; try a wider pattern like '*{pattern}*'")
    if as_json:
        _print_json([i.to_dict() for i in infos])
        return
    w = max(len(i.name) for i in infos)
    echo(f"{'name':<{w}}  {'dim':>5}  {'size':>4}  weights")
    for i in infos:
        dim = "?" if i.dim is None else i.dim
        echo(f"{i.name:<{w}}  {dim:>5}  {i.input_size:>4}  {i.weights}")


# ---------------------------------------------------------------------------------------------
# extract / info
# ---------------------------------------------------------------------------------------------
EXTRACT_SECTIONS = {
    "Source": (
        "root",
        "download",
        "manifest",
        "content_hash",
        "strict",
        "allow_outside_root",
    ),
    "Backbone": ("name", "weights", "weights_file", "layer", "pool", "image_size", "layers"),
    "Text": (
        "text_column",
        "label_column",
        "id_column",
        "split_column",
        "encoding",
        "max_seq_length",
        "normalize",
    ),
    "Engine": (
        "device",
        "precision",
        "batch_size",
        "workers",
        "decode",
        "compile",
        "channels_last",
        "fold_bn",
        "engine",
        "ray_address",
        "actors",
        "gpus_per_actor",
        "cpus_per_actor",
    ),
    "Output": (
        "store",
        "dtype",
        "cache_activations",
        "checkpoint_every",
        "checkpoint_seconds",
        "quiet",
        "as_json",
        "help",
    ),
}


@cli.command(sections=EXTRACT_SECTIONS)
@click.argument("source")
@spec_options(BackboneSpec)
@output_option(
    "--store",
    update=True,
    help="Store file (default: a name under the cache folder).",
)
@click.option("--root", help="Folder of a torchvision dataset.")
@click.option("--download", is_flag=True, help="Let a torchvision dataset download itself.")
@spec_options(TextFormat)
@spec_options(ExtractOptions)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def extract(source: str, **kw: Any) -> None:
    """Extract features of SOURCE into a feature store (only what is new or changed).

    SOURCE is a folder (class subfolders = labels, or a flat folder), a CSV manifest
    (path,label[,split]; also as a URI: s3://, gs://, file://), sklearn:digits, or
    torchvision:NAME; or text: a CSV / TSV / JSONL table with a text column, or a folder of
    .txt files in class subfolders.

    \b
    Examples:
      featx extract photos/ -b resnet50 --weights IMAGENET1K_V2
      featx extract manifest.csv -b timm/vit_small_patch16_224 --json
      featx extract torchvision:CIFAR10 --root data/ --download -b resnet50
      featx extract s3://bucket/manifest.csv --engine ray --ray-address auto --gpus-per-actor 1
      featx extract reviews.csv --text-column body --label-column stars
      featx extract tickets.jsonl -b hf:models/my-sbert --max-seq-length 128
    """
    from featx.extraction import extract as run_extract
    from featx.modalities import get_modality

    if kw["engine"] == "ray" and not click.get_current_context().meta.get("featx.verbose"):
        import contextlib

        with contextlib.suppress(ImportError):  # a missing extra is reported by the library
            import ray.data  # noqa: F401 - configures its loggers on import; then quiet them
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # -v shows Ray Data's own lines
    result = run_extract(
        source,
        _pick(BackboneSpec, kw),
        store=kw["store"],
        options=_pick(ExtractOptions, kw, progress=not kw["quiet"]),
        root=kw["root"],
        download=kw["download"],
        text=_pick(TextFormat, kw),
    )
    if kw["as_json"]:
        _print_json(result.to_dict())
        return
    if result.noop:
        echo(f"{result.store}: up to date ({result.n_items} items, {result.n_failed} failed)")
        return
    echo(
        _table(
            [
                ("store", result.store),
                ("items", result.n_items),
                ("new", result.n_new),
                ("resumed", result.n_resumed),
                ("removed", result.n_removed),
                ("failed", f"{result.n_failed} ({result.n_new_failed} new)"),
                ("dim", result.dim),
                ("backbone", f"{result.backbone} ({result.weights})"),
                ("device", f"{result.device} {result.precision}"),
                *([("engine", result.engine)] if result.engine != "local" else []),
                ("seconds", f"{result.seconds:.1f}"),
                (f"{get_modality(result.modality).unit}/s", f"{result.items_per_s:.1f}"),
            ]
            + ([("truncated", result.n_truncated)] if result.n_truncated else [])
        )
    )
    if result.n_failed:
        echo(f"see the failed items and reasons with: featx info {result.store}")


def format_info(info: dict[str, Any]) -> str:
    pre = info.get("preprocess") or {}
    text = info.get("text")
    if text:
        pre_s = (
            f"{pre.get('tokenizer')}, {text['max_seq_length']} tokens, "
            f"lowercase {pre.get('lowercase')}, normalize {text['normalize']}"
        )
    elif pre:
        pre_s = (
            f"resize {pre.get('resize_size')} -> crop {pre.get('crop_size')} "
            f"{pre.get('interpolation')}, mean {pre.get('mean')}, std {pre.get('std')}"
        )
    else:
        pre_s = ""
    splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    classes = ", ".join(info["classes"][:10]) + (" ..." if info["n_classes"] > 10 else "")
    versions = info.get("versions") or {}
    rows = [
        ("store", info["store"]),
        ("items", info["n_items"]),
        ("labeled", info["n_labeled"]),
        ("failed", info["n_failed"]),
        ("dim", f"{info['dim']} ({info['dtype']})"),
        ("classes", f"{info['n_classes']}: {classes}" if info["n_classes"] else "none"),
        ("splits", splits or "none"),
        ("backbone", info["backbone"]),
        ("weights", f"{info['weights']} sha256 {str(info.get('weights_sha256') or '-')[:16]}"),
        ("layer / pool", f"{info['layer'] or '(embedding)'} / {info['pool'] or '-'}"),
        ("preprocess", pre_s),
        ("source", (info.get("source") or {}).get("uri", "")),
        ("created", info["created"]),
        ("updated", info["updated"]),
        ("versions", " ".join(f"{k}={v}" for k, v in versions.items())),
        ("file", f"{info['file_bytes'] / 1e6:.1f} MB"),
    ]
    groups = info.get("groups") or []
    if len(groups) > 1 or info.get("has_texts"):  # the feature groups --layers chooses from
        names = [f"{g['name']} ({g['dim']})" for g in groups]
        if info.get("has_texts"):
            names.append("tfidf (of text/texts, fitted per head)")
        rows.insert(10, ("groups", ", ".join(names)))
    for name, spec in (info.get("outputs") or {}).items():
        if not spec.get("cut"):  # cached activations (--cache-activations); layers: groups
            continue
        shape = "x".join(str(d) for d in spec.get("shape", []))
        at = f" at {spec['cut']}" if spec.get("cut") else ""
        size = f", {spec['bytes'] / 1e6:.1f} MB" if "bytes" in spec else ""
        rows.append((f"output {name}", f"{shape} {spec.get('dtype')}{at}{size}"))
    if info.get("layout") == "segments":
        rows.append(
            (
                "layout",
                f"{info['segments']} segments, {info['dead_rows']} dead rows "
                "('featx compact' merges them)" + _segment_sizes(info.get("segment_rows") or []),
            )
        )
    if text:
        rows.insert(
            10,
            (
                "text",
                f"column {text['text_column'] or '-'}, median {text['median_tokens']} tokens, "
                f"{text['n_truncated']} truncated at {text['max_seq_length']}",
            ),
        )
    out = _table(rows)
    if info["failed"]:
        out += "\nfailed items (first 20):\n" + "\n".join(
            f"  {f['path']}: {f['reason']}" for f in info["failed"]
        )
    if text and text["truncated"]:
        out += "\ntruncated texts (first 20): " + ", ".join(text["truncated"])
    return out


def format_locations(loc: dict[str, Any]) -> str:
    """``featx info`` without a store: where featx reads and writes."""
    size = f"{loc['stores']} stores, {loc['stores_bytes'] / 1e6:.1f} MB"
    return _table(
        [
            ("cache", f"{loc['cache_dir']} ({size})"),
            ("  set by", loc["cache_dir_from"]),
            ("head bundles", loc["heads_dir"]),
            ("built-in datasets", loc["datasets_dir"]),
            ("torchvision data", f"{loc['data_dir']} (set by {loc['data_dir_from']})"),
            ("torch weights", loc["torch_weights_dir"]),
            ("hugging face", loc["huggingface_dir"]),
            ("project setting", loc["project_setting"] or "none (featx.toml or [tool.featx])"),
        ]
    )


@cli.command()
@click.argument("store", type=click.Path(), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--verify", "check", is_flag=True, help="Also read every chunk and check it (featx verify)."
)
def info(store: str | None, as_json: bool, check: bool) -> None:
    """Summarize a feature STORE: items, failures, dim, backbone, weights, provenance.

    Without STORE: where featx keeps stores, bundles, datasets and weights, and which setting
    chose each folder (FEATX_CACHE_DIR, the nearest featx.toml / pyproject.toml [tool.featx],
    or the user cache folder).
    """
    if store is None:
        from featx.settings import locations

        loc = locations()
        echo(json.dumps(loc, indent=2) if as_json else format_locations(loc))
        return
    from featx.store import store_info, verify_store

    report = verify_store(store) if check else None
    if report is not None and not report.ok:
        _verify_failed(report, as_json)
    data = store_info(store)
    if report is not None:
        data["verify"] = report.to_dict()
    if as_json:
        _print_json(data)
    else:
        echo(format_info(data))
        if report is not None:
            echo(f"verified  {report.chunks_read} chunks, {report.bytes_read / 1e6:.1f} MB: ok")


def _verify_failed(report: Any, as_json: bool) -> None:
    if as_json:
        _print_json(report.to_dict())
    else:
        for p in report.problems:
            echo(f"damaged: {p}", err=True)
    raise FeatxError(
        f"store {report.store} is damaged ({len(report.problems)} problem(s): "
        f"{report.problems[0]}); delete it and run the same 'featx extract' again"
    )


@cli.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(store: str, as_json: bool) -> None:
    """Check a feature STORE: read every chunk, compare checksums, check the schema.

    Exits 0 when the store is intact and 1 (with what is damaged) when not.

    \b
    Example:
      featx verify cache/digits__efficientnet_lite0-...h5
    """
    from featx.store import verify_store

    report = verify_store(store)
    if not report.ok:
        _verify_failed(report, as_json)
    if as_json:
        _print_json(report.to_dict())
        return
    echo(
        f"{report.store}: ok ({report.n_items} rows x {report.dim}, {report.chunks_read} chunks, "
        f"{report.bytes_read / 1e6:.1f} MB read)"
    )
    for note in report.notes:
        echo(f"note: {note}")


def _segment_sizes(rows: list[int]) -> str:
    """'; live rows per segment: 1,000,000 170,000 ...' (largest first, at most 8)."""
    if not rows:
        return ""
    big = sorted(rows, reverse=True)
    more = f" and {len(big) - 8} more" if len(big) > 8 else ""
    return "; live rows per segment: " + " ".join(f"{v:,}" for v in big[:8]) + more


@cli.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def compact(store: str, as_json: bool, quiet: bool) -> None:
    """Merge a segmented STORE into one file, dropping its dead rows.

    Incremental runs add small changes as segments and merge small segments by themselves
    (leaving big ones alone); this merges them all now (one atomic commit, like an extraction's).

    \b
    Example:
      featx compact cache/photos__resnet50-IMAGENET1K_V2-224px__0123abcd.h5
    """
    from featx.store import compact_store

    out = compact_store(store, progress=not quiet)
    if as_json:
        _print_json(out)
    elif out["compacted"]:
        echo(
            f"{store}: {out['segments']} segments and {out['dead_rows']} dead rows merged into "
            f"one file of {out['n_items']} rows ({out['seconds']:.1f} s)"
        )
    else:
        echo(f"{store}: already one file ({out['n_items']} rows); nothing to do")


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------
@cli.group(name="cache")
def cache_group() -> None:
    """List and remove what featx keeps: stores, prediction stores, bundles, datasets.

    \b
    Examples:
      featx cache ls
      featx cache clean --kind prediction               # every prediction store
      featx cache clean --match 'digits__*' --dry-run   # what would go
      featx cache clean --older-than 30                 # not touched for 30 days
    """


def _cache_rows(entries: list[Any]) -> str:
    import time

    from featx.console import human_bytes, render_table

    rows = [
        [
            e.kind,
            human_bytes(e.bytes),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified)),
            e.name,
        ]
        for e in entries
    ]
    return render_table(["kind", "size", "modified", "name"], rows, align="lrll")


@cache_group.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cache_ls(as_json: bool) -> None:
    """List the cache folder: kind, size, last change and name of each entry."""
    from featx.cache import scan
    from featx.console import human_bytes
    from featx.settings import resolve

    where = resolve()
    entries = scan(where.cache_dir)
    if as_json:
        _print_json({"cache_dir": str(where.cache_dir), "entries": [e.to_dict() for e in entries]})
        return
    total = sum(e.bytes for e in entries)
    echo(f"cache: {where.cache_dir} (set by {where.cache_dir_from})")
    if not entries:
        echo("empty")
        return
    echo(_cache_rows(entries))
    echo(f"\n{len(entries)} entries, {human_bytes(total)}")


@cache_group.command(name="clean")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["store", "prediction", "bundle", "dataset", "memo", "leftover"]),
    help="Remove entries of this kind; repeat for several.",
)
@click.option("--match", "pattern", help="Remove entries whose name matches this shell pattern.")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="Remove entries not changed for this many days.",
)
@click.option("--all", "all_", is_flag=True, help="Remove every entry featx made.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cache_clean(
    kinds: tuple[str, ...],
    pattern: str | None,
    older_than: float | None,
    all_: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove cache entries that match every filter given (or --all).

    Only what featx made is removed (never other files, never anything outside the cache
    folder), and never a store that a running 'featx extract' is writing.
    """
    from featx.cache import clean
    from featx.console import human_bytes

    removed, skipped = clean(
        kinds=kinds, pattern=pattern, older_than_days=older_than, all=all_, dry_run=dry_run
    )
    if as_json:
        _print_json(
            {
                "dry_run": dry_run,
                "removed": [e.to_dict() for e in removed],
                "skipped": [{**e.to_dict(), "reason": why} for e, why in skipped],
            }
        )
        return
    if removed:
        echo(_cache_rows(removed))
    verb = "would remove" if dry_run else "removed"
    echo(f"{verb} {len(removed)} entries, {human_bytes(sum(e.bytes for e in removed))}")
    for e, why in skipped:
        echo(f"kept {e.name}: {why}", err=True)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("store", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(export_formats()),
    help="Output format (default: from --out's suffix, else npz). parquet needs featx[parquet].",
)
@output_option("--out", help="Output file (default: the store's path with the format's suffix).")
@click.option(
    "--layers",
    help="Feature groups of a multi-layer store to export (NAME or A+B; default: every group, "
    "side by side, the embedding first).",
)
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def export(
    store: str, fmt: str | None, out: str | None, layers: str | None, as_json: bool, force: bool
) -> None:
    """Write a feature STORE's ids, labels, splits and features as npz, Parquet or CSV.

    \b
    Examples:
      featx export STORE                       # STORE with .npz: np.load(...)["features"]
      featx export STORE --format parquet      # pandas.read_parquet; features as a list column
      featx export STORE --out digits.csv      # id,label,split,f0,f1,...
    """
    from featx.export import export_store

    res = export_store(store, out, format=fmt, layers=layers)
    if as_json:
        _print_json(res.to_dict())
        return
    echo(
        _table(
            [
                ("out", res.out),
                ("format", res.format),
                ("items", f"{res.n_items} x {res.dim}"),
                ("failed (left out)", res.n_failed_left_out),
                ("file", f"{res.bytes / 1e6:.1f} MB"),
            ]
        )
    )


# ---------------------------------------------------------------------------------------------
# heads: fit / compare / predict / run
# ---------------------------------------------------------------------------------------------
_MANIFEST_HELP = (
    "Cleaning manifest (key,action,label CSV, e.g. from 'featx diagnose --report'): leave out "
    "the items marked exclude, relabel those marked relabel."
)


def _protocol_options(f):
    """Options shared by fit and compare: the fields of :class:`featx.options.EvalProtocol`."""
    return spec_options(EvalProtocol)(f)


@cli.command(name="heads")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def heads_cmd(as_json: bool) -> None:
    """List the heads and their parameters (for --param key=value)."""
    from featx.heads import get_head_info, list_heads

    rows = []
    for name in list_heads():
        info = get_head_info(name)
        rows.append(
            {
                "name": name,
                "summary": info.summary,
                "params": {
                    k: {"type": p.kind, "default": p.default, "help": p.help}
                    for k, p in info.params.items()
                },
            }
        )
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        echo(f"{r['name']:<11} {r['summary']}")
        for k, p in r["params"].items():
            # a help text that already explains its default (e.g. a sweep's values) keeps it
            default = "" if "default" in p["help"] else f" (default {p['default']})"
            echo(f"{'':<13}{k}={p['type']}  {p['help']}{default}")


def _print_result(res: dict[str, Any]) -> None:
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    std = res.get("std") or {}
    folds = "fold" in res["protocol"]  # cv: sizes per fold; per-class figures over all folds
    per = " per fold" if folds else ""
    rows = [
        ("head", res["label"]),
        ("protocol", f"{res['protocol']} ({res['n_train']} train / {res['n_test']} test{per})"),
        (
            "accuracy",
            pct(res["accuracy"]) + (f" ± {100 * std['accuracy']:.2f}" if "accuracy" in std else ""),
        ),
        ("balanced accuracy", pct(res["balanced_accuracy"])),
        ("macro F1", pct(res["macro_f1"])),
        ("top-5 accuracy", pct(res.get("top5_accuracy"))),
        ("log-loss", "-" if res.get("log_loss") is None else f"{res['log_loss']:.4f}"),
        ("fit seconds", f"{res['fit_seconds']:.2f}"),
        ("predict seconds", f"{res['predict_seconds']:.3f}"),
    ]
    if res.get("solver"):
        rows.append(("solver", res["solver"]))
    if res.get("n_unlabeled"):
        rows.append(("unlabeled (left out)", res["n_unlabeled"]))
    echo(_table(rows))
    per_class = res.get("per_class") or []
    if per_class:
        from featx.console import render_table

        title = "per class (test items of all folds, each once):" if folds else "per class:"
        echo(f"\n{title}")
        echo(
            render_table(
                ["class", "precision", "recall", "f1", "support"],
                [
                    [c["name"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}"]
                    + [c["support"]]
                    for c in per_class
                ],
                align="lrrrr",
                indent="  ",
            )
        )


@cli.command()
@click.argument("store", type=click.Path())
@click.option(
    "--head", default=DEFAULT_HEAD, show_default=True, help="Head name (see 'featx heads')."
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Head parameter; repeat for several.",
)
@_protocol_options
@click.option(
    "--refit",
    type=click.Choice(list(REFIT_MODES)),
    default=DEFAULT_REFIT,
    show_default=True,
    help="Ship a head refit on every labeled item, or the one measured on the test split.",
)
@output_option(
    "--out",
    help="Save the fitted head to this bundle file for 'featx predict' (e.g. head.npz); "
    "without --out nothing is written.",
)
@force_option
@click.option("--manifest", type=click.Path(dir_okay=False), help=_MANIFEST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def fit(
    store: str,
    head: str,
    params: tuple[str, ...],
    out: str | None,
    as_json: bool,
    refit: str,
    force: bool,
    manifest: str | None,
    **proto: Any,
) -> None:
    """Train a head on a feature STORE and report test metrics; --out saves it for predict.

    \b
    Examples:
      featx fit cache/digits__...h5 --head logreg --out head.npz
      featx fit STORE --head mlp --param hidden_sizes=512,256 --param dropout=0.2 --json
      featx fit STORE --head knn --cv 5
      featx fit STORE --head logreg --shots 10 --trials 5
    """
    from featx.heads import parse_params
    from featx.train import fit_store

    report = fit_store(
        store,
        head,
        params=parse_params(params),
        protocol=EvalProtocol(**proto),
        refit=refit,
        out=out,
        manifest=manifest,
    )
    res = report.to_dict(details=True)
    if as_json:
        _print_json(res)
        return
    _print_result(res)
    if report.bundle is None:
        echo("\nbundle: not saved (add --out FILE.npz to keep it for 'featx predict')")
    else:
        on = "all labeled items" if refit == "all" else "train"
        echo(f"\nbundle: {report.bundle} (refit on {on})")


@cli.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option(
    "--heads",
    default=",".join(DEFAULT_HEADS),
    show_default=True,
    help="Comma-separated head names, or 'all' (see 'featx heads').",
)
@_protocol_options
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
@output_option("--csv", "csv_path", help="Also write a CSV.")
@output_option("--report", folder=True, help="Write tables and PNG plots to this folder.")
@force_option
@spec_options(ExtractOptions, only=("engine", "ray_address"))
@click.option("--manifest", type=click.Path(dir_okay=False), help=_MANIFEST_HELP)
@click.option(
    "--drop-leaked",
    is_flag=True,
    help="Also score without the test items that have a near-duplicate in training "
    "(featx diagnose's check); prints both leaderboards.",
)
@spec_options(DiagnoseOptions, only=("duplicate_threshold",))
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def compare(
    stores: tuple[str, ...],
    heads: str,
    as_json: bool,
    csv_path: str | None,
    report: str | None,
    force: bool,
    quiet: bool,
    engine: str,
    ray_address: str | None,
    manifest: str | None,
    drop_leaked: bool,
    duplicate_threshold: float,
    **proto: Any,
) -> None:
    """Train every head on every STORE with the same splits; print a leaderboard.

    \b
    Examples:
      featx compare cache/digits__efficientnet_lite0*.h5 --heads logreg,svm,knn,mlp
      featx compare A.h5 B.h5 --heads logreg,knn --report reports/ab --csv ab.csv
      featx compare cache/digits__efficientnet_lite0*.h5 --heads all
      featx compare cache/*.h5 --heads logreg,svm,knn,mlp --engine ray   # fits as Ray tasks
      featx compare STORE --drop-leaked          # also without test items duplicated in train
      featx compare STORE --manifest reports/diagnose/manifest.csv   # a cleaned run
    """
    from featx.train import compare_stores

    names = [h.strip() for h in heads.split(",") if h.strip()]
    board = compare_stores(
        stores,
        names,
        protocol=EvalProtocol(**proto),
        progress=not quiet,
        engine=engine,
        ray_address=ray_address,
        manifest=manifest,
    )
    clean = None
    if drop_leaked:
        from featx.diagnostics.leaks import compare_without_leaks

        clean = compare_without_leaks(
            stores,
            names,
            protocol=EvalProtocol(**proto),
            options=DiagnoseOptions(duplicate_threshold=duplicate_threshold),
            manifest=manifest,
            progress=not quiet,
        )
    if csv_path:
        board.to_csv(csv_path)
    if report:
        board.write_report(report)
    if as_json:
        if clean is None:
            echo(board.to_json())
        else:
            _print_json(
                {
                    "leaderboard": json.loads(board.to_json()),
                    "without_leaked": json.loads(clean.board.to_json()),
                    "leaked_keys": clean.leaked,
                }
            )
    else:
        echo(board.to_text())
        if clean is not None:
            echo(f"\nwithout {len(clean.leaked)} leaked test item(s):\n")
            echo(clean.board.to_text())
            echo("\n" + clean.delta_table(board))
        if report:
            echo(f"\nreport: {report}")


@cli.command()
@click.argument("store")
@click.option(
    "--full",
    is_flag=True,
    help="The reference: fine-tune the whole network on STORE, which is then a SOURCE (as for "
    "'featx extract').",
)
@spec_options(FinetuneOptions)
@spec_options(EvalProtocol, only=("split", "test_size", "seed"))
@spec_options(BackboneSpec, only=("name", "weights", "image_size", "max_seq_length"))
@spec_options(TextFormat, only=("text_column", "label_column", "id_column", "split_column"))
@click.option(
    "--heads",
    default="logreg",
    show_default=True,
    help="Frozen heads to evaluate on the same split, comma-separated ('' for none).",
)
@output_option(
    "--bundle",
    help="Save the fine-tuned model to this bundle for 'featx predict' (e.g. tuned.npz).",
)
@force_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def finetune(
    store: str,
    full: bool,
    heads: str,
    bundle: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Fine-tune the last blocks on a STORE's cached activations (--full: whole network).

    STORE must hold cached activations: extract it with --cache-activations. With --full,
    STORE is a source (as for 'featx extract') and the whole network trains: the reference.
    The leaderboard shows finetune:tail=N (or finetune:full) next to frozen heads, on the
    same split.

    \b
    Examples:
      featx extract photos/ -b resnet18 --cache-activations auto
      featx finetune cache/photos__resnet18-...h5 --tail 1 --bundle tuned.npz
      featx predict tuned.npz new_photos/
      featx finetune --full photos/ -b resnet18 --epochs 10
    """
    from featx.finetuning import finetune as run_tail
    from featx.finetuning import finetune_full

    names = [h.strip() for h in heads.split(",") if h.strip()]
    opts = _pick(FinetuneOptions, kw, progress=not quiet)
    proto = _pick(EvalProtocol, kw)
    if full:
        report = finetune_full(
            store,
            _pick(BackboneSpec, kw),
            options=opts,
            protocol=proto,
            heads=names,
            bundle=bundle,
            text=_pick(TextFormat, kw),
        )
    else:
        given = [
            f.flag for f in option_fields(BackboneSpec) if f.name in kw and kw[f.name] != f.default
        ]
        if given:
            raise FeatxError(
                f"{given[0]} applies to --full; a store's backbone is the one it was extracted with"
            )
        report = run_tail(store, options=opts, protocol=proto, heads=names, bundle=bundle)
    if as_json:
        _print_json(report.to_dict())
        return
    echo(report.leaderboard.to_markdown())
    echo(
        f"\n{report.result.label}: best epoch {report.best_epoch} of {report.epochs}, "
        f"{report.seconds:.1f} s training ({report.seconds_per_epoch:.2f} s/epoch)"
    )
    x = report.extra
    if x.get("lr"):
        how = " (range test)" if (x.get("lr_find") or {}).get("head") else ""
        echo(
            f"learning rates: head {x['lr']:.3g}{how}, pretrained blocks {x['tail_lr']:.3g}; "
            f"head start: {x.get('head_init')}"
            + (
                f"; resumed after epoch {x['resumed_from_epoch']}"
                if x.get("resumed_from_epoch")
                else ""
            )
        )
    tuned = x.get("tuned_heads")
    if tuned:
        scores = ", ".join(
            f"{k} {100 * v:.2f} %" for k, v in tuned["val_accuracy"].items() if v is not None
        )
        echo(f"chosen on the validation items: {tuned['chosen']} ({scores})")
    if report.bundle is not None:
        echo(f"bundle: {report.bundle} (featx predict {report.bundle} FILES)")


@cli.command()
@click.argument("bundle", type=click.Path())
@click.argument("source")
@output_option("--out", default="preds.csv", show_default=True, help="The CSV to write.")
@force_option
@click.option(
    "--weights-file",
    type=click.Path(dir_okay=False),
    help="The local weights file the bundle's backbone was built from, if any.",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False),
    help="The local model folder the bundle's backbone was built from, if any (a bundle never "
    "makes featx load a folder it names by itself).",
)
@click.option("--root", help="Folder of a torchvision dataset.")
@spec_options(TextFormat)
@spec_options(
    ExtractOptions, only=("device", "precision", "batch_size", "workers", "allow_outside_root")
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Also load a pickle-based (joblib) bundle; unpickling runs any code it holds, so only "
    "for bundles whose origin you trust.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def predict(
    bundle: str,
    source: str,
    out: str,
    weights_file: str | None,
    model_dir: str | None,
    root: str | None,
    device: str,
    precision: str,
    batch_size: int,
    workers: int | None,
    trust_pickle: bool,
    allow_outside_root: bool,
    force: bool,
    quiet: bool,
    as_json: bool,
    **text_kw: Any,
) -> None:
    """Label the images or texts of SOURCE with a head BUNDLE from 'featx fit'; write a CSV.

    SOURCE is a folder, a CSV manifest, torchvision:NAME, one image file, or a quoted glob
    pattern; or a text table / .txt folder (as for 'featx extract'). The bundle's backbone is
    rebuilt exactly, SOURCE is extracted into its own cached store (under <cache>/predict;
    re-running extracts nothing new), and OUT gets one row per input in the input's order: path
    (as reachable from here), predicted, true_label (when SOURCE has labels) and p_<class>
    columns (text tables: line and the table's own id and text columns instead of path).

    \b
    Examples:
      featx predict head.npz new_images/ --out preds.csv
      featx predict head.npz photo.jpg
      featx predict head.npz 'shots/**/*.jpg'
      featx predict tickets.npz new_tickets.csv --out preds.csv
    """
    from featx.prediction import predict as run_predict

    opts = ExtractOptions(
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        allow_outside_root=allow_outside_root,
        progress=not quiet,
    )
    res = run_predict(
        bundle,
        source,
        out=out,
        options=opts,
        weights_file=weights_file,
        root=root,
        text=_pick(TextFormat, text_kw),
        trust=trust_pickle,
        model_dir=model_dir,
    )
    if as_json:
        _print_json(res.to_dict())
        return
    top = sorted(res.counts.items(), key=lambda kv: -kv[1])[:5]
    rows = [
        ("predictions", f"{res.out} ({res.n_predicted} items)"),
        (
            "features",
            f"{res.store} ({res.n_extracted} extracted now)"
            if res.store
            else "none stored (a fine-tuned bundle runs its prefix and tail directly)",
        ),
        ("failed", res.n_failed),
        ("most predicted", ", ".join(f"{k} {v}" for k, v in top)),
    ]
    if res.accuracy is not None:
        rows.append(("accuracy vs labels", f"{100 * res.accuracy:.2f}%"))
    echo(_table(rows))


@cli.command()
@click.argument("pipeline", type=click.Path())
@output_option("--report", folder=True, help="Override the report folder.")
@force_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def run(pipeline: str, report: str | None, force: bool, quiet: bool, as_json: bool) -> None:
    """Run a declarative experiment: sources x backbones x heads (docs/pipelines.md).

    Every store is reused from the cache when up to date; the leaderboard is printed and the
    report folder gets tables and PNG plots.

    \b
    Examples:
      featx run pipelines/cifar10_resnet50.toml
      featx demo --files mydemo && featx run mydemo/digits.toml
    """
    from featx.pipeline import run_pipeline

    res = run_pipeline(pipeline, progress=not quiet, report=report, force=force)
    if as_json:
        _print_json(res.to_dict())
    else:
        echo(res.to_text())


@cli.command()
@click.argument("name", type=click.Choice(["digits", "text"]), default="digits", required=False)
@output_option(
    "--report",
    folder=True,
    update=True,  # a demo is made to be run again: it replaces its own report
    help="Report folder (default: reports/demo or reports/text_tickets in the working directory).",
)
@click.option(
    "--files",
    type=click.Path(file_okay=False),
    help="Instead of running: copy the demo pipelines and their data into this folder, to edit "
    "and run with 'featx run'.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def demo(name: str, report: str | None, files: str | None, quiet: bool, as_json: bool) -> None:
    """Run a demo shipped with featx: digits (no network needed) or text (the text extra).

    \b
    Examples:
      featx demo                  # scikit-learn's digits x EfficientNet-Lite0 x 5 heads
      featx demo text             # 120 support tickets x all-MiniLM-L6-v2 x 4 heads
      featx demo --files mydemo   # copy the pipelines and data to edit, then: featx run ...
    """
    from featx.examples import REPORTS, copy_files, demo_path

    if files:
        for path in copy_files(files):
            echo(str(path))
        return
    ctx = click.get_current_context()
    ctx.invoke(
        run,
        pipeline=str(demo_path(name)),
        report=report or f"reports/{REPORTS[name]}",
        force=True,
        quiet=quiet,
        as_json=as_json,
    )


# ---------------------------------------------------------------------------------------------
# diagnose
# ---------------------------------------------------------------------------------------------
@cli.command(name="diagnose")
@click.argument("store", type=click.Path())
@output_option(
    "--report",
    folder=True,
    help="Write report.md/.html, flagged.csv, diagnosis.json, manifest.csv and map.png here.",
)
@force_option
@spec_options(DiagnoseOptions)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print everything found as JSON.")
def diagnose_cmd(
    store: str, report: str | None, force: bool, quiet: bool, as_json: bool, **kw: Any
) -> None:
    """Find duplicates and train/test leakage, likely label errors and outliers in a STORE.

    Works on the cached embeddings (no backbone runs). Label checks use out-of-fold
    probabilities of a head and confident learning; an unlabeled store gets duplicates and
    outliers only. --report writes a folder to read (report.html) and a manifest.csv that
    'featx fit/compare --manifest' act on.

    \b
    Examples:
      featx diagnose cache/digits__efficientnet_lite0-...h5 --report reports/diagnose
      featx diagnose STORE --duplicate-threshold 0.99 --json
      featx compare STORE --manifest reports/diagnose/manifest.csv   # the cleaned run
    """
    from featx.diagnostics import diagnose

    d = diagnose(store, options=_pick(DiagnoseOptions, kw), report=report, progress=not quiet)
    if as_json:
        _print_json(d.to_dict())
        return
    s = d.summary()
    rows = [
        ("store", store),
        ("items", f"{s['items']} ({s['labeled']} labeled, {s['classes']} classes)"),
        (
            "duplicate groups",
            f"{s['duplicate_groups']} ({s['exact_duplicate_groups']} exact, "
            f"{s['duplicate_items']} items)",
        ),
        ("leaked test items", s["leaked_items"]),
        (
            "label issues",
            "-"
            if d.label_quality is None
            else f"{s['label_issues']} ({d.folds}-fold {d.options.head})",
        ),
        ("outliers", s["outliers"]),
        ("far from own class", s["class_outliers"]),
        ("to exclude / relabel", f"{s['to_exclude']} / {s['to_relabel']}"),
        ("seconds", f"{sum(d.seconds.values()):.1f}"),
    ]
    echo(_table(rows))
    for problem, title in (
        ("leak", "leaked"),
        ("label", "label issues"),
        ("outlier", "outliers"),
    ):
        fl = d.flagged(problem)
        if not fl:
            continue
        echo(f"\n{title} (worst {min(5, len(fl))} of {len(fl)}):")
        for f in fl[:5]:
            extra = f" -> {f.suggested}" if f.suggested else ""
            echo(f"  {f.key}  {f.label}{extra}  score {f.score:.3f}  {f.detail}")
    for note in d.notes:
        echo(f"note: {note}")
    if report:
        echo(f"\nreport: {report}/report.html (manifest: {report}/manifest.csv)")


def main() -> None:
    cli(prog_name="featx")


if __name__ == "__main__":  # pragma: no cover
    main()
