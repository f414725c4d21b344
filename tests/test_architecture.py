"""Structural rules for ``crdt_kv/``: no import cycles between modules, no oversized modules.

Why: a cycle means neither module can be understood, tested or imported alone (and the
order the interpreter happens to load them in decides whether a name exists yet); a
function-local or ``TYPE_CHECKING`` import only hides the cycle from the interpreter, not
from the reader, so those count too. Huge modules are where cycles and mixed jobs grow.

The graph is built from source with :mod:`ast`, never by importing, so a broken module
cannot hide its edges. An import of ``crdt_kv.a.b`` is an edge to that module only (the
parent packages Python also initialises are not counted: every submodule would otherwise
sit in a cycle with the ``__init__`` that re-exports it).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import crdt_kv

PKG_DIR = pathlib.Path(crdt_kv.__file__).parent
PKG = "crdt_kv"
MAX_LINES = 600


def module_files(root: pathlib.Path = PKG_DIR, package: str = PKG) -> dict[str, pathlib.Path]:
    """Dotted module name -> source file, for every ``.py`` under ``root``."""
    out: dict[str, pathlib.Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a (possibly relative) ``from ... import`` refers to."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def imports_of(module: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its source.

    Top-level, function-local and ``if TYPE_CHECKING:`` imports all count (``ast.walk``
    visits every statement). ``from pkg.x import name`` is an edge to ``pkg.x``, and to
    ``pkg.x.name`` as well when that is a module.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != module}


def import_graph(root: pathlib.Path = PKG_DIR, package: str = PKG) -> dict[str, set[str]]:
    """Every module of the package mapped to the package modules it imports."""
    files = module_files(root, package)
    names = set(files)
    return {name: imports_of(name, path, names) for name, path in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit); components sorted by name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                out.append(sorted(comp))
    return sorted(out)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module."""
    return [c for c in strongly_connected(graph) if len(c) > 1]


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    """A component and the edges inside it, one ``a -> b`` per line."""
    members = set(component)
    edges = [f"  {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "cycle: " + ", ".join(component) + "\n" + "\n".join(edges)


def oversized(limit: int = MAX_LINES) -> dict[str, int]:
    """Module file (relative to the repository) -> line count, for those over ``limit``."""
    out: dict[str, int] = {}
    for path in module_files().values():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out[str(path.relative_to(PKG_DIR.parent))] = n
    return out


def oversized_c(limit: int = MAX_LINES) -> dict[str, int]:
    """C source or header (relative to the repository) -> line count, over ``limit``.

    The compiled extension (``crdt_kv/_speedups_c/``) is held to the modules' size: it was
    one 1,034-line file before it was split by job.
    """
    out: dict[str, int] = {}
    for path in sorted([*PKG_DIR.rglob("*.c"), *PKG_DIR.rglob("*.h")]):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out[str(path.relative_to(PKG_DIR.parent))] = n
    return out


# --- the rules ---------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    report = "\n".join(describe(graph, c) for c in found)
    print(report)
    assert not found, report


def test_no_module_over_max_lines() -> None:
    big = oversized()
    print(big)
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_no_c_source_over_max_lines() -> None:
    assert list(PKG_DIR.rglob("*.c")), "no C sources under crdt_kv/: nothing was checked"
    big = oversized_c()
    assert not big, f"C sources over {MAX_LINES} lines: {big}"


# --- the checker itself ------------------------------------------------------------------


def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text, encoding="utf-8")
    return root


def test_graph_counts_every_kind_of_import(tmp_path: pathlib.Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "from pkg.sub import thing\n",
            "a.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.b import B\n",
            "b.py": "def f():\n    from . import c\n",
            "c.py": "import pkg.sub.deep\n",
            "sub/__init__.py": "from .deep import x\nthing = 1\n",
            "sub/deep.py": "from ..a import y\nfrom pkg import sub\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph == {
        "pkg": {"pkg.sub"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg", "pkg.c"},
        "pkg.c": {"pkg.sub.deep"},
        "pkg.sub": {"pkg.sub.deep"},
        "pkg.sub.deep": {"pkg.a", "pkg", "pkg.sub"},
    }
    found = cycles(graph)
    assert found == [["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.deep"]]
    assert "pkg.a -> pkg.b" in describe(graph, found[0])


def test_acyclic_graph_has_no_cycles() -> None:
    graph = {"x": {"y", "z"}, "y": {"z"}, "z": set()}
    assert cycles(graph) == []
    assert strongly_connected(graph) == [["x"], ["y"], ["z"]]


def test_two_separate_cycles_are_reported_apart() -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "a"}}
    assert cycles(graph) == [["a", "b"], ["c", "d"]]


def test_no_merge_conflict_markers_are_committed() -> None:
    """A merge once left conflict markers in docs/simulation.md for two releases."""
    root = pathlib.Path(__file__).resolve().parent.parent
    bad = []
    for top in ("crdt_kv", "tests", "docs", "spec", "bench"):
        for path in (root / top).rglob("*"):
            if path.suffix not in {".py", ".md", ".json", ".cddl", ".toml"}:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.startswith(("<<<<<<< ", ">>>>>>> ")):
                    bad.append(f"{path.relative_to(root)}:{n}")
    assert not bad, bad
