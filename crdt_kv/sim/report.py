"""What ``crdt-kv simulate`` shows: the results table, progress bars, JSON, the plot.

Why separate: presentation changes often and needs optional packages (rich is imported
when a table or bar is drawn, matplotlib only for ``--plot``), while the suite and the
verdict must not depend on either. Everything here reads :class:`~crdt_kv.sim.SimResult`
objects; nothing decides whether a run passed (that is ``SimResult.ok``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from crdt_kv.errors import ConfigError
from crdt_kv.sim.runner import SimResult
from crdt_kv.sim.suite import jobs_for, plan, run_all
from crdt_kv.version import Resolver

__all__ = [
    "LEGEND_MAX",
    "failure_detail",
    "import_pyplot",
    "plot_divergence",
    "print_json",
    "results_table",
    "runs_with_progress",
    "suite_document",
]

LEGEND_MAX = 21
"""Plots of more runs than this (big sweeps) get no legend."""


# --- table -------------------------------------------------------------------------------


def _fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f} ms"


def _verdict(r: SimResult) -> str:
    if r.ok:
        return "[green]PASS[/]"
    if r.checks.get("resolver_screened") is False:
        return "[red]FAIL[/] resolver_screened (not run)"
    why = [k for k, v in r.checks.items() if not v]
    if r.error:
        why.insert(0, "error")
    return "[red]FAIL[/] " + ", ".join(why)


def results_table(results: Sequence[SimResult]) -> Any:
    """A :class:`rich.table.Table`, one row per run with its verdict (rich markup)."""
    from rich.table import Table

    siblings = any(r.conflicts == "siblings" for r in results)
    title = "crdt-kv simulate --conflicts siblings" if siblings else "crdt-kv simulate"
    t = Table(title=title, title_justify="left")
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


def summary_table(results: Sequence[SimResult]) -> Any:
    """A :class:`rich.table.Table`, one row per scenario and conflict mode: runs, passed,
    seeds swept, median and worst convergence, messages (for sweeps of thousands of runs,
    where one row per run says nothing)."""
    from rich.table import Table

    groups: dict[tuple[str, str], list[SimResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.conflicts), []).append(r)
    t = Table(title="crdt-kv simulate (summary)", title_justify="left")
    for col in ("scenario", "conflicts", "runs", "passed", "seeds", "median conv.", "worst conv."):
        t.add_column(col, justify="left" if col in ("scenario", "conflicts") else "right")
    t.add_column("messages", justify="right")
    for (scenario, mode), rs in groups.items():
        conv = sorted(r.convergence_time_ms for r in rs if r.convergence_time_ms is not None)
        seeds = f"{min(r.seed for r in rs)}-{max(r.seed for r in rs)}"
        passed = sum(r.ok for r in rs)
        t.add_row(
            scenario,
            mode,
            f"{len(rs):,}",
            f"{passed:,}" if passed == len(rs) else f"[red]{passed:,}[/]",
            seeds,
            _fmt_ms(conv[len(conv) // 2] if conv else None),
            _fmt_ms(conv[-1] if conv else None),
            f"{sum(r.messages for r in rs):,}",
        )
    return t


def failure_detail(r: SimResult) -> str:
    """One line naming what a failed run got wrong (failed checks, mismatch kinds...)."""
    if r.error:
        return f"error: {r.error.splitlines()[0]}"
    parts = [f"{k}={v}" for k, v in r.checks.items() if not v]
    if r.mismatch_count:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(r.mismatch_kinds.items()))
        parts.append(f"{r.mismatch_count} oracle mismatches ({kinds})")
    if r.hlc_violations:
        parts.append(f"{r.hlc_violations} HLC regressions")
    return "; ".join(parts)


# --- progress bars -----------------------------------------------------------------------


def runs_with_progress(
    args: argparse.Namespace, resolver: Resolver | None, err: Any
) -> list[SimResult]:
    """:func:`~crdt_kv.sim.suite.run_all` with one rich progress bar per run on ``err``.

    The bars are transient (gone when the suite ends); late reports of a finished run,
    still in the workers' queue, are ignored rather than moving its bar back.
    """
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
            for key in plan(args)
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

        return run_all(args, resolver, factory, finished)


# --- JSON --------------------------------------------------------------------------------


def suite_document(args: argparse.Namespace, results: Sequence[SimResult]) -> dict[str, Any]:
    """The ``--json`` document: ``ok``, the ``suite`` options, ``runs``, ``failures``.

    ``ok`` is False for an empty suite: nothing ran, so nothing was shown to converge.
    """
    return {
        "ok": bool(results) and all(r.ok for r in results),
        "suite": {
            "scenario": args.scenario,
            "nodes": args.nodes,
            "ops": args.ops,
            "seed": args.seed,
            "seeds": args.seeds,
            "keys": args.keys,
            "backend": args.backend,
            "conflicts": getattr(args, "conflicts", "lww"),
            "resolver": args.resolver,
            "jobs": jobs_for(args, len(results)),
        },
        "runs": [r.to_dict() for r in results],
        "failures": [r.repro_command for r in results if not r.ok],
    }


def print_json(doc: dict[str, Any], results: Sequence[SimResult]) -> None:
    """Exactly one JSON document on stdout; each failure's repro command on stderr."""
    json.dump(doc, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
    for r in results:
        if not r.ok:
            print(f"FAILED {r.scenario} seed {r.seed}: {r.repro_command}", file=sys.stderr)


# --- plot --------------------------------------------------------------------------------


def import_pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend; :class:`ConfigError` if absent."""
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
    plt = import_pyplot()
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
