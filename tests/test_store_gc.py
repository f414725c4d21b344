"""Tombstone collection (issue 10, store side): the horizon, ``gc``, ``drop_collected``,
absence-wins on apply, statistics, and counters that survive a reopen."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fingerprint_layout import check_store
from hypothesis import given
from hypothesis import strategies as st

import crdt_kv
from crdt_kv import RawEntry, Store
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.fingerprint import state_stamp
from crdt_kv.testing import ManualClock

T0 = 1_700_000_000_000


def open_mem(be: MemoryBackend, clock: ManualClock, **kw: Any) -> Store:
    return crdt_kv.open(backend=be, clock=clock, rng=random.Random(3), **kw)


def view(s: Store, keys: list[str]) -> list[Any]:
    return [(s.get(k), [(e.value, e.hlc) for e in s.get_all(k)]) for k in keys]


def count_ns(s: Store, prefix: bytes) -> int:
    end = bytes([prefix[0] + 1])
    return sum(1 for _ in s.backend.iterate(prefix, end))


def test_horizon_is_monotone_and_persisted(store_factory: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "h")
    s = store_factory("sqlite", path=path)
    assert s.gc_horizon == 0 and s.statistics().gc_horizon == 0
    assert s.raise_gc_horizon(100) == 100
    assert s.raise_gc_horizon(50) == 100 and s.gc_horizon == 100
    for bad in (-1, 1 << 64, 1.5, "7"):
        with pytest.raises(ValueError, match="gc horizon"):
            s.raise_gc_horizon(bad)
    s.close()
    s = store_factory("sqlite", path=path)
    assert s.gc_horizon == 100


def test_gc_collects_only_tombstones_below_the_horizon(store_factory: Any, clock: Any) -> None:
    s = store_factory()
    for i in range(10):
        s.put(f"k{i}", i)
    old = [s.delete(f"k{i}") for i in range(5)]
    clock.advance(10)
    s.delete("k5")
    s.put("k0", "back")  # k0 is live again: never collected
    assert s.statistics().tombstones == 5
    s.raise_gc_horizon(old[-1].hlc + 1)
    assert s.gc() == 4
    assert s.statistics().collected == 4 and s.statistics().tombstones == 1
    assert s.entry("k1") is None and s.entry("k5").deleted and s.get("k0") == "back"
    assert s.gc() == 0
    check_store(s)


def test_gc_limit(store_factory: Any) -> None:
    s = store_factory()
    for i in range(30):
        s.delete(f"k{i}")
    s.raise_gc_horizon(s.hlc.last + 1)
    assert s.gc(limit=0) == 0
    assert s.gc(limit=7) == 7 and s.statistics().tombstones == 23
    assert s.gc() == 23 and s.statistics().keys == 0
    with pytest.raises(ValueError, match="limit"):
        s.gc(limit=-1)


WRITES = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.integers(0, 15), st.integers(0, 5)),
    max_size=40,
)


@given(writes=WRITES, cut=st.integers(0, 45), siblings=st.booleans())
def test_gc_never_changes_what_reads_return(
    writes: list[tuple[str, int, int]], cut: int, siblings: bool
) -> None:
    clock = ManualClock(T0)
    be = MemoryBackend()
    mode = "siblings" if siblings else "lww"
    s = open_mem(be, clock, peer_id="a", conflicts=mode)
    other = open_mem(MemoryBackend(), clock, peer_id="b", conflicts=mode)
    for i, (op, k, step) in enumerate(writes):
        clock.advance(step)
        target = other if i % 4 == 3 else s
        if op == "put":
            target.put(f"k{k}", i)
        else:
            target.delete(f"k{k}")
    s.apply(other.changes())
    keys = [f"k{k}" for k in range(16)]
    before, seq, n = view(s, keys), s.last_seq, len(s)
    tombstones = s.statistics().tombstones
    s.raise_gc_horizon(T0 * 2**16 + cut * 2**16)
    got = s.gc()
    assert view(s, keys) == before and len(s) == n and s.last_seq == seq
    assert s.statistics().tombstones == tombstones - got
    for dk, _ in s.backend.iterate(b"d", b"e"):
        r = s.raw_entries([dk[1:]])[0]
        collectable = r.deleted and all(o.deleted for o in r.others)
        assert not collectable or state_stamp(r) >= s.gc_horizon
    check_store(s)
    digest, stats = s.digest(), s.statistics()
    s = open_mem(be, clock)
    assert (s.digest(), s.last_seq, len(s), view(s, keys)) == (digest, seq, n, before)
    assert (s.statistics().keys, s.statistics().tombstones) == (stats.keys, stats.tombstones)
    check_store(s)


@pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])
def test_reopen_after_the_newest_log_entry_was_collected(
    store_factory: Any, tmp_path: Any, backend: str
) -> None:
    path = str(tmp_path / "s")
    s = store_factory(backend, path=path)
    s.put("a", 1)
    s.put("b", 2)
    s.delete("b")  # the newest log entry, with the trailer
    seq = s.last_seq
    s.raise_gc_horizon(s.hlc.last + 1)
    assert s.gc() == 1
    digest, n, hlc = s.digest(), len(s), s.hlc.last
    s.close()
    s = store_factory(backend, path=path)
    assert (s.last_seq, s.digest(), len(s)) == (seq, digest, n)
    assert s.hlc.last >= hlc and s.statistics().keys == 1 and s.statistics().tombstones == 0
    v = s.put("c", 3)
    assert s.last_seq == seq + 1 and v.hlc > hlc
    s.close()
    s = store_factory(backend, path=path)
    assert s.last_seq == seq + 1 and len(s) == 2
    check_store(s)


def test_thousand_deletes_leave_almost_nothing(store_factory: Any) -> None:
    s = store_factory("rocksdb")
    for i in range(1000):
        s.put(f"key-{i}", {"n": i})
    for i in range(1000):
        s.delete(f"key-{i}")
    assert count_ns(s, b"d") == 1000 and count_ns(s, b"l") == 1000
    assert s.statistics().tombstones == 1000
    s.raise_gc_horizon(s.hlc.last + 1)
    assert s.gc() == 1000
    assert count_ns(s, b"d") + count_ns(s, b"l") + count_ns(s, b"x") + count_ns(s, b"f") == 0
    assert s.digest() == bytes(32) and s.statistics().keys == 0 and s.last_seq == 2000
    s.put("after", 1)
    assert s.last_seq == 2001


def test_absence_wins_on_apply(store_factory: Any, clock: Any) -> None:
    a, b = store_factory(peer_id="a"), store_factory(peer_id="b")
    b.put("old", 1)
    b.delete("old-tomb")
    clock.advance(100)
    b.put("new", 2)
    a.put("held", 0)
    a.raise_gc_horizon(b.entry("new").hlc)  # "old", "old-tomb" are below it
    held_old = RawEntry(b"held", b"\x01", 1, "b", False)  # below, but a holds the key
    entries = [*b.raw_changes(), held_old]
    assert a.apply_raw(entries, cursor=("b", b.incarnation, b.last_seq)) == 1
    assert a.get("new") == 2 and a.entry("old") is None and a.entry("old-tomb") is None
    assert a.get("held") == 0
    assert a.stats["refused_below_horizon"] == 2 == a.statistics().refused_below_horizon
    assert a.cursor("b", b.incarnation) == b.last_seq
    # all refused: no error, the cursor still advances
    assert a.apply_raw(entries[:2], cursor=("b", b.incarnation, b.last_seq + 5)) == 0
    assert a.cursor("b", b.incarnation) == b.last_seq + 5
    assert a.statistics().refused_below_horizon == 4
    check_store(a)


def test_absence_wins_in_siblings_mode(store_factory: Any, clock: Any) -> None:
    a = store_factory(peer_id="a", conflicts="siblings")
    b = store_factory(peer_id="b", conflicts="siblings")
    b.put("k", 1)
    stale = list(b.raw_changes())
    clock.advance(50)
    b.put("k", 2)  # the newer state's context covers the old one
    a.raise_gc_horizon(b.entry("k").hlc)
    assert a.apply_raw(stale) == 0 and a.entry("k") is None
    assert a.apply_raw(list(b.raw_changes())) == 1 and a.get("k") == 2
    assert a.statistics().refused_below_horizon == 1


def test_siblings_gc_needs_every_version_deleted(store_factory: Any, clock: Any) -> None:
    a = store_factory(peer_id="a", conflicts="siblings")
    b = store_factory(peer_id="b", conflicts="siblings")
    a.put("k", "a")
    b.delete("k")  # concurrent: a live sibling and a tombstone
    a.apply(b.changes())
    assert len(a.get_all("k")) == 1
    a.raise_gc_horizon(a.hlc.last + 1)
    assert a.gc() == 0 and a.get("k") == "a"
    a.delete("k")
    a.raise_gc_horizon(a.hlc.last + 1)
    assert a.gc() == 1 and a.entry("k") is None
    check_store(a)


def test_drop_collected(store_factory: Any, clock: Any) -> None:
    s = store_factory()
    s.put("live", 1)
    s.delete("tomb")
    clock.advance(100)
    s.put("recent", 2)
    cut = s.entry("recent").hlc
    seq, log = s.last_seq, count_ns(s, b"l")
    n = s.drop_collected([b"live", b"tomb", b"recent", b"absent", b"live"], below=cut)
    assert n == 2 and s.statistics().dropped == 2
    assert s.entry("live") is None and s.entry("tomb") is None and s.get("recent") == 2
    assert len(s) == 1 and s.last_seq == seq and count_ns(s, b"l") == log - 2
    check_store(s)


def test_siblings_gc_prunes_old_tombstone_versions_and_trims_them_on_apply() -> None:
    clock = ManualClock(T0)
    a = open_mem(MemoryBackend(), clock, peer_id="a", conflicts="siblings")
    b = open_mem(MemoryBackend(), clock, peer_id="b", conflicts="siblings")
    c = open_mem(MemoryBackend(), clock, peer_id="c", conflicts="siblings")
    a.put("k", 1)
    b.apply(a.changes())
    clock.advance(5)
    a.put("k", 2)
    b.delete("k")  # concurrent with a's put: a hidden tombstone sibling
    a.apply(b.changes())
    c.apply(b.changes())  # c holds only b's tombstone
    state = a.raw_entries([b"k"])[0]
    assert [s.deleted for s in (state, *state.others)] == [False, True]
    before = [e.value for e in a.get_all("k")]
    a.raise_gc_horizon((T0 + 100) << 16)
    a.gc()
    state = a.raw_entries([b"k"])[0]
    assert not state.others and [e.value for e in a.get_all("k")] == before
    assert a.stats["pruned"] == 1
    check_store(a)
    a.apply(c.changes())  # b's old tombstone again: below a's horizon, not held: left out
    assert not a.raw_entries([b"k"])[0].others
    check_store(a)
