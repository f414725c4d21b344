"""Per-peer records of a node (crdt_kv/net/peers.py): pruning by member expiry and by cap,
on an injected clock, and the reachability a target's failures imply."""

from __future__ import annotations

from typing import Any

import trio
from net_helpers import wait_until

import crdt_kv
from crdt_kv.net.peers import PRUNE_EVERY_S, UNIDENTIFIED, PeerBook, PeerRecord, TargetInfo
from crdt_kv.protocol import InState, SessionStats
from crdt_kv.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book_for(expiry_s: float, **kw: Any) -> tuple[PeerBook, Clock, Store]:
    store = crdt_kv.open(backend="memory", peer_id="me", member_expiry_s=expiry_s)
    clock = Clock()
    return PeerBook(store, clock=clock, wall=lambda: 1.7e9, **kw), clock, store


class FakeSession:
    """Stands for an open, idle protocol session in ``PeerRecord.active``."""

    stats = SessionStats()
    in_state = InState.DISABLED
    live = False
    remote = None


def test_records_unheard_of_for_the_member_expiry_are_pruned() -> None:
    book, clock, store = book_for(60)
    for p in ("a", "b", "c"):
        book.touch(book.record(p))
    clock.now += 30
    book.touch(book.record("b"))
    clock.now += 31  # a and c: 61 s unheard of; b: 31 s
    assert book.prune() == 2
    assert set(book.records) == {"b"} and book.pruned == 2
    clock.now += 29  # b unheard of for exactly the expiry: kept
    assert book.prune() == 0
    clock.now += 0.5
    assert book.stats([], clock.now) == {} and book.pruned == 3
    store.close()


def test_active_sessions_and_dialed_peers_are_never_pruned() -> None:
    dialed = ["d"]
    book, clock, store = book_for(10, keep=lambda: dialed)
    for p in ("busy", "d", "idle"):
        book.record(p)
    book.records["busy"].active.append(FakeSession())  # type: ignore[arg-type]
    clock.now += 1000
    assert book.prune() == 1
    assert set(book.records) == {"busy", "d"}
    dialed.clear()
    assert book.prune() == 1 and set(book.records) == {"busy"}
    store.close()


def test_the_cap_drops_the_oldest_contact_first() -> None:
    book, clock, store = book_for(3600, max_records=3)
    for i, p in enumerate(["p0", "p1", "p2", "p3", "p4"]):
        clock.now = 1000.0 + i
        book.touch(book.record(p))
    book.touch(book.records["p0"])  # p0 heard from last: the newest now
    assert book.prune() == 2
    assert set(book.records) == {"p0", "p3", "p4"}
    store.close()


def test_a_cap_of_protected_records_is_exceeded_rather_than_dropping_them() -> None:
    book, _, store = book_for(3600, max_records=1, keep=lambda: ["a", "b"])
    book.record("a")
    book.record("b")
    assert book.prune() == 0 and len(book.records) == 2
    store.close()


def test_reachable_follows_sessions_and_the_targets_failures() -> None:
    book, _, store = book_for(3600)
    rec = book.record("p")
    rec.ok = True
    ok_target = TargetInfo("h:1", "p", False, 0, None, failures=0)
    failing = TargetInfo("h:1", "p", False, 3, "refused", failures=2)
    never = TargetInfo("h:2", None, False, 1, "refused", failures=1)
    stats = book.stats([ok_target, never], 0.0)
    assert stats["p"]["reachable"] and stats["p"]["dialed"]
    assert not stats["h:2"]["reachable"] and stats["h:2"]["dialed"]
    assert not book.stats([failing], 0.0)["p"]["reachable"]
    rec.active.append(FakeSession())  # type: ignore[arg-type]
    assert book.stats([failing], 0.0)["p"]["reachable"]  # connected wins
    store.close()


def test_last_contact_is_the_wall_time_of_the_last_touch_or_now_while_connected() -> None:
    store = crdt_kv.open(backend="memory", peer_id="me")
    wall = [100.0]
    book = PeerBook(store, clock=Clock(), wall=lambda: wall[0])
    assert book.snapshot(PeerRecord(UNIDENTIFIED), 0.0)["last_contact"] is None
    rec = book.record("p")
    book.touch(rec)
    wall[0] = 250.0
    assert book.snapshot(rec, 0.0)["last_contact"] == 100.0
    rec.active.append(FakeSession())  # type: ignore[arg-type]
    assert book.snapshot(rec, 0.0)["last_contact"] == 250.0
    store.close()


async def test_a_node_forgets_a_peer_that_dialed_in_once_after_the_member_expiry() -> None:
    b = crdt_kv.open(backend="memory", peer_id="b", member_expiry_s=1.0)
    a = crdt_kv.open(backend="memory", peer_id="a")
    a.put("k", 1)
    async with crdt_kv.serve(b) as nb:
        stream = await trio.open_tcp_stream(*nb.address)
        await crdt_kv.replicate(a, stream, live=False)
        await wait_until(lambda: nb.stats().get("a", {}).get("connected") is False, what="ended")
        assert len(nb.peer_book.records) == 1 and b.get("k") == 1
        await wait_until(lambda: "a" not in nb.stats(), what="a pruned")
        assert nb.peer_book.pruned == 1 and not nb.peer_book.records
    a.close()
    b.close()


def test_sessions_prune_the_book_at_most_once_a_second_unless_it_is_over_the_cap() -> None:
    book, clock, store = book_for(60, max_records=100)
    calls = {"n": 0}
    real = book.prune

    def counted() -> int:
        calls["n"] += 1
        return real()

    book.prune = counted  # type: ignore[method-assign]
    for i in range(50):
        book.connected(FakeSession(), f"p{i}", b"i" * 16, 0, "127.0.0.1:1")  # type: ignore[arg-type]
    assert calls["n"] == 1
    clock.now += PRUNE_EVERY_S
    book.connected(FakeSession(), "late", b"i" * 16, 0, "127.0.0.1:1")  # type: ignore[arg-type]
    assert calls["n"] == 2
    book.max_records = 10  # over the cap: every session prunes
    book.connected(FakeSession(), "over", b"i" * 16, 0, "127.0.0.1:1")  # type: ignore[arg-type]
    assert calls["n"] == 3
    store.close()
