"""Hypothesis drives a 3-node cluster message by message and shrinks a failing schedule.

The machine reuses the simulator's engine (real Stores and Sessions; the network is
replaced by an inbox the rules pick from): rules write, open sessions, deliver (in any
order, so also reordered), drop, duplicate, partition, heal, crash, restart, skew clocks
and let virtual time pass. After any schedule, quiescence (faults stop, every node up,
a full pairwise sync) must leave every replica with the same digest and the state the
oracle predicts. A failure prints the minimal schedule (hypothesis) to replay it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import crdt_kv.store
from crdt_kv.sim import SimConfig, Simulation
from crdt_kv.sim.faults import ClockJump, Crash, Heal, Partition, Restart
from crdt_kv.sim.runner import DOWN, UP, Message
from crdt_kv.sim.workload import Op
from crdt_kv.version import RawEntry

NODES = 3
MAX_SKEW_MS = 200  # each clock within +-200 ms: pairwise 400 < max_offset_ms 500
node_ids = st.integers(0, NODES - 1)
keys = st.sampled_from(["a", "b", "c", "d"])
picks = st.integers(0, 1 << 16)
MODES = ["both", "push", "pull"]
GROUPS = [((0,), (1, 2)), ((1,), (0, 2)), ((2,), (0, 1)), ((0,), (1,), (2,))]


class Cluster(RuleBasedStateMachine):
    """Three real replicas; every message waits in ``inbox`` until a rule acts on it."""

    SYNC_WRITES = True

    def __init__(self) -> None:
        super().__init__()
        self.sim = Simulation(SimConfig(nodes=NODES, ops=0, seed=0, sync_writes=self.SYNC_WRITES))
        self.inbox: list[Message] = []
        self.offsets = [0] * NODES
        self.n = 0

    @initialize()
    def start(self) -> None:
        self.sim.open_nodes()
        self.sim.intercept = self.inbox.append

    def _pick(self, k: int) -> Message:
        return self.inbox.pop(k % len(self.inbox))

    @rule(i=node_ids, key=keys, other=keys, kind=st.sampled_from(["put", "delete", "batch"]))
    def write(self, i: int, key: str, other: str, kind: str) -> None:
        self.n += 1
        if kind == "put":
            op = Op("put", ((key, self.n, False),))
        elif kind == "delete":
            op = Op("delete", ((key, None, True),))
        else:
            extra = ((other, None, True),) if other != key else ()
            op = Op("batch", ((key, [i, self.n], False), *extra))
        self.sim.write(i, op)

    @rule(i=node_ids, j=node_ids, mode=st.sampled_from(MODES), live=st.booleans())
    def connect(self, i: int, j: int, mode: str, live: bool) -> None:
        self.sim.connect(i, j, kind="live" if live else "sync", mode=mode, live=live)

    @rule(i=node_ids, j=node_ids)
    def sync(self, i: int, j: int) -> None:
        """A whole healthy session between ``i`` and ``j`` (the network delivers it)."""
        sim = self.sim
        sim.intercept = None
        try:
            if sim.connect(i, j, kind="sync") is not None:
                sim.advance(1000)
        finally:
            sim.intercept = self.inbox.append

    @precondition(lambda self: bool(self.inbox))
    @rule(k=picks)
    def deliver(self, k: int) -> None:
        self.sim.deliver(self._pick(k))

    @precondition(lambda self: bool(self.inbox))
    @rule(k=picks)
    def drop(self, k: int) -> None:
        self.sim.drop(self._pick(k))

    @precondition(lambda self: bool(self.inbox))
    @rule(k=picks)
    def duplicate(self, k: int) -> None:
        """Deliver a copy now; the original stays queued and may arrive again."""
        self.sim.deliver(self.inbox[k % len(self.inbox)])

    @rule(groups=st.sampled_from(GROUPS))
    def partition(self, groups: tuple[tuple[int, ...], ...]) -> None:
        self.sim.apply(Partition(groups))

    @rule()
    def heal(self) -> None:
        self.sim.apply(Heal())

    @precondition(lambda self: sum(n.state == UP for n in self.sim.nodes) > 1)
    @rule(i=node_ids)
    def crash(self, i: int) -> None:
        self.sim.apply(Crash(i))

    @rule(i=node_ids, back=st.integers(0, 2 * MAX_SKEW_MS))
    def restart(self, i: int, back: int) -> None:
        if self.sim.nodes[i].state != DOWN:
            return
        back = min(back, self.offsets[i] + MAX_SKEW_MS)
        self.offsets[i] -= back
        self.sim.apply(Restart(i, -back))

    @rule(i=node_ids, delta=st.integers(-2 * MAX_SKEW_MS, 2 * MAX_SKEW_MS))
    def skew(self, i: int, delta: int) -> None:
        new = max(-MAX_SKEW_MS, min(MAX_SKEW_MS, self.offsets[i] + delta))
        self.sim.apply(ClockJump(i, new - self.offsets[i]))
        self.offsets[i] = new

    @rule(ms=st.integers(1, 3000))
    def wait(self, ms: int) -> None:
        """Virtual time passes: idle sessions time out, live sessions push."""
        self.sim.advance(ms)

    @invariant()
    def write_stamps_never_go_back(self) -> None:
        assert self.sim.c["hlc_violations"] == 0, self.sim._hlc_examples

    def teardown(self) -> None:
        sim = self.sim
        try:
            if sim.nodes[0].store is None and sim.nodes[0].backend is None:
                return  # never initialized
            sim.quiesce()
            digests = {
                n.peer_id: n.store.digest().hex() for n in sim.live_nodes() if n.store is not None
            }
            assert len(digests) == NODES
            assert len(set(digests.values())) == 1, f"replicas diverged: {digests}"
            mismatches = sim.check()
            assert not mismatches, f"oracle mismatches: {mismatches[:5]}"
            assert sim.c["hlc_violations"] == 0, sim._hlc_examples
        finally:
            sim.close()


class PowerLossCluster(Cluster):
    """The same cluster on disks without fsync: a crash is a power cut that loses what
    was not written back, and only writes that became durable somewhere must survive."""

    SYNC_WRITES = False

    @rule(i=node_ids)
    def write_back(self, i: int) -> None:
        self.sim.sync_disk(self.sim.nodes[i])


_SETTINGS = settings(
    settings.default,
    max_examples=max(10, settings.default.max_examples // 2),
    stateful_step_count=40,
    deadline=None,
)
Cluster.TestCase.settings = _SETTINGS
PowerLossCluster.TestCase.settings = _SETTINGS
TestCluster = Cluster.TestCase
TestPowerLossCluster = PowerLossCluster.TestCase


def _prefer_local(new: RawEntry, old: RawEntry, *_: Any) -> bool:
    return False


def test_machine_catches_a_broken_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same machine fails when merging is broken (replicas keep their own writes)."""
    monkeypatch.setattr(crdt_kv.store, "supersedes", _prefer_local)
    with pytest.raises(AssertionError, match=r"diverged|mismatches"):
        run_state_machine_as_test(
            Cluster,
            settings=settings(
                max_examples=200,
                stateful_step_count=20,
                deadline=None,
                phases=[Phase.generate],
                database=None,
            ),
        )
