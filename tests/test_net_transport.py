"""``crdt_kv.replicate`` over in-memory trio streams: convergence, modes, live relays,
cancellation, and hostile peers (crdt_kv/net/transport.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from net_helpers import (
    Model,
    RawPeer,
    assert_converged,
    assert_matches_model,
    hello_for,
    raw_frame,
    sync_pair,
    wait_until,
)

import crdt_kv
from crdt_kv import ClockSkewError, ProtocolError, RemoteProtocolError, Store
from crdt_kv.codec import MAX_VALUE_BYTES
from crdt_kv.hlc import pack
from crdt_kv.net import ReplicationResult, run_session
from crdt_kv.protocol import MIN_MAX_FRAME_BYTES, BatchApplied, Connected, Event, Session
from crdt_kv.protocol.messages import Abort, Ack, Hello, Request, encode_frame
from crdt_kv.testing import ManualClock


def conflicting_writes(
    stores: list[Store], clock: ManualClock, model: Model, *, keys: int, writes: int, seed: int
) -> None:
    """Interleaved puts and deletes of the same keys on every store, clock moving."""
    rng = random.Random(seed)
    for _ in range(writes):
        s = rng.choice(stores)
        key = f"k{rng.randrange(keys)}"
        if rng.random() < 0.15:
            model.delete(s, key)
        else:
            model.put(s, key, {"by": s.peer_id, "n": rng.randrange(1000)})
        if rng.random() < 0.5:
            clock.advance(rng.randrange(3))


# --- convergence ---------------------------------------------------------------------


async def test_two_stores_converge_to_lww_winners(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    model = Model()
    conflicting_writes([a, b], make_store.clock, model, keys=50, writes=400, seed=1)
    ra, rb = await sync_pair(a, b, max_batch_entries=7)
    assert ra.complete and rb.complete
    assert ra.peer_id == "b" and rb.peer_id == "a"
    # First contact between stores holding data: a reconciliation, then the logs.
    assert ra.stats.repairs == rb.stats.repairs == 1
    assert ra.stats.repair_entries > 0 and rb.stats.repair_entries > 0
    assert_converged([a, b])
    assert_matches_model(a, model)
    assert_matches_model(b, model)
    # The cursors were stored: a second round sends nothing.
    ra2, rb2 = await sync_pair(a, b)
    assert ra2.stats.entries_sent == rb2.stats.entries_sent == 0
    assert a.cursor("b", b.incarnation) == ra2.cursor == b.last_seq


async def test_equal_stamp_conflict_breaks_by_peer_id(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    va = a.put("k", "from a")
    vb = b.put("k", "from b")  # same clock, both fresh HLCs: equal stamps
    assert va.hlc == vb.hlc
    await sync_pair(a, b)
    assert a.get("k") == b.get("k") == "from b"
    assert_converged([a, b])


async def test_three_stores_converge_in_two_rounds(make_store: Any) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    model = Model()
    conflicting_writes([a, b, c], make_store.clock, model, keys=40, writes=600, seed=2)
    for _ in range(2):  # after one round b has everything; the second spreads it
        async with trio.open_nursery() as n:
            n.start_soon(sync_pair, a, b)
            n.start_soon(sync_pair, b, c)
    assert_converged([a, b, c])
    for s in (a, b, c):
        assert_matches_model(s, model)


async def test_live_sessions_converge_under_concurrent_writes(make_store: Any) -> None:
    """Writers keep writing the same keys on both ends of an A-B-C chain while live
    sessions run; once they stop, every replica holds the model's winners."""
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    clock: ManualClock = make_store.clock
    model = Model()

    async def writer(store: Store, seed: int) -> None:
        rng = random.Random(seed)
        for i in range(300):
            key = f"k{rng.randrange(30)}"
            if rng.random() < 0.1:
                model.delete(store, key)
            else:
                model.put(store, key, [store.peer_id, i])
            clock.advance(rng.randrange(2))
            if i % 7 == 0:
                await trio.sleep(0)

    async def live(x: Store, y: Store) -> None:
        sx, sy = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as n:
            n.start_soon(lambda: crdt_kv.replicate(x, sx, live=True, max_batch_entries=5))
            n.start_soon(lambda: crdt_kv.replicate(y, sy, live=True, max_batch_entries=5))

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(live, a, b)
            n.start_soon(live, b, c)
            async with trio.open_nursery() as w:
                w.start_soon(writer, a, 10)
                w.start_soon(writer, c, 11)
                w.start_soon(writer, b, 12)
            await wait_until(
                lambda: a.digest() == b.digest() == c.digest(), what="live convergence"
            )
            n.cancel_scope.cancel()
    for s in (a, b, c):
        assert_matches_model(s, model)


# --- modes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode_a", "mode_b", "a_to_b", "b_to_a"),
    [
        ("push", "both", True, False),
        ("pull", "both", False, True),
        ("both", "pull", True, False),
        ("both", "push", False, True),
        ("push", "pull", True, False),
        ("push", "push", False, False),
        ("pull", "pull", False, False),
    ],
)
async def test_modes_move_data_one_way_only(
    make_store: Any, mode_a: str, mode_b: str, a_to_b: bool, b_to_a: bool
) -> None:
    a, b = make_store("a"), make_store("b")
    for i in range(20):
        a.put(f"a{i}", i)
        b.put(f"b{i}", i)
    a_before, b_before = dict(a.items()), dict(b.items())
    ra, rb = await sync_pair(a, b, mode_a=mode_a, mode_b=mode_b, max_batch_entries=6)
    assert ra.complete and rb.complete
    want_b = {**b_before, **(a_before if a_to_b else {})}
    want_a = {**a_before, **(b_before if b_to_a else {})}
    assert dict(a.items()) == want_a
    assert dict(b.items()) == want_b
    assert ra.stats.entries_sent == (20 if a_to_b else 0)
    assert rb.stats.entries_sent == (20 if b_to_a else 0)
    # A direction that did not run stores no cursor either.
    assert (b.cursor("a", a.incarnation) > 0) is a_to_b
    assert (a.cursor("b", b.incarnation) > 0) is b_to_a


# --- live ----------------------------------------------------------------------------


async def test_live_write_after_catch_up_reaches_peer_and_relays(make_store: Any) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    a.put("old", 1)
    caught_up: list[tuple[str, BatchApplied]] = []

    def watcher(name: str) -> Callable[[Event], None]:
        def see(ev: Event) -> None:
            if isinstance(ev, BatchApplied) and ev.caught_up:
                caught_up.append((name, ev))

        return see

    async def live(x: Store, y: Store, name: str) -> None:
        sx, sy = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as n:
            n.start_soon(lambda: crdt_kv.replicate(x, sx, live=True, on_event=watcher(name)))
            n.start_soon(lambda: crdt_kv.replicate(y, sy, live=True, on_event=watcher(name)))

    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            n.start_soon(live, a, b, "ab")
            n.start_soon(live, b, c, "bc")
            await wait_until(lambda: c.get("old") == 1, what="catch-up through b")
            await wait_until(lambda: len(caught_up) >= 4, what="all four directions caught up")
            a.put("new", "hello")  # after catch-up: only live pushing can carry it
            await wait_until(lambda: b.get("new") == "hello", what="a -> b live")
            await wait_until(lambda: c.get("new") == "hello", what="a -> b -> c relay")
            c.delete("old")
            await wait_until(lambda: "old" not in a, what="c -> b -> a relay of a delete")
            n.cancel_scope.cancel()
    assert_converged([a, b, c])


async def test_live_session_with_one_shot_peer_completes(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    a.put("x", 1)
    b.put("y", 2)
    sa, sb = trio.testing.memory_stream_pair()
    results: list[ReplicationResult] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as n:

            async def run(store: Store, stream: trio.abc.Stream, live: bool) -> None:
                results.append(await crdt_kv.replicate(store, stream, live=live))

            n.start_soon(run, a, sa, True)
            n.start_soon(run, b, sb, False)
    assert len(results) == 2
    assert_converged([a, b])


# --- cancellation --------------------------------------------------------------------


async def test_cancelled_replicate_leaves_consistent_stores_and_closed_streams(
    make_store: Any,
) -> None:
    a, b = make_store("a"), make_store("b")
    n_entries = 3000
    with a.batch() as wb:
        for i in range(n_entries):
            wb.put(f"key{i:05d}", i)
    sa, sb = trio.testing.memory_stream_pair()
    applied = 0
    b_error: list[BaseException] = []

    def count(ev: Event) -> None:
        nonlocal applied
        if isinstance(ev, BatchApplied):
            applied += 1

    async def sender() -> None:
        try:
            await crdt_kv.replicate(a, sa, mode="push", max_batch_entries=10, window=1)
        except ProtocolError as exc:
            b_error.append(exc)

    with trio.fail_after(15):
        async with trio.open_nursery() as outer:
            outer.start_soon(sender)
            with trio.CancelScope() as scope:

                async def receiver() -> None:
                    await crdt_kv.replicate(
                        b, sb, mode="pull", max_batch_entries=10, window=1, on_event=count
                    )

                async with trio.open_nursery() as inner:
                    inner.start_soon(receiver)
                    await wait_until(lambda: applied >= 20, what="some batches applied")
                    scope.cancel()
    # The receiver's stream is closed; the sender saw the session end and reported it.
    with pytest.raises(trio.ClosedResourceError):
        await sb.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await sa.send_all(b"x")
    assert len(b_error) == 1
    # Consistent: b holds exactly a's log prefix up to its durable cursor.
    cursor = b.cursor("a", a.incarnation)
    assert 0 < cursor < n_entries
    prefix = {e.key: e.value for e in a.changes() if e.seq <= cursor}
    assert dict(b.items()) == prefix
    b.put("still", "usable")
    # Resuming sends only what is missing.
    ra, rb = await sync_pair(a, b, mode_a="push", mode_b="pull")
    assert ra.stats.entries_sent == n_entries - cursor
    assert rb.stats.entries_received == n_entries - cursor
    assert {k: v for k, v in b.items() if k != "still"} == dict(a.items())


async def test_cancel_before_peer_speaks_closes_stream(make_store: Any) -> None:
    a = make_store("a")
    sa, sb = trio.testing.memory_stream_pair()
    with trio.move_on_after(0.2) as scope:
        await crdt_kv.replicate(a, sa)
    assert scope.cancelled_caught
    peer = RawPeer(sb)
    msgs = await peer.drain()
    assert isinstance(msgs[0], Hello)
    assert isinstance(msgs[-1], Abort)  # told why, then closed
    assert a.last_seq == 0


# --- hostile peers -------------------------------------------------------------------


def batch_frame(from_seq: int, to_seq: int, rows: list[list[Any]], peers: list[str]) -> bytes:
    base = 0
    return raw_frame(cbor2.dumps([2, from_seq, to_seq, True, base, peers, rows]))


def good_rows(n: int, wall: int, start: int = 0) -> list[list[Any]]:
    return [[f"r{start + i}".encode(), wall, 0, 0, cbor2.dumps(i)] for i in range(n)]


def encode_ack(seq: int) -> bytes:
    return encode_frame(Ack(seq))


def encode_hello(wall: int) -> bytes:
    return encode_frame(hello_for("evil", hlc=pack(wall, 0)))


BAD_INPUTS: dict[str, Callable[[int], bytes]] = {
    "garbage payload": lambda wall: raw_frame(b"\xff\xfe not cbor at all"),
    "oversized length prefix": lambda wall: b"\xff\xff\xff\xf0" + b"x" * 100,
    "frame just over max_frame_bytes": lambda wall: (MIN_MAX_FRAME_BYTES + 1).to_bytes(4, "big"),
    "unknown message type": lambda wall: raw_frame(cbor2.dumps([9, 1, 2])),
    "trailing bytes": lambda wall: raw_frame(cbor2.dumps([3, 0]) + b"\x00"),
    "cbor tag": lambda wall: raw_frame(cbor2.dumps([3, cbor2.CBORTag(2, b"\x01")])),
    "value of wrong type": lambda wall: batch_frame(0, 1, [[b"k", wall, 0, 0, 5]], ["evil"]),
    "too many entries": lambda wall: batch_frame(0, 11, good_rows(11, wall), ["evil"]),
    "gap in sequence": lambda wall: batch_frame(5, 6, good_rows(1, wall), ["evil"]),
    "ack for nothing": lambda wall: encode_ack(7),
    "second hello": encode_hello,
    "undecodable value": lambda wall: batch_frame(0, 1, [[b"k", wall, 0, 0, b"\xff"]], ["e"]),
    "key not utf-8": lambda wall: batch_frame(0, 1, [[b"\xff", wall, 0, 0, b"\x01"]], ["e"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_frames_fail_the_session_and_apply_nothing(make_store: Any, case: str) -> None:
    a = make_store("a")
    a.put("mine", 1)
    before = (a.digest(), a.last_seq, dict(a.items()))
    wall = make_store.clock.now
    sa, sb = trio.testing.memory_stream_pair()
    peer = RawPeer(sb)
    events: list[Event] = []

    async def raw_side() -> None:
        hello = await peer.receive()
        assert isinstance(hello, Hello) and hello.peer_id == "a"
        await peer.send(hello_for("evil", hlc=pack(wall, 0), receive=False, last_seq=20))
        req = await peer.receive()
        assert isinstance(req, Request) and req.since == 0
        await peer.send_bytes(BAD_INPUTS[case](wall))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(raw_side)
            with pytest.raises(ProtocolError) as info:
                await crdt_kv.replicate(
                    a,
                    sa,
                    max_batch_entries=10,
                    max_frame_bytes=MIN_MAX_FRAME_BYTES,
                    on_event=events.append,
                )
        replies = await peer.drain()
    assert isinstance(info.value, RemoteProtocolError), info.value
    assert (a.digest(), a.last_seq, dict(a.items())) == before
    assert a.cursors() == {}
    assert isinstance(replies[-1], Abort), replies
    assert replies[-1].reason  # the peer is told why
    assert any(isinstance(e, Connected) for e in events)


async def test_good_batch_kept_bad_batch_after_it_rejected(make_store: Any) -> None:
    a = make_store("a")
    wall = make_store.clock.now
    sa, sb = trio.testing.memory_stream_pair()
    peer = RawPeer(sb)

    async def raw_side() -> None:
        await peer.receive()
        await peer.send(hello_for("evil", hlc=pack(wall, 0), receive=False, last_seq=4))
        await peer.receive()  # Request
        ok = batch_frame(0, 2, good_rows(2, wall), ["evil"])
        bad = batch_frame(2, 4, [[b"x", wall, 0, 3, None]], ["evil"])  # bad peer index
        await peer.send_bytes(ok[:-3])
        await trio.sleep(0.01)
        await peer.send_bytes(ok[-3:] + bad)

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(raw_side)
            with pytest.raises(RemoteProtocolError, match="peer index"):
                await crdt_kv.replicate(a, sa)
        replies = await peer.drain()
    assert dict(a.items()) == {"r0": 0, "r1": 1}
    assert a.cursor("evil", b"\x01" * 16) == 2
    assert [type(m) for m in replies] == [Ack, Abort]


async def test_skewed_batch_is_refused_whole(make_store: Any) -> None:
    a = make_store("a")
    wall = make_store.clock.now
    sa, sb = trio.testing.memory_stream_pair()
    peer = RawPeer(sb)

    async def raw_side() -> None:
        await peer.receive()
        await peer.send(hello_for("fast", hlc=pack(wall, 0), receive=False, last_seq=3))
        await peer.receive()
        rows = [*good_rows(2, wall), [b"future", wall + 3600000, 0, 0, cbor2.dumps(1)]]
        await peer.send_bytes(batch_frame(0, 3, rows, ["fast"]))

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(raw_side)
            with pytest.raises(ClockSkewError, match="fast"):
                await crdt_kv.replicate(a, sa)
        replies = await peer.drain()
    assert len(a) == 0 and a.cursors() == {}
    assert isinstance(replies[-1], Abort)


async def test_peer_closing_mid_sync_is_an_error(make_store: Any) -> None:
    a = make_store("a")
    wall = make_store.clock.now
    sa, sb = trio.testing.memory_stream_pair()
    peer = RawPeer(sb)

    async def raw_side() -> None:
        await peer.receive()
        await peer.send(hello_for("gone", hlc=pack(wall, 0), receive=False, last_seq=9))
        await peer.receive()
        await sb.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(raw_side)
            with pytest.raises(RemoteProtocolError, match="before the sync completed"):
                await crdt_kv.replicate(a, sa)


async def test_silent_peer_times_out(make_store: Any) -> None:
    a = make_store("a")
    sa, _sb = trio.testing.memory_stream_pair()
    with trio.fail_after(5), pytest.raises(RemoteProtocolError, match="said nothing"):
        await crdt_kv.replicate(a, sa, handshake_timeout_s=0.1)


async def test_run_session_reports_lag_while_running(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    with a.batch() as wb:
        for i in range(500):
            wb.put(f"k{i}", i)
    sa, sb = trio.testing.memory_stream_pair()
    session = Session(b, mode="pull", max_batch_entries=50, window=1)
    lags: list[int] = []

    def see(ev: Event) -> None:
        if isinstance(ev, BatchApplied):
            lags.append(session.lag)

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(lambda: crdt_kv.replicate(a, sa, mode="push", max_batch_entries=50))
            result = await run_session(session, sb, on_event=see)
    assert result.complete and result.cursor == 500
    # Several batches may arrive in one read; lag is read after the whole read.
    assert lags and lags[-1] == 0 and lags[0] < 500
    assert lags == sorted(lags, reverse=True)
    assert all(lag % 50 == 0 for lag in lags)


# --- stream shapes -------------------------------------------------------------------


class Trickle(trio.abc.Stream):
    """Delivers what the inner stream received in chunks of at most ``chunk`` bytes,
    so frames and even length prefixes arrive split across reads."""

    def __init__(self, inner: trio.abc.Stream, chunk: int) -> None:
        self.inner = inner
        self.chunk = chunk
        self.buf = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self.buf:
            self.buf = bytes(await self.inner.receive_some())
        out, self.buf = self.buf[: self.chunk], self.buf[self.chunk :]
        return out

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_frames_split_across_tiny_reads(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    model = Model()
    conflicting_writes([a, b], make_store.clock, model, keys=30, writes=200, seed=3)
    sa, sb = trio.testing.memory_stream_pair()
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(lambda: crdt_kv.replicate(a, Trickle(sa, 3), max_batch_entries=9))
            n.start_soon(lambda: crdt_kv.replicate(b, Trickle(sb, 1), max_batch_entries=9))
    assert_converged([a, b])
    assert_matches_model(a, model)


async def test_lockstep_streams_do_not_deadlock(make_store: Any) -> None:
    """Unbuffered streams: both sides stream big batches at each other at once."""
    a, b = make_store("a"), make_store("b")
    with a.batch() as wa, b.batch() as wb:
        for i in range(800):
            wa.put(f"a{i}", "x" * 200)
            wb.put(f"b{i}", "y" * 200)
    sa, sb = trio.testing.lockstep_stream_pair()
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(lambda: crdt_kv.replicate(a, sa, max_batch_entries=100))
            n.start_soon(lambda: crdt_kv.replicate(b, sb, max_batch_entries=100))
    assert_converged([a, b])
    assert len(a) == 1600


async def test_batches_are_cut_by_bytes(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    for i in range(40):
        a.put(f"k{i}", b"v" * 20_000)
    ra, rb = await sync_pair(a, b, mode_a="push", mode_b="pull", max_batch_bytes=64_000)
    assert_converged([a, b])
    # About three 20 kB values per 64 kB batch, never one batch for everything.
    assert 10 <= ra.stats.batches_sent <= 20
    assert rb.stats.batches_received == ra.stats.batches_sent


async def test_peer_silent_after_hello_times_out(make_store: Any) -> None:
    a = make_store("a")
    sa, sb = trio.testing.memory_stream_pair()
    peer = RawPeer(sb)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:

            async def raw_side() -> None:
                await peer.receive()
                await peer.send(hello_for("mute", hlc=pack(make_store.clock.now, 0)))

            n.start_soon(raw_side)
            with pytest.raises(RemoteProtocolError, match=r"sent nothing for 0\.2 s"):
                await crdt_kv.replicate(a, sa, idle_timeout_s=0.2)
        replies = await peer.drain()
    assert isinstance(replies[-1], Abort) and "idle" in replies[-1].reason


async def test_value_larger_than_a_frame_does_not_stall_replication(make_store: Any) -> None:
    """Fixed: a frame limit too small for the largest value is a ConfigError, and a sender
    fits its batches to the limit the receiver's Hello states, so a receiver at the
    smallest limit gets a log of maximal values behind and ahead of small ones."""
    a, b = make_store("a"), make_store("b")
    sa, sb = trio.testing.memory_stream_pair()
    with pytest.raises(crdt_kv.ConfigError, match="max_frame_bytes"):
        await crdt_kv.replicate(a, sa, max_frame_bytes=1 << 16)
    a.put("before", 1)
    a.put("huge", b"x" * (MAX_VALUE_BYTES - 16))
    a.put("huge2", b"y" * (MAX_VALUE_BYTES - 16))
    a.put("after", 2)
    sa, sb = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(lambda: crdt_kv.replicate(a, sa, max_batch_bytes=1 << 26))
            await crdt_kv.replicate(b, sb, max_frame_bytes=MIN_MAX_FRAME_BYTES)
    assert b.get("after") == 2 and b.get("huge2") == b"y" * (MAX_VALUE_BYTES - 16)
