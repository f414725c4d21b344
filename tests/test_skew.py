"""The clock judge (crdt_kv/skew.py): who is the odd one out, and the write fence."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crdt_kv
from crdt_kv.errors import ClockSkewError
from crdt_kv.hlc import HLC, pack
from crdt_kv.protocol import PeerLink, Session
from crdt_kv.skew import ClockJudge
from crdt_kv.testing import ManualClock

HOUR = 3_600_000
T0 = 1_800_000_000_000


def clock_at(ms: int) -> tuple[ManualClock, HLC]:
    c = ManualClock(ms)
    return c, HLC(c, max_offset_ms=500)


def test_in_bound_stamps_pass_and_change_nothing() -> None:
    _, hlc = clock_at(T0)
    judge = ClockJudge(max_offset_ms=500)
    assert judge.judge("a", pack(T0 + 400, 0), hlc) is None
    assert hlc.fence is None and hlc.lag_ms == 0
    assert judge.samples["a"].offset_ms == 400


def test_one_peer_ahead_cannot_be_told_from_us_behind() -> None:
    _, hlc = clock_at(T0)
    judge = ClockJudge(max_offset_ms=500)
    why = judge.judge("a", pack(T0 + HOUR, 0), hlc)
    assert why is not None and "cannot tell" in why and f"{HOUR} ms ahead" in why
    assert hlc.fence is None and hlc.lag_ms == 0


def test_behind_most_peers_accepts_and_fences_writes() -> None:
    clock, hlc = clock_at(T0 - HOUR)  # our clock stepped an hour back
    judge = ClockJudge(max_offset_ms=500)
    assert judge.judge("a", pack(T0, 0), hlc) is not None  # one peer: refused
    assert judge.judge("b", pack(T0 + 10, 0), hlc) is None  # two of two ahead: we are behind
    assert hlc.fence is not None and hlc.fence[0] == "behind"
    assert abs(hlc.lag_ms - HOUR) <= 10
    hlc.update(pack(T0 + 10, 0))  # the stamp now passes the receive rule
    judge.judge("a", pack(T0 + 20, 0), hlc)
    hlc.check(pack(T0 + 20, 0))
    with pytest.raises(ClockSkewError, match=r"ms behind of most of its peers"):
        hlc.check_write()
    clock.now = T0 + 5  # the wall clock is fixed: the fence lifts at the next write
    hlc.check_write()
    assert hlc.fence is None and hlc.lag_ms == 0


def test_peer_ahead_of_most_is_refused() -> None:
    _, hlc = clock_at(T0)
    judge = ClockJudge(max_offset_ms=500)
    assert judge.judge("a", pack(T0 + 100, 0), hlc) is None
    assert judge.judge("b", pack(T0 - 100, 0), hlc) is None
    why = judge.judge("rogue", pack(T0 + HOUR, 0), hlc)
    assert why is not None and "odd one out" in why and "1 of 3" in why
    assert hlc.fence is None and hlc.lag_ms == 0


def test_ahead_of_most_fences_our_writes_until_in_bound() -> None:
    clock, hlc = clock_at(T0 + HOUR)
    hlc.now()  # a stamp an hour ahead of the others
    judge = ClockJudge(max_offset_ms=500)
    judge.judge("a", pack(T0, 0), hlc)
    assert hlc.fence is None  # one peer: cannot tell
    judge.judge("b", pack(T0, 0), hlc)
    assert hlc.fence is not None and hlc.fence[0] == "ahead"
    with pytest.raises(ClockSkewError, match="ahead of most of its peers"):
        hlc.check_write()
    clock.now = T0 + HOUR + 5
    judge.judge("a", pack(T0 + HOUR, 0), hlc)  # the others got here
    judge.judge("b", pack(T0 + HOUR, 0), hlc)
    assert hlc.fence is None
    hlc.check_write()


def test_old_samples_do_not_count() -> None:
    clock, hlc = clock_at(T0)
    judge = ClockJudge(max_offset_ms=500, window_ms=60_000)
    judge.judge("a", pack(T0 + HOUR, 0), hlc)
    clock.now = T0 + 120_000
    why = judge.judge("b", pack(T0 + 120_000 + HOUR, 0), hlc)
    assert why is not None and "cannot tell" in why


@given(
    offsets=st.lists(st.integers(-2 * HOUR, 2 * HOUR), min_size=1, max_size=9),
    probe=st.integers(-2 * HOUR, 2 * HOUR),
)
def test_verdicts_follow_the_majority(offsets: list[int], probe: int) -> None:
    """A stamp is accepted iff it is in bound, or most peers measured (at least two,
    the probe included) are out of bound ahead and the probe is within the bound of
    their median; nothing out of bound is ever accepted otherwise."""
    _, hlc = clock_at(T0)
    judge = ClockJudge(max_offset_ms=500)
    for i, off in enumerate(offsets):
        judge.judge(f"p{i}", pack(T0 + off, 0), hlc)
    lag_before = hlc.lag_ms
    why = judge.judge("probe", pack(T0 + probe, 0), hlc)
    fresh = [*offsets, probe]
    ahead = [o for o in fresh if o > 500]
    if probe <= 500 + lag_before:
        assert why is None
    elif 2 * len(ahead) <= len(fresh):
        assert why is not None
    if why is None and probe > 500:
        assert 2 * len(ahead) > len(fresh) or lag_before > 0
        hlc.check(pack(T0 + probe, 0))  # the clock now takes it


def _store(peer: str, clock: ManualClock) -> crdt_kv.Store:
    return crdt_kv.open(None, backend="memory", peer_id=peer, clock=clock, rng=random.Random(1))


def test_store_behind_its_peers_pulls_and_refuses_local_writes() -> None:
    """Store level: the Hello stamps of two peers an hour ahead make the store accept
    them and fence its writes, naming the measured offset; the put writes nothing."""
    clock = ManualClock(T0 - HOUR)
    s = _store("late", clock)
    s.put("before", 1)
    with pytest.raises(ClockSkewError):
        s.observe_clock(pack(T0, 0), peer="a")
    s.observe_clock(pack(T0, 0), peer="b")
    s.observe_clock(pack(T0, 1), peer="a")
    with pytest.raises(ClockSkewError, match=r"\d+ ms behind"):
        s.put("during", 2)
    b = s.batch()
    b.put("x", 1)
    with pytest.raises(ClockSkewError):
        b.commit()
    assert "during" not in s and "x" not in s and s.get("before") == 1
    clock.now = T0
    s.put("after", 3)
    assert s.get("after") == 3
    s.close()


def test_late_hellos_are_not_taken_for_slow_clocks() -> None:
    """Regression (the chaos run): every clock agrees, but the peers' Hellos arrive 1.6 s
    after they were stamped. Judged on their stamps alone, this node seems 1.6 s ahead of
    most peers and fences its writes; crediting the time the Hellos may have been in
    flight, it does not. A lead beyond that credit is still fenced."""
    clock = ManualClock(T0)
    s = _store("a", clock)
    s.put("k", 1)
    late = pack(T0 - 1600, 0)
    for peer in ("b", "c"):
        s.observe_clock(late, peer=peer, transit_ms=1600)
    assert s.clock_judge.samples["b"].lead_ms == 0
    assert s.clock_judge.samples["b"].transit_ms == 1600
    s.put("k", 2)
    for peer in ("b", "c"):
        s.observe_clock(late, peer=peer, transit_ms=1000)  # 600 ms no transit explains
    with pytest.raises(ClockSkewError, match="600 ms ahead of most of its peers"):
        s.put("k", 3)
    for peer in ("b", "c"):
        s.observe_clock(late, peer=peer)  # no credit: today's verdict
    with pytest.raises(ClockSkewError, match="1600 ms ahead"):
        s.put("k", 4)
    assert s.get("k") == 2
    s.close()


def test_transit_gives_no_credit_to_a_peer_ahead() -> None:
    """A delay only makes a peer look less far ahead: the refusal of a peer ahead of
    most others ignores the credit."""
    _, hlc = clock_at(T0)
    judge = ClockJudge(max_offset_ms=500)
    judge.judge("a", pack(T0, 0), hlc)
    judge.judge("b", pack(T0, 0), hlc)
    why = judge.judge("rogue", pack(T0 + 2000, 0), hlc, transit_ms=10_000)
    assert why is not None and "odd one out" in why
    with pytest.raises(ValueError, match="'a'"):
        judge.judge("a", pack(T0, 0), hlc, transit_ms=-1)


@pytest.mark.parametrize(("arrival_s", "fenced"), [(2.0, False), (0.2, True)])
def test_link_credits_a_hello_held_up_in_transit(arrival_s: float, fenced: bool) -> None:
    """Through the link: connections open at 0; the peers' Hellos, stamped 1.6 s before
    this node's newest stamp, arrive at ``arrival_s``. Held 2 s they may simply have been
    in flight; arriving after 0.2 s they show clocks 1.4 s behind, and the node fences."""
    clock = ManualClock(T0)
    hellos = []
    for peer in ("b", "c"):
        other = _store(peer, clock)
        session = Session(other, repair=False)
        session.start()
        hellos.append(session.data_to_send())
        other.close()
    clock.now = T0 + 1600
    a = _store("a", clock)
    a.put("k", 1)
    for hello in hellos:
        link = PeerLink(a, role="once", rng=random.Random(1), now=0.0)
        link.connection_made(0.0)
        link.receive_data(hello, arrival_s)
        assert link.peer_id is not None and link.error is None
    if fenced:
        with pytest.raises(ClockSkewError, match="ahead of most of its peers"):
            a.put("k", 2)
    else:
        a.put("k", 2)
    a.close()
