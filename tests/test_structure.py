"""The code's shape, read from the source text (nothing imported): no import cycles, no private names
shared across modules, no function longer than a screen.

Imports inside functions count (a cycle hidden in a function is still a cycle); those under
`if TYPE_CHECKING:` do not. A package's `__init__` counts as a module of its own, so importing a name
from a package depends on its `__init__`, which depends on whatever that imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"impsamp": ROOT / "impsamp", "impsamp_cli": ROOT / "cli"}


def _modules(packages: dict[str, Path]) -> dict[str, Path]:
    mods = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(module: str, path: Path, mods: dict[str, Path]):
    """(line, imported module, name or None) for every project import of `module`."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods:
                    yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in mods:  # `from . import x` of a module
                    yield node.lineno, sub, None
                elif target in mods:
                    yield node.lineno, target, a.name


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    mods = _modules(packages)
    return {m: {t for _, t, _ in _imports(m, p, mods) if t != m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def private_imports(packages: dict[str, Path]) -> list[str]:
    """`file:line name from module` for each `_name` (not a dunder) imported from another module."""
    mods = _modules(packages)
    found = []
    for m, path in mods.items():
        for line, target, name in _imports(m, path, mods):
            if name and name.startswith("_") and not name.startswith("__") and target != m:
                found.append(f"{path.relative_to(ROOT) if ROOT in path.parents else path}:{line} {name} from {target}")
    return found


def test_no_import_cycles():
    found = cycles(import_graph(PACKAGES))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_private_name_is_imported_from_another_module():
    found = private_imports(PACKAGES)
    assert not found, "cross-module private imports (make the name public within its package):\n" + "\n".join(found)


MAX_FUNCTION_LINES = 60


def long_functions(packages: dict[str, Path], limit: int) -> list[str]:
    found = []
    for path in _modules(packages).values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(ROOT) if ROOT in path.parents else path}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_functions_are_short_steps():
    """A stage is a few named steps (open, weigh, plan, route, gather, finish), each readable at once."""
    found = long_functions(PACKAGES, MAX_FUNCTION_LINES)
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(found)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The two checks above can fail: a function-level cycle and a private import are both found, and an
    import under TYPE_CHECKING is not a cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import public\n\ndef f():\n    from .b import _private\n")
    (pkg / "b.py").write_text("public = 1\n_private = 2\n\ndef g():\n    from . import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import x\n")
    (pkg / "d.py").write_text("from .c import TYPE_CHECKING\nx = 1\n")
    packages = {"pkg": pkg}
    assert cycles(import_graph(packages)) == [["pkg.a", "pkg.b"]]
    assert [f.split(" ", 1)[1] for f in private_imports(packages)] == ["_private from pkg.b"]
    (pkg / "e.py").write_text("def long():\n" + "    x = 1\n" * 70)
    assert [f.split(" ")[1] for f in long_functions(packages, MAX_FUNCTION_LINES)] == ["long"]
