"""Range fingerprints (issue 10, store side): positions, the position index and the bucket
fingerprints stay exact through every kind of commit, collection and reopen, and agree
with an independent recomputation from the records."""

from __future__ import annotations

import hashlib
import pathlib
import random
import shutil
from typing import Any

import pytest
from fingerprint_layout import (
    MOD,
    check_index_and_buckets,
    check_store,
    settled,
    spec_hash,
    stale_buckets,
    storage,
)
from hypothesis import given
from hypothesis import strategies as st

import crdt_kv
from crdt_kv import RawEntry, Store
from crdt_kv.backends import open_backend
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.errors import CrdtKvError
from crdt_kv.fingerprint import (
    BUCKET_WIDTH,
    BUCKETS,
    POSITION_SPACE,
    Statistics,
    position,
    position_bytes,
    state_stamp,
)
from crdt_kv.store import buckets as buckets_module
from crdt_kv.testing import ManualClock

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SPACE = POSITION_SPACE


def open_mem(backend: MemoryBackend, clock: ManualClock, **kw: Any) -> Store:
    return crdt_kv.open(backend=backend, clock=clock, rng=random.Random(7), **kw)


def brute(s: Store, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
    """The items of ``[lo, hi)`` from raw storage, without crdt_kv's parsers."""
    out = []
    for k, rec in storage(s).items():
        if k[:1] == b"d":
            pos = int.from_bytes(hashlib.blake2b(k[1:], digest_size=8).digest(), "big")
            if lo <= pos < hi:
                out.append((pos, k[1:], spec_hash(k[1:], rec[:-8])))
    return sorted(out)


def check_range(s: Store, lo: int, hi: int) -> None:
    items = s.range_items(lo, hi)
    assert items == brute(s, lo, hi)
    assert s.range_fingerprint(lo, hi) == (sum(h for _, _, h in items) % MOD, len(items))


def test_position_and_state_stamp() -> None:
    assert position(b"k") == int.from_bytes(hashlib.blake2b(b"k", digest_size=8).digest(), "big")
    assert position_bytes(b"k") == position(b"k").to_bytes(8, "big")
    assert BUCKETS * BUCKET_WIDTH == SPACE
    e = RawEntry(b"k", b"", 5, "a", True)
    assert state_stamp(e) == 5
    sib = RawEntry(b"k", b"v", 9, "b", False)
    assert state_stamp(RawEntry(b"k", b"", 5, "a", True, others=(sib,))) == 9
    assert state_stamp(RawEntry(b"k", b"", 5, "a", True, context=(("c", 12),))) == 12
    st_ = Statistics(
        live=1, tombstones=2, keys=3, gc_horizon=0, collected=0, refused_below_horizon=0
    )
    with pytest.raises(AttributeError):
        st_.live = 2  # type: ignore[misc]


def test_range_arguments_are_checked(store_factory: Any) -> None:
    s = store_factory()
    for lo, hi in ((-1, 5), (5, 4), (0, SPACE + 1), (0.5, 3)):
        with pytest.raises(ValueError, match="position range"):
            s.range_fingerprint(lo, hi)
        with pytest.raises(ValueError, match="position range"):
            s.range_items(lo, hi)
    assert s.range_fingerprint(0, SPACE) == (0, 0) and s.range_items(0, SPACE) == []
    assert s.range_fingerprint(7, 7) == (0, 0)


def test_whole_range_is_the_digest_on_every_backend(store_factory: Any, backend_name: str) -> None:
    s = store_factory(backend_name)
    for i in range(300):
        s.put(f"k{i}", i)
    for i in range(0, 300, 3):
        s.delete(f"k{i}")
    with s.batch() as b:
        for i in range(0, 300, 7):
            b.put(f"k{i}", "again")
        b.delete("never")
    check_store(s)
    assert s.statistics().keys == 301 and s.statistics().tombstones == 301 - len(s)
    for lo, hi in ((0, BUCKET_WIDTH * 7), (BUCKET_WIDTH * 5 + 3, BUCKET_WIDTH * 900 + 11),
                   (SPACE // 3, SPACE // 3 + BUCKET_WIDTH // 2), (SPACE - 5, SPACE)):  # fmt: skip
        check_range(s, lo, hi)
    got = s.raw_entries([b"k1", b"missing", b"k3"])
    assert [e.key for e in got] == [b"k1", b"k3"] and got[1].deleted


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 40), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("batch"), st.integers(0, 40), st.integers(1, 6)),
        st.tuples(st.just("apply"), st.integers(0, 40), st.integers(0, 1)),
        st.tuples(st.just("gc"), st.just(0), st.integers(0, 3)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        st.tuples(st.just("close"), st.just(0), st.just(0)),
        st.tuples(st.just("checkpoint"), st.just(0), st.just(0)),
    ),
    max_size=40,
)
BOUNDS = st.tuples(st.integers(0, SPACE), st.integers(0, SPACE)).map(sorted)


@given(
    ops=OPS,
    ranges=st.lists(BOUNDS, min_size=1, max_size=4),
    siblings=st.booleans(),
    limit=st.sampled_from([2, 7, 1 << 14]),
)
def test_fingerprints_follow_every_change(
    ops: list[tuple[str, int, int]], ranges: list[list[int]], siblings: bool, limit: int
) -> None:
    """Through any commits, collections, checkpoints (``limit``: changed keys between the
    automatic ones), clean closes and crashes (``reopen`` drops the store unclosed), the
    memory, storage and range reads agree with the records."""
    saved = buckets_module.CHECKPOINT_KEYS
    buckets_module.CHECKPOINT_KEYS = limit
    try:
        follow_ops(ops, ranges, siblings)
    finally:
        buckets_module.CHECKPOINT_KEYS = saved


def follow_ops(ops: list[tuple[str, int, int]], ranges: list[list[int]], siblings: bool) -> None:
    clock = ManualClock(1_700_000_000_000)
    mode = "siblings" if siblings else "lww"
    mem, other_mem = MemoryBackend(), MemoryBackend()
    s = open_mem(mem, clock, peer_id="a", conflicts=mode)
    other = open_mem(other_mem, clock, peer_id="b", conflicts=mode)
    for op, k, n in ops:
        clock.advance(1)
        if op == "put":
            s.put(f"k{k}", n)
        elif op == "delete":
            s.delete(f"k{k}")
        elif op == "batch":
            with s.batch() as b:
                for j in range(n):
                    if j % 3 == 2:
                        b.delete(f"k{(k + j * 7) % 41}")
                    else:
                        b.put(f"k{(k + j * 7) % 41}", j)
        elif op == "apply":
            if n:
                other.put(f"k{k}", "b")
            else:
                other.delete(f"k{k}")
            s.apply(other.changes())
        elif op == "gc":
            s.raise_gc_horizon(max(0, s.hlc.last - n))
            s.gc()
        elif op == "checkpoint":
            s.checkpoint()
            check_index_and_buckets(storage(s), exact=True)
        elif op == "close":
            s.close()
            pairs = dict(mem._data)  # what a clean close left on disk
            check_index_and_buckets(pairs, exact=True)
            mem = MemoryBackend()
            mem.write(list(pairs.items()))
            s = open_mem(mem, clock)
        else:
            s = open_mem(mem, clock)
        check_store(s)
        check_range(s, *ranges[0])
    for lo, hi in ranges:
        check_range(s, lo, hi)
    for i in (0, 1, BUCKETS // 2, BUCKETS - 1):
        check_range(s, i * BUCKET_WIDTH, (i + 1) * BUCKET_WIDTH)


class FailingBackend(MemoryBackend):
    """A memory backend whose writes fail while ``fail`` is set."""

    fail = False

    def _write(self, ops: Any) -> None:
        if self.fail:
            raise OSError("disk full")
        super()._write(ops)


def test_failed_write_leaves_fingerprints_unchanged() -> None:
    clock = ManualClock(1_700_000_000_000)
    be = FailingBackend()
    s = open_mem(be, clock, peer_id="a")
    for i in range(50):
        s.put(f"k{i}", i)
    s.delete("k3")
    before = (list(settled(s).counts), list(s._log.buckets.sums), s._log.buckets.total)
    be.fail = True
    other = open_mem(MemoryBackend(), clock, peer_id="b")
    other.put("new", 1)
    other.put("k4", 2)
    for attempt in (
        lambda: s.put("k1", "x"),
        lambda: s.put("brand-new", "x"),
        lambda: s.delete("k2"),
        lambda: s.apply(other.changes()),
    ):
        with pytest.raises(OSError):
            attempt()
    after = (list(settled(s).counts), list(s._log.buckets.sums), s._log.buckets.total)
    assert after == before
    be.fail = False
    check_store(s)
    s.put("brand-new", "x")
    s.apply(other.changes())
    check_store(s)


def test_failed_gc_leaves_fingerprints_unchanged() -> None:
    clock = ManualClock(1_700_000_000_000)
    be = FailingBackend()
    s = open_mem(be, clock, peer_id="a")
    for i in range(20):
        s.put(f"k{i}", i)
        s.delete(f"k{i}")
    s.raise_gc_horizon(s.hlc.last + 1)
    before = (list(settled(s).sums), s._log.buckets.total, s.digest(), len(s))
    be.fail = True
    with pytest.raises(OSError):
        s.gc()
    assert (list(settled(s).sums), s._log.buckets.total, s.digest(), len(s)) == before
    be.fail = False
    assert s.gc() == 20
    check_store(s)


@pytest.mark.parametrize(
    ("backend", "name"), [("rocksdb", "format1-rocksdb"), ("sqlite", "format1.sqlite")]
)
def test_store_of_the_previous_release_builds_its_fingerprints(
    tmp_path: pathlib.Path, backend: str, name: str
) -> None:
    src, dst = FIXTURES / name, tmp_path / name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    raw = open_backend(backend, str(dst))
    assert raw.get(b"mfingerprints") is None and next(raw.iterate(b"x", b"y"), None) is None
    raw.close()
    clock = ManualClock(1_800_000_000_000)
    with crdt_kv.open(str(dst), backend=backend, clock=clock, rng=random.Random(1)) as s:
        digest, n = s.digest(), len(s)
        check_store(s)
        s.put("k03", "back")
        check_store(s)
    with crdt_kv.open(str(dst), backend=backend, clock=clock, rng=random.Random(1)) as s:
        assert len(s) == n + 1 and s.digest() != digest
        check_store(s)


def test_a_store_that_is_not_crdt_kv_is_still_refused() -> None:
    be = MemoryBackend()
    be.write([(b"x-something", b"1")])
    with pytest.raises(CrdtKvError):
        open_mem(be, ManualClock())


def test_clean_close_saves_every_bucket(tmp_path: pathlib.Path, clock: ManualClock) -> None:
    path = str(tmp_path / "s")
    with crdt_kv.open(path, backend="sqlite", clock=clock, rng=random.Random(1)) as s:
        for i in range(200):
            s.put(f"k{i}", i)
        s.delete("k5")
        seq = s.last_seq
        assert stale_buckets(storage(s))  # saved at checkpoints only
    raw = open_backend("sqlite", path)
    pairs = dict(raw.iterate())
    raw.close()
    assert pairs[b"mfingerprints"] == seq.to_bytes(8, "big")
    check_index_and_buckets(pairs, exact=True)


def test_reopen_after_a_crash_recomputes_the_stale_buckets(clock: ManualClock) -> None:
    be = MemoryBackend()
    s = open_mem(be, clock, peer_id="a")
    for i in range(300):
        s.put(f"k{i}", i)
    s = open_mem(be, clock)  # the old object is dropped unclosed: a crash
    check_index_and_buckets(storage(s), exact=True)
    for i in range(0, 300, 4):
        s.delete(f"k{i}")
    s.put("late", 1)
    stale = stale_buckets(storage(s))
    assert 0 < len(stale) < 300
    digest = s.digest()
    s = open_mem(be, clock)
    assert s.digest() == digest
    check_index_and_buckets(storage(s), exact=True)
    check_store(s)


def test_a_commit_saves_the_buckets_every_checkpoint_keys(
    monkeypatch: pytest.MonkeyPatch, clock: ManualClock
) -> None:
    monkeypatch.setattr(buckets_module, "CHECKPOINT_KEYS", 5)
    be = FailingBackend()
    s = open_mem(be, clock, peer_id="a")
    for i in range(4):
        s.put(f"k{i}", i)
    assert be.get(b"mfingerprints") == bytes(8)
    assert not any(k[:1] == b"x" for k in storage(s))  # kept in memory until then
    be.fail = True
    with pytest.raises(OSError):
        s.put("k4", 4)  # the fifth change, with the checkpoint: refused
    b = settled(s)
    assert b.pending == 4 and len(b.fresh) == 4
    assert be.get(b"mfingerprints") == bytes(8)
    be.fail = False
    s.put("k4", 4)
    assert be.get(b"mfingerprints") == s.last_seq.to_bytes(8, "big")
    check_index_and_buckets(storage(s), exact=True)
    assert not s._log.buckets.fresh and not s._log.buckets.notes
    with s.batch() as b:
        for i in range(7):
            b.put(f"b{i}", i)
    assert be.get(b"mfingerprints") == s.last_seq.to_bytes(8, "big")
    check_store(s)
    for i in range(3):
        s.put(f"c{i}", i)
    check_store(s)
    s.range_items(0, SPACE)  # folds the notes: the room left shrinks, not the bound
    s.put("c3", 3)
    assert be.get(b"mfingerprints") != s.last_seq.to_bytes(8, "big")
    s.put("c4", 4)
    assert be.get(b"mfingerprints") == s.last_seq.to_bytes(8, "big")
    check_index_and_buckets(storage(s), exact=True)


def test_checkpoint_writes_the_new_keys_index_entries(clock: ManualClock) -> None:
    be = MemoryBackend()
    s = open_mem(be, clock, peer_id="a")
    assert s.checkpoint() is False
    for i in range(50):
        s.put(f"k{i}", i)
    s.put("k3", "again")
    s.delete("k4")
    items = s.range_items(0, SPACE)
    assert len(items) == 50 and items == brute(s, 0, SPACE)
    assert not any(k[:1] == b"x" for k in storage(s))
    assert s.checkpoint() is True
    check_index_and_buckets(storage(s), exact=True)
    assert s.checkpoint() is False
    assert s.range_items(0, SPACE) == items
    check_store(s)


class CrashingBackend(MemoryBackend):
    """A memory backend whose writes fail once ``budget`` more writes went through."""

    budget: int | None = None

    def _write(self, ops: Any) -> None:
        if self.budget is not None:
            if self.budget <= 0:
                raise OSError("crash")
            self.budget -= 1
        super()._write(ops)


@pytest.mark.parametrize("writes", [0, 1, 2, 3])
def test_a_crash_while_restoring_the_index_at_open_restores_it_next_time(
    monkeypatch: pytest.MonkeyPatch, clock: ManualClock, writes: int
) -> None:
    monkeypatch.setattr(buckets_module, "BUILD_CHUNK", 40)
    be = CrashingBackend()
    s = open_mem(be, clock, peer_id="a")
    for i in range(100):
        s.put(f"k{i}", i)
    s.delete("k7")
    s.checkpoint()
    for i in range(95, 190):
        s.put(f"k{i}", i)  # 90 new keys, their index entries in memory only
    digest, items = s.digest(), s.range_items(0, SPACE)
    be.budget = writes + 1  # the open marker, then `writes` of the recovery go through
    with pytest.raises(OSError):
        open_mem(be, clock)  # crashes after `writes` writes of the recovery
    after = MemoryBackend()  # what the crashed open left (a failed open closes its backend)
    after.write(list(be._data.items()))
    s = open_mem(after, clock)
    check_index_and_buckets(storage(s), exact=True)
    assert s.digest() == digest and s.range_items(0, SPACE) == items
    check_store(s)
