"""Backend conformance: one suite, run unchanged against every backend.

The parametrized ``kind`` covers the built-ins (``rocksdb``, ``memory``, ``sqlite``) and a
third-party backend installed for the test as a real distribution (a ``.dist-info`` with an
``entry_points.txt`` on ``sys.path``) registering under the ``crdt_kv.backends`` group.
Every test opens backends through :func:`crdt_kv.backends.open_backend` by name, exactly
as the store does.
"""

from __future__ import annotations

import errno
import itertools
import os
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import crdt_kv
from crdt_kv.backends import ENTRY_POINT_GROUP, Backend, available_backends, open_backend
from crdt_kv.backends import open_backend as open_named
from crdt_kv.backends.files import detect
from crdt_kv.errors import ClosedError, ConfigError, ReadOnlyError, StorageError, StoreNotFoundError
from crdt_kv.testing import ManualClock

PLUGIN = "bisectlist"

_PLUGIN_SOURCE = '''
"""A third-party crdt_kv backend: a sorted list of keys plus a dict (not persistent)."""
import bisect
from crdt_kv.backends.base import Backend, checked_ops


class BisectBackend(Backend):
    name = "bisectlist"
    power_safe = True

    def __init__(self):
        super().__init__()
        self._keys = []
        self._vals = {}

    def _get(self, key):
        return self._vals.get(key)

    def _write(self, ops):
        for k, v in checked_ops(ops):
            if v is None:
                if k in self._vals:
                    del self._vals[k]
                    self._keys.pop(bisect.bisect_left(self._keys, k))
            else:
                if k not in self._vals:
                    bisect.insort(self._keys, k)
                self._vals[k] = v

    def _iterate(self, start, stop, reverse):
        lo = 0 if start is None else bisect.bisect_left(self._keys, start)
        hi = len(self._keys) if stop is None else bisect.bisect_left(self._keys, stop)
        for k in list(self._keys[lo:hi])[:: -1 if reverse else 1]:
            self._check()
            v = self._vals.get(k)
            if v is not None:
                yield k, v

    def _close(self):
        pass


def open_backend(path=None, *, sync_writes=False):
    return BisectBackend()


NOT_CALLABLE = 42


def open_wrong(path=None, *, sync_writes=False):
    return {"not": "a backend"}
'''


def install_plugin(root: Path, monkeypatch: pytest.MonkeyPatch, module: str = "kvplug") -> None:
    """Install a distribution named ``kvplug`` whose entry points name three backends."""
    (root / f"{module}.py").write_text(_PLUGIN_SOURCE)
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [{ENTRY_POINT_GROUP}]
            {PLUGIN} = {module}:open_backend
            notcallable = {module}:NOT_CALLABLE
            wrongtype = {module}:open_wrong
            unimportable = {module}_missing_module:open_backend
            """
        )
    )
    monkeypatch.syspath_prepend(str(root))  # also invalidates importlib's finder caches


@dataclass
class Kind:
    name: str
    persistent: bool
    power_safe_default: bool
    power_safe_synced: bool


KINDS = {
    "rocksdb": Kind("rocksdb", True, False, True),
    "memory": Kind("memory", False, True, True),
    "sqlite": Kind("sqlite", True, False, True),
    PLUGIN: Kind(PLUGIN, False, True, True),
}

Opener = Callable[..., Backend]


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kind:
    k = KINDS[str(request.param)]
    if k.name == PLUGIN:
        plug = tmp_path / "site"
        plug.mkdir()
        install_plugin(plug, monkeypatch)
    return k


@pytest.fixture
def opener(kind: Kind, tmp_path: Path) -> Iterator[Opener]:
    """``opener(path=None, sync_writes=False)``; every backend opened is closed at teardown."""
    opened: list[Backend] = []
    default = str(tmp_path / "db")

    def make(path: str | None = None, *, sync_writes: bool = False) -> Backend:
        be = open_backend(kind.name, path or default, sync_writes=sync_writes)
        opened.append(be)
        return be

    yield make
    for be in opened:
        be.close()


@pytest.fixture
def be(opener: Opener) -> Backend:
    return opener()


# --- point reads and atomic writes ---------------------------------------------------------


def test_get_and_get_many(be: Backend) -> None:
    assert be.get(b"k") is None
    assert be.get_many([]) == []
    be.write([(b"k", b"v"), (b"k2", b""), (b"k3", b"3")])
    assert be.get(b"k") == b"v"
    assert be.get(b"k2") == b""  # an empty value is a value, not a missing key
    assert be.get(b"k1") is None
    assert be.get_many([b"k3", b"nope", b"k", b"k3", b"k2"]) == [b"3", None, b"v", b"3", b""]
    assert all(type(v) is bytes for v in be.get_many([b"k", b"k2"]))
    assert type(be.get(b"k")) is bytes


def test_point_get_is_get_until_closed(be: Backend) -> None:
    """The store's ``get`` reads records (keys starting with ``d``) through ``point_get``,
    looked up on every read."""
    be.write([(b"dk", b"v"), (b"dk2", b""), (b"k", b"other")])
    assert [be.point_get(k) for k in (b"dk", b"dk2", b"dk1")] == [b"v", b"", None]
    be.close()
    with pytest.raises(ClosedError):
        be.point_get(b"dk")


def test_write_applies_ops_in_order(be: Backend) -> None:
    be.write([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    be.write([(b"a", b"x"), (b"a", None), (b"b", None), (b"b", b"y"), (b"c", b"z"), (b"c", b"w")])
    assert be.get_many([b"a", b"b", b"c"]) == [None, b"y", b"w"]
    be.write([(b"absent", None)])  # deleting a missing key is not an error
    be.write([])
    assert list(be.iterate()) == [(b"b", b"y"), (b"c", b"w")]


@pytest.mark.parametrize(
    "bad",
    [
        (b"b", "text"),  # a str value
        (b"b", 5),  # an int value (bytes(5) would be five zero bytes)
        ("b", b"v"),  # a str key
        (None, b"v"),
    ],
    ids=["str-value", "int-value", "str-key", "none-key"],
)
def test_a_bad_op_mid_batch_writes_nothing(be: Backend, bad: tuple[Any, Any]) -> None:
    be.write([(b"a", b"old")])
    batch: list[Any] = [(b"a", b"new"), (b"z", b"1"), bad, (b"y", b"2")]
    with pytest.raises(TypeError):
        be.write(batch)
    assert list(be.iterate()) == [(b"a", b"old")]
    be.write([(b"a", b"after")])  # the backend is still usable
    assert be.get(b"a") == b"after"


# --- range iteration -----------------------------------------------------------------------

KEYS = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x01",
    b"a",
    b"a\x00",
    b"ab",
    b"a\xff",
    b"b",
    b"\x7f",
    b"\x80",
    b"\xfe\xff",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
    b"\xff\xff\xff",
]
BOUNDS: list[bytes | None] = [None, b"\x00", b"\x00\x00\x00", b"a", b"a\x00", b"aa", b"\x80"]
BOUNDS += [b"\xff", b"\xff\xff", b"\xff\xff\xff\xff", b""]


def test_iterate_half_open_ranges_both_ways(be: Backend) -> None:
    model = {k: bytes([i]) * (i + 1) for i, k in enumerate(KEYS)}
    be.write(list(model.items()))
    ordered = sorted(model)
    assert ordered == KEYS  # the byte order the suite expects
    for start, stop in itertools.product(BOUNDS, BOUNDS):
        want = [
            (k, model[k])
            for k in ordered
            if (start is None or k >= start) and (stop is None or k < stop)
        ]
        assert list(be.iterate(start, stop)) == want, (start, stop)
        assert list(be.iterate(start, stop, reverse=True)) == want[::-1], (start, stop)


def test_iterate_an_empty_backend_and_empty_ranges(be: Backend) -> None:
    assert list(be.iterate()) == []
    assert list(be.iterate(reverse=True)) == []
    be.write([(b"m", b"1")])
    assert list(be.iterate(b"m", b"m")) == []
    assert list(be.iterate(b"z", b"a")) == []
    assert list(be.iterate(b"z", b"a", reverse=True)) == []
    assert list(be.iterate(b"m", b"m\x00")) == [(b"m", b"1")]
    assert list(be.iterate(b"m\x00", None, reverse=True)) == []


def test_iterate_many_keys_across_internal_pages(be: Backend) -> None:
    keys = [i.to_bytes(2, "big") for i in range(0, 3000, 2)]
    be.write([(k, k * 3) for k in keys])
    assert [k for k, _ in be.iterate()] == keys
    assert [k for k, _ in be.iterate(reverse=True)] == keys[::-1]
    lo, hi = (501).to_bytes(2, "big"), (2401).to_bytes(2, "big")
    inside = [k for k in keys if lo <= k < hi]
    assert [k for k, _ in be.iterate(lo, hi)] == inside
    assert [k for k, _ in be.iterate(lo, hi, reverse=True)] == inside[::-1]
    assert all(v == k * 3 for k, v in be.iterate(lo, hi))
    for n in (0, 1, 7, 8, 9, 24, 25, 1000, 1500):  # stops in the middle, bounds at each key
        assert [k for k, _ in itertools.islice(be.iterate(), n)] == keys[:n]
        assert [k for k, _ in be.iterate(None, keys[n] if n < len(keys) else None)] == keys[:n]


@pytest.mark.parametrize("reverse", [False, True])
def test_writes_during_iteration_never_break_it(be: Backend, reverse: bool) -> None:
    keys = [b"k%04d" % i for i in range(1200)]
    be.write([(k, b"v") for k in keys])
    seen: list[bytes] = []
    for n, (k, _) in enumerate(be.iterate(reverse=reverse)):
        seen.append(k)
        if n % 100 == 0:  # insert behind and ahead of the cursor, delete ahead of it
            be.write([(k + b"+", b"new"), (b"k%04d" % (1199 - n // 100), None), (b"a", b"x")])
    assert len(seen) == len(set(seen)), "a key was yielded twice"
    assert seen == sorted(seen, reverse=reverse)
    untouched = set(keys[100:1100]) - {k + b"+" for k in keys}
    assert untouched <= set(seen), "a key present throughout the scan was skipped"


def test_large_values_and_keys(be: Backend) -> None:
    big = os.urandom(8 << 20)
    key = b"\xff" * 4096 + b"\x00" * 4096
    be.write([(b"big", big), (key, big[:100_000])])
    assert be.get(b"big") == big
    assert be.get(key) == big[:100_000]
    assert [k for k, _ in be.iterate(b"\xff")] == [key]
    be.write([(b"big", None)])
    assert be.get(b"big") is None


# --- lifecycle -----------------------------------------------------------------------------


def test_close_is_idempotent_and_every_later_call_raises(be: Backend) -> None:
    be.write([(b"k", b"v")])
    assert not be.closed
    be.close()
    be.close()
    assert be.closed
    with pytest.raises(ClosedError):
        be.get(b"k")
    with pytest.raises(ClosedError):
        be.get_many([b"k"])
    with pytest.raises(ClosedError):
        be.write([(b"k", b"w")])
    with pytest.raises(ClosedError):
        be.write([])
    with pytest.raises(ClosedError):
        list(be.iterate())
    with pytest.raises(ClosedError):
        list(be.iterate(reverse=True))


def test_closing_during_iteration_raises_closed_error(be: Backend) -> None:
    be.write([(b"%05d" % i, b"v") for i in range(2000)])
    it = be.iterate()
    next(it)
    be.close()
    with pytest.raises(ClosedError):
        for _ in it:
            pass


def test_context_manager_closes(opener: Opener) -> None:
    with opener() as be:
        be.write([(b"k", b"v")])
    assert be.closed


def test_reopen_keeps_committed_batches(kind: Kind, opener: Opener, tmp_path: Path) -> None:
    if not kind.persistent:
        pytest.skip(f"{kind.name} does not persist")
    path = str(tmp_path / "persist")
    be = opener(path)
    be.write([(bytes([i]), bytes([i]) * i) for i in range(256)])
    be.write([(b"\x10", None), (b"\x11", b"changed")])
    be.close()
    be2 = opener(path)
    want = [(bytes([i]), bytes([i]) * i) for i in range(256) if i != 0x10]
    want[0x10] = (b"\x11", b"changed")
    assert list(be2.iterate()) == want


@pytest.mark.parametrize("sync_writes", [False, True])
def test_power_safe_flag(kind: Kind, opener: Opener, sync_writes: bool) -> None:
    be = opener(sync_writes=sync_writes)
    want = kind.power_safe_synced if sync_writes else kind.power_safe_default
    assert be.power_safe is want
    assert be.name == kind.name


def test_a_second_open_of_a_path_in_use_is_a_config_error(
    kind: Kind, opener: Opener, tmp_path: Path
) -> None:
    if not kind.persistent:
        pytest.skip(f"{kind.name} has no path")
    path = str(tmp_path / "locked")
    first = opener(path)
    first.write([(b"k", b"v")])
    with pytest.raises(ConfigError, match="locked"):
        open_backend(kind.name, path)
    first.close()
    with opener(path) as again:  # the failed open left nothing behind
        assert again.get(b"k") == b"v"


def test_a_path_that_cannot_hold_a_store_is_a_config_error(kind: Kind, tmp_path: Path) -> None:
    if not kind.persistent:
        pytest.skip(f"{kind.name} has no path")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(ConfigError, match=kind.name):
        open_backend(kind.name, str(blocker / "sub"))


# --- backend-specific details the suite cannot express generically ------------------------


@pytest.mark.parametrize(("sync_writes", "level"), [(False, 1), (True, 2)])
def test_sqlite_synchronous_level(tmp_path: Path, sync_writes: bool, level: int) -> None:
    with open_backend("sqlite", str(tmp_path / "s.sqlite3"), sync_writes=sync_writes) as be:
        db = be._db  # type: ignore[attr-defined]
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_file_and_directory_paths(tmp_path: Path) -> None:
    with open_backend("sqlite", str(tmp_path / "one.db")) as be:
        be.write([(b"k", b"v")])
    assert (tmp_path / "one.db").is_file()
    with open_backend("sqlite", str(tmp_path / "dir")) as be:
        be.write([(b"k", b"v")])
    assert (tmp_path / "dir" / "crdt_kv.sqlite3").is_file()
    con = sqlite3.connect(tmp_path / "dir" / "crdt_kv.sqlite3")
    assert con.execute("SELECT k, v FROM kv").fetchall() == [(b"k", b"v")]
    con.close()


# --- the registry ----------------------------------------------------------------------------


def test_unknown_backend_is_a_config_error_listing_the_available_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {"rocksdb", "memory", "sqlite"} <= set(available_backends())
    assert PLUGIN not in available_backends()
    with pytest.raises(ConfigError, match="'leveldb'") as info:
        open_backend("leveldb", str(tmp_path / "x"))
    for name in ("rocksdb", "memory", "sqlite"):
        assert name in str(info.value)
    install_plugin(tmp_path, monkeypatch)
    names = available_backends()
    assert names == sorted(names) and PLUGIN in names
    with pytest.raises(ConfigError) as info:
        crdt_kv.open(str(tmp_path / "y"), backend="leveldb")
    assert PLUGIN in str(info.value) and "sqlite" in str(info.value)
    with pytest.raises(ConfigError, match="string"):
        open_backend(3)  # type: ignore[arg-type]


def test_broken_plugins_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="notcallable"):
        open_backend("notcallable")
    with pytest.raises(ConfigError, match="wrongtype"):
        open_backend("wrongtype")
    with pytest.raises(ConfigError, match="'unimportable' failed to load"):
        open_backend("unimportable")
    assert "unimportable" in available_backends()  # listed: installed, even if broken


def test_a_store_runs_on_a_plugin_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch)
    with crdt_kv.open(backend=PLUGIN, peer_id="p", clock=ManualClock()) as a:
        assert a.backend.name == PLUGIN
        a.put("x", 1)
        with a.batch() as b:
            b.put("y", [2])
            b.delete("x")
        assert list(a.items()) == [("y", [2])]
        with crdt_kv.open(backend="memory", peer_id="q", clock=ManualClock()) as other:
            other.apply(a.changes())
            assert other.digest() == a.digest()
    with crdt_kv.open(config={"storage": {"backend": PLUGIN}}, clock=ManualClock()) as c:
        assert c.backend.name == PLUGIN


# --- read-only opens, backend detection, storage errors (issue 11) -----------------------

STORED = ["rocksdb", "sqlite"]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("name", STORED)
def test_read_only_open_reads_refuses_writes_and_changes_no_file(tmp_path: Path, name: str) -> None:
    path = str(tmp_path / "s")
    with open_named(name, path) as w:
        w.write([(b"a", b"1"), (b"b", b"2")])
    assert detect(path) == name
    before = _files(tmp_path)
    modes = {p: p.stat().st_mode for p in [tmp_path / "s", *(tmp_path / "s").rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with open_named(name, path, read_only=True) as ro:
            assert ro.read_only and ro.get(b"a") == b"1"
            assert list(ro.iterate()) == [(b"a", b"1"), (b"b", b"2")]
            with pytest.raises(ReadOnlyError, match="read-only"):
                ro.write([(b"c", b"3")])
            with pytest.raises(ReadOnlyError):
                ro.make_durable()
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("name", STORED)
def test_read_only_open_of_no_store_creates_nothing(tmp_path: Path, name: str) -> None:
    (tmp_path / "empty").mkdir()
    for where in ("empty", "missing", "missing.sqlite3"):
        with pytest.raises(StoreNotFoundError, match=repr(str(tmp_path / where))):
            open_named(name, str(tmp_path / where), read_only=True)
    assert [p.name for p in tmp_path.rglob("*")] == ["empty"]


def test_memory_refuses_read_only_and_a_plugin_must_support_it() -> None:
    with pytest.raises(ConfigError, match="would be empty"):
        open_named("memory", None, read_only=True)


@pytest.mark.parametrize(("made", "other"), [("rocksdb", "sqlite"), ("sqlite", "rocksdb")])
def test_another_backends_store_is_refused_before_anything_is_created(
    tmp_path: Path, made: str, other: str
) -> None:
    path = str(tmp_path / "s")
    open_named(made, path).close()
    before = _files(tmp_path)
    for read_only in (False, True):
        with pytest.raises(ConfigError, match=f"uses the {made} backend, not {other}"):
            open_named(other, path, read_only=read_only)
    with pytest.raises(ConfigError, match=f"uses the {made} backend, not memory"):
        open_named("memory", path)
    assert _files(tmp_path) == before


def test_a_sqlite_store_held_by_a_process_is_reported_when_read(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with open_named("sqlite", path):
        with pytest.raises(ConfigError, match="held by another process"):
            open_named("sqlite", path, read_only=True)
        with pytest.raises(ConfigError, match="another process is using it"):
            open_named("sqlite", path)


def test_sqlite_permission_errors_say_permission_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s"
    open_named("sqlite", str(path)).close()
    (path / "crdt_kv.sqlite3").chmod(0o444)
    path.chmod(0o555)
    # root may write anyway: judge access as an unprivileged user would
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)
    real = sqlite3.connect

    def readonly_connect(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(Path(database).as_uri() + "?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", readonly_connect)
    try:
        with pytest.raises(ConfigError, match="permission denied") as info:
            open_named("sqlite", str(path))
        assert "another process" not in str(info.value)
    finally:
        path.chmod(0o755)


class _FullDisk:
    """Stands in for a handle whose writes fail as on a full disk while ``full`` is set."""

    def __init__(self, inner: Any, exc: Exception) -> None:
        self.inner, self.exc, self.full = inner, exc, True

    def write(self, *args: Any) -> Any:
        if self.full:
            raise self.exc
        return self.inner.write(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_rocksdb_write_failure_is_a_storage_error_and_the_next_write_reopens(
    tmp_path: Path,
) -> None:
    from crdt_kv.backends.rocksdb import RocksDBBackend

    be = RocksDBBackend(str(tmp_path / "s"))
    be.write([(b"a", b"1")])
    full = _FullDisk(be._db, Exception("IO error: No space left on device: While appending"))
    be._db, be._dbwrite = full, full.write
    with pytest.raises(StorageError, match="no space left on device") as info:
        be.write([(b"b", b"2"), (b"c", b"3")])
    assert info.value.errno == errno.ENOSPC and str(tmp_path / "s") in str(info.value)
    full.full = False
    be.write([(b"d", b"4")])  # reopens the handle first (RocksDB refuses after an error)
    assert be._db is not full
    assert list(be.iterate()) == [(b"a", b"1"), (b"d", b"4")]
    assert be.point_get(b"d") == b"4"  # the reopened handle's
    be.close()
    be.close()


def test_sqlite_full_disk_is_a_storage_error_and_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    be = open_named("sqlite", str(tmp_path / "s"))
    be.write([(b"a", b"1")])
    real_execute = be._db.execute  # type: ignore[attr-defined]
    calls = {"n": 0}

    class Db:
        in_transaction = property(lambda _: be_db.in_transaction)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("INSERT"):
                calls["n"] += 1
                if calls["n"] == 2:
                    exc = sqlite3.OperationalError("database or disk is full")
                    exc.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
                    raise exc
            return real_execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(be_db, name)

    be_db = be._db  # type: ignore[attr-defined]
    be._db = Db()  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="no space left on device") as info:
        be.write([(b"b", b"2"), (b"c", b"3")])
    assert info.value.errno == errno.ENOSPC
    be._db = be_db  # type: ignore[attr-defined]
    assert list(be.iterate()) == [(b"a", b"1")]  # nothing partial
    be.write([(b"d", b"4")])
    assert list(be.iterate()) == [(b"a", b"1"), (b"d", b"4")]
    be.close()


def test_rocksdb_held_by_another_handle_says_so(tmp_path: Path) -> None:
    """A second writable open of a RocksDB store (a node holds it) names the cause and the
    way out instead of RocksDB's bare LOCK error."""
    first = crdt_kv.open(str(tmp_path / "db"), backend="rocksdb")
    try:
        with pytest.raises(ConfigError, match=r"another process .* has it open"):
            crdt_kv.open(str(tmp_path / "db"), backend="rocksdb")
        with crdt_kv.open(str(tmp_path / "db"), backend="rocksdb", read_only=True) as ro:
            assert len(ro) == 0
    finally:
        first.close()
