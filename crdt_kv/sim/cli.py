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
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import queue
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any

from crdt_kv.errors import ConfigError
from crdt_kv.sim.runner import BACKENDS, SimResult, run
from crdt_kv.sim.scenarios import expand, scenario_names
from crdt_kv.version import Resolver

__all__ = [
    "DEFAULT_NODES",
    "DEFAULT_OPS",
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
PLOT_SAMPLES = 200
"""About how many divergence samples ``--plot`` takes per run."""
LEGEND_MAX = 21
"""Plots of more runs than this (big sweeps) get no legend."""
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
        "--plot",
        metavar="FILE.png",
        help="draw divergent keys over virtual time per run (needs matplotlib: "
        "pip install 'crdt_kv[plot]')",
    )


def load_resolver(spec: str) -> Resolver:
    """Import ``module:function`` (the function may be a dotted attribute path)."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"--resolver {spec!r} must look like module:function")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"--resolver {spec!r}: cannot import {mod_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"--resolver {spec!r}: {mod_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"--resolver {spec!r} is not callable")
    resolver: Resolver = obj
    return resolver


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


def _import_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed: pip install 'crdt_kv[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_divergence(results: Sequence[SimResult], path: str) -> None:
    """Draw each run's divergent-key count over virtual time into a PNG at ``path``.

    The dotted vertical line of each run marks its heal (faults stop); the curve should
    then fall to zero.
    """
    plt = _import_pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    try:
        for r in results:
            if not r.divergence:
                continue
            xs = [t / 1000 for t, _ in r.divergence]
            ys = [n for _, n in r.divergence]
            label = r.scenario if len({x.seed for x in results}) == 1 else f"{r.scenario} #{r.seed}"
            (line,) = ax.plot(xs, ys, label=label, linewidth=1.2)
            ax.axvline(r.heal_time_ms / 1000, color=line.get_color(), linestyle=":", linewidth=0.8)
        ax.set_xlabel("virtual time (s); dotted: heal")
        ax.set_ylabel("divergent keys")
        first = results[0] if results else None
        if first is not None:
            ax.set_title(f"crdt-kv simulate: {first.nodes} nodes, {first.ops} ops")
        if len(results) <= LEGEND_MAX:
            ax.legend(loc="upper left", fontsize="small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _sample_ms(args: argparse.Namespace) -> float | None:
    if not args.plot:
        return None
    from crdt_kv.sim.runner import SimConfig

    cfg = SimConfig(nodes=args.nodes, ops=args.ops)
    return max(10.0, cfg.effective_duration_ms() * 1.5 / PLOT_SAMPLES)


def _plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [
        (name, seed)
        for name in expand(args.scenario)
        for seed in range(args.seed, args.seed + args.seeds)
    ]


def _jobs(args: argparse.Namespace, runs: int) -> int:
    want = args.jobs or os.cpu_count() or 1
    return max(1, min(want, runs))


def _one(
    args: argparse.Namespace,
    name: str,
    seed: int,
    resolver: Resolver | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SimResult:
    if resolver is None and args.resolver:
        resolver = load_resolver(args.resolver)  # in a worker process
    return run(
        name,
        nodes=args.nodes,
        ops=args.ops,
        seed=seed,
        backend=args.backend,
        keys=args.keys,
        resolver=resolver,
        resolver_name=args.resolver,
        sample_ms=_sample_ms(args),
        progress=progress,
    )


def _runs(
    args: argparse.Namespace,
    resolver: Resolver | None,
    progress: Callable[[str, int], Callable[[str, int, int], None] | None],
    done: Callable[[str, int], None] | None = None,
) -> list[SimResult]:
    """Every run of the suite, in suite order; in worker processes when ``--jobs`` > 1.

    A run is a pure function of its arguments, so where it ran changes nothing in its
    result. Workers send their progress reports back through a queue.
    """
    plan = _plan(args)
    jobs = _jobs(args, len(plan))
    out: list[SimResult] = []
    if jobs == 1:
        for name, seed in plan:
            out.append(_one(args, name, seed, resolver, progress(name, seed)))
            if done is not None:
                done(name, seed)
        return out
    callbacks = {key: progress(*key) for key in plan}
    report = any(cb is not None for cb in callbacks.values())
    reports: Any = multiprocessing.get_context().Queue() if report else None
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=_init_worker, initargs=(reports,)
    ) as pool:
        futures: dict[Future[SimResult], tuple[str, int]] = {
            pool.submit(_in_worker, args, name, seed): (name, seed) for name, seed in plan
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2 if report else None)
            if reports is not None:
                _drain_reports(reports, callbacks)
            for fut in finished:
                fut.result()  # a worker's exception surfaces now
                if done is not None:
                    done(*futures[fut])
        out = [fut.result() for fut in futures]
    if reports is not None:
        _drain_reports(reports, callbacks)  # the workers have exited: nothing is in transit
        reports.close()
    return out


_reports: Any = None
"""In a worker process: the queue its progress reports go to (None: no reports)."""


def _init_worker(reports: Any) -> None:
    global _reports  # noqa: PLW0603 - set once per worker process
    _reports = reports


def _in_worker(args: argparse.Namespace, name: str, seed: int) -> SimResult:
    q = _reports
    progress: Callable[[str, int, int], None] | None = None
    if q is not None:

        def progress(phase: str, done: int, total: int) -> None:
            q.put((name, seed, phase, done, total))

    return _one(args, name, seed, None, progress)


def _drain_reports(
    reports: Any, callbacks: dict[tuple[str, int], Callable[[str, int, int], None] | None]
) -> None:
    while True:
        try:
            name, seed, phase, done, total = reports.get_nowait()
        except queue.Empty:
            return
        cb = callbacks.get((name, seed))
        if cb is not None:
            cb(phase, done, total)


def _fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f} ms"


def _verdict(r: SimResult) -> str:
    if r.ok:
        return "[green]PASS[/]"
    why = [k for k, v in r.checks.items() if not v]
    if r.error:
        why.insert(0, "error")
    return "[red]FAIL[/] " + ", ".join(why)


def _table(results: Sequence[SimResult]) -> Any:
    from rich.table import Table

    t = Table(title="crdt-kv simulate", title_justify="left")
    for col, just in (
        ("scenario", "left"),
        ("seed", "right"),
        ("nodes", "right"),
        ("ops", "right"),
        ("messages", "right"),
        ("bytes", "right"),
        ("convergence", "right"),
        ("verdict", "left"),
    ):
        t.add_column(col, justify=just, no_wrap=col != "verdict")  # type: ignore[arg-type]
    for r in results:
        t.add_row(
            r.scenario,
            str(r.seed),
            str(r.nodes),
            f"{r.ops:,}",
            f"{r.messages:,}",
            f"{r.bytes:,}",
            _fmt_ms(r.convergence_time_ms),
            _verdict(r),
        )
    return t


def run_command(args: argparse.Namespace) -> int:
    """Run the suite ``args`` describe, print the table or JSON, return the exit code."""
    _check_args(args)
    resolver = load_resolver(args.resolver) if args.resolver else None
    if args.plot:
        _import_pyplot()  # fail before the runs, not after
    if _jobs(args, len(_plan(args))) > 1:
        resolver = None  # each worker imports it again
    if args.json:
        results = _runs(args, resolver, lambda _n, _s: None)
        return _finish_json(args, results)
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=120)
    err = Console(stderr=True)
    if err.is_terminal and args.ops >= PROGRESS_MIN_OPS:
        results = _runs_with_progress(args, resolver, err)
    else:
        results = _runs(args, resolver, lambda _n, _s: None)
    console.print(_table(results))
    failures = [r for r in results if not r.ok]
    for r in failures:
        detail = f"error: {r.error.splitlines()[0]}" if r.error else _failure_detail(r)
        console.print(f"[red]FAILED[/] {r.scenario} seed {r.seed}: {detail}", highlight=False)
        console.print(f"  reproduce: {r.repro_command}", highlight=False, soft_wrap=True)
    if args.plot:
        plot_divergence(results, args.plot)
        console.print(f"divergence plot written to {args.plot}", highlight=False)
    passed = len(results) - len(failures)
    console.print(
        f"{passed}/{len(results)} runs passed: "
        + ("[green]CONVERGED[/]" if not failures else "[red]FAILED[/]")
    )
    return 0 if not failures else 1


def _failure_detail(r: SimResult) -> str:
    parts = [f"{k}={v}" for k, v in r.checks.items() if not v]
    if r.mismatch_count:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(r.mismatch_kinds.items()))
        parts.append(f"{r.mismatch_count} oracle mismatches ({kinds})")
    if r.hlc_violations:
        parts.append(f"{r.hlc_violations} HLC regressions")
    return "; ".join(parts)


def _runs_with_progress(
    args: argparse.Namespace, resolver: Resolver | None, err: Any
) -> list[SimResult]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        total = args.ops or 1
        tasks = {
            key: bar.add_task(f"{key[0]} #{key[1]}", total=total, phase="queued")
            for key in _plan(args)
        }

        finished_runs: set[tuple[str, int]] = set()

        def factory(name: str, seed: int) -> Callable[[str, int, int], None]:
            task = tasks[(name, seed)]

            def update(phase: str, done: int, total_: int) -> None:
                if (name, seed) in finished_runs:
                    return  # a late report from a worker
                if phase == "ops":
                    bar.update(task, completed=done, phase=f"{done:,}/{total_:,} ops")
                else:
                    bar.update(task, completed=total, phase=f"converging {done:,} ms")

            return update

        def finished(name: str, seed: int) -> None:
            finished_runs.add((name, seed))
            bar.update(tasks[(name, seed)], completed=total, phase="done")

        return _runs(args, resolver, factory, finished)


def _finish_json(args: argparse.Namespace, results: Sequence[SimResult]) -> int:
    ok = bool(results) and all(r.ok for r in results)
    doc = {
        "ok": ok,
        "suite": {
            "scenario": args.scenario,
            "nodes": args.nodes,
            "ops": args.ops,
            "seed": args.seed,
            "seeds": args.seeds,
            "keys": args.keys,
            "backend": args.backend,
            "resolver": args.resolver,
            "jobs": _jobs(args, len(results)),
        },
        "runs": [r.to_dict() for r in results],
        "failures": [r.repro_command for r in results if not r.ok],
    }
    if args.plot:
        plot_divergence(results, args.plot)
    json.dump(doc, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not ok:
        for r in results:
            if not r.ok:
                print(f"FAILED {r.scenario} seed {r.seed}: {r.repro_command}", file=sys.stderr)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``crdt-kv simulate`` as a function: the same flags, returns the exit code."""
    from crdt_kv.cli import main as cli_main

    return cli_main(["simulate", *(argv if argv is not None else sys.argv[1:])])
