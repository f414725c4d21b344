"""Verification after a round and repair inside the session (spec/protocol.md section 10),
over the in-memory session pair of ``test_protocol_session.py``, with real stores."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crdt_kv
from crdt_kv.protocol import (
    Abort,
    AbortCode,
    Batch,
    DivergenceFound,
    Hello,
    RepairFinished,
    Request,
    SyncComplete,
    Verify,
    encode_frame,
)
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from tests.test_protocol_session import failed, frames, link, state, sync


def mem(peer: str, clock: ManualClock, **kw: Any) -> Store:
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock, **kw)


def synced_pair(n: int = 50, **kw: Any) -> tuple[Store, Store, ManualClock]:
    """Two stores that hold the same ``n`` keys and have cursors for each other."""
    clock = ManualClock()
    a, b = mem("a", clock, **kw), mem("b", clock, **kw)
    for i in range(n):
        (a if i % 2 else b).put(f"k{i:03}", i)
    sync(a, b, repair=False)
    assert a.digest() == b.digest()
    return a, b, clock


def lose(s: Store, key: str) -> None:
    """Remove ``key`` from ``s`` without a log entry (bitrot as far as peers can tell): no
    cursor or log will ever carry it back."""
    assert s.drop_collected([key.encode()], below=1 << 64) == 1


def verifies(msgs: list[Any]) -> list[Verify]:
    return [m for m in msgs if isinstance(m, Verify)]


def test_equal_stores_verify_and_do_not_repair() -> None:
    a, b, _ = synced_pair()
    a.put("new", 1)
    lk = sync(a, b)
    [va], [vb] = verifies(lk.sent_a), verifies(lk.sent_b)
    assert va == vb == Verify(a.digest(), True)
    assert lk.a.stats.divergences == lk.b.stats.divergences == 0
    assert lk.a.stats.repairs == lk.b.stats.repairs == 0
    assert SyncComplete() in lk.events_a and SyncComplete() in lk.events_b


def test_divergence_is_found_counted_and_repaired_in_the_same_session() -> None:
    a, b, _ = synced_pair()
    lose(a, "k007")
    assert a.digest() != b.digest()
    lk = sync(a, b)
    assert a.digest() == b.digest() and state(a) == state(b)
    assert a.get("k007") == 7
    for sess, events, peer in ((lk.a, lk.events_a, "b"), (lk.b, lk.events_b, "a")):
        assert sess.stats.divergences == 1 and sess.stats.repairs == 1
        assert DivergenceFound(peer) in events
        [done] = [e for e in events if isinstance(e, RepairFinished)]
        assert not done.first_contact
        assert events[-1] == SyncComplete()
    assert lk.a.stats.repair_entries == 1 and lk.b.stats.repair_entries == 0
    again = sync(a, b)  # repaired entries are the peer's: nothing is echoed back
    assert again.a.stats.entries_sent == again.b.stats.entries_sent == 0
    assert again.a.stats.divergences == 0


def test_divergence_repair_with_deferred_storage() -> None:
    a, b, _ = synced_pair()
    lose(b, "k010")
    lk = link(a, b, defer_storage=True)
    for _ in range(1000):
        moved = False
        for s in (lk.a, lk.b):
            while (req := s.storage_request()) is not None:
                target = lk.events_a if s is lk.a else lk.events_b
                target.extend(s.storage_done(req, req.perform(s.replica)))
                moved = True
        moved = lk.a_to_b() or moved
        moved = lk.b_to_a() or moved
        if not moved:
            break
    assert lk.a.complete and lk.b.complete
    assert a.digest() == b.digest() and b.get("k010") == 10
    assert lk.a.stats.divergences == lk.b.stats.divergences == 1


def test_unclean_side_counts_no_divergence() -> None:
    a, b, _ = synced_pair()
    lose(a, "k003")
    lk = link(a, b)
    lk.a_to_b()  # a's hello
    lk.b_to_a()  # b's hello and request: a pins its head
    a.put("local", 1)  # a changes outside the session: a is not clean
    lk.run()
    assert lk.a.complete and lk.b.complete
    [va], [vb] = verifies(lk.sent_a), verifies(lk.sent_b)
    assert not va.clean and vb.clean and va.digest != vb.digest
    assert lk.a.stats.divergences == lk.b.stats.divergences == 0
    assert lk.a.stats.repairs == 0 and "k003" not in a


def test_applied_changes_keep_a_side_clean() -> None:
    a, b, _ = synced_pair()
    for i in range(5):
        a.put(f"a{i}", i)
        b.put(f"b{i}", i)
    b.put("k001", "b wins")  # an overwrite applied on a
    lk = sync(a, b)
    assert all(v.clean for v in verifies(lk.sent_a) + verifies(lk.sent_b))
    assert lk.a.stats.divergences == 0 and a.digest() == b.digest()


def test_siblings_mixed_rewrites_keep_a_side_clean() -> None:
    a, b, _ = synced_pair(conflicts="siblings")
    a.put("k001", "from a")
    b.put("k001", "from b")  # concurrent: both sides rewrite k001 as a join
    lk = sync(a, b)
    assert all(v.clean for v in verifies(lk.sent_a) + verifies(lk.sent_b))
    assert lk.a.stats.divergences == 0 and a.digest() == b.digest()


def test_verify_before_the_round_ended_fails_the_session() -> None:
    a, b, _ = synced_pair()
    a.put("pending", 1)
    lk = link(a, b)
    lk.a_to_b()
    lk.b_to_a()  # hellos and requests exchanged; a's batch not yet acknowledged
    bad = lk.a.receive_data(encode_frame(Verify(b"\0" * 32, True)))
    [f] = failed(bad)
    assert "unexpected Verify" in str(f.error)
    assert Abort(AbortCode.PROTOCOL, str(f.error)) in frames(lk.a.data_to_send())


def test_repair_request_without_agreement_fails_the_session() -> None:
    a, b, _ = synced_pair()
    lk = link(a, b, b_repair=False)
    lk.a_to_b()
    hello_b = frames(lk.b.data_to_send())[0]  # b's Request is replaced by a forged one
    assert isinstance(hello_b, Hello) and not hello_b.repair
    lk.a.receive_data(encode_frame(hello_b))
    bad = lk.a.receive_data(encode_frame(Request(0, False, None, True)))
    [f] = failed(bad)
    assert "did not agree" in str(f.error)


# --- first contact ------------------------------------------------------------------------


def _first_contact_pair(n: int, d: int) -> tuple[Store, Store]:
    """Two stores sharing ``n`` identical keys (from a common source, so no cursor links
    them) and holding ``d`` keys each the other lacks."""
    clock = ManualClock()
    src = mem("src", clock)
    with src.batch() as bt:
        for i in range(n):
            bt.put(f"key{i:06}", i)
    c, e = mem("c", clock), mem("e", clock)
    sync(src, c, a_mode="push", b_mode="pull")
    sync(src, e, a_mode="push", b_mode="pull")
    src.close()
    for i in range(d):
        c.put(f"only-c{i}", i)
        e.put(f"only-e{i}", i)
    assert c.cursor("e", e.incarnation) == 0 and e.cursor("c", c.incarnation) == 0
    return c, e


def test_first_contact_reconciles_instead_of_pulling_the_whole_log() -> None:
    c, e = _first_contact_pair(2000, 5)
    c2, e2 = _first_contact_pair(2000, 5)
    plain = sync(c2, e2, repair=False)
    lk = sync(c, e)
    assert c.digest() == e.digest() == c2.digest() and state(c) == state(e)
    wire = lk.a.stats.bytes_sent + lk.b.stats.bytes_sent
    plain_wire = plain.a.stats.bytes_sent + plain.b.stats.bytes_sent
    assert wire * 10 < plain_wire, (wire, plain_wire)
    assert [m.repair for m in lk.sent_a if isinstance(m, Request)] == [True]
    for events in (lk.events_a, lk.events_b):
        [done] = [ev for ev in events if isinstance(ev, RepairFinished)]
        assert done.first_contact and done.changed == 5
    # Both cursors now point at the peer's head as of the repair: the next round is empty.
    assert e.cursor("c", c.incarnation) > 0 and c.cursor("e", e.incarnation) > 0
    again = sync(c, e)
    assert not any(isinstance(m, Request) and m.repair for m in again.sent_a + again.sent_b)
    assert again.a.stats.entries_sent == again.b.stats.entries_sent == 0
    assert again.a.stats.repairs == 0


def test_first_contact_streams_what_was_written_after_the_pin() -> None:
    c, e = _first_contact_pair(300, 3)
    lk = link(c, e)
    lk.a_to_b()
    lk.b_to_a()  # both Requests out; c pinned its head
    c.put("late", 1)  # after c's pin: not in this one-shot round
    lk.run()
    assert lk.a.complete and lk.b.complete
    assert "late" not in e
    first = next(m for m in lk.sent_a if isinstance(m, Batch))
    assert first.from_seq > 0  # streamed from c's head at the pin, not from 0
    sync(c, e)
    assert e.get("late") == 1 and c.digest() == e.digest()


def test_first_contact_with_an_empty_side_pulls_the_log() -> None:
    clock = ManualClock()
    a, b = mem("a", clock), mem("b", clock)
    for i in range(10):
        a.put(f"k{i}", i)
    lk = sync(a, b)
    assert lk.a.stats.repairs == 0 and lk.a.stats.entries_sent == 10
    assert a.digest() == b.digest()


def test_one_way_sessions_never_repair() -> None:
    a, b, _ = synced_pair()
    lose(a, "k001")
    lk = sync(a, b, a_mode="pull")
    assert not verifies(lk.sent_a) and not verifies(lk.sent_b)
    assert lk.a.stats.repairs == 0


# --- property -----------------------------------------------------------------------------

_ops = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "both"]),
        st.sampled_from([f"k{i}" for i in range(8)]),
        st.one_of(st.none(), st.integers(0, 3)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_ops, after=_ops, lost=st.lists(st.integers(0, 7), max_size=3), seed=st.booleans())
def test_random_pairs_end_equal_after_one_session(
    before: list[tuple[str, str, int | None]],
    after: list[tuple[str, str, int | None]],
    lost: list[int],
    seed: bool,
) -> None:
    clock = ManualClock()
    a, b = mem("a", clock), mem("b", clock)

    def apply(ops: list[tuple[str, str, int | None]]) -> None:
        for who, key, value in ops:
            for s in (a, b) if who == "both" else (a if who == "a" else b,):
                clock.advance(1)
                if value is None:
                    s.delete(key)
                else:
                    s.put(key, value)

    apply(before)
    if seed:
        sync(a, b)  # cursors exist: the next session verifies
    proof = b.cursor_proof("a", a.incarnation)
    for i in lost:
        key = f"k{i}".encode()
        if proof is None or key != proof[0]:  # losing that one looks like a rollback
            a.drop_collected([key], below=1 << 64)
    apply(after)
    lk = sync(a, b)
    assert a.digest() == b.digest(), (lk.sent_a, lk.sent_b)
    assert state(a) == state(b)


def test_a_quarantined_key_nobody_holds_is_probed_once_and_released() -> None:
    """Equal digests: only the probe in the Verify makes the session repair; after it the
    key is released and the next session neither probes nor repairs."""
    a, b, _ = synced_pair()
    b.delete("k004")
    b.put("zz", 1)  # the newest entry (a cursor's proof) is not the one lost
    sync(a, b, repair=False)
    for s in (a, b):  # lost everywhere: each scrub quarantines it
        s.backend.write([(b"d" + b"k004", None)])
        assert s.scrub().quarantined == 1
    assert a.digest() == b.digest()
    assert a.wants_probe("b") and b.wants_probe("a")
    lk = sync(a, b)
    [va], [vb] = verifies(lk.sent_a), verifies(lk.sent_b)
    assert va.probe and vb.probe
    assert lk.a.stats.repairs == lk.b.stats.repairs == 1
    assert lk.a.stats.divergences == 0
    assert a.statistics().quarantined == b.statistics().quarantined == 0
    assert not a.wants_probe("b")
    a.put("more", 1)
    lk = sync(a, b)
    [va], [vb] = verifies(lk.sent_a), verifies(lk.sent_b)
    assert not va.probe and not vb.probe and lk.a.stats.repairs == 0
