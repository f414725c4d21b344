"""The convergence simulator (crdt_kv.sim): determinism, every scenario, what each
scenario claims to do, the invariants, and the ``crdt-kv simulate`` command line.

Runs are small (a few nodes, a few hundred operations) so the file stays fast; bigger
sweeps are marked ``soak``. Every assertion message carries the command that replays the
run (``SimResult.repro_command``).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crdt_kv import sim
from crdt_kv.errors import ConfigError
from crdt_kv.sim import SimConfig, SimResult, Simulation, get_scenario
from crdt_kv.sim.cli import main as sim_main
from crdt_kv.sim.faults import Crash, FaultAction, Restart, Shutdown
from crdt_kv.sim.workload import Op
from crdt_kv.version import Entry, RawEntry

SMALL = {"nodes": 5, "ops": 600}


def lowest_peer(a: Entry, b: Entry) -> bool:
    """A deterministic resolver (importable as ``test_sim:lowest_peer``)."""
    return a.peer < b.peer


def _why(r: SimResult) -> str:
    return f"reproduce: {r.repro_command}; checks={r.checks} error={r.error}"


class Inspect(Simulation):
    """A simulation that keeps what the tests look at before ``close()`` drops it."""

    def __init__(self, cfg: SimConfig) -> None:
        super().__init__(cfg)
        self.final: dict[str, dict[bytes, RawEntry]] = {}
        self.horizons: dict[str, int] = {}
        self.acked: list[tuple[str, bool, int, str]] = []
        self.crashes: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        record = self.oracle.record

        def spy(key: str, value: Any, deleted: bool, hlc: int, peer: str) -> None:
            self.acked.append((key, deleted, hlc, peer))
            record(key, value, deleted, hlc, peer)

        self.oracle.record = spy  # type: ignore[method-assign]

    def apply(self, action: FaultAction) -> None:
        if isinstance(action, Crash):
            node = self.nodes[action.node]
            if node.store is not None:
                stored = max((e.hlc for e in node.store.raw_changes(0)), default=0)
                self.crashes.append(
                    {
                        "node": action.node,
                        "store": node.store,
                        "incarnation": node.store.incarnation,
                        "conns": len(node.conns),
                        "peers": sorted(node.conns),
                        "stored_hlc": stored,
                        "n": len(self.crashes) + len(self.restarts),
                    }
                )
        super().apply(action)
        if isinstance(action, Crash):
            assert not self.nodes[action.node].conns, "a crashed node kept a connection"
            for n in self.nodes:
                assert action.node not in n.conns, f"{n.peer_id} still talks to a crashed node"
        if isinstance(action, Restart):
            node = self.nodes[action.node]
            assert node.store is not None
            self.restarts.append(
                {
                    "node": action.node,
                    "store": node.store,
                    "incarnation": node.store.incarnation,
                    "hlc": node.store.hlc.last,
                    "n": len(self.crashes) + len(self.restarts),
                }
            )

    def close(self) -> None:
        for n in self.live_nodes():
            if n.store is not None:
                self.final[n.peer_id] = {e.key: e for e in n.store.raw_changes(0)}
                self.horizons[n.peer_id] = n.store.gc_horizon
        super().close()


def inspect(scenario: str, **kw: Any) -> tuple[Inspect, SimResult]:
    cfg = SimConfig(scenario=scenario, **{**SMALL, **kw})
    s = Inspect(cfg)
    return s, s.run(get_scenario(scenario).setup)


def assert_passed(r: SimResult) -> None:
    assert r.error is None, _why(r)
    assert r.converged, _why(r)
    assert r.oracle_match, _why(r) + f" mismatches={r.mismatches[:5]}"
    assert r.hlc_violations == 0, _why(r)
    assert r.ok, _why(r)


def assert_invariants(s: Inspect, r: SimResult) -> None:
    """Independent of the oracle: no lost write, no resurrection, every node's write
    stamps strictly increase, and a restarted node's HLC starts at or above every stamp
    it had stored (with ``sync_writes=False``: durable writes only, no stamp checks)."""
    assert s.final, _why(r)
    latest: dict[str, tuple[int, str, bool]] = {}
    for key, deleted, hlc, peer in s.acked:
        if key not in latest or (hlc, peer) > latest[key][:2]:
            latest[key] = (hlc, peer, deleted)
    for node, entries in s.final.items():
        horizon = s.horizons.get(node, 0)
        for key, deleted, hlc, _ in s.acked:
            e = entries.get(key.encode())
            last_hlc, _, last_deleted = latest[key]
            if e is None and last_deleted and last_hlc < horizon:
                continue  # deleted, then collected below the node's horizon
            assert e is not None, f"{node} lost every write of {key!r}; {_why(r)}"
            assert e.hlc >= hlc, f"{node} lost {key!r}@{hlc} (holds {e.hlc}); {_why(r)}"
            del deleted
        for key, (_, _, deleted) in latest.items():
            if deleted and (e := entries.get(key.encode())) is not None:
                assert e.deleted, f"{node}: deleted key {key!r} came back; {_why(r)}"
    if not s.cfg.sync_writes:
        return  # oracle records come at write-back, and a power cut may rewind stamps
    by_peer: dict[str, list[int]] = {}
    for _, _, hlc, peer in s.acked:
        by_peer.setdefault(peer, []).append(hlc)
    for peer, stamps in by_peer.items():
        assert all(a < b for a, b in itertools.pairwise(stamps)), f"{peer} stamps went back"
    for crash, restart in _pairs(s):
        assert restart["hlc"] >= crash["stored_hlc"], f"restart below stored; {_why(r)}"


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["flaky", "crash-restart"])
def test_same_seed_same_trace(scenario: str) -> None:
    a = sim.run(scenario, seed=11, **SMALL)
    b = sim.run(scenario, seed=11, **SMALL)
    assert a.trace_hash == b.trace_hash
    assert a.to_dict() == b.to_dict()
    c = sim.run(scenario, seed=12, **SMALL)
    assert c.trace_hash != a.trace_hash


def test_same_trace_in_another_process_with_another_hash_seed() -> None:
    """Nothing depends on str hashing, object ids or the process: a repro command
    replays the run anywhere."""
    code = (
        "import crdt_kv.sim as s; "
        "print(' '.join(s.run(n, nodes=4, ops=300, seed=9).trace_hash "
        "for n in ('flaky', 'ties', 'churn')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    here = [sim.run(n, nodes=4, ops=300, seed=9).trace_hash for n in ("flaky", "ties", "churn")]
    assert out == here


def test_trace_hash_shape_and_sampling_does_not_perturb() -> None:
    a = sim.run("partition-heal", seed=4, **SMALL)
    b = sim.run("partition-heal", seed=4, sample_ms=50, **SMALL)
    assert len(a.trace_hash) == 32 and int(a.trace_hash, 16) >= 0
    assert a.trace_hash == b.trace_hash
    assert not a.divergence and len(b.divergence) > 10
    assert max(n for _, n in b.divergence) > 0  # it did diverge during the faults
    assert b.divergence[-1][1] == 0  # and ended converged


# --- every scenario ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sim.scenario_names())
def test_every_scenario_converges(scenario: str) -> None:
    s, r = inspect(scenario, seed=2)
    assert_passed(r)
    assert_invariants(s, r)
    assert r.convergence_time_ms is not None and r.convergence_time_ms <= 60_000
    assert r.writes > 0 and r.messages > 0 and r.bytes > 0


def test_scenario_registry() -> None:
    names = sim.scenario_names()
    required = {"clean", "flaky", "partition-heal", "clock-skew", "ties", "crash-restart"}
    assert required | {"churn"} <= set(names)
    assert sim.expand("all") == names
    with pytest.raises(ConfigError, match="'nope'"):
        sim.expand("nope")


def test_rocksdb_crash_restart_keeps_incarnation_and_recovers() -> None:
    """A simulated crash of a RocksDB node is a process crash (an unclean close within one
    boot): nothing the OS accepted is lost, so the store keeps its incarnation and peers
    resume from their cursors; the run converges. (Power loss is modelled by SimDisk.)"""
    s, r = inspect("crash-restart", backend="rocksdb", nodes=4, ops=300, seed=3)
    assert_passed(r)
    assert_invariants(s, r)
    assert s.crashes and s.restarts
    for crash, restart in _pairs(s):
        assert restart["incarnation"] == crash["incarnation"], _why(r)


def _pairs(s: Inspect) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each restart with the crash it recovers from (a node may crash several times)."""
    assert len(s.crashes) == len(s.restarts)
    out = []
    for crash in s.crashes:
        restart = next(x for x in s.restarts if x["node"] == crash["node"] and x["n"] > crash["n"])
        out.append((crash, restart))
    return out


def test_sqlite_flaky() -> None:
    s, r = inspect("flaky", backend="sqlite", nodes=4, ops=300, seed=3)
    assert_passed(r)
    assert_invariants(s, r)
    assert r.backend == "sqlite"


# --- what the scenarios claim ------------------------------------------------------------


def test_clock_skew_refuses_the_rogue_node() -> None:
    s, r = inspect("clock-skew", seed=5)
    assert_passed(r)
    (rogue,) = r.rogue_nodes
    # The rogue's first sessions show it that most peers are hours behind its stamps: from
    # then on it refuses its clients' writes (fenced) instead of acknowledging writes that
    # could never leave it.
    assert r.writes_fenced > 0, _why(r)
    assert r.skew_rejections > 0, _why(r)
    assert r.checks["rogue_refused"] is True
    assert "ClockSkewError" in " ".join(r.session_failures), r.session_failures
    for node, entries in s.final.items():
        assert rogue not in node
        leaked = [e.key for e in entries.values() if e.peer == rogue]
        assert not leaked, f"{node} accepted the rogue's writes {leaked[:3]}; {_why(r)}"
    legit = [n.clock() for n in s.nodes if not n.rogue]
    rogue_clock = next(n.clock() for n in s.nodes if n.rogue)
    assert rogue_clock - max(legit) > s.cfg.max_offset_ms
    assert max(legit) - min(legit) > 3_600_000 // 2  # legit clocks really are far apart
    assert max(legit) - min(legit) < s.cfg.max_offset_ms


def test_ties_really_tie_and_use_the_resolver() -> None:
    calls: list[tuple[str, str]] = []

    def counting(a: Entry, b: Entry) -> bool:
        calls.append((a.peer, b.peer))
        return a.peer < b.peer

    s, r = inspect("ties", seed=6, resolver=counting, resolver_name="test:counting")
    assert_passed(r)
    assert r.hlc_ties >= 10, _why(r)
    assert calls and all(a != b for a, b in calls)
    # After the final burst the tied keys are won by the lowest peer (the resolver says so).
    peers = sorted(n.peer_id for n in s.nodes)
    winners = {e.peer for entries in s.final.values() for e in entries.values()}
    assert peers[0] in winners


def test_ties_without_resolver_break_by_highest_peer() -> None:
    s, r = inspect("ties", seed=6)
    assert_passed(r)
    assert r.hlc_ties >= 10
    top = max(n.peer_id for n in s.nodes)
    (entries, *_) = s.final.values()
    assert any(e.peer == top for e in entries.values())


def test_crash_restart_loses_volatile_state_and_recovers() -> None:
    s, r = inspect("crash-restart", seed=8, nodes=6, ops=1500)
    assert_passed(r)
    assert_invariants(s, r)
    assert r.crashes >= 2 and r.restarts == r.crashes, _why(r)
    # The Store object (HLC in memory, sessions, queued bytes) is gone; memory is
    # power safe, so the incarnation and every committed batch survive.
    for crash, restart in _pairs(s):
        assert restart["store"] is not crash["store"]
        assert restart["incarnation"] == crash["incarnation"]
    assert all(c["store"].closed is False for c in s.crashes)  # dropped, never closed
    assert any(c["conns"] for c in s.crashes), "no crash interrupted a connection"
    jumps = [a.clock_jump_ms for _, a in s._plan if isinstance(a, Restart)]
    assert any(j < 0 for j in jumps), "no restart stepped its clock back"


def test_power_loss_loses_the_unsynced_tail_and_recovers() -> None:
    s, r = inspect("power-loss", seed=5, nodes=5, ops=800)
    assert_passed(r)
    assert_invariants(s, r)
    assert r.power_cuts == r.crashes >= 2, _why(r)
    assert s.c["unsynced_reverted"] > 0, "no power cut lost anything"
    assert r.writes_lost_unsynced > 0, "no acknowledged write vanished"  # by contract
    assert len(s.acked) < r.writes  # only writes that became durable are expected
    for crash, restart in _pairs(s):
        assert restart["incarnation"] != crash["incarnation"], _why(r)  # not power safe


def test_power_loss_oracle_still_catches_a_broken_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_sim_checker import prefer_older

    import crdt_kv.store

    monkeypatch.setattr(crdt_kv.store, "supersedes", prefer_older)
    r = sim.run("power-loss", seed=3, nodes=5, ops=800)
    assert not r.oracle_match and not r.ok, _why(r)


def _power_cut_after_clean_restart(*, cut: bool = True) -> Simulation:
    """A node stops cleanly, restarts, writes, a peer pulls those writes, then the power
    fails before the disk wrote anything back."""
    s = Simulation(SimConfig(nodes=2, ops=0, seed=0, sync_writes=False))
    s.open_nodes()

    def put(*keys: str) -> None:
        for k in keys:
            s.write(0, Op("put", ((k, k, False),)))

    def pull() -> None:
        s.connect(1, 0, kind="sync")
        s.advance(1000)

    put("a0", "a1")
    pull()
    s.sync_disks()
    s.apply(Shutdown(0))
    s.apply(Restart(0))
    put("b0", "b1", "b2", "b3")
    pull()
    if cut:
        s.apply(Crash(0))
        s.apply(Restart(0))
    put("c0", "c1", "c2", "c3", "c4", "c5")
    s.quiesce()
    return s


def test_clean_restart_without_power_cut_converges() -> None:
    """The control for the test below: the same schedule without the power cut."""
    s = _power_cut_after_clean_restart(cut=False)
    try:
        assert s.c["shutdowns"] == 1
        assert s.digests_equal()
        assert s.check() == []
    finally:
        s.close()


def test_power_cut_after_clean_restart_rotates_incarnation() -> None:
    s = _power_cut_after_clean_restart()
    try:
        assert s.digests_equal()
        assert s.check() == []
    finally:
        s.close()


def test_churn_nodes_join_late() -> None:
    s, r = inspect("churn", seed=9, nodes=6)
    assert_passed(r)
    assert r.joins >= 1
    assert len(s.final) == 6


def test_hlc_regression_is_detected() -> None:
    """The monotonic-HLC check can fire: fake a node that wrote far in the future."""
    s = Simulation(SimConfig(nodes=2, ops=0))
    s.open_nodes()
    s.write(0, Op("put", (("k", 1, False),)))
    s.nodes[0].last_write_hlc = 1 << 62
    s.write(0, Op("put", (("k", 2, False),)))
    r = s.result()
    s.close()
    assert r.hlc_violations == 1
    assert r.checks["hlc_monotonic"] is False and not r.ok


# --- library API --------------------------------------------------------------------------


def test_run_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="nodes"):
        sim.run("clean", nodes=1)
    with pytest.raises(ConfigError, match="backend"):
        sim.run("clean", backend="tape")
    with pytest.raises(ConfigError, match="bogus"):
        sim.run("clean", bogus=1)
    with pytest.raises(ConfigError, match="conflict mode 'mvcc'"):
        sim.run("clean", conflicts="mvcc")


def test_run_suite_sweeps_seeds() -> None:
    rs = list(sim.run_suite(["ties", "clean"], seed=3, seeds=2, nodes=3, ops=100))
    assert [(r.scenario, r.seed) for r in rs] == [
        ("ties", 3),
        ("ties", 4),
        ("clean", 3),
        ("clean", 4),
    ]
    assert all(r.ok for r in rs)


# --- the command line ---------------------------------------------------------------------

FIELDS: dict[str, type | tuple[type, ...]] = {
    "scenario": str,
    "converged": bool,
    "oracle_match": bool,
    "ok": bool,
    "seed": int,
    "trace_hash": str,
    "nodes": int,
    "ops": int,
    "messages": int,
    "bytes": int,
    "virtual_time_ms": (int, float),
    "convergence_time_ms": (int, float),
    "repro_command": str,
    "backend": str,
    "checks": dict,
    "mismatches": list,
}


def test_clock_step_keeps_the_node_behind_replicating() -> None:
    """The scenario of issue 11: a node behind most peers keeps pulling and refuses its
    clients' writes (fenced), the one ahead is refused, and everything converges."""
    _, r = inspect("clock-step", nodes=6, ops=1000, seed=2)
    assert_passed(r)
    assert r.writes_fenced > 0, _why(r)
    assert r.skew_rejections > 0, _why(r)


def test_clock_step_fails_under_the_old_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario can fail: judged against the local wall clock alone (the rule before
    issue 11), the node left behind is cut off and the oracle finds writes lost."""
    from crdt_kv import skew

    def wall_only(
        self: skew.ClockJudge, peer: str, remote: int, clock: Any, *, transit_ms: int = 0
    ) -> str | None:
        return None if (remote >> 16) - clock.wall() <= self.max_offset_ms else "refused"

    monkeypatch.setattr(skew.ClockJudge, "judge", wall_only)
    _, r = inspect("clock-step", nodes=6, ops=1000, seed=2)
    assert not r.ok and r.mismatch_count > 0, _why(r)


def test_power_loss_seed_1829_converges() -> None:
    """Issue 11's measured bug: a node whose clock was stepped back across restarts ended
    beyond max_offset behind the others and never converged (95 writes lost)."""
    _, r = inspect("power-loss", nodes=6, ops=1000, seed=1829)
    assert_passed(r)


def test_cli_summary_prints_one_row_per_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "ties", "--nodes", "3", "--ops", "100", "--seeds", "2", "--summary"]
    assert sim_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("│ ties") == 1 and "wall time" in out and "2/2 runs passed" in out


def _json_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = sim_main([*argv, "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out)  # exactly one JSON document on stdout
    return code, doc


def test_cli_json_fields_and_types(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _json_run(["--scenario", "clean", "--nodes", "3", "--ops", "200"], capsys)
    assert code == 0
    assert doc["ok"] is True and doc["failures"] == []
    assert doc["suite"]["scenario"] == "clean"
    (run,) = doc["runs"]
    for name, typ in FIELDS.items():
        assert name in run, name
        assert isinstance(run[name], typ) and not (typ is int and isinstance(run[name], bool))
    assert (run["nodes"], run["ops"], run["seed"]) == (3, 200, 1)
    assert run["virtual_time_ms"] >= run["convergence_time_ms"] >= 0
    assert run["repro_command"] == "crdt-kv simulate --scenario clean --nodes 3 --ops 200 --seed 1"


def test_cli_seeds_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "flaky", "--nodes", "3", "--ops", "150", "--seed", "4", "--seeds", "3"]
    code, doc = _json_run(argv, capsys)
    assert code == 0 and doc["ok"] is True
    assert [r["seed"] for r in doc["runs"]] == [4, 5, 6]
    assert len({r["trace_hash"] for r in doc["runs"]}) == 3


def test_cli_all_is_the_standard_suite(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _json_run(["--nodes", "3", "--ops", "100"], capsys)
    assert code == 0
    assert [r["scenario"] for r in doc["runs"]] == sim.scenario_names()


def test_cli_jobs_do_not_change_results(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "crash-restart", "--nodes", "3", "--ops", "150", "--seeds", "2"]
    code1, one = _json_run([*argv, "--jobs", "1"], capsys)
    code2, two = _json_run([*argv, "--jobs", "2"], capsys)
    assert code1 == code2 == 0
    assert two["suite"]["jobs"] == 2
    assert [r["trace_hash"] for r in one["runs"]] == [r["trace_hash"] for r in two["runs"]]
    assert one["runs"] == two["runs"]


def test_cli_resolver(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "ties", "--nodes", "3", "--ops", "200", "--resolver"]
    code, doc = _json_run([*argv, "test_sim:lowest_peer"], capsys)
    assert code == 0, doc["failures"]
    assert doc["runs"][0]["resolver"] == "test_sim:lowest_peer"
    assert doc["runs"][0]["hlc_ties"] > 0


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("no_colon", "module:function"),
        ("no_such_module_xyz:f", "cannot import"),
        ("test_sim:nothing_here", "has no"),
        ("test_sim:SMALL", "not callable"),
    ],
)
def test_cli_bad_resolver(spec: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--scenario", "clean", "--resolver", spec]) == 2
    assert words in capsys.readouterr().err


def test_cli_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--scenario", "nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    assert sim_main(["--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = sim_main(["--scenario", "partition-heal", "--nodes", "3", "--ops", "150"])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("scenario", "messages", "bytes", "convergence", "verdict", "PASS"):
        assert word in out
    assert "partition-heal" in out and "1/1 runs passed" in out


def test_cli_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "div.png"
    argv = ["--scenario", "partition-heal", "--nodes", "4", "--ops", "300", "--plot", str(png)]
    code, doc = _json_run(argv, capsys)
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000
    assert len(doc["runs"][0]["divergence"]) > 10


def test_cli_plot_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = sim_main(["--scenario", "clean", "--plot", str(tmp_path / "x.png")])
    assert code == 2
    assert "pip install 'crdt_kv[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_bar_renders_on_a_terminal(jobs: int) -> None:
    import argparse

    from rich.console import Console

    from crdt_kv.sim import report, suite

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    args = argparse.Namespace(
        scenario="clean",
        nodes=3,
        ops=1000,
        seed=1,
        seeds=2,
        keys=None,
        backend="memory",
        resolver=None,
        plot=None,
        jobs=jobs,
    )
    results = report.runs_with_progress(args, None, console)
    assert [r.seed for r in results] == [1, 2] and all(r.ok for r in results)
    out = buf.getvalue()
    assert "clean #1" in out and "clean #2" in out
    # The reports behind the bars, also from worker processes (through a queue):
    seen: list[tuple[str, int, str, int]] = []

    def factory(name: str, seed: int) -> Any:
        return lambda phase, done, total: seen.append((name, seed, phase, done))

    suite.run_all(args, None, factory)
    assert ("clean", 1, "ops", 1000) in seen and ("clean", 2, "ops", 1000) in seen
    assert ("clean", 2, "converging", 0) in seen


@pytest.mark.soak
@pytest.mark.parametrize("scenario", sim.scenario_names())
def test_soak_many_seeds(scenario: str) -> None:
    for seed in range(1, 21):
        r = sim.run(scenario, nodes=8, ops=3000, seed=seed)
        assert_passed(r)


def test_quiet_check_catches_quiet_live_sessions_timed_out(monkeypatch: Any) -> None:
    """The clean scenario lingers after converging; a policy that lets quiet live sessions
    hit the idle timeout (as the old simulator did, unlike the node) must fail the run."""
    import dataclasses

    honest = Simulation._link_config

    def without_keepalives(self: Simulation, **kw: Any) -> Any:
        return dataclasses.replace(honest(self, **kw), keepalive_s=1e6)

    good = sim.run("clean", nodes=4, ops=300, seed=1)
    assert good.ok and good.checks["quiet_sessions_kept"] and good.quiet_timeouts == 0
    monkeypatch.setattr(Simulation, "_link_config", without_keepalives)
    bad = sim.run("clean", nodes=4, ops=300, seed=1)
    assert bad.converged and bad.oracle_match
    assert bad.checks["quiet_sessions_kept"] is False and bad.quiet_timeouts > 0
    assert not bad.ok


@pytest.mark.parametrize("lose", [False, True])
def test_quiet_check_excuses_a_session_stalled_by_a_lost_message(lose: bool) -> None:
    """A session whose stream lost a message before the heal stalls until its idle
    timeout; when that expires after convergence it is not a quiet session dropped (the
    bitrot scenario, seed 6 in siblings mode). One whose message is only held back
    (nothing lost, the peer just never speaks) still counts."""
    s = Simulation(SimConfig(scenario="clean", nodes=2, ops=0, seed=1))
    try:
        s.open_nodes()
        held: list[Any] = []
        s.intercept = held.append
        s.connect(0, 1)
        hellos = [m for m in held if m.data]
        for msg in hellos:
            s.deliver(msg)  # both Hellos arrive; what follows is lost or held back
        rest = [m for m in held if m not in hellos]
        assert rest
        if lose:
            for msg in rest:
                s.drop(msg)
        s.lingering = True
        s.advance(3 * s.cfg.idle_timeout_ms)
        assert s.c["timeouts"] > 0
        assert (s.c["quiet_timeouts"] == 0) is lose
    finally:
        s.close()


# --- siblings mode -----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sim.scenario_names())
def test_siblings_mode_converges(scenario: str) -> None:
    """Every scenario in the ``siblings`` conflict mode, with merges in the workload, matches
    the happened-before oracle (``crdt_kv.sim.causal_oracle``)."""
    results = [
        sim.run(scenario, nodes=4, ops=300, seed=seed, conflicts="siblings") for seed in (1, 2)
    ]
    for r in results:
        assert_passed(r)
        assert r.conflicts == "siblings"
        assert "--conflicts siblings" in r.repro_command
        assert r.merges > 0 and r.reads > 0, _why(r)
    assert sum(r.sibling_keys for r in results) > 0, "no key ended with siblings"


def test_siblings_same_seed_same_run() -> None:
    a = sim.run("crash-restart", seed=11, conflicts="siblings", **SMALL)
    b = sim.run("crash-restart", seed=11, conflicts="siblings", **SMALL)
    assert a.to_dict() == b.to_dict() and a.merges > 0
    lww = sim.run("crash-restart", seed=11, **SMALL)
    assert lww.trace_hash != a.trace_hash and lww.merges == 0


def _siblings_sim(nodes: int, **kw: Any) -> Simulation:
    s = Simulation(SimConfig(nodes=nodes, ops=0, conflicts="siblings", **kw))
    s.open_nodes()
    return s


def _put(s: Simulation, i: int, value: str) -> None:
    s.write(i, Op("put", (("k", value, False),)))


def _values(s: Simulation) -> list[list[Any]]:
    """Every node's live siblings of ``k``."""
    return [[e.value for e in n.store.get_all("k")] for n in s.nodes if n.store is not None]


def _expected(s: Simulation) -> list[Any]:
    assert s.causal is not None
    return sorted(w.value for w in s.causal.expected(b"k").live)


def test_siblings_oracle_follows_happened_before() -> None:
    """A schedule whose outcome is known by hand: concurrent puts are siblings; a put that
    saw both supersedes them; a merge of an old read supersedes what it read, and the
    sibling that arrived after the read survives it."""
    s = _siblings_sim(3)
    try:
        _put(s, 0, "a")
        _put(s, 1, "b")
        s.sync_all()
        assert _expected(s) == ["a", "b"]
        s.write(0, Op("merge", (("k", "m", False),), key="k", delay_ms=30_000.0))  # reads a, b
        _put(s, 2, "c")  # n2 has seen a and b
        s.sync_all()
        assert _expected(s) == ["c"]
        s.advance(30_000)  # the stale merge: of a and b only
        assert s.c["merges"] == 1
        s.sync_all()
        assert _expected(s) == ["c", "m"]
        assert all(sorted(v) == ["c", "m"] for v in _values(s))
        assert len({tuple(v) for v in _values(s)}) == 1  # one sibling order everywhere
        assert s.check() == []
    finally:
        s.close()


@pytest.mark.parametrize(("delivered", "expected"), [(False, ["a", "b"]), (True, ["b"])])
def test_siblings_oracle_counts_only_applied_batches(delivered: bool, expected: list[str]) -> None:
    """What a node has seen grows only by batches it applied: a pull whose messages were
    all lost leaves a later put concurrent with what it would have carried."""
    s = _siblings_sim(2)
    try:
        _put(s, 0, "a")
        lost: list[Any] = []
        if not delivered:
            s.intercept = lost.append
        s.connect(1, 0)
        s.advance(1000)
        for msg in lost:
            s.drop(msg)
        s.intercept = None
        assert bool(lost) != delivered
        _put(s, 1, "b")
        assert _expected(s) == expected
        s.sync_all()
        assert all(sorted(v) == expected for v in _values(s))
        assert s.check() == []
    finally:
        s.close()


def test_siblings_power_cut_rolls_back_what_a_node_had_seen() -> None:
    """n0 pulls n1's write but loses it in a power cut: its next put must not supersede it."""
    s = _siblings_sim(2, sync_writes=False)
    try:
        _put(s, 1, "x")
        s.sync_disk(s.nodes[1])
        s.connect(0, 1)
        s.advance(1000)
        assert _values(s)[0] == ["x"]
        s.apply(Crash(0))
        s.apply(Restart(0))
        _put(s, 0, "y")
        s.sync_disks()
        assert _expected(s) == ["x", "y"]
        s.quiesce()
        assert all(sorted(v) == ["x", "y"] for v in _values(s))
        assert s.check() == []
    finally:
        s.close()


@pytest.mark.parametrize(("jump_ms", "expected"), [(0, ["b"]), (-400, ["a"])])
def test_siblings_power_cut_own_lost_write_and_its_dot(jump_ms: int, expected: list[str]) -> None:
    """n0's write reaches n1, then n0 loses it in a power cut. A context is a version
    vector, so n0's next write covers it if stamped higher; if the cut rewound n0's clock,
    the lost write's stamp covers the new one instead."""
    s = _siblings_sim(2, sync_writes=False)
    try:
        s.advance(500)
        _put(s, 0, "a")
        s.connect(1, 0)
        s.advance(100)
        assert _values(s)[1] == ["a"]
        s.sync_disk(s.nodes[1])
        s.apply(Crash(0))
        s.apply(Restart(0, clock_jump_ms=jump_ms))
        _put(s, 0, "b")
        assert s.causal is not None
        a, b = s.causal.books[b"k"].writes
        assert (b.hlc < a.hlc) == bool(jump_ms)
        s.sync_disks()
        assert _expected(s) == expected
        s.quiesce()
        assert all(v == expected for v in _values(s))
        assert s.check() == []
    finally:
        s.close()


def test_cli_siblings(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "partition-heal", "--nodes", "3", "--ops", "150"]
    code = sim_main([*argv, "--conflicts", "siblings"])
    out = capsys.readouterr().out
    assert code == 0
    assert "1/1 runs passed (siblings mode)" in out
    code, doc = _json_run([*argv, "--conflicts", "siblings"], capsys)
    assert code == 0 and doc["suite"]["conflicts"] == "siblings"
    (run,) = doc["runs"]
    assert run["conflicts"] == "siblings" and run["merges"] > 0
    assert run["repro_command"].endswith("--seed 1 --conflicts siblings")
    with pytest.raises(SystemExit) as exc:
        sim_main([*argv, "--conflicts", "mvcc"])
    assert exc.value.code == 2
    assert "invalid choice: 'mvcc'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scenario", "stamp_rules"), [("crash-restart", False), ("power-loss", True)]
)
def test_siblings_stamp_rules_only_after_power_cuts(scenario: str, stamp_rules: bool) -> None:
    """The oracle's version-vector rules for lost writes (``dot`` coverage, rewound
    stamps) never apply without power cuts: there, happened-before alone decides."""
    used = False
    for seed in (1, 2, 3):
        s = Simulation(
            SimConfig(scenario=scenario, nodes=5, ops=800, seed=seed, conflicts="siblings")
        )
        r = s.run(get_scenario(scenario).setup)
        assert_passed(r)
        assert s.causal is not None
        used |= any(b.dotted or b.covers for b in s.causal.books.values())
    assert used == stamp_rules


def test_siblings_rocksdb_crash_restart() -> None:
    r = sim.run("crash-restart", nodes=4, ops=300, seed=3, backend="rocksdb", conflicts="siblings")
    assert_passed(r)
    assert r.crashes >= 2 and r.merges > 0 and r.sibling_keys > 0, _why(r)
