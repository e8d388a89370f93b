"""Head parameters: how ``--param key=value`` strings become typed values.

Examples
--------
>>> Param("floats", "values of C to sweep").coerce("0.1,1,10", "parameter 'Cs'")
(0.1, 1.0, 10.0)
>>> parse_params(["C=0.1", "hidden_sizes=256,128"])
{'C': '0.1', 'hidden_sizes': '256,128'}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.errors import FeatxError

__all__ = ["FROM_ESTIMATOR", "Param", "parse_params"]

_KINDS = ("float", "int", "bool", "str", "floats", "ints", "gamma")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class _FromEstimator:
    """Marks a :class:`Param` whose default is read from the head's estimator signature."""

    def __repr__(self) -> str:
        return "FROM_ESTIMATOR"


#: The default of a :class:`Param` that takes its default from the estimator's signature.
FROM_ESTIMATOR: Any = _FromEstimator()


@dataclass(frozen=True)
class Param:
    """One parameter a head accepts from ``--param key=value``.

    Parameters
    ----------
    kind : {"float", "int", "bool", "str", "floats", "ints", "gamma"}
        How a string value is read: ``"floats"``/``"ints"`` are comma-separated lists,
        ``"gamma"`` is a float or ``"scale"``.
    help : str
    choices : tuple of str, optional
        Allowed values of a ``"str"`` parameter.
    default : Any, default=FROM_ESTIMATOR
        Filled in from the signature of the head's estimator (or builder) when the head is looked
        up, so a default is written once, where the estimator defines it. None there means "the
        head's own choice (often: a sweep)".
    """

    kind: str
    help: str
    choices: tuple[str, ...] | None = None
    default: Any = FROM_ESTIMATOR

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Param kind must be one of {_KINDS}")
        if not isinstance(self.help, str):
            raise ValueError(
                "Param(kind, help, choices=None, default=FROM_ESTIMATOR): help is a str"
            )
        if self.choices is not None and not isinstance(self.choices, tuple):
            raise ValueError("Param choices must be a tuple of str")

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` (a CLI string or a Python value) as this parameter's type."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            if self.kind == "ints":  # hidden_sizes=none -> no hidden layer
                return ()
            if self.default is None:
                return None
            raise FeatxError(f"{where} needs a value")
        k = self.kind
        try:
            if k == "float":
                return _as_float(value)
            if k == "int":
                return _positive(_as_int(value), where)
            if k == "bool":
                return _as_bool(value)
            if k == "gamma":
                if isinstance(value, str) and value.strip().lower() in ("scale", "auto"):
                    return value.strip().lower()
                return _as_float(value)
            if k in ("floats", "ints"):
                items = value.split(",") if isinstance(value, str) else value
                if np.isscalar(items):
                    items = [items]
                out = tuple((_as_float if k == "floats" else _as_int)(v) for v in items)
                if not out:
                    raise ValueError
                if k == "ints":
                    for v in out:
                        _positive(v, where)
                return out
            # "str"
            if not isinstance(value, str):
                raise ValueError
            v = value.strip()
            if self.choices is not None and v not in self.choices:
                raise FeatxError(f"{where} must be one of {', '.join(self.choices)}; got {v!r}")
            return v
        except (ValueError, TypeError):
            what = {
                "float": "a number",
                "int": "an integer",
                "bool": "true or false",
                "gamma": "a number or 'scale'",
                "floats": "comma-separated numbers (e.g. 0.1,1,10)",
                "ints": "comma-separated integers (e.g. 256,128)",
                "str": "a string",
            }[k]
            raise FeatxError(f"{where} must be {what}; got {value!r}") from None


def _as_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    f = float(v.strip()) if isinstance(v, str) else float(v)
    if not math.isfinite(f):
        raise ValueError
    return f


def _positive(v: int, where: str) -> int:
    """Every integer a head takes is a count (iterations, neighbours, widths, landmarks)."""
    if v < 1:
        raise FeatxError(f"{where} must be a positive integer (a count); got {v}")
    return v


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, str):
        return int(v.strip())
    if isinstance(v, float | np.floating):
        if not float(v).is_integer():
            raise ValueError
        return int(v)
    if isinstance(v, int | np.integer):
        return int(v)
    raise ValueError


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """Turn CLI ``key=value`` strings into a dict (values stay strings; heads coerce them).

    Examples
    --------
    >>> parse_params(["C=0.1", "hidden_sizes=256,128"])
    {'C': '0.1', 'hidden_sizes': '256,128'}
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FeatxError(f"--param {item!r} is not key=value; write e.g. --param C=0.1")
        if key in out:
            raise FeatxError(f"--param {key} is given twice; give each parameter once")
        out[key] = value.strip()
    return out
