"""Protocol version 3: the Hello's membership gossip (``gc``) and what sessions tell the
membership table (crdt_kv/horizon.py) — a Hello is a contact, a completed pull moves V."""

from __future__ import annotations

import cbor2
import pytest

import crdt_kv
from crdt_kv.horizon import GossipRow
from crdt_kv.protocol import (
    PROTOCOL_VERSION,
    AbortCode,
    Hello,
    Session,
    SessionFailed,
    decode_message,
    encode_frame,
    encode_message,
)
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from tests.test_protocol_session import frames, link, sync

T0 = 1_700_000_000_000


def mem(peer: str, clock: ManualClock) -> Store:
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock)


def rows(s: Store) -> dict[str, tuple[int, int, int, bool]]:
    return {m.peer: (m.received_through, m.seen_ms, m.reported_d, m.active) for m in s.members()}


def test_hello_with_gossip_round_trips() -> None:
    gc = (GossipRow("alice", 5 << 16, T0, 3), GossipRow("\u00e9", (1 << 64) - 1, (1 << 48) - 1, 0))
    h = Hello(PROTOCOL_VERSION, "default", "alice", b"\x01" * 16, T0 << 16, 3, True, True,
              False, "utf-8", "cbor", 100, "lww", gc)  # fmt: skip
    payload = encode_message(h)
    assert cbor2.loads(payload)[12] == [[g.peer, g.v, g.seen_ms, g.d] for g in gc]
    assert decode_message(payload) == h
    # A Hello of 12 elements decodes with an empty table.
    short = cbor2.dumps(cbor2.loads(payload)[:12])
    assert decode_message(short).gc == ()


def test_our_hello_carries_our_own_row_first() -> None:
    clock = ManualClock(T0)
    a = mem("a", clock)
    a.membership.heard("x", [])
    s = Session(a)
    s.start()
    (h,) = frames(s.data_to_send())
    assert isinstance(h, Hello) and h.version == 3
    assert h.gc[0] == GossipRow("a", h.hlc, T0, 0)  # x holds our D at 0: nothing pulled
    assert [g.peer for g in h.gc] == ["a", "x"]


def test_version_2_peer_is_refused_with_code_3_naming_both_versions() -> None:
    a = mem("a", ManualClock(T0))
    s = Session(a)
    s.start()
    s.data_to_send()
    old = Hello(2, "default", "b", b"\x01" * 16, T0 << 16, 0, True, True, False,
                "utf-8", "cbor", 100, "lww")  # fmt: skip
    payload = cbor2.dumps(cbor2.loads(encode_message(old))[:12])  # what a v2 peer sends
    events = s.receive_data(len(payload).to_bytes(4, "big") + payload)
    (fail,) = [e for e in events if isinstance(e, SessionFailed)]
    assert "speaks protocol 2, we speak 3" in str(fail.error)
    (abort,) = frames(s.data_to_send())
    assert getattr(abort, "code", None) == AbortCode.INCOMPATIBLE
    assert rows(a) == {}  # an incompatible peer is not a member


def test_completed_pull_moves_received_through_and_the_horizon() -> None:
    clock = ManualClock(T0)
    a, b = mem("a", clock), mem("b", clock)
    b.put("k", 1)
    lk = sync(a, b)
    hello_b = next(m for m in lk.sent_b if isinstance(m, Hello))
    hello_a = next(m for m in lk.sent_a if isinstance(m, Hello))
    assert rows(a)["b"] == (hello_b.hlc, T0, hello_b.gc[0].d, True)
    assert rows(b)["a"] == (hello_a.hlc, T0, hello_a.gc[0].d, True)
    # Before the sync each knew no member, so each reported D = 0: nothing received yet.
    assert hello_b.gc[0].d == 0
    assert a.membership.horizon(10) == 0
    # A later sync reports D = what the other received of us, and the horizon follows.
    clock.advance(1000)
    lk2 = sync(a, b)
    hello_b2 = next(m for m in lk2.sent_b if isinstance(m, Hello))
    assert hello_b2.gc[0].d == hello_a.hlc
    assert rows(a)["b"][0] == hello_b2.hlc
    assert a.membership.horizon(0) == min(hello_b2.hlc, hello_a.hlc)


def test_push_only_session_is_a_contact_but_not_a_pull() -> None:
    clock = ManualClock(T0)
    a, b = mem("a", clock), mem("b", clock)
    sync(a, b, a_mode="push", b_mode="pull")
    assert rows(a)["b"] == (0, T0, rows(a)["b"][2], True)  # we received nothing of b
    assert rows(b)["a"][0] > 0
    assert a.membership.horizon(0) == 0


def test_pull_counts_only_once_a_done_batch_arrived() -> None:
    clock = ManualClock(T0)
    a, b = mem("a", clock), mem("b", clock)
    for i in range(30):
        b.put(f"k{i}", i)
    lk = link(a, b, max_batch_entries=10, window=1)
    lk.a_to_b()
    lk.b_to_a()  # b's Hello reaches a
    assert rows(a)["b"][0] == 0 and rows(a)["b"][3]
    lk.a_to_b()  # a's Request
    lk.b_to_a()  # b's first batch (not done)
    assert rows(a)["b"][0] == 0
    lk.run()
    assert rows(a)["b"][0] > 0


def test_gossip_spreads_members_through_a_third_peer() -> None:
    clock = ManualClock(T0)
    a, b, c = mem("a", clock), mem("b", clock), mem("c", clock)
    sync(a, b)
    sync(b, c)
    # c learned of a from b's Hello, and what b had received of a.
    assert rows(c)["a"][0] == rows(b)["a"][0]
    assert rows(c)["a"][3]
    assert c.membership.horizon(0) <= rows(c)["a"][2]


@pytest.mark.parametrize("n", [1, 3])
def test_hello_frame_is_bounded_by_the_gossip_limit(n: int) -> None:
    clock = ManualClock(T0)
    a = mem("a", clock)
    for i in range(n):
        a.membership.heard(f"p{i}", [])
    s = Session(a)
    s.start()
    (h,) = frames(s.data_to_send())
    assert isinstance(h, Hello) and len(h.gc) == n + 1
    assert encode_frame(h)[4:] == encode_message(h)
