"""Measure the package's structure: modules, import layers, circles, upward imports, long functions.

Usage: python tools/structure.py [--json]   (from the repository root)

Every ``import``/``from ... import`` of a featx module counts, the ones inside functions too; a
module that imports the package ``featx`` itself (its ``__init__``) imports that module. The layer
order that "upward" is measured against is the ``layer`` column of the module table in
docs/architecture.md (a module may import modules of its own layer or lower ones).
tests/test_architecture.py runs the same functions and fails on a circle or an upward import.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "featx"


@dataclass(frozen=True)
class Import:
    """One import of a featx module by another: where it is and whether it runs at import time."""

    importer: str
    imported: str
    line: int
    in_function: bool


def modules(root: Path = REPO / PKG) -> dict[str, Path]:
    """Dotted module name -> file, packages under their own name (``featx.store``)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports(mods: dict[str, Path] | None = None) -> list[Import]:
    """Every import of one featx module by another, inside functions included."""
    mods = modules() if mods is None else mods
    found: list[Import] = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        is_pkg = p.name == "__init__.py"

        def visit(node: ast.AST, in_func: bool, m: str = m, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                deeper = in_func or isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
                )
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        anchor = m.split(".") if is_pkg else m.split(".")[:-1]
                        anchor = anchor[: len(anchor) - (child.level - 1)]
                        base = ".".join(anchor + ([base] if base else []))
                    # "from featx.store import writer" imports the submodule when there is one
                    targets = [
                        f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                        for a in child.names
                    ]
                for t in dict.fromkeys(targets):
                    if t.split(".")[0] != PKG:
                        continue
                    r = _resolve(t, mods)
                    if r and r != m:
                        found.append(Import(m, r, child.lineno, in_func))
                visit(child, deeper)

        visit(tree, False)
    return found


def graph(found: list[Import], mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for i in found:
        edges[i.importer].add(i.imported)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted.

    The package importing its own submodules (the lazy table in ``featx/__init__.py``) is an
    arrow like any other: a submodule that imports ``featx`` back closes a circle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def depth_layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """Layer of each module by the longest import chain below it (a circle counts as one node)."""
    comp_of: dict[str, str] = {}
    for c in cycles(edges):
        for m in c:
            comp_of[m] = c[0]
    memo: dict[str, int] = {}

    def node(m: str) -> str:
        return comp_of.get(m, m)

    members: dict[str, list[str]] = {}
    for m in edges:
        members.setdefault(node(m), []).append(m)

    def depth(n: str) -> int:
        if n not in memo:
            memo[n] = -1
            below = {node(w) for m in members[n] for w in edges[m]} - {n}
            memo[n] = 1 + max((depth(b) for b in below), default=-1)
        return memo[n]

    return {m: depth(node(m)) for m in edges}


_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|")


def documented_layers(doc: Path = REPO / "docs" / "architecture.md") -> dict[str, int]:
    """``featx.x -> layer`` from the table of docs/architecture.md headed ``| layer | module |``.

    Each row names its modules in backquotes, as paths inside ``featx/`` (``store/writer.py``;
    a package as its ``__init__.py``).
    """
    out: dict[str, int] = {}
    inside = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.replace(" ", "").startswith("|layer|module|"):
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        m = _ROW.match(line) if inside else None
        if not m:
            continue
        for name in re.findall(r"`([^`]+)`", m.group(2)):
            dotted = name.removesuffix(".py").replace("/", ".").removesuffix("__init__")
            out[".".join(p for p in (PKG, *dotted.split(".")) if p)] = int(m.group(1))
    return out


def upward(found: list[Import], layers: dict[str, int]) -> list[Import]:
    """Imports of a module on a higher documented layer than the importer's."""
    return [
        i
        for i in found
        if i.importer in layers and i.imported in layers and layers[i.imported] > layers[i.importer]
    ]


def long_functions(mods: dict[str, Path], limit: int = 80) -> list[tuple[int, str]]:
    """(lines, module:function) for every function of ``limit`` lines or more, longest first."""
    out = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n >= limit:
                    out.append((n, f"{m}:{node.name}"))
    return sorted(out, reverse=True)


def measure() -> dict:
    mods = modules()
    found = imports(mods)
    edges = graph(found, mods)
    depth = depth_layers(edges)
    doc = documented_layers()
    up = upward(found, doc) if doc else []
    return {
        "modules": len(mods),
        "module_lines": {m: len(p.read_text().splitlines()) for m, p in mods.items()},
        "depth_layers": 1 + max(depth.values()),
        "imports": len(found),
        "imports_in_functions": sum(i.in_function for i in found),
        "cycles": cycles(edges),
        "documented_layers": len(set(doc.values())),
        "undocumented_modules": sorted(set(mods) - set(doc)),
        "upward_imports": [f"{i.importer} -> {i.imported} (line {i.line})" for i in up],
        "long_functions": long_functions(mods),
    }


if __name__ == "__main__":
    r = measure()
    if "--json" in sys.argv:
        print(json.dumps(r, indent=1))
    else:
        big = sorted(r["module_lines"].items(), key=lambda kv: -kv[1])[:5]
        print(f"modules {r['modules']}, import layers (longest chain) {r['depth_layers']}")
        print(f"imports {r['imports']} ({r['imports_in_functions']} inside functions)")
        print(f"circles {len(r['cycles'])}: " + "; ".join(" <-> ".join(c) for c in r["cycles"]))
        print(
            f"documented layers {r['documented_layers']}, modules not in the doc table "
            f"{len(r['undocumented_modules'])}: {', '.join(r['undocumented_modules'])}"
        )
        print(f"upward imports {len(r['upward_imports'])}: " + "; ".join(r["upward_imports"]))
        print(
            f"functions >= 80 lines {len(r['long_functions'])}: "
            + ", ".join(f"{n} {f}" for n, f in r["long_functions"][:8])
        )
        print("largest modules: " + ", ".join(f"{m} {n}" for m, n in big))
