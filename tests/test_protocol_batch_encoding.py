"""The hand-made CBOR of single-version batch rows (crdt_kv/protocol/batch_encoding.py) is
byte for byte what ``cbor2.dumps`` makes of the same rows as lists, so the wire format
does not depend on which path encoded a batch."""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_kv.protocol.batch_encoding import array_head, lww_rows
from crdt_kv.protocol.messages import Batch, decode_message, encode_message
from crdt_kv.version import RawEntry

# Every width of a CBOR head, and both sides of each boundary.
EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 48) - 1]
lengths = st.sampled_from([0, 1, 23, 24, 255, 256, 300, 65535, 65536])


def _reference(entries: list[RawEntry], base: int, peers: dict[str, int]) -> bytes:
    rows: list[list[Any]] = [
        [e.key, (e.hlc >> 16) - base, e.hlc & 0xFFFF, peers[e.peer], None if e.deleted else e.value]
        for e in entries
    ]
    return cbor2.dumps(rows)


@st.composite
def entries(draw: st.DrawFn) -> list[RawEntry]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        klen = draw(st.one_of(st.integers(0, 40), lengths))
        vlen = draw(st.one_of(st.integers(0, 200), lengths))
        wall = draw(st.one_of(st.sampled_from(EDGES), st.integers(0, (1 << 48) - 1)))
        logical = draw(
            st.one_of(st.sampled_from([0, 23, 24, 255, 256, 65535]), st.integers(0, 65535))
        )
        deleted = draw(st.booleans())
        peer = draw(st.sampled_from(["a", "peer-b", "é"]))
        value = b"" if deleted and draw(st.booleans()) else bytes([i % 256]) * vlen
        out.append(RawEntry(b"k" * klen, value, (wall << 16) | logical, peer, deleted, i + 1))
    return out


@settings(max_examples=200, deadline=None)
@given(rows=entries(), low=st.booleans())
def test_rows_are_cbor2s_bytes(rows: list[RawEntry], low: bool) -> None:
    """Property: for any keys, values, stamps, tombstones and peers, the same bytes."""
    base = (min((e.hlc for e in rows), default=0) >> 16) if low else 0
    peers = {p: i for i, p in enumerate(dict.fromkeys(e.peer for e in rows))}
    assert lww_rows(rows, base, peers) == _reference(rows, base, peers)


def test_many_peers_use_wider_indexes() -> None:
    rows = [RawEntry(b"k", b"v", 1 << 16, f"p{i}", False, i + 1) for i in range(300)]
    peers = {e.peer: i for i, e in enumerate(rows)}
    assert lww_rows(rows, 1, peers) == _reference(rows, 1, peers)


def test_array_heads() -> None:
    for n in (0, 1, 23, 24, 255, 256, 65535, 65536):
        assert array_head(n) == cbor2.dumps([None] * n)[: len(array_head(n))]
    assert array_head(23) == b"\x97" and array_head(24) == b"\x98\x18"


@settings(max_examples=100, deadline=None)
@given(rows=entries())
def test_a_fast_batch_round_trips(rows: list[RawEntry]) -> None:
    """A whole Batch encoded through the fast path decodes to its entries (tombstones
    with an empty value)."""
    batch = Batch(3, 3 + len(rows), True, tuple(rows))
    got = decode_message(encode_message(batch))
    assert isinstance(got, Batch)
    want = [RawEntry(e.key, b"" if e.deleted else e.value, e.hlc, e.peer, e.deleted) for e in rows]
    assert [RawEntry(e.key, e.value, e.hlc, e.peer, e.deleted) for e in got.entries] == want
