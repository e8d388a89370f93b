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

from featx import __version__
from featx.errors import FeatxError

log = logging.getLogger("featx")


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------
class FeatxGroup(click.Group):
    """Turns library errors into one-line messages and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeatxError as exc:
            if ctx.meta.get("featx.verbose"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - no traceback unless -v
            if ctx.meta.get("featx.verbose"):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(
                f"error: {type(exc).__name__}: {msg} (re-run with -v for the traceback)", err=True
            )
            ctx.exit(1)


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _setup_logging(verbose: int, quiet: bool = False) -> None:
    level = logging.WARNING
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    if quiet:
        level = logging.ERROR
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


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
    click.echo(f"{'name':<{w}}  {'dim':>5}  {'size':>4}  weights")
    for i in infos:
        dim = "?" if i.dim is None else i.dim
        click.echo(f"{i.name:<{w}}  {dim:>5}  {i.input_size:>4}  {i.weights}")


# ---------------------------------------------------------------------------------------------
# extract / info
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("source")
@click.option(
    "-b",
    "--backbone",
    default="efficientnet_lite0",
    show_default=True,
    help="Backbone name (see 'featx backbones').",
)
@click.option(
    "--weights",
    default="DEFAULT",
    show_default=True,
    help="DEFAULT, a weights enum name (e.g. IMAGENET1K_V2) or none.",
)
@click.option(
    "--weights-file",
    type=click.Path(dir_okay=False),
    help="Local checkpoint (state dict) to load instead.",
)
@click.option("--layer", help="Module whose output is the feature (default: pooled embedding).")
@click.option(
    "--pool",
    type=click.Choice(["avg", "max", "gem", "cls", "avgmax"]),
    help="How to pool the layer's output.",
)
@click.option("--image-size", type=click.IntRange(8, 4096), help="Override the input size.")
@click.option(
    "--store",
    type=click.Path(dir_okay=False),
    help="Store file (default: a name under the cache folder).",
)
@click.option("--root", help="Folder of a torchvision dataset.")
@click.option("--download", is_flag=True, help="Let a torchvision dataset download itself.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N] or mps.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 on CUDA, fp32 on CPU.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="How features are stored.",
)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="DataLoader workers (default: by device).")
@click.option(
    "--hash",
    "content_hash",
    is_flag=True,
    help="Fingerprint files by content hash too (slower, catches same-size edits).",
)
@click.option("--strict", is_flag=True, help="Fail on the first undecodable file.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(1),
    default=2048,
    show_default=True,
    help="Images per durable checkpoint (a kill loses at most this many).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def extract(source: str, **kw: Any) -> None:
    """Extract features of SOURCE into a feature store (only what is new or changed).

    SOURCE is a folder (class subfolders = labels, or a flat folder), a CSV manifest
    (path,label[,split]), sklearn:digits, or torchvision:NAME.

    \b
    Examples:
      featx extract photos/ -b resnet50 --weights IMAGENET1K_V2
      featx extract manifest.csv -b timm/vit_small_patch16_224 --json
      featx extract torchvision:CIFAR10 --root data/ --download -b resnet50
    """
    from featx.extract import ExtractOptions
    from featx.extract import extract as run_extract

    opts = ExtractOptions(
        batch_size=kw["batch_size"],
        workers=kw["workers"],
        device=kw["device"],
        precision=kw["precision"],
        dtype=kw["dtype"],
        content_hash=kw["content_hash"],
        strict=kw["strict"],
        compile=kw["compile_"],
        checkpoint_every=kw["checkpoint_every"],
        progress=not kw["quiet"],
    )
    weights = None if kw["weights"].lower() == "none" else kw["weights"]
    result = run_extract(
        source,
        kw["backbone"],
        weights=weights,
        weights_file=kw["weights_file"],
        layer=kw["layer"],
        pool=kw["pool"],
        image_size=kw["image_size"],
        store=kw["store"],
        options=opts,
        root=kw["root"],
        download=kw["download"],
    )
    if kw["as_json"]:
        _print_json(result.to_dict())
        return
    if result.noop:
        click.echo(f"{result.store}: up to date ({result.n_items} items, {result.n_failed} failed)")
        return
    click.echo(
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
                ("seconds", f"{result.seconds:.1f}"),
                ("images/s", f"{result.images_per_s:.1f}"),
            ]
        )
    )
    if result.n_failed:
        click.echo(f"see the failed items and reasons with: featx info {result.store}")


def format_info(info: dict[str, Any]) -> str:
    pre = info.get("preprocess") or {}
    pre_s = (
        f"resize {pre.get('resize_size')} -> crop {pre.get('crop_size')} "
        f"{pre.get('interpolation')}, mean {pre.get('mean')}, std {pre.get('std')}"
        if pre
        else ""
    )
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
    text = _table(rows)
    if info["failed"]:
        text += "\nfailed items (first 20):\n" + "\n".join(
            f"  {f['path']}: {f['reason']}" for f in info["failed"]
        )
    return text


@cli.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(store: str, as_json: bool) -> None:
    """Summarize a feature STORE: items, failures, dim, backbone, weights, provenance."""
    from featx.store import store_info

    data = store_info(store)
    if as_json:
        _print_json(data)
    else:
        click.echo(format_info(data))


def main() -> None:
    cli(prog_name="featx")


if __name__ == "__main__":  # pragma: no cover
    main()
