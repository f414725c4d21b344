"""The public API surface (crdt_kv/api.py and crdt_kv/__init__.py): ``crdt_kv.open``'s
signature and options, injected clock and randomness, resolver, skew bound, exports,
exceptions, context manager and closing."""

from __future__ import annotations

import inspect
import random
from pathlib import Path
from typing import Any

import pytest

import crdt_kv
from crdt_kv import (
    ClockSkewError,
    ClosedError,
    ConfigError,
    CrdtKvError,
    Entry,
    RawEntry,
    Store,
    Version,
)
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.hlc import pack, unpack
from crdt_kv.testing import ManualClock

T0 = 1_700_000_000_000


def test_open_signature_path_positional_everything_else_keyword_only() -> None:
    params = inspect.signature(crdt_kv.open).parameters
    names = list(params)
    assert names[0] == "path"
    assert params["path"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params["path"].default is None
    issue_names = [
        "config",
        "backend",
        "peer_id",
        "key_encoding",
        "value_encoding",
        "resolver",
        "sync_writes",
        "max_offset_ms",
        "clock",
    ]
    for name in issue_names:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    for name in names[1:]:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    with pytest.raises(TypeError):
        crdt_kv.open(None, None)  # type: ignore[misc]


def test_documented_defaults(tmp_path: Path) -> None:
    with crdt_kv.open(str(tmp_path / "d")) as db:
        assert db.backend.name == "rocksdb"
        assert (db.key_encoding, db.value_encoding) == ("utf-8", "cbor")
        assert not db.backend.power_safe  # sync_writes=False
        assert db.hlc.max_offset_ms == 500
        assert db.resolver is None
        assert isinstance(db, Store)


def test_path_may_be_a_pathlike(tmp_path: Path) -> None:
    with crdt_kv.open(tmp_path / "p", peer_id="a") as db:
        db.put("k", 1)
    with crdt_kv.open(str(tmp_path / "p")) as db:
        assert db.get("k") == 1 and db.peer_id == "a"


def test_peer_id_defaults_to_random_persisted_and_comes_from_rng(tmp_path: Path) -> None:
    a = crdt_kv.open(tmp_path / "a", rng=random.Random(42))
    b = crdt_kv.open(tmp_path / "b", rng=random.Random(42))
    c = crdt_kv.open(tmp_path / "c")
    with a, b, c:
        assert a.peer_id == b.peer_id != c.peer_id  # the injected rng drives it
        assert a.incarnation == b.incarnation
        peer = a.peer_id
    with crdt_kv.open(tmp_path / "a", rng=random.Random(1)) as again:
        assert again.peer_id == peer
    with pytest.raises(ConfigError, match=peer):
        crdt_kv.open(tmp_path / "a", peer_id="someone-else")


def test_the_injected_clock_stamps_writes(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with crdt_kv.open(backend="memory", clock=clock) as db:
        assert unpack(db.put("k", 1).hlc) == (T0, 0)
        assert unpack(db.put("k", 2).hlc) == (T0, 1)  # the clock stands still
        clock.advance(5)
        assert unpack(db.delete("k").hlc) == (T0 + 5, 0)
        clock.now = T0 - 10_000  # the wall clock steps back
        assert unpack(db.put("k", 3).hlc) == (T0 + 5, 1)


@pytest.mark.parametrize("clock", [5, "now"])
def test_a_clock_that_is_not_callable(clock: Any) -> None:
    with pytest.raises(ConfigError, match="clock"):
        crdt_kv.open(backend="memory", clock=clock)


def test_the_resolver_decides_equal_stamps(tmp_path: Path) -> None:
    calls: list[tuple[Any, Any]] = []

    def bigger_value_wins(a: Entry, b: Entry) -> bool:
        calls.append((a.value, b.value))
        return bool(a.value > b.value)

    stamp = pack(T0, 3)
    low, high = Entry("k", 1, stamp, "zzz"), Entry("k", 2, stamp, "aaa")
    with (
        crdt_kv.open(backend="memory", resolver=bigger_value_wins, clock=ManualClock()) as x,
        crdt_kv.open(backend="memory", resolver=bigger_value_wins, clock=ManualClock()) as y,
        crdt_kv.open(backend="memory", clock=ManualClock()) as plain,
    ):
        x.apply([low, high])
        y.apply([high])
        y.apply([low])
        assert x.get("k") == y.get("k") == 2  # not the higher peer id "zzz"
        assert x.digest() == y.digest()
        assert calls and all(set(c) == {1, 2} for c in calls)
        assert len({c for c in calls}) == 1, "the resolver was asked different questions"
        plain.apply([high, low])
        assert plain.get("k") == 1  # without a resolver the higher peer id wins


def test_a_resolver_that_raises_applies_nothing() -> None:
    def broken(a: Entry, b: Entry) -> bool:
        raise RuntimeError("resolver bug")

    with crdt_kv.open(backend="memory", resolver=broken, clock=ManualClock()) as db:
        db.apply([Entry("k", 1, pack(T0, 0), "a")])
        before = (db.digest(), db.last_seq)
        with pytest.raises(RuntimeError, match="resolver bug"):
            db.apply([Entry("j", 5, pack(T0, 0), "a"), Entry("k", 2, pack(T0, 0), "b")])
        assert (db.digest(), db.last_seq) == before
        assert db.get("j") is None


def test_max_offset_ms_bounds_remote_stamps() -> None:
    clock = ManualClock(T0)
    with crdt_kv.open(backend="memory", max_offset_ms=100, clock=clock) as db:
        db.apply([RawEntry(b"ok", b"\x01", pack(T0 + 100, 0), "r", False)])
        with pytest.raises(ClockSkewError) as info:
            db.apply([RawEntry(b"far", b"\x01", pack(T0 + 101, 0), "r", False)])
        assert info.value.max_offset_ms == 100
        assert info.value.local_wall_ms == T0
        assert "far" not in db
    strict = crdt_kv.open(backend="memory", max_offset_ms=0, clock=ManualClock(T0))
    with strict, pytest.raises(ClockSkewError):
        strict.apply([RawEntry(b"k", b"\x01", pack(T0 + 1, 0), "r", False)])


@pytest.mark.parametrize("bad", [-1, 1.5, "500", True])
def test_max_offset_ms_must_be_a_non_negative_int(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_offset_ms"):
        crdt_kv.open(backend="memory", max_offset_ms=bad)


def test_sync_writes_makes_disk_backends_power_safe(tmp_path: Path) -> None:
    with crdt_kv.open(tmp_path / "r", sync_writes=True) as db:
        assert db.backend.power_safe
    with crdt_kv.open(tmp_path / "s", backend="sqlite", sync_writes=True) as db:
        assert db.backend.power_safe


def test_new_incarnation_for_a_restored_copy(tmp_path: Path) -> None:
    with crdt_kv.open(tmp_path / "db", peer_id="a", clock=ManualClock()) as db:
        db.put("k", 1)
        inc = db.incarnation
    with crdt_kv.open(tmp_path / "db", clock=ManualClock()) as db:
        assert db.incarnation == inc  # a clean reopen keeps it
    with crdt_kv.open(tmp_path / "db", new_incarnation=True, clock=ManualClock()) as db:
        assert db.incarnation != inc and db.peer_id == "a" and db.get("k") == 1
        rotated = db.incarnation
    with crdt_kv.open(tmp_path / "db", clock=ManualClock()) as db:
        assert db.incarnation == rotated  # persisted


def test_an_open_backend_instance_is_used_as_is() -> None:
    be = MemoryBackend()
    with crdt_kv.open(backend=be, peer_id="x", clock=ManualClock()) as db:
        assert db.backend is be
        db.put("k", 1)
    assert be.closed


def test_exports_exist_and_exceptions_share_a_base() -> None:
    for name in crdt_kv.__all__:
        assert hasattr(crdt_kv, name), name
    issue_names = {
        "open",
        "Store",
        "Version",
        "Entry",
        "CrdtKvError",
        "ConfigError",
        "EncodingError",
        "ClockSkewError",
        "ClosedError",
        "available_backends",
    }
    assert issue_names <= set(crdt_kv.__all__)
    errors = [
        obj
        for name in crdt_kv.__all__
        if isinstance(obj := getattr(crdt_kv, name), type) and issubclass(obj, BaseException)
    ]
    assert len(errors) >= 10
    for exc in errors:
        assert issubclass(exc, CrdtKvError), exc
    assert not issubclass(CrdtKvError, (ValueError, RuntimeError))
    import crdt_kv.errors as errors_module

    assert set(errors_module.__all__) == {e.__name__ for e in errors}
    assert isinstance(crdt_kv.__version__, str)


def test_version_is_ordered_with_hlc_and_peer() -> None:
    with crdt_kv.open(backend="memory", peer_id="p", clock=ManualClock()) as db:
        v1, v2 = db.put("a", 1), db.put("b", 2)
        assert isinstance(v1, Version) and v1 < v2
        assert (v1.hlc, v1.peer) == (db.entry("a").hlc, "p")  # type: ignore[union-attr]


def test_context_manager_and_closed_error(tmp_path: Path) -> None:
    with crdt_kv.open(tmp_path / "db", clock=ManualClock()) as db:
        assert not db.closed
        db.put("k", 1)
    assert db.closed and db.backend.closed
    db.close()  # idempotent
    calls: dict[str, Any] = {
        "get": lambda: db.get("k"),
        "put": lambda: db.put("k", 2),
        "delete": lambda: db.delete("k"),
        "entry": lambda: db.entry("k"),
        "contains": lambda: "k" in db,
        "len": lambda: len(db),
        "items": lambda: list(db.items()),
        "keys": lambda: list(db.keys()),
        "values": lambda: list(db.values()),
        "batch": db.batch,
        "changes": lambda: list(db.changes()),
        "apply": lambda: db.apply([]),
        "digest": db.digest,
        "cursors": db.cursors,
    }
    for name, call in calls.items():
        with pytest.raises(ClosedError):
            call()
            pytest.fail(f"{name} worked after close")
    with crdt_kv.open(tmp_path / "db", clock=ManualClock()) as again:
        assert again.get("k") == 1


def test_an_exception_in_the_with_block_still_closes(tmp_path: Path) -> None:
    with pytest.raises(KeyError), crdt_kv.open(tmp_path / "db") as db:
        raise KeyError("boom")
    assert db.closed
    with crdt_kv.open(tmp_path / "db") as db2:  # the lock was released
        assert not db2.closed


@pytest.mark.parametrize("bad", ["false", 0, 1, [True]])
def test_sync_writes_must_be_a_bool(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="sync_writes"):
        crdt_kv.open(tmp_path / "db", sync_writes=bad)
    assert not (tmp_path / "db").exists(), "the backend was opened before the check"
