"""The ``ties`` scenario and ``--resolver``: a bad tie resolver must be reported.

Two independent defences, each tested alone: the scenario ends with a tied burst that
decides every key's final value (so a resolver that answers at random makes replicas
disagree), and the simulator screens a resolver for determinism before the run (so it is
reported in milliseconds, whatever the scenario). Runs are small (3 nodes, 200 ops).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

import crdt_kv.testing
from crdt_kv import sim
from crdt_kv.sim import SimConfig, SimResult, Simulation, get_scenario
from crdt_kv.sim.cli import main as sim_main
from crdt_kv.testing.resolvers import coin
from crdt_kv.testing.screen import screen_resolver
from crdt_kv.version import Entry, RawEntry, Resolver

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


# --- the screen before the run -----------------------------------------------------------

COIN = "crdt_kv.testing.resolvers:coin"


def longest_value(a: Entry, b: Entry) -> bool:
    """A good resolver: a value beats a tombstone, then the longer encoding wins, then the
    greater bytes; equal values leave the tie to the store's canonical order (peer id)."""

    def rank(e: Entry) -> tuple[bool, int, bytes]:
        raw = b"" if e.deleted else (e.raw or b"")
        return (not e.deleted, len(raw), raw)

    return rank(a) > rank(b)


def lowest_peer(a: Entry, b: Entry) -> bool:
    """A good resolver: the lower peer id wins."""
    return a.peer < b.peer


def test_coin_resolver_is_reported_in_at_least_19_of_20_seeds() -> None:
    reported = 0
    for seed in range(1, 21):
        r = sim.run("ties", seed=seed, resolver=coin, resolver_name=COIN, **SMALL)
        if r.ok:
            continue
        reported += 1
        assert r.error is not None and r.checks["resolver_screened"] is False, _why(r)
        first = r.error.splitlines()[0]
        assert f"resolver {COIN} failed the determinism screen" in first, first
        assert "not deterministic" in first, first
        assert "counterexample: a=Entry(" in r.error
        assert f"--seed {seed} " in r.repro_command and f"--resolver {COIN}" in r.repro_command
        assert r.writes == 0  # reported before the run: no time spent simulating
    assert reported >= 19


def test_without_the_screen_the_ties_scenario_still_catches_coin() -> None:
    """The final tied burst alone: replicas that ask the coin pick different winners."""
    caught = 0
    for seed in range(1, 7):
        r = sim.run("ties", seed=seed, resolver=coin, resolver_screen=False, **SMALL)
        assert r.hlc_ties > 0 and r.error is None, _why(r)
        caught += not (r.converged and r.oracle_match)
    assert caught >= 5


@pytest.mark.parametrize("good", [longest_value, lowest_peer])
def test_good_resolver_passes_the_screen_and_the_ties_scenario(good: Resolver) -> None:
    for seed in range(1, 4):
        s, r = run_ties(seed=seed, resolver=good, resolver_name=f"test:{good.__name__}")
        assert r.ok and r.checks["resolver_screened"] is True, _why(r)
        assert r.hlc_ties > 0
        assert s.screened and s.screen_error is None


def test_screen_is_seeded_and_cheap() -> None:
    asked: list[tuple[Entry, Entry]] = []

    def recording(a: Entry, b: Entry) -> bool:
        asked.append((a, b))
        return lowest_peer(a, b)

    started = time.perf_counter()
    screen_resolver(recording, seed=7, peers=["n0", "n1", "n2"])
    elapsed = time.perf_counter() - started
    first = list(asked)
    asked.clear()
    screen_resolver(recording, seed=7, peers=["n0", "n1", "n2"])
    assert asked == first  # the same seed asks the same questions
    asked.clear()
    screen_resolver(recording, seed=8, peers=["n0", "n1", "n2"])
    assert asked != first
    assert len(first) > 500
    assert all(a.hlc == b.hlc and a.key == b.key and a.peer != b.peer for a, b in first)
    assert elapsed < 0.5, elapsed  # milliseconds in practice


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (lambda a, b: True, "is not antisymmetric"),
        (lambda a, b: a.seq > b.seq, "answers differently for equal copies"),
        (lambda a, b: a.value > b.value, "raised TypeError"),
        (lambda a, b: 1, "not a bool"),
        (lambda a, b: (_small(a) - _small(b)) % 3 == 1, "transitive"),
    ],
    ids=["always-true", "seq", "raises", "non-bool", "rock-paper-scissors"],
)
def test_screen_names_the_violation(fn: Any, words: str) -> None:
    r = sim.run("ties", seed=1, resolver=fn, resolver_name="test:bad", **SMALL)
    assert not r.ok and r.error is not None, _why(r)
    assert words in r.error.splitlines()[0], r.error


def _small(e: Entry) -> int:
    return e.value if type(e.value) is int else 0


def test_cli_reports_coin_with_the_reproduction_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--scenario", "ties", "--nodes", "3", "--ops", "200", "--seeds", "3"]
    code = sim_main([*argv, "--jobs", "1", "--resolver", COIN])
    out = " ".join(capsys.readouterr().out.split())  # undo the table's line wrapping
    assert code == 1
    assert out.count(f"error: resolver {COIN} failed the determinism screen") == 3, out
    for seed in (1, 2, 3):
        assert (
            f"reproduce: crdt-kv simulate --scenario ties --nodes 3 --ops 200 --seed {seed} "
            f"--resolver {COIN}"
        ) in out
    assert "0/3 runs passed" in out


def test_the_screen_does_not_import_hypothesis() -> None:
    """Every run (and every worker process) screens its resolver: importing hypothesis for
    that would cost more than most small runs."""
    code = (
        "import sys, crdt_kv.sim\n"
        "r = crdt_kv.sim.run('ties', nodes=3, ops=50, resolver=lambda a, b: a.peer < b.peer)\n"
        "assert r.ok and r.checks['resolver_screened'], r\n"
        "assert 'hypothesis' not in sys.modules\n"
    )
    env = dict(os.environ)
    src = str(Path(crdt_kv.testing.__file__).parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert crdt_kv.testing.screen_resolver is screen_resolver
