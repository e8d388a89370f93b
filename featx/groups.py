"""Choosing feature groups for heads: ``--layers NAME,...``, ``each``, ``all``, ``select[:K]``.

A feature set may hold several named groups (:class:`featx.features.FeatureGroup`): the layers
of one multi-layer extraction, the stores of a fusion by key (:mod:`featx.fusion`), and, for a
text store that keeps its texts, the TF-IDF of those texts (the group ``tfidf``, computed when a
head is fitted, on its training rows only). A *layer spec* says which groups a head sees:

=================  ==============================================================================
``None`` / ``""``  the set as it is: every stored group (the one group of a plain store)
``a+b``            groups ``a`` and ``b`` side by side (each standardized, see below)
``a,b``            ``compare``: a choice each; ``fit``/``evaluate`` (one head): as ``a+b``
``each``           one choice per group (``compare``: one leaderboard row per group)
``all``            every group, ``tfidf`` included when the store keeps texts
``select``         every group, then keep the best k (chosen on a validation split of the
                   training rows; Head2Toe-style, :class:`featx.heads.groups.GroupFeatures`)
``select:K``       the K most relevant groups
=================  ==============================================================================

Comma-separated items give several choices (``each,all,select``, ``features,tfidf,all``). A head on more than one group (or on a text group) starts with
the group step (per-group standardization: every group brings the same total variance), which
replaces the head's own ``standardize``.

Examples
--------
>>> import numpy as np
>>> from featx.features import FeatureGroup, FeatureSet
>>> fs = FeatureSet(X=np.zeros((4, 5), np.float32), y=np.array([0, 1, 0, 1]), classes=("a", "b"),
...                 split=None, keys=np.array(list("abcd")),
...                 groups=(FeatureGroup("early", 0, 2), FeatureGroup("late", 2, 5)))
>>> [(label, v.dim) for label, v in choose_groups(fs, "each,all")]
[('early', 2), ('late', 3), ('all', 5)]
>>> choose_groups(fs, "erly")
Traceback (most recent call last):
...
featx.errors.FeatxError: unknown feature group 'erly' (did you mean 'early'?); this set has: early, late; or use each, all, select, select:K
"""  # noqa: E501

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

import numpy as np

from featx.errors import FeatxError
from featx.features import FeatureGroup, FeatureSet

#: Text groups a store that keeps its texts offers, with the TF-IDF parameters of each:
#: ``tfidf`` is the dense reduction (every head takes it), ``tfidf-sparse`` the sparse matrix.
TEXT_GROUPS: dict[str, dict[str, int]] = {"tfidf": {}, "tfidf-sparse": {"dim": 0}}
#: The keywords of a layer spec.
KEYWORDS = ("each", "all", "select")


@dataclass(frozen=True)
class GroupChoice:
    """One way of feeding a head: which groups, whether to select among them, and a label."""

    label: str
    names: tuple[str, ...]
    select: int | None = None


def available_groups(fs: FeatureSet) -> list[str]:
    """Names a layer spec may use on ``fs``: its groups, plus ``tfidf`` when it has texts."""
    names = [g.name for g in fs.feature_groups]
    if fs.texts is not None:
        names += [t for t in TEXT_GROUPS if t not in names]
    return names


def _default_all(fs: FeatureSet) -> list[str]:
    """``all``/``each``: every dense group, plus the dense ``tfidf`` when there are texts."""
    names = [g.name for g in fs.feature_groups if g.kind == "dense"]
    text = [g.name for g in fs.groups if g.kind == "text"]
    if fs.texts is not None and not text:
        text = ["tfidf"]
    return names + text


def _unknown(name: str, valid: list[str]) -> FeatxError:
    lower = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.5)
    hint = f" (did you mean {lower[close[0]]!r}?)" if close else ""
    what = ", ".join(valid) if valid else "no groups"
    if name in TEXT_GROUPS:
        return FeatxError(
            f"feature group {name!r} needs the texts, and this store keeps none: an image store "
            "has no texts; a text store extracted before featx kept them gains them when the "
            "same 'featx extract' runs again (no re-embedding)"
        )
    return FeatxError(
        f"unknown feature group {name!r}{hint}; this set has: {what}; "
        f"or use {', '.join(KEYWORDS)}, select:K"
    )


def parse_layers(fs: FeatureSet, spec: str | None, *, join: bool = False) -> list[GroupChoice]:
    """The choices a layer spec makes on ``fs`` (see the module docstring).

    ``join``: plain names separated by commas form one choice together (``fit``, which trains
    one head); otherwise each is a choice of its own (``compare``: a row each).
    """
    if spec is None or not str(spec).strip():
        return [GroupChoice("", tuple(g.name for g in fs.feature_groups))]
    valid = available_groups(fs)
    choices: list[GroupChoice] = []
    loose: list[str] = []
    for raw in str(spec).split(","):
        tok = raw.strip()
        if not tok:
            continue
        low = tok.lower()
        if low == "each":
            choices += [GroupChoice(n, (n,)) for n in _default_all(fs)]
        elif low == "all":
            choices.append(GroupChoice("all", tuple(_default_all(fs))))
        elif low == "select" or low.startswith("select:"):
            _, _, k = low.partition(":")
            if k and not (k.isdigit() and int(k) >= 1):
                raise FeatxError(f"select:K needs a whole number K >= 1; got {tok!r}")
            choices.append(GroupChoice(low, tuple(_default_all(fs)), int(k) if k else 0))
        else:
            names = [p.strip() for p in tok.split("+") if p.strip()]
            for n in names:
                if n not in valid:
                    raise _unknown(n, valid)
            if "+" in tok or not join:
                choices.append(GroupChoice("+".join(names), tuple(names)))
            else:
                loose += names
    if loose:
        choices.insert(0, GroupChoice("+".join(loose), tuple(dict.fromkeys(loose))))
    seen: set[tuple[tuple[str, ...], int | None]] = set()
    out = []
    for c in choices:
        if (c.names, c.select) not in seen:
            seen.add((c.names, c.select))
            out.append(c)
    if not out:
        raise FeatxError(f"--layers {spec!r} names no groups; use e.g. each, all or a group name")
    return out


def view(fs: FeatureSet, choice: GroupChoice) -> FeatureSet:
    """``fs`` restricted to the groups of ``choice``, in its order, groups rebased."""
    by_name = {g.name: g for g in fs.feature_groups}
    cols: list[np.ndarray] = []
    groups: list[FeatureGroup] = []
    pos = 0
    uses_text = False
    for n in choice.names:
        g = by_name.get(n)
        if g is None and n in TEXT_GROUPS:
            g = FeatureGroup(n, 0, 0, kind="text", source="texts")
        if g is None:
            raise _unknown(n, available_groups(fs))
        if g.kind == "text":
            uses_text = True
            groups.append(replace(g, start=0, stop=0))
            continue
        cols.append(np.arange(g.start, g.stop))
        groups.append(replace(g, start=pos, stop=pos + g.dim))
        pos += g.dim
    idx = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    if len(idx) == fs.dim and np.array_equal(idx, np.arange(fs.dim)):
        X = fs.X  # every column in order: no copy
    else:
        X = np.ascontiguousarray(fs.X[:, idx])
    if uses_text:  # text groups sit after the dense ones, with no columns of their own
        groups = [g for g in groups if g.kind == "dense"] + [
            replace(g, start=pos, stop=pos) for g in groups if g.kind == "text"
        ]
    plain = len(groups) == 1 and groups[0].kind == "dense" and groups[0].name == "features"
    return replace(
        fs,
        X=X,
        groups=() if plain and not fs.groups else tuple(groups),
        texts=fs.texts if uses_text else None,
        select=choice.select,
    )


def choose_groups(
    fs: FeatureSet, spec: str | None, *, join: bool = False
) -> list[tuple[str, FeatureSet]]:
    """``(label, view)`` for every choice of ``spec`` on ``fs``; label "" for no spec."""
    if spec is None or not str(spec).strip():
        return [("", fs)]
    return [(c.label, view(fs, c)) for c in parse_layers(fs, spec, join=join)]


def one_choice(fs: FeatureSet, spec: str | None, what: str = "fit") -> FeatureSet:
    """The single view a layer spec makes (``fit``/``predict`` train one head)."""
    choices = choose_groups(fs, spec, join=True)
    if len(choices) != 1:
        labels = ", ".join(label for label, _ in choices)
        raise FeatxError(
            f"{what} trains one head, but --layers {spec!r} makes {len(choices)} choices "
            f"({labels}); give one (e.g. all, select or a+b), or use featx compare"
        )
    return choices[0][1]


def needs_group_step(fs: FeatureSet) -> bool:
    """Whether a head on ``fs`` starts with the group step (several groups, texts, selection)."""
    return len(fs.groups) > 1 or fs.uses_texts or fs.select is not None
