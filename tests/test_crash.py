"""Real crash tests: a writer subprocess is killed with SIGKILL, then the store is reopened.

The writer (``tests/crash_writer.py``) prints ``ack <i> <hlc>`` only after a commit
returned. Whatever it acknowledged must be there after the kill, with the right value; a
batch is there entirely or not at all; the counters in the commit trailer (live count,
digest, HLC high-water mark) match the data; the peer id survives; and the incarnation
is kept after a process crash and rotates after a reboot exactly when the backend is not
power-safe.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crash_writer import BATCH, value_of
from fingerprint_layout import check_index_and_buckets, check_store, storage

import crdt_kv
from crdt_kv import Store
from crdt_kv.hlc import unpack
from crdt_kv.testing import ManualClock

WRITER = str(Path(__file__).with_name("crash_writer.py"))

CASES = [
    pytest.param("rocksdb", False, id="rocksdb"),
    pytest.param("rocksdb", True, id="rocksdb-sync"),
    pytest.param("sqlite", False, id="sqlite"),
    pytest.param("sqlite", True, id="sqlite-sync"),
]


@dataclass
class Run:
    peer: str
    incarnation: bytes
    acks: dict[int, int] = field(default_factory=dict)  # i -> hlc
    returncode: int = 0


def write_until_killed(
    backend: str,
    path: str,
    mode: str,
    *,
    start: int = 0,
    sync: bool = False,
    clock_offset: int = 0,
    acks: int = 100,
) -> Run:
    """Run the writer, read ``acks`` acknowledgements, SIGKILL it, return what it acked."""
    cmd = [sys.executable, WRITER, backend, path, mode, str(start)]
    cmd += ["--clock-offset", str(clock_offset)] + (["--sync"] if sync else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["open"], f"writer failed: {first} {proc.stderr.read()}"  # type: ignore[union-attr]
        run = Run(first[1], bytes.fromhex(first[2]))
        while len(run.acks) < acks:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read()}"  # type: ignore[union-attr]
            tag, i, hlc = line.split()
            assert tag == "ack"
            run.acks[int(i)] = int(hlc)
        os.kill(proc.pid, signal.SIGKILL)
        run.returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fh in (proc.stdout, proc.stderr):
            if fh is not None:
                fh.close()
    assert run.returncode == -signal.SIGKILL
    return run


def reopen(backend: str, path: str, sync: bool, clock: ManualClock) -> Store:
    return crdt_kv.open(path, backend=backend, sync_writes=sync, clock=clock)


def assert_counters_match_the_data(db: Store) -> None:
    """The trailer's live count and digest equal what a full rebuild computes; the position
    index and bucket fingerprints were restored (spec/data-model.md section 18)."""
    check_index_and_buckets(storage(db), exact=True)
    check_store(db)
    assert len(db) == sum(1 for _ in db.items())
    log = list(db.changes())
    assert len({e.key for e in log}) == len(log), "the change log holds a key twice"
    assert db.last_seq == max((e.seq for e in log), default=0)
    with crdt_kv.open(backend="memory", peer_id="check", clock=ManualClock(1 << 47)) as copy:
        copy.apply(log)
        assert copy.digest() == db.digest()
        assert len(copy) == len(db)


def assert_incarnation_rule(db: Store, run: Run, backend: str, sync: bool) -> None:
    assert db.peer_id == run.peer
    power_safe = db.backend.power_safe
    assert power_safe is sync  # rocksdb and sqlite are power-safe exactly with sync_writes
    # A SIGKILL within one boot loses nothing the OS accepted (the write-ahead log is in the
    # page cache), so even a store that is not power-safe keeps its incarnation and peers
    # resume from their cursors; test_a_reboot_after_sigkill_rotates covers the other case.
    assert db.incarnation == run.incarnation, (
        f"{backend} (sync_writes={sync}) rotated its incarnation after a process crash; every "
        "peer would pull its whole log again"
    )


@pytest.mark.parametrize(("backend", "sync"), CASES)
def test_sigkill_loses_no_acknowledged_put(backend: str, sync: bool, tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    n_acks = random.Random(backend + str(sync)).randrange(40, 160)
    run = write_until_killed(backend, path, "puts", sync=sync, acks=n_acks)
    back = ManualClock(1_000_000)  # the wall clock after the crash is far behind
    with reopen(backend, path, sync, back) as db:
        assert_incarnation_rule(db, run, backend, sync)
        for i in run.acks:
            assert db.get(f"k{i:06d}") == value_of(i), f"acknowledged put {i} lost"
        keys = list(db.keys())
        for k in keys:  # unacknowledged puts may be there, but only whole and correct
            assert db.get(k) == value_of(int(k[1:]))
        assert keys == [f"k{i:06d}" for i in range(len(keys))], "a gap in sequential puts"
        assert_counters_match_the_data(db)
        top = max(run.acks.values())
        assert db.hlc.last >= top
        v = db.put("after", 1)
        assert v.hlc > top
        assert unpack(v.hlc)[0] >= unpack(top)[0] > back.now


@pytest.mark.parametrize(("backend", "sync"), CASES)
def test_sigkill_during_batches_leaves_no_partial_batch(
    backend: str, sync: bool, tmp_path: Path
) -> None:
    path = str(tmp_path / "db")
    n_acks = random.Random(backend + str(sync)).randrange(20, 60)
    run = write_until_killed(backend, path, "batches", sync=sync, acks=n_acks)
    with reopen(backend, path, sync, ManualClock(0)) as db:
        assert_incarnation_rule(db, run, backend, sync)
        sizes: dict[int, int] = {}
        for k, v in db.items(gte="b", lt="c"):
            n = int(k[1:7])
            assert v == n
            sizes[n] = sizes.get(n, 0) + 1
        assert all(size == BATCH for size in sizes.values()), f"partial batch: {sizes}"
        assert set(run.acks) <= set(sizes), "an acknowledged batch is missing"
        assert sorted(sizes) == list(range(len(sizes)))
        assert db.get("last") == max(sizes), "'last' and the batch keys are from other commits"
        assert_counters_match_the_data(db)
        assert db.put("after", 1).hlc > max(run.acks.values())


@pytest.mark.parametrize(("backend", "sync"), [CASES[0], CASES[2]])
def test_two_crashes_with_the_clock_going_backwards(
    backend: str, sync: bool, tmp_path: Path
) -> None:
    """A second writer, whose wall clock is an hour behind, continues after the first crash;
    its stamps stay above the first writer's, and both writers' acknowledged puts survive."""
    path = str(tmp_path / "db")
    first = write_until_killed(backend, path, "puts", acks=60)
    second = write_until_killed(
        backend, path, "puts", start=10_000, clock_offset=-3_600_000, acks=60
    )
    assert second.peer == first.peer
    assert second.incarnation == first.incarnation  # same boot: nothing was lost
    assert min(second.acks.values()) > max(first.acks.values())
    with reopen(backend, path, sync, ManualClock(0)) as db:
        assert_incarnation_rule(db, second, backend, sync)
        for run in (first, second):
            for i in run.acks:
                assert db.get(f"k{i:06d}") == value_of(i)
        assert_counters_match_the_data(db)
        assert db.put("after", 1).hlc > max(second.acks.values())


def test_a_clean_close_in_a_subprocess_keeps_the_incarnation(tmp_path: Path) -> None:
    """The rotation is caused by the kill: the same sequence with a clean close keeps it."""
    path = str(tmp_path / "db")
    code = (
        "import crdt_kv, sys\n"
        "with crdt_kv.open(sys.argv[1]) as db:\n"
        "    db.put('k', 1)\n"
        "    print(db.peer_id, db.incarnation.hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, check=True
    ).stdout.split()
    with crdt_kv.open(path, clock=ManualClock()) as db:
        assert (db.peer_id, db.incarnation.hex()) == (out[0], out[1])
        assert db.get("k") == 1


@pytest.mark.parametrize(("backend", "sync"), CASES)
def test_a_reboot_after_sigkill_rotates_exactly_when_not_power_safe(
    backend: str, sync: bool, tmp_path: Path
) -> None:
    """The open marker holds the boot id; a marker from another boot means the machine went
    down with the store open, and unsynced log tail may be gone: rotate unless power-safe."""
    path = str(tmp_path / "db")
    run = write_until_killed(backend, path, "puts", sync=sync, acks=30)
    be = crdt_kv.backends.open_backend(backend, path, sync_writes=sync)
    try:
        marker = be.get(b"mopen")
        assert marker is not None and marker != b"1", "the marker should hold this boot's id"
        be.write([(b"mopen", b"another-boot")])
    finally:
        be.close()
    with reopen(backend, path, sync, ManualClock(0)) as db:
        assert db.peer_id == run.peer
        if db.backend.power_safe:
            assert db.incarnation == run.incarnation, "a power-safe store rotated"
        else:
            assert db.incarnation != run.incarnation, (
                f"{backend} without sync_writes kept its incarnation across a reboot; peers' "
                "cursors could skip sequences lost with the log tail"
            )
