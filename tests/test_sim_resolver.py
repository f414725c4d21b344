"""The ``ties`` scenario and ``--resolver``: a bad tie resolver must be reported.

Two independent defences, each tested alone: the scenario ends with a tied burst that
decides every key's final value (so a resolver that answers at random makes replicas
disagree), and the simulator screens a resolver for determinism before the run (so it is
reported in milliseconds, whatever the scenario). Runs are small (3 nodes, 200 ops).
"""

from __future__ import annotations

from typing import Any

import cbor2

from crdt_kv.sim import SimConfig, SimResult, Simulation, get_scenario
from crdt_kv.version import RawEntry

SMALL: dict[str, Any] = {"nodes": 3, "ops": 200}


class Final(Simulation):
    """A simulation that keeps every live replica's final entries before ``close()``."""

    def __init__(self, cfg: SimConfig) -> None:
        super().__init__(cfg)
        self.final: dict[str, dict[bytes, RawEntry]] = {}

    def close(self) -> None:
        for n in self.live_nodes():
            if n.store is not None:
                self.final[n.peer_id] = {e.key: e for e in n.store.raw_changes(0)}
        super().close()


def run_ties(**kw: Any) -> tuple[Final, SimResult]:
    cfg = SimConfig(scenario="ties", **{**SMALL, **kw})
    s = Final(cfg)
    return s, s.run(get_scenario("ties").setup)


def _why(r: SimResult) -> str:
    return f"reproduce: {r.repro_command}; checks={r.checks} error={r.error}"


def test_final_tied_burst_decides_every_key() -> None:
    """Without a resolver the highest peer id wins ties: after the run every key on every
    replica holds the highest peer's write of the last burst, which came after the last
    client operation (nothing overwrote it)."""
    for seed in range(1, 4):
        s, r = run_ties(seed=seed)
        assert r.ok, _why(r)
        top = max(s.nodes, key=lambda n: n.peer_id)
        bursts = s.c["bursts"]
        assert bursts == 2, _why(r)
        assert len(s.final) == len(s.nodes)
        for node, entries in s.final.items():
            assert len(entries) == r.keys, (node, _why(r))
            for key, e in entries.items():
                assert e.peer == top.peer_id, (node, key, e, _why(r))
                assert not e.deleted
                assert cbor2.loads(e.value) == {"burst": top.index, "n": bursts}, _why(r)
            stamps = {e.hlc for e in entries.values()}
            assert len(stamps) == r.keys  # one batch: consecutive stamps, same on every node
        held = {
            tuple(sorted((k, e.hlc, e.peer, e.value) for k, e in entries.items()))
            for entries in s.final.values()
        }
        assert len(held) == 1, _why(r)  # seq is replica-local; everything else agrees
