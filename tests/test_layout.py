"""Record parsing edge cases of crdt_kv/layout.py (the storage format itself is checked
byte for byte against the spec vectors in test_spec_core.py)."""

from __future__ import annotations

import pytest

from crdt_kv.errors import CorruptionError
from crdt_kv.layout import record_body, unpack_record, unpack_record_at


def test_a_record_with_an_empty_peer_id_is_corrupt() -> None:
    """data-model.md 8.1: peer_len is 1..255; an empty peer id is refused, on the checked
    path and on the change-log scan's path alike (which never caches a refused id)."""
    blob = record_body(1 << 20, b"", False, b"\x01") + (7).to_bytes(8, "big")
    with pytest.raises(CorruptionError, match="empty peer id"):
        unpack_record(b"k", blob)
    with pytest.raises(CorruptionError, match="empty peer id"):
        unpack_record_at(b"k", blob, 7, {}, 16)
    good = record_body(1 << 20, b"p", False, b"\x01") + (7).to_bytes(8, "big")
    assert unpack_record(b"k", good).peer == "p"
