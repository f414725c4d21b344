"""The RocksDB backend's records column family (crdt_kv/backends/rocksdb_family.py): where
keys live, ranges read across it in order, and stores written before it are moved into it
on their first writable open (an interrupted move is finished, never half-read)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict, WriteBatch

import crdt_kv
from crdt_kv import ConfigError
from crdt_kv.backends import rocksdb_family
from crdt_kv.backends.rocksdb import RocksDBBackend
from crdt_kv.backends.rocksdb_family import FAMILY, pieces


def raw_families(path: Path) -> tuple[list[bytes], list[bytes]]:
    """The keys of the default family and of the records family, read with rocksdict."""
    opts = Options(raw_mode=True)
    db = Rdict(str(path), opts, column_families={FAMILY: opts})
    fam = db.get_column_family(FAMILY)
    out = list(db.keys()), list(fam.keys())
    del fam
    db.close()
    return out


def to_old_layout(path: Path, *, keep: int = 0) -> None:
    """Rewrite the store at ``path`` as a release before the family wrote it: every record
    back in the default family and the family dropped; with ``keep``, that many records
    stay in the family (a move interrupted by a crash)."""
    opts = Options(raw_mode=True)
    db = Rdict(str(path), opts, column_families={FAMILY: opts})
    fam = db.get_column_family(FAMILY)
    handle = db.get_column_family_handle(FAMILY)
    wb = WriteBatch(raw_mode=True)
    for k, v in list(fam.items())[keep:]:
        wb.put(k, v)
        wb.delete(k, handle)
    db.write(wb)
    del fam, handle
    if not keep:
        db.drop_column_family(FAMILY)
    db.close()


def filled(path: Path, n: int = 25) -> tuple[dict[str, int], int]:
    s = crdt_kv.open(str(path))
    for i in range(n):
        s.put(f"k{i:02}", i)
    s.delete("k03")
    state, digest = dict(s.items()), s.digest()
    s.close()
    return state, digest


def test_records_live_in_their_family_and_nothing_else_does(tmp_path: Path) -> None:
    filled(tmp_path / "s")
    default, records = raw_families(tmp_path / "s")
    assert len(records) == 25 and all(k[:1] == b"d" for k in records)
    assert default and not any(k[:1] == b"d" for k in default)


def test_a_store_from_before_the_family_is_moved_on_open(tmp_path: Path) -> None:
    state, digest = filled(tmp_path / "s")
    to_old_layout(tmp_path / "s")
    default, _ = raw_families_or_none(tmp_path / "s")
    assert sum(k[:1] == b"d" for k in default) == 25
    s = crdt_kv.open(str(tmp_path / "s"))
    assert dict(s.items()) == state and s.digest() == digest and s.get("k07") == 7
    s.put("new", 1)
    s.close()
    default, records = raw_families(tmp_path / "s")
    assert len(records) == 26 and not any(k[:1] == b"d" for k in default)


def raw_families_or_none(path: Path) -> tuple[list[bytes], list[bytes] | None]:
    """Like :func:`raw_families`, for a store that may have no records family."""
    opts = Options(raw_mode=True)
    if FAMILY in Rdict.list_cf(str(path), opts):
        return raw_families(path)
    db = Rdict(str(path), opts)
    out = list(db.keys())
    db.close()
    return out, None


def test_a_read_only_open_reads_an_older_store_where_it_is(tmp_path: Path) -> None:
    state, digest = filled(tmp_path / "s")
    to_old_layout(tmp_path / "s")
    ro = crdt_kv.open(str(tmp_path / "s"), read_only=True)
    assert dict(ro.items()) == state and ro.digest() == digest and ro.get("k07") == 7
    ro.close()
    assert raw_families_or_none(tmp_path / "s")[1] is None  # nothing moved


def test_an_interrupted_move_is_finished_by_a_writable_open_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, digest = filled(tmp_path / "s")
    to_old_layout(tmp_path / "s", keep=10)
    with pytest.raises(ConfigError, match="interrupted while moving its records"):
        crdt_kv.open(str(tmp_path / "s"), read_only=True)
    monkeypatch.setattr(rocksdb_family, "MOVE_CHUNK", 4)  # several atomic chunks
    s = crdt_kv.open(str(tmp_path / "s"))
    assert dict(s.items()) == state and s.digest() == digest
    s.close()
    default, records = raw_families(tmp_path / "s")
    assert len(records) == 25 and not any(k[:1] == b"d" for k in default)
    ro = crdt_kv.open(str(tmp_path / "s"), read_only=True)
    assert dict(ro.items()) == state
    ro.close()


keys = st.binary(min_size=0, max_size=3).map(lambda b: b.replace(b"\xff", b"\xfe"))
near = st.sampled_from([b"", b"c", b"c\xff", b"d", b"d\x00", b"dz", b"e", b"e\x00", b"z"])


@settings(max_examples=150, deadline=None)
@given(
    ks=st.sets(st.one_of(keys, st.sampled_from([b"d", b"d1", b"e", b"c\xff", b"dd"]))),
    start=st.one_of(st.none(), near, keys),
    stop=st.one_of(st.none(), near, keys),
)
def test_ranges_read_across_the_family_in_key_order(
    tmp_path_factory: pytest.TempPathFactory,
    ks: set[bytes],
    start: bytes | None,
    stop: bytes | None,
) -> None:
    be = RocksDBBackend(str(tmp_path_factory.mktemp("r") / "s"))
    try:
        be.write([(k, k + b"!") for k in ks])
        want = sorted(
            (k, k + b"!")
            for k in ks
            if (start is None or k >= start) and (stop is None or k < stop)
        )
        assert list(be.iterate(start, stop)) == want
        assert list(be.iterate(start, stop, reverse=True)) == want[::-1]
        probe = [*sorted(ks)[:5], b"dnone", b"none"]
        assert be.get_many(probe) == [k + b"!" if k in ks else None for k in probe]
    finally:
        be.close()


def test_pieces_cut_a_range_where_the_records_begin_and_end() -> None:
    assert pieces(None, None) == [(False, None, b"d"), (True, b"d", b"e"), (False, b"e", None)]
    assert pieces(b"d1", b"d5") == [(True, b"d1", b"d5")]
    assert pieces(b"a", b"d1") == [(False, b"a", b"d"), (True, b"d", b"d1")]
    assert pieces(b"e", None) == [(False, b"e", None)]
    assert pieces(b"x", b"y") == [(False, b"x", b"y")]


def mbackend(path: Path) -> bytes | None:
    """The store's ``mbackend`` (in the default family), read with rocksdict."""
    opts = Options(raw_mode=True)
    cfs = {FAMILY: opts} if FAMILY in Rdict.list_cf(str(path), opts) else None
    db = Rdict(str(path), opts, column_families=cfs)
    value = db.get(b"mbackend")
    db.close()
    return value


def set_mbackend(path: Path, value: bytes) -> None:
    opts = Options(raw_mode=True)
    cfs = {FAMILY: opts} if FAMILY in Rdict.list_cf(str(path), opts) else None
    db = Rdict(str(path), opts, column_families=cfs)
    db[b"mbackend"] = value
    db.close()


def test_the_layout_is_recorded_so_an_older_release_refuses_the_store(tmp_path: Path) -> None:
    """A release before the family compares ``mbackend`` with its backend's name,
    ``rocksdb``: it refuses ``rocksdb/2`` instead of opening a store whose records it
    would not see."""
    filled(tmp_path / "s")
    assert mbackend(tmp_path / "s") == b"rocksdb/2"


def test_opening_an_older_store_upgrades_its_recorded_layout(tmp_path: Path) -> None:
    state, _ = filled(tmp_path / "s")
    to_old_layout(tmp_path / "s")
    set_mbackend(tmp_path / "s", b"rocksdb")
    ro = crdt_kv.open(str(tmp_path / "s"), read_only=True)
    assert dict(ro.items()) == state
    ro.close()
    assert mbackend(tmp_path / "s") == b"rocksdb"  # a read-only open changes nothing
    s = crdt_kv.open(str(tmp_path / "s"))
    s.close()
    assert mbackend(tmp_path / "s") == b"rocksdb/2"


def test_a_layout_newer_than_this_release_is_refused_by_name(tmp_path: Path) -> None:
    filled(tmp_path / "s")
    set_mbackend(tmp_path / "s", b"rocksdb/3")
    for read_only in (False, True):
        with pytest.raises(ConfigError, match=r"rocksdb/3 layout .* upgrade crdt_kv"):
            crdt_kv.open(str(tmp_path / "s"), read_only=read_only)
