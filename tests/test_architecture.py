"""The package's shape: no import circles, no upward imports, every module in the architecture doc.

The import walk (tools/structure.py) counts every import of a featx module, the ones inside
functions and under ``if TYPE_CHECKING`` too; importing the package ``featx`` itself is an import
of ``featx/__init__.py``. "Upward" is measured against the layer column of the module table in
docs/architecture.md.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Known exceptions: none. (The last circle, options -> ray_engine -> engine/sources ->
# text/sources -> options, and its upward import went with the engines as plug-ins of #18.) A
# circle or upward import listed here must exist, so an entry cannot go stale.
KNOWN_CIRCLES: set[frozenset[str]] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _structure():
    if "featx_tools_structure" not in sys.modules:  # dataclasses look their module up there
        path = REPO / "tools" / "structure.py"
        spec = importlib.util.spec_from_file_location("featx_tools_structure", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["featx_tools_structure"]


def test_every_module_is_in_the_architecture_table():
    st = _structure()
    mods, doc = set(st.modules()), set(st.documented_layers())
    missing, stale = sorted(mods - doc), sorted(doc - mods)
    assert not missing, (
        f"not in the module table of docs/architecture.md: {', '.join(missing)}; add a row "
        "'| LAYER | `path/in/featx.py` | what it owns |' (see the layers listed there)"
    )
    assert not stale, f"docs/architecture.md lists modules that do not exist: {', '.join(stale)}"


def test_no_import_circles():
    st = _structure()
    mods = st.modules()
    found = {frozenset(c) for c in st.cycles(st.graph(st.imports(mods), mods))}
    new = [" <-> ".join(sorted(c)) for c in found - KNOWN_CIRCLES]
    assert not new, "import circles (imports inside functions count): " + "; ".join(new)
    gone = found ^ KNOWN_CIRCLES
    assert not gone, "a known circle is gone: remove it from KNOWN_CIRCLES in this test"


def test_no_upward_imports():
    st = _structure()
    found = st.imports()
    up = st.upward(found, st.documented_layers())
    new = [f"{i.importer} -> {i.imported} (line {i.line})" for i in up]
    new = [n for i, n in zip(up, new, strict=True) if (i.importer, i.imported) not in KNOWN_UPWARD]
    assert not new, (
        "imports of a higher layer (docs/architecture.md): " + "; ".join(new) + "; import from a "
        "lower module, move the code, or pass the value in"
    )
    stale = KNOWN_UPWARD - {(i.importer, i.imported) for i in up}
    assert not stale, f"known upward imports are gone: remove {sorted(stale)} from KNOWN_UPWARD"


def test_the_walk_sees_function_level_imports_and_upward_arrows(tmp_path):
    """The checks above can fail: a circle closed only inside a function, an upward import."""
    st = _structure()
    pkg = tmp_path / "featx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from featx.sub import high\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "high.py").write_text("from featx import low\n")
    (pkg / "other.py").write_text("if True:\n    from featx.sub.high import x\n")
    doc = tmp_path / "architecture.md"
    doc.write_text(
        textwrap.dedent(
            """\
            | layer | module | owns |
            |---|---|---|
            | 0 | `low.py`, `other.py` | x |
            | 1 | `sub/high.py`, `sub/__init__.py`, `__init__.py` | y |
            """
        )
    )
    mods = st.modules(pkg)
    found = st.imports(mods)
    assert any(i.in_function and i.imported == "featx.sub.high" for i in found)
    assert st.cycles(st.graph(found, mods)) == [["featx.low", "featx.sub.high"]]
    layers = st.documented_layers(doc)
    assert layers["featx"] == 1 and layers["featx.sub"] == 1 and layers["featx.low"] == 0
    up = {(i.importer, i.imported) for i in st.upward(found, layers)}
    assert up == {("featx.low", "featx.sub.high"), ("featx.other", "featx.sub.high")}
