"""Bulk decoding for change-log scans: a chunk of log items, then their records, in one
call each instead of one call per entry (the sending side of a full sync reads the log
this way; issue 13).

An extension of :mod:`crdt_kv.layout` (it knows the same byte offsets); everything that is
not the common well-formed case is left to :func:`~crdt_kv.layout.unpack_record_at` and
:func:`~crdt_kv.layout.log_key_and_source`, so errors and their messages stay theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

from crdt_kv.layout import (
    DATA,
    DATA_SKIP,
    FLAG_DELETED,
    FORMAT_VERSION,
    MIN_RECORD,
    RECORD_HEAD,
    SEQ_SIZE,
    log_key_and_source,
    seq_of_log_key,
)
from crdt_kv.version import RAW_SETTERS, RawEntry

__all__ = ["REWRITTEN", "SLOW", "log_chunk", "records_at"]

REWRITTEN = 0
"""A :func:`records_at` slot whose record was rewritten since (it is later in the log)."""
SLOW = 1
"""A :func:`records_at` slot to decode with :func:`~crdt_kv.layout.unpack_record_at`: a
missing, siblings, malformed or unknown-peer record (which may raise, when reached)."""

_PLAIN = b"\x00"
_LOG_KEY_SIZE = 1 + SEQ_SIZE


def log_chunk(items: Sequence[tuple[bytes, bytes]], skip: int) -> tuple[list[int], list[bytes]]:
    """The sequences and data keys (``DATA + key``) of change-log ``items`` (``(log key,
    log entry)`` pairs, in order) whose source is not ``skip``. Raises
    :class:`~crdt_kv.errors.CorruptionError` on the first malformed item, as a loop of
    :func:`log_key_and_source` and :func:`seq_of_log_key` would."""
    seqs: list[int] = []
    keys: list[bytes] = []
    add_seq, add_key = seqs.append, keys.append
    frombytes = int.from_bytes
    for lk, lv in items:
        if lv[:1] == _PLAIN and skip:
            add_key(DATA + lv[1:])
        else:
            k, source = log_key_and_source(lv)
            if source == skip:
                continue
            add_key(DATA + k)
        add_seq(frombytes(lk[1:], "big") if len(lk) == _LOG_KEY_SIZE else seq_of_log_key(lk))
    return seqs, keys


def records_at(
    keys: Sequence[bytes],
    blobs: Sequence[bytes | None],
    seqs: Sequence[int],
    peer_names: dict[bytes, str],
) -> list[RawEntry | int]:
    """Per data key: its record (stored at ``blobs[i]``) as a :class:`RawEntry` with
    ``seqs[i]``, or :data:`REWRITTEN`, or :data:`SLOW` (see there).

    Only well-formed format-1 records whose peer id is already in ``peer_names`` (the
    scan's cache, filled by :func:`~crdt_kv.layout.unpack_record_at`) are decoded here;
    this never raises on stored bytes, so the caller decides when a bad record is reached.
    """
    sk, sv, sh, sp, sd, ss, sc, so = RAW_SETTERS
    new, cls, frombytes, peer_of = object.__new__, RawEntry, int.from_bytes, peer_names.get
    out: list[RawEntry | int] = []
    append = out.append
    for key, blob, seq in zip(keys, blobs, seqs, strict=True):
        if blob is None or len(blob) < MIN_RECORD or blob[0] != FORMAT_VERSION:
            append(SLOW)
            continue
        end = RECORD_HEAD + blob[RECORD_HEAD - 1]
        peer = peer_of(blob[RECORD_HEAD:end])
        if peer is None or len(blob) < end + SEQ_SIZE:
            append(SLOW)
        elif frombytes(blob[-SEQ_SIZE:], "big") != seq:
            append(REWRITTEN)
        else:
            e = new(cls)
            sk(e, key[DATA_SKIP:])
            sv(e, blob[end:-SEQ_SIZE])
            sh(e, frombytes(blob[2:10], "big"))
            sp(e, peer)
            sd(e, bool(blob[1] & FLAG_DELETED))
            ss(e, seq)
            sc(e, ())
            so(e, ())
            append(e)
    return out
