"""Structure metrics of the featx package, read from its source with ``ast`` (nothing imported).

Usage: ``python3 tools/structure_metrics.py [PACKAGE_DIR] [--functions N] [--json]``

* modules: the ``.py`` files of the package.
* import layers: over every import (inside functions and ``if TYPE_CHECKING`` blocks included,
  as ``/work/shared/hooks/import_cycles.py`` counts them): layer 0 imports nothing of the
  package, every other module sits one above the highest module it imports; the modules of a
  circle share one layer.
* circles: groups of modules that reach each other through imports (a package ``__init__`` and
  one submodule alone are not reported, as the hook does not).
* upward imports: the imports inside a circle that run back up: from a module to one that sits
  on the same or a higher layer of the graph Python sees (module-level imports only). Zero
  exactly when there are no circles.
* imports inside functions: ``import`` statements of the package below module level.
* longest functions: by line count (decorators excluded), over the whole package.
"""

from __future__ import annotations

import ast
import json
import pathlib
import sys


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    mods = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(mod: str, path: pathlib.Path, pkg: str, mods: dict) -> list[tuple[str, bool, int]]:
    """(target module, at module level, line) of each import of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, bool, int]] = []

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    if child.level:
                        anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                        anchor = anchor[: len(anchor) - (child.level - 1)]
                        base = ".".join(anchor + ([base] if base else []))
                    targets = [f"{base}.{a.name}" for a in child.names]
                for t in targets:
                    if t.split(".")[0] != pkg:
                        continue
                    r = resolve(t)
                    if r and r != mod:
                        out.append((r, top, child.lineno))
                continue
            visit(child, top)

    visit(tree, True)
    return out


def _sccs(edges: dict[str, set[str]]) -> list[list[str]]:
    sys.setrecursionlimit(10000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """Longest import path below each module, circles condensed."""
    comp_of = {m: tuple(c) for c in _sccs(edges) for m in c}
    layer: dict[tuple, int] = {}

    def of(comp: tuple) -> int:
        if comp not in layer:
            layer[comp] = -1  # guards against re-entry; the condensation has no circle
            below = {comp_of[t] for c in comp for t in edges[c]} - {comp}
            layer[comp] = 1 + max((of(b) for b in below), default=-1)
        return layer[comp]

    return {m: of(comp_of[m]) for m in edges}


def measure(root: pathlib.Path, n_functions: int = 10) -> dict:
    pkg = root.name
    mods = _modules(root)
    imports = {m: _imports(m, p, pkg, mods) for m, p in mods.items()}
    top = {m: {t for t, at_top, _ in imps if at_top} for m, imps in imports.items()}
    every = {m: {t for t, _, _ in imps} for m, imps in imports.items()}
    top_layer = _layers(top)
    layer = _layers(every)
    comps = _sccs(every)
    comp_of = {m: tuple(c) for c in comps for m in c}
    upward = []
    for m, imps in imports.items():
        for t, _at_top, line in imps:
            if comp_of[t] == comp_of[m] and top_layer[t] >= top_layer[m]:
                upward.append(f"{m}:{line} -> {t}")
    circles = [c for c in comps if len(c) > 1 and not (len(c) == 2 and pkg in c)]
    inside = sum(1 for imps in imports.values() for _, at_top, _ in imps if not at_top)
    funcs = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                funcs.append((node.end_lineno - node.lineno + 1, f"{m}.{node.name}"))
    funcs.sort(reverse=True)
    return {
        "modules": len(mods),
        "layers": 1 + max(layer.values()),
        "upward_imports": len(upward),
        "upward": sorted(upward),
        "circles": len(circles),
        "circle_modules": circles,
        "imports_inside_functions": inside,
        "functions_80_lines_or_more": sum(1 for n, _ in funcs if n >= 80),
        "longest_functions": [f"{name} {n}" for n, name in funcs[:n_functions]],
    }


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    root = pathlib.Path(args[0] if args else "featx")
    n = 10
    if "--functions" in argv:
        n = int(argv[argv.index("--functions") + 1])
        args = [a for a in args if a != str(n)]
        root = pathlib.Path(args[0] if args else "featx")
    out = measure(root, n)
    if "--json" in argv:
        print(json.dumps(out, indent=2))
        return 0
    for k, v in out.items():
        if isinstance(v, list):
            print(f"{k}:")
            for x in v:
                print(f"  {x}")
        else:
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
