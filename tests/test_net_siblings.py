"""Two ``siblings``-mode stores replicating with ``crdt_kv.replicate`` over in-memory trio
streams, and two nodes over loopback TCP: concurrent writes become the same siblings in
the same order on both sides, a merge replicates and removes exactly what it merged, an
``lww`` and a ``siblings`` replica refuse each other at the handshake, and a key whose
joined state kept a local version is sent back to the peer it came from."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from net_helpers import mem_store, sync_pair, wait_until

import crdt_kv
from crdt_kv import ProtocolError, Store
from crdt_kv.testing import ManualClock


@pytest.fixture(params=["memory", "rocksdb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Stores on one shared hand-moved clock, ``siblings`` mode unless told otherwise."""
    clock = ManualClock()
    opened: list[Store] = []

    def make(peer: str, conflicts: str = "siblings") -> Store:
        if request.param == "memory":
            s = mem_store(peer, clock, conflicts=conflicts)
        else:
            s = crdt_kv.open(
                tmp_path / peer, backend="rocksdb", peer_id=peer, clock=clock, conflicts=conflicts
            )
        opened.append(s)
        return s

    make.clock = clock  # type: ignore[attr-defined]
    yield make
    for s in opened:
        s.close()


def live_state(store: Store, key: str) -> list[tuple[Any, int, str]]:
    """``key``'s live siblings as ``(value, hlc, peer)`` in sibling order."""
    return [(e.value, e.hlc, e.peer) for e in store.get_all(key)]


def assert_same_siblings(a: Store, b: Store, keys: list[str]) -> None:
    assert a.digest() == b.digest()
    for k in keys:
        assert live_state(a, k) == live_state(b, k), k


async def test_concurrent_writes_become_the_same_siblings_on_both_sides(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    clock: ManualClock = make_store.clock
    rng = random.Random(7)
    keys = [f"k{i:02d}" for i in range(30)]
    last: dict[tuple[str, str], tuple[Any, int, str] | None] = {}  # (peer, key) -> last op
    for _ in range(200):
        s = rng.choice([a, b])
        k = rng.choice(keys)
        if rng.random() < 0.2:
            s.delete(k)
            last[(s.peer_id, k)] = None
        else:
            value = {"by": s.peer_id, "n": rng.randrange(1000)}
            v = s.put(k, value)
            last[(s.peer_id, k)] = (value, v.hlc, v.peer)
        if rng.random() < 0.3:
            clock.advance(rng.randrange(3))

    ra, rb = await sync_pair(a, b, max_batch_entries=7)
    assert ra.complete and rb.complete
    # First contact between stores that both hold data: states travel in the repair.
    assert ra.stats.repairs == rb.stats.repairs == 1
    assert ra.stats.repair_entries > 0 and rb.stats.repair_entries > 0
    both_wrote = {k for k in keys if ("a", k) in last and ("b", k) in last}
    assert len(both_wrote) >= 10
    for k in set(keys) - both_wrote:
        assert live_state(a, k) == live_state(b, k), k
    # A key both wrote may have been joined on one side before that side read it for the
    # peer: its joined state is then a local change past the pinned head, sent next round.
    ra, rb = await sync_pair(a, b, max_batch_entries=7)
    assert ra.stats.entries_sent <= len(both_wrote) and rb.stats.entries_sent <= len(both_wrote)
    assert_same_siblings(a, b, keys)
    for k in keys:
        # Neither side saw the other's writes: each side's last put of a key survives as a
        # sibling, a delete loses to a concurrent put, and the order is the lww order.
        want = [w for p in ("a", "b") if (w := last.get((p, k))) is not None]
        want.sort(key=lambda w: (w[1], w[2]), reverse=True)
        assert live_state(a, k) == want, k
    assert {k for k, _ in a.conflicts()} == {k for k in keys if len(a.get_all(k)) == 2}
    assert len(list(a.conflicts())) >= 5
    # The cursors were stored: a further round sends nothing in either direction.
    ra, rb = await sync_pair(a, b)
    assert ra.stats.entries_sent == rb.stats.entries_sent == 0


async def test_one_round_of_concurrent_writes_converges(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    for i in range(20):
        a.put(f"k{i:02d}", "a")
        b.put(f"k{19 - i:02d}", "b")  # b's first batch holds keys a sends last
    await sync_pair(a, b, max_batch_entries=2)
    assert a.digest() == b.digest()


async def test_a_merge_replicates_and_removes_exactly_the_merged_siblings(
    make_store: Any,
) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    for s in (a, b, c):
        s.put("cart", [s.peer_id])
        s.put("other", s.peer_id)
    await sync_pair(a, b)
    await sync_pair(b, c)
    await sync_pair(a, b)
    assert_same_siblings(a, b, ["cart", "other"])
    assert len(a.get_all("cart")) == len(b.get_all("other")) == 3

    mine = [e for e in a.get_all("cart") if e.peer in ("a", "b")]
    merged = a.merge("cart", mine, ["a", "b"])
    ra, _ = await sync_pair(a, b)
    assert ra.stats.entries_sent == 1
    assert_same_siblings(a, b, ["cart", "other"])
    want = [(["a", "b"], merged.hlc, "a"), *[(["c"], e.hlc, "c") for e in b.get_all("cart")[1:]]]
    assert live_state(b, "cart") == want  # the merge is newest: it sorts first
    assert [e.peer for e in b.get_all("other")] == ["c", "b", "a"]  # untouched

    # Merging the rest on b leaves one value everywhere, and no conflict.
    b.merge("cart", b.get_all("cart"), ["a", "b", "c"])
    await sync_pair(a, b)
    assert [e.value for e in a.get_all("cart")] == [["a", "b", "c"]]
    assert a.get("cart") == ["a", "b", "c"]
    assert [k for k, _ in a.conflicts()] == ["other"]
    assert_same_siblings(a, b, ["cart", "other"])


async def test_lww_and_siblings_replicas_refuse_each_other_at_the_handshake(
    make_store: Any,
) -> None:
    a, b = make_store("a", conflicts="lww"), make_store("b")
    a.put("k", 1)
    b.put("k", 2)
    before = (a.digest(), b.digest(), a.last_seq, b.last_seq)
    sa, sb = trio.testing.memory_stream_pair()
    errors: dict[str, BaseException] = {}

    async def side(name: str, store: Store, stream: trio.abc.Stream) -> None:
        try:
            await crdt_kv.replicate(store, stream)
        except ProtocolError as exc:
            errors[name] = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(side, "a", a, sa)
            n.start_soon(side, "b", b, sb)
    assert set(errors) == {"a", "b"}
    for exc in errors.values():
        assert "'lww'" in str(exc) and "'siblings'" in str(exc), exc
    assert (a.digest(), b.digest(), a.last_seq, b.last_seq) == before
    assert a.cursors() == b.cursors() == {}


async def test_a_joined_state_with_a_local_sibling_is_sent_back_to_its_sender(
    make_store: Any,
) -> None:
    a, b = make_store("a"), make_store("b")
    a.put("k", "base")
    a.put("quiet", 1)
    await sync_pair(a, b)
    x = a.put("k", "X")  # after a's last sync with b
    y = b.put("k", "Y")
    b.put("only-b", 2)
    # a receives b's batch without sending anything in that session.
    ra, rb = await sync_pair(a, b, mode_a="pull", mode_b="push")
    assert ra.stats.entries_sent == rb.stats.entries_received == 0
    assert {e.value for e in a.get_all("k")} == {"X", "Y"}
    assert [e.value for e in b.get_all("k")] == ["Y"]
    # k's joined state holds X, which b lacks: it is a local change, not b's echo;
    # only-b is b's own state and stays suppressed towards b.
    towards_b = [r.key for r in a.raw_changes(exclude_source=("b", b.incarnation))]
    assert b"k" in towards_b and b"only-b" not in towards_b

    ra, rb = await sync_pair(a, b)
    assert rb.stats.entries_received >= 1
    got = {(e.value, e.hlc, e.peer) for e in b.get_all("k")}
    assert got == {("X", x.hlc, "a"), ("Y", y.hlc, "b")}
    assert_same_siblings(a, b, ["k", "quiet", "only-b"])
    ra, rb = await sync_pair(a, b)
    assert ra.stats.entries_sent == rb.stats.entries_sent == 0


async def test_siblings_nodes_over_loopback_tcp(tmp_path: Path) -> None:
    clock = ManualClock(tick_ms=1)
    with (
        crdt_kv.open(tmp_path / "a", peer_id="a", clock=clock, conflicts="siblings") as a,
        crdt_kv.open(tmp_path / "b", peer_id="b", clock=clock, conflicts="siblings") as b,
    ):
        for i in range(20):
            a.put(f"k{i}", f"a{i}")
            b.put(f"k{i}", f"b{i}")
        keys = [f"k{i}" for i in range(20)]
        with trio.fail_after(20):
            async with crdt_kv.serve(a, sync_interval_s=0.2) as na:
                host, port = na.address[:2]
                async with crdt_kv.serve(b, peers=[f"{host}:{port}"], sync_interval_s=0.2):
                    await wait_until(
                        lambda: a.digest() == b.digest() and len(list(b.conflicts())) == 20,
                        what="both siblings on both nodes",
                    )
                    assert_same_siblings(a, b, keys)
                    assert [e.value for e in b.get_all("k3")] == ["b3", "a3"]  # newer first
                    a.merge("k3", a.get_all("k3"), "a3+b3")  # live: reaches b by itself
                    await wait_until(
                        lambda: [e.value for e in b.get_all("k3")] == ["a3+b3"],
                        what="the merge on b",
                    )
                    assert_same_siblings(a, b, keys)
