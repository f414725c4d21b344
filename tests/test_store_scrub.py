"""Scrub and quarantine (issue 10): rotten records are found, removed and quarantined, the
fingerprints and counters agree with a recomputation afterwards, absence never wins for a
quarantined key, and repair with a healthy peer heals."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import cbor2
import pytest
from fingerprint_layout import check_store
from hypothesis import given, settings
from hypothesis import strategies as st
from repair_helpers import run_pair

import crdt_kv
from crdt_kv import RawEntry, Store
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.fingerprint import POSITION_SPACE, bucket_of, position
from crdt_kv.horizon import GossipRow
from crdt_kv.testing import ManualClock

T0 = 1_700_000_000_000


def open_mem(be: MemoryBackend, peer: str, **kw: Any) -> Store:
    clock = kw.pop("clock", None) or ManualClock(T0)
    return crdt_kv.open(backend=be, clock=clock, rng=random.Random(3), peer_id=peer, **kw)


def kb(s: Store, key: str) -> bytes:
    return s._enc_key(key)


def lose(s: Store, key: str) -> None:
    """Rot: the record vanishes behind the store's back (index and log entries stay)."""
    s.backend.write([(b"d" + kb(s, key), None)])


def garble(s: Store, key: str) -> None:
    """Rot: the record's bytes no longer parse (a read error, for the store)."""
    s.backend.write([(b"d" + kb(s, key), b"\xff\x00garbage" + bytes(8))])


def unindex(s: Store, key: str) -> None:
    s.checkpoint()  # a new key's index entry is on disk from the next checkpoint on
    k = kb(s, key)
    s.backend.write([(b"x" + position(k).to_bytes(8, "big") + k, None)])


def answer(s: Store, peer: str, keys: list[bytes]) -> int:
    """``peer`` answered for ``keys`` in a repair that began now."""
    return s.answered(peer, keys, epoch=s.quarantine_epoch)


def quarantine(s: Store) -> set[bytes]:
    return {k[1:] for k, _ in s.backend.iterate(b"q", b"r")}


def filled(peer: str, n: int = 30, **kw: Any) -> Store:
    s = open_mem(MemoryBackend(), peer, **kw)
    for i in range(n):
        s.put(f"k{i}", i)
    for i in range(0, n, 5):
        s.delete(f"k{i}")
    return s


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
def test_a_healthy_store_scrubs_clean(conflicts: str) -> None:
    s = filled("a", conflicts=conflicts)
    before = (s.digest(), len(s), s.last_seq)
    r = s.scrub()
    assert r.clean and r.buckets == 4096 and r.records == 30 and r.quarantined == 0
    assert (s.digest(), len(s), s.last_seq) == before
    assert s.statistics().quarantined == 0


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
@pytest.mark.parametrize("rot", ["lose", "garble"])
def test_each_kind_of_rot_is_quarantined_and_counters_recomputed(rot: str, conflicts: str) -> None:
    s = filled("a", conflicts=conflicts)
    victims = ["k1", "k5", "k7"]  # live, tombstone, live
    for key in victims:
        (lose if rot == "lose" else garble)(s, key)
    r = s.scrub()
    assert (r.missing, r.corrupt) == ((3, 0) if rot == "lose" else (0, 3))
    assert r.quarantined == 3 and r.mismatched >= 1 and r.unindexed == 0
    assert quarantine(s) == {kb(s, k) for k in victims}
    check_store(s)  # x, f, memory, digest, counts agree with the records
    assert len(s) == 30 - 6 - 2  # 6 tombstones of which k5 was lost, and k1, k7 lost
    assert not any(v[1:] in quarantine(s) for _, v in s.backend.iterate(b"l", b"m"))
    assert len(list(s.raw_changes(0))) == 27  # the log reads again
    st = s.statistics()
    assert (st.quarantined, st.rotten) == (3, 3)
    assert s.scrub().clean


def test_scrub_of_some_buckets_only() -> None:
    s = filled("a")
    lose(s, "k3")
    b = bucket_of(position(kb(s, "k3")))
    others = [i for i in range(4096) if i != b]
    assert s.scrub(buckets=others[:100]).clean
    r = s.scrub(buckets=[b])
    assert r.buckets == 1 and r.missing == 1
    with pytest.raises(ValueError, match="bucket"):
        s.scrub(buckets=[4096])


def test_a_record_that_lost_its_index_entry_is_reindexed() -> None:
    s = filled("a")
    unindex(s, "k2")
    r = s.scrub()
    assert r.unindexed == 1 and r.quarantined == 0 and s.get("k2") == 2
    check_store(s)


def test_an_altered_record_that_parses_is_trusted_and_its_bucket_fixed() -> None:
    s = filled("a")
    k = kb(s, "k3")
    blob = s.backend.get(b"d" + k)
    assert blob is not None
    s.backend.write([(b"d" + k, blob[:-9] + b"\x04" + blob[-8:])])  # value 3 -> 4 (CBOR)
    r = s.scrub()
    assert (r.mismatched, r.quarantined) == (1, 0) and s.get("k3") == 4
    check_store(s)


def test_quarantine_and_counters_survive_reopen() -> None:
    be = MemoryBackend()
    s = open_mem(be, "a")
    for i in range(20):
        s.put(f"k{i}", i)
    lose(s, "k19")  # the newest log entry (with the trailer) goes too
    garble(s, "k4")
    s.scrub()
    digest, n, seq = s.digest(), len(s), s.last_seq
    be.close = lambda: None  # type: ignore[method-assign]  # crash: no clean close
    s2 = open_mem(be, "a")
    assert (s2.digest(), len(s2), s2.last_seq) == (digest, n, seq)
    assert s2.statistics().quarantined == 2
    check_store(s2)


def test_a_quarantined_key_is_accepted_below_the_horizon_and_stays_quarantined() -> None:
    s = filled("a")
    old = s.entry("k3")
    assert old is not None
    lose(s, "k3")
    s.scrub()
    s.raise_gc_horizon(s.clock_now())
    e = RawEntry(kb(s, "k3"), s._venc(3), old.hlc, "a", False)
    stranger = RawEntry(kb(s, "never"), s._venc(1), old.hlc, "b", False)
    assert s.apply_raw([e, stranger]) == 1  # the stranger is refused: absence wins
    assert s.get("k3") == 3 and s.statistics().refused_below_horizon == 1
    assert quarantine(s) == {kb(s, "k3")} and s.statistics().quarantined == 1
    s.membership.heard("b", [])
    assert answer(s, "b", [kb(s, "k3")]) == 1
    assert quarantine(s) == set() and s.statistics().quarantined == 0
    check_store(s)


def test_neither_a_local_write_nor_a_merged_state_ends_a_quarantine() -> None:
    """The lost record may have held versions a local write knows nothing of, and one
    peer's state may lack a version another member still holds (sweep, bitrot siblings
    seed 4000): only every active member's answer in a repair ends the quarantine."""
    s, peer = filled("a"), filled("b")
    for p in ("b", "c"):
        s.membership.heard(p, [])
    garble(s, "k3")
    lose(s, "k4")
    s.scrub()
    s.put("k3", "new")
    with s.batch() as b:
        b.delete("k4")
    lost = {kb(s, "k3"), kb(s, "k4")}
    assert quarantine(s) == lost and s.get("k3") == "new"
    s.apply_raw([e for e in peer.raw_changes(0) if e.key == kb(s, "k4")])
    s.apply_raw([e for e in s.raw_changes(0) if e.key == kb(s, "k3")])  # equal: no change
    assert quarantine(s) == lost and s.get("k3") == "new"
    assert answer(s, "b", sorted(lost)) == 0 and quarantine(s) == lost
    assert answer(s, "c", [kb(s, "k4")]) == 1 and quarantine(s) == {kb(s, "k3")}
    check_store(s)


def test_siblings_one_peer_state_does_not_let_the_horizon_drop_a_lost_version() -> None:
    """The sweep's seed 4000 (bitrot, siblings) in three stores: ``c``'s version of
    ``k`` reached only ``a``, which then lost the record; ``b``'s concurrent state arrived
    and (under the old rule) ended the quarantine, the horizon passed ``c``'s stamp, and
    ``c``'s state was then joined as if ``a`` had collected that version: its dot went
    into the context, which deletes it everywhere. Still quarantined, ``a`` keeps it."""
    clock = ManualClock(T0)
    a, b, c = (open_mem(MemoryBackend(), p, conflicts="siblings", clock=clock) for p in "abc")
    c.put("k", "from c")
    a.apply_raw(c.raw_changes(0))
    b.put("k", "from b")
    a.checkpoint()
    lose(a, "k")
    a.scrub()
    for p in ("b", "c"):
        a.membership.heard(p, [])
    a.apply_raw(b.raw_changes(0))
    assert quarantine(a) == {kb(a, "k")}
    clock.now += 10_000
    theirs = c.entry("k")
    assert theirs is not None and a.raise_gc_horizon(a.clock_now()) > theirs.hlc
    a.apply_raw(c.raw_changes(0))
    assert sorted(str(e.value) for e in a.get_all("k")) == ["from b", "from c"]
    b.apply_raw(a.raw_changes(0))
    assert sorted(str(e.value) for e in b.get_all("k")) == ["from b", "from c"]


def test_an_answer_counts_only_for_the_quarantine_it_was_asked_for() -> None:
    """A repair reads the quarantine epoch with its probes: an answer it reports after
    the key was released and lost again says nothing of what the second loss took."""
    s = filled("a")
    s.membership.heard("b", [])
    lose(s, "k3")
    s.scrub()
    before = s.quarantine_epoch
    assert s.answered("b", [kb(s, "k3")], epoch=before) == 1
    s.put("k3", "again")
    lose(s, "k3")
    s.scrub()
    assert s.quarantine_epoch > before
    assert s.answered("b", [kb(s, "k3")], epoch=before) == 0
    assert quarantine(s) == {kb(s, "k3")}
    assert s.answered("b", [kb(s, "k3")], epoch=s.quarantine_epoch) == 1
    assert quarantine(s) == set()


def test_siblings_quarantined_key_takes_back_versions_below_the_horizon() -> None:
    """Found by the simulator (bitrot, siblings, seed 40): a replica lost a key's record,
    wrote the key again, then received a peer's version older than the collection horizon.
    Version-level absence wins dropped it there, and repair spread the loss everywhere."""
    clock = ManualClock(T0)
    a = open_mem(MemoryBackend(), "a", conflicts="siblings", clock=clock)
    b = open_mem(MemoryBackend(), "b", conflicts="siblings", clock=clock)
    b.put("k", "theirs")
    a.apply_raw(b.raw_changes(0))
    clock.now += 10_000
    for s in (a, b):
        s.raise_gc_horizon(s.clock_now())
    lose(a, "k")
    a.scrub()
    a.put("k", "mine")  # concurrent with b's version, which a no longer holds
    a.apply_raw(b.raw_changes(0))
    assert sorted(e.value for e in a.get_all("k")) == ["mine", "theirs"]
    assert quarantine(a) == {kb(a, "k")}


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
def test_repair_heals_a_rotten_replica_below_the_horizon(conflicts: str) -> None:
    a, b = filled("a", conflicts=conflicts), filled("b", conflicts=conflicts)
    b.apply_raw(a.raw_changes(0))
    a.apply_raw(b.raw_changes(0))
    assert a.digest() == b.digest()
    for s in (a, b):
        s.raise_gc_horizon(max(a.clock_now(), b.clock_now()))
    for key in ("k1", "k5", "k8"):
        lose(a, key)
    garble(a, "k9")
    a.scrub()
    a.membership.heard("b", [])  # the member whose answer releases the keys
    ra, rb = run_pair(a, b)
    assert ra.dropped == rb.dropped == 0
    assert a.digest() == b.digest() and a.statistics().quarantined == 0
    assert b.get("k1") == 1 and a.get("k1") == 1
    check_store(a)


def test_without_quarantine_repair_would_spread_the_loss() -> None:
    """The point of the quarantine: a lost key left out of the listing looks collected."""
    a, b = filled("a"), filled("b")
    b.apply_raw(a.raw_changes(0))
    a.apply_raw(b.raw_changes(0))
    for s in (a, b):
        s.raise_gc_horizon(max(a.clock_now(), b.clock_now()))
    lose(a, "k1")
    a.scrub()
    a.backend.write([(b"q" + kb(a, "k1"), None)])
    a._w.quarantined.clear()
    ra, rb = run_pair(a, b)
    assert b.get("k1") is None and ra.dropped + rb.dropped == 1


def test_range_quarantined() -> None:
    s = filled("a")
    lose(s, "k1")
    s.scrub()
    p = position(kb(s, "k1"))
    assert s.range_quarantined(0, POSITION_SPACE) == [(p, kb(s, "k1"))]
    assert s.range_quarantined(p + 1, POSITION_SPACE) == []


def states(s: Store) -> list[RawEntry]:
    return [dataclasses.replace(e, seq=0) for e in s.raw_entries(kb(s, f"k{i}") for i in range(40))]


rot_plan = st.lists(
    st.tuples(st.integers(0, 39), st.sampled_from(["lose", "garble", "unindex"])),
    max_size=8,
)


@settings(max_examples=25, deadline=None)
@given(
    rots=rot_plan,
    deletes=st.sets(st.integers(0, 39), max_size=10),
    conflicts=st.sampled_from(["lww", "siblings"]),
    horizon=st.booleans(),
)
def test_rot_scrub_and_repair_restore_equality(
    rots: list[tuple[int, str]], deletes: set[int], conflicts: str, horizon: bool
) -> None:
    a, b = filled("a", 40, conflicts=conflicts), open_mem(MemoryBackend(), "b", conflicts=conflicts)
    for i in deletes:
        a.delete(f"k{i}")
    b.apply_raw(a.raw_changes(0))
    want = b.digest()
    if horizon:
        for s in (a, b):
            s.raise_gc_horizon(a.clock_now())
    for i, how in rots:
        {"lose": lose, "garble": garble, "unindex": unindex}[how](a, f"k{i}")
    r = a.scrub()
    check_store(a)
    assert r.quarantined == len({i for i, how in rots if how != "unindex"})
    a.membership.heard("b", [])  # b's answers release the quarantine
    ra, rb = run_pair(a, b)
    assert a.digest() == b.digest() == want
    assert ra.dropped == rb.dropped == 0
    assert states(a) == states(b)
    assert a.statistics().quarantined == 0
    check_store(a)


def test_a_lost_record_written_again_is_listed_once() -> None:
    """Found by the simulator (bitrot, lww, seed 172): a record rotted away (its index
    entry stays until the scrub), the key was written again (new to the commit path, so
    kept as a fresh index entry too) and range listings named it twice; a peer comparing
    listings took the second copy for a key it lacked below its horizon, dropped it, and
    the drop spread to every replica."""
    s = filled("a")
    s.checkpoint()  # k3's index entry is on disk
    lose(s, "k3")
    s.put("k3", "again")
    items = s.range_items(0, POSITION_SPACE)
    keys = [k for _, k, _ in items]
    assert keys.count(kb(s, "k3")) == 1 and len(keys) == len(set(keys))


@pytest.mark.parametrize("how", ["write", "merge"])
def test_siblings_lost_record_is_quarantined_when_a_write_or_merge_meets_it(how: str) -> None:
    """Found by the simulator (bitrot, siblings, seed 250): before its scrub ran, a
    replica that had lost a key's record wrote the key again, then joined the peers' older
    versions below the horizon as collected: their dots entered its causal context, and
    that context deleted them on every replica. Meeting a key with no record that the
    position index still names now scrubs its bucket first, which quarantines it."""
    clock = ManualClock(T0)
    a = open_mem(MemoryBackend(), "a", conflicts="siblings", clock=clock)
    b = open_mem(MemoryBackend(), "b", conflicts="siblings", clock=clock)
    b.put("k", "theirs")
    a.apply_raw(b.raw_changes(0))
    a.checkpoint()
    clock.now += 10_000
    for s in (a, b):
        s.raise_gc_horizon(s.clock_now())
    lose(a, "k")
    if how == "write":
        a.put("k", "mine")
        assert quarantine(a) == {kb(a, "k")}
    a.apply_raw(b.raw_changes(0))
    values = sorted(str(e.value) for e in a.get_all("k"))
    assert values == (["mine", "theirs"] if how == "write" else ["theirs"])
    assert quarantine(a) == {kb(a, "k")}
    b.apply_raw(a.raw_changes(0))
    assert sorted(str(e.value) for e in b.get_all("k")) == values


# --- release of a key no replica holds (data-model.md section 20) --------------------------


def lonely(peer: str = "a", **kw: Any) -> Store:
    """A store that lost ``only``, a key no other replica ever received."""
    s = filled(peer, **kw)
    s.put("only", "mine")
    lose(s, "only")
    s.scrub()
    assert quarantine(s) == {kb(s, "only")}
    return s


def test_release_waits_for_every_active_member() -> None:
    s = lonely()
    for p in ("b", "c"):
        s.membership.heard(p, [])
    k = kb(s, "only")
    assert s.membership.hold() is not None
    assert answer(s, "b", [k, kb(s, "k1")]) == 0 and quarantine(s) == {k}
    assert answer(s, "b", [k]) == 0
    assert answer(s, "c", [k]) == 1
    assert quarantine(s) == set() and s.statistics().quarantined == 0
    assert s.membership.hold() is None and s.stats["released"] == 1
    assert s.get("only") is None
    check_store(s)


def test_release_waits_for_partners_not_for_members_known_by_gossip() -> None:
    """A member known only from a partner's gossip never exchanged a state with this
    store, and a repair with it never runs (in a ring, the nodes two hops away): waiting
    for it would hold every quarantine, and the cluster's horizon, for ever."""
    s = lonely()
    s.membership.heard("b", [GossipRow("c", 0, T0, 0)])
    assert [m.peer for m in s.members() if m.active] == ["b", "c"]
    assert answer(s, "b", [kb(s, "only")]) == 1 and quarantine(s) == set()


def test_a_forgotten_partner_is_no_longer_waited_for() -> None:
    """Release is checked again at every scrub, so a partner's expiry or forget ends a
    wait its answer alone held (before, only a new answer did, and none came)."""
    s = lonely()
    for p in ("b", "c"):
        s.membership.heard(p, [])
    assert answer(s, "b", [kb(s, "only")]) == 0
    s.forget_peer("c")
    assert quarantine(s) == {kb(s, "only")}
    s.scrub(buckets=[])
    assert quarantine(s) == set() and s.membership.hold() is None


def test_a_record_that_rots_again_before_release_stays_quarantined() -> None:
    """The merged state of a quarantined key can rot too, before any scrub sees it: the
    answers given before that second loss say nothing of it, so release scrubs first."""
    s, peer = filled("a"), filled("b")
    s.membership.heard("b", [])
    lose(s, "k3")
    s.scrub()
    s.apply_raw([e for e in peer.raw_changes(0) if e.key == kb(s, "k3")])
    s.checkpoint()
    epoch = s.quarantine_epoch
    lose(s, "k3")
    assert s.answered("b", [kb(s, "k3")], epoch=epoch) == 0
    assert quarantine(s) == {kb(s, "k3")} and s.quarantine_epoch > epoch
    check_store(s)


def test_a_member_row_of_an_older_store_counts_as_a_partner() -> None:
    """Rows written before ``partner`` existed hold four numbers: whether that peer had a
    session with us is unknown, so it is assumed (its answer is waited for)."""
    be = MemoryBackend()
    s = open_mem(be, "a")
    be.write([(b"g" + b"old", cbor2.dumps([0, T0, 0, 0]))])
    be.close = lambda: None  # type: ignore[method-assign]  # keep the memory backend open
    s.close()
    s2 = open_mem(be, "a")
    assert s2.membership.partners() == ["old"]


def test_a_store_with_no_active_member_keeps_its_quarantine() -> None:
    """Nobody is there to vouch that no replica holds the key: one peer's word (a peer
    the membership does not count) must not release it."""
    s = lonely()
    k = kb(s, "only")
    assert answer(s, "b", [k]) == 0
    assert quarantine(s) == {k} and s.stats["released"] == 0
    s.membership.heard("b", [])
    assert answer(s, "b", [k]) == 1


def test_a_malformed_index_key_does_not_stop_the_scrub() -> None:
    s = filled("a")
    s.checkpoint()
    s.backend.write([(b"x\x80", b"")])  # inside bucket 2048's scan; names bucket 0
    s.scrub(buckets=[2047, 2048])  # the run's sums have no bucket 0: this raised KeyError
    s.scrub()
    assert s.get("k1") is not None and s.statistics().keys == 30


def test_answers_are_forgotten_on_reopen() -> None:
    be = MemoryBackend()
    s = open_mem(be, "a")
    s.put("only", 1)
    lose(s, "only")
    s.scrub()
    for p in ("b", "c"):
        s.membership.heard(p, [])
    k = kb(s, "only")
    answer(s, "b", [k])
    be.close = lambda: None  # type: ignore[method-assign]  # keep the memory backend open
    s.close()
    s2 = open_mem(be, "a")
    assert answer(s2, "c", [k]) == 0 and quarantine(s2) == {k}
    assert answer(s2, "b", [k]) == 1


def test_an_expired_member_is_not_waited_for() -> None:
    clock = ManualClock(T0)
    s = lonely(clock=clock, member_expiry_s=1.0)
    s.membership.heard("b", [])
    clock.advance(2000)
    s.membership.heard("c", [])
    assert answer(s, "c", [kb(s, "only")]) == 1


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
def test_repair_releases_a_key_no_member_holds(conflicts: str) -> None:
    a, b = lonely("a", conflicts=conflicts), filled("b", conflicts=conflicts)
    b.apply_raw(a.raw_changes(0))
    a.apply_raw(b.raw_changes(0))
    a.membership.heard("b", [])
    assert a.digest() == b.digest() and a.statistics().quarantined == 1
    ra, rb = run_pair(a, b)
    assert not ra.in_sync and rb.entries_sent == 0
    assert a.statistics().quarantined == 0 and a.membership.hold() is None
    assert a.digest() == b.digest() and a.get("only") is None and b.get("only") is None
    check_store(a)


def test_a_read_only_store_does_not_ask_peers_about_its_quarantine() -> None:
    """It cannot merge what they ship nor release a key, so a probe would make every
    session with every peer repair (and a live link restart to verify) for nothing."""
    be = MemoryBackend()
    s = open_mem(be, "a")
    for i in range(10):
        s.put(f"k{i}", i)
    s.membership.heard("b", [])
    lose(s, "k3")
    s.scrub()
    assert s.wants_probe("b")
    be.close = lambda: None  # type: ignore[method-assign]  # reopen the same memory
    s.close()
    ro = open_mem(be, "a", read_only=True)
    assert ro.statistics().quarantined == 1 and quarantine(ro) == {kb(ro, "k3")}
    assert not ro.wants_probe("b")
    assert answer(ro, "b", [kb(ro, "k3")]) == 0 and ro.statistics().quarantined == 1
