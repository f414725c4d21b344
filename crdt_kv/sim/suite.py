"""Run a simulation suite (scenarios x seeds), here or across worker processes.

Why separate from the command line: this is the part with concurrency (a process pool and
a queue carrying progress reports back), and it has a contract of its own that the rest
relies on: results come back in suite order and are identical whatever ``jobs`` is,
because a run is a pure function of its arguments. Output (tables, JSON, plots, progress
bars) is :mod:`crdt_kv.sim.report`'s business; flags are :mod:`crdt_kv.sim.cli`'s.

A suite is described by an :class:`argparse.Namespace` with the ``simulate`` flags
(``scenario``, ``seed``, ``seeds``, ``nodes``, ``ops``, ``keys``, ``backend``,
``conflicts``, ``resolver``, ``jobs``, ``plot``), so a parsed command line runs as is
(``conflicts`` may be missing: ``lww``).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any

from crdt_kv.errors import ConfigError
from crdt_kv.sim.runner import SimConfig, SimResult, run
from crdt_kv.sim.scenarios import expand
from crdt_kv.version import Resolver

__all__ = [
    "PLOT_SAMPLES",
    "Progress",
    "ProgressFactory",
    "jobs_for",
    "load_resolver",
    "plan",
    "run_all",
]

PLOT_SAMPLES = 200
"""About how many divergence samples a run takes when the suite draws a plot."""

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)`` reports of one run (phase ``"ops"`` or ``"converging"``)."""
ProgressFactory = Callable[[str, int], Progress | None]
"""``factory(scenario, seed)``: the progress callback of that run, or None for none."""


def load_resolver(spec: str) -> Resolver:
    """Import ``module:function`` (the function may be a dotted attribute path).

    Raises :class:`ConfigError` naming ``--resolver`` for anything that is not an
    importable callable, so a typo is a usage error, not a traceback.
    """
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


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """Every ``(scenario, seed)`` of the suite, in suite (= result) order."""
    return [
        (name, seed)
        for name in expand(args.scenario)
        for seed in range(args.seed, args.seed + args.seeds)
    ]


def jobs_for(args: argparse.Namespace, runs: int) -> int:
    """Worker processes for ``runs`` runs: ``--jobs`` (0: one per CPU), at most one a run."""
    want = args.jobs or os.cpu_count() or 1
    return max(1, min(want, runs))


def _sample_ms(args: argparse.Namespace) -> float | None:
    if not args.plot:
        return None
    cfg = SimConfig(nodes=args.nodes, ops=args.ops)
    return max(10.0, cfg.effective_duration_ms() * 1.5 / PLOT_SAMPLES)


def _one(
    args: argparse.Namespace,
    name: str,
    seed: int,
    resolver: Resolver | None,
    progress: Progress | None = None,
) -> SimResult:
    if resolver is None and args.resolver:
        resolver = load_resolver(args.resolver)  # in a worker process
    return run(
        name,
        nodes=args.nodes,
        ops=args.ops,
        seed=seed,
        backend=args.backend,
        conflicts=getattr(args, "conflicts", "lww"),
        keys=args.keys,
        resolver=resolver,
        resolver_name=args.resolver,
        sample_ms=_sample_ms(args),
        progress=progress,
    )


def run_all(
    args: argparse.Namespace,
    resolver: Resolver | None,
    progress: ProgressFactory,
    done: Callable[[str, int], None] | None = None,
) -> list[SimResult]:
    """Every run of the suite, in suite order; in worker processes when ``jobs`` > 1.

    ``resolver`` is used in this process only; workers import ``args.resolver`` again
    (a function need not pickle). ``progress(name, seed)`` is asked once per run for its
    callback; workers send their reports back through a queue, drained here, so the
    callbacks always run in this process. ``done(name, seed)`` is called as each run
    finishes (in completion order). A run's exception is raised here.
    """
    runs = plan(args)
    jobs = jobs_for(args, len(runs))
    out: list[SimResult] = []
    if jobs == 1:
        for name, seed in runs:
            out.append(_one(args, name, seed, resolver, progress(name, seed)))
            if done is not None:
                done(name, seed)
        return out
    callbacks = {key: progress(*key) for key in runs}
    report = any(cb is not None for cb in callbacks.values())
    reports: Any = multiprocessing.get_context().Queue() if report else None
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=_init_worker, initargs=(reports,)
    ) as pool:
        futures: dict[Future[SimResult], tuple[str, int]] = {
            pool.submit(_in_worker, args, name, seed): (name, seed) for name, seed in runs
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
    progress: Progress | None = None
    if q is not None:

        def progress(phase: str, done: int, total: int) -> None:
            q.put((name, seed, phase, done, total))

    return _one(args, name, seed, None, progress)


def _drain_reports(reports: Any, callbacks: dict[tuple[str, int], Progress | None]) -> None:
    while True:
        try:
            name, seed, phase, done, total = reports.get_nowait()
        except queue.Empty:
            return
        cb = callbacks.get((name, seed))
        if cb is not None:
            cb(phase, done, total)
