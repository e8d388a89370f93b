"""Cutting a backbone into a frozen prefix and a trainable tail at a named point.

A *cut* names the first block of the tail: its input is what ``featx extract --cache-activations
CUT`` stores, and what :func:`featx.finetuning.finetune` trains on. The blocks of a network are its
stages for CNNs (ResNet ``layer1..layer4``, EfficientNet ``features.1..7`` / timm ``blocks.0..6``,
ConvNeXt's downsample+stage pairs) and its transformer layers for ViTs and text encoders.

Each backbone family registers how it cuts its models with :func:`register_cutter` (keyed by the
family name of :mod:`featx.backbones.registry`); :func:`cut_backbone` looks the family up and
returns a :class:`CutModel`::

    prefix(x)                      -> activations at the cut      (frozen; cached by extract)
    tail.embed(activations, mask)  -> the backbone's own embedding (the blocks after the cut)
    prefix + tail.embed            == backbone.model               (a test checks every family)

Cut names: a block name (``"layer4"``), ``"-N"`` for the last N blocks, or ``"auto"`` (the family
default: a CNN's last stage, the last two layers of a transformer). A name the family does not know
is a FeatxError that lists the valid ones.

Imports torch at module level: import it lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featx.errors import FeatxError

logger = logging.getLogger(__name__)

#: The cut used when none is named.
AUTO = "auto"


@dataclass(frozen=True)
class Blocks:
    """What a family's cutter returns for one model: how to run it block by block.

    Attributes
    ----------
    stem : nn.Module
        Input -> input of the first block (``stem(x)``; text: ``stem(ids, mask, type_ids)``).
    blocks : list of (name, module)
        Every block in order; for text each module is called ``block(h, mask)``.
    post : nn.Module
        Output of the last block -> the pooled embedding (text: ``post(h, mask)``).
    kind : {"map", "tokens", "text"}
        What flows between blocks: CNN feature maps (B, C, H, W), ViT tokens (B, T, C), or text
        hidden states (B, T, C) with an attention mask (B, T).
    default_tail : int
        Blocks in the tail when the cut is ``auto``.
    """

    stem: nn.Module
    blocks: list[tuple[str, nn.Module]]
    post: nn.Module
    kind: str
    default_tail: int = 1


#: family name -> cutter(model, backbone) -> Blocks
_CUTTERS: dict[str, Callable[[nn.Module, Any], Blocks]] = {}


def register_cutter(family: str, cutter: Callable[[nn.Module, Any], Blocks]) -> None:
    """Teach featx how to cut the models of a backbone family.

    ``cutter(net, backbone)`` gets the backbone's network (classifier removed; for text the
    ``TextEncoder``) and the backbone, and returns :class:`Blocks`, or raises FeatxError for an
    architecture it does not know. Raises ValueError when the family already has a cutter.

    The blocks must be modules of ``net`` (or wrappers whose first submodule is one and receives
    the block's input): ``--cache-activations`` taps the input of the cut's block in the
    network's own forward pass (:func:`cut_point`).
    """
    if family in _CUTTERS:
        raise ValueError(f"backbone family {family!r} already has a cutter")
    _CUTTERS[family] = cutter


def unregister_cutter(family: str) -> None:
    _CUTTERS.pop(family, None)


# ---------------------------------------------------------------------------------------------
# the cut model


class TailNet(nn.Module):
    """The trainable part: the blocks after the cut, the backbone's pooling, and a new head.

    ``embed(a, mask)`` is the backbone's embedding computed from cut activations ``a``;
    ``forward(a, mask)`` the class logits. For images ``mask`` is None.
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        post: nn.Module,
        head: nn.Module | None,
        kind: str,
        frozen_blocks: int = 0,
    ) -> None:
        super().__init__()
        self.blocks = blocks
        self.post = post
        self.head = head if head is not None else nn.Identity()
        self.kind = kind
        #: leading blocks run but never trained (a cache taken before the tail starts)
        self.frozen_blocks = frozen_blocks

    def embed(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = a
        if self.kind == "text":
            for b in self.blocks:
                x = b(x, mask)
            return self.post(x, mask)
        for b in self.blocks:
            x = b(x)
        return self.post(x)

    def forward(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(a, mask))

    def tail_parameters(self) -> list[nn.Parameter]:
        """The pretrained parameters that fine-tuning trains (blocks after the frozen ones, and
        the pooling/norm layers)."""
        ps = [p for b in list(self.blocks)[self.frozen_blocks :] for p in b.parameters()]
        return ps + list(self.post.parameters())


class _Prefix(nn.Module):
    """stem + the blocks before the cut: input -> activations at the cut (frozen)."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], kind: str) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.kind = kind

    def forward(self, *inputs: Any) -> torch.Tensor:
        if self.kind == "text":
            ids, mask = inputs[0], inputs[1]
            type_ids = inputs[2] if len(inputs) > 2 else None
            x = self.stem(ids, mask, type_ids)
            for b in self.blocks:
                x = b(x, mask)
            return x
        x = self.stem(inputs[0])
        for b in self.blocks:
            x = b(x)
        return x


@dataclass(frozen=True, eq=False)
class CutModel:
    """A backbone cut in two at ``cut``.

    Attributes
    ----------
    cut : str
        Canonical name of the first tail block.
    names : tuple of str
        Every block name of the network (the valid cuts).
    n_tail : int
        Blocks from the cut to the end.
    kind : {"map", "tokens", "text"}
    prefix : nn.Module
        Frozen, eval: input -> activations (B, ...) at the cut.
    blocks : nn.ModuleList
        The tail blocks (pretrained weights).
    post : nn.Module
        The backbone's pooling after the last block.
    dim : int
        Embedding size (what the new head takes).
    """

    cut: str
    names: tuple[str, ...]
    n_tail: int
    kind: str
    prefix: nn.Module
    blocks: nn.ModuleList
    post: nn.Module
    dim: int

    def tail(self, head: nn.Module | None = None, *, train_blocks: int | None = None) -> TailNet:
        """The tail as a :class:`TailNet` with ``head``; ``train_blocks`` (default all) of its
        blocks, counted from the end, are marked trainable by :meth:`TailNet.tail_parameters`."""
        n = self.n_tail if train_blocks is None else int(train_blocks)
        if not 1 <= n <= self.n_tail:
            raise FeatxError(
                f"the cache at {self.cut} holds the input of the last {self.n_tail} block(s); "
                f"tail must be between 1 and {self.n_tail}, not {train_blocks}; re-extract with "
                "an earlier --cache-activations cut to train more blocks"
            )
        return TailNet(self.blocks, self.post, head, self.kind, frozen_blocks=self.n_tail - n)


def cut_names(backbone: Any) -> tuple[str, ...]:
    """The block names of ``backbone`` (valid cuts, plus ``auto`` and ``-N``)."""
    return tuple(name for name, _ in _blocks_of(backbone).blocks)


def resolve_cut(backbone: Any, cut: str | int | None) -> tuple[str, int]:
    """A user's cut -> (canonical block name, index of that block)."""
    b = _blocks_of(backbone)
    return _resolve(b, cut, backbone)


def _resolve(b: Blocks, cut: str | int | None, backbone: Any) -> tuple[str, int]:
    names = [n for n, _ in b.blocks]
    raw = AUTO if cut is None else str(cut).strip()
    if raw.lower() in (AUTO, ""):
        i = len(names) - b.default_tail
        return names[i], i
    try:
        k = int(raw)
    except ValueError:
        k = None
    if k is not None:
        n = -k if k < 0 else k
        if not 1 <= n <= len(names):
            raise FeatxError(
                f"cut {raw} asks for the last {n} blocks but {_name(backbone)} has {len(names)}; "
                f"valid cuts: {_listing(names)}"
            )
        return names[len(names) - n], len(names) - n
    if raw in names:
        return raw, names.index(raw)
    raise FeatxError(
        f"{_name(backbone)} has no cut {raw!r}; valid cuts: {_listing(names)} "
        "(or -N for the last N blocks, or auto)"
    )


def _listing(names: list[str]) -> str:
    return ", ".join(names)


def _name(backbone: Any) -> str:
    return str(getattr(backbone, "name", type(backbone).__name__))


def _net(backbone: Any) -> nn.Module:
    """The network a cutter gets: the classifier-less body (images) or the TextEncoder."""
    model = backbone.model
    if getattr(backbone, "family", None) == "text" or getattr(backbone, "modality", "") == "text":
        return model
    if getattr(backbone, "layer", "pre_logits") != "pre_logits":
        raise FeatxError(
            f"fine-tuning rebuilds the backbone's pooled embedding; load {_name(backbone)} with "
            "its default layer (no --layer/--pool)"
        )
    return getattr(model, "body", model)


def _blocks_of(backbone: Any) -> Blocks:
    _load_builtin_cutters()
    family = getattr(backbone, "family", None)
    cutter = _CUTTERS.get(str(family))
    if cutter is None:
        raise FeatxError(
            f"featx cannot cut backbones of the {family!r} family for fine-tuning; families it "
            f"can cut: {', '.join(sorted(_CUTTERS))}"
        )
    return cutter(_net(backbone), backbone)


@dataclass(frozen=True, eq=False)
class CutPoint:
    """Where a cut lies in a backbone's own forward pass (what ``--cache-activations`` taps).

    Attributes
    ----------
    cut : str
        Canonical name of the first tail block.
    kind : {"map", "tokens", "text"}
    block : nn.Module
        The first tail block as the family's cutter returns it: its input is the activations at
        the cut. It is a module of the network, or a wrapper the cutter built around modules of
        the network whose first submodule receives that input (a ConvNeXt downsample+stage pair,
        a text layer called with its mask).
    """

    cut: str
    kind: str
    block: nn.Module


def cut_point(backbone: Any, cut: str | int | None = AUTO) -> CutPoint:
    """Find ``cut`` in ``backbone`` without splitting it (nothing about the model changes).

    Raises FeatxError as :func:`cut_backbone` does (a family or architecture featx cannot cut,
    an unknown cut, listing the valid ones).
    """
    b = _blocks_of(backbone)
    name, i = _resolve(b, cut, backbone)
    return CutPoint(cut=name, kind=b.kind, block=b.blocks[i][1])


def cut_backbone(backbone: Any, cut: str | int | None = AUTO) -> CutModel:
    """Cut ``backbone`` (a :class:`~featx.backbones.Backbone` or text backbone) at ``cut``.

    The prefix is frozen and in eval mode; the tail blocks keep the pretrained weights.

    Raises
    ------
    FeatxError
        A family or architecture featx cannot cut, or a cut it does not know (the message lists
        the valid ones).
    """
    b = _blocks_of(backbone)
    name, i = _resolve(b, cut, backbone)
    mods = [m for _, m in b.blocks]
    prefix = _Prefix(b.stem, mods[:i], b.kind)
    prefix.eval()
    prefix.requires_grad_(False)
    blocks = nn.ModuleList(mods[i:])
    blocks.requires_grad_(True)
    b.post.requires_grad_(True)
    return CutModel(
        cut=name,
        names=tuple(n for n, _ in b.blocks),
        n_tail=len(mods) - i,
        kind=b.kind,
        prefix=prefix,
        blocks=blocks,
        post=b.post,
        dim=int(backbone.dim),
    )


# ---------------------------------------------------------------------------------------------
# shared pieces


class _Seq(nn.Module):
    """Run named children of a model in order (registered, so ``.to`` and modes reach them)."""

    def __init__(self, *mods: nn.Module) -> None:
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.mods:
            x = m(x)
        return x


class _HeadPost(nn.Module):
    """timm: ``post_modules`` then the model's own ``forward_head(x, pre_logits=True)``.

    The model is held without registering it (its state is not the tail's); the children that
    ``forward_head`` uses are registered, and the model's own ``training`` flag follows ours
    (timm's heads read ``self.training`` for dropout).
    """

    def __init__(self, model: nn.Module, before: list[str], used: list[str]) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.before = nn.ModuleList(getattr(model, n) for n in before)
        self.used = nn.ModuleDict({n: getattr(model, n) for n in used})

    def train(self, mode: bool = True) -> _HeadPost:
        super().train(mode)
        self._model.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.before:
            x = m(x)
        return self._model.forward_head(x, pre_logits=True)


class _Call(nn.Module):
    """A stem that calls ``fn(model, x)`` with the whole model registered (frozen prefix)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


def _unknown(family: str, net: nn.Module, known: list[str]) -> FeatxError:
    return FeatxError(
        f"featx does not know how to cut {type(net).__name__} ({family}) for fine-tuning; "
        f"it cuts {', '.join(known)}"
    )


# ---------------------------------------------------------------------------------------------
# torchvision


def _tv_vit_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m._process_input(x)
    cls = m.class_token.expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + m.encoder.pos_embedding
    return m.encoder.dropout(x)


class _TakeCls(nn.Module):
    def __init__(self, ln: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.ln = ln
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.ln(x)[:, 0])


def _torchvision(net: nn.Module, backbone: Any) -> Blocks:
    cls = type(net).__name__
    if cls == "ResNet":
        stem = _Seq(net.conv1, net.bn1, net.relu, net.maxpool)
        blocks = [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]
        return Blocks(stem, blocks, _Seq(net.avgpool, nn.Flatten(1), net.fc), "map")
    if cls in ("EfficientNet", "MobileNetV2", "MobileNetV3"):
        f = net.features
        n = len(f)
        blocks = [(f"features.{i}", f[i]) for i in range(1, n - 1)]
        post = _Seq(f[n - 1], net.avgpool, nn.Flatten(1), net.classifier)
        return Blocks(f[0], blocks, post, "map")
    if cls == "ConvNeXt":
        f = net.features  # stem, stage, (downsample, stage) x 3
        blocks = [("features.1", f[1])]
        blocks += [(f"features.{i}", nn.Sequential(f[i], f[i + 1])) for i in range(2, len(f), 2)]
        return Blocks(f[0], blocks, _Seq(net.avgpool, net.classifier), "map")
    if cls == "VisionTransformer":
        layers = net.encoder.layers
        blocks = [(f"encoder.layers.{n}", m) for n, m in layers.named_children()]
        post = _TakeCls(net.encoder.ln, net.heads)
        return Blocks(_Call(net, _tv_vit_stem), blocks, post, "tokens", default_tail=2)
    raise _unknown(
        "torchvision", net, ["ResNet", "EfficientNet", "MobileNetV2/V3", "ConvNeXt", "ViT"]
    )


# ---------------------------------------------------------------------------------------------
# timm (and the embedded efficientnet_lite0, which is timm's tf_efficientnet_lite0)


def _timm_vit_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.patch_embed(x)
    x = m._pos_embed(x)
    x = m.patch_drop(x)
    return m.norm_pre(x)


def _others(net: nn.Module, taken: set[str]) -> list[str]:
    return [n for n, _ in net.named_children() if n not in taken]


def _timm(net: nn.Module, backbone: Any) -> Blocks:
    cls = type(net).__name__
    if cls in ("ResNet", "ResNetV2") and hasattr(net, "layer4"):
        stem_names = ["conv1", "bn1", "act1", "maxpool"]
        layers = [f"layer{i}" for i in range(1, 5)]
        stem = _Seq(*(getattr(net, n) for n in stem_names))
        blocks = [(n, getattr(net, n)) for n in layers]
        post = _HeadPost(net, [], _others(net, {*stem_names, *layers}))
        return Blocks(stem, blocks, post, "map")
    if cls == "EfficientNet":
        stem = _Seq(net.conv_stem, net.bn1)
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
        rest = _others(net, {"conv_stem", "bn1", "blocks", "conv_head", "bn2"})
        return Blocks(stem, blocks, _HeadPost(net, ["conv_head", "bn2"], rest), "map")
    if cls == "ConvNeXt":
        blocks = [(f"stages.{i}", s) for i, s in enumerate(net.stages)]
        rest = _others(net, {"stem", "stages", "norm_pre"})
        return Blocks(net.stem, blocks, _HeadPost(net, ["norm_pre"], rest), "map")
    if cls == "VisionTransformer":
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
        rest = _others(net, {"patch_embed", "patch_drop", "norm_pre", "blocks", "norm", "pos_drop"})
        post = _HeadPost(net, ["norm"], rest)
        return Blocks(_Call(net, _timm_vit_stem), blocks, post, "tokens", default_tail=2)
    raise _unknown("timm", net, ["ResNet", "EfficientNet", "ConvNeXt", "VisionTransformer"])


# ---------------------------------------------------------------------------------------------
# text encoders (BERT-like: MiniLM, hf: folders whose model has embeddings + encoder.layer)


def _bidirectional_mask(config: Any, h: torch.Tensor, mask: torch.Tensor) -> Any:
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=h, attention_mask=mask)


class _TextStem(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.embeddings = transformer.embeddings

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kw = {"input_ids": ids}
        if type_ids is not None:
            kw["token_type_ids"] = type_ids
        return self.embeddings(**kw)


class _TextLayer(nn.Module):
    """One encoder layer called as ``layer(h, mask)`` with the model's own mask handling."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__()
        self.layer = layer
        object.__setattr__(self, "_config", config)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.layer(h, _bidirectional_mask(self._config, h, mask))
        return out[0] if isinstance(out, tuple) else out


class _TextPost(nn.Module):
    def __init__(self, pool: str, normalize: bool) -> None:
        super().__init__()
        self.pool = pool
        self.normalize = normalize

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from featx.backbones._text import pool_tokens

        emb = pool_tokens(h.float(), mask, self.pool)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb


def _text(net: nn.Module, backbone: Any) -> Blocks:
    tf = getattr(net, "transformer", None)
    layers = getattr(getattr(tf, "encoder", None), "layer", None)
    if tf is None or layers is None or not hasattr(tf, "embeddings"):
        raise FeatxError(
            f"featx cannot cut {type(tf).__name__} for fine-tuning; it cuts BERT-like encoders "
            "(an embeddings module and encoder.layer, e.g. MiniLM, BERT, RoBERTa)"
        )
    if getattr(net, "layer", None) is not None:
        raise FeatxError("fine-tuning rebuilds the encoder's last layer; load it without --layer")
    cfg = tf.config
    blocks = [(f"layer.{i}", _TextLayer(m, cfg)) for i, m in enumerate(layers)]
    post = _TextPost(net.pool, bool(net.normalize))
    return Blocks(_TextStem(tf), blocks, post, "text", default_tail=2)


_builtins = False


def _load_builtin_cutters() -> None:
    global _builtins
    if _builtins:
        return
    _builtins = True
    for fam, fn in (("torchvision", _torchvision), ("timm", _timm), ("featx", _timm)):
        _CUTTERS.setdefault(fam, fn)
    _CUTTERS.setdefault("text", _text)
