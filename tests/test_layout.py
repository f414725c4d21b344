"""Record parsing edge cases of crdt_kv/layout.py (the storage format itself is checked
byte for byte against the spec vectors in test_spec_core.py)."""

from __future__ import annotations

import pytest

from crdt_kv.errors import CorruptionError
from crdt_kv.layout import record_body, stage_record, stage_records, unpack_record, unpack_record_at


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


def test_stage_records_stages_each_record_as_stage_record_does() -> None:
    """The bulk staging of a commit gives each item what stage_record gives it (ops in the
    same order, notes, log keys and the summed deltas), and refuses a malformed old record."""
    old = record_body(5 << 16, b"p", False, b"\x01") + (3).to_bytes(8, "big")
    dead = record_body(6 << 16, b"p", True, b"") + (4).to_bytes(8, "big")
    items = [
        (b"new", record_body(9 << 16, b"q", False, b"\x02"), None),
        (b"over", record_body(9 << 16, b"q", True, b""), old),
        (b"back", record_body(9 << 16, b"q", False, b"\x03"), dead),
    ]
    ops: list[tuple[bytes, bytes | None]] = []
    logs: list[tuple[bytes, bytes]] = []
    notes: list[tuple[bytes, int, int]] = []
    seq, digest, live = stage_records(items, 10, ops, logs, notes)
    want_ops: list[tuple[bytes, bytes | None]] = []
    want_digest = want_live = 0
    for i, (k, body, blob) in enumerate(items):
        old_log, record, lk, delta, count = stage_record(k, body, blob, 11 + i)
        if old_log is not None:
            want_ops.append((old_log, None))
        want_ops.append((b"d" + k, record))
        assert logs[i] == (lk, k)
        assert notes[i] == (k, delta, old_log is None)
        want_digest += delta
        want_live += count
    assert (seq, digest, live, ops) == (13, want_digest, want_live, want_ops)
    assert live == 1  # one new live key, one killed, one revived
    with pytest.raises(CorruptionError, match="'bad'"):
        stage_records([(b"bad", items[0][1], b"\x09" + old[1:])], 1, [], [], [])
    for short in (b"", b"\x01"):  # too short to read a format byte from: corrupt, not IndexError
        with pytest.raises(CorruptionError, match="'bad'"):
            stage_records([(b"bad", items[0][1], short)], 1, [], [], [])
        with pytest.raises(CorruptionError, match="'bad'"):
            stage_record(b"bad", items[0][1], short, 1)
