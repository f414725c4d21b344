"""The byte layout of range fingerprints and tombstone collection (issue 10): the key index
``x``, the bucket fingerprints ``f`` and their metadata. Split from :mod:`crdt_kv.layout`,
like :mod:`crdt_kv.layout_siblings`; pure byte packing.

- ``x`` + u64be(position) + key -> ``b""``: every key that has a record (as of the last
  checkpoint: keys created since are held in memory), in position order
  (:mod:`crdt_kv.fingerprint`), so a range of positions is one scan.
- ``f`` + u16be(bucket) -> u64be(count) + 32-byte sum: the fingerprint of one bucket
  (absent = empty).
- ``mfingerprints``: u64be, the sequence ``x`` and ``f`` describe (the last checkpoint);
  stores of the previous release lack all three and build them once at open.
- ``mgc``: the counters after the newest collection (seq, live count, digest, HLC), which
  win over the newest log trailer when their seq is not below it (a collection may delete
  the newest log entry).
- ``mgc_horizon``: u64be, the collection horizon (monotone).
- ``q`` + key -> ``b""``: a key in quarantine: the scrub found its record rotten (gone, or
  unreadable) and removed it; this replica does not know the key's state
  (:mod:`crdt_kv.store.scrub`).
- ``mquarantine_hold``: u64be, the collection horizon when the quarantine last became
  non-empty: while it is, the replica's gossip claims no write beyond it.
"""

from __future__ import annotations

import struct

from crdt_kv.errors import CorruptionError
from crdt_kv.fingerprint import BUCKETS
from crdt_kv.layout import LOG, META

__all__ = [
    "BUCKET",
    "BUCKET_END",
    "BUCKET_KEYS",
    "INDEX",
    "INDEX_END",
    "META_FINGERPRINTS",
    "META_GC",
    "META_GC_HORIZON",
    "META_QUARANTINE_HOLD",
    "QUARANTINE",
    "QUARANTINE_END",
    "bucket_of_key",
    "index_bound",
    "index_key",
    "pack_bucket",
    "pack_gc_state",
    "record_log_key",
    "unpack_bucket",
    "unpack_gc_state",
    "unpack_index_key",
]

INDEX = b"x"
INDEX_END = b"y"
BUCKET = b"f"
BUCKET_END = b"g"
QUARANTINE = b"q"
QUARANTINE_END = b"r"
META_QUARANTINE_HOLD = META + b"quarantine_hold"
META_FINGERPRINTS = META + b"fingerprints"
META_GC = META + b"gc"
META_GC_HORIZON = META + b"gc_horizon"

_BUCKET = struct.Struct(">Q32s")
_GC = struct.Struct(">QQ32sQ")  # seq, live count, digest, hlc
_U16 = struct.Struct(">H")
_POSITION_END = 1 << 64

BUCKET_KEYS: tuple[bytes, ...] = tuple(BUCKET + _U16.pack(b) for b in range(BUCKETS))
"""The storage key of each bucket, precomputed (every commit writes some)."""


def index_key(pos_bytes: bytes, key: bytes) -> bytes:
    """The index entry of ``key`` at its 8-byte position."""
    return INDEX + pos_bytes + key


def index_bound(pos: int) -> bytes:
    """Where positions ``>= pos`` start in the index (``pos`` may be 2**64: the end)."""
    if pos >= _POSITION_END:
        return INDEX_END
    return INDEX + pos.to_bytes(8, "big")


def unpack_index_key(k: bytes) -> tuple[int, bytes]:
    """``(position, key)`` of an index entry."""
    if len(k) < 9 or k[:1] != INDEX:
        raise CorruptionError(f"malformed index key {k!r}")
    return int.from_bytes(k[1:9], "big"), k[9:]


def bucket_of_key(k: bytes) -> int:
    """The bucket number of a bucket storage key."""
    if len(k) != 3 or k[:1] != BUCKET or _U16.unpack_from(k, 1)[0] >= BUCKETS:
        raise CorruptionError(f"malformed bucket key {k!r}")
    return int(_U16.unpack_from(k, 1)[0])


def pack_bucket(count: int, total: int) -> bytes:
    """A bucket's value: its record count and the sum (mod 2**256) of their hashes."""
    return _BUCKET.pack(count, total.to_bytes(32, "big"))


def unpack_bucket(blob: bytes) -> tuple[int, int]:
    try:
        count, total = _BUCKET.unpack(blob)
    except struct.error:
        raise CorruptionError(f"malformed bucket fingerprint {blob!r}") from None
    return int(count), int.from_bytes(total, "big")


def record_log_key(record: bytes) -> bytes:
    """The change-log key of a stored record (its sequence is the record's last 8 bytes)."""
    return LOG + record[-8:]


def pack_gc_state(seq: int, count: int, digest: int, hlc: int) -> bytes:
    return _GC.pack(seq, count, digest.to_bytes(32, "big"), hlc)


def unpack_gc_state(blob: bytes) -> tuple[int, int, int, int]:
    """``(seq, live count, digest, hlc)`` of the ``mgc`` value."""
    try:
        seq, count, digest, hlc = _GC.unpack(blob)
    except struct.error:
        raise CorruptionError("malformed collection state (mgc)") from None
    return int(seq), int(count), int.from_bytes(digest, "big"), int(hlc)
