"""The sans-I/O core must not import sockets, trio or time, nor start threads (it would make
the deterministic simulator lie). This scans the core modules' import statements, and checks
in a fresh interpreter that importing the core (or the bare package) really leaves the I/O
shell unloaded, however indirect the path would be.

``threading`` is allowed for locks only (the store serializes commits with one): a core
module may not name ``Thread``, ``Timer`` or ``start_new_thread``."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import crdt_kv

PKG = pathlib.Path(crdt_kv.__file__).parent
CORE = [
    "hlc.py",
    "version.py",
    "causal.py",
    "codec.py",
    "layout.py",
    "errors.py",
    "config.py",
    "horizon.py",
]
CORE_DIRS = ["store", "protocol", "backends", "sim"]
FORBIDDEN = {"socket", "trio", "time", "asyncio", "selectors", "_thread"}
FORBIDDEN_NAMES = {"Thread", "Timer", "start_new_thread"}


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


def _thread_names(path: pathlib.Path) -> set[str]:
    """Names in :data:`FORBIDDEN_NAMES` the module imports or reaches as an attribute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.update(a.name for a in node.names if a.name in FORBIDDEN_NAMES)
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            found.add(node.attr)
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.add(node.id)
    return found


def test_core_files_exist() -> None:
    files = _core_files()
    assert len(files) >= len(CORE)
    for name in CORE:
        assert PKG / name in files, name
    assert PKG / "store" / "__init__.py" in files


def test_core_imports_no_io() -> None:
    bad = {str(f.relative_to(PKG)): _imports(f) & FORBIDDEN for f in _core_files()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"core modules import I/O modules: {bad}"


def test_core_uses_threading_for_locks_only() -> None:
    bad = {str(f.relative_to(PKG)): _thread_names(f) for f in _core_files()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"core modules start threads: {bad}"


def test_scanner_detects_forbidden_import(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import time\nfrom trio import lowlevel\n")
    assert _imports(f) & FORBIDDEN == {"time", "trio"}


def test_scanner_allows_locks_but_detects_threads(tmp_path: pathlib.Path) -> None:
    ok = tmp_path / "ok.py"
    ok.write_text("import threading\nlock = threading.RLock()\n")
    assert not _imports(ok) & FORBIDDEN
    assert not _thread_names(ok)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import threading\nfrom threading import Timer\n"
        "threading.Thread(target=print).start()\n"
        "import _thread\n_thread.start_new_thread(print, ())\n"
    )
    assert _thread_names(bad) == {"Thread", "Timer", "start_new_thread"}
    assert _imports(bad) & FORBIDDEN == {"_thread"}


def test_public_api_all_resolves() -> None:
    for name in crdt_kv.__all__:
        assert hasattr(crdt_kv, name), name


def _modules_after(code: str, *watch: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which of ``watch`` ended up in ``sys.modules``.

    A subprocess, because this test process has long imported trio through other tests.
    ``PYTHONPATH`` is set so the child imports the same ``crdt_kv`` as this process.
    """
    report = f"print(json.dumps({{m: m in sys.modules for m in {watch!r}}}))"
    probe = f"{code}\nimport json, sys\n{report}"
    env = dict(os.environ)
    src = str(PKG.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_core_import_leaves_out_trio_and_socket() -> None:
    loaded = _modules_after("import crdt_kv.protocol, crdt_kv.store", "trio", "socket")
    assert loaded == {"trio": False, "socket": False}


def test_bare_package_import_leaves_out_trio_until_a_net_name_is_used() -> None:
    code = (
        "import sys, crdt_kv\n"
        "assert 'trio' not in sys.modules\n"
        "assert {'Node', 'replicate', 'serve'} <= set(dir(crdt_kv)) & set(crdt_kv.__all__)\n"
        "assert 'trio' not in sys.modules, 'dir() must not load crdt_kv.net'\n"
        "serve = crdt_kv.serve\n"
        "import crdt_kv.net\n"
        "assert serve is crdt_kv.net.serve and crdt_kv.Node is crdt_kv.net.Node\n"
    )
    assert _modules_after(code, "trio", "crdt_kv.net") == {"trio": True, "crdt_kv.net": True}
    assert _modules_after("import crdt_kv", "trio", "socket") == {"trio": False, "socket": False}


def test_unknown_attribute_is_still_an_attribute_error() -> None:
    assert not hasattr(crdt_kv, "no_such_name")
