"""What range fingerprints and tombstone collection cost and save (issue 10).

**Put cost, fingerprints on vs off** (default). Two RocksDB stores in one process: ``on``
commits through this tree's commit builder (bucket fingerprints noted per commit, ``x``
and ``f`` entries written at checkpoints), ``off`` through the commit builder of the
release before issue 10 (``git show REV:crdt_kv/store/commit.py``, ``--base`` default
``455c9ce``; loaded under another module name and plugged into an otherwise identical
store, so only the commit path differs). A round writes ``--n`` new keys
(``f"user:{i:08d}"`` -> ``{"name": "Ada", "n": i}``) into both, then overwrites every key
once; the measurement is paired: chunks of ``--chunk`` puts alternate between the two
stores, the order flipping every chunk, so a load spike on this shared machine lands on
both. ``put`` is the time of the puts (checkpoints the commits take on their own, every
``CHECKPOINT_KEYS`` changed keys, included); ``put+ckpt`` adds a ``store.checkpoint()``
at the end of each phase (everything the store writes for those puts; a node takes that
checkpoint off the commit path). Each figure is shown by wall clock and by the thread's
CPU time (``time.thread_time``: steadier on a shared machine, and RocksDB's background
threads are left out alike for both). Each ratio is the median over ``--rounds`` rounds of
the round's ratio. Target: ``put+ckpt`` at most 1.10x ``off``.

**Space after deleting everything** (``--space N``). Three stores (``--backend``, default
rocksdb) each put a third of ``N`` keys, sync in-process (``apply_raw`` of
``read_changes`` with cursors, every direction, until quiet), delete every key the same
way, sync, raise the collection horizon past every stamp (all three hold everything) and
collect. The table shows each store's backend key count at its peak (after the puts and
after the deletes, with a checkpoint so nothing is left in memory) and at the end, and the
ratio. Target: the end count under 5% of the peak.

Run: ``.venv/bin/python bench/bench_fingerprints.py [--n 20000] [--rounds 5]
[--chunk 500] [--base 455c9ce] [--space 100000 [--backend rocksdb]] [--json]``. Exit code
0: a measurement, not a test. The put-cost comparison needs git and the repository's
history.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

import crdt_kv
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("new", "overwrite")


def load_base(rev: str, tmp: Path) -> ModuleType:
    """The commit module of ``rev``, imported as ``base_commit``."""
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:crdt_kv/store/commit.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = tmp / "base_commit.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("base_commit", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def open_pair(d: Path, base: ModuleType) -> tuple[dict[str, Store], Any]:
    """``on``: this tree's store; ``off``: the same store committing through ``base``
    (returned with its own commit builder, to put back before closing)."""
    out = {}
    for name in ("on", "off"):
        clock = ManualClock(1_800_000_000_000)
        out[name] = crdt_kv.open(
            str(d / name), backend="rocksdb", clock=clock, rng=random.Random(1)
        )
    off = out["off"]
    own = off._log
    c = base.Committer(off.backend.write, off._hooks, off.stats, own.seq, own.count, own.digest)
    off._log = off._w.log = c
    return out, own


def put_round(n: int, chunk: int, base: ModuleType) -> dict[str, dict[str, float]]:
    """Seconds per subject and phase (``put`` and ``put+ckpt``) of one round."""
    keys = [f"user:{i:08d}" for i in range(n)]
    vals = [{"name": "Ada", "n": i} for i in range(n)]
    times = {
        f"{s} {p} {w}{c}": 0.0
        for s in ("on", "off")
        for p in PHASES
        for w in ("put", "ckpt")
        for c in ("", " cpu")
    }
    with tempfile.TemporaryDirectory() as tmp:
        stores, own = open_pair(Path(tmp), base)
        gc.disable()
        try:
            for phase in PHASES:
                for i in range(0, n, chunk):
                    order = ("on", "off") if (i // chunk) % 2 == 0 else ("off", "on")
                    for name in order:
                        put = stores[name].put
                        t0, c0 = time.perf_counter(), time.thread_time()
                        for j in range(i, min(n, i + chunk)):
                            put(keys[j], vals[j])
                        times[f"{name} {phase} put"] += time.perf_counter() - t0
                        times[f"{name} {phase} put cpu"] += time.thread_time() - c0
                t0, c0 = time.perf_counter(), time.thread_time()
                stores["on"].checkpoint()
                times[f"on {phase} ckpt"] += time.perf_counter() - t0
                times[f"on {phase} ckpt cpu"] += time.thread_time() - c0
        finally:
            gc.enable()
        on, off = stores["on"], stores["off"]
        assert len(on) == len(off) == n and on.get(keys[-1]) == vals[-1]
        assert on.statistics().keys == n and on.range_fingerprint(0, 1 << 64)[1] == n
        off._log = off._w.log = own
        for s in stores.values():
            s.close()
    return times


def put_cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        rounds = [put_round(args.n, args.chunk, base) for _ in range(args.rounds + 1)][1:]
    rows = []
    for phase, clock in ((p, c) for p in PHASES for c in ("", " cpu")):
        put = [r[f"on {phase} put{clock}"] / r[f"off {phase} put{clock}"] for r in rounds]
        full = [
            (r[f"on {phase} put{clock}"] + r[f"on {phase} ckpt{clock}"])
            / r[f"off {phase} put{clock}"]
            for r in rounds
        ]

        def us(key: str) -> float:
            return statistics.median(r[key] for r in rounds) / args.n * 1e6

        rows.append(
            {
                "phase": phase,
                "clock": "thread cpu" if clock else "wall",
                "off_us": us(f"off {phase} put{clock}"),
                "on_us": us(f"on {phase} put{clock}"),
                "ckpt_us": us(f"on {phase} ckpt{clock}"),
                "put": statistics.median(put),
                "put+ckpt": statistics.median(full),
                "rounds_put+ckpt": " ".join(f"{x:.3f}" for x in full),
                "target_met": statistics.median(full) <= 1.10,
            }
        )
    return rows


def sync(a: Store, b: Store) -> None:
    """Pull everything ``a`` has that ``b`` lacks into ``b``, with a cursor."""
    peer = (a.peer_id, a.incarnation)
    since = b.cursor(*peer)
    while rows := a.read_changes(since, limit=5000, exclude_source=(b.peer_id, b.incarnation)):
        since = rows[-1].seq
        b.apply_raw(rows, cursor=(*peer, since))


def sync_all(stores: list[Store]) -> None:
    for _ in range(2):
        for a in stores:
            for b in stores:
                if a is not b:
                    sync(a, b)


def backend_keys(s: Store) -> int:
    s.checkpoint()
    return sum(1 for _ in s.backend.iterate())


def space(n: int, backend: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        stores = [
            crdt_kv.open(
                None if backend == "memory" else f"{tmp}/{i}",
                backend=backend,
                peer_id=f"p{i}",
                rng=random.Random(i),
            )
            for i in range(3)
        ]
        t0 = time.perf_counter()
        for i in range(n):
            stores[i % 3].put(f"user:{i:08d}", {"name": "Ada", "n": i})
        sync_all(stores)
        peak = [backend_keys(s) for s in stores]
        for i in range(n):
            stores[(i + 1) % 3].delete(f"user:{i:08d}")
        sync_all(stores)
        peak = [max(p, backend_keys(s)) for p, s in zip(peak, stores, strict=True)]
        assert len({s.digest() for s in stores}) == 1 and all(len(s) == 0 for s in stores)
        horizon = max(s.hlc.last for s in stores) + 1
        collected = []
        for s in stores:
            s.raise_gc_horizon(horizon)
            collected.append(s.gc())
        end = [backend_keys(s) for s in stores]
        assert len({s.digest() for s in stores}) == 1
        secs = time.perf_counter() - t0
        for s in stores:
            s.close()
    return [
        {
            "store": f"p{i}",
            "puts": n,
            "peak_keys": peak[i],
            "collected": collected[i],
            "end_keys": end[i],
            "end_over_peak": end[i] / peak[i],
            "target_met": end[i] / peak[i] < 0.05,
            "seconds": secs,
        }
        for i in range(3)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="keys per round (put cost)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    p.add_argument("--chunk", type=int, default=500, help="puts per turn")
    p.add_argument("--base", default="455c9ce", help="git revision of the 'off' commit code")
    p.add_argument("--space", type=int, default=0, help="run the space figure with N puts")
    p.add_argument("--backend", default="rocksdb", help="backend of the space figure")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = p.parse_args()
    rows = space(args.space, args.backend) if args.space else put_cost(args)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    title = (
        f"space after deleting {args.space:,} keys ({args.backend})"
        if args.space
        else f"put cost, fingerprints on vs off (rocksdb, {args.n:,} keys, base {args.base})"
    )
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
