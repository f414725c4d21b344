"""Frame limits (crdt_kv/protocol/framing.py): the small limit before the peer's Hello, the
limit each Hello states and the sender fitting its batches to it, and nothing of a failed
decode kept alive."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crdt_kv
from crdt_kv.codec import MAX_KEY_BYTES, MAX_VALUE_BYTES
from crdt_kv.errors import ConfigError, RemoteProtocolError
from crdt_kv.horizon import MAX_GOSSIP_ROWS, GossipRow
from crdt_kv.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    HELLO_MAX_FRAME_BYTES,
    MIN_MAX_FRAME_BYTES,
    Batch,
    FrameDecoder,
    Hello,
    LinkConfig,
    Request,
    Session,
    decode_message,
    encode_frame,
    encode_message,
)
from crdt_kv.protocol.framing import short
from crdt_kv.protocol.handshake import fit_hello
from crdt_kv.protocol.messages import gossip_row_wire
from crdt_kv.protocol.storage import (
    BATCH_OVERHEAD,
    entry_size,
    fit_frame,
    fit_frame_sized,
    row_bound,
)
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from crdt_kv.version import RawEntry


def mem(peer: str, clock: ManualClock) -> Store:
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock)


def hello(peer: str, **kw: Any) -> Hello:
    fields: dict[str, Any] = dict(
        version=3, cluster_id="default", peer_id=peer, incarnation=b"i" * 16, hlc=1 << 16,
        last_seq=0, send=True, receive=True, live=False, key_encoding="utf-8",
        value_encoding="cbor", max_batch_entries=1000,
    )  # fmt: skip
    fields.update(kw)
    return Hello(**fields)


def frames_of(data: bytes) -> list[Any]:
    return [decode_message(p) for p in FrameDecoder(max_frame_bytes=1 << 30).feed(data)]


def pump(x: Session, y: Session, seen: list[bytes] | None = None) -> None:
    for _ in range(10_000):
        moved = False
        for src, dst in ((x, y), (y, x)):
            data = src.data_to_send()
            if data:
                if seen is not None and src is x:
                    seen.extend(FrameDecoder(max_frame_bytes=1 << 30).feed(data))
                dst.receive_data(data)
                moved = True
        if not moved:
            return


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1 << 16, MIN_MAX_FRAME_BYTES - 1, 1 << 32, 2.5e7])
def test_a_frame_limit_too_small_for_one_entry_is_a_config_error(limit: Any) -> None:
    store = mem("a", ManualClock())
    with pytest.raises(ConfigError, match="max_frame_bytes must be an int in"):
        Session(store, max_frame_bytes=limit)
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        LinkConfig(max_frame_bytes=limit)
    assert MIN_MAX_FRAME_BYTES > MAX_VALUE_BYTES + MAX_KEY_BYTES
    Session(store, max_frame_bytes=MIN_MAX_FRAME_BYTES)


# --- the Hello's limit on the wire -------------------------------------------------------


def test_hello_states_its_limit_only_when_not_the_default() -> None:
    plain = encode_message(hello("a"))
    assert len(cbor2.loads(plain)) == 13
    assert decode_message(plain) == hello("a")
    h = hello("a", max_frame_bytes=MIN_MAX_FRAME_BYTES)
    payload = encode_message(h)
    assert cbor2.loads(payload)[13] == MIN_MAX_FRAME_BYTES
    assert decode_message(payload) == h


def test_hello_with_a_limit_below_one_entry_is_refused() -> None:
    payload = cbor2.loads(encode_message(hello("a")))
    payload.append(1 << 16)
    with pytest.raises(RemoteProtocolError, match=r"hello\.max_frame_bytes"):
        decode_message(cbor2.dumps(payload))


def test_hello_with_a_big_gossip_is_trimmed_to_the_hello_limit() -> None:
    rows = tuple(GossipRow("p" * 200 + str(i), 1 << 60, 1 << 47, 1 << 60) for i in range(2000))
    h = hello("a" * 255, cluster_id="c" * 255, gc=rows[:MAX_GOSSIP_ROWS])
    assert len(encode_message(h)) > HELLO_MAX_FRAME_BYTES
    fitted = fit_hello(h)
    assert len(encode_message(fitted)) <= HELLO_MAX_FRAME_BYTES
    assert fitted.gc == h.gc[: len(fitted.gc)] and len(fitted.gc) > 10
    more = fitted.gc + h.gc[len(fitted.gc) : len(fitted.gc) + 1]
    assert len(encode_message(fitted.__class__(**{**_fields(fitted), "gc": more}))) > (
        HELLO_MAX_FRAME_BYTES
    )


def _fields(h: Hello) -> dict[str, Any]:
    return {name: getattr(h, name) for name in Hello.__slots__}


# --- the small limit before the Hello ---------------------------------------------------------


def test_first_frame_over_the_hello_limit_is_refused_before_it_is_buffered() -> None:
    b = Session(mem("b", ManualClock()))
    b.start()
    b.data_to_send()
    events = b.receive_data(struct.pack(">I", HELLO_MAX_FRAME_BYTES + 1) + b"\x80" * 100)
    assert b.closed and f"max_frame_bytes={HELLO_MAX_FRAME_BYTES}" in str(b.error)
    assert events and b._inbox.buffered == 0


def test_frames_after_the_hello_in_the_same_read_get_the_full_limit() -> None:
    clock = ManualClock()
    b = mem("b", clock)
    b.put("k", 1)
    sess = Session(b)
    sess.start()
    sess.data_to_send()
    big_proof = Request(0, False, (b"x" * 60_000, 1))
    data = encode_frame(hello("a", hlc=clock.now << 16, send=False)) + encode_frame(big_proof)
    assert len(encode_frame(big_proof)) > HELLO_MAX_FRAME_BYTES
    sess.receive_data(data)
    assert sess.remote is not None and sess.remote.peer_id == "a"
    assert "max_frame_bytes" not in str(sess.error)


def test_a_failed_decode_keeps_no_traceback_alive() -> None:
    clock = ManualClock()
    b = Session(mem("b", clock))
    b.start()
    b.data_to_send()
    b.receive_data(encode_frame(hello("a", hlc=clock.now << 16, send=False)))
    junk = cbor2.dumps([9, *([[]] * 100_000)])  # an unknown type after 100,000 objects
    b.receive_data(struct.pack(">I", len(junk)) + junk)
    err = b.error
    assert isinstance(err, RemoteProtocolError) and "unknown message type" in str(err)
    assert err.__traceback__ is None and err.__context__ is None and err.__cause__ is None


def test_error_messages_do_not_repr_huge_values() -> None:
    assert len(short(list(range(1_000_000)))) < 80
    assert len(short(b"x" * 10_000_000)) < 80
    assert short("abc") == "'abc'"


# --- the sender fits the receiver's limit ------------------------------------------------------


def test_sender_fits_batches_to_the_receivers_stated_limit() -> None:
    clock = ManualClock()
    a, b = mem("a", clock), mem("b", clock)
    big = MAX_VALUE_BYTES - 64
    for i in range(3):
        a.put(f"big{i}", b"v" * big)
        a.put(f"small{i}", i)
    x = Session(a, mode="push", max_batch_bytes=1 << 26, max_frame_bytes=1 << 26, repair=False)
    y = Session(b, mode="pull", max_frame_bytes=MIN_MAX_FRAME_BYTES, repair=False)
    x.start()
    y.start()
    sent: list[bytes] = []
    pump(x, y, sent)
    assert x.complete and y.complete, (x.error, y.error)
    assert dict(b.items()) == dict(a.items())
    batches = [decode_message(p) for p in sent]
    assert sum(isinstance(m, Batch) and len(m.entries) > 0 for m in batches) >= 3
    assert max(len(p) for p in sent) <= MIN_MAX_FRAME_BYTES


versions = st.builds(
    RawEntry,
    key=st.binary(max_size=300),
    value=st.binary(max_size=3000),
    hlc=st.integers(0, (1 << 64) - 1),
    peer=st.text(min_size=1, max_size=40),
    deleted=st.just(False),
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(versions, min_size=1, max_size=30),
    limit=st.integers(BATCH_OVERHEAD, 40_000),
    others=st.lists(versions, max_size=3),
)
def test_fitted_batches_never_exceed_the_limit(
    rows: list[RawEntry], limit: int, others: list[RawEntry]
) -> None:
    """Property: a batch cut by fit_frame encodes within the limit, unless it is one row."""
    if others:
        first = rows[0]
        rows[0] = RawEntry(
            first.key, first.value, first.hlc, first.peer, False, 0,
            tuple((o.peer, o.hlc) for o in others[:2]),
            tuple(RawEntry(first.key, o.value, o.hlc, o.peer, False) for o in others),
        )  # fmt: skip
    rows = [RawEntry(r.key, r.value, r.hlc, r.peer, r.deleted, i + 1, r.context, r.others)
            for i, r in enumerate(rows)]  # fmt: skip
    kept = fit_frame(rows, limit)
    assert kept == rows[: len(kept)] and kept
    assert fit_frame_sized(rows, limit) == (kept, sum(map(entry_size, kept)))
    size = len(encode_message(Batch(0, len(kept), False, tuple(kept))))
    assert size <= limit or len(kept) == 1
    if len(kept) < len(rows):  # cut only where one more row could overflow the frame
        assert BATCH_OVERHEAD + sum(map(row_bound, rows[: len(kept) + 1])) > limit


def _fit_by_search(h: Hello) -> Hello:
    """The reference: encode the Hello with each candidate number of rows."""
    if len(encode_message(h)) <= HELLO_MAX_FRAME_BYTES:
        return h
    lo, hi = 1, len(h.gc) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode_message(dataclasses.replace(h, gc=h.gc[:mid]))) <= HELLO_MAX_FRAME_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return dataclasses.replace(h, gc=h.gc[:lo])


_uints = st.one_of(st.integers(0, 30), st.integers(0, 1 << 17), st.integers(0, (1 << 64) - 1))
_rows = st.lists(
    st.builds(GossipRow, st.text(min_size=1, max_size=300), _uints, _uints, _uints),
    min_size=1,
    max_size=MAX_GOSSIP_ROWS,
)


@settings(max_examples=60, deadline=None)
@given(rows=_rows, name=st.text(min_size=1, max_size=255))
def test_fit_hello_keeps_the_most_rows_that_fit_as_encoding_each_candidate_would(
    rows: list[GossipRow], name: str
) -> None:
    h = hello(name, gc=tuple(rows))
    fitted = fit_hello(h)
    assert fitted == _fit_by_search(h)
    for g in rows[:5]:
        assert gossip_row_wire(g) == cbor2.dumps([g.peer, g.v, g.seen_ms, g.d])


@pytest.mark.parametrize("long_ids", [False, True])
def test_fit_hello_at_every_byte_of_room_matches_encoding_each_candidate(long_ids: bool) -> None:
    """Short ids keep about 500 rows (the array head is 3 bytes either way); long ones
    keep fewer than 256 of 1,024 (a 2-byte head where all rows would take 3)."""
    extra = 60 if long_ids else 0
    rows = tuple(
        GossipRow(f"peer-{i:04}" + "x" * (i % 37 + extra), i * 7919, (i * 104729) % (1 << 40), i)
        for i in range(1200)
    )
    trimmed = 0
    for pad in range(80):  # each byte of padding moves the room by one byte
        h = hello("a" + "b" * pad, gc=rows[:MAX_GOSSIP_ROWS])
        fitted = fit_hello(h)
        assert fitted == _fit_by_search(h)
        assert len(encode_message(fitted)) <= HELLO_MAX_FRAME_BYTES
        assert (len(fitted.gc) < 256) is long_ids
        trimmed += len(fitted.gc) < MAX_GOSSIP_ROWS
    assert trimmed == 80


def _hello_by_dumps(h: Hello) -> bytes:
    """The reference: the Hello's array written by cbor2 in one call."""
    flags = (1 if h.send else 0) | (2 if h.receive else 0) | (4 if h.live else 0)
    flags |= 8 if h.repair else 0
    fields: list[Any] = [
        0, h.version, h.cluster_id, h.peer_id, h.incarnation, h.hlc, h.last_seq, flags,
        h.key_encoding, h.value_encoding, h.max_batch_entries, h.conflicts,
        [[g.peer, g.v, g.seen_ms, g.d] for g in h.gc],
    ]  # fmt: skip
    if h.max_frame_bytes != DEFAULT_MAX_FRAME_BYTES:
        fields.append(h.max_frame_bytes)
    return cbor2.dumps(fields)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.builds(GossipRow, st.text(min_size=1, max_size=40), _uints, _uints, _uints),
        max_size=300,
    ),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    frame=st.sampled_from([DEFAULT_MAX_FRAME_BYTES, MIN_MAX_FRAME_BYTES, 1 << 30]),
)
def test_a_hello_is_encoded_as_cbor2_writes_its_array_with_rows_kept_per_object(
    rows: list[GossipRow], flags: tuple[bool, bool, bool, bool], frame: int
) -> None:
    send, receive, live, repair = flags
    h = hello(
        "p", gc=tuple(rows), send=send, receive=receive, live=live, repair=repair,
        max_frame_bytes=frame,
    )  # fmt: skip
    assert encode_message(h) == _hello_by_dumps(h)
    assert encode_message(h) == _hello_by_dumps(h)  # again, from the kept row encodings
    for n in (0, 23, 24, 255, 256, 1024):
        more = tuple(rows[:1]) * n
        assert encode_message(dataclasses.replace(h, gc=more)) == _hello_by_dumps(
            dataclasses.replace(h, gc=more)
        )
