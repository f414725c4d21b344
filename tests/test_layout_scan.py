"""Bulk decoding of change-log chunks (crdt_kv/layout_scan.py) agrees with the per-entry
parsers it stands in for, and leaves every case they refuse to them."""

from __future__ import annotations

import pytest

from crdt_kv.errors import CorruptionError
from crdt_kv.layout import (
    DATA,
    log_key,
    pack_log,
    pack_record,
    record_body,
    unpack_record_at,
)
from crdt_kv.layout_scan import REWRITTEN, SLOW, log_chunk, records_at


def test_log_chunk_keeps_order_and_skips_one_source() -> None:
    items = [
        (log_key(5), pack_log(b"a", None)),
        (log_key(6), pack_log(b"b", None, source=2)),
        (log_key(7), pack_log(b"c", (1, 2, 3), source=3)),
        (log_key(9), pack_log(b"d", (1, 2, 3))),
    ]
    assert log_chunk(items, -1) == ([5, 6, 7, 9], [DATA + k for k in (b"a", b"b", b"c", b"d")])
    assert log_chunk(items, 2) == ([5, 7, 9], [DATA + k for k in (b"a", b"c", b"d")])
    assert log_chunk(items, 0) == ([6, 7], [DATA + b"b", DATA + b"c"])


def test_log_chunk_refuses_a_malformed_entry() -> None:
    with pytest.raises(CorruptionError):
        log_chunk([(log_key(1), b"")], -1)
    with pytest.raises(CorruptionError):
        log_chunk([(b"l\x00", pack_log(b"a", None))], -1)


def test_records_at_decodes_known_peers_and_defers_the_rest() -> None:
    cache: dict[bytes, str] = {}
    good = pack_record(7 << 16, 3, b"p", False, b"\x01")
    dead = pack_record(8 << 16, 4, b"p", True, b"")
    keys = [DATA + b"a", DATA + b"b", DATA + b"c", DATA + b"d", DATA + b"e", DATA + b"f"]
    blobs = [good, good, dead, None, b"\x02junk", good[:5]]
    seqs = [3, 9, 4, 5, 6, 7]
    assert records_at(keys, blobs, seqs, cache) == [SLOW] * 6  # nothing cached yet
    first = unpack_record_at(b"a", good, 3, cache, 16)  # the slow path fills the cache
    got = records_at(keys, blobs, seqs, cache)
    assert got[0] == first and got[1] == REWRITTEN and got[3:] == [SLOW] * 3
    assert got[2] == unpack_record_at(b"c", dead, 4, cache, 16)
    assert got[2] != REWRITTEN and got[2].deleted  # type: ignore[union-attr]


def test_records_at_leaves_an_unknown_format_and_an_empty_peer_to_the_parser() -> None:
    cache = {b"p": "p"}
    empty_peer = record_body(1 << 20, b"", False, b"\x01") + (7).to_bytes(8, "big")
    short = record_body(1 << 20, b"p", False, b"")[:-1] + (7).to_bytes(8, "big")[:3]
    assert records_at([DATA + b"k"] * 2, [empty_peer, short], [7, 7], cache) == [SLOW, SLOW]
    with pytest.raises(CorruptionError, match="empty peer id"):
        unpack_record_at(b"k", empty_peer, 7, cache, 16)
