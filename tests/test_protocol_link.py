"""The sans-I/O core without a store or a network: PeerLink policy and deferred storage.

Two links talk through an in-memory wire driven by hand with explicit times; storage
requests are performed when the test says so. The replica is a small fake implementing
:class:`crdt_kv.protocol.Replica`, so the protocol is tested without any store.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_kv.errors import ClockSkewError, LocalProtocolError, RemoteProtocolError
from crdt_kv.horizon import GossipRow, Membership
from crdt_kv.protocol import (
    Ack,
    ApplyBatch,
    Batch,
    BatchApplied,
    CaughtUp,
    CloseConnection,
    DialDue,
    FrameDecoder,
    LinkConfig,
    LinkFailed,
    LinkState,
    PeerLink,
    ReadLog,
    Replica,
    Session,
    SessionEnded,
    SyncComplete,
    decode_message,
)
from crdt_kv.version import RawEntry

WALL = 1_700_000_000_000


class FakeMembership:
    """The pure membership table at a fixed wall time, recording what sessions told it."""

    def __init__(self, peer_id: str) -> None:
        self.table = Membership(peer_id)
        self.now_ms = WALL
        self.calls: list[tuple[str, str]] = []

    def gossip(self, own_hlc: int) -> tuple[GossipRow, ...]:
        return self.table.gossip(self.now_ms, own_hlc)

    def heard(self, peer: str, table: Sequence[GossipRow] | Any) -> None:
        self.calls.append(("heard", peer))
        self.table.heard(peer, table, self.now_ms)

    def pulled(self, peer: str, hello_hlc: int, table: Sequence[GossipRow] | Any) -> None:
        self.calls.append(("pulled", peer))
        self.table.pulled(peer, hello_hlc, table, self.now_ms)

    def horizon(self, grace_ms: int) -> int:
        return self.table.horizon(self.now_ms, WALL << 16, grace_ms)


@dataclass
class FakeReplica:
    """An in-memory replica: a compact log (one entry per key), LWW by (hlc, peer)."""

    peer_id: str
    incarnation: bytes = b"\x07" * 16
    key_encoding: str = "utf-8"
    value_encoding: str = "cbor"
    conflict_mode: str = "lww"
    max_ahead: int = 1 << 40
    hlc: int = WALL << 16
    data: dict[bytes, RawEntry] = field(default_factory=dict)
    source: dict[bytes, tuple[str, bytes]] = field(default_factory=dict)
    cursors: dict[tuple[str, bytes], int] = field(default_factory=dict)
    seq: int = 0
    applies: int = 0
    gc_horizon: int = 0
    transits: list[int] = field(default_factory=list)
    membership: FakeMembership = field(init=False)

    def __post_init__(self) -> None:
        self.membership = FakeMembership(self.peer_id)

    @property
    def last_seq(self) -> int:
        return self.seq

    def clock_now(self) -> int:
        self.hlc += 1
        return self.hlc

    def observe_clock(self, stamp: int, *, peer: str | None = None, transit_ms: int = 0) -> None:
        self.transits.append(transit_ms)
        if stamp - self.hlc > self.max_ahead:
            raise ClockSkewError(
                f"stamp {stamp} too far ahead",
                remote_hlc=stamp,
                local_wall_ms=WALL,
                max_offset_ms=0,
            )
        self.hlc = max(self.hlc, stamp)

    def cursor(self, peer: str, incarnation: bytes) -> int:
        return self.cursors.get((peer, incarnation), 0)

    def cursor_proof(self, peer: str, incarnation: bytes) -> tuple[bytes, int] | None:
        return None

    def check_cursor(self, since: int, proof: tuple[bytes, int] | None) -> str | None:
        return None if since <= self.seq else f"cursor {since} is past our head {self.seq}"

    def rotate_incarnation(self) -> bytes:
        self.incarnation = bytes(16 - len(self.incarnation)) + bytes(
            (b + 1) % 256 for b in self.incarnation
        )
        return self.incarnation

    def put(self, key: str, value: bytes) -> None:
        self._store(RawEntry(key.encode(), value, self.clock_now(), self.peer_id, False), None)

    def _store(self, e: RawEntry, src: tuple[str, bytes] | None) -> None:
        self.seq += 1
        self.data[e.key] = RawEntry(e.key, e.value, e.hlc, e.peer, e.deleted, self.seq)
        if src is None:
            self.source.pop(e.key, None)
        else:
            self.source[e.key] = src

    def read_changes(
        self,
        since: int,
        *,
        limit: int,
        exclude_source: tuple[str, bytes] | None = None,
        stop_at: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RawEntry]:
        rows = sorted((e for e in self.data.values() if e.seq > since), key=lambda e: e.seq)
        out: list[RawEntry] = []
        size = 0
        for e in rows:
            if stop_at is not None and e.seq > stop_at:
                break
            if exclude_source is not None and self.source.get(e.key) == exclude_source:
                continue
            out.append(e)
            size += len(e.key) + len(e.value) + 24
            if len(out) >= limit or (max_bytes is not None and size >= max_bytes):
                break
        return out

    def apply_raw(
        self, entries: Sequence[RawEntry], *, cursor: tuple[str, bytes, int] | None = None
    ) -> int:
        self.applies += 1
        top = max((e.hlc for e in entries), default=0)
        if top - self.hlc > self.max_ahead:
            raise ClockSkewError(
                f"entry stamp {top} too far ahead",
                remote_hlc=top,
                local_wall_ms=WALL,
                max_offset_ms=0,
            )
        self.hlc = max(self.hlc, top)
        changed = 0
        src = (cursor[0], cursor[1]) if cursor is not None else None
        for e in entries:
            cur = self.data.get(e.key)
            if cur is None or (e.hlc, e.peer) > (cur.hlc, cur.peer):
                self._store(e, src)
                changed += 1
        if cursor is not None:
            self.cursors[(cursor[0], cursor[1])] = cursor[2]
        return changed

    def raise_gc_horizon(self, h: int) -> int:
        self.gc_horizon = max(self.gc_horizon, h)
        return self.gc_horizon

    def gc(self, *, limit: int | None = None) -> int:
        dead = [k for k, e in self.data.items() if e.deleted and e.hlc < self.gc_horizon]
        for k in dead[:limit]:
            del self.data[k]
        return len(dead[:limit])

    def checkpoint(self) -> bool:
        return False

    probe = False
    """What :meth:`wants_probe` answers (a quarantined key awaiting any peer's answer)."""

    def wants_probe(self, peer: str) -> bool:
        return self.probe

    def state(self) -> dict[bytes, tuple[bytes, int, str]]:
        return {k: (e.value, e.hlc, e.peer) for k, e in self.data.items()}


def test_fake_replica_satisfies_the_protocol() -> None:
    r: Replica = FakeReplica("a")
    assert r.last_seq == 0


class Wire:
    """Two links on one connection; bytes move only when :meth:`pump` is called."""

    def __init__(self, a: PeerLink, b: PeerLink, *, defer: bool = False) -> None:
        self.links = (a, b)
        self.defer = defer
        self.events: tuple[list[Any], list[Any]] = ([], [])
        self.sent: tuple[list[bytes], list[bytes]] = ([], [])

    def drain_events(self) -> None:
        for i, link in enumerate(self.links):
            self.events[i].extend(link.events())

    def perform(self, now: float) -> int:
        """Perform every pending storage request; returns how many."""
        n = 0
        for link in self.links:
            while (req := link.storage_request()) is not None:
                try:
                    result = req.perform(link.replica)
                except Exception as exc:
                    link.storage_failed(req, exc, now)
                else:
                    link.storage_done(req, result, now)
                n += 1
        return n

    def pump(self, now: float, *, rounds: int = 100) -> None:
        for _ in range(rounds):
            moved = self.perform(now)
            for i, link in enumerate(self.links):
                data = link.data_to_send()
                if data:
                    self.sent[i].append(data)
                    self.links[1 - i].receive_data(data, now)
                    moved += 1
            if not moved:
                break
        self.drain_events()


def connect(a: PeerLink, b: PeerLink, now: float, *, defer: bool = False) -> Wire:
    a.connection_made(now)
    b.connection_made(now)
    return Wire(a, b, defer=defer)


def _link(replica: FakeReplica, role: str, now: float = 0.0, **cfg: Any) -> PeerLink:
    return PeerLink(
        replica,
        role=role,
        config=LinkConfig(**{"repair": False, **cfg}),  # the fake is no range source
        rng=random.Random(1),
        now=now,
        defer_storage=True,
        label=replica.peer_id,
    )


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- deferred storage in the session ---------------------------------------------------


def test_deferred_session_acks_only_after_the_apply_is_done() -> None:
    ra, rb = FakeReplica("a"), FakeReplica("b")
    for i in range(5):
        ra.put(f"k{i}", b"v")
    a = Session(ra, defer_storage=True, max_batch_entries=2, repair=False)
    b = Session(rb, defer_storage=True, max_batch_entries=2, repair=False)
    a.start()
    b.start()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())  # b's Request: a wants to read its log
    req = a.storage_request()
    assert isinstance(req, ReadLog)
    assert a.storage_request() is None  # one at a time
    a.storage_done(req, req.perform(ra))
    for _ in range(3):
        r = a.storage_request()
        if r is None:
            break
        a.storage_done(r, r.perform(ra))
    out = a.data_to_send()
    batches = [m for m in map(decode_message, FrameDecoder().feed(out)) if isinstance(m, Batch)]
    assert len(batches) >= 2
    events = b.receive_data(out)
    assert not any(isinstance(e, BatchApplied) for e in events)
    apply = b.storage_request()
    while isinstance(apply, ReadLog):  # b's own (empty) log for a, asked for first
        b.storage_done(apply, apply.perform(rb))
        apply = b.storage_request()
    assert isinstance(apply, ApplyBatch)
    assert not any(
        isinstance(m, Ack) for m in map(decode_message, FrameDecoder().feed(b.data_to_send()))
    )
    assert rb.applies == 0  # nothing touched the replica yet: later frames wait their turn
    events = b.storage_done(apply, apply.perform(rb))
    assert [type(e) for e in events] == [BatchApplied]
    acks = [m for m in map(decode_message, FrameDecoder().feed(b.data_to_send()))]
    assert [m for m in acks if isinstance(m, Ack)] == [Ack(2)]
    with pytest.raises(LocalProtocolError):
        b.storage_done(apply, 0)  # not handed out any more


def test_deferred_apply_refused_for_skew_fails_the_session_whole() -> None:
    ra, rb = FakeReplica("a"), FakeReplica("b", max_ahead=10)
    a, b = _link(ra, "once", live=False), _link(rb, "once", live=False)
    wire = connect(a, b, 0.0)
    ra.hlc += 1000
    ra.put("k", b"v")
    wire.pump(0.0)
    assert rb.state() == {} and rb.cursors == {}
    assert b.state is LinkState.CLOSING
    b.connection_lost(0.0)
    [ended] = [e for e in b.events() if isinstance(e, SessionEnded)]
    assert isinstance(ended.error, ClockSkewError) and "peer 'a'" in str(ended.error)
    assert ended.stats.skew_rejected == 1


# --- the link ---------------------------------------------------------------------------


def test_dial_link_dials_at_once_syncs_and_schedules_the_next_round() -> None:
    ra, rb = FakeReplica("a"), FakeReplica("b")
    ra.put("x", b"1")
    a = _link(ra, "dial", live=False, sync_interval_s=4.0, min_sync_interval_s=1.0)
    assert a.get_timer() == 0.0
    a.handle_timer(0.0)
    assert kinds(a.events()) == ["DialDue"]
    assert a.state is LinkState.DIALING
    b = _link(rb, "once", live=False)
    wire = connect(a, b, 0.1)
    assert not a.local_changed(0.1)  # a one-shot round does not push commits
    wire.pump(0.1)
    assert rb.state() == ra.state()
    ev_a = wire.events[0]
    assert "SyncComplete" in kinds(ev_a)
    assert any(isinstance(e, CaughtUp) and e.peer_id == "b" for e in ev_a)
    [close] = [e for e in ev_a if isinstance(e, CloseConnection)]
    assert close == CloseConnection(flush=True, graceful=True)
    assert a.state is LinkState.CLOSING
    a.connection_lost(0.2)
    [ended] = [e for e in a.events() if isinstance(e, SessionEnded)]
    assert ended.error is None and ended.complete
    assert a.state is LinkState.WAITING
    # The round moved data: the interval halves (4 s -> 2 s), jittered by 0.8-1.0.
    timer = a.get_timer()
    assert timer is not None and 0.2 + 1.6 <= timer <= 0.2 + 2.0
    # A commit lets the next round start early, but not before the minimum interval.
    assert a.local_changed(0.3)
    assert a.get_timer() == pytest.approx(1.2)
    assert not a.local_changed(0.4)  # already cut short: nothing changes
    assert a.get_timer() == pytest.approx(1.2)


def test_failed_dials_back_off_and_commits_do_not_cut_it_short() -> None:
    a = _link(FakeReplica("a"), "dial", live=False, backoff_base_s=0.5, backoff_max_s=4.0)
    now = 0.0
    gaps = []
    for _ in range(6):
        t = a.get_timer()
        assert t is not None
        gaps.append(t - now)
        now = t
        a.handle_timer(now)
        assert isinstance(a.next_event(), DialDue)
        a.connection_failed(now, ConnectionRefusedError("nobody home"))
        [failed] = [e for e in a.events() if isinstance(e, LinkFailed)]
        assert failed.dialing and failed.failures == a.failures
        a.local_changed(now + 0.01)
    assert gaps[0] == 0.0
    # Equal jitter: 0.25-0.5, 0.5-1, 1-2, 2-4, then capped at 2-4.
    for gap, cap in zip(gaps[1:], [0.5, 1.0, 2.0, 4.0, 4.0], strict=True):
        assert cap / 2 <= gap <= cap
    assert a.failures == 6


def test_handshake_timeout_closes_and_counts_a_failure() -> None:
    a = _link(FakeReplica("a"), "dial", live=False, handshake_timeout_s=2.0)
    a.handle_timer(0.0)
    a.events()
    a.connection_made(0.0)
    a.data_to_send()  # our Hello, never answered
    assert a.get_timer() == 2.0
    a.handle_timer(1.9)
    assert a.events() == []
    a.handle_timer(2.0)
    assert CloseConnection(flush=True, graceful=False) in a.events()
    a.connection_lost(2.0)
    events = a.events()
    [ended] = [e for e in events if isinstance(e, SessionEnded)]
    assert ended.timed_out and isinstance(ended.error, RemoteProtocolError)
    assert "said nothing for 2 s" in str(ended.error)
    assert any(isinstance(e, LinkFailed) for e in events)


def test_hello_is_judged_with_the_time_since_the_connection_began() -> None:
    """The link tells the session how long the connection has been open when the Hello
    completes (the most it can have been in flight), and the replica's clock judge gets
    it; bytes after the Hello do not change it."""
    ra, rb = FakeReplica("a"), FakeReplica("b")
    a, b = _link(ra, "once", live=False), _link(rb, "once", live=False)
    a.connection_made(10.0)
    b.connection_made(10.0)
    hello = b.data_to_send()
    a.receive_data(hello[:5], 10.5)
    assert ra.transits == []
    a.receive_data(hello[5:], 12.25)
    assert ra.transits == [2250]
    assert a.session is not None and a.session.hello_transit_ms == 2250
    b.receive_data(a.data_to_send(), 10.0)  # at once: no credit
    assert rb.transits == [0]
    a.receive_data(b.data_to_send(), 20.0)
    assert a.session.hello_transit_ms == 2250 and ra.transits == [2250]


def _live_pair(**cfg: Any) -> tuple[Wire, FakeReplica, FakeReplica]:
    ra, rb = FakeReplica("a"), FakeReplica("b")
    ra.put("k", b"v")
    a = _link(ra, "dial", live=True, **cfg)
    b = _link(rb, "once", live=True, **cfg)
    a.handle_timer(0.0)
    a.events()
    wire = connect(a, b, 0.0)
    wire.pump(0.0)
    assert a.tailing and b.tailing
    return wire, ra, rb


@pytest.mark.parametrize("keepalive", [True, False])
def test_quiet_live_session_survives_on_keepalives(keepalive: bool) -> None:
    """A tailing live session with nothing to say stays up for many idle timeouts, because
    each side sends a keep-alive; without keep-alives the idle timeout would drop it (the
    rule the simulator and the node once applied differently)."""
    cfg: dict[str, Any] = {"idle_timeout_s": 3.0, "live_idle_timeout_s": 3.0}
    if not keepalive:
        cfg["keepalive_s"] = 1000.0
    wire, ra, rb = _live_pair(**cfg)
    now = 0.0
    while now < 30.0:
        timers = [t for t in (lk.get_timer() for lk in wire.links) if t is not None]
        now = min(timers)
        for lk in wire.links:
            lk.handle_timer(now)
        wire.pump(now)
        if any(isinstance(e, CloseConnection) for e in wire.events[0] + wire.events[1]):
            break
    closed = [e for e in wire.events[0] + wire.events[1] if isinstance(e, CloseConnection)]
    if keepalive:
        assert not closed and all(lk.tailing for lk in wire.links)
        ra.put("later", b"w")
        assert wire.links[0].local_changed(now)
        wire.pump(now)
        assert rb.state() == ra.state()
    else:
        assert closed and now == pytest.approx(3.0)


def test_live_push_waits_for_the_push_delay() -> None:
    wire, ra, rb = _live_pair(push_delay_s=0.05)
    a = wire.links[0]
    ra.put("new", b"1")
    assert a.local_changed(1.0)
    assert not a.local_changed(1.01)  # a push is already due at 1.05
    wire.pump(1.0)
    assert b"new" not in rb.data
    assert a.get_timer() == pytest.approx(1.05)
    a.handle_timer(1.05)
    wire.pump(1.05)
    assert rb.state() == ra.state()


def test_close_ends_a_dial_link_for_good() -> None:
    wire, _, _ = _live_pair()
    a = wire.links[0]
    a.close(5.0)
    assert CloseConnection(flush=True, graceful=True) in a.events()
    a.connection_lost(5.0)
    assert a.state is LinkState.CLOSED and a.get_timer() is None
    a.close(6.0)  # idempotent


def test_link_refuses_inputs_its_table_does_not_allow() -> None:
    a = _link(FakeReplica("a"), "once")
    with pytest.raises(LocalProtocolError):
        a.connection_failed(0.0, OSError("no dial was asked for"))


@dataclass(frozen=True)
class _Op:
    side: int
    key: int


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 30)), max_size=80),
    chunk=st.integers(1, 64),
    batch=st.integers(1, 7),
    lag=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_chunking_and_storage_timing_converges(
    writes: list[tuple[int, int]], chunk: int, batch: int, lag: int, seed: int
) -> None:
    """However bytes are split and however late storage work completes, a one-shot sync
    between two links leaves both replicas equal and acknowledges only what was applied."""
    rng = random.Random(seed)
    reps = (FakeReplica("a"), FakeReplica("b"))
    for n, (side, key) in enumerate(writes):
        reps[side].hlc += rng.randrange(3)
        reps[side].put(f"k{key}", n.to_bytes(2, "big"))
    links = [
        _link(reps[0], "once", live=False, max_batch_entries=batch),
        _link(reps[1], "once", live=False, max_batch_entries=batch),
    ]
    for lk in links:
        lk.connection_made(0.0)
    buffers = [b"", b""]
    held: list[tuple[int, Any]] = []
    for _ in range(10_000):
        progressed = False
        for i, lk in enumerate(links):
            req = lk.storage_request()
            if req is not None:
                held.append((i, req))
            buffers[i] += lk.data_to_send()
        if held and (len(held) > lag or rng.random() < 0.5):
            i, req = held.pop(rng.randrange(len(held)))
            links[i].storage_done(req, req.perform(reps[i]), 0.0)
            progressed = True
        for i in (0, 1):
            if buffers[i]:
                piece, buffers[i] = buffers[i][:chunk], buffers[i][chunk:]
                links[1 - i].receive_data(piece, 0.0)
                progressed = True
        if not progressed and not held:
            break
    events = [e for lk in links for e in lk.events()]
    assert sum(isinstance(e, SyncComplete) for e in events) == 2
    assert reps[0].state() == reps[1].state()


def test_peerlink_has_the_sans_io_interface() -> None:
    for name in (
        "receive_data",
        "data_to_send",
        "get_timer",
        "handle_timer",
        "local_changed",
        "connection_lost",
        "connection_made",
        "connection_failed",
        "storage_request",
        "storage_done",
        "storage_failed",
        "next_event",
        "close",
    ):
        assert callable(getattr(PeerLink, name)), name


def test_a_late_storage_result_of_a_lost_connection_is_dropped() -> None:
    """A worker thread may finish an apply after its connection broke and the link
    redialed: the result belongs to no live session and must not disturb the new one."""
    ra, rb = FakeReplica("a"), FakeReplica("b")
    rb.put("k", b"v")
    a = _link(ra, "dial", live=False)
    b = _link(rb, "once", live=False)
    a.handle_timer(0.0)
    a.events()
    wire = connect(a, b, 0.0)
    for _ in range(4):  # handshake and the batch reach a; a's apply is taken, not done
        for i, lk in enumerate(wire.links):
            data = lk.data_to_send()
            if data:
                wire.links[1 - i].receive_data(data, 0.0)
        for lk in (b,):
            while (req := lk.storage_request()) is not None:
                lk.storage_done(req, req.perform(lk.replica), 0.0)
    stale = a.storage_request()
    while isinstance(stale, ReadLog):
        a.storage_done(stale, stale.perform(ra), 0.0)
        stale = a.storage_request()
    assert isinstance(stale, ApplyBatch)
    a.connection_lost(0.1, ConnectionResetError("cut"))
    a.events()
    a.dial_now(0.2)
    a.handle_timer(0.2)
    assert isinstance(a.next_event(), DialDue)
    a.connection_made(0.3)
    a.storage_done(stale, stale.perform(ra), 0.4)  # ignored: its session is gone
    assert a.state is LinkState.CONNECTED and a.session is not None
    assert a.session.state.value == "hello-sent"
    assert rb.state() == ra.state()  # the late apply itself was committed, with its cursor


# --- live links verify now and then (a live session never completes) ---------------------


def _run_until_close(wire: Wire, until: float) -> float:
    """Drive both links' timers until one asks to close (or ``until``); returns the time."""
    now = 0.0
    while now < until:
        timers = [t for t in (lk.get_timer() for lk in wire.links) if t is not None]
        now = min(timers)
        for lk in wire.links:
            lk.handle_timer(now)
        wire.pump(now)
        if any(isinstance(e, CloseConnection) for e in wire.events[0]):
            break
    return now


@pytest.mark.parametrize("why", ["interval", "probe"])
def test_a_live_dial_link_ends_its_session_for_a_verifying_round(why: str) -> None:
    """Every ``verify_interval_s``, or as soon as the peer owes an answer for a key of our
    quarantine, the dialing side ends its settled live session gracefully and its next
    session is a one-shot round (which verifies); the one after that is live again."""
    cfg: dict[str, Any] = {"repair": True, "verify_interval_s": 20.0 if why == "interval" else None}
    wire, ra, _ = _live_pair(**cfg)
    ra.probe = why == "probe"
    now = _run_until_close(wire, 60.0)
    a, b = wire.links
    closes = [e for e in wire.events[0] if isinstance(e, CloseConnection)]
    assert closes and closes[0].graceful and closes[0].flush
    assert now >= 20.0 if why == "interval" else now < 20.0
    a.connection_lost(now)
    b.connection_lost(now)
    assert not any(isinstance(e, LinkFailed) for e in a.events() + b.events())
    due = a.get_timer()
    assert due is not None and due - now < 1.0  # redials at once, not after a round interval
    a.handle_timer(due)
    a.connection_made(due)
    assert a.session is not None and not a.session.live


def test_an_accepting_link_never_ends_a_live_session_to_verify() -> None:
    """Only the dialing side restarts a session: it is the one that can dial again."""
    wire, _, rb = _live_pair(repair=True, verify_interval_s=5.0)
    rb.probe = True
    _run_until_close(wire, 4.0)
    assert not any(isinstance(e, CloseConnection) for e in wire.events[1])
