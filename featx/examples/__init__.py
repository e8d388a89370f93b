"""The demo pipelines and their example data, shipped inside the featx package.

``featx demo`` runs :data:`DEMOS` ``["digits"]`` (no network, no extra), ``featx demo text`` the
support-ticket text pipeline (the ``text`` extra); ``featx demo --files DIR`` copies the files
into DIR to edit and run with ``featx run``. The files are package data: a pip-installed featx
has them beside this module.

Examples
--------
>>> from featx.examples import demo_path
>>> demo_path("digits").name
'digits.toml'
"""

from __future__ import annotations

import shutil
from pathlib import Path

from featx.errors import FeatxError

__all__ = ["DEMOS", "FILES", "HERE", "REPORTS", "copy_files", "demo_path"]

HERE = Path(__file__).resolve().parent
#: demo name -> pipeline file in this folder
DEMOS = {"digits": "digits.toml", "text": "text_tickets.toml"}
#: demo name -> its report folder under ./reports (``featx demo --report`` overrides)
REPORTS = {"digits": "demo", "text": "text_tickets"}
#: every shipped file (pipelines and the data they name)
FILES = ("digits.toml", "text_tickets.toml", "support_tickets.csv", "README.md")


def demo_path(name: str) -> Path:
    """The pipeline file of a demo (``"digits"`` or ``"text"``)."""
    try:
        path = HERE / DEMOS[name]
    except KeyError:
        raise FeatxError(f"no demo {name!r}; choose one of: {', '.join(DEMOS)}") from None
    if not path.is_file():
        raise FeatxError(f"{path} is missing from this featx installation; reinstall featx")
    return path


def copy_files(dest: str | Path) -> list[Path]:
    """Copy the demo pipelines and their data into ``dest``; refuses to overwrite a file."""
    out = Path(dest)
    targets = [out / f for f in FILES]
    clash = [t for t in targets if t.exists()]
    if clash:
        raise FeatxError(f"{clash[0]} already exists; choose an empty folder for --files")
    out.mkdir(parents=True, exist_ok=True)
    for f, t in zip(FILES, targets, strict=True):
        shutil.copyfile(HERE / f, t)
    return targets
