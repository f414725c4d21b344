"""Screen a run's tie resolver before the run (:func:`screen`).

Why: a resolver that is not a deterministic, consistent order makes replicas diverge, but
a simulated run shows that only if tied writes decide the final state, and only after
seconds of simulation. :func:`crdt_kv.testing.screen.screen_resolver` asks the same kind
of questions directly, a few thousand times in a few milliseconds, seeded by the run's
seed so a run and its screen replay together. A resolver that fails is reported as the
run's error, naming the resolver and the violation, and the run is not started; its
reproduction command is the run's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from crdt_kv.errors import ResolverError
from crdt_kv.sim.config import SimConfig
from crdt_kv.testing.screen import screen_resolver

__all__ = ["resolver_label", "screen"]


def resolver_label(cfg: SimConfig) -> str:
    """How reports name the run's resolver: its ``--resolver`` spec, else ``module:name``."""
    if cfg.resolver_name:
        return cfg.resolver_name
    fn = cfg.resolver
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}:{name}"


def screen(cfg: SimConfig, peers: Sequence[str]) -> str | None:
    """Why the run's resolver must not be used, or None (no resolver, screen off, passed).

    The first line names the resolver, the seed and the violation; the next one holds the
    counterexample (tied entries the resolver was asked about).
    """
    if cfg.resolver is None or not cfg.resolver_screen:
        return None
    try:
        screen_resolver(cfg.resolver, seed=cfg.seed, peers=peers)
    except ResolverError as exc:
        text = str(exc).removeprefix("resolver ")
        what, _, example = text.partition("; counterexample: ")
        out = (
            f"resolver {resolver_label(cfg)} failed the determinism screen before the run "
            f"(seed {cfg.seed}): it {what}"
        )
        return f"{out}\ncounterexample: {example}" if example else out
    return None
