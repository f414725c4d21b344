"""The Store API of issue 3: writes, reads, ranges, batches, the change log, merging,
digests, hooks, encodings, errors and reopening."""

from __future__ import annotations

import errno
import gc
import logging
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crdt_kv
from crdt_kv import (
    ClockSkewError,
    ClosedError,
    ConfigError,
    CorruptionError,
    EncodingError,
    Entry,
    RawEntry,
    ReadOnlyError,
    StorageError,
    Store,
    StoreNotFoundError,
    Version,
)
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.codec import MAX_KEY_BYTES, MAX_VALUE_BYTES, short_repr
from crdt_kv.hlc import pack, unpack
from crdt_kv.testing import ManualClock

Factory = Callable[..., Store]
T0 = 1_700_000_000_000


def snapshot(s: Store) -> tuple[bytes, int, int, list[tuple[Any, Any]], list[Entry]]:
    return s.digest(), len(s), s.last_seq, list(s.items()), list(s.changes())


def mem(peer: str = "p", clock: Callable[[], int] | None = None, **kw: Any) -> Store:
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock or ManualClock(), **kw)


# --- put / get / delete / entry / in / len ------------------------------------------------


def test_put_get_delete_entry(
    store_factory: Factory, backend_name: str, clock: ManualClock
) -> None:
    db = store_factory(backend_name, peer_id="a")
    v1 = db.put("user:1", {"name": "Ada"})
    assert isinstance(v1, Version)
    assert v1.peer == "a"
    assert unpack(v1.hlc)[0] == clock.now
    assert db.get("user:1") == {"name": "Ada"}
    assert db["user:1"] == {"name": "Ada"}
    assert "user:1" in db
    assert len(db) == 1

    v2 = db.put("user:1", [1, 2])
    assert v2 > v1
    assert db.get("user:1") == [1, 2]
    assert len(db) == 1

    v3 = db.delete("user:1")
    assert v3 > v2
    assert db.get("user:1") is None
    assert db.get("user:1", "dflt") == "dflt"
    assert "user:1" not in db
    assert len(db) == 0
    e = db.entry("user:1")
    assert e is not None
    assert (e.key, e.value, e.deleted, e.hlc, e.peer) == ("user:1", None, True, v3.hlc, "a")
    assert e.version == v3
    with pytest.raises(KeyError):
        db["user:1"]


def test_missing_key_and_default(store_factory: Factory) -> None:
    db = store_factory()
    assert db.get("nope") is None
    assert db.get("nope", 7) == 7
    assert db.entry("nope") is None
    assert "nope" not in db
    db.put("none", None)  # None is a value, not a deletion
    assert "none" in db
    assert db.get("none", 7) is None
    assert len(db) == 1


def test_delete_of_an_absent_key_writes_a_tombstone(store_factory: Factory) -> None:
    db = store_factory()
    v = db.delete("ghost")
    e = db.entry("ghost")
    assert e is not None and e.deleted and e.version == v
    assert len(db) == 0
    assert [c.key for c in db.changes()] == ["ghost"]


def test_entry_carries_seq_and_matches_changes(store_factory: Factory) -> None:
    db = store_factory()
    db.put("a", 1)
    db.put("b", 2)
    db.put("a", 3)
    ea, eb = db.entry("a"), db.entry("b")
    assert ea is not None and eb is not None
    assert (eb.seq, ea.seq) == (2, 3)
    assert list(db.changes()) == [eb, ea]


def test_dunder_mapping_methods(store_factory: Factory) -> None:
    db = store_factory()
    db["x"] = 1
    db["y"] = 2
    del db["x"]
    assert list(db) == ["y"]
    assert db.get("x") is None


def test_versions_are_strictly_increasing_while_the_clock_stands_still(
    store_factory: Factory, clock: ManualClock
) -> None:
    db = store_factory()
    versions = [db.put(f"k{i % 3}", i) for i in range(50)]
    clock.advance(-10_000)
    versions += [db.delete("k0"), db.put("k1", "late")]
    assert versions == sorted(versions)
    assert len({v.hlc for v in versions}) == len(versions)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abcdef"), st.integers(0, 9)),
        st.tuples(st.just("del"), st.sampled_from("abcdef"), st.none()),
        st.tuples(
            st.just("batch"),
            st.lists(
                st.tuples(st.sampled_from("abcdef"), st.none() | st.integers(0, 9)), max_size=5
            ),
            st.booleans(),
        ),
        st.tuples(
            st.just("apply"),
            st.lists(
                st.tuples(
                    st.sampled_from("abcdef"),
                    st.none() | st.integers(0, 9),
                    st.integers(-3, 3),
                    st.sampled_from(["o", "q"]),
                ),
                max_size=5,
            ),
            st.none(),
        ),
    ),
    max_size=30,
)


@given(ops=ops)
def test_len_items_and_log_match_a_model(ops: list[tuple[Any, Any, Any]]) -> None:
    """len() is kept incrementally; it must equal the live keys after any mix of writes."""
    clock = ManualClock()
    db = mem("p", clock)
    model: dict[str, tuple[int, str, Any]] = {}  # key -> (hlc, peer, value or None if deleted)
    for op in ops:
        clock.advance(1)
        if op[0] == "put":
            v = db.put(op[1], op[2])
            model[op[1]] = (v.hlc, "p", op[2])
        elif op[0] == "del":
            v = db.delete(op[1])
            model[op[1]] = (v.hlc, "p", None)
        elif op[0] == "batch":
            staged: dict[str, Any] = {}
            try:
                with db.batch() as b:
                    for key, value in op[1]:
                        if value is None:
                            b.delete(key)
                        else:
                            b.put(key, value)
                        staged[key] = value
                    if op[2]:
                        raise RuntimeError("abort")
            except RuntimeError:
                staged = {}
            for key, value in staged.items():
                e = db.entry(key)
                assert e is not None
                model[key] = (e.hlc, "p", value)
        else:
            entries = []
            for key, value, dt, peer in op[1]:
                hlc = pack(clock.now + dt, 0)
                deleted = value is None
                entries.append(Entry(key, value, hlc, peer, deleted))
                cur = model.get(key)
                cand = (hlc, peer, value)
                if cur is None or (hlc, peer, deleted, b"" if deleted else cbor2.dumps(value)) > (
                    cur[0],
                    cur[1],
                    cur[2] is None,
                    b"" if cur[2] is None else cbor2.dumps(cur[2]),
                ):
                    model[key] = cand
            db.apply(entries)
        live = {k: v[2] for k, v in model.items() if v[2] is not None}
        assert len(db) == len(live)
        assert dict(db.items()) == live
        assert list(db.keys()) == sorted(live)
        changes = list(db.changes())
        assert sorted(c.key for c in changes) == sorted(model)
        assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    db.close()


# --- ranges -------------------------------------------------------------------------------

KEYS = st.text(alphabet="ab\u00e9\x00", max_size=3)


@given(
    keys=st.sets(KEYS, max_size=12),
    lo=st.none() | KEYS,
    hi=st.none() | KEYS,
    lo_incl=st.booleans(),
    hi_incl=st.booleans(),
    reverse=st.booleans(),
    limit=st.none() | st.integers(0, 5),
    dead=st.sets(KEYS, max_size=4),
)
def test_range_bounds_match_a_model(
    keys: set[str],
    lo: str | None,
    hi: str | None,
    lo_incl: bool,
    hi_incl: bool,
    reverse: bool,
    limit: int | None,
    dead: set[str],
) -> None:
    db = mem()
    for k in sorted(keys | dead):
        db.put(k, k.upper())
    for k in dead:
        db.delete(k)
    live = sorted(keys - dead, key=lambda s: s.encode())

    def inside(k: str) -> bool:
        kb = k.encode()
        if lo is not None and (kb < lo.encode() or (kb == lo.encode() and not lo_incl)):
            return False
        return hi is None or kb < hi.encode() or (kb == hi.encode() and hi_incl)

    want = [k for k in live if inside(k)]
    if reverse:
        want.reverse()
    if limit is not None:
        want = want[:limit]
    bounds: dict[str, Any] = {"reverse": reverse, "limit": limit}
    bounds["gte" if lo_incl else "gt"] = lo
    bounds["lte" if hi_incl else "lt"] = hi
    assert list(db.keys(**bounds)) == want
    assert list(db.items(**bounds)) == [(k, k.upper()) for k in want]
    assert list(db.values(**bounds)) == [k.upper() for k in want]
    db.close()


def test_range_example_from_the_issue(store_factory: Factory, backend_name: str) -> None:
    db = store_factory(backend_name)
    for k in ["user:1", "user:2", "user:9", "user;", "users", "usea", "user:"]:
        db.put(k, k)
    assert list(db.keys(gte="user:", lt="user;")) == ["user:", "user:1", "user:2", "user:9"]
    assert list(db.keys(gt="user:", lte="user;")) == ["user:1", "user:2", "user:9", "user;"]
    assert list(db.keys(gte="user:", lt="user;", reverse=True, limit=2)) == ["user:9", "user:2"]
    assert list(db.keys(gte="user:", lt="user:")) == []
    assert list(db.keys(gte="z", lt="a")) == []
    assert list(db.keys(limit=0)) == []


@pytest.mark.parametrize(
    "bounds",
    [{"gt": "a", "gte": "a"}, {"lt": "a", "lte": "a"}, {"limit": -1}, {"limit": 1.5}],
)
def test_range_argument_errors(store_factory: Factory, bounds: dict[str, Any]) -> None:
    db = store_factory()
    with pytest.raises(ValueError):
        list(db.items(**bounds))


def test_range_bound_of_the_wrong_type(store_factory: Factory) -> None:
    db = store_factory()
    with pytest.raises(EncodingError, match="key 5"):
        list(db.items(gte=5))


# --- batches ------------------------------------------------------------------------------


def test_batch_commits_atomically(store_factory: Factory, backend_name: str) -> None:
    db = store_factory(backend_name)
    db.put("b", "old")
    commits = db.stats["commits"]
    with db.batch() as b:
        b.put("a", 1)
        b.delete("b")
        b.put("c", 3)
        assert len(b) == 3
        assert db.get("a") is None  # nothing visible before commit
    assert db.stats["commits"] == commits + 1
    assert dict(db.items()) == {"a": 1, "c": 3}
    assert len(b.versions) == 3 and b.versions == sorted(b.versions)
    assert len(db) == 2
    assert [e.key for e in db.changes()] == ["a", "b", "c"]


def test_exception_in_batch_writes_nothing(store_factory: Factory, backend_name: str) -> None:
    db = store_factory(backend_name)
    db.put("keep", 1)
    before = snapshot(db)
    with pytest.raises(ZeroDivisionError), db.batch() as b:
        b.put("a", 1)
        b.delete("keep")
        _ = 1 / 0
    assert snapshot(db) == before
    with pytest.raises(ClosedError):
        b.put("late", 1)


def test_unencodable_value_in_batch_writes_nothing(store_factory: Factory) -> None:
    db = store_factory()
    db.put("keep", 1)
    before = snapshot(db)
    with pytest.raises(EncodingError, match="'bad'"), db.batch() as b:
        b.put("a", 1)
        b.put("bad", object())
    assert snapshot(db) == before


def test_same_key_twice_in_a_batch_last_wins(store_factory: Factory) -> None:
    db = store_factory()
    with db.batch() as b:
        b.put("k", 1)
        b.put("j", 0)
        b.put("k", 2)
    assert db.get("k") == 2
    assert len(db) == 2
    assert [e.key for e in db.changes()] == ["j", "k"]  # compact: one log entry per key
    with db.batch() as b:
        b.put("k", 3)
        b.delete("k")
    assert "k" not in db
    assert len(db) == 1


def test_batch_commit_discard_and_empty(store_factory: Factory) -> None:
    db = store_factory()
    b = db.batch()
    b.put("x", 1)
    versions = b.commit()
    assert len(versions) == 1 and db.get("x") == 1
    with pytest.raises(ClosedError):
        b.commit()
    b2 = db.batch()
    b2.put("y", 1)
    b2.discard()
    assert "y" not in db
    seq = db.last_seq
    with db.batch():
        pass
    assert db.last_seq == seq


# --- change log ---------------------------------------------------------------------------


def test_changes_are_compact_and_in_sequence_order(store_factory: Factory) -> None:
    db = store_factory()
    for i in range(40):
        db.put(f"k{i % 7}", i)
    db.delete("k3")
    changes = list(db.changes())
    assert len(changes) == 7
    assert len({c.key for c in changes}) == 7
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and seqs[-1] == db.last_seq == 41
    for c in changes:
        assert c == db.entry(c.key)
    for since in (0, 5, 36, 38, 41, 100):
        assert list(db.changes(since)) == [c for c in changes if c.seq > since]
    with pytest.raises(ValueError):
        list(db.changes(-1))


def test_changes_while_writing(store_factory: Factory, backend_name: str) -> None:
    """Writes during iteration never break it: sequences stay increasing, nothing repeats
    at the same sequence, and every key that existed before is seen."""
    db = store_factory(backend_name)
    for i in range(600):
        db.put(f"k{i:04d}", i)
    seen: list[tuple[str, int]] = []
    for n, e in enumerate(db.changes()):
        seen.append((e.key, e.seq))
        if n % 3 == 0 and n < 600:
            db.put(f"k{n:04d}", -1)  # moves an already-seen key to the end of the log
    seqs = [s for _, s in seen]
    assert seqs == sorted(set(seqs))
    assert {k for k, _ in seen} == {f"k{i:04d}" for i in range(600)}
    assert len(list(db.changes())) == 600


def test_raw_changes_limit(store_factory: Factory) -> None:
    db = store_factory()
    for i in range(10):
        db.put(f"k{i}", i)
    got = list(db.raw_changes(2, limit=3))
    assert [r.seq for r in got] == [3, 4, 5]
    assert all(isinstance(r, RawEntry) for r in got)


def test_exclude_source_skips_only_that_peers_entries() -> None:
    """More than one log chunk of entries from the excluded source must not hide the rest."""
    clock = ManualClock()
    db = mem("me", clock)
    inc = b"\x01" * 16
    hlc = pack(clock.now, 0)
    theirs = [
        RawEntry(f"r{i:04d}".encode(), cbor2.dumps(i), hlc, "them", False) for i in range(600)
    ]
    assert db.apply_raw(theirs, cursor=("them", inc, 600)) == 600
    db.put("local", 1)
    db.put("r0001", "overwritten here")
    assert db.cursor("them", inc) == 600
    assert db.cursors() == {("them", inc): 600}
    sent = [r.key for r in db.raw_changes(exclude_source=("them", inc))]
    assert sent == [b"local", b"r0001"]
    assert len(list(db.raw_changes(exclude_source=("other", inc)))) == 601


# --- apply / merge ------------------------------------------------------------------------


def test_apply_reflects_every_write_and_is_idempotent(
    store_factory: Factory, backend_name: str
) -> None:
    a = store_factory(backend_name, peer_id="a")
    b = store_factory(backend_name, peer_id="b")
    b.put("k5", "from b")  # same wall clock: stamp (T0, 0) loses to a's (T0, 5)
    for i in range(20):
        a.put(f"k{i}", {"i": i})
    a.delete("k3")
    b.put("only b", 1)
    assert b.apply(a.changes()) == 20
    assert b.get("k5") == {"i": 5}
    assert b.apply(a.changes()) == 0
    assert a.apply(b.changes()) == 1
    assert a.apply(b.changes()) == 0
    assert a.digest() == b.digest()
    assert list(a.items()) == list(b.items())
    assert len(a) == len(b) == 20
    ea, eb = a.entry("k3"), b.entry("k3")
    assert ea is not None and eb is not None and eb.deleted
    assert (ea.key, ea.value, ea.hlc, ea.peer, ea.deleted) == (
        eb.key,
        eb.value,
        eb.hlc,
        eb.peer,
        eb.deleted,
    )


def test_apply_counts_only_state_changes(store_factory: Factory, clock: ManualClock) -> None:
    db = store_factory(peer_id="b")
    db.put("x", "new")
    old = Entry("x", "old", pack(clock.now - 100, 0), "a")
    newer = Entry("y", 1, pack(clock.now, 5), "a")
    newest = Entry("y", 2, pack(clock.now, 6), "a")
    tomb = Entry("z", None, pack(clock.now, 1), "a", deleted=True)
    assert db.apply([old, newer, newest, tomb]) == 2  # y (once) and z
    assert db.get("x") == "new" and db.get("y") == 2
    z = db.entry("z")
    assert z is not None and z.deleted
    assert db.apply([old, newer, newest, tomb]) == 0
    assert db.apply([]) == 0


def test_apply_advances_the_local_clock(store_factory: Factory, clock: ManualClock) -> None:
    db = store_factory(peer_id="b")
    remote = pack(clock.now + 400, 9)  # ahead, but within max_offset_ms
    db.apply([Entry("k", 1, remote, "a")])
    assert db.hlc.last > remote
    v = db.put("k", 2)
    assert v.hlc > remote
    assert db.get("k") == 2


def test_clock_skew_rejects_the_whole_apply(store_factory: Factory, clock: ManualClock) -> None:
    db = store_factory(peer_id="b", max_offset_ms=500)
    db.put("x", 1)
    before, last = snapshot(db), db.hlc.last
    good = Entry("g", 1, pack(clock.now, 0), "a")
    future = Entry("f", 1, pack(clock.now + 501, 0), "a")
    with pytest.raises(ClockSkewError) as info:
        db.apply([good, future])
    assert info.value.remote_hlc == future.hlc
    assert snapshot(db) == before
    assert db.hlc.last == last
    assert db.stats["apply_rejected"] == 1
    clock.advance(1)
    assert db.apply([good, future]) == 2  # accepted once the wall clock caught up


def test_equal_stamps_tie_break_by_peer_then_resolver(store_factory: Factory) -> None:
    stamp = pack(T0, 3)
    lo, hi = Entry("k", "from a", stamp, "a"), Entry("k", "from b", stamp, "b")
    db = store_factory(peer_id="x")
    db.apply([hi, lo])
    db2 = store_factory(peer_id="y")
    db2.apply([lo])
    db2.apply([hi])
    assert db.get("k") == db2.get("k") == "from b"

    def longest(a: Entry, b: Entry) -> bool:
        return len(a.value or "") > len(b.value or "")

    lo2 = Entry("k", "from a, longer", stamp, "a")
    r1 = store_factory(peer_id="x", resolver=longest)
    r2 = store_factory(peer_id="y", resolver=longest)
    r1.apply([lo2, hi])
    r2.apply([hi])
    r2.apply([lo2])
    assert r1.get("k") == r2.get("k") == "from a, longer"
    assert r1.digest() == r2.digest()


def test_apply_raw_rejects_corrupt_entries_and_keeps_the_store(store_factory: Factory) -> None:
    db = store_factory(peer_id="b")
    db.put("x", 1)
    before = snapshot(db)
    now = pack(T0, 0)
    good = RawEntry(b"g", cbor2.dumps(1), now, "a", False)
    bad_cases = [
        RawEntry(b"k", b"\xff\xff", now, "a", False),  # not CBOR
        RawEntry(b"k", b"\x82\x01", now, "a", False),  # truncated CBOR array
        RawEntry(b"k", b"x", now, "a", True),  # tombstone with a value
        RawEntry(b"k", cbor2.dumps(1), -1, "a", False),
        RawEntry(b"k", cbor2.dumps(1), 1 << 64, "a", False),
        RawEntry(b"k", cbor2.dumps(1), now, "", False),
        RawEntry(b"k", cbor2.dumps(1), now, "p" * 256, False),
        RawEntry("k", cbor2.dumps(1), now, "a", False),  # type: ignore[arg-type]
    ]
    for bad in bad_cases:
        with pytest.raises(EncodingError):
            db.apply_raw([good, bad])
        assert snapshot(db) == before, bad
    assert db.stats["apply_rejected"] == len(bad_cases)
    with pytest.raises(TypeError):
        db.apply_raw([("k", 1)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        db.apply([("k", 1)])  # type: ignore[list-item]
    assert snapshot(db) == before


def test_apply_raw_checks_each_key_and_value_on_its_fast_path(store_factory: Factory) -> None:
    """validate_all checks a batch's keys in one ASCII pass: a non-ASCII key still gets
    its own utf-8 check, and values are still decoded one by one (two items or a truncated
    one fail); a valid non-ASCII key and a value holding a 0xff byte still pass."""
    db = store_factory(peer_id="b")
    now = pack(T0, 0)
    good = [
        RawEntry(b"a", cbor2.dumps(1), now, "a", False),
        RawEntry("\u00e9".encode(), cbor2.dumps(2), now, "a", False),
        RawEntry(b"c", cbor2.dumps(255), now, "a", False),
    ]
    assert db.apply_raw(good) == 3
    assert (db.get("\u00e9"), db.get("c")) == (2, 255)
    before = snapshot(db)
    bad_cases = [
        RawEntry(b"\xc3", cbor2.dumps(1), now, "a", False),  # not utf-8
        RawEntry(b"k", cbor2.dumps(1) + cbor2.dumps(2), now, "a", False),  # two items
        RawEntry(b"k", b"\x18", now, "a", False),  # truncated
    ]
    for bad in bad_cases:
        with pytest.raises(EncodingError, match="corrupt"):
            db.apply_raw([good[0], bad])
        assert snapshot(db) == before, bad


def test_apply_raw_limits_keys_and_values_from_a_peer_it_knows(store_factory: Factory) -> None:
    """The quick path of validate_all (taken once a batch's peer is known) refuses a key
    over MAX_KEY_BYTES and a value over MAX_VALUE_BYTES like validate does: it once
    stored both from any peer it had applied from before."""
    db = store_factory(peer_id="b")
    now = pack(T0, 0)
    assert db.apply_raw([RawEntry(b"a", cbor2.dumps(1), now, "a", False)]) == 1
    before = snapshot(db)
    huge_key = RawEntry(b"k" * (MAX_KEY_BYTES + 1), cbor2.dumps(1), now, "a", False)
    huge_value = RawEntry(b"v", cbor2.dumps(b"x" * (MAX_VALUE_BYTES + 1)), now, "a", False)
    for bad, what in ((huge_key, "entry key"), (huge_value, "value of key")):
        with pytest.raises(EncodingError, match=f"{what} .* bytes; the limit is"):
            db.apply_raw([bad])
        assert snapshot(db) == before


def test_apply_of_an_entry_with_an_unencodable_value(store_factory: Factory) -> None:
    db = store_factory()
    with pytest.raises(EncodingError, match="'k'"):
        db.apply([Entry("k", object(), pack(T0, 0), "a")])
    assert len(db) == 0 and db.last_seq == 0


def test_apply_of_entries_larger_than_one_chunk(store_factory: Factory) -> None:
    src = store_factory(peer_id="a")
    with src.batch() as b:
        for i in range(5200):
            b.put(f"k{i:05d}", i)
    dst = store_factory(peer_id="b")
    assert dst.apply(src.changes()) == 5200
    assert dst.digest() == src.digest() and len(dst) == 5200


# --- digest -------------------------------------------------------------------------------


def test_digest_is_history_independent_and_content_sensitive(store_factory: Factory) -> None:
    a = store_factory(peer_id="a")
    assert a.digest() == bytes(32)
    a.put("x", 1)
    a.put("y", 2)
    a.delete("y")
    a.put("x", 3)
    b = store_factory(peer_id="b")
    b.apply(reversed(list(a.changes())))
    assert b.digest() == a.digest()
    d = a.digest()
    a.put("z", None)
    assert a.digest() != d
    c = store_factory(peer_id="c")
    c.apply([e for e in b.changes() if not e.deleted])
    assert c.digest() != b.digest()  # tombstones count
    assert len(c) == len(b)


def test_digest_is_restored_on_reopen_without_a_scan(
    store_factory: Factory, backend_name: str, tmp_path: Any
) -> None:
    if backend_name == "memory":
        pytest.skip("memory stores do not reopen from a path")
    path = str(tmp_path / "db")
    db = store_factory(backend_name, path=path, peer_id="a")
    for i in range(30):
        db.put(f"k{i % 11}", i)
    db.delete("k2")
    state = (db.digest(), len(db), db.last_seq)
    db.close()
    db2 = store_factory(backend_name, path=path)
    assert (db2.digest(), len(db2), db2.last_seq) == state


# --- encodings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "good", "bad"),
    [
        ("binary", [b"", b"\x00\xff", bytearray(b"ba")], ["str", 1, None]),
        ("utf-8", ["", "h\u00e9llo", "\U0001f600"], [b"x", 1, None, "\ud800"]),
        ("json", [None, 1, 1.5, "s", [1, "a"], {"k": [True]}], [{1, 2}, float("nan"), b"x"]),
        (
            "cbor",
            [None, 1, -(2**70), b"x", "s", [1, {"a": b"b"}], {1: 2}],
            [object(), {"n": [object()]}],
        ),
    ],
)
def test_value_encodings(
    store_factory: Factory, encoding: str, good: list[Any], bad: list[Any]
) -> None:
    db = store_factory(value_encoding=encoding)
    for i, value in enumerate(good):
        db.put(f"k{i}", value)
        expect = bytes(value) if isinstance(value, bytearray) else value
        assert db.get(f"k{i}") == expect
    before = snapshot(db)
    for value in bad:
        with pytest.raises(EncodingError, match="'k0'"):
            db.put("k0", value)
        assert snapshot(db) == before
    assert db.value_encoding == encoding


def test_json_values_round_trip_through_another_replica(store_factory: Factory) -> None:
    a = store_factory(peer_id="a", value_encoding="json")
    a.put("k", {"b": 1, "a": [1.5, None]})
    b = store_factory(peer_id="b", value_encoding="json")
    b.apply(a.changes())
    assert b.get("k") == {"b": 1, "a": [1.5, None]}
    assert b.digest() == a.digest()


def test_binary_keys(store_factory: Factory) -> None:
    db = store_factory(key_encoding="binary")
    for k in [b"\xff", b"\x00", b"a", b"a\x00", b""]:
        db.put(k, k.hex())
    assert list(db.keys()) == [b"", b"\x00", b"a", b"a\x00", b"\xff"]
    assert list(db.keys(gt=b"a", lt=b"\xff")) == [b"a\x00"]
    assert db.get(bytearray(b"a")) == "61"
    with pytest.raises(EncodingError):
        db.put("text", 1)


@pytest.mark.parametrize("key", [1, None, b"bytes", ("t",), "\ud800"])
def test_wrong_key_type(store_factory: Factory, key: Any) -> None:
    db = store_factory()
    db.put("x", 1)
    before = snapshot(db)
    for op in (
        lambda: db.put(key, 1),
        lambda: db.get(key),
        lambda: db.delete(key),
        lambda: db.entry(key),
        lambda: key in db,
    ):
        with pytest.raises(EncodingError, match="key"):
            op()
    assert snapshot(db) == before


def test_unknown_encodings_are_config_errors(store_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="available: binary, cbor, json, utf-8"):
        store_factory(value_encoding="msgpack")
    with pytest.raises(ConfigError, match="available: binary, utf-8"):
        store_factory(key_encoding="latin-1")


# --- hooks --------------------------------------------------------------------------------


def test_on_commit_and_on_change_hooks(store_factory: Factory, clock: ManualClock) -> None:
    db = store_factory(peer_id="me")
    commits: list[int] = []
    changes: list[Entry] = []
    stop_commit = db.on_commit(commits.append)
    db.on_change(changes.append)
    db.put("a", 1)
    with db.batch() as b:
        b.put("b", 2)
        b.delete("a")
    db.apply([Entry("c", 3, pack(clock.now, 9), "them")])
    db.apply([Entry("c", 3, pack(clock.now, 9), "them")])  # no change: no hooks
    assert commits == [1, 3, 4]
    assert [(e.key, e.value, e.deleted, e.seq, e.peer) for e in changes] == [
        ("a", 1, False, 1, "me"),
        ("b", 2, False, 2, "me"),
        ("a", None, True, 3, "me"),
        ("c", 3, False, 4, "them"),
    ]
    assert changes[-1] == db.entry("c")
    stop_commit()
    stop_commit()  # unsubscribing twice is harmless
    db.put("d", 4)
    assert commits == [1, 3, 4]
    assert changes[-1].key == "d"


def test_a_raising_hook_is_counted_not_propagated(
    store_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    db = store_factory()

    def boom(_: object) -> None:
        raise RuntimeError("hook failed")

    seen: list[int] = []
    db.on_commit(boom)
    db.on_change(boom)
    db.on_commit(seen.append)
    with caplog.at_level(logging.ERROR, logger="crdt_kv.store"):
        v = db.put("k", 1)
    assert db.get("k") == 1 and v.peer == db.peer_id
    assert db.stats["hook_errors"] == 2
    assert seen == [1]  # later hooks still ran
    assert "hook failed" in caplog.text


# --- close --------------------------------------------------------------------------------


def test_close_is_idempotent_and_later_use_raises(
    store_factory: Factory, backend_name: str
) -> None:
    db = store_factory(backend_name)
    db.put("k", 1)
    it = db.items()
    assert not db.closed
    db.close()
    db.close()
    assert db.closed
    assert "closed" in repr(db)
    for op in (
        lambda: db.put("k", 2),
        lambda: db.get("k"),
        lambda: db.delete("k"),
        lambda: db.entry("k"),
        lambda: "k" in db,
        lambda: len(db),
        db.digest,
        db.batch,
        lambda: list(db.changes()),
        lambda: db.apply([]),
        lambda: db.apply_raw([]),
        lambda: list(it),
        lambda: list(db.keys()),
        db.cursors,
    ):
        with pytest.raises(ClosedError):
            op()


def test_batch_after_close_raises(store_factory: Factory) -> None:
    db = store_factory()
    b = db.batch()
    b.put("k", 1)
    db.close()
    with pytest.raises(ClosedError):
        b.commit()


def test_context_manager_closes(tmp_path: Any, clock: ManualClock) -> None:
    with crdt_kv.open(str(tmp_path / "db"), peer_id="a", clock=clock) as db:
        db.put("k", 1)
    assert db.closed


# --- opening and reopening ----------------------------------------------------------------


def test_reopen_keeps_data_peer_incarnation_and_hlc_when_the_clock_goes_back(
    store_factory: Factory, backend_name: str, tmp_path: Any
) -> None:
    if backend_name == "memory":
        pytest.skip("memory stores do not reopen from a path")
    path = str(tmp_path / "db")
    clock = ManualClock(T0)
    db = store_factory(backend_name, path=path, clock=clock, rng=random.Random(1))
    peer, inc = db.peer_id, db.incarnation
    last = db.put("k", "v").hlc
    remote = pack(T0 + 450, 7)
    db.apply([Entry("r", 1, remote, "zz")])  # a remote stamp ahead of our wall clock
    db.close()

    back = ManualClock(T0 - 3_600_000)  # an hour earlier
    db2 = store_factory(backend_name, path=path, clock=back, rng=random.Random(2))
    assert (db2.peer_id, db2.incarnation) == (peer, inc)
    assert db2.get("k") == "v" and db2.get("r") == 1
    v = db2.put("k2", 2)
    assert v.hlc > max(last, remote)
    db2.close()

    db3 = store_factory(backend_name, path=path, clock=back, peer_id=peer)
    assert db3.put("k3", 3).hlc > v.hlc


def test_default_peer_id_is_random_and_persisted(tmp_path: Any, clock: ManualClock) -> None:
    path = str(tmp_path / "db")
    with crdt_kv.open(path, clock=clock, rng=random.Random(7)) as db:
        peer = db.peer_id
        assert len(peer) == 16 and int(peer, 16) >= 0
        assert len(db.incarnation) == 16
    with crdt_kv.open(path, clock=clock, rng=random.Random(8)) as db:
        assert db.peer_id == peer
    with crdt_kv.open(str(tmp_path / "other"), clock=clock, rng=random.Random(8)) as other:
        assert other.peer_id != peer


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"peer_id": "b"}, "belongs to peer 'a'"),
        ({"value_encoding": "json"}, "value_encoding='cbor'"),
        ({"key_encoding": "binary"}, "key_encoding='utf-8'"),
    ],
)
def test_reopen_with_mismatched_options(
    store_factory: Factory, backend_name: str, tmp_path: Any, option: dict[str, str], message: str
) -> None:
    if backend_name == "memory":
        pytest.skip("memory stores do not reopen from a path")
    path = str(tmp_path / "db")
    store_factory(backend_name, path=path, peer_id="a").close()
    with pytest.raises(ConfigError, match=message):
        store_factory(backend_name, path=path, **option)
    # The failed open released the backend: a correct open works at once.
    with crdt_kv.open(path, backend=backend_name, peer_id="a") as db:
        assert db.peer_id == "a"


@pytest.mark.parametrize(
    "option",
    [
        {"value_encoding": "nope"},
        {"key_encoding": "nope"},
        {"max_offset_ms": -1},
        {"resolver": "not callable"},
        {"peer_id": ""},
    ],
)
def test_a_rejected_open_releases_the_backend(tmp_path: Any, option: dict[str, Any]) -> None:
    path = str(tmp_path / "db")
    crdt_kv.open(path, peer_id="a").close()
    with pytest.raises(ConfigError) as held:  # the traceback keeps the failed frame alive
        crdt_kv.open(path, **option)
    with crdt_kv.open(path, peer_id="a") as db:
        assert db.peer_id == "a"
    del held
    gc.collect()


def test_unknown_backend_lists_the_available_ones(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        crdt_kv.open(str(tmp_path / "x"), backend="leveldb")
    msg = str(info.value)
    assert "'leveldb'" in msg
    for name in crdt_kv.available_backends():
        assert name in msg
    assert {"rocksdb", "memory", "sqlite"} <= set(crdt_kv.available_backends())


def test_disk_backends_need_a_path() -> None:
    with pytest.raises(ConfigError, match="needs a path"):
        crdt_kv.open()
    with crdt_kv.open(backend="memory") as db:
        db.put("k", 1)


def test_backend_without_metadata_is_refused(tmp_path: Any) -> None:
    from crdt_kv.backends import open_backend

    be = open_backend("memory")
    be.write([(b"zz", b"junk")])
    with pytest.raises(CorruptionError, match="no crdt_kv metadata"):
        Store(be, clock=ManualClock(), rng=random.Random(0))
    assert be.closed


def test_a_corrupt_record_raises_corruption_error(store_factory: Factory) -> None:
    db = store_factory()
    db.put("k", 1)
    db.backend.write([(b"dk", b"\x09garbage-record")])
    with pytest.raises(CorruptionError, match="'k'"):
        db.get("k")
    with pytest.raises(CorruptionError):
        db.entry("k")
    db.backend.write([(b"dk", b"\x01\x00")])
    with pytest.raises(CorruptionError, match=r"truncated|malformed"):
        db.entry("k")


def test_open_with_a_config_mapping_and_an_injected_backend(clock: ManualClock) -> None:
    from crdt_kv.backends.memory import MemoryBackend

    be = MemoryBackend()
    with crdt_kv.open(backend=be, config={"node": {"peer_id": "cfg"}}, clock=clock) as db:
        db.put("k", 1)
        assert db.peer_id == "cfg" and db.backend is be
    with crdt_kv.open(backend=MemoryBackend(), config={"node": {"peer_id": "cfg"}}) as db2:
        assert db2.peer_id == "cfg"
    with pytest.raises(ConfigError, match="clock"):
        crdt_kv.open(backend="memory", clock=5)  # type: ignore[arg-type]


# --- read-only stores, storage failures, short key reprs (issue 11) ----------------------

_WRITES: list[tuple[str, Callable[[Store], object]]] = [
    ("put", lambda s: s.put("k", 1)),
    ("put", lambda s: s.__setitem__("k", 1)),
    ("delete", lambda s: s.delete("k")),
    ("delete", lambda s: s.__delitem__("k")),
    ("merge", lambda s: s.merge("k", [], 1)),
    ("batch", lambda s: s.batch()),
    ("apply", lambda s: s.apply([])),
    ("apply_raw", lambda s: s.apply_raw([])),
    ("forget_peer", lambda s: s.forget_peer("q")),
    ("raise_gc_horizon", lambda s: s.raise_gc_horizon(1)),
    ("gc", lambda s: s.gc()),
    ("checkpoint", lambda s: s.checkpoint()),
    ("drop_collected", lambda s: s.drop_collected([], below=1)),
    ("scrub", lambda s: s.scrub()),
    ("rotate_incarnation", lambda s: s.rotate_incarnation()),
]


@pytest.mark.parametrize(("op", "call"), _WRITES, ids=[f"{i}" for i in range(len(_WRITES))])
def test_every_write_of_a_read_only_store_raises_naming_it(
    op: str, call: Callable[[Store], object]
) -> None:
    be = MemoryBackend()
    w = crdt_kv.open(backend=be, peer_id="p", clock=ManualClock())  # still open, as a node's
    w.put("k", 0)
    raw = dict(be._data)
    with crdt_kv.open(backend=be, clock=ManualClock(), read_only=True) as ro:
        assert ro.read_only and ro["k"] == 0 and ro.peer_id == "p"
        with pytest.raises(ReadOnlyError, match=rf"^{op} refused: .* read-only"):
            call(ro)
    assert dict(be._data) == raw  # not even the open marker was written
    assert not be.closed  # the read-only view leaves the caller's backend open


def test_a_read_only_open_of_a_crashed_store_recovers_in_memory() -> None:
    """A store left open (a running node, or a crash) has its last keys' index entries and
    buckets unsaved; a read-only open computes them without writing."""
    be = MemoryBackend()
    w = crdt_kv.open(backend=be, peer_id="p", clock=ManualClock())
    for i in range(300):
        w.put(f"k{i}", i)
    w.delete("k7")
    raw = dict(be._data)
    ro = crdt_kv.open(backend=be, clock=ManualClock(), read_only=True)
    assert dict(be._data) == raw
    assert ro.digest() == w.digest() and len(ro) == 299
    assert ro.range_fingerprint(0, 2**64) == w.range_fingerprint(0, 2**64)
    assert ro.range_items(0, 2**63) == w.range_items(0, 2**63)
    assert ro.statistics() == w.statistics()
    ro.close()
    w.close()


def test_read_only_needs_an_existing_store_and_no_new_incarnation() -> None:
    with pytest.raises(StoreNotFoundError, match="no crdt_kv store in memory"):
        crdt_kv.open(backend=MemoryBackend(), read_only=True)
    be = MemoryBackend()
    crdt_kv.open(backend=be, clock=ManualClock()).close()
    with pytest.raises(ConfigError, match="new_incarnation"):
        crdt_kv.open(backend=be, read_only=True, new_incarnation=True)


def test_a_store_records_its_backend_and_refuses_another(tmp_path: Path) -> None:
    class Other(MemoryBackend):
        name = "other"

    be = MemoryBackend()
    crdt_kv.open(backend=be, clock=ManualClock()).close()
    copy = Other()
    copy.write(list(be._data.items()))
    with pytest.raises(ConfigError, match="uses the memory backend, not other"):
        crdt_kv.open(backend=copy, clock=ManualClock())


class FullDisk(MemoryBackend):
    """A memory backend whose writes fail as on a full disk while ``full`` is set."""

    full = False

    def _write(self, ops: Any) -> None:
        if self.full:
            raise StorageError("cannot write: no space left on device", errno=errno.ENOSPC)
        super()._write(ops)


def test_a_full_disk_fails_the_write_whole_and_the_store_recovers() -> None:
    be = FullDisk()
    s = crdt_kv.open(backend=be, peer_id="p", clock=ManualClock())
    s.put("a", 1)
    before, raw = snapshot(s), dict(be._data)
    be.full = True
    with pytest.raises(StorageError, match="no space") as info:
        s.put("b", 2)
    assert isinstance(info.value, crdt_kv.CrdtKvError) and info.value.errno == errno.ENOSPC
    with pytest.raises(StorageError), s.batch() as b:
        b.put("c", 3)
        b.delete("a")
    assert snapshot(s) == before and dict(be._data) == raw  # nothing partial
    be.full = False
    s.put("b", 2)  # no reopen needed
    assert s["b"] == 2 and len(s) == 2
    be.full = True
    s.close()  # never raises, even when its final writes fail
    s.close()


def test_a_full_disk_on_a_real_small_filesystem(tmp_path: Path) -> None:
    """RocksDB and SQLite on a 1 MiB tmpfs, where the test can mount one (root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]
    if os.geteuid() != 0 or subprocess.run(mount, check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here")
    try:
        for backend in ("rocksdb", "sqlite"):
            s = crdt_kv.open(mnt / backend, backend=backend, clock=ManualClock())
            n = 0
            with pytest.raises(StorageError) as info:
                for n in range(10_000):
                    s.put(f"k{n}", "x" * 2000)
            assert info.value.errno == errno.ENOSPC, info.value
            assert "k0" in s and f"k{n}" not in s
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            s.put("after", 1)  # works again once space is freed, without a reopen
            assert s["after"] == 1 and len(s) == n + 1
            s.close()
            with crdt_kv.open(mnt / backend, backend=backend, read_only=True) as ro:
                assert len(ro) == n + 1 and ro["after"] == 1
            subprocess.run(["mount", "-o", "remount,size=1m", str(mnt)], check=True)
            shutil.rmtree(mnt / backend)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_encoding_errors_show_a_short_prefix_of_an_oversized_key() -> None:
    s = mem()
    huge = "k" * (MAX_KEY_BYTES + 10)
    for call in (lambda: s.put(huge, 1), lambda: s.get(huge), lambda: s.delete(huge)):
        with pytest.raises(EncodingError) as info:
            call()
        text = str(info.value)
        assert len(text) < 300 and f"({MAX_KEY_BYTES + 10} bytes)" in text, text
    with pytest.raises(EncodingError) as info, s.batch() as b:
        b.put(huge, 1)
    assert len(str(info.value)) < 300
    assert short_repr("short") == "'short'"
    assert short_repr(b"\x00" * 100).endswith("... (100 bytes)")
