"""The sans-I/O core must not import sockets, threads, trio or time (it would make the
deterministic simulator lie). This scans the core modules' import statements."""

from __future__ import annotations

import ast
import pathlib

import crdt_kv

PKG = pathlib.Path(crdt_kv.__file__).parent
CORE = ["hlc.py", "version.py", "store.py", "codec.py", "errors.py", "config.py"]
CORE_DIRS = ["protocol", "backends", "sim"]
FORBIDDEN = {"socket", "trio", "threading", "time", "asyncio", "selectors"}


def _core_files() -> list[pathlib.Path]:
    files = [PKG / name for name in CORE]
    for d in CORE_DIRS:
        files.extend(sorted((PKG / d).glob("*.py")))
    return [f for f in files if f.exists()]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_files_exist() -> None:
    assert len(_core_files()) >= len(CORE)


def test_core_imports_no_io() -> None:
    bad = {str(f.relative_to(PKG)): _imports(f) & FORBIDDEN for f in _core_files()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"core modules import I/O modules: {bad}"


def test_scanner_detects_forbidden_import(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import time\nfrom trio import lowlevel\n")
    assert _imports(f) & FORBIDDEN == {"time", "trio"}


def test_public_api_all_resolves() -> None:
    for name in crdt_kv.__all__:
        assert hasattr(crdt_kv, name), name
