"""``python -m crdt_kv.testing.chaos``: one chaos run, its report; exit 0 on PASS, 1 on
FAIL, 2 when the run could not be carried out.

The run's files (node logs, stores, writer logs, dumps) are removed after a pass and kept
after a failure (``--workdir`` keeps them always).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio

from crdt_kv.testing.chaos.run import ChaosConfig, ChaosError, run_chaos


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run, print the report; the exit code (0 PASS, 1 FAIL)."""
    d = ChaosConfig()
    p = argparse.ArgumentParser(prog="python -m crdt_kv.testing.chaos", description=__doc__)
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of the chaos")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--writers", type=int, default=d.writers)
    p.add_argument("--keys", type=int, default=d.keys)
    p.add_argument("--kill-interval", type=float, default=d.kill_interval_s, metavar="S")
    p.add_argument("--fault-interval", type=float, default=d.fault_interval_s, metavar="S")
    p.add_argument("--max-down", type=int, default=d.max_down)
    p.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = p.parse_args(argv)
    if args.nodes < 2 or args.max_down >= args.nodes:
        p.error("need at least 2 nodes and --max-down below --nodes")
    config = ChaosConfig(
        nodes=args.nodes,
        seconds=args.seconds,
        seed=args.seed,
        writers=args.writers,
        keys=args.keys,
        kill_interval_s=args.kill_interval,
        fault_interval_s=args.fault_interval,
        max_down=args.max_down,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crdt_kv-chaos-"))
    try:
        report = trio.run(run_chaos, config, workdir)
    except ChaosError as exc:
        print(f"error: {exc} (files in {workdir})", file=sys.stderr)
        return 2
    print("\n".join(report.lines()), flush=True)
    if report.ok and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
