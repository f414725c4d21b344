"""Deterministic convergence simulation: real stores and sessions, simulated everything else.

``crdt_kv.sim.run(scenario=..., nodes=..., ops=..., seed=..., backend=...)`` runs one
scenario and returns a :class:`SimResult`; :func:`run_suite` runs several scenarios and
seeds. ``crdt-kv simulate`` is the command line (``crdt_kv.sim.cli``); ``docs/simulation.md``
explains the output. This package is part of the deterministic core: it never reads real
time, threads or sockets, so the same seed replays the same run bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from crdt_kv.sim.oracle import Mismatch, Oracle
from crdt_kv.sim.runner import SimConfig, SimResult, Simulation, repro_command, run
from crdt_kv.sim.scenarios import (
    SCENARIOS,
    Scenario,
    expand,
    get_scenario,
    scenario,
    scenario_names,
)

__all__ = [
    "SCENARIOS",
    "Mismatch",
    "Oracle",
    "Scenario",
    "SimConfig",
    "SimResult",
    "Simulation",
    "expand",
    "get_scenario",
    "repro_command",
    "run",
    "run_suite",
    "scenario",
    "scenario_names",
]


def run_suite(
    scenario: str | Iterable[str] = "all", *, seed: int = 1, seeds: int = 1, **kwargs: Any
) -> Iterator[SimResult]:
    """Run each scenario (``"all"`` expands) for ``seeds`` consecutive seeds from ``seed``.

    Yields results as they finish; ``kwargs`` go to :func:`run`.
    """
    names = (
        expand(scenario) if isinstance(scenario, str) else [n for s in scenario for n in expand(s)]
    )
    for name in names:
        for k in range(seeds):
            yield run(name, seed=seed + k, **kwargs)
