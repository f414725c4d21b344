"""The range tree of repair: a 16-ary split of the position space (``spec/reconcile.md``).

Level ``L`` node ``i`` is the half-open range of positions
``[i * 2**(64 - 4L), (i + 1) * 2**(64 - 4L))``: level 0 is the whole space, level 16 single
positions. Both replicas name ranges by ``(level, index)``, so a message never carries a
bound the receiver must trust. Pure arithmetic.
"""

from __future__ import annotations

from crdt_kv.fingerprint import FP_BYTES, POSITION_SPACE, position, state_stamp

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

FANOUT_BITS = 4
FANOUT = 1 << FANOUT_BITS
"""Children per node."""
MAX_LEVEL = 64 // FANOUT_BITS
"""The deepest level: its nodes are single positions and are never split."""
FP_MASK = (1 << (8 * FP_BYTES)) - 1
"""A fingerprint sum or item hash travels reduced mod 2**64 (its low 8 bytes)."""


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
