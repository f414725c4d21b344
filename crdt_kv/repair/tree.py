"""The range tree of repair: a 16-ary split of the position space (``spec/reconcile.md``).

Level ``L`` node ``i`` is the half-open range of positions
``[i * 2**(64 - 4L), (i + 1) * 2**(64 - 4L))``: level 0 is the whole space, level 16 single
positions. Both replicas name ranges by ``(level, index)``, so a message never carries a
bound the receiver must trust. Pure arithmetic.
"""

from __future__ import annotations

import hashlib

from crdt_kv.version import RawEntry

__all__ = [
    "FANOUT",
    "FANOUT_BITS",
    "FP_BYTES",
    "FP_MASK",
    "MAX_LEVEL",
    "POSITION_SPACE",
    "child_nodes",
    "node_range",
    "position",
    "state_stamp",
    "valid_node",
]

FP_BYTES = 8
"""Bytes of a fingerprint sum on the wire."""
POSITION_SPACE = 1 << 64
FANOUT_BITS = 4
FANOUT = 1 << FANOUT_BITS
"""Children per node."""
MAX_LEVEL = 64 // FANOUT_BITS
"""The deepest level: its nodes are single positions and are never split."""
FP_MASK = (1 << (8 * FP_BYTES)) - 1
"""A fingerprint sum or item hash travels reduced mod 2**64 (its low 8 bytes)."""

_BLAKE2B_64 = hashlib.blake2b(digest_size=8)

Node = tuple[int, int]
"""``(level, index)``."""


def valid_node(level: int, index: int) -> bool:
    """True when ``(level, index)`` names a node of the tree."""
    return 0 <= level <= MAX_LEVEL and 0 <= index < (1 << (FANOUT_BITS * level))


def node_range(level: int, index: int) -> tuple[int, int]:
    """The half-open position range ``[lo, hi)`` of node ``(level, index)``."""
    shift = 64 - FANOUT_BITS * level
    return index << shift, (index + 1) << shift


def child_nodes(level: int, index: int) -> list[Node]:
    """The 16 children of a node above :data:`MAX_LEVEL`, in position order."""
    first = index << FANOUT_BITS
    return [(level + 1, first + j) for j in range(FANOUT)]


def position(key: bytes) -> int:
    """The position of encoded key ``key``: BLAKE2b-64 of it, big-endian (design A)."""
    h = _BLAKE2B_64.copy()
    h.update(key)
    return int.from_bytes(h.digest(), "big")


def state_stamp(e: RawEntry) -> int:
    """The newest stamp of a state: every sibling's and every context entry's."""
    return max((e.hlc, *(o.hlc for o in e.others), *(h for _, h in e.context)))
