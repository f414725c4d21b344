"""Simulator speed: simulated events per wall second, and the wall time of a whole suite.

Usage::

    .venv/bin/python bench/bench_sim.py                      # 32 nodes x 100k ops, all
    .venv/bin/python bench/bench_sim.py --nodes 16 --ops 20000
    .venv/bin/python bench/bench_sim.py --scenario flaky --jobs 1 --profile

Each run is timed on its own (``events / wall s``: an *event* is one step of the
discrete-event loop: a delivered message, a client operation, a timer, a fault); the suite
is also timed end to end the way ``crdt-kv simulate`` runs it (``--jobs``: worker
processes, default one per CPU). The target of issue 5 is ``--scenario all --nodes 32
--ops 100000`` (memory backend) in under 2 minutes on the 2-core reference machine.
Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from crdt_kv import sim

TARGET_S = 120.0


def timed_run(scenario: str, nodes: int, ops: int, seed: int, backend: str) -> dict[str, object]:
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    r = sim.run(scenario, nodes=nodes, ops=ops, seed=seed, backend=backend)
    wall = time.perf_counter() - t0
    return {
        "scenario": scenario,
        "ok": r.ok,
        "events": r.events,
        "messages": r.messages,
        "bytes": r.bytes,
        "writes": r.writes,
        "wall_s": wall,
        "cpu_s": time.process_time() - cpu0,
        "convergence_ms": r.convergence_time_ms,
        "repro": r.repro_command,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="all")
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--ops", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", default="memory")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: one per CPU)")
    p.add_argument("--profile", action="store_true", help="cProfile one in-process run")
    args = p.parse_args(argv)
    names = sim.expand(args.scenario)
    jobs = max(1, min(args.jobs or os.cpu_count() or 1, len(names)))

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        timed_run(names[0], args.nodes, args.ops, args.seed, args.backend)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0

    print(
        f"bench_sim: {args.scenario} ({len(names)} runs), {args.nodes} nodes, {args.ops:,} ops, "
        f"{args.backend}, {jobs} job(s), {os.cpu_count()} CPU(s)"
    )
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    if jobs == 1:
        rows = [timed_run(n, args.nodes, args.ops, args.seed, args.backend) for n in names]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futs = [
                pool.submit(timed_run, n, args.nodes, args.ops, args.seed, args.backend)
                for n in names
            ]
            rows = [f.result() for f in futs]
    suite_wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]

    head = f"{'scenario':<15}{'ok':>4}{'events':>10}{'messages':>10}{'MB':>8}"
    head += f"{'wall s':>9}{'cpu s':>8}{'events/s':>10}{'conv ms':>9}"
    print(head)
    events = 0
    cpu = 0.0
    for row in rows:
        ev, wall, c = int(str(row["events"])), float(str(row["wall_s"])), float(str(row["cpu_s"]))
        events += ev
        cpu += c
        conv = row["convergence_ms"]
        print(
            f"{row['scenario']!s:<15}{'yes' if row['ok'] else 'NO':>4}{ev:>10,}"
            f"{int(str(row['messages'])):>10,}{int(str(row['bytes'])) / 1e6:>8.1f}"
            f"{wall:>9.1f}{c:>8.1f}{ev / wall:>10,.0f}{'-' if conv is None else conv:>9}"
        )
    print(
        f"suite: {suite_wall:.1f} s wall ({'under' if suite_wall < TARGET_S else 'OVER'} the "
        f"{TARGET_S:.0f} s target), {cpu:.1f} s CPU in runs, {events:,} events, "
        f"{events / suite_wall:,.0f} events per wall second, {events / max(cpu, 1e-9):,.0f} "
        f"per CPU second; load average {load0:.1f} -> {load1:.1f}"
    )
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        print(f"FAILED: {r['repro']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
