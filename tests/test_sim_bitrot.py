"""The ``bitrot`` scenario: records rot behind the stores' backs; scrub, quarantine and
repair must heal every replica without absence winning for a lost key."""

from __future__ import annotations

import pytest

from crdt_kv.sim import run
from crdt_kv.store import Store
from crdt_kv.store.scrub import ScrubReport


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
def test_rotten_records_are_healed(conflicts: str) -> None:
    r = run("bitrot", nodes=6, ops=1000, seed=1, conflicts=conflicts)
    assert r.ok, (r.error, r.mismatches[:3])


def test_without_the_scrub_the_scenario_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario really rots records: with the scrub off, nothing notices them and
    the replicas end unreadable or different."""
    monkeypatch.setattr(Store, "scrub", lambda self, *, buckets=None: ScrubReport())
    results = [run("bitrot", nodes=6, ops=1000, seed=s) for s in (1, 2)]
    assert not any(r.ok for r in results)
