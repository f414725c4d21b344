"""The collection horizon and explicit membership (crdt_kv/horizon.py, store/members.py)."""

from __future__ import annotations

import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crdt_kv
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.errors import ConfigError, CorruptionError
from crdt_kv.horizon import MAX_GOSSIP_ROWS, GossipRow, MemberRow, Membership
from crdt_kv.testing import ManualClock

DAY = 24 * 3600 * 1000
T0 = 1_700_000_000_000
PEERS = ("a", "b", "c", "d")


def stamp(ms: int) -> int:
    return ms << 16


def test_a_replica_that_never_had_a_member_has_received_nothing() -> None:
    """Its horizon stays 0: one of its own would refuse the history of the cluster it
    later joins."""
    m = Membership("me")
    assert m.received_through(T0, stamp(T0)) == 0
    assert m.horizon(T0, stamp(T0), 0) == 0


def test_all_members_forgotten_horizon_is_own_clock_minus_grace() -> None:
    m = Membership("me")
    m.heard("a", [], T0)
    m.forget("a", T0 + 1)
    assert m.received_through(T0 + 1, stamp(T0)) == stamp(T0)
    assert m.horizon(T0 + 1, stamp(T0), 1000) == stamp(T0 - 1000)
    assert m.horizon(T0 + 1, stamp(T0), T0 + 5) == 0


def test_heard_member_without_pull_holds_horizon_at_zero() -> None:
    m = Membership("me")
    m.heard("a", [GossipRow("a", stamp(T0), T0, stamp(T0))], T0)
    assert m.members(T0) == ["a"]
    assert m.received_through(T0, stamp(T0)) == 0  # nothing pulled from a yet
    assert m.horizon(T0, stamp(T0), 0) == 0


def test_completed_pull_moves_v_and_the_horizon() -> None:
    m = Membership("me")
    table = [GossipRow("a", stamp(T0), T0, stamp(T0 - 50)), GossipRow("b", stamp(T0 - 10), T0, 7)]
    m.heard("a", table, T0)
    m.pulled("a", stamp(T0), table, T0)
    assert m.rows["a"].v == stamp(T0)
    assert m.rows["b"].v == stamp(T0 - 10)  # learned through a
    assert m.received_through(T0, stamp(T0 + 1)) == stamp(T0 - 10)
    # b's own D was reported as 7: the horizon waits for b.
    assert m.horizon(T0, stamp(T0 + 1), 0) == 7
    m.heard("b", [GossipRow("b", stamp(T0), T0, stamp(T0 - 20))], T0)
    assert m.horizon(T0, stamp(T0 + 1), 0) == stamp(T0 - 50)
    assert m.horizon(T0, stamp(T0 + 1), 5) == stamp(T0 - 55)


def test_own_row_in_a_table_is_ignored() -> None:
    m = Membership("me")
    m.pulled("a", 5, [GossipRow("me", 10**9, T0, 10**9)], T0)
    assert "me" not in m.rows
    assert m.members(T0) == ["a"]


def test_expiry_releases_the_horizon() -> None:
    m = Membership("me", expiry_ms=7 * DAY)
    m.heard("a", [], T0)
    m.pulled("a", stamp(T0), [GossipRow("a", stamp(T0), T0, stamp(T0))], T0)
    m.heard("b", [], T0)  # never pulled from: holds the horizon at 0
    assert m.horizon(T0 + DAY, stamp(T0 + DAY), 0) == 0
    later = T0 + 7 * DAY + 1
    assert m.members(later) == ["a", "b"]  # we heard from nobody: we may be the one cut off
    m.heard("c", [], later)
    m.pulled("c", stamp(later), [], later)
    assert m.members(later) == ["c"]  # news from c: a and b expire
    assert m.horizon(later, stamp(later), 0) == 0  # c's own D is not known yet
    m.heard("c", [GossipRow("c", stamp(later), later, stamp(later - 5))], later)
    assert m.horizon(later, stamp(later + 9), 0) == stamp(later - 5)
    m.heard("b", [], later)
    assert m.members(later) == ["b", "c"]


def test_an_isolated_replica_expires_nobody() -> None:
    m = Membership("me", expiry_ms=DAY)
    m.heard("a", [], T0)
    m.pulled("a", stamp(T0), [GossipRow("a", stamp(T0), T0, stamp(T0 - 1))], T0)
    far = T0 + 30 * DAY
    assert m.members(far) == ["a"]
    assert m.horizon(far, stamp(far), 0) == stamp(T0 - 1)  # frozen, not our own clock


def test_forget_until_seen_again() -> None:
    m = Membership("me")
    m.heard("b", [], T0)
    assert m.forget("b", T0 + 10) == {"b"}
    assert m.members(T0 + 10) == []
    # Gossip that saw b before the forget does not bring it back.
    m.heard("a", [GossipRow("b", 0, T0 + 5, 0)], T0 + 20)
    assert m.members(T0 + 20) == ["a"]
    m.heard("a", [GossipRow("b", 0, T0 + 30, 0)], T0 + 40)
    assert m.members(T0 + 40) == ["a", "b"]
    assert m.forget("me", T0) == set()


def test_gossip_seen_ms_is_clamped_to_our_clock() -> None:
    m = Membership("me", expiry_ms=DAY)
    m.heard("a", [GossipRow("ghost", 0, T0 + 100 * DAY, 0)], T0)
    assert m.rows["ghost"].seen_ms == T0
    m.heard("a", [], T0 + 2 * DAY)
    assert "ghost" not in m.members(T0 + 2 * DAY)


def test_gossip_table_is_own_row_then_members_most_recent_first_and_bounded() -> None:
    m = Membership("me")
    for i in range(MAX_GOSSIP_ROWS + 5):
        m.heard(f"p{i}", [], T0 + i)
    rows = m.gossip(T0 + 10**4, 99)
    assert len(rows) == MAX_GOSSIP_ROWS
    assert rows[0] == GossipRow("me", 99, T0 + 10**4, 0)
    assert rows[1].peer == f"p{MAX_GOSSIP_ROWS + 4}"
    assert [r.seen_ms for r in rows[1:]] == sorted((r.seen_ms for r in rows[1:]), reverse=True)


def test_bad_expiry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expiry"):
        Membership("me", expiry_ms=0)


rows_st = st.lists(
    st.builds(
        GossipRow,
        st.sampled_from((*PEERS, "me")),
        st.integers(0, 1 << 40),
        st.integers(T0 - DAY, T0 + DAY),
        st.integers(0, 1 << 40),
    ),
    max_size=6,
)
ops_st = st.lists(
    st.tuples(
        st.sampled_from(("heard", "pulled", "forget")),
        st.sampled_from(PEERS),
        st.integers(0, 1 << 40),
        rows_st,
        st.integers(0, 3 * DAY),
    ),
    max_size=20,
)


def _run(m: Membership, ops: list[tuple[str, str, int, list[GossipRow], int]]) -> int:
    now = T0
    for kind, peer, hlc, table, dt in ops:
        now += dt
        if kind == "heard":
            m.heard(peer, table, now)
        elif kind == "pulled":
            m.pulled(peer, hlc, table, now)
        else:
            m.forget(peer, now)
    return now


@settings(max_examples=200, deadline=None)
@given(ops_st, st.integers(0, 10**6))
def test_horizon_never_exceeds_any_active_members_reported_d(ops: list, grace: int) -> None:
    m = Membership("me", expiry_ms=2 * DAY)
    now = _run(m, ops)
    own = stamp(now)
    h = m.horizon(now, own, grace)
    d = m.received_through(now, own)
    assert h <= d
    for p in m.members(now):
        assert h <= m.rows[p].reported_d
        assert d <= m.rows[p].v


@settings(max_examples=200, deadline=None)
@given(ops_st, rows_st, st.sampled_from(PEERS), st.integers(0, 1 << 40))
def test_merges_are_monotone_and_idempotent(ops: list, table: list, peer: str, hlc: int) -> None:
    m = Membership("me", expiry_ms=2 * DAY)
    now = _run(m, ops)
    before = {p: r.as_list() for p, r in m.rows.items()}
    m.pulled(peer, hlc, table, now)
    m.heard(peer, table, now)
    after = {p: r.as_list() for p, r in m.rows.items()}
    for p, (v, seen, d, forgotten, partner) in before.items():
        v2, seen2, d2, forgotten2, partner2 = after[p]
        assert v2 >= v and forgotten2 >= forgotten and (seen2, d2) >= (seen, d)
        assert partner2 >= partner
    assert after[peer][4] == 1  # a Hello or a pull is a session with us
    again = Membership("me", expiry_ms=2 * DAY)
    again.rows = {p: type(r)(*r.as_list()) for p, r in m.rows.items()}
    assert again.pulled(peer, hlc, table, now) == set()
    assert again.heard(peer, table, now) == set()


@settings(max_examples=100, deadline=None)
@given(st.lists(rows_st, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_pulls_commute(tables: list[list[GossipRow]], rnd: random.Random) -> None:
    def table_after(order: list[list[GossipRow]]) -> dict[str, list[int]]:
        m = Membership("me")
        for t in order:
            m.pulled("a", 1, t, T0 + DAY)
        return {p: r.as_list() for p, r in m.rows.items()}

    shuffled = list(tables)
    rnd.shuffle(shuffled)
    assert table_after(tables) == table_after(shuffled)


# --- the store: persistence and the public API ------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "rocksdb"])
def test_store_members_persist_across_reopen(tmp_path: pathlib.Path, backend: str) -> None:
    clock = ManualClock(T0)
    path = str(tmp_path / "db")

    def open_store() -> crdt_kv.Store:
        return crdt_kv.open(path, backend=backend, peer_id="me", clock=clock, rng=random.Random(1))

    s = open_store()
    table = (GossipRow("a", stamp(T0), T0, stamp(T0 - 9)), GossipRow("b", 5, T0 - 1, 3))
    s.membership.heard("a", table)
    s.membership.pulled("a", stamp(T0), table)
    s.forget_peer("b")
    rows = {m.peer: m for m in s.members()}
    assert rows["a"].received_through == stamp(T0) and rows["a"].active
    assert rows["a"].reported_d == stamp(T0 - 9)
    assert rows["b"].received_through == 5 and not rows["b"].active
    s.close()
    s2 = open_store()
    assert {m.peer: m for m in s2.members()} == rows
    assert s2.membership.horizon(0) == min(stamp(T0), stamp(T0 - 9))
    s2.close()


def test_store_membership_horizon_uses_the_store_clock() -> None:
    clock = ManualClock(T0)
    s = crdt_kv.open(backend="memory", peer_id="me", clock=clock, rng=random.Random(1))
    assert s.membership.horizon(1000) == 0  # never had a member
    s.membership.heard("a", [])
    assert s.membership.horizon(0) == 0
    clock.advance(8 * DAY)
    s.forget_peer("a")
    assert s.members()[0].active is False
    assert s.membership.horizon(1000) == stamp(T0 + 8 * DAY - 1000)
    s.close()


def test_corrupt_member_row_is_named() -> None:
    backend = MemoryBackend()
    crdt_kv.open(backend=backend, peer_id="me", clock=ManualClock(T0), rng=random.Random(1))
    backend.write([(b"gx", b"\x01")])
    with pytest.raises(CorruptionError, match="'x'"):
        crdt_kv.open(backend=backend, peer_id="me", clock=ManualClock(T0), rng=random.Random(1))


def test_partners_are_the_active_members_that_had_a_session_with_us() -> None:
    """Gossip makes a member; only its own Hello (a session with us) makes it a partner,
    whose answer a quarantine waits for (``crdt_kv.store.scrub``)."""
    m = Membership("me", expiry_ms=DAY)
    m.heard("a", [GossipRow("a", 5, T0, 5), GossipRow("b", 5, T0, 5)], T0)
    m.pulled("c", 7, [], T0)
    assert m.members(T0) == ["a", "b", "c"] and m.partners(T0) == ["a", "c"]
    m.forget("a", T0 + 1)
    assert m.partners(T0 + 1) == ["c"]
    m.heard("b", [], T0 + 2)
    assert m.partners(T0 + 2) == ["b", "c"]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d", "e", "f"]),
        st.tuples(st.integers(0, 100), st.integers(0, 100)),  # seen_ms, forgotten_ms
        max_size=6,
    ),
    now=st.integers(0, 200),
    expiry=st.integers(1, 60),
)
def test_members_are_exactly_the_active_rows(
    rows: dict[str, tuple[int, int]], now: int, expiry: int
) -> None:
    m = Membership("self", expiry_ms=expiry)
    for peer, (seen, forgotten) in rows.items():
        row = m._row(peer)
        row.seen_ms, row.forgotten_ms, row.v = seen, forgotten, seen + 1
    assert m.members(now) == sorted(p for p in m.rows if m.active(p, now))
    own = m.gossip(now, 10_000)[0]
    assert own.d == min((m.rows[p].v for p in m.members(now)), default=10_000 if rows else 0)


@settings(max_examples=150, deadline=None)
@given(ops_st, st.lists(st.one_of(st.none(), st.integers(0, 1 << 40)), min_size=1, max_size=4))
def test_gossip_rows_reused_across_calls_are_what_a_fresh_table_gossips(
    ops: list, holds: list[int | None]
) -> None:
    """The table keeps each member's last gossip row while its row is unchanged: after any
    heard, pulled or forget, its gossip equals that of a table built from its rows alone."""
    m = Membership("me", expiry_ms=2 * DAY)
    now = T0
    for i, op in enumerate(ops):
        now = _run(m, [op]) - T0 + now
        hold = holds[i % len(holds)]
        rows = {p: MemberRow(*r.as_list()) for p, r in m.rows.items()}
        fresh = Membership("me", expiry_ms=2 * DAY, rows=rows)
        assert m.gossip(now, stamp(now), hold) == fresh.gossip(now, stamp(now), hold)
