"""The ``restore`` scenario: nodes restored from plain copies of their disks."""

from __future__ import annotations

import pytest

from crdt_kv.protocol.verify import Checkup
from crdt_kv.sim import run
from crdt_kv.store import Store


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
def test_restored_nodes_lose_nothing_another_replica_acknowledged(conflicts: str) -> None:
    r = run("restore", nodes=6, ops=1000, seed=1, conflicts=conflicts)
    assert r.ok, r.mismatches[:3]


def test_without_rollback_detection_the_scenario_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario really exercises the check: with it off (and no verification to catch
    what it misses), peers skip what the restored node writes at sequences they had
    passed, and replicas diverge."""
    monkeypatch.setattr(Store, "check_cursor", lambda self, since, proof: None)
    monkeypatch.setattr(Checkup, "on_hello", lambda self, h, **kw: False)
    results = [run("restore", nodes=6, ops=1000, seed=s) for s in (1, 5)]
    assert not any(r.ok for r in results)


def test_without_rollback_detection_verification_finds_and_repairs_the_divergence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second line of defence: sessions verify digests after each round, count the
    divergence the skipped sequences cause and repair it."""
    monkeypatch.setattr(Store, "check_cursor", lambda self, since, proof: None)
    results = [run("restore", nodes=6, ops=1000, seed=s) for s in (1, 5)]
    assert all(r.ok for r in results), [r.mismatches[:3] for r in results]
    assert sum(r.divergences for r in results) > 0
