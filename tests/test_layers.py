"""Data flows one way through the package: no import circles, no import of a higher layer (bonsai_export/layers.py),
no private name imported from another module. Module-level and function-level imports, relative and absolute."""

from __future__ import annotations

import ast
from pathlib import Path

from bonsai_export.layers import LAYERS

ROOT = Path(__file__).resolve().parent.parent / "bonsai_export"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name below the package ("" is the package itself) -> (file, is a package's __init__)."""
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "_native":
            continue
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


MODULES = _modules()


def _owner(dotted: str) -> str:
    """The module of ours that `bonsai_export.<dotted>` names (a name inside it resolves to the module)."""
    while dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _imports(name: str) -> list[tuple[str, str, int]]:
    """(module imported, name imported or "", line) for every import of ours anywhere in `name`'s file."""
    path, is_pkg = MODULES[name]
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    package = [p for p in package if p]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(_owner(a.name.partition(".")[2]), "", node.lineno) for a in node.names
                      if a.name.split(".")[0] == "bonsai_export"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] + ([node.module] if node.module else [])
            elif (node.module or "").split(".")[0] == "bonsai_export":
                base = node.module.split(".")[1:]
            else:
                continue
            for a in node.names:
                full = ".".join(base + [a.name])
                found.append((full, "", node.lineno) if full in MODULES
                             else (_owner(".".join(base)), a.name, node.lineno))
    return [(m, n, line) for m, n, line in found if m != name]


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    label = name or "bonsai_export"
    for rank, members in enumerate(LAYERS.values()):
        if label in members:
            return rank
    raise AssertionError(f"bonsai_export.{name}: in no layer of bonsai_export/layers.py; add it to one")


def test_every_module_has_a_layer():
    named = [m for members in LAYERS.values() for m in members]
    assert len(named) == len(set(named)), "a module is named in two layers"
    assert {m if m else "bonsai_export" for m in MODULES} == set(named)


def test_no_import_of_a_higher_layer():
    upward = [f"{name}:{line} imports {m} ({list(LAYERS)[_layer(m)]} above {list(LAYERS)[_layer(name)]})"
              for name, edges in GRAPH.items() for m, _, line in edges if _layer(m) > _layer(name)]
    assert not upward, "\n".join(upward)


def test_no_private_name_across_modules():
    private = [f"{name}:{line} imports {m}.{n}" for name, edges in GRAPH.items() for m, n, line in edges
               if n.startswith("_") and not n.startswith("__")]
    assert not private, "\n".join(private)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    edges = {name: {m for m, _, _ in found} for name, found in GRAPH.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert not _cycles(), _cycles()


def test_the_parser_sees_every_kind_of_import():
    """The checks above see what they claim to: function-local, relative from a subpackage, `from . import x`,
    absolute."""
    edges = {name: {m for m, _, _ in found} for name, found in GRAPH.items()}
    assert "export.gguf" in edges["export"]  # `from .gguf import write_gguf` inside a function
    assert "artifact" in edges["export.executorch"]  # `from .. import artifact as A`
    assert "kernels" in edges["bench_kernels"]  # `from bonsai_export import kernels as K`
