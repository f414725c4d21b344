"""Property tests: random histories and session schedules converge to the LWW winners.

Replicas (2 to 4 in-memory stores) take random writes and deletes interleaved with
sessions between random pairs in random modes, batch sizes and windows; sessions may be
cut at a random byte offset (both sides then drop their state, as after a lost
connection) and bytes are delivered in random chunk sizes. A final full sync round (a
chain forth and back) must leave every digest equal and every key at the winner of a
simple model: the write with the greatest (hlc, peer, deleted, value). Hypothesis prints
the falsifying schedule; the ``ci`` profile also prints a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import itertools
from typing import Any

import cbor2
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

import crdt_kv
from crdt_kv.protocol import FrameDecoder, Request, Session, SessionFailed, encode_frame
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock

PEERS = ["p0", "p1", "p2", "p3"]
KEYS = [f"k{i}" for i in range(6)]

puts = st.tuples(st.just("put"), st.integers(0, 3), st.sampled_from(KEYS), st.integers(0, 9))
dels = st.tuples(st.just("del"), st.integers(0, 3), st.sampled_from(KEYS))
ticks = st.tuples(st.just("tick"), st.integers(0, 3))
syncs = st.tuples(
    st.just("sync"),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from(["both", "push", "pull"]),
    st.sampled_from(["both", "push", "pull"]),
    st.one_of(st.none(), st.none(), st.integers(0, 600)),  # cut after so many bytes
    st.one_of(st.none(), st.integers(1, 40)),  # chunk size
    st.integers(1, 4),  # max_batch_entries
    st.integers(1, 3),  # window
)
ops = st.lists(st.one_of(puts, syncs, puts, dels, syncs, ticks, puts), max_size=40)


class Run:
    def __init__(self, n: int) -> None:
        self.clock = ManualClock()
        self.stores = [
            crdt_kv.open(backend="memory", peer_id=PEERS[i], clock=self.clock) for i in range(n)
        ]
        self.model: dict[bytes, tuple[int, str, bool, bytes]] = {}

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def write(self, i: int, key: str, value: int | None) -> None:
        s = self.stores[i % len(self.stores)]
        ver = s.put(key, value) if value is not None else s.delete(key)
        cand = (ver.hlc, ver.peer, value is None, b"" if value is None else cbor2.dumps(value))
        k = key.encode()
        if k not in self.model or cand > self.model[k]:
            self.model[k] = cand

    def session(
        self,
        i: int,
        j: int,
        *,
        mode_a: str = "both",
        mode_b: str = "both",
        cut: int | None = None,
        chunk: int | None = None,
        max_batch_entries: int = 1000,
        window: int = 4,
    ) -> bool:
        """One session between stores i and j; True if it completed."""
        a, b = self.stores[i % len(self.stores)], self.stores[j % len(self.stores)]
        if a is b:
            return True
        kw: dict[str, Any] = {"max_batch_entries": max_batch_entries, "window": window}
        sa, sb = Session(a, mode=mode_a, **kw), Session(b, mode=mode_b, **kw)
        sa.start()
        sb.start()
        budget = cut if cut is not None else 1 << 62
        for _ in range(100_000):
            moved = False
            for src, dst in ((sa, sb), (sb, sa)):
                data = src.data_to_send()
                if not data or budget <= 0:
                    continue
                data = data[:budget]
                budget -= len(data)
                step = chunk or len(data)
                for k in range(0, len(data), step):
                    for ev in dst.receive_data(data[k : k + step]):
                        assert not isinstance(ev, SessionFailed), ev
                moved = True
            if not moved:
                break
        done = sa.complete and sb.complete
        assert done or cut is not None, "an uncut session must complete"
        sa.close("cut")
        sb.close("cut")
        for x, y in ((a, b), (b, a)):
            assert x.cursor(y.peer_id, y.incarnation) <= y.last_seq
        return done

    def check_states(self, *, final: bool) -> None:
        for s in self.stores:
            for r in s.raw_changes():
                w = self.model[r.key]
                assert (r.hlc, r.peer, r.deleted, r.value) <= w  # never beyond the winner
                if final:
                    assert (r.hlc, r.peer, r.deleted, r.value) == w, r.key
            if final:
                assert {r.key for r in s.raw_changes()} == set(self.model)


# Cheap examples: run five times the profile's count so rare schedules are reached.
@settings(max_examples=settings.default.max_examples * 5)
@given(n=st.integers(2, 4), history=ops)
@example(
    n=3,
    history=[
        ("put", 0, "k0", 1), ("put", 0, "k1", 2), ("put", 1, "k0", 3), ("del", 2, "k2"),
        ("sync", 0, 1, "both", "pull", 40, 3, 1, 1),
        ("sync", 0, 1, "both", "both", None, 5, 1, 2),
        ("put", 2, "k3", 4), ("sync", 2, 0, "push", "both", None, None, 2, 1),
    ],
)  # fmt: skip
def test_random_schedules_converge_to_lww_winners(n: int, history: list[tuple[Any, ...]]) -> None:
    run = Run(n)
    try:
        for op in history:
            note(repr(op))
            if op[0] == "put":
                run.write(op[1], op[2], op[3])
            elif op[0] == "del":
                run.write(op[1], op[2], None)
            elif op[0] == "tick":
                run.clock.advance(op[1])
            else:
                _, i, j, ma, mb, cut, chunk, mbe, win = op
                run.session(
                    i, j, mode_a=ma, mode_b=mb, cut=cut, chunk=chunk,
                    max_batch_entries=mbe, window=win,
                )  # fmt: skip
            run.check_states(final=False)
        order = list(range(n))
        for i, j in itertools.pairwise(order):
            assert run.session(i, j)
        for i, j in itertools.pairwise(order[::-1]):
            assert run.session(i, j)
        run.check_states(final=True)
        digests = {s.digest() for s in run.stores}
        assert len(digests) == 1
        # A further round changes nothing and sends nothing new.
        seqs = [s.last_seq for s in run.stores]
        assert run.session(0, n - 1)
        assert [s.last_seq for s in run.stores] == seqs
    finally:
        run.close()


@given(
    n_entries=st.integers(1, 60),
    cuts=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
    mbe=st.integers(1, 8),
    window=st.integers(1, 4),
)
def test_repeated_cuts_resend_only_the_unacked_tail(
    n_entries: int, cuts: list[int], mbe: int, window: int
) -> None:
    """Across any number of cut sessions, nothing a cursor covers is ever sent again."""
    run = Run(2)
    try:
        a, b = run.stores
        for i in range(n_entries):
            run.write(0, f"key{i}", i)
        total_sent = 0
        for cut in [*cuts, None]:
            before = b.cursor(a.peer_id, a.incarnation)
            sa = Session(a, mode="push", max_batch_entries=mbe, window=window)
            sb = Session(b, mode="pull", max_batch_entries=mbe, window=window)
            sa.start()
            sb.start()
            budget = cut if cut is not None else 1 << 62
            for _ in range(10_000):
                moved = False
                for src, dst in ((sa, sb), (sb, sa)):
                    data = src.data_to_send()[: max(budget, 0)]
                    if data:
                        budget -= len(data)
                        dst.receive_data(data)
                        moved = True
                if not moved:
                    break
            after = b.cursor(a.peer_id, a.incarnation)
            # What this session sent is at most the tail after the cursor it started from.
            assert sa.stats.entries_sent <= n_entries - before
            assert after - before == sb.stats.entries_received
            total_sent += sa.stats.entries_sent
            sa.close()
            sb.close()
        assert b.cursor(a.peer_id, a.incarnation) == n_entries == len(b)
        assert a.digest() == b.digest()
        # Entries sent twice are exactly those in flight when a session was cut.
        assert total_sent - n_entries <= len(cuts) * window * mbe
    finally:
        run.close()


def _peer_stream(store: Store) -> bytes:
    """What a real peer (5 entries, batches of 2) sends to a fresh ``store`` asking from 0."""
    peer = crdt_kv.open(backend="memory", peer_id="peer", clock=ManualClock())
    try:
        for i in range(5):
            peer.put(f"p{i}", i)
        ps = Session(peer, max_batch_entries=2, mode="push")
        ps.start()
        ours = Session(store)
        ours.start()
        ps.receive_data(ours.data_to_send() + encode_frame(Request(0, False)))
        return ps.data_to_send()
    finally:
        peer.close()


@given(data=st.data())
def test_corrupted_streams_never_raise(data: st.DataObject) -> None:
    """Flip, drop or insert bytes in a real peer's stream: the session fails cleanly or
    (a flip inside a string is undetectable without checksums) applies what it decoded."""
    store = crdt_kv.open(backend="memory", peer_id="me", clock=ManualClock())
    try:
        stream = _peer_stream(store)
        assert len(FrameDecoder().feed(stream)) == 4  # Hello and 3 batches
        clean = Session(store)
        clean.start()
        buf = bytearray(stream)
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            kind = data.draw(st.sampled_from(["flip", "drop", "insert"]))
            if kind == "flip":
                buf[pos] ^= 1 << data.draw(st.integers(0, 7))
            elif kind == "drop":
                del buf[pos]
            else:
                buf.insert(pos, data.draw(st.integers(0, 255)))
        chunk = data.draw(st.integers(1, 64))
        events: list[Any] = []
        for k in range(0, len(buf), chunk):
            events += clean.receive_data(bytes(buf[k : k + chunk]))
        events += clean.receive_data(b"")
        fails = [e for e in events if isinstance(e, SessionFailed)]
        assert len(fails) <= 1
        if fails:
            assert clean.closed and clean.error is fails[0].error and not fails[0].by_peer
            assert events[-1] is fails[0] or not isinstance(events[-1], SessionFailed)
        assert len(store.cursors()) <= 1
        assert len(store) == sum(not r.deleted for r in store.raw_changes())
    finally:
        store.close()


@given(junk=st.binary(max_size=200), chunk=st.integers(1, 50))
def test_random_bytes_never_raise(junk: bytes, chunk: int) -> None:
    store = crdt_kv.open(backend="memory", peer_id="me", clock=ManualClock())
    try:
        sess = Session(store)
        sess.start()
        events = []
        for k in range(0, len(junk), chunk):
            events += sess.receive_data(junk[k : k + chunk])
        assert sum(isinstance(e, SessionFailed) for e in events) <= 1
        assert len(store) == 0 and store.cursors() == {}
    finally:
        store.close()


class LiveLink:
    """A live session pair with in-flight byte buffers, so delivery can be partial."""

    def __init__(self, a: Store, b: Store, mbe: int, window: int) -> None:
        self.sa = Session(a, live=True, max_batch_entries=mbe, window=window)
        self.sb = Session(b, live=True, max_batch_entries=mbe, window=window)
        self.bufs = {0: bytearray(), 1: bytearray()}  # 0: a -> b, 1: b -> a
        self.sa.start()
        self.sb.start()

    def deliver(self, direction: int, limit: int | None = None) -> bool:
        src, dst = (self.sa, self.sb) if direction == 0 else (self.sb, self.sa)
        buf = self.bufs[direction]
        buf += src.data_to_send()
        n = len(buf) if limit is None else min(limit, len(buf))
        if not n:
            return False
        data = bytes(buf[:n])
        del buf[:n]
        for ev in dst.receive_data(data):
            assert not isinstance(ev, SessionFailed), ev
        return True

    def close(self) -> None:
        self.sa.close("cut")
        self.sb.close("cut")


live_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 3), st.sampled_from(KEYS), st.integers(0, 9)),
        st.tuples(st.just("del"), st.integers(0, 3), st.sampled_from(KEYS)),
        st.tuples(st.just("tick"), st.integers(0, 3)),
        st.tuples(
            st.just("link"),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(1, 3),
            st.integers(1, 3),
        ),
        st.tuples(st.just("deliver"), st.integers(0, 5), st.integers(0, 1), st.integers(1, 200)),
        st.tuples(st.just("cut"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=settings.default.max_examples * 3)
@given(n=st.integers(2, 4), history=live_ops)
def test_live_mesh_with_partial_delivery_and_cuts_converges(
    n: int, history: list[tuple[Any, ...]]
) -> None:
    run = Run(n)
    links: dict[tuple[int, int], LiveLink] = {}
    dirty: set[int] = set()
    for idx, s in enumerate(run.stores):
        s.on_commit(lambda _seq, idx=idx: dirty.add(idx))

    def wake() -> None:
        for (i, j), lk in links.items():
            if i in dirty:
                lk.sa.local_changed()
            if j in dirty:
                lk.sb.local_changed()
        dirty.clear()

    def connect(i: int, j: int, mbe: int = 2, window: int = 2) -> None:
        i, j = sorted((i % n, j % n))
        if i != j and (i, j) not in links:
            links[(i, j)] = LiveLink(run.stores[i], run.stores[j], mbe, window)

    try:
        for op in history:
            note(repr(op))
            if op[0] == "put":
                run.write(op[1], op[2], op[3])
            elif op[0] == "del":
                run.write(op[1], op[2], None)
            elif op[0] == "tick":
                run.clock.advance(op[1])
            elif op[0] == "link":
                connect(op[1], op[2], op[3], op[4])
            elif links:
                key = sorted(links)[op[1] % len(links)]
                if op[0] == "cut":
                    links.pop(key).close()
                else:
                    links[key].deliver(op[2], op[3])
            wake()
            run.check_states(final=False)
        for i in range(n - 1):
            connect(i, i + 1)
        for _ in range(10_000):
            wake()
            moved = False
            for lk in links.values():
                moved = lk.deliver(0) or moved
                moved = lk.deliver(1) or moved
            if not moved and not dirty:
                break
        for lk in links.values():
            assert lk.sa.settled and lk.sb.settled
            assert lk.sa.lag == 0 and lk.sb.lag == 0
        run.check_states(final=True)
        assert len({s.digest() for s in run.stores}) == 1
    finally:
        for lk in links.values():
            lk.close()
        run.close()
