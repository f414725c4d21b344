"""Local store speed on every backend, against raw ``rocksdict`` in the same process.

Measures (issue 3, "Speed") put, get, batch put (``--batch`` writes per atomic batch,
default 1,000) and a full range scan through :class:`crdt_kv.store.Store` on each backend,
and the same puts/gets/scan done directly on ``rocksdict.Rdict(Options(raw_mode=True))``
with the same keys (``f"user:{i:08d}"``, as bytes) and the same values (``{"name": "Ada",
"n": i}``, ``cbor2``-encoded in the timed loop). Targets on the RocksDB backend: put
>= 0.25x raw put, get >= 0.5x raw get, batch put >= 0.5x raw put.

The machine is noisy, so: one discarded warm-up round; then ``--rounds`` rounds that
alternate the order of baseline and subjects (raw first on even rounds, last on odd ones);
every write phase starts in a fresh temporary directory; the figure reported is the median
ops/s over the rounds and the ratio is the ratio of medians. Gets read the keys in one
seeded random order (the same for raw and store). The exit code is always 0: this is a
measurement, not a test; the verdict column says which targets were met.

Run: ``.venv/bin/python bench/bench_local.py [--n 100000] [--rounds 5]
[--backends rocksdb,memory,sqlite] [--json]``.
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
OPS = ("put", "get", "batch put", "range scan")
RAW_OP = {"put": "put", "get": "get", "scan": "range scan"}
BASELINE_OP = {"put": "put", "get": "get", "batch put": "put", "range scan": "scan"}
"""Which raw operation each store operation is compared with (batch put: raw single puts)."""
TARGETS = {("rocksdb", "put"): 0.25, ("rocksdb", "get"): 0.5, ("rocksdb", "batch put"): 0.5}
WARMUP_N = 10_000


@dataclass
class Workload:
    """Keys and values shared by every measurement, built once before timing."""

    n: int
    batch: int
    keys: list[str]
    bkeys: list[bytes]
    values: list[dict[str, Any]]
    get_keys: list[str]
    get_bkeys: list[bytes]
    expect_last: dict[str, Any]

    @classmethod
    def build(cls, n: int, batch: int, seed: int) -> Workload:
        keys = [f"user:{i:08d}" for i in range(n)]
        values: list[dict[str, Any]] = [{"name": "Ada", "n": i} for i in range(n)]
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return cls(
            n=n,
            batch=batch,
            keys=keys,
            bkeys=[k.encode() for k in keys],
            values=values,
            get_keys=[keys[i] for i in order],
            get_bkeys=[keys[i].encode() for i in order],
            expect_last=values[order[-1]],
        )

    def chunks(self, keys: list[Any]) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        b = self.batch
        return [(keys[lo : lo + b], self.values[lo : lo + b]) for lo in range(0, self.n, b)]


@dataclass
class Results:
    """ops/s samples per ``(backend, op)``, one per round."""

    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, backend: str, op: str, n: int, seconds: float) -> None:
        self.samples.setdefault((backend, op), []).append(n / seconds)

    def median(self, backend: str, op: str) -> float:
        return statistics.median(self.samples[(backend, op)])


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

    def drop(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def timed(fn: Callable[[], object]) -> float:
    """Seconds taken by ``fn()``, after a full collection so no debt leaks in."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check(what: str, got: object, want: object) -> None:
    if got != want:
        raise SystemExit(f"bench_local: {what} returned {got!r}, expected {want!r}")


# --- raw rocksdict (the baseline) -----------------------------------------------------------


def open_raw(path: str) -> Rdict:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return Rdict(path, opts)


def run_raw(w: Workload, scratch: Scratch, res: Results) -> None:
    dumps, loads = cbor2.dumps, cbor2.loads
    path = scratch.fresh()
    db = open_raw(path)
    try:

        def put() -> None:
            for k, v in zip(w.bkeys, w.values, strict=True):
                db[k] = dumps(v)

        def get() -> object:
            v = None
            for k in w.get_bkeys:
                v = loads(db[k])
            return v

        last: list[object] = []
        res.add(RAW, "put", w.n, timed(put))
        res.add(RAW, "get", w.n, timed(lambda: last.append(get())))
        check("raw get", last[-1], w.expect_last)

        def scan() -> int:
            count = 0
            for _k, v in db.items():
                loads(v)
                count += 1
            return count

        counted: list[int] = []
        res.add(RAW, "range scan", w.n, timed(lambda: counted.append(scan())))
        check("raw scan", counted[-1], w.n)
    finally:
        db.close()
        scratch.drop(path)

    path = scratch.fresh()
    db = open_raw(path)
    chunks = w.chunks(w.bkeys)
    try:

        def batch_put() -> None:
            for ks, vs in chunks:
                wb = WriteBatch(raw_mode=True)
                for k, v in zip(ks, vs, strict=True):
                    wb.put(k, dumps(v))
                db.write(wb)

        res.add(RAW, "batch put", w.n, timed(batch_put))
    finally:
        db.close()
        scratch.drop(path)


# --- the store on one backend ------------------------------------------------------------


def open_store(backend: str, scratch: Scratch) -> tuple[Store, str | None]:
    if backend == "memory":
        return crdt_kv.open(backend="memory"), None
    path = scratch.fresh()
    return crdt_kv.open(path, backend=backend), path


def run_store(backend: str, w: Workload, scratch: Scratch, res: Results) -> None:
    store, path = open_store(backend, scratch)
    try:

        def put() -> None:
            p = store.put
            for k, v in zip(w.keys, w.values, strict=True):
                p(k, v)

        def get() -> object:
            g = store.get
            v = None
            for k in w.get_keys:
                v = g(k)
            return v

        last: list[object] = []
        res.add(backend, "put", w.n, timed(put))
        res.add(backend, "get", w.n, timed(lambda: last.append(get())))
        check(f"{backend} get", last[-1], w.expect_last)

        def scan() -> int:
            count = 0
            for _kv in store.items():
                count += 1
            return count

        counted: list[int] = []
        res.add(backend, "range scan", w.n, timed(lambda: counted.append(scan())))
        check(f"{backend} scan", counted[-1], w.n)
    finally:
        store.close()
        if path is not None:
            scratch.drop(path)

    store, path = open_store(backend, scratch)
    chunks = w.chunks(w.keys)
    try:

        def batch_put() -> None:
            for ks, vs in chunks:
                with store.batch() as b:
                    p = b.put
                    for k, v in zip(ks, vs, strict=True):
                        p(k, v)

        res.add(backend, "batch put", w.n, timed(batch_put))
        check(f"{backend} batch put", len(store), w.n)
    finally:
        store.close()
        if path is not None:
            scratch.drop(path)


def run_round(r: int, backends: list[str], w: Workload, scratch: Scratch, res: Results) -> None:
    """One round: raw first on even rounds, last (and backends reversed) on odd ones."""
    order: list[str] = [RAW, *backends] if r % 2 == 0 else [*reversed(backends), RAW]
    for name in order:
        if name == RAW:
            run_raw(w, scratch, res)
        else:
            run_store(name, w, scratch, res)


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
            base = BASELINE_OP[op]
            ratio = med / res.median(RAW, RAW_OP[base])
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
            "raw = rocksdict Rdict(raw_mode) with cbor2 values; ratio = median ops/s / "
            "median raw ops/s of the named raw op; spread = (max - min) / median"
        ),
    )
    for col, justify in (
        ("backend", "left"),
        ("op", "left"),
        ("ops/s", "right"),
        ("spread", "right"),
        ("ratio vs raw", "right"),
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
                f"target {row.backend} {row.op} >= {row.target:.2f}x raw {row.baseline}: "
                f"{row.ratio:.2f}x -> {state}"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000, help="keys per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (median reported)")
    ap.add_argument("--batch", type=int, default=1000, help="writes per atomic batch")
    ap.add_argument(
        "--backends",
        default="rocksdb,memory,sqlite",
        help="comma-separated backend names (default: rocksdb,memory,sqlite)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the get order")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backend_list) - set(available_backends()))
    if unknown:
        ap.error(f"unknown backend(s) {unknown}; available: {available_backends()}")
    if args.n < 1 or args.rounds < 1 or args.batch < 1:
        ap.error("--n, --rounds and --batch must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends: list[str] = args.backend_list
    t0 = time.perf_counter()
    scratch = Scratch()
    try:
        warm = Workload.build(min(args.n, WARMUP_N), args.batch, args.seed)
        run_round(0, backends, warm, scratch, Results())
        del warm
        w = Workload.build(args.n, args.batch, args.seed)
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
                    "spread": round(row.spread, 3),
                    "ratio": None if row.ratio is None else round(row.ratio, 3),
                    "baseline": None if row.baseline is None else f"raw {row.baseline}",
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
