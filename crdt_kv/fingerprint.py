"""Key positions and range fingerprints (issue 10): pure, no storage.

Every key has a *position* in ``[0, 2**64)``, the first 8 bytes of BLAKE2b of the encoded
key, so positions spread keys evenly whatever their names and are the same on every
replica. Repair compares half-open ranges ``[lo, hi)`` of positions: the *fingerprint* of a
range is the number of keys in it and the sum, mod 2**256, of their digest contributions
(``H(key, body)``, ``spec/data-model.md`` section 10), so the fingerprint of the whole space
is the store digest. Within a range items are ordered by ``(position, key)``.

The store keeps the fingerprint of each of ``2**BUCKET_BITS`` equal buckets (the top bits
of the position) up to date with every commit, so a bucket-aligned range costs no read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from crdt_kv.version import RawEntry

__all__ = [
    "BUCKETS",
    "BUCKET_BITS",
    "BUCKET_SHIFT",
    "BUCKET_WIDTH",
    "FP_BYTES",
    "POSITION_SPACE",
    "Statistics",
    "bucket_of",
    "position",
    "position_bytes",
    "state_stamp",
]

BUCKET_BITS = 12
"""Buckets are the top 12 bits of a position: 4,096 of them."""
BUCKETS = 1 << BUCKET_BITS
BUCKET_SHIFT = 64 - BUCKET_BITS
BUCKET_WIDTH = 1 << BUCKET_SHIFT
"""Positions per bucket: bucket ``b`` is ``[b * BUCKET_WIDTH, (b + 1) * BUCKET_WIDTH)``."""
FP_BYTES = 8
"""Bytes of a fingerprint's sum sent on the wire (the sum mod 2**64)."""
POSITION_SPACE = 1 << 64
"""Positions are in ``[0, POSITION_SPACE)``; a range's ``hi`` may equal it."""

_BLAKE2B_64 = hashlib.blake2b(digest_size=8)


def position_bytes(key: bytes) -> bytes:
    """The 8-byte big-endian position of encoded key ``key`` (BLAKE2b, digest size 8, no
    key, salt or personalisation): what the store's index keys carry."""
    h = _BLAKE2B_64.copy()
    h.update(key)
    return h.digest()


def position(key: bytes) -> int:
    """The position of encoded key ``key`` in ``[0, 2**64)``."""
    h = _BLAKE2B_64.copy()
    h.update(key)
    return int.from_bytes(h.digest(), "big")


def bucket_of(pos: int) -> int:
    """The bucket holding position ``pos``."""
    return pos >> BUCKET_SHIFT


def state_stamp(e: RawEntry) -> int:
    """The newest stamp a key's state holds: in ``lww`` mode its ``hlc``; in ``siblings``
    mode the greatest of every sibling's stamp and every explicit context stamp.

    A state whose stamp is below the collection horizon is one every member has already
    received (or superseded): absence wins over it.
    """
    if not e.others and not e.context:
        return e.hlc
    return max(e.hlc, *(o.hlc for o in e.others), *(h for _, h in e.context))


@dataclass(frozen=True, slots=True)
class Statistics:
    """What a store holds and what collection did, from in-memory counters (O(1)).

    ``keys`` counts records (live keys and tombstones), ``live`` the keys with a live value,
    ``tombstones`` the rest. ``gc_horizon`` is the collection horizon (an HLC stamp; 0 =
    none). ``collected`` counts the tombstones :meth:`~crdt_kv.store.Store.gc` removed
    since open, ``dropped`` the keys :meth:`~crdt_kv.store.Store.drop_collected` removed
    since open, ``refused_below_horizon`` the incoming states refused since open because
    they are older than the horizon for a key this store does not hold. ``quarantined``
    counts the keys in quarantine (lost here, state unknown: :meth:`~crdt_kv.store.Store.scrub`),
    ``rotten`` the rotten records the scrub found since open.
    """

    live: int
    tombstones: int
    keys: int
    gc_horizon: int
    collected: int
    refused_below_horizon: int
    dropped: int = 0
    quarantined: int = 0
    rotten: int = 0
