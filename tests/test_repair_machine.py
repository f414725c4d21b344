"""The sans-I/O repair machine without trio: two :class:`Reconciler` objects exchanging
bytes in memory over fake and real stores (crdt_kv/repair/machine.py)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repair_helpers import BASE, filled, lww, pump, run_pair

import crdt_kv
from crdt_kv import ConfigError, LocalProtocolError, Store
from crdt_kv.repair import Reconciler
from crdt_kv.repair.work import ApplyEntries, Describe, Fingerprints
from crdt_kv.testing import ManualClock
from crdt_kv.testing.ranges import DictSource


def mem(peer: str, clock: ManualClock, conflicts: str = "lww") -> Store:
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock, conflicts=conflicts)


def twins(n: int, clock: ManualClock, conflicts: str = "lww") -> tuple[Store, Store]:
    """Two stores holding the same ``n`` keys (b got a's states by apply_raw)."""
    a, b = mem("a", clock, conflicts), mem("b", clock, conflicts)
    with a.batch() as w:
        for i in range(n):
            w.put(f"k{i}", i)
    b.apply_raw(a.raw_entries(f"k{i}".encode() for i in range(n)))
    assert a.digest() == b.digest()
    return a, b


def versions(s: Store, key: str) -> list[tuple[Any, ...]]:
    """What ``get_all`` returns, without the local change-log positions."""
    return [(e.key, e.value, e.hlc, e.peer, e.deleted) for e in s.get_all(key)]


def total(r: Any) -> int:
    return int(r.bytes_sent + r.bytes_received)


# --- the machine by hand ----------------------------------------------------------------


def test_machine_asks_for_its_hello_first_and_waits() -> None:
    m = Reconciler()
    assert m.storage_request() is None
    m.start()
    assert isinstance(m.storage_request(), Describe)
    assert m.data_to_send() == b""
    src = DictSource("a")
    out = pump(m, src)
    assert out[4:5] == b"\x8b"  # one CBOR array of 11: the hello
    assert m.storage_request() is None and not m.finished
    with pytest.raises(LocalProtocolError):
        m.storage_done(None)
    with pytest.raises(LocalProtocolError):
        m.start()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="item_threshold"):
        Reconciler(item_threshold=0)
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        Reconciler(max_frame_bytes=100)


def test_identical_sources_finish_at_the_hellos() -> None:
    a, b = filled("a", 300), filled("b", 300)
    ra, rb = run_pair(a, b)
    for r in (ra, rb):
        assert r.in_sync and r.round_trips <= 1
        assert r.entries_sent == r.entries_received == 0
    assert ra.leader and not rb.leader
    assert ra.bytes_sent == rb.bytes_received


def test_one_difference_among_few_keys_over_fakes() -> None:
    a, b = filled("a", 400), filled("b", 400)
    e = lww("k7", b"newer", BASE + 10**6, "a")
    a.states[e.key] = e
    ra, rb = run_pair(a, b)
    assert a.digest() == b.digest() and b.states[e.key] == e
    assert rb.changed == 1 and ra.changed == 0
    assert ra.round_trips == rb.round_trips <= 3


@pytest.mark.parametrize("newer", ["a", "b"])
def test_one_difference_among_10000_keys(newer: str) -> None:
    clock = ManualClock()
    a, b = twins(10_000, clock)
    clock.advance(5)
    (a if newer == "a" else b).put("k4242", "changed")
    ra, rb = run_pair(a, b)
    assert a.digest() == b.digest() and a.get("k4242") == b.get("k4242") == "changed"
    assert ra.round_trips == rb.round_trips <= 4
    assert total(ra) == total(rb) <= 2048
    assert ra.entries_received + rb.entries_received <= 2


def test_one_side_empty_ships_everything_in_two_round_trips() -> None:
    clock = ManualClock()
    a, _ = twins(3000, clock)
    b = mem("b", clock)
    ra, rb = run_pair(a, b)
    assert a.digest() == b.digest() and len(b) == 3000
    assert ra.entries_sent == 3000 and rb.entries_sent == 0
    assert ra.round_trips <= 2


def _bytes_for(d: int, n: int) -> int:
    clock = ManualClock()
    a, b = twins(n, clock)
    rng = random.Random(d)
    clock.advance(5)
    for i in rng.sample(range(n), d):
        (a if i % 2 else b).put(f"k{i}", "changed")
    ra, _ = run_pair(a, b)
    assert a.digest() == b.digest()
    return total(ra)


def test_cost_grows_about_d_log_n() -> None:
    n = 20_000
    costs = {d: _bytes_for(d, n) for d in (1, 10, 100)}
    per_diff = {d: c / d for d, c in costs.items()}
    assert per_diff[100] < per_diff[10] < per_diff[1]  # fixed costs spread out
    bound = 600 * math.log(n, 16)  # bytes per difference and tree level, generous
    assert all(c <= bound * d + 1024 for d, c in costs.items()), costs


def test_both_directions_differ() -> None:
    clock = ManualClock()
    a, b = twins(500, clock)
    clock.advance(3)
    a.put("only-a", 1)
    b.put("only-b", 2)
    a.put("k1", "a wins")  # stamped before b's: b's k1 wins
    b.delete("k2")
    clock.advance(1)
    b.put("k1", "b wins")
    ra, rb = run_pair(a, b)
    assert a.digest() == b.digest()
    for s in (a, b):
        assert (s.get("only-a"), s.get("only-b"), s.get("k1"), s.get("k2")) == (
            1,
            2,
            "b wins",
            None,
        )
    assert ra.entries_received >= 2 and rb.entries_received >= 2


def test_siblings_states_join() -> None:
    clock = ManualClock()
    a, b = twins(200, clock, "siblings")
    clock.advance(2)
    a.put("k3", "from a")
    b.put("k3", "from b")
    b.put("new", "b only")
    run_pair(a, b)
    assert a.digest() == b.digest()
    for s in (a, b):
        assert sorted(e.value for e in s.get_all("k3")) == ["from a", "from b"]
        assert s.get("new") == "b only"


def test_absence_wins_drops_a_state_the_peer_collected() -> None:
    a, b = filled("a", 100), filled("b", 100)
    old = lww("gone", b"stale", BASE + 50, "w")
    a.states[old.key] = old
    b.gc_horizon = BASE + 1000
    ra, rb = run_pair(a, b)
    assert old.key not in a.states and old.key not in b.states
    assert ra.dropped == 1 and ra.entries_sent == 0 and rb.refused == 0
    assert a.digest() == b.digest()


def test_absence_does_not_win_over_a_newer_state() -> None:
    a, b = filled("a", 100), filled("b", 100)
    new = lww("fresh", b"v", BASE + 5000, "w")
    a.states[new.key] = new
    b.gc_horizon = BASE + 1000
    ra, _ = run_pair(a, b)
    assert b.states[new.key] == new and ra.dropped == 0


def test_apply_refuses_old_states_of_keys_not_held() -> None:
    src = filled("a", 5)
    src.gc_horizon = BASE + 1000
    held = lww("k1", b"merged", BASE + 10, "z")
    entries = (lww("lost", b"x", BASE + 999, "z"), lww("kept", b"y", BASE + 1000, "z"), held)
    changed, refused = ApplyEntries(entries).perform(src)
    assert (changed, refused) == (2, 1)
    assert b"lost" not in src.states and b"kept" in src.states


def test_fingerprints_work_reads_ranges() -> None:
    src = filled("a", 50)
    (whole,) = Fingerprints(((0, 1 << 64),)).perform(src)
    assert whole == (int.from_bytes(src.digest(), "big"), 50)


def test_small_frames_split_every_turn() -> None:
    clock = ManualClock()
    a, _ = twins(400, clock)
    b = mem("b", clock)
    ra, rb = run_pair(a, b, max_frame_bytes=4096)
    assert rb.entries_received == 400
    assert a.digest() == b.digest() and ra.entries_sent == 400


# --- properties ------------------------------------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from("ab"), st.integers(0, 30), st.none() | st.integers(0, 9)),
    max_size=60,
)


def _reference(conflicts: str, clock: ManualClock, *stores: Store) -> Store:
    ref = mem("ref", clock, conflicts)
    for s in stores:
        ref.apply_raw(list(s.raw_changes(0)))
    return ref


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, conflicts=st.sampled_from(["lww", "siblings"]), threshold=st.integers(1, 4))
def test_random_stores_reconcile_to_the_union(
    ops: list[tuple[str, int, int | None]], conflicts: str, threshold: int
) -> None:
    clock = ManualClock()
    a, b = mem("a", clock, conflicts), mem("b", clock, conflicts)
    for who, k, v in ops:
        s = a if who == "a" else b
        if v is None:
            s.delete(f"k{k}")
        else:
            s.put(f"k{k}", v)
        clock.advance(v or 0)
    ref = _reference(conflicts, clock, a, b)
    run_pair(a, b, item_threshold=threshold)
    assert a.digest() == b.digest() == ref.digest()
    for k in range(31):
        key = f"k{k}"
        assert a.get(key) == b.get(key) == ref.get(key)
        assert versions(a, key) == versions(b, key) == versions(ref, key)


# --- quarantined keys nobody holds (spec/reconcile.md section 6, "Lost keys") -------------


def lost_on(src: DictSource, key: str) -> bytes:
    """``src`` loses its state of ``key`` and quarantines it."""
    k = key.encode()
    del src.states[k]
    src.quarantine.add(k)
    return k


def test_equal_digests_with_a_quarantined_key_still_reconcile() -> None:
    a, b = filled("a", 50), filled("b", 50)
    a.members = {"b"}
    del b.states[b"k7"]
    lost_on(a, "k7")  # now both hold the same states; a's count is one higher
    assert a.digest() == b.digest()
    ra, rb = run_pair(a, b)
    assert not ra.in_sync and not rb.in_sync
    assert a.quarantine == set() and a.answered_by == {}


def test_a_key_is_released_only_when_every_member_said_it_holds_none() -> None:
    a, b, c = filled("a", 40), filled("b", 40), filled("c", 40)
    a.members = {"b", "c"}
    k = lost_on(a, "k3")
    del b.states[k], c.states[k]
    run_pair(a, b)
    assert a.quarantine == {k} and a.answered_by == {k: {"b"}}
    run_pair(a, c)
    assert a.quarantine == set()


def test_a_member_that_holds_the_key_sends_it_instead() -> None:
    a, b = filled("a", 40), filled("b", 40)
    a.members = {"b"}
    k = lost_on(a, "k3")
    ra, _ = run_pair(a, b)
    assert a.quarantine == set() and a.states[k] == b.states[k] and ra.changed == 1


def test_a_shipped_state_is_one_member_s_answer_not_a_release() -> None:
    """One member's state may lack a version another member holds: the key stays
    quarantined until every member answered (here ``b`` ships an older state, ``c`` the
    newest), and the state each shipped is merged."""
    a, b, c = filled("a", 40), filled("b", 40), filled("c", 40)
    a.members = {"b", "c"}
    k = lost_on(a, "k3")
    b.states[k] = lww("k3", b"older", BASE + 5_000, "b")
    c.states[k] = lww("k3", b"newest", BASE + 9_000, "c")
    run_pair(a, b)
    assert a.quarantine == {k} and a.answered_by == {k: {"b"}} and a.states[k] == b.states[k]
    run_pair(a, c)
    assert a.quarantine == set() and a.states[k] == c.states[k]


@pytest.mark.parametrize("same_digest", [True, False])
def test_two_replicas_that_lost_the_same_key_release_it(same_digest: bool) -> None:
    """Both list the key with hash 0, so no count or sum differs: the probes still ask."""
    a, b = filled("a", 40), filled("b", 40)
    a.members, b.members = {"b"}, {"a"}
    k = lost_on(a, "k5")
    lost_on(b, "k5")
    if not same_digest:
        a.states[b"extra"] = lww("extra", b"x", BASE, "w")
    run_pair(a, b)
    assert a.quarantine == set() and b.quarantine == set()
    assert k not in a.states and k not in b.states


def test_a_peer_that_lost_the_key_but_holds_a_newer_write_sends_it() -> None:
    a, b = filled("a", 40), filled("b", 40)
    a.members = {"b"}
    k = lost_on(a, "k5")
    b.states[k] = lww("k5", b"newer", BASE + 10_000, "b")
    run_pair(a, b)
    assert a.quarantine == set() and a.states[k] == b.states[k]


@settings(max_examples=60, deadline=None)
@given(
    held=st.lists(st.sampled_from(["ab", "a", "b", ""]), min_size=1, max_size=40),
    lost=st.data(),
    threshold=st.integers(1, 16),
)
def test_one_reconciliation_settles_every_quarantine(
    held: list[str], lost: st.DataObject, threshold: int
) -> None:
    """Two members, random keys held by either, random keys lost (quarantined) on either
    or both: after one reconciliation no key is quarantined, a lost key the other held is
    back, and both hold the same states."""
    a, b = DictSource("a"), DictSource("b")
    a.members, b.members = {"b"}, {"a"}
    for i, who in enumerate(held):
        e = lww(f"k{i}", b"v", BASE + i, "w")
        for src, name in ((a, "a"), (b, "b")):
            if name in who:
                src.states[e.key] = e
    keys = [f"k{i}".encode() for i in range(len(held))]
    for src in (a, b):
        for k in lost.draw(st.lists(st.sampled_from(keys), unique=True), label=src.peer_id):
            src.states.pop(k, None)
            src.quarantine.add(k)
    union = {**a.states, **b.states}
    run_pair(a, b, item_threshold=threshold)
    assert a.quarantine == b.quarantine == set()
    assert a.states == b.states == union
