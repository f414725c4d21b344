"""The store under threads: commits and the clock are serialized by one lock, so a worker
thread may apply remote entries (and read the change log) while other threads write."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ManualClock

import crdt_kv
from crdt_kv import ClockSkewError, Entry, RawEntry, Store, Version
from crdt_kv.hlc import pack

WRITES = 2000


def mem(peer: str, clock: Callable[[], int], **kw: Any) -> Store:
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock, **kw)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so their commits really interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run(*targets: Callable[[], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait()
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


@pytest.mark.usefixtures("fast_switching")
def test_two_writers_and_an_applier_leave_a_consistent_store() -> None:
    clock = ManualClock()
    remote = mem("remote", clock)
    for i in range(1500):
        remote.put(f"shared:{i % 300}" if i % 2 else f"remote:{i}", {"r": i})
    incoming = list(remote.raw_changes())
    db = mem("local", clock)
    versions: dict[str, list[Version]] = {"a": [], "b": []}
    applied: list[int] = []
    reads: list[int] = []

    def writer(name: str) -> Callable[[], None]:
        def run() -> None:
            for i in range(WRITES):
                key = f"shared:{i % 300}" if i % 3 == 0 else f"{name}:{i}"
                versions[name].append(db.put(key, {name: i}))

        return run

    def applier() -> None:
        for i in range(0, len(incoming), 50):
            cursor = ("remote", remote.incarnation, incoming[i : i + 50][-1].seq)
            applied.append(db.apply_raw(incoming[i : i + 50], cursor=cursor))

    def reader() -> None:
        since = 0
        for _ in range(200):
            got = db.read_changes(since, limit=100)
            assert all(a.seq < b.seq for a, b in itertools.pairwise(got))
            reads.append(len(got))
            since = got[-1].seq if got else 0

    _run(writer("a"), writer("b"), applier, reader)

    stamps = [v.hlc for vs in versions.values() for v in vs]
    assert len(set(stamps)) == 2 * WRITES  # the clock issued every stamp once
    for vs in versions.values():
        assert [v.hlc for v in vs] == sorted(v.hlc for v in vs)
    assert db.last_seq == 2 * WRITES + sum(applied)  # one sequence per changed key
    assert db.stats["commits"] == 2 * WRITES + sum(1 for n in applied if n)
    assert db.cursor("remote", remote.incarnation) == incoming[-1].seq

    serial = mem("serial", clock)
    final = list(db.raw_changes())
    assert len(final) == len({e.key for e in final})  # the log stays one entry per key
    serial.apply_raw(final)
    assert serial.digest() == db.digest()
    assert len(serial) == len(db) == sum(1 for _ in db)
    assert dict(serial.items()) == dict(db.items())


def test_clock_now_issues_increasing_stamps() -> None:
    clock = ManualClock()
    db = mem("a", clock)
    before = db.hlc.last
    stamps = [db.clock_now() for _ in range(5)]
    assert before < stamps[0]
    assert stamps == sorted(set(stamps))
    assert db.hlc.last == stamps[-1]
    assert db.put("k", 1).hlc > stamps[-1]


def test_observe_clock_merges_remote_stamps_and_rejects_skew() -> None:
    clock = ManualClock()
    db = mem("a", clock, max_offset_ms=500)
    ahead = pack(clock.now + 400, 7)
    assert db.observe_clock(ahead) is None
    assert db.hlc.last > ahead
    assert db.put("k", 1).hlc > ahead
    last = db.hlc.last
    with pytest.raises(ClockSkewError) as info:
        db.observe_clock(pack(clock.now + 501, 0))
    assert info.value.remote_hlc == pack(clock.now + 501, 0)
    assert db.hlc.last == last


def test_read_changes_limit_exclude_source_and_stop_at() -> None:
    clock = ManualClock()
    db, other = mem("a", clock), mem("b", clock)
    for i in range(5):
        db.put(f"k{i}", i)  # seq 1..5
    other.put("o1", 1)
    other.put("o2", 2)
    assert db.apply_raw(list(other.raw_changes()), cursor=("b", other.incarnation, 2)) == 2
    db.put("k1", "again")  # k1 moves from seq 2 to seq 8

    got = db.read_changes(0, limit=100)
    assert isinstance(got, list)
    assert got == list(db.raw_changes())
    assert [(e.key, e.seq) for e in got] == [
        (b"k0", 1),
        (b"k2", 3),
        (b"k3", 4),
        (b"k4", 5),
        (b"o1", 6),
        (b"o2", 7),
        (b"k1", 8),
    ]
    assert [e.seq for e in db.read_changes(0, limit=3)] == [1, 3, 4]
    assert [e.seq for e in db.read_changes(4, limit=2)] == [5, 6]
    assert db.read_changes(0, limit=0) == []
    assert [e.seq for e in db.read_changes(0, limit=100, stop_at=6)] == [1, 3, 4, 5, 6]
    assert [e.seq for e in db.read_changes(0, limit=100, stop_at=2)] == [1]  # k1 moved on
    assert db.read_changes(5, limit=100, stop_at=5) == []
    assert [e.seq for e in db.read_changes(0, limit=100, stop_at=2**64 - 1)] == [e.seq for e in got]
    excluded = db.read_changes(0, limit=100, exclude_source=("b", other.incarnation))
    assert [e.key for e in excluded] == [b"k0", b"k2", b"k3", b"k4", b"k1"]
    assert db.read_changes(0, limit=100, exclude_source=("b", b"\0" * 16)) == got
    assert db.read_changes(0, limit=2, exclude_source=("b", other.incarnation), stop_at=7) == [
        e for e in got if e.seq in (1, 3)
    ]
    for bad in ({"limit": -1}, {"limit": None}, {"limit": 1, "stop_at": -1}):
        with pytest.raises(ValueError):
            db.read_changes(0, **bad)
    with pytest.raises(ValueError):
        db.read_changes(-1, limit=1)
    entries = [RawEntry(e.key, e.value, e.hlc, e.peer, e.deleted) for e in got]
    fresh = mem("c", clock)
    fresh.apply_raw(entries)
    assert fresh.digest() == db.digest()


def test_read_changes_and_clock_on_a_closed_store() -> None:
    db = mem("a", ManualClock())
    db.put("k", 1)
    db.close()
    with pytest.raises(crdt_kv.ClosedError):
        db.read_changes(0, limit=1)


def test_hooks_run_on_the_committing_thread() -> None:
    clock = ManualClock()
    db, other = mem("a", clock), mem("b", clock)
    other.put("x", 1)
    seen: list[tuple[str, int]] = []
    db.on_commit(lambda seq: seen.append((threading.current_thread().name, seq)))
    db.on_change(lambda e: seen.append((threading.current_thread().name, -len(e.key))))
    worker = threading.Thread(
        target=lambda: db.apply([Entry("x", 1, other.entry("x").hlc, "b")]), name="worker"
    )
    worker.start()
    worker.join()
    db.put("yy", 2)
    main = threading.current_thread().name
    assert seen == [("worker", 1), ("worker", -1), (main, 2), (main, -2)]


def test_a_long_read_lets_commits_in_between_its_chunks() -> None:
    """A catch-up read holds the commit lock for one chunk of the log at a time: a live
    apply waits for a chunk, never for a whole batch."""
    clock = ManualClock()
    db = mem("a", clock)
    for i in range(2000):
        db.put(f"k{i:05}", i)
    backend = db.backend
    real = backend._get_many  # type: ignore[attr-defined]
    first_chunk, events = threading.Event(), []

    def slow_get_many(keys: Any) -> list[bytes | None]:
        first_chunk.set()
        time.sleep(0.01)
        return real(keys)  # type: ignore[no-any-return]

    backend._get_many = slow_get_many  # type: ignore[attr-defined]
    head = db.last_seq

    def reader() -> None:
        got = db.read_changes(0, limit=10_000, stop_at=head)
        events.append(("read", [e.key for e in got]))

    def writer() -> None:
        assert first_chunk.wait(10)
        db.put("k00000", "new")  # rewrites a key the read already passed
        db.put("k01999", "new")  # and one it has not reached yet
        events.append(("put", None))

    _run(reader, writer)
    assert [name for name, _ in events] == ["put", "read"]
    keys = events[1][1]
    assert keys is not None
    assert keys[0] == b"k00000" and b"k01999" not in keys  # rewritten past ``head``
    assert len(keys) == len(set(keys)) == 1999
    backend._get_many = real  # type: ignore[attr-defined]
    assert [e.key for e in db.read_changes(head, limit=10)] == [b"k00000", b"k01999"]
