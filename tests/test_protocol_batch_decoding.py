"""Batches decoded row by row (crdt_kv/protocol/batch_decoding.py): what a hostile frame
can make the decoder allocate, and every well-formed encoding decoding the same."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from byte_edits import edited
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_kv import accel
from crdt_kv.errors import RejectedDataError, RemoteProtocolError
from crdt_kv.protocol import batch_decoding
from crdt_kv.protocol.batch_decoding import SMALL_FRAME_BYTES, decode_batch_fields
from crdt_kv.protocol.cbor_reader import MAX_STRING_CHUNKS, Reader
from crdt_kv.protocol.messages import (
    MAX_CONTROL_FRAME_BYTES,
    Batch,
    decode_message,
    encode_message,
)
from crdt_kv.version import RawEntry

T0 = 1_700_000_000_000
MIB = 1 << 20
SIBS = 20_000


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak of Python allocations while ``fn`` runs (it may raise)."""
    tracemalloc.start()
    try:
        fn()
    except RemoteProtocolError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def head(major: int, n: int) -> bytes:
    return bytes([major << 5 | 26]) + n.to_bytes(4, "big")


def batch_prefix(rows_head: bytes, to: int = 1 << 40) -> bytes:
    """``[2, 0, to, false, T0, ["a"], `` then ``rows_head`` (the entries array's head)."""
    return b"\x87\x02\x00" + cbor2.dumps(to) + b"\xf4" + cbor2.dumps(T0) + b"\x81\x61a" + rows_head


HOSTILE: dict[str, bytes] = {
    # a key made of a million empty arrays (a generic decoder: ~64 MB of lists)
    "nested key": batch_prefix(b"\x81") + b"\x85" + head(4, MIB) + b"\x80" * MIB,
    # a row claiming a million fields
    "wide row": batch_prefix(b"\x81") + head(4, MIB) + b"\x00" * MIB,
    # a million rows announced, more than the agreed 1,000
    "many rows": batch_prefix(head(4, MIB)) + b"\x85\x41k\x00\x00\x00\xf6" * (MIB // 7),
    # the same without announcing it: an indefinite array of rows
    "indefinite rows": batch_prefix(b"\x9f") + b"\x85\x41k\x00\x00\x00\xf6" * (MIB // 7),
    # a peer table of half a million two-character ids
    "many peers": b"\x87\x02\x00\x1b"
    + (1 << 40).to_bytes(8, "big")
    + b"\xf4"
    + cbor2.dumps(T0)
    + head(4, MIB // 2)
    + b"\x62ab" * (MIB // 2)
    + b"\x80",
    # the same, the array's length left open
    "many peers, indefinite": b"\x87\x02\x00\x1b"
    + (1 << 40).to_bytes(8, "big")
    + b"\xf4"
    + cbor2.dumps(T0)
    + b"\x9f"
    + b"\x62ab" * (MIB // 2)
    + b"\xff\x80",
    # a sibling-state row of many tiny siblings
    "many siblings": batch_prefix(b"\x81")
    + b"\x87\x41k\x00\x00\x00\xf6\x80"
    + head(4, SIBS)
    + b"\x84\x00\x00\x00\xf6" * (SIBS),
}


@pytest.mark.parametrize("name", [n for n in HOSTILE if n != "many siblings"])
def test_hostile_batches_are_refused_having_allocated_little(name: str) -> None:
    payload = HOSTILE[name]
    with pytest.raises(RemoteProtocolError):
        decode_message(payload, max_batch_entries=1000)
    assert peak_bytes(lambda: decode_message(payload, max_batch_entries=1000)) < MIB // 2


def test_an_open_ended_peer_table_is_refused_from_its_head_in_a_large_frame() -> None:
    payload = HOSTILE["many peers, indefinite"]
    with pytest.raises(RemoteProtocolError, match=r"batch\.peers is an indefinite-length array"):
        decode_message(payload, max_batch_entries=1000)
    # The row-by-row reader itself still accepts the encoding (a small frame's batch is
    # decoded whole by cbor2, which accepts it too).
    small = cbor2.dumps([2, 0, 1, False, T0, ["a"], [[b"k", 0, 0, 0, b"v"]]])
    open_peers = small.replace(b"\x81\x61a", b"\x9f\x61a\xff", 1)
    assert decode_message(open_peers) == incremental(open_peers) == decode_message(small)


def test_many_tiny_siblings_cost_objects_the_message_holds_only() -> None:
    payload = HOSTILE["many siblings"]
    msg = decode_message(payload, max_batch_entries=1000)
    assert isinstance(msg, Batch) and len(msg.entries[0].others) == SIBS
    # The objects decoded are the batch's own (one RawEntry per sibling), nothing more.
    assert peak_bytes(lambda: decode_message(payload, max_batch_entries=1000)) < 200 * (SIBS)


def test_messages_other_than_batches_are_small() -> None:
    big = cbor2.dumps([4, 1, "x" * MAX_CONTROL_FRAME_BYTES])
    with pytest.raises(RemoteProtocolError, match="only batches may exceed"):
        decode_message(big)


def incremental(payload: bytes) -> Batch:
    """``payload`` decoded by the row-by-row path whatever its size."""
    r = Reader(payload)
    n = r.array("message")
    assert r.uint("type") == 2
    batch = Batch(*decode_batch_fields(r, n, None))
    r.finish()
    return batch


def test_a_nested_tag_in_a_row_is_named() -> None:
    payload = cbor2.dumps([2, 0, 5, False, T0, ["a"], [[cbor2.CBORTag(24, b"k"), 0, 0, 0, None]]])
    with pytest.raises(RemoteProtocolError, match=r"CBOR tag in batch.entries\[0\].key"):
        incremental(payload)
    with pytest.raises(RemoteProtocolError, match="CBOR tag"):
        decode_message(payload)


def test_frames_over_the_small_size_take_the_row_by_row_path() -> None:
    rows = tuple(RawEntry(b"k%d" % i, b"v" * 100, (T0 << 16) + i, "a", False) for i in range(800))
    payload = encode_message(Batch(0, 800, True, rows))
    assert len(payload) > SMALL_FRAME_BYTES
    assert decode_message(payload) == incremental(payload) == Batch(0, 800, True, rows)


# --- every well-formed encoding decodes the same ----------------------------------------


def indefinite(obj: Any, draw_flags: list[bool]) -> bytes:
    """``obj`` encoded with some arrays and byte strings in indefinite form (chunked)."""
    if isinstance(obj, list):
        flag = draw_flags.pop() if draw_flags else False
        inner = b"".join(indefinite(x, draw_flags) for x in obj)
        if flag:
            return b"\x9f" + inner + b"\xff"
        return cbor2.dumps([None] * len(obj))[: -len(obj) or None] + inner if obj else b"\x80"
    if isinstance(obj, bytes) and obj and draw_flags and draw_flags.pop():
        return b"\x5f" + b"".join(cbor2.dumps(obj[i : i + 1]) for i in range(len(obj))) + b"\xff"
    return cbor2.dumps(obj)


peers = st.sampled_from(["a", "b", "c"])
stamps = st.integers(T0 << 16, (T0 + 10_000) << 16)


@st.composite
def entries(draw: st.DrawFn) -> RawEntry:
    key = draw(st.binary(min_size=1, max_size=8))
    deleted = draw(st.booleans())
    value = b"" if deleted else draw(st.binary(max_size=8))
    entry = RawEntry(key, value, draw(stamps), draw(peers), deleted)
    if draw(st.booleans()):
        return entry
    others = tuple(
        RawEntry(key, v or b"", draw(stamps), draw(peers), v is None)
        for v in draw(st.lists(st.one_of(st.none(), st.binary(max_size=4)), max_size=3))
    )
    context = tuple(sorted({p: draw(stamps) for p in draw(st.lists(peers, max_size=3))}.items()))
    if not others and not context:
        return entry
    return RawEntry(key, value, entry.hlc, entry.peer, deleted, 0, context, others)


@given(st.lists(entries(), max_size=6), st.lists(st.booleans(), max_size=60))
def test_indefinite_and_chunked_encodings_decode_like_the_preferred_one(
    rows: list[RawEntry], flags: list[bool]
) -> None:
    batch = Batch(0, len(rows), True, tuple(rows))
    preferred = encode_message(batch)
    assert decode_message(preferred) == incremental(preferred) == batch
    other = indefinite(cbor2.loads(preferred), list(flags))
    assert decode_message(other) == incremental(other) == batch


def test_an_lww_receiver_refuses_sibling_states_from_their_heads() -> None:
    payload = HOSTILE["many siblings"]
    with pytest.raises(RejectedDataError, match=r"entries\[0\] is a state with others"):
        decode_message(payload, max_batch_entries=1000, lww_only=True)
    assert peak_bytes(lambda: decode_message(payload, lww_only=True)) < MIB // 4
    # A sibling-state row of one version and no context is an LWW row (spec 4.3).
    row = [b"k", 0, 0, 0, b"v", [], []]
    big = cbor2.dumps([2, 0, 1, False, T0, ["a" * 200] * 400, [row]])
    assert len(big) > SMALL_FRAME_BYTES
    [entry] = decode_message(big, lww_only=True).entries  # type: ignore[union-attr]
    assert (entry.key, entry.value, entry.others, entry.context) == (b"k", b"v", (), ())


def test_a_key_of_a_million_chunks_is_refused_at_the_65th() -> None:
    chunks = MIB // 2
    payload = (
        batch_prefix(b"\x81") + b"\x85\x5f" + b"\x41a" * chunks + b"\xff" + b"\x00\x00\x00\xf6"
    )
    assert len(payload) > SMALL_FRAME_BYTES
    with pytest.raises(RemoteProtocolError, match=r"more than 64 chunks"):
        decode_message(payload)
    assert peak_bytes(lambda: _refused(payload)) < 64 * 1024


def test_a_chunked_value_is_held_to_the_chunk_limit_too() -> None:
    def frame(chunks: int) -> bytes:
        value = b"\x5f" + b"\x41v" * chunks + b"\xff"
        filler = b"\x85\x41f\x00\x00\x00" + cbor2.dumps(b"x" * SMALL_FRAME_BYTES)
        return batch_prefix(b"\x82") + filler + b"\x85\x41k\x00\x00\x00" + value

    _, entry = decode_message(frame(MAX_STRING_CHUNKS)).entries  # type: ignore[union-attr]
    assert entry.value == b"v" * MAX_STRING_CHUNKS
    with pytest.raises(RemoteProtocolError, match=r"more than 64 chunks"):
        decode_message(frame(MAX_STRING_CHUNKS + 1))


def _refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)


# --- the fast path of plain rows (crdt_kv.accel.lww_run) ------------------------------------

RUNS = [accel.PURE.lww_run] if accel.COMPILED is None else [accel.PURE.lww_run, accel.lww_run]
wide_stamps = st.one_of(stamps, st.integers(0, (1 << 64) - 1))


def no_fast_path(buf: bytes, pos: int, count: int, base: int, peers: list[str]) -> Any:
    return [], pos


def outcome(payload: bytes, run: Any, limit: int | None, lww_only: bool) -> object:
    """What the row-by-row path makes of ``payload`` with ``run`` as its fast path: the
    batch and the items counted, or the error's type and message."""
    saved = batch_decoding.lww_run
    batch_decoding.lww_run = run
    try:
        r = Reader(payload)
        n = r.array("message")
        r.uint("type")
        batch = Batch(*decode_batch_fields(r, n, limit, lww_only=lww_only))
        r.finish()
    except Exception as exc:
        return type(exc), str(exc)
    finally:
        batch_decoding.lww_run = saved
    for e in batch.entries:
        assert type(e.key) is bytes and type(e.value) is bytes
    return batch, r.items


@st.composite
def plain_entries(draw: st.DrawFn) -> RawEntry:
    deleted = draw(st.booleans())
    value = b"" if deleted else draw(st.binary(max_size=300))
    key = draw(st.binary(max_size=30))
    return RawEntry(key, value, draw(wide_stamps), draw(peers), deleted)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.one_of(plain_entries(), plain_entries(), entries()), max_size=8),
    extra=st.integers(0, 2),
    limit=st.one_of(st.none(), st.integers(0, 9)),
    lww_only=st.booleans(),
    flags=st.lists(st.booleans(), max_size=8),
    edits=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 4000), st.integers(0, 255)), max_size=3
    ),
)
def test_the_fast_path_decodes_and_fails_like_the_checking_path(
    rows: list[RawEntry],
    extra: int,
    limit: int | None,
    lww_only: bool,
    flags: list[bool],
    edits: list[tuple[int, int, int]],
) -> None:
    batch = Batch(3, 3 + max(0, len(rows) - 1 + extra), True, tuple(rows))  # extra 0: too many
    payload = encode_message(batch)
    if flags:
        payload = indefinite(cbor2.loads(payload), list(flags))
    payload = edited(payload, edits)
    want = outcome(payload, no_fast_path, limit, lww_only)
    for run in RUNS:
        assert outcome(payload, run, limit, lww_only) == want
    if not edits and not flags and limit is None and extra and not lww_only:
        assert isinstance(want, tuple)
        assert want[0] == batch
