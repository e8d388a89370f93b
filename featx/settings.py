"""Where featx keeps things: the cache folder (stores, head bundles, built-in datasets) and the
folder of downloadable datasets, resolved the same way from every working directory.

Each location comes from the first of:

1. the environment: ``FEATX_CACHE_DIR`` / ``FEATX_DATA_DIR``;
2. the project setting: the nearest ``featx.toml`` (top-level keys) or ``pyproject.toml`` with a
   ``[tool.featx]`` table, found by walking up from the working directory as git finds
   ``.git``; a relative path in it is relative to that file's folder, so every command run
   anywhere inside the project uses the same folder;
3. the user's platform folders (``platformdirs``): ``~/.cache/featx`` and
   ``~/.local/share/featx`` on Linux, ``~/Library/Caches/featx`` on macOS, ``%LOCALAPPDATA%``
   on Windows.

A project setting looks like this::

    # pyproject.toml                      # or featx.toml, without the [tool.featx] line
    [tool.featx]
    cache_dir = "cache"                   # stores, head bundles, built-in datasets
    data_dir = "data"                     # torchvision datasets (--root overrides)

``featx info`` without an argument prints the resolved folders and where each came from.

Examples
--------
>>> from featx.settings import cache_dir, resolve
>>> cache_dir()  # doctest: +SKIP
PosixPath('/home/me/project/cache')
>>> resolve().cache_dir_from  # doctest: +SKIP
'/home/me/project/pyproject.toml [tool.featx] cache_dir'
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.errors import FeatxError

__all__ = [
    "KEYS",
    "Settings",
    "cache_dir",
    "data_dir",
    "find_project_settings",
    "locations",
    "resolve",
    "torch_hub_dir",
]

#: The keys a project setting may hold, with what they set.
KEYS = {
    "cache_dir": "stores, head bundles and built-in datasets",
    "data_dir": "torchvision datasets (featx extract --root overrides)",
}
_ENV = {"cache_dir": "FEATX_CACHE_DIR", "data_dir": "FEATX_DATA_DIR"}


@dataclass(frozen=True)
class Settings:
    """Resolved locations, each with where it came from.

    Attributes
    ----------
    cache_dir, data_dir : Path
        Absolute folders (they need not exist yet).
    cache_dir_from, data_dir_from : str
        ``"FEATX_CACHE_DIR"``, ``"<file> [tool.featx] cache_dir"``, ``"<file> cache_dir"`` or
        ``"user cache folder"`` / ``"user data folder"``.
    project_file : Path or None
        The ``featx.toml`` or ``pyproject.toml`` that holds the project setting, if any.
    """

    cache_dir: Path
    cache_dir_from: str
    data_dir: Path
    data_dir_from: str
    project_file: Path | None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FeatxError(f"cannot read the featx setting in {path}: {exc}") from None


def find_project_settings(start: str | os.PathLike | None = None) -> tuple[Path, dict] | None:
    """The nearest project setting at or above ``start`` (default: the working directory).

    Returns ``(file, table)`` for the first folder, walking up, that has a ``featx.toml`` or a
    ``pyproject.toml`` with a ``[tool.featx]`` table (``featx.toml`` wins within one folder);
    None when there is none up to the file-system root.
    """
    here = Path(start if start is not None else os.getcwd()).absolute()
    for folder in (here, *here.parents):
        f = folder / "featx.toml"
        if f.is_file():
            return f, _check(f, _read_toml(f), "")
        p = folder / "pyproject.toml"
        # parse only a pyproject.toml that mentions featx: a broken unrelated one is not ours
        if p.is_file() and "featx" in p.read_text(encoding="utf-8", errors="replace"):
            table = _read_toml(p).get("tool", {}).get("featx")
            if table is not None:
                return p, _check(p, table, "[tool.featx] ")
    return None


def _check(path: Path, table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise FeatxError(f"{path}: {where or 'the file'} must be a table of settings")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise FeatxError(
            f"{path}: unknown featx setting {where}{unknown[0]!r}; valid keys: {', '.join(KEYS)}"
        )
    for k, v in table.items():
        if not isinstance(v, str) or not v.strip():
            raise FeatxError(f"{path}: {where}{k} must be a folder path (a non-empty string)")
    return dict(table)


def _user_dir(key: str) -> Path:
    import platformdirs

    if key == "cache_dir":
        return Path(platformdirs.user_cache_dir("featx", appauthor=False))
    return Path(platformdirs.user_data_dir("featx", appauthor=False))


def resolve(start: str | os.PathLike | None = None) -> Settings:
    """Resolve every location (environment, then project setting, then user folders)."""
    found = find_project_settings(start)
    out: dict[str, Any] = {"project_file": found[0] if found else None}
    for key, env in _ENV.items():
        if os.environ.get(env):
            path, origin = Path(os.environ[env]).expanduser(), env
        elif found and key in found[1]:
            file, table = found
            path = Path(table[key]).expanduser()
            if not path.is_absolute():
                path = file.parent / path
            tool = "[tool.featx] " if file.name == "pyproject.toml" else ""
            origin = f"{file} {tool}{key}"
        else:
            path = _user_dir(key)
            origin = "user cache folder" if key == "cache_dir" else "user data folder"
        out[key] = Path(os.path.normpath(path.absolute()))
        out[f"{key}_from"] = origin
    return Settings(**out)


def cache_dir() -> Path:
    """The folder under which featx caches stores, head bundles and built-in datasets."""
    return resolve().cache_dir


def data_dir() -> Path:
    """The folder under which torchvision datasets live (``featx extract --root`` overrides)."""
    return resolve().data_dir


def _xdg_cache_home() -> Path:
    """``$XDG_CACHE_HOME`` or ``~/.cache``: where torch and Hugging Face keep their caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")).expanduser()


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch (checkpoints are in its ``checkpoints``)."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
    return _xdg_cache_home() / "torch" / "hub"


def _hf_hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return _xdg_cache_home() / "huggingface" / "hub"


def locations() -> dict[str, Any]:
    """Where everything goes, as JSON-able data (what ``featx info`` prints with no argument)."""
    s = resolve()
    stores = sorted(s.cache_dir.glob("*.h5")) if s.cache_dir.is_dir() else []
    return {
        "cache_dir": str(s.cache_dir),
        "cache_dir_from": s.cache_dir_from,
        "project_setting": str(s.project_file) if s.project_file else None,
        "stores": len(stores),
        "stores_bytes": sum(p.stat().st_size for p in stores),
        "heads_dir": str(s.cache_dir / "heads"),
        "datasets_dir": str(s.cache_dir / "datasets"),
        "data_dir": str(s.data_dir),
        "data_dir_from": s.data_dir_from,
        "torch_weights_dir": str(torch_hub_dir() / "checkpoints"),
        "huggingface_dir": str(_hf_hub_dir()),
    }
