"""Two-party replication sessions over in-memory byte pumping with real stores."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest

import crdt_kv
from crdt_kv.codec import MAX_KEY_BYTES, MAX_VALUE_BYTES
from crdt_kv.errors import (
    ClockSkewError,
    ConfigError,
    LocalProtocolError,
    PeerIdentityError,
    ProtocolError,
    RemoteProtocolError,
    RolledBackError,
)
from crdt_kv.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Abort,
    AbortCode,
    Ack,
    Batch,
    BatchApplied,
    Connected,
    ConnectionClosed,
    ConnState,
    Event,
    FrameDecoder,
    Hello,
    InState,
    Message,
    OutState,
    Request,
    Session,
    SessionFailed,
    SyncComplete,
    decode_message,
    encode_frame,
)
from crdt_kv.protocol.sending import FIRST_BATCH_BYTES
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from crdt_kv.version import RawEntry

T0 = 1_700_000_000_000


def mem(peer: str, clock: ManualClock | None = None, **kw: Any) -> Store:
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock or ManualClock(), **kw)


def frames(data: bytes) -> list[Message]:
    return [decode_message(p) for p in FrameDecoder().feed(data)]


@dataclass
class Link:
    """Two sessions joined by an in-memory pipe; records every frame and event."""

    a: Session
    b: Session
    events_a: list[Event] = field(default_factory=list)
    events_b: list[Event] = field(default_factory=list)
    sent_a: list[Message] = field(default_factory=list)  # frames a sent to b
    sent_b: list[Message] = field(default_factory=list)
    chunk: int | None = None
    _tap_a: FrameDecoder = field(default_factory=FrameDecoder)
    _tap_b: FrameDecoder = field(default_factory=FrameDecoder)

    def start(self) -> Link:
        self.a.start()
        self.b.start()
        return self

    def _deliver(self, src: Session, dst: Session, log: list[Message], tap: FrameDecoder) -> bool:
        data = src.data_to_send()
        if not data:
            return False
        log.extend(decode_message(p) for p in tap.feed(data))
        out = self.events_b if dst is self.b else self.events_a
        step = self.chunk or len(data)
        for i in range(0, len(data), step):
            out.extend(dst.receive_data(data[i : i + step]))
        return True

    def a_to_b(self) -> bool:
        return self._deliver(self.a, self.b, self.sent_a, self._tap_a)

    def b_to_a(self) -> bool:
        return self._deliver(self.b, self.a, self.sent_b, self._tap_b)

    def run(self, max_rounds: int = 100_000) -> Link:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(max_rounds):
            moved = self.a_to_b()
            moved = self.b_to_a() or moved
            if not moved:
                return self
        raise AssertionError("sessions did not go quiet")

    def eof(self) -> None:
        self.events_b.extend(self.b.receive_data(b""))
        self.events_a.extend(self.a.receive_data(b""))


def link(sa: Store, sb: Store, **kw: Any) -> Link:
    ka = {k[2:]: v for k, v in kw.items() if k.startswith("a_")}
    kb = {k[2:]: v for k, v in kw.items() if k.startswith("b_")}
    common = {k: v for k, v in kw.items() if not k.startswith(("a_", "b_"))}
    return Link(Session(sa, **common, **ka), Session(sb, **common, **kb)).start()


def sync(sa: Store, sb: Store, **kw: Any) -> Link:
    lk = link(sa, sb, **kw).run()
    assert lk.a.complete and lk.b.complete, (lk.events_a, lk.events_b)
    return lk


def state(s: Store) -> dict[Any, Any]:
    return {k: (e.value, e.hlc, e.peer, e.deleted) for k in s if (e := s.entry(k))}


def failed(events: list[Event]) -> list[SessionFailed]:
    return [e for e in events if isinstance(e, SessionFailed)]


def batches(msgs: list[Message]) -> list[Batch]:
    return [m for m in msgs if isinstance(m, Batch)]


@pytest.fixture
def pair() -> Iterator[tuple[Store, Store, ManualClock]]:
    clock = ManualClock()
    a, b = mem("a", clock), mem("b", clock)
    yield a, b, clock
    a.close()
    b.close()


# --- convergence ----------------------------------------------------------------------


def test_concurrent_conflicting_writes_converge_to_lww_winners(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    a, b, clock = pair
    winners: dict[str, tuple[int, str, Any]] = {}

    def write(s: Store, k: str, v: Any) -> None:
        ver = s.put(k, v)
        cand = (ver.hlc, ver.peer, v)
        if k not in winners or cand[:2] > winners[k][:2]:
            winners[k] = cand

    for i in range(30):
        write(a, f"k{i}", f"a{i}")
    clock.advance(1)
    for i in range(10, 40):
        write(b, f"k{i}", f"b{i}")  # a later wall time wins k10..k29
    clock.advance(5)
    write(b, "k0", "b-late")
    write(a, "k39", "a-late")
    # An exact HLC tie: fresh stores at the same wall time; the peer id breaks it.
    c, d = mem("c", ManualClock(T0 + 10**6)), mem("d", ManualClock(T0 + 10**6))
    assert c.put("tie", 1).hlc == d.put("tie", 2).hlc
    a.delete("k5")
    winners["k5"] = (a.entry("k5").hlc, "a", None)  # type: ignore[union-attr]
    lk = sync(a, b, repair=False)  # the change logs, not a first-contact repair
    assert a.digest() == b.digest()
    assert state(a) == state(b)
    for k, (hlc, peer, v) in winners.items():
        e = a.entry(k)
        assert e is not None and (e.hlc, e.peer) == (hlc, peer), k
        assert a.get(k) == v
    assert "k5" not in a and "k5" not in b
    assert a.get("k15") == "b15" and b.get("k3") == "a3" and b.get("k0") == "b-late"
    assert lk.a.stats.entries_changed == 30  # b's k0, k10..k38 (k39 is a's)
    assert lk.b.stats.entries_changed == 10  # a's k1..k9 (k5 deleted), k39
    sync(c, d)
    assert c.get("tie") == d.get("tie") == 2  # "d" > "c"
    c.close()
    d.close()


def test_second_sync_sends_nothing_and_changes_nothing(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    a, b, _ = pair
    for i in range(20):
        a.put(f"a{i}", i)
        b.put(f"b{i}", i)
    first = sync(a, b, repair=False)
    assert first.a.stats.entries_sent == 20 and first.b.stats.entries_sent == 20
    seq_a, seq_b = a.last_seq, b.last_seq
    again = sync(a, b)
    assert again.a.stats.entries_sent == 0 and again.b.stats.entries_sent == 0
    assert (a.last_seq, b.last_seq) == (seq_a, seq_b)
    # Entries applied from b are never echoed back to b.
    a.put("new", 1)
    third = sync(a, b)
    assert third.a.stats.entries_sent == 1 and third.b.stats.entries_sent == 0


def test_rocksdb_stores_converge_and_cursor_survives_reopen(tmp_path: Path) -> None:
    clock = ManualClock()
    pa, pb = str(tmp_path / "a"), str(tmp_path / "b")
    a = crdt_kv.open(pa, backend="rocksdb", peer_id="a", clock=clock)
    b = crdt_kv.open(pb, backend="rocksdb", peer_id="b", clock=clock)
    for i in range(300):
        a.put(f"k{i:03}", i)
        if i % 3 == 0:
            b.put(f"k{i:03}", -i)
    sync(a, b, max_batch_entries=64)
    assert a.digest() == b.digest()
    inc_a = a.incarnation
    cur = b.cursor("a", inc_a)
    # a's own 300 writes; the entries a applied from b during the sync come later in its log
    # (a one-shot pull stops at the head it was asked at) and are b's own, never sent back.
    assert 300 <= cur <= a.last_seq
    a.close()
    b.close()
    a = crdt_kv.open(pa, backend="rocksdb", clock=clock)
    b = crdt_kv.open(pb, backend="rocksdb", clock=clock)
    assert a.incarnation == inc_a and b.cursor("a", inc_a) == cur
    lk = sync(a, b)
    assert lk.a.stats.entries_sent == 0 and lk.b.stats.entries_sent == 0
    connected = [e for e in lk.events_b if isinstance(e, Connected)]
    assert connected[0].cursor == cur
    a.close()
    b.close()


# --- modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode_a", "mode_b", "a_gets", "b_gets"),
    [
        ("push", "both", False, True),
        ("pull", "both", True, False),
        ("both", "push", True, False),
        ("both", "pull", False, True),
        ("push", "pull", False, True),
        ("pull", "push", True, False),
        ("push", "push", False, False),
        ("pull", "pull", False, False),
        ("both", "both", True, True),
    ],
)
def test_modes_move_data_one_way_only(
    pair: tuple[Store, Store, ManualClock], mode_a: str, mode_b: str, a_gets: bool, b_gets: bool
) -> None:
    a, b, _ = pair
    a.put("from_a", 1)
    b.put("from_b", 2)
    lk = sync(a, b, a_mode=mode_a, b_mode=mode_b)
    assert ("from_b" in a) is a_gets and ("from_a" in b) is b_gets
    assert len(a) == 1 + a_gets and len(b) == 1 + b_gets
    assert (len(batches(lk.sent_b)) > 0) is a_gets
    assert (len(batches(lk.sent_a)) > 0) is b_gets
    assert lk.a.in_state is (InState.DONE if a_gets else InState.DISABLED)
    assert lk.a.out_state is (OutState.DONE if b_gets else OutState.DISABLED)


# --- live -----------------------------------------------------------------------------


class Mesh:
    """Sessions between stores whose commits wake their live sessions (like net/ and sim/)."""

    def __init__(self) -> None:
        self.links: list[Link] = []
        self.dirty: set[int] = set()

    def connect(self, sa: Store, sb: Store, **kw: Any) -> Link:
        lk = link(sa, sb, **kw)
        self.links.append(lk)
        for sess in (lk.a, lk.b):
            sess.store.on_commit(lambda _seq, s=sess: self.dirty.add(id(s)))
        return lk

    def run(self) -> None:
        for _ in range(10_000):
            for lk in self.links:
                for sess in (lk.a, lk.b):
                    if id(sess) in self.dirty:
                        sess.local_changed()
            self.dirty.clear()
            moved = False
            for lk in self.links:
                moved = lk.a_to_b() or moved
                moved = lk.b_to_a() or moved
            if not moved and not self.dirty:
                return
        raise AssertionError("mesh did not go quiet")


def test_live_pushes_new_commits_after_catch_up(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, clock = pair
    a.put("old", 0)
    mesh = Mesh()
    lk = mesh.connect(a, b, live=True)
    mesh.run()
    assert b.get("old") == 0
    assert lk.a.out_state is OutState.LIVE and lk.b.in_state is InState.LIVE
    assert lk.a.settled and lk.b.settled and not lk.a.complete
    assert not any(isinstance(e, SyncComplete) for e in lk.events_a + lk.events_b)
    caught = [e for e in lk.events_b if isinstance(e, BatchApplied)]
    assert caught[-1].caught_up
    for i in range(5):
        clock.advance(1)
        a.put(f"live{i}", i)
        b.put(f"back{i}", i)
        mesh.run()
        assert b.get(f"live{i}") == i and a.get(f"back{i}") == i
    assert a.digest() == b.digest()
    # Without local_changed nothing moves: the session only reacts to being told.
    a.put("quiet", 1)
    mesh.dirty.clear()
    lk.run()
    assert "quiet" not in b
    lk.a.local_changed()
    lk.run()
    assert b.get("quiet") == 1
    lk.a.close()
    lk.b.close()
    assert lk.a.data_to_send() == b"" and lk.b.data_to_send() == b""  # settled: no Abort


def test_live_relays_transitively_a_b_c() -> None:
    clock = ManualClock()
    a, b, c = mem("a", clock), mem("b", clock), mem("c", clock)
    mesh = Mesh()
    ab = mesh.connect(a, b, live=True)
    bc = mesh.connect(b, c, live=True)
    mesh.run()
    for i in range(10):
        clock.advance(1)
        [a, c][i % 2].put(f"k{i}", i)
        mesh.run()
        assert a.get(f"k{i}") == b.get(f"k{i}") == c.get(f"k{i}") == i
    a.put("x", "a")
    clock.advance(1)
    c.put("x", "c")  # concurrent (no sync between); c's stamp is higher
    mesh.run()
    assert a.get("x") == b.get("x") == c.get("x") == "c"
    assert a.digest() == b.digest() == c.digest()
    # Nothing is echoed back to the replica it came from.
    assert ab.b.stats.entries_sent == sum(1 for i in range(10) if i % 2) + 1
    assert bc.b.stats.entries_sent == sum(1 for i in range(10) if not i % 2) + 1
    for s in (a, b, c):
        s.close()


def test_live_with_one_shot_peer_completes(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    a.put("k", 1)
    lk = sync(a, b, a_live=True, b_live=False)
    assert lk.a.complete and lk.b.complete and b.get("k") == 1


# --- resume from the durable cursor ---------------------------------------------------


def test_one_shot_sync_completes_while_the_sender_keeps_writing() -> None:
    """A non-live pull gets the log as it was when asked: a writer faster than one batch per
    round trip must not keep the sync from completing (it chased the head before)."""
    a, b = mem("a"), mem("b")
    for i in range(1000):
        a.put(f"k{i}", i)
    asked_at = a.last_seq
    lk = link(a, b, a_mode="push", b_mode="pull", max_batch_entries=100, window=1)
    n = 1000
    for _ in range(200):
        moved = lk.a_to_b()
        moved = lk.b_to_a() or moved
        if not moved:
            break
        for _ in range(120):  # the application writes more than a batch per round trip
            a.put(f"k{n}", n)
            n += 1
    assert lk.a.complete and lk.b.complete
    assert b.cursor("a", a.incarnation) == asked_at
    assert {k for k in b} == {f"k{i}" for i in range(1000)}
    assert n > 1000 + 120 * 5  # the writer really kept going
    sync(a, b, a_mode="push", b_mode="pull")  # the next round brings the rest
    assert b.digest() == a.digest()


def _cut_mid_sync(a: Store, b: Store, n_batches: int, **kw: Any) -> Link:
    """Run a pull of a's log into b, cutting the stream after n_batches were applied."""
    lk = link(a, b, b_mode="pull", a_mode="push", **kw)
    while sum(isinstance(e, BatchApplied) for e in lk.events_b) < n_batches:
        assert lk.a_to_b()
        lk.b_to_a()  # the acks make a queue the next window, which the cut then loses
    lk.a.close("cut")
    lk.b.close("cut")
    return lk


@pytest.mark.parametrize("n_batches", [1, 3, 7])
def test_resume_sends_only_the_unacked_tail(
    pair: tuple[Store, Store, ManualClock], n_batches: int
) -> None:
    a, b, _ = pair
    for i in range(100):
        a.put(f"k{i:03}", i)
    cut = _cut_mid_sync(a, b, n_batches, max_batch_entries=10, window=3)
    applied = sum(e.received for e in cut.events_b if isinstance(e, BatchApplied))
    assert applied >= 10 * n_batches
    cursor = b.cursor("a", a.incarnation)
    assert cursor == applied == len(b) and cursor % 10 == 0
    lost = cut.a.stats.entries_sent - applied
    assert lost == min(30, 100 - applied)  # a window of 3 batches was in flight when cut
    again = sync(a, b, b_mode="pull")
    connected = next(e for e in again.events_b if isinstance(e, Connected))
    assert connected.cursor == cursor
    assert batches(again.sent_a)[0].from_seq == cursor
    assert again.a.stats.entries_sent == 100 - cursor
    assert b.digest() == a.digest()


def test_resume_after_reopening_rocksdb(tmp_path: Path) -> None:
    clock = ManualClock()
    a = crdt_kv.open(str(tmp_path / "a"), backend="rocksdb", peer_id="a", clock=clock)
    pb = str(tmp_path / "b")
    b = crdt_kv.open(pb, backend="rocksdb", peer_id="b", clock=clock)
    for i in range(200):
        a.put(f"k{i:03}", "v" * (i % 17))
    cut = _cut_mid_sync(a, b, 4, max_batch_entries=25, window=2)
    assert cut.a.stats.entries_sent == 150  # 100 applied, 50 lost in flight
    b.close()
    b = crdt_kv.open(pb, backend="rocksdb", clock=clock)
    cursor = b.cursor("a", a.incarnation)
    assert cursor == 100
    again = sync(a, b, b_mode="pull")
    assert again.a.stats.entries_sent == 100  # only the tail: nothing applied is resent
    assert b.digest() == a.digest() and len(b) == 200
    a.close()
    b.close()


def test_new_incarnation_starts_from_zero(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, clock = pair
    for i in range(10):
        a.put(f"k{i}", i)
    sync(a, b)
    c = mem("a", clock)  # same peer id, a different life: a new incarnation
    c.put("fresh", 1)
    lk = sync(c, b)
    assert next(e for e in lk.events_b if isinstance(e, Connected)).cursor == 0
    assert b.get("fresh") == 1
    c.close()


def _requested(a: Store, request: Request) -> tuple[Session, list[object]]:
    sess = Session(a)
    sess.start()
    sess.data_to_send()
    peer_hello = Hello(PROTOCOL_VERSION, "default", "z", b"\x01" * 16, T0 << 16, 0,
                       True, True, False, "utf-8", "cbor", 100)  # fmt: skip
    sess.receive_data(encode_frame(peer_hello))
    return sess, list(sess.receive_data(encode_frame(request)))


def test_request_whose_live_differs_from_its_hello_is_refused(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    """spec 4.2: a Request's ``live`` MUST equal its Hello's; the Hello said one-shot."""
    sess, events = _requested(pair[0], Request(0, True))
    assert failed(events) and isinstance(sess.error, RemoteProtocolError)
    assert "live=True after Hello live=False" in str(sess.error)
    assert frames(sess.data_to_send())[-1] == Abort(AbortCode.PROTOCOL, str(sess.error))


def test_request_beyond_our_log_means_we_were_rolled_back(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    """A peer holding a cursor past our head means our log went back under the same
    incarnation: we take a new one (peers then pull everything) and say so."""
    a = pair[0]
    a.put("k", 1)
    old = a.incarnation
    sess, events = _requested(a, Request(a.last_seq + 1, False))
    assert failed(events) and isinstance(sess.error, RolledBackError)
    assert "rolled back" in str(sess.error) and "ends at 1" in str(sess.error)
    assert frames(sess.data_to_send())[-1] == Abort(AbortCode.ROLLED_BACK, str(sess.error))
    assert a.incarnation != old


def test_request_whose_proof_our_log_no_longer_matches_means_rollback(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    """The peer received key k at a stamp newer than what we hold: restored from a copy."""
    a = pair[0]
    a.put("k", 1)
    stamp = a.entry("k").hlc  # type: ignore[union-attr]
    old = a.incarnation
    sess, events = _requested(a, Request(1, False, (b"k", stamp + 5)))
    assert failed(events) and isinstance(sess.error, RolledBackError)
    assert "'k'" in str(sess.error) and a.incarnation != old
    sess, events = _requested(a, Request(1, False, (b"gone", stamp)))
    assert failed(events) and "is gone" in str(sess.error)


def test_request_with_a_true_proof_is_served(pair: tuple[Store, Store, ManualClock]) -> None:
    a = pair[0]
    a.put("k", 1)
    stamp = a.entry("k").hlc  # type: ignore[union-attr]
    a.put("k", 2)  # rewritten since: a newer stamp at a later seq is still consistent
    a.put("j", 3)
    old = a.incarnation
    sess, events = _requested(a, Request(1, False, (b"k", stamp)))
    assert not failed(events) and a.incarnation == old
    batches = [m for m in frames(sess.data_to_send()) if isinstance(m, Batch)]
    assert batches and batches[0].from_seq == 1


# --- batching and flow control -----------------------------------------------------------


def test_batches_respect_max_batch_entries_of_both_sides(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    a, b, _ = pair
    for i in range(53):
        a.put(f"k{i:02}", i)
    lk = sync(a, b, a_max_batch_entries=7, b_max_batch_entries=5)
    sizes = [len(x.entries) for x in batches(lk.sent_a)]
    assert max(sizes) == 5 and sum(sizes) == 53
    assert all(x.to_seq - x.from_seq <= 5 for x in batches(lk.sent_a))
    lk2 = sync(mem("c"), b, a_max_batch_entries=4, b_max_batch_entries=50, b_mode="push")
    assert max(len(x.entries) for x in batches(lk2.sent_b)) == 4


def test_batches_respect_max_batch_bytes(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    for i in range(40):
        a.put(f"k{i:02}", "x" * 100)
    limit = 1000
    lk = sync(a, b, max_batch_bytes=limit)
    bs = batches(lk.sent_a)
    assert len(bs) > 4
    one = len(cbor2.dumps("x" * 100)) + 3 + 24
    for x in bs:
        est = sum(len(e.key) + len(e.value) + 24 for e in x.entries)
        assert est < limit + one
        assert est - one < limit  # cut as soon as the limit is reached
    assert sum(len(x.entries) for x in bs) == 40
    assert a.digest() == b.digest()


def test_window_bounds_unacked_batches(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    for i in range(100):
        a.put(f"k{i:03}", i)
    lk = link(a, b, max_batch_entries=10, window=3, b_mode="pull")
    lk.a_to_b()  # a's hello
    lk.b_to_a()  # b's hello + request
    assert len(batches(lk.sent_a)) == 0
    lk.a_to_b()
    assert len(batches(lk.sent_a)) == 3  # the window, no more
    assert lk.a.data_to_send() == b""
    lk.b_to_a()  # three acks
    lk.a_to_b()
    assert len(batches(lk.sent_a)) == 6
    lk.run()
    assert len(batches(lk.sent_a)) == 10 and b.digest() == a.digest()
    acks = [m.seq for m in lk.sent_b if isinstance(m, Ack)]
    assert acks == [x.to_seq for x in batches(lk.sent_a)]


def _batch_bytes(x: Batch) -> int:
    return sum(len(e.key) + len(e.value) + 24 for e in x.entries)


def test_first_batches_are_cut_small_and_the_cut_doubles_with_each_ack(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    """A peer that asks for our whole log and never acknowledges gets ``window`` batches
    of about 64 KiB, not of ``max_batch_bytes``; one that acks gets full-size batches
    after a few round trips."""
    a, b, _ = pair
    value = "v" * 1100
    for i in range(3000):
        a.put(f"k{i:04}", value)
    one = _batch_bytes(Batch(0, 1, False, tuple(a.read_changes(0, limit=1))))
    lk = link(a, b, max_batch_entries=1000, window=4, b_mode="pull")
    lk.a_to_b()
    lk.b_to_a()  # b's hello + request
    lk.a_to_b()
    first = batches(lk.sent_a)
    assert len(first) == 4 and lk.a.data_to_send() == b""
    assert all(FIRST_BATCH_BYTES <= _batch_bytes(x) < FIRST_BATCH_BYTES + one for x in first)
    lk.run()
    sent = batches(lk.sent_a)
    cuts = [_batch_bytes(x) for x in sent[:-1]]
    # the fifth batch went out on the first ack (cut 128 KiB), and so on up to 1 MiB
    assert cuts[4] >= 2 * FIRST_BATCH_BYTES and max(cuts) >= (1 << 20)
    assert all(x < (1 << 20) + one for x in cuts)
    assert sum(len(x.entries) for x in sent) == 3000 and b.digest() == a.digest()


def test_a_small_max_batch_bytes_is_the_cut_from_the_first_batch(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    a, b, _ = pair
    for i in range(200):
        a.put(f"k{i:03}", "x" * 100)
    lk = sync(a, b, max_batch_bytes=2000, b_mode="pull")
    cuts = [_batch_bytes(x) for x in batches(lk.sent_a)[:-1]]
    assert cuts and all(2000 <= c < 2200 for c in cuts)


def test_excluded_entries_still_advance_the_cursor(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    a, b, _ = pair
    for i in range(30):
        b.put(f"k{i}", i)
    sync(a, b, a_mode="pull")  # a got everything from b; its log is all b's
    lk = sync(a, b, max_batch_entries=4, b_mode="pull")
    assert lk.a.stats.entries_sent == 0
    assert b.cursor("a", a.incarnation) == a.last_seq == 30


# --- clock skew -----------------------------------------------------------------------


def _fake_peer(sess: Session, **hello_kw: Any) -> list[Message]:
    """Start ``sess``, feed it a peer Hello, return what it sent."""
    fields: dict[str, Any] = dict(
        version=PROTOCOL_VERSION, cluster_id="default", peer_id="evil", incarnation=b"\x07" * 16,
        hlc=T0 << 16, last_seq=10, send=True, receive=False, live=False,
        key_encoding="utf-8", value_encoding="cbor", max_batch_entries=100,
    )  # fmt: skip
    fields.update(hello_kw)
    sess.start()
    sess.receive_data(encode_frame(Hello(**fields)))
    return frames(sess.data_to_send())


def test_batch_with_entry_beyond_max_offset_is_refused_whole(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    _, b, _ = pair
    b.put("mine", 1)
    before = (b.digest(), b.last_seq, state(b))
    sess = Session(b)
    sent = _fake_peer(sess)
    assert sent[-1] == Request(0, False)
    good = RawEntry(b"ok", cbor2.dumps(1), T0 << 16, "evil", False)
    future = RawEntry(b"bad", cbor2.dumps(2), (T0 + 501) << 16, "evil", False)
    events = sess.receive_data(encode_frame(Batch(0, 2, True, (good, future))))
    [f] = failed(events)
    assert isinstance(f.error, ClockSkewError) and not f.by_peer
    assert "evil" in str(f.error) and f.error.max_offset_ms == 500
    assert sess.state is ConnState.FAILED and sess.stats.skew_rejected == 2
    assert (b.digest(), b.last_seq, state(b)) == before
    assert b.cursor("evil", b"\x07" * 16) == 0
    [abort] = frames(sess.data_to_send())
    assert isinstance(abort, Abort) and abort.code == AbortCode.CLOCK_SKEW
    # Within the bound it is accepted.
    ok_sess = Session(b)
    _fake_peer(ok_sess)
    edge = RawEntry(b"bad", cbor2.dumps(2), (T0 + 500) << 16, "evil", False)
    events = ok_sess.receive_data(encode_frame(Batch(0, 2, True, (good, edge))))
    assert not failed(events) and b.get("bad") == 2


def test_skewed_hello_fails_receiver_and_peer_learns_why() -> None:
    a = mem("a", ManualClock(T0 + 10_000))
    b = mem("b", ManualClock(T0))
    a.put("k", 1)
    lk = link(a, b).run()
    [fb] = failed(lk.events_b)
    assert isinstance(fb.error, ClockSkewError) and not fb.by_peer
    [fa] = failed(lk.events_a)
    assert fa.by_peer and isinstance(fa.error, ProtocolError) and "code 2" in str(fa.error)
    assert "k" not in b and b.hlc.last < (T0 + 1000) << 16  # the clock did not jump
    assert lk.b.stats.skew_rejected == 1
    a.close()
    b.close()


def test_wall_clock_stepping_back_mid_session_refuses_batch() -> None:
    ca, cb = ManualClock(T0 + 2000), ManualClock(T0 + 2000)
    a, b = mem("a", ca), mem("b", cb)
    a.put("k", 1)
    lk = link(a, b, b_mode="pull")
    lk.a_to_b()
    lk.b_to_a()  # handshake done at equal clocks; a's batch is queued
    cb.now = T0  # b's wall clock steps back 2 s
    lk.run()
    [fb] = failed(lk.events_b)
    assert isinstance(fb.error, ClockSkewError)
    assert "k" not in b and b.cursor("a", a.incarnation) == 0
    assert failed(lk.events_a)[0].by_peer
    a.close()
    b.close()


# --- bad input ------------------------------------------------------------------------


def _assert_failed_by_b(lk: Link, b_before: tuple[Any, ...], b: Store, code: AbortCode) -> None:
    [fb] = failed(lk.events_b)
    assert not fb.by_peer and isinstance(fb.error, RemoteProtocolError)
    assert lk.b.error is fb.error and lk.b.state is ConnState.FAILED
    lk.run()
    [fa] = failed(lk.events_a)
    assert fa.by_peer and f"code {int(code)}" in str(fa.error)
    assert lk.a.state is ConnState.FAILED
    aborts = [m for m in lk.sent_b if isinstance(m, Abort)]
    assert [x.code for x in aborts] == [code]
    assert (b.digest(), b.last_seq, b.cursors()) == b_before


def _snapshot(b: Store) -> tuple[Any, ...]:
    return (b.digest(), b.last_seq, b.cursors())


def test_malformed_frame_fails_the_receiver(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    a.put("k", 1)
    lk = link(a, b)
    before = _snapshot(b)
    lk.a.data_to_send()  # drop a's hello ...
    lk.events_b += lk.b.receive_data(struct.pack(">I", 3) + b"\x82\x03\x61")  # ... send junk
    assert "expected a Hello first" in str(lk.b.error)  # refused from its first two bytes
    _assert_failed_by_b(lk, before, b, AbortCode.PROTOCOL)


def test_out_of_order_message_fails_the_receiver(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    a.put("k", 1)
    lk = link(a, b)
    before = _snapshot(b)
    lk.a.data_to_send()
    lk.events_b += lk.b.receive_data(encode_frame(Ack(0)))  # before any Hello
    assert "expected a Hello first" in str(lk.b.error)
    _assert_failed_by_b(lk, before, b, AbortCode.PROTOCOL)


@pytest.mark.parametrize("fault", ["duplicate", "reorder", "gap"])
def test_replayed_reordered_or_missing_batch_is_refused(
    pair: tuple[Store, Store, ManualClock], fault: str
) -> None:
    a, b, _ = pair
    for i in range(30):
        a.put(f"k{i:02}", i)
    lk = link(a, b, max_batch_entries=10, b_mode="pull")
    lk.a_to_b()
    lk.b_to_a()
    raw = lk.a.data_to_send()
    payloads = FrameDecoder().feed(raw)
    assert len(payloads) == 3
    fr = [struct.pack(">I", len(p)) + p for p in payloads]
    order = {"duplicate": [0, 0, 1], "reorder": [0, 2, 1], "gap": [0, 2]}[fault]
    for i in order:
        lk.events_b += lk.b.receive_data(fr[i])
    first = decode_message(payloads[0])
    assert isinstance(first, Batch)
    [fb] = failed(lk.events_b)
    assert "but our cursor is at 10" in str(fb.error) and not fb.by_peer
    assert b.cursor("a", a.incarnation) == first.to_seq == 10 and len(b) == 10
    lk.run()
    assert failed(lk.events_a)[0].by_peer


def test_oversized_frame_fails_the_receiver(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    for i in range(20):
        a.put(f"k{i:02}", "x" * 50)
    lk = link(a, b, b_mode="pull")
    before = _snapshot(b)
    lk.events_b += lk.b.receive_data(lk.a.data_to_send())  # a's Hello
    lk.events_b += lk.b.receive_data(struct.pack(">I", DEFAULT_MAX_FRAME_BYTES + 1))
    assert f"exceeds max_frame_bytes={DEFAULT_MAX_FRAME_BYTES}" in str(lk.b.error)
    _assert_failed_by_b(lk, before, b, AbortCode.PROTOCOL)


def test_batch_over_our_max_batch_entries_is_refused(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    _, b, _ = pair
    sess = Session(b, max_batch_entries=2)
    _fake_peer(sess)
    rows = tuple(RawEntry(f"k{i}".encode(), b"\x01", T0 << 16, "evil", False) for i in range(3))
    [f] = failed(sess.receive_data(encode_frame(Batch(0, 3, True, rows))))
    assert "more than the agreed 2" in str(f.error) and len(b) == 0


def test_batch_with_undecodable_entry_is_refused_whole(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    _, b, _ = pair
    sess = Session(b)
    _fake_peer(sess)
    good = RawEntry(b"ok", b"\x01", T0 << 16, "evil", False)
    bad = RawEntry(b"\xff\xfe", b"\x01", T0 << 16, "evil", False)  # not a utf-8 key
    [f] = failed(sess.receive_data(encode_frame(Batch(0, 2, True, (good, bad)))))
    assert isinstance(f.error, RemoteProtocolError) and "evil" in str(f.error)
    assert len(b) == 0 and b.cursors() == {}
    assert frames(sess.data_to_send())[-1].code == AbortCode.REJECTED_DATA  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("key", "value_len"),
    [(b"k" * (MAX_KEY_BYTES + 1), 1), (b"k", MAX_VALUE_BYTES + 1)],
    ids=["key", "value"],
)
def test_entry_over_the_store_limits_is_refused_whole(
    pair: tuple[Store, Store, ManualClock], key: bytes, value_len: int
) -> None:
    """A peer cannot store what a local put() would refuse."""
    _, b, _ = pair
    sess = Session(b)
    _fake_peer(sess)
    good = RawEntry(b"ok", b"\x01", T0 << 16, "evil", False)
    big = RawEntry(key, b"\x40" * value_len, T0 << 16, "evil", False)
    [f] = failed(sess.receive_data(encode_frame(Batch(0, 2, True, (good, big)))))
    assert "too large" in str(f.error) and not f.by_peer
    assert len(b) == 0 and b.cursors() == {}
    assert frames(sess.data_to_send())[-1].code == AbortCode.REJECTED_DATA  # type: ignore[union-attr]
    at_limit = Session(b)
    _fake_peer(at_limit)
    edge = RawEntry(b"k" * MAX_KEY_BYTES, b"\x40", T0 << 16, "evil", False)
    assert not failed(at_limit.receive_data(encode_frame(Batch(0, 2, True, (good, edge)))))
    assert len(b) == 2


@pytest.mark.parametrize(
    ("kw_a", "kw_b", "what"),
    [
        ({"cluster_id": "red"}, {"cluster_id": "blue"}, "is in cluster"),
        ({}, {"value_encoding": "json"}, "uses encodings"),
    ],
    ids=["cluster", "encodings"],
)
def test_incompatible_peers_fail_both_sides(
    kw_a: dict[str, Any], kw_b: dict[str, Any], what: str
) -> None:
    sa = mem("a", value_encoding=kw_a.pop("value_encoding", "cbor"))
    sb = mem("b", value_encoding=kw_b.pop("value_encoding", "cbor"))
    sa.put("k", 1)
    before = _snapshot(sb)
    lk = Link(Session(sa, **kw_a), Session(sb, **kw_b)).start().run()
    for events in (lk.events_a, lk.events_b):
        [f] = failed(events)
        assert not f.by_peer and what in str(f.error)
    for msgs in (lk.sent_a, lk.sent_b):
        assert isinstance(msgs[-1], Abort) and msgs[-1].code == AbortCode.INCOMPATIBLE
    assert _snapshot(sb) == before and "k" not in sb
    sa.close()
    sb.close()


@pytest.mark.parametrize(
    ("hello_kw", "what"),
    [
        ({"version": PROTOCOL_VERSION + 1}, f"speaks protocol {PROTOCOL_VERSION + 1}"),
        ({"version": 1}, f"speaks protocol 1, we speak {PROTOCOL_VERSION}"),
        ({"conflicts": "siblings"}, "keeps conflicts as 'siblings', we keep them as 'lww'"),
        ({"cluster_id": "other"}, "is in cluster 'other'"),
        ({"key_encoding": "bytes"}, "uses encodings bytes/cbor"),
        ({"peer_id": "b"}, "is our own"),
    ],
)
def test_incompatible_hello_from_a_raw_peer(
    pair: tuple[Store, Store, ManualClock], hello_kw: dict[str, Any], what: str
) -> None:
    _, b, _ = pair
    sess = Session(b)
    sent = _fake_peer(sess, **hello_kw)
    assert isinstance(sent[0], Hello) and sent[-1] == Abort(AbortCode.INCOMPATIBLE, str(sess.error))
    assert what in str(sess.error) and sess.state is ConnState.FAILED
    assert sess.remote is None and b.cursors() == {}


@pytest.mark.parametrize(
    ("kw", "reason", "booked_as", "what"),
    [
        ({"peer_identity": "c"}, "identity_mismatch", "c", "certificate of 'c' claims to be 'a'"),
        ({"allowed_peers": {"c", "d"}}, "not_allowed", "a", "'a' is not in allowed_peers"),
        ({"peer_identity": "a", "allowed_peers": ["b"]}, "not_allowed", "a", "allowed_peers"),
    ],
    ids=["forged-peer-id", "off-the-list", "certified-but-off-the-list"],
)
def test_hello_refused_for_who_the_peer_is(
    pair: tuple[Store, Store, ManualClock],
    kw: dict[str, Any],
    reason: str,
    booked_as: str,
    what: str,
) -> None:
    a, b, _ = pair
    a.put("k", 1)
    b.put("mine", 2)
    lk = Link(Session(a), Session(b, **kw)).start().run()
    [fb] = failed(lk.events_b)
    err = fb.error
    assert isinstance(err, PeerIdentityError) and not fb.by_peer
    assert err.reason == reason and what in str(err) and lk.b.claimed_peer == booked_as
    assert lk.sent_b[-1] == Abort(AbortCode.UNAUTHORIZED, str(err))
    [fa] = failed(lk.events_a)
    assert fa.by_peer and "code 7" in str(fa.error)
    assert not any(isinstance(e, Connected) for e in lk.events_b)
    assert "k" not in b and "mine" not in a and b.cursors() == {} and a.cursors() == {}


def test_hello_matching_the_authenticated_identity_syncs(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    a, b, _ = pair
    a.put("k", 1)
    lk = sync(a, b, a_peer_identity="b", b_peer_identity="a", b_allowed_peers=["a"])
    assert b.get("k") == 1 and lk.b.claimed_peer == "a"


def test_self_connection_is_refused(pair: tuple[Store, Store, ManualClock]) -> None:
    a, _, _ = pair
    a.put("k", 1)
    seq = a.last_seq
    lk = Link(Session(a), Session(a)).start().run()
    for events in (lk.events_a, lk.events_b):
        [f] = failed(events)
        assert "our own" in str(f.error) and not f.by_peer
    assert a.last_seq == seq and a.cursors() == {}


def test_peer_abort_is_reported_by_peer(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    lk = link(a, b)
    lk.a_to_b()
    lk.b_to_a()
    lk.b.close("maintenance \u00e9" * 1000)  # clipped to 4096 UTF-8 bytes
    lk.run()
    [fa] = failed(lk.events_a)
    assert fa.by_peer and "maintenance" in str(fa.error) and "code 5" in str(fa.error)
    abort = lk.sent_b[-1]
    assert isinstance(abort, Abort) and len(abort.reason.encode()) <= 4096
    assert not failed(lk.events_b)


def test_bytes_after_failure_are_ignored(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    a.put("k", 1)
    lk = link(a, b)
    lk.events_b += lk.b.receive_data(b"\x00\x00\x00\x01\xff")
    assert lk.b.state is ConnState.FAILED
    lk.b.data_to_send()
    assert lk.b.receive_data(lk.a.data_to_send()) == []
    assert lk.b.receive_data(b"") == []
    assert "k" not in b and lk.b.data_to_send() == b""


# --- lifecycle ------------------------------------------------------------------------


def test_close_is_idempotent(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    for i in range(30):
        a.put(f"k{i}", i)
    lk = link(a, b, max_batch_entries=5, window=1)
    lk.a_to_b()
    lk.b_to_a()
    lk.a_to_b()
    lk.a.close("bye")
    lk.a.close("again")
    assert lk.a.closed and lk.a.state is ConnState.CLOSED and not lk.a.complete
    out = frames(lk.a.data_to_send())
    assert out == [Abort(AbortCode.SHUTDOWN, "bye")]
    lk.a.close()
    assert lk.a.data_to_send() == b""
    assert lk.a.receive_data(encode_frame(Ack(5))) == []
    idle = Session(a)
    idle.close()
    idle.close()
    assert idle.closed and idle.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        idle.start()


def test_close_after_complete_sends_nothing(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    a.put("k", 1)
    lk = sync(a, b)
    lk.a.close()
    lk.b.close()
    assert lk.a.data_to_send() == b"" and lk.b.data_to_send() == b""
    assert lk.a.state is lk.b.state is ConnState.CLOSED


def test_misuse_raises_local_errors(pair: tuple[Store, Store, ManualClock]) -> None:
    a, _, _ = pair
    s = Session(a)
    with pytest.raises(LocalProtocolError, match="before start"):
        s.receive_data(b"x")
    s.start()
    with pytest.raises(LocalProtocolError, match="start"):
        s.start()


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "sideways"},
        {"max_batch_entries": 0},
        {"max_batch_bytes": -1},
        {"max_frame_bytes": 1.5},
        {"window": 0},
        {"cluster_id": "c" * 256},
        {"cluster_id": "\udc80"},
        {"cluster_id": 5},
    ],
)
def test_bad_options_raise_config_error(
    pair: tuple[Store, Store, ManualClock], kw: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError):
        Session(pair[0], **kw)


def test_event_sequence(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    for i in range(12):
        a.put(f"k{i:02}", i)
    b.put("b", 1)
    lk = sync(a, b, max_batch_entries=5, repair=False)
    assert lk.events_b == [
        Connected("a", a.incarnation, "default", 12, 0),
        BatchApplied(5, 5, 0, 5, False),
        BatchApplied(5, 5, 5, 10, False),
        BatchApplied(2, 2, 10, 12, True),
        SyncComplete(),
    ]
    assert lk.events_a[0] == Connected("b", b.incarnation, "default", 1, 0)
    assert lk.events_a[1:] == [BatchApplied(1, 1, 0, 1, True), SyncComplete()]
    assert lk.b.cursor == 12 and lk.b.lag == 0 and lk.a.cursor == 1
    assert lk.b.remote is not None and lk.b.remote.peer_id == "a"
    lk.eof()
    assert lk.events_b[-1] == ConnectionClosed(True) and lk.events_a[-1] == ConnectionClosed(True)
    assert lk.a.closed and lk.b.closed
    st = lk.a.stats
    assert (st.batches_sent, st.entries_sent, st.batches_received, st.entries_received) == (
        3, 12, 1, 1,
    )  # fmt: skip
    assert st.bytes_sent == lk.b.stats.bytes_received > 0
    assert st.frames_sent == len(lk.sent_a) and st.errors == 0


def test_eof_mid_sync_is_incomplete(pair: tuple[Store, Store, ManualClock]) -> None:
    a, b, _ = pair
    a.put("k", 1)
    lk = link(a, b)
    assert lk.b.lag == 0
    lk.a_to_b()
    assert lk.b.lag == 1  # b knows a's head from the Hello
    assert lk.b.receive_data(b"") == [ConnectionClosed(False)]
    assert lk.b.state is ConnState.CLOSED


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_chunked_delivery(pair: tuple[Store, Store, ManualClock], chunk: int) -> None:
    a, b, clock = pair
    for i in range(15):
        a.put(f"a{i}", i)
        b.put(f"b{i}", "y" * i)
    clock.advance(1)
    b.delete("a3")
    lk = link(a, b, max_batch_entries=4)
    lk.chunk = chunk
    lk.run()
    assert lk.a.complete and lk.b.complete
    assert a.digest() == b.digest() and len(a) == 29


# --- siblings mode ----------------------------------------------------------------------


def _values(s: Store, key: str) -> list[Any]:
    return [e.value for e in s.get_all(key)]


def test_siblings_sessions_converge_with_every_sibling_in_one_order() -> None:
    clock = ManualClock()
    a, b = mem("a", clock, conflicts="siblings"), mem("b", clock, conflicts="siblings")
    for i in range(30):
        a.put(f"k{i}", ["a", i])
        if i % 3 == 0:
            b.put(f"k{i}", ["b", i])
    b.delete("k1")
    sync(a, b, max_batch_entries=7)
    assert a.digest() == b.digest()
    c = mem("c", clock, conflicts="siblings")
    lk = sync(a, c, max_batch_entries=4)
    assert any(e.others for m in batches(lk.sent_a) for e in m.entries)
    assert c.digest() == a.digest()
    assert _values(a, "k3") == _values(b, "k3") and len(_values(a, "k3")) == 2
    assert _values(b, "k1") == [["a", 1]]  # the delete was concurrent with a's put
    a.merge("k3", a.get_all("k3"), "merged")
    sync(a, b)
    assert _values(b, "k3") == ["merged"] and a.digest() == b.digest()


def test_siblings_joined_state_is_sent_back_to_its_source() -> None:
    clock = ManualClock()
    a, b = mem("a", clock, conflicts="siblings"), mem("b", clock, conflicts="siblings")
    a.put("k", "x0")
    sync(a, b)
    a.put("k", "x")  # after a's last sync to b
    b.put("k", "y")
    sync(b, a, a_mode="push", b_mode="pull")  # a applies the state of b (source b)
    assert sorted(_values(a, "k")) == ["x", "y"]
    sync(a, b)
    assert sorted(_values(b, "k")) == ["x", "y"] and a.digest() == b.digest()


def test_sessions_in_different_conflict_modes_abort_at_the_handshake() -> None:
    clock = ManualClock()
    a, b = mem("a", clock, conflicts="siblings"), mem("b", clock)
    a.put("k", 1)
    lk = link(a, b).run()
    for sess in (lk.a, lk.b):
        assert sess.error is not None and "conflict" in str(sess.error)
    assert "'siblings'" in str(lk.b.error) and "'lww'" in str(lk.b.error)
    assert b.last_seq == 0


@pytest.mark.parametrize("batch", [1, 2, 5, 50])
@pytest.mark.parametrize("chunk", [None, 7])
def test_one_siblings_sync_round_converges_when_applies_rewrite_unsent_keys(
    batch: int, chunk: int | None
) -> None:
    clock = ManualClock()
    a, b = mem("a", clock, conflicts="siblings"), mem("b", clock, conflicts="siblings")
    for i in range(12):
        a.put(f"k{i:02d}", f"a{i}")
        b.put(f"k{11 - i:02d}", f"b{i}")
    lk = link(a, b, max_batch_entries=batch)
    lk.chunk = chunk
    lk.run()
    assert lk.a.complete and lk.b.complete
    assert a.digest() == b.digest()
    assert all(len(a.get_all(f"k{i:02d}")) == 2 for i in range(12))


def test_a_large_junk_frame_is_refused_from_its_first_bytes(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    _, b, _ = pair
    sess = Session(b)
    assert _fake_peer(sess)[-1] == Request(0, False)
    # A small valid batch first does not turn the check off.
    small = RawEntry(b"ok", cbor2.dumps(1), T0 << 16, "evil", False)
    assert not failed(sess.receive_data(encode_frame(Batch(0, 1, False, (small,)))))
    # An 8 MiB batch whose first row's key is an array: refused once 64 KiB of it are
    # here, with the error decoding the whole frame would give, the rest never buffered.
    junk = b"\x87\x02\x01\x0a\xf4" + cbor2.dumps(T0) + b"\x81\x64evil\x81\x85\x9a"
    junk += b"\x00\x10\x00\x00" + b"\x80" * (64 << 10)
    header = struct.pack(">I", DEFAULT_MAX_FRAME_BYTES)
    assert not failed(sess.receive_data(header + junk[: 32 << 10]))
    [f] = failed(sess.receive_data(junk[32 << 10 :]))
    assert "batch.entries[0].key" in str(f.error) and sess.state is ConnState.FAILED
    *_, abort = frames(sess.data_to_send())  # after the small batch's Ack
    assert isinstance(abort, Abort) and abort.code == AbortCode.PROTOCOL
    with pytest.raises(RemoteProtocolError, match=r"batch.entries\[0\].key") as whole:
        decode_message(junk + bytes(DEFAULT_MAX_FRAME_BYTES - len(junk)))
    assert str(whole.value) == str(f.error)


def test_a_large_valid_frame_is_not_refused_by_its_prefix(
    pair: tuple[Store, Store, ManualClock],
) -> None:
    _, b, _ = pair
    sess = Session(b)
    _fake_peer(sess)
    rows = tuple(
        RawEntry(f"k{i:04}".encode(), cbor2.dumps("v" * 200), (T0 << 16) + i, "evil", False)
        for i in range(900)
    )
    frame = encode_frame(Batch(0, 900, True, rows))
    assert len(frame) > 2 * (64 << 10)
    events: list[Event] = []
    for at in range(0, len(frame), 10_000):  # in pieces: the prefix is looked at midway
        events += sess.receive_data(frame[at : at + 10_000])
    assert not failed(events) and len(b) == 900
