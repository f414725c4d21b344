"""The checker can fail: broken resolvers and broken merges must be reported.

A simulation suite that always passes proves nothing. These tests break the system under
test on purpose (a non-deterministic resolver, a merge that prefers the older or the local
version; in ``siblings`` mode a join that drops concurrent siblings, a ``merge`` that
supersedes everything or nothing) and assert that the run reports divergence or an oracle
mismatch, and that ``crdt-kv simulate`` exits non-zero and names the command that
reproduces the failure.

``coin_flip`` is importable as ``test_sim_checker:coin_flip`` (with ``tests/`` on the
path) so the CLI's ``--resolver`` can load it in a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import crdt_kv.store
import crdt_kv.store.merge
import crdt_kv.store.writes
from crdt_kv import sim
from crdt_kv.causal import Context, Order, full_context, join, siblings, state, write
from crdt_kv.sim.causal_oracle import CausalOracle
from crdt_kv.sim.cli import main as sim_main
from crdt_kv.sim.oracle import Oracle
from crdt_kv.sim.workload import key_names
from crdt_kv.version import Entry, RawEntry

_coin = random.Random(0)


def coin_flip(a: Entry, b: Entry) -> bool:
    """A broken resolver: answers the same question differently from call to call."""
    return _coin.random() < 0.5


def lower_peer(a: Entry, b: Entry) -> bool:
    """A correct (deterministic) resolver: the lower peer id wins ties."""
    return a.peer < b.peer


def prefer_older(new: RawEntry, old: RawEntry, resolver: Any = None, to_entry: Any = None) -> bool:
    """A broken merge: the older stamp wins (a semilattice, so replicas may still agree)."""
    if new.hlc != old.hlc:
        return new.hlc < old.hlc
    return (new.peer, new.deleted, new.value) < (old.peer, old.deleted, old.value)


def prefer_local(new: RawEntry, old: RawEntry, resolver: Any = None, to_entry: Any = None) -> bool:
    """A broken merge: a replicated version never replaces the one a replica holds."""
    return False


def _why(r: sim.SimResult) -> str:
    return f"reproduce: {r.repro_command}"


def test_random_resolver_is_caught() -> None:
    """By the run itself: the screen that would report it first is off."""
    r = sim.run(
        "ties",
        nodes=4,
        ops=400,
        seed=1,
        resolver=coin_flip,
        resolver_name="x:coin",
        resolver_screen=False,
    )
    assert r.hlc_ties > 0, _why(r)
    assert r.error is None and "resolver_screened" not in r.checks, _why(r)
    assert not (r.converged and r.oracle_match), _why(r)
    assert not r.ok
    assert "--resolver x:coin" in r.repro_command


def test_deterministic_resolver_passes_the_same_run() -> None:
    """The control for the test above: only the resolver differs, and the run passes."""
    r = sim.run("ties", nodes=4, ops=400, seed=1, resolver=lower_peer, resolver_name="x:low")
    assert r.ok and r.converged and r.oracle_match, _why(r)
    assert r.hlc_ties > 0


def test_merge_preferring_older_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crdt_kv.store, "supersedes", prefer_older)
    r = sim.run("flaky", nodes=4, ops=400, seed=3)
    assert not r.oracle_match, _why(r)
    assert not r.ok
    assert r.mismatch_count > 0
    assert set(r.mismatch_kinds) & {"lost", "resurrected"}, r.mismatch_kinds


def test_merge_preferring_local_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crdt_kv.store, "supersedes", prefer_local)
    r = sim.run("clean", nodes=4, ops=300, seed=2)
    assert not r.converged, _why(r)
    assert not r.oracle_match
    assert not r.ok
    assert r.convergence_time_ms is None


def test_cli_exit_code_and_repro_on_broken_merge(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(crdt_kv.store, "supersedes", prefer_older)
    code = sim_main(["--scenario", "clean", "--nodes", "4", "--ops", "300", "--seed", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out
    assert "reproduce: crdt-kv simulate --scenario clean --nodes 4 --ops 300 --seed 5" in out


def test_cli_json_reports_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(crdt_kv.store, "supersedes", prefer_local)
    code = sim_main(["--scenario", "flaky", "--nodes", "3", "--ops", "200", "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert code == 1
    assert doc["ok"] is False
    (run,) = doc["runs"]
    assert run["converged"] is False or run["oracle_match"] is False
    assert doc["failures"] == [run["repro_command"]]
    assert run["repro_command"] in captured.err


def test_cli_random_resolver_in_subprocess(tmp_path: Path) -> None:
    """The real console path: import the broken resolver by name, exit 1, print repro."""
    tests_dir = str(Path(__file__).parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "crdt_kv.cli", "simulate", "--scenario", "ties"]
    argv += ["--nodes", "4", "--ops", "400", "--json", "--resolver", "test_sim_checker:coin_flip"]
    argv += ["--seeds", "2", "--jobs", "2"]  # the workers import the resolver too
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert [r["resolver"] for r in doc["runs"]] == ["test_sim_checker:coin_flip"] * 2
    assert doc["failures"]
    assert all("--resolver test_sim_checker:coin_flip" in f for f in doc["failures"])
    assert doc["failures"][0] in proc.stderr


# --- the oracle's classifications, checked directly --------------------------------------


def _stores(store_factory: Any) -> tuple[Any, Any, Any, Oracle]:
    a = store_factory("memory", peer_id="a")
    c = store_factory("memory", peer_id="c")
    empty = store_factory("memory", peer_id="e")
    return a, c, empty, Oracle()


def test_oracle_flags_lost_and_resurrected(store_factory: Any) -> None:
    a, c, empty, oracle = _stores(store_factory)
    v1 = a.put("k", 1)
    oracle.record("k", 1, False, v1.hlc, v1.peer)
    c.apply(a.changes())  # c sees the put ...
    v2 = a.delete("k")
    oracle.record("k", None, True, v2.hlc, v2.peer)  # ... but never the delete
    assert oracle.check("a", a) == []
    (m,) = oracle.check("c", c)
    assert (m.key, m.kind) == ("k", "resurrected")
    (m,) = oracle.check("e", empty)
    assert m.kind == "lost"


def test_a_key_lost_everywhere_may_end_absent_or_older(store_factory: Any) -> None:
    """Rot on every replica lost a tombstone: an older state still on the wire may win,
    nothing newer than the lost one, and nothing no client wrote."""
    a, c, empty, oracle = _stores(store_factory)
    v1 = a.put("k", 1)
    oracle.record("k", 1, False, v1.hlc, v1.peer)
    c.apply(a.changes())
    v2 = a.delete("k")
    oracle.record("k", None, True, v2.hlc, v2.peer)
    oracle.lose_everywhere("k", v2.hlc)
    assert oracle.check("c", c) == []  # the older value came back: allowed
    assert oracle.check("e", empty) == []  # absent: allowed
    (m,) = oracle.check("c", c, exclude_peers=["a"])
    assert m.kind == "phantom"  # a refused peer's state never stands
    oracle.lose_everywhere("k", v1.hlc)  # a later loss never lowers the bound
    assert oracle.lost["k"] == v2.hlc


def test_oracle_flags_phantom_and_wrong_winner(store_factory: Any) -> None:
    a, c, _, oracle = _stores(store_factory)
    a.put("ghost", "never acknowledged")
    (m,) = oracle.check("a", a)
    assert (m.key, m.kind) == ("ghost", "phantom")
    v = c.put("k", "x")
    oracle.record("k", "y", False, v.hlc, "zz")  # same stamp, another peer and value
    (m,) = oracle.check("c", c)
    assert m.kind == "wrong-winner"


# --- siblings mode: broken joins and merges ------------------------------------------------


def join_dropping_concurrent(a: RawEntry | None, b: RawEntry, order: Order) -> RawEntry:
    """A broken join: of concurrent siblings only the first in sibling order survives."""
    joined = join(a, b, order)
    kept = siblings(joined)
    if len(kept) < 2:
        return joined
    return state(joined.key, kept[:1], full_context(joined), order)


def merge_superseding_all(
    old: RawEntry | None, new: RawEntry, covers: Context | None, order: Order
) -> RawEntry:
    """A broken ``merge``: it supersedes every version held, not only those passed."""
    return write(old, new, None, order)


def merge_superseding_none(
    old: RawEntry | None, new: RawEntry, covers: Context | None, order: Order
) -> RawEntry:
    """A broken ``merge``: it supersedes none of the versions passed."""
    return write(old, new, None if covers is None else {}, order)


def _siblings_run(scenario: str, seed: int = 1) -> sim.SimResult:
    return sim.run(scenario, nodes=4, ops=400, seed=seed, conflicts="siblings")


def _named_keys(r: sim.SimResult, kind: str) -> set[str]:
    keys = {m["key"] for m in r.mismatches if m["kind"] == kind}
    assert keys, r.mismatch_kinds
    assert keys <= set(key_names(r.keys)), keys
    return keys


def test_siblings_join_dropping_concurrent_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crdt_kv.store.merge, "join", join_dropping_concurrent)
    r = _siblings_run("flaky")
    assert not r.oracle_match and not r.ok, _why(r)
    _named_keys(r, "lost")
    assert "--conflicts siblings" in r.repro_command


def test_siblings_merge_superseding_everything_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas agree (a merge is a local write), only the oracle knows a sibling that
    arrived after the read had to survive."""
    monkeypatch.setattr(crdt_kv.store.writes, "write", merge_superseding_all)
    r = _siblings_run("clean")
    assert r.converged, _why(r)
    assert not r.oracle_match and not r.ok
    _named_keys(r, "lost")


def test_siblings_merge_superseding_nothing_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crdt_kv.store.writes, "write", merge_superseding_none)
    r = _siblings_run("clean")
    assert not r.oracle_match and not r.ok, _why(r)
    _named_keys(r, "resurrected")


def test_siblings_cli_exit_code_and_repro_on_broken_join(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(crdt_kv.store.merge, "join", join_dropping_concurrent)
    argv = ["--scenario", "clean", "--nodes", "4", "--ops", "300", "--seed", "5"]
    code = sim_main([*argv, "--conflicts", "siblings"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "0/1 runs passed (siblings mode)" in out
    repro = "crdt-kv simulate --scenario clean --nodes 4 --ops 300 --seed 5 --conflicts siblings"
    assert f"reproduce: {repro}" in out


# --- the causal oracle's classifications, checked directly -------------------------------


def test_causal_oracle_flags_lost_resurrected_and_phantom(store_factory: Any) -> None:
    a = store_factory("memory", peer_id="a", conflicts="siblings")
    b = store_factory("memory", peer_id="b", conflicts="siblings")
    oracle = CausalOracle(2)
    for i, store, value in ((0, a, "x"), (1, b, "y")):  # concurrent
        v = store.put("k", value)
        oracle.record(i, "k", value, False, v.hlc, v.peer)
    assert sorted(w.value for w in oracle.expected(b"k").live) == ["x", "y"]
    (m,) = oracle.check("a", a)
    assert (m.key, m.kind) == ("k", "lost")
    b.apply(a.changes())
    sent = list(a.raw_changes(0))
    oracle.deliver(1, sent, oracle.snapshot(0, sent))  # b has seen x now
    assert oracle.check("b", b) == []
    v = b.put("k", "z")  # supersedes x and y
    oracle.record(1, "k", "z", False, v.hlc, v.peer)
    assert [w.value for w in oracle.expected(b"k").live] == ["z"]
    assert oracle.check("b", b) == []
    kinds = sorted(m.kind for m in oracle.check("a", a))  # a holds only x
    assert kinds == ["lost", "resurrected"]
    a.put("ghost", 1)
    assert ("ghost", "phantom") in {(m.key, m.kind) for m in oracle.check("a", a)}


class _Reversed:
    """A store whose ``get_all`` returns the siblings in reverse order."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get_all(self, key: Any) -> list[Entry]:
        return list(reversed(self.store.get_all(key)))

    def raw_changes(self, since: int = 0) -> Any:
        return self.store.raw_changes(since)

    @property
    def gc_horizon(self) -> int:
        return int(self.store.gc_horizon)


def test_causal_oracle_flags_sibling_order(store_factory: Any) -> None:
    a = store_factory("memory", peer_id="a", conflicts="siblings")
    b = store_factory("memory", peer_id="b", conflicts="siblings")
    oracle = CausalOracle(2)
    for i, store, value in ((0, a, "x"), (1, b, "y")):
        v = store.put("k", value)
        oracle.record(i, "k", value, False, v.hlc, v.peer)
    b.apply(a.changes())
    orders: dict[bytes, Any] = {}
    assert oracle.check("b", b, orders=orders) == []
    found = oracle.check("r", _Reversed(b), orders=orders)  # type: ignore[arg-type]
    assert sorted(m.kind for m in found) == ["divergent-order", "wrong-order"]
    assert {m.key for m in found} == {"k"}


def test_siblings_random_resolver_breaks_the_sibling_order() -> None:
    """Siblings with equal stamps are ordered by the resolver: a random one orders them
    differently on different replicas; a deterministic one passes the same runs."""
    good = sim.run("ties", nodes=3, ops=200, seed=1, conflicts="siblings", resolver=lower_peer)
    assert good.ok and good.hlc_ties > 0 and good.sibling_keys > 0, _why(good)
    bad = sim.run(
        "ties",
        nodes=3,
        ops=200,
        seed=1,
        conflicts="siblings",
        resolver=coin_flip,
        resolver_screen=False,
    )
    assert not bad.ok and not bad.oracle_match, _why(bad)
    assert {"wrong-order", "divergent-order"} & set(bad.mismatch_kinds), bad.mismatch_kinds


# --- collection elsewhere: pruning and repair drops spread past a replica's own horizon ----


def test_causal_oracle_accepts_a_tombstone_pruned_by_another_replica(store_factory: Any) -> None:
    """A tombstone version pruned below one replica's horizon leaves its dot in the
    context, so a replica with a lower horizon that joins the pruned state drops it too:
    the check must allow what the highest horizon of the cluster allows."""
    a = store_factory("memory", peer_id="a", conflicts="siblings")
    b = store_factory("memory", peer_id="b", conflicts="siblings")
    oracle = CausalOracle(2)
    v = a.put("k", "x")
    oracle.record(0, "k", "x", False, v.hlc, v.peer)
    d = b.delete("k")  # concurrent: a tombstone sibling next to the live x
    oracle.record(1, "k", None, True, d.hlc, d.peer)
    for src, dst, i in ((a, b, 1), (b, a, 0)):
        sent = list(src.raw_changes(0))
        dst.apply(src.changes())
        oracle.deliver(i, sent, oracle.snapshot(1 - i, sent))
    assert oracle.check("b", b) == []
    a.raise_gc_horizon(max(v.hlc, d.hlc) + 1)
    a.gc()
    assert [s.deleted for s in a.raw_entries([b"k"])[0].others] == []  # pruned at a
    b.apply(a.changes())  # b's horizon is 0, yet the pruned dot is covered: gone at b too
    assert b.gc_horizon == 0
    (m,) = oracle.check("b", b)
    assert (m.kind, m.expected) == ("lost", f"hlc={d.hlc} peer=b tombstone")
    assert oracle.check("b", b, horizon=a.gc_horizon) == []
    assert oracle.check("b", b, horizon=d.hlc) != []  # not below that horizon: still lost


def test_oracle_accepts_a_tombstone_dropped_for_a_peer_that_collected_it(
    store_factory: Any,
) -> None:
    """Repair drops a state below the *peer's* horizon (absence wins), whatever ours."""
    a, c, _, oracle = _stores(store_factory)
    v = a.delete("k")
    oracle.record("k", None, True, v.hlc, v.peer)
    c.apply(a.changes())
    assert c.drop_collected([b"k"], below=v.hlc + 1) == 1
    assert c.gc_horizon == 0
    (m,) = oracle.check("c", c)
    assert m.kind == "lost"
    assert oracle.check("c", c, horizon=v.hlc + 1) == []
