"""Local store speed on every backend, against raw ``rocksdict`` in the same process.

Measures (issue 3, "Speed") put, get, batch put (``--batch`` writes per atomic batch,
default 1,000) and range scan through :class:`crdt_kv.store.Store` on each backend, and the
same puts/gets/scan done directly on ``rocksdict.Rdict(Options(raw_mode=True))`` with the
same keys (``f"user:{i:08d}"``, as bytes) and values (``{"name": "Ada", "n": i}``,
``cbor2``-encoded inside the timed loop, as the store does). Targets on the RocksDB backend
(issue 13, which raised issue 3's put >= 0.25x and batch put >= 0.5x): get >= 0.7x raw get,
put >= 0.4x raw put, range scan >= 0.5x raw scan, batch put (``--batch`` 1,000 per batch)
>= 0.8x raw *single* put.

``overwrite`` puts every key of the round again (the store reads and replaces the record
it wrote; raw rocksdict just puts again). ``--siblings`` backends (default ``rocksdb``;
``--siblings ""`` for none) also run as a ``siblings``-mode subject (``"rocksdb
siblings"``), timed in the same turns and compared with the same backend in ``lww`` mode,
not with raw rocksdict: a single writer's put, overwrite, get, batch put and scan. Target:
siblings put and overwrite >= 0.7x lww.

The machine this runs on is small and shared (other processes come and go), so the
measurement is *paired*: every subject (raw rocksdict and each backend) does the same chunk
of ``--chunk`` operations in turn, the order rotating from chunk to chunk, and each subject's
time is the sum over its chunks. A load spike therefore lands on all subjects alike instead
of on whichever happened to run then. A round writes ``--n`` keys into fresh directories
(single puts into one store, batches into another, single puts and batches into two raw
databases), then gets every key in one seeded random order, then scans everything in
key-range chunks. Each figure is the median over ``--rounds`` rounds (after one discarded
warm-up round); each ratio is the median over rounds of that round's paired ratio. Results
are checked (counts, a value read back) so nothing is timed that did not happen. The exit
code is always 0: this is a measurement, not a test; the verdict column says which targets
were met.

Run: ``.venv/bin/python bench/bench_local.py [--n 100000] [--rounds 5]
[--backends rocksdb,memory,sqlite] [--json]`` (``make bench`` runs the defaults).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
from rich.console import Console
from rich.table import Table
from rocksdict import Options, Rdict, WriteBatch

import crdt_kv
from crdt_kv.backends import available_backends
from crdt_kv.store import Store

RAW = "raw"
OPS = ("put", "overwrite", "get", "batch put", "range scan")
BASELINE_OP = {
    "put": "put",
    "overwrite": "overwrite",
    "get": "get",
    "batch put": "put",
    "range scan": "range scan",
}
"""Which raw operation each store operation is compared with (batch put: raw single puts)."""
SIBLINGS = " siblings"
"""Suffix of a ``siblings``-mode subject's name; it is compared with the ``lww`` subject."""
TARGETS = {
    ("rocksdb", "put"): 0.4,
    ("rocksdb", "get"): 0.7,
    ("rocksdb", "batch put"): 0.8,
    ("rocksdb", "range scan"): 0.5,
    ("rocksdb siblings", "put"): 0.7,
    ("rocksdb siblings", "overwrite"): 0.7,
}
WARMUP_N = 10_000
SCAN_CHUNK_FACTOR = 10

Key = tuple[str, str]
Task = tuple[Key, Callable[[int, int], object]]


@dataclass
class Workload:
    """Keys and values shared by every measurement, built once before timing."""

    n: int
    batch: int
    chunk: int
    keys: list[str]
    bkeys: list[bytes]
    values: list[dict[str, Any]]
    get_keys: list[str]
    get_bkeys: list[bytes]
    expect_last: dict[str, Any]

    @classmethod
    def build(cls, n: int, batch: int, chunk: int, seed: int) -> Workload:
        keys = [f"user:{i:08d}" for i in range(n)]
        values: list[dict[str, Any]] = [{"name": "Ada", "n": i} for i in range(n)]
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return cls(
            n=n,
            batch=batch,
            chunk=chunk,
            keys=keys,
            bkeys=[k.encode() for k in keys],
            values=values,
            get_keys=[keys[i] for i in order],
            get_bkeys=[keys[i].encode() for i in order],
            expect_last=values[order[-1]],
        )


@dataclass
class Results:
    """ops/s samples per ``(backend, op)`` and paired ratios, one of each per round."""

    samples: dict[Key, list[float]] = field(default_factory=dict)
    ratios: dict[Key, list[float]] = field(default_factory=dict)

    def add_round(self, n: int, spent: dict[Key, float]) -> None:
        for (name, op), seconds in spent.items():
            self.samples.setdefault((name, op), []).append(n / seconds)
            if name != RAW:
                base = spent[baseline(name, op)]
                self.ratios.setdefault((name, op), []).append(base / seconds)


def baseline(name: str, op: str) -> Key:
    """The subject and op a store subject's op is compared with."""
    if name.endswith(SIBLINGS):
        return (name.removesuffix(SIBLINGS), op)
    return (RAW, BASELINE_OP[op])


class Scratch:
    """Fresh temporary directories under one root, each removed after its measurement."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="bench_local_")
        self._i = 0

    def fresh(self) -> str:
        self._i += 1
        path = os.path.join(self.root, f"d{self._i}")
        os.makedirs(path)
        return path

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def paired(tasks: list[Task], n: int, chunk: int, start: int) -> dict[Key, float]:
    """Run every task over ``[0, n)`` in chunks, taking turns; return seconds per task.

    Chunk ``i`` runs the tasks starting from task ``(start + i) % len(tasks)``, so each one
    runs first, second, ... equally often.
    """
    spent = dict.fromkeys((key for key, _ in tasks), 0.0)
    clock = time.perf_counter
    gc.collect()
    for i, lo in enumerate(range(0, n, chunk)):
        hi = min(n, lo + chunk)
        s = (start + i) % len(tasks)
        for key, fn in tasks[s:] + tasks[:s]:
            t0 = clock()
            fn(lo, hi)
            spent[key] += clock() - t0
    return spent


def check(what: str, got: object, want: object) -> None:
    if got != want:
        raise SystemExit(f"bench_local: {what} returned {got!r}, expected {want!r}")


def open_raw(path: str) -> Rdict:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return Rdict(path, opts)


def open_store(subject: str, scratch: Scratch) -> Store:
    """A fresh store for ``subject``: a backend name, ``siblings`` mode if suffixed so."""
    backend = subject.removesuffix(SIBLINGS)
    conflicts = "siblings" if subject.endswith(SIBLINGS) else "lww"
    if backend == "memory":
        return crdt_kv.open(backend="memory", conflicts=conflicts)
    return crdt_kv.open(scratch.fresh(), backend=backend, conflicts=conflicts)


# --- the work, as (lo, hi) chunk functions ------------------------------------------------


def raw_tasks(w: Workload, db: Rdict, bdb: Rdict) -> dict[str, Callable[[int, int], object]]:
    dumps, loads = cbor2.dumps, cbor2.loads
    bkeys, values, gkeys, batch = w.bkeys, w.values, w.get_bkeys, w.batch

    def put(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            db[bkeys[i]] = dumps(values[i])

    def overwrite(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            db[bkeys[i]] = dumps(values[i])

    def batch_put(lo: int, hi: int) -> None:
        for b in range(lo, hi, batch):
            wb = WriteBatch(raw_mode=True)
            for i in range(b, min(hi, b + batch)):
                wb.put(bkeys[i], dumps(values[i]))
            bdb.write(wb)

    def get(lo: int, hi: int) -> object:
        v = None
        for i in range(lo, hi):
            v = loads(db[gkeys[i]])
        return v

    def scan(lo: int, hi: int) -> int:
        want, count = hi - lo, 0
        for _k, v in db.items(from_key=bkeys[lo]):
            loads(v)
            count += 1
            if count >= want:
                break
        return count

    return {
        "put": put,
        "overwrite": overwrite,
        "batch put": batch_put,
        "get": get,
        "range scan": scan,
    }


def store_tasks(
    w: Workload, store: Store, bstore: Store
) -> dict[str, Callable[[int, int], object]]:
    keys, values, gkeys, batch = w.keys, w.values, w.get_keys, w.batch

    def put(lo: int, hi: int) -> None:
        p = store.put
        for i in range(lo, hi):
            p(keys[i], values[i])

    def overwrite(lo: int, hi: int) -> None:
        p = store.put
        for i in range(lo, hi):
            p(keys[i], values[i])

    def batch_put(lo: int, hi: int) -> None:
        for b in range(lo, hi, batch):
            with bstore.batch() as wb:
                p = wb.put
                for i in range(b, min(hi, b + batch)):
                    p(keys[i], values[i])

    def get(lo: int, hi: int) -> object:
        g = store.get
        v = None
        for i in range(lo, hi):
            v = g(gkeys[i])
        return v

    def scan(lo: int, hi: int) -> int:
        count = 0
        for _kv in store.items(gte=keys[lo], limit=hi - lo):
            count += 1
        return count

    return {
        "put": put,
        "overwrite": overwrite,
        "batch put": batch_put,
        "get": get,
        "range scan": scan,
    }


def run_round(r: int, backends: list[str], w: Workload, scratch: Scratch, res: Results) -> None:
    """One paired round over fresh databases: writes, then gets, then scans."""
    db, bdb = open_raw(scratch.fresh()), open_raw(scratch.fresh())
    stores = [(b, open_store(b, scratch), open_store(b, scratch)) for b in backends]
    try:
        subjects = [(RAW, raw_tasks(w, db, bdb))]
        subjects += [(b, store_tasks(w, s, bs)) for b, s, bs in stores]

        def tasks(*ops: str) -> list[Task]:
            return [((name, op), fns[op]) for name, fns in subjects for op in ops]

        spent = paired(tasks("put", "batch put"), w.n, w.chunk, r)
        for b, s, bs in stores:
            check(f"{b} put: len(store)", len(s), w.n)
            check(f"{b} batch put: len(store)", len(bs), w.n)
        spent |= paired(tasks("overwrite"), w.n, w.chunk, r)
        for b, s, _bs in stores:
            check(f"{b} overwrite: last seq", s.last_seq, 2 * w.n)
            check(f"{b} overwrite: len(store)", len(s), w.n)
        spent |= paired(tasks("get"), w.n, w.chunk, r)
        check("raw get", subjects[0][1]["get"](w.n - 1, w.n), w.expect_last)
        for name, fns in subjects[1:]:
            check(f"{name} get", fns["get"](w.n - 1, w.n), w.expect_last)
        scan_chunk = w.chunk * SCAN_CHUNK_FACTOR
        spent |= paired(tasks("range scan"), w.n, scan_chunk, r)
        for name, fns in subjects:
            check(f"{name} scan of the last chunk", fns["range scan"](w.n - 1, w.n), 1)
            check(f"{name} scan of everything", fns["range scan"](0, w.n), w.n)
        res.add_round(w.n, spent)
    finally:
        db.close()
        bdb.close()
        for _b, s, bs in stores:
            s.close()
            bs.close()


# --- report -----------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    op: str
    ops_per_s: float
    spread: float
    ratio: float | None
    baseline: str | None
    target: float | None

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target


def summarize(res: Results, backends: list[str]) -> list[Row]:
    rows: list[Row] = []
    for backend in [RAW, *backends]:
        for op in OPS:
            s = res.samples[(backend, op)]
            med = statistics.median(s)
            spread = (max(s) - min(s)) / med
            if backend == RAW:
                rows.append(Row(backend, op, med, spread, None, None, None))
                continue
            base = " ".join(baseline(backend, op))
            ratio = statistics.median(res.ratios[(backend, op)])
            rows.append(Row(backend, op, med, spread, ratio, base, TARGETS.get((backend, op))))
    return rows


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "rocksdict": version("rocksdict"),
        "cbor2": version("cbor2"),
        "crdt_kv": version("crdt_kv"),
        "n": args.n,
        "batch": args.batch,
        "chunk": args.chunk,
        "rounds": args.rounds,
    }


def print_table(rows: list[Row], env: dict[str, Any], elapsed: float) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=110)
    table = Table(
        title=(
            f"crdt_kv local store vs raw rocksdict: n={env['n']:,}, batch={env['batch']:,}, "
            f"median of {env['rounds']} rounds"
        ),
        caption=(
            "raw = rocksdict Rdict(raw_mode) with cbor2 values, timed in turns with the "
            f"stores ({env['chunk']:,} ops per turn); ratio = median over rounds of "
            "(store ops/s / ops/s of the named baseline in that round: raw rocksdict, or "
            "for a siblings-mode store the same backend in lww mode); "
            "spread = (max - min) / median of ops/s"
        ),
    )
    for col, justify in (
        ("backend", "left"),
        ("op", "left"),
        ("ops/s", "right"),
        ("spread", "right"),
        ("ratio vs baseline", "right"),
        ("target", "right"),
        ("verdict", "left"),
    ):
        table.add_column(col, justify=justify)
    for row in rows:
        verdict = {None: "", True: "[green]met[/]", False: "[red]MISSED[/]"}[row.met]
        table.add_row(
            row.backend,
            row.op,
            f"{row.ops_per_s:,.0f}",
            f"{row.spread:.0%}",
            "" if row.ratio is None else f"{row.ratio:.2f}x {row.baseline}",
            "" if row.target is None else f">= {row.target:.2f}x",
            verdict,
        )
    console.print(table)
    console.print(
        f"{env['date']}  python {env['python']}  {env['platform']}  {env['cpus']} cpus  "
        f"rocksdict {env['rocksdict']}  cbor2 {env['cbor2']}  load {env['loadavg_1m']:.2f}  "
        f"({elapsed:.0f} s)"
    )
    for row in rows:
        if row.target is not None and row.ratio is not None:
            state = "met" if row.met else "MISSED"
            console.print(
                f"target {row.backend} {row.op} >= {row.target:.2f}x {row.baseline}: "
                f"{row.ratio:.2f}x -> {state}"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000, help="keys per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (median reported)")
    ap.add_argument("--batch", type=int, default=1000, help="writes per atomic batch")
    ap.add_argument(
        "--chunk", type=int, default=1000, help="operations per turn of the paired timing"
    )
    ap.add_argument(
        "--backends",
        default="rocksdb,memory,sqlite",
        help="comma-separated backend names (default: rocksdb,memory,sqlite)",
    )
    ap.add_argument(
        "--siblings",
        default="rocksdb",
        help="comma-separated backends also measured in siblings mode, against lww mode "
        "(default: rocksdb; empty for none)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the get order")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    siblings = [b.strip() for b in args.siblings.split(",") if b.strip()]
    unknown = sorted(set(args.backend_list) - set(available_backends()))
    if unknown:
        ap.error(f"unknown backend(s) {unknown}; available: {available_backends()}")
    if not set(siblings) <= set(args.backend_list):
        ap.error("--siblings backends must also be in --backends (their lww baseline)")
    args.backend_list += [b + SIBLINGS for b in siblings]
    if args.n < 1 or args.rounds < 1 or args.batch < 1 or args.chunk < 1:
        ap.error("--n, --rounds, --batch and --chunk must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends: list[str] = args.backend_list
    t0 = time.perf_counter()
    scratch = Scratch()
    try:
        warm = Workload.build(min(args.n, WARMUP_N), args.batch, args.chunk, args.seed)
        run_round(0, backends, warm, scratch, Results())
        del warm
        w = Workload.build(args.n, args.batch, args.chunk, args.seed)
        gc.collect()
        gc.freeze()  # the workload's 100k dicts are not the store's garbage to traverse
        res = Results()
        for r in range(args.rounds):
            run_round(r, backends, w, scratch, res)
            if not args.json:
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        scratch.close()
    elapsed = time.perf_counter() - t0
    rows = summarize(res, backends)
    env = environment(args)
    if args.json:
        out = {
            **env,
            "elapsed_s": round(elapsed, 1),
            "results": [
                {
                    "backend": row.backend,
                    "op": row.op,
                    "ops_per_s": round(row.ops_per_s),
                    "samples": [round(x) for x in res.samples[(row.backend, row.op)]],
                    "ratio_samples": [
                        round(x, 3) for x in res.ratios.get((row.backend, row.op), [])
                    ],
                    "spread": round(row.spread, 3),
                    "ratio": None if row.ratio is None else round(row.ratio, 3),
                    "baseline": row.baseline,
                    "target": row.target,
                    "met": row.met,
                }
                for row in rows
            ],
        }
        print(json.dumps(out, indent=2))
    else:
        print_table(rows, env, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
