"""Range-fingerprint repair: round trips and bytes to find and ship ``d`` differences.

Two stores (``--backend``, default ``memory``) first hold the same ``n`` keys
(``f"user:{i:08d}"`` -> ``{"name": "Ada", "n": i}``, the second store filled by
``apply_raw`` of the first's states). For each ``d`` in ``--diffs`` (default 1, 10, 100,
1000), ``d`` random keys are rewritten, alternately on either side, and
``crdt_kv.reconcile`` runs over a trio in-memory stream pair; the table shows the round
trips, the bytes both ways, the entries shipped, the wall time, and bytes per difference
per tree level (``bytes / (d * log16(n))``, which should stay flat: the cost grows as
``d log n``). The baseline, measured in the same process, is a full transfer: reconciling
a store of ``n`` keys with an empty one (every state shipped): ``vs full`` is the bytes
of the repair over the bytes of that baseline. Every run is checked (equal digests after,
the rewritten values read back), so nothing is reported that did not happen. Exit code 0:
a measurement, not a test. Design targets: 1 difference among 1,000,000 keys in at most
4 round trips and 2 KB.

Run: ``.venv/bin/python bench/bench_repair.py [--n 10000,100000] [--huge]
[--diffs 1,10,100,1000] [--backend memory] [--json]``; ``--huge`` adds 1,000,000 keys
(building that pair takes minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing
from rich.console import Console
from rich.table import Table

import crdt_kv
from crdt_kv.repair.report import ReconcileReport
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock

CHUNK = 5000


async def _pair(a: Store, b: Store) -> tuple[ReconcileReport, ReconcileReport]:
    left, right = trio.testing.memory_stream_pair()
    out: list[ReconcileReport] = []

    async def run(s: Store, stream: Any) -> None:
        out.append(await crdt_kv.reconcile(s, stream))

    async with trio.open_nursery() as n:
        n.start_soon(run, a, left)
        n.start_soon(run, b, right)
    ra, rb = sorted(out, key=lambda r: r.peer_id != "b")
    return ra, rb


def _open(peer: str, backend: str, root: Path, clock: ManualClock) -> Store:
    if backend == "memory":
        return crdt_kv.open(backend="memory", peer_id=peer, clock=clock)
    return crdt_kv.open(root / peer, backend=backend, peer_id=peer, clock=clock)


def _fill(a: Store, b: Store, n: int) -> None:
    for start in range(0, n, CHUNK):
        keys = range(start, min(n, start + CHUNK))
        with a.batch() as w:
            for i in keys:
                w.put(f"user:{i:08d}", {"name": "Ada", "n": i})
        b.apply_raw(a.raw_entries(f"user:{i:08d}".encode() for i in keys))
    assert a.digest() == b.digest()


def _row(n: int, d: int, ra: ReconcileReport, seconds: float, full: int) -> dict[str, Any]:
    total = ra.bytes_sent + ra.bytes_received
    return {
        "n": n,
        "d": d,
        "round_trips": ra.round_trips,
        "bytes": total,
        "entries": ra.entries_sent + ra.entries_received,
        "seconds": round(seconds, 3),
        "bytes_per_diff_level": round(total / (d * math.log(n, 16)), 1) if d else None,
        "vs_full": round(total / full, 4),
    }


def measure(n: int, diffs: list[int], backend: str, seed: int) -> list[dict[str, Any]]:
    """Build the pair once, then repair ``d`` fresh differences for each ``d``."""
    root = Path(tempfile.mkdtemp(prefix="bench-repair-"))
    clock = ManualClock()
    try:
        a, b = _open("a", backend, root, clock), _open("b", backend, root, clock)
        _fill(a, b, n)
        empty = _open("e", backend, root, clock)
        t0 = time.perf_counter()
        rf, _ = trio.run(_pair, a, empty)
        full = rf.bytes_sent + rf.bytes_received
        rows = [_row(n, n, rf, time.perf_counter() - t0, full) | {"d": "full"}]
        empty.close()
        rng = random.Random(seed)
        for d in diffs:
            clock.advance(10)
            changed = rng.sample(range(n), d)
            for j, i in enumerate(changed):
                (a if j % 2 else b).put(f"user:{i:08d}", {"name": "Bob", "n": -i})
            t0 = time.perf_counter()
            ra, _ = trio.run(_pair, a, b)
            seconds = time.perf_counter() - t0
            assert a.digest() == b.digest(), "repair did not converge"
            probe = f"user:{changed[0]:08d}"
            assert a.get(probe) == b.get(probe) == {"name": "Bob", "n": -changed[0]}
            rows.append(_row(n, d, ra, seconds, full))
        a.close()
        b.close()
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default="10000,100000", help="store sizes, comma-separated")
    p.add_argument("--huge", action="store_true", help="also 1,000,000 keys (slow to build)")
    p.add_argument("--diffs", default="1,10,100,1000", help="differences, comma-separated")
    p.add_argument("--backend", default="memory", help="memory, rocksdb or sqlite")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = p.parse_args()
    sizes = [int(x) for x in args.n.split(",") if x] + ([1_000_000] if args.huge else [])
    diffs = [int(x) for x in args.diffs.split(",") if x]
    rows = [
        r for n in sizes for r in measure(n, [d for d in diffs if d <= n], args.backend, args.seed)
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"range-fingerprint repair ({args.backend} backend)")
    for col in (
        "keys",
        "diffs",
        "round trips",
        "bytes",
        "entries",
        "s",
        "B/(d·log16 n)",
        "vs full",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['n']:,}",
            str(r["d"]),
            str(r["round_trips"]),
            f"{r['bytes']:,}",
            f"{r['entries']:,}",
            f"{r['seconds']:.2f}",
            "" if r["d"] == "full" else f"{r['bytes_per_diff_level']:.0f}",
            f"{r['vs_full']:.4f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
