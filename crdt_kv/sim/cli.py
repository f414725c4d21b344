"""``crdt-kv simulate``: run the convergence suite from the command line.

Registered into ``crdt-kv`` by :func:`register` (``crdt_kv.cli`` loads this module as a
plugin). Without flags it runs every scenario once at a small default size (seconds),
with a results table; ``make run`` runs the standard suite at scale,
``crdt-kv simulate --nodes 32 --ops 100000``. The exit code is the verdict: 0 only when
every run converged and matched the oracle (and passed its other checks), 1 otherwise
(each failure prints the one command that replays it), 2 for bad arguments.

``--json`` prints exactly one JSON document on stdout and nothing else::

    {"ok": true, "suite": {...the options...}, "runs": [{...one SimResult...}, ...],
     "failures": ["crdt-kv simulate --scenario ... --seed ..."]}

Each run object carries every :class:`~crdt_kv.sim.SimResult` field (``converged``,
``oracle_match``, ``ok``, ``seed``, ``trace_hash``, ``nodes``, ``ops``, ``messages``,
``bytes``, ``virtual_time_ms``, ``convergence_time_ms``, ``scenario``, ``repro_command``,
...). ``docs/simulation.md`` describes every field.

This module is only the flags and the flow; running the suite (worker processes,
progress reports) is :mod:`crdt_kv.sim.suite`, and what is shown (table, progress bars,
JSON, plot) is :mod:`crdt_kv.sim.report`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from crdt_kv.errors import ConfigError
from crdt_kv.sim.report import (
    failure_detail,
    import_pyplot,
    plot_divergence,
    print_json,
    results_table,
    runs_with_progress,
    suite_document,
    summary_table,
)
from crdt_kv.sim.runner import BACKENDS, CONFLICT_MODES
from crdt_kv.sim.scenarios import expand, scenario_names
from crdt_kv.sim.suite import jobs_for, load_resolver, plan, run_all

__all__ = [
    "DEFAULT_NODES",
    "DEFAULT_OPS",
    "add_arguments",
    "load_resolver",
    "main",
    "plot_divergence",
    "register",
    "run_command",
]

DEFAULT_NODES = 8
"""Nodes per run without ``--nodes`` (small, so ``--seeds`` sweeps stay cheap)."""
DEFAULT_OPS = 2_000
"""Client operations per run without ``--ops``."""
PROGRESS_MIN_OPS = 5_000
"""Runs with fewer operations finish too fast to need a progress bar."""


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand to ``crdt-kv``'s subparsers."""
    p = subparsers.add_parser(
        "simulate",
        help="run the deterministic convergence simulation suite",
        description="Run simulated clusters of real stores through network faults, clock "
        "skew and crashes, then check convergence and the oracle. Exit code 0 only when "
        "every run passed.",
    )
    add_arguments(p)
    p.set_defaults(func=run_command)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``simulate`` flags (shared by :func:`main`)."""
    names = ", ".join(scenario_names())
    p.add_argument(
        "--scenario",
        default="all",
        help=f"scenario to run: one of {names}, or all (default: all)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=DEFAULT_NODES,
        help=f"replicas per run (default {DEFAULT_NODES})",
    )
    p.add_argument(
        "--ops",
        type=int,
        default=DEFAULT_OPS,
        help=f"client operations per run (default {DEFAULT_OPS})",
    )
    p.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    p.add_argument(
        "--seeds", type=int, default=1, metavar="N", help="sweep N seeds: seed .. seed+N-1"
    )
    p.add_argument("--keys", type=int, default=None, help="key-space size (default: derived)")
    p.add_argument("--backend", choices=BACKENDS, default="memory", help="storage backend")
    p.add_argument(
        "--conflicts",
        choices=CONFLICT_MODES,
        default="lww",
        help="the stores' conflict mode; siblings also reads and merges siblings and checks "
        "them with the happened-before oracle (default lww)",
    )
    p.add_argument(
        "--resolver",
        metavar="MODULE:FUNCTION",
        help="tie resolver to import, e.g. mypkg.mod:my_resolver ((a, b) -> a wins)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="run N simulations at once in worker processes (default 0: one per CPU); "
        "results and trace hashes do not depend on it",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document, no table")
    p.add_argument(
        "--summary",
        action="store_true",
        help="one row per scenario instead of one per run, and the wall time (for sweeps)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw divergent keys over virtual time per run (needs matplotlib: "
        "pip install 'crdt_kv[plot]')",
    )


def _check_args(args: argparse.Namespace) -> None:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.nodes < 2:
        raise ConfigError(f"--nodes must be >= 2, got {args.nodes}")
    if args.ops < 0:
        raise ConfigError(f"--ops must be >= 0, got {args.ops}")
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be >= 0, got {args.jobs}")
    expand(args.scenario)


def run_command(args: argparse.Namespace) -> int:
    """Run the suite ``args`` describe, print the table or JSON, return the exit code."""
    _check_args(args)
    resolver = load_resolver(args.resolver) if args.resolver else None
    if args.plot:
        import_pyplot()  # fail before the runs, not after
    if jobs_for(args, len(plan(args))) > 1:
        resolver = None  # each worker imports it again
    if args.json:
        results = run_all(args, resolver, lambda _n, _s: None)
        doc = suite_document(args, results)
        if args.plot:
            plot_divergence(results, args.plot)
        print_json(doc, results)
        return 0 if doc["ok"] else 1
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=120)
    err = Console(stderr=True)
    if err.is_terminal and args.ops >= PROGRESS_MIN_OPS:
        results = runs_with_progress(args, resolver, err)
    else:
        results = run_all(args, resolver, lambda _n, _s: None)
    console.print(summary_table(results) if args.summary else results_table(results))
    failures = [r for r in results if not r.ok]
    for r in failures:
        console.print(
            f"[red]FAILED[/] {r.scenario} seed {r.seed}: {failure_detail(r)}", highlight=False
        )
        console.print(f"  reproduce: {r.repro_command}", highlight=False, soft_wrap=True)
    if args.plot:
        plot_divergence(results, args.plot)
        console.print(f"divergence plot written to {args.plot}", highlight=False)
    passed = len(results) - len(failures)
    mode = " (siblings mode)" if args.conflicts == "siblings" else ""
    console.print(
        f"{passed}/{len(results)} runs passed{mode}: "
        + ("[green]CONVERGED[/]" if not failures else "[red]FAILED[/]")
    )
    return 0 if not failures else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``crdt-kv simulate`` as a function: the same flags, returns the exit code."""
    from crdt_kv.cli import main as cli_main

    return cli_main(["simulate", *(argv if argv is not None else sys.argv[1:])])
