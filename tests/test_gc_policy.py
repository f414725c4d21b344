"""The collection policy (crdt_kv/protocol/gc.py) and its drivers: the simulator and the
trio node honour the same GcPolicy."""

from __future__ import annotations

import random

import pytest
import trio

import crdt_kv
from crdt_kv.errors import ConfigError
from crdt_kv.protocol import BatchApplied, CollectGarbage, GcPolicy, GcResult, Session
from crdt_kv.sim import Simulation
from crdt_kv.sim.config import SimConfig
from crdt_kv.testing import ManualClock

T0 = 1_700_000_000_000


def test_policy_collects_every_interval_and_raises_after_a_pull() -> None:
    p = GcPolicy(now=0.0, grace_s=1.0, interval_s=10.0)
    assert p.get_timer() == 10.0
    assert p.handle_timer(5.0) is None
    p.link_event(BatchApplied(1, 1, 0, 1, True), 5.0)
    assert p.get_timer() == 5.0
    req = p.handle_timer(5.0)
    assert req == CollectGarbage(1000, False)
    assert p.get_timer() is None  # one request at a time
    p.storage_done(req, GcResult(77, 0))
    assert p.horizon == 77
    p.link_event(BatchApplied(1, 1, 0, 1, True), 5.5)
    assert p.get_timer() == 6.0  # raises at most once per interval/10
    p.link_event(BatchApplied(1, 1, 0, 1, False), 5.5)  # not caught up: nothing new
    req = p.handle_timer(10.0)
    assert req is not None and req.collect and req.limit == 10_000
    p.storage_done(req, GcResult(80, 10_000))
    assert p.collected == 10_000 and p.get_timer() == 10.0  # a full batch: go on at once
    req2 = p.handle_timer(10.0)
    assert req2 is not None and req2.collect
    p.storage_done(req2, None)  # failed: the next interval tries again
    assert p.get_timer() == 20.0


def test_bad_policy_options() -> None:
    with pytest.raises(ConfigError, match="gc_interval_s"):
        GcPolicy(now=0.0, interval_s=0)
    with pytest.raises(ConfigError, match="gc_grace_s"):
        GcPolicy(now=0.0, grace_s=-1)


def _sync(a: crdt_kv.Store, b: crdt_kv.Store) -> None:
    sa, sb = Session(a), Session(b)
    sa.start()
    sb.start()
    for _ in range(100):
        moved = False
        for x, y in ((sa, sb), (sb, sa)):
            data = x.data_to_send()
            if data:
                moved = True
                y.receive_data(data)
        if not moved:
            break
    assert sa.complete and sb.complete


def test_collect_request_raises_the_horizon_from_membership_and_collects() -> None:
    clock = ManualClock(T0)
    a = crdt_kv.open(backend="memory", peer_id="a", clock=clock, rng=random.Random(1))
    b = crdt_kv.open(backend="memory", peer_id="b", clock=clock, rng=random.Random(2))
    a.put("k", 1)
    a.delete("k")
    _sync(a, b)
    clock.advance(10)
    # b had no member when it sent its Hello: it reported D = 0, holding the horizon at 0.
    first = CollectGarbage(0, True).perform(a)
    assert first.horizon == 0 and first.collected == 0
    _sync(a, b)  # b's second Hello is stamped 10 ms later, and b now reports D > tombstone
    clock.advance(10)
    res = CollectGarbage(0, True).perform(a)
    assert res.horizon == a.gc_horizon > 0
    assert res.collected == 1 and a.entry("k") is None
    assert b.entry("k") is not None  # b collects on its own policy


def test_a_collect_request_takes_a_store_checkpoint_and_a_raise_does_not() -> None:
    clock = ManualClock(T0)
    a = crdt_kv.open(backend="memory", peer_id="a", clock=clock, rng=random.Random(1))
    for i in range(20):
        a.put(f"k{i}", i)  # nothing collectable: the checkpoint is the request's own
    marker = a.backend.get(b"mfingerprints")
    CollectGarbage(0, False).perform(a)
    assert a.backend.get(b"mfingerprints") == marker
    CollectGarbage(0, True).perform(a)
    assert a.backend.get(b"mfingerprints") == a.last_seq.to_bytes(8, "big")
    assert sum(1 for _ in a.backend.iterate(b"x", b"y")) == 20


def test_simulation_collects_on_the_policy() -> None:
    cfg = SimConfig(nodes=3, ops=300, seed=3, gc_grace_ms=0.0, gc_interval_ms=200.0)
    sim = Simulation(cfg)
    result = sim.run()
    assert result.ok, result.error
    assert sim.c["collected"] > 0
    again = Simulation(SimConfig(nodes=3, ops=300, seed=3, gc_grace_ms=0.0, gc_interval_ms=200.0))
    assert again.run().trace_hash == result.trace_hash


def test_node_runs_gc_on_its_storage_worker() -> None:
    async def main() -> None:
        clock = ManualClock(T0)
        a = crdt_kv.open(backend="memory", peer_id="a", clock=clock, rng=random.Random(1))
        a.put("k", 1)
        a.delete("k")
        a.membership.heard("gone", [])
        a.forget_peer("gone")  # a replica that had peers and was told it is alone
        clock.advance(5)
        async with crdt_kv.serve(a, gc_grace_s=0, gc_interval_s=0.05) as node:
            assert node.gc is not None
            with trio.fail_after(10):
                while node.gc.runs < 1:
                    await trio.sleep(0.02)
        assert node.gc.collected == 1 and a.entry("k") is None
        a.close()

    trio.run(main)
