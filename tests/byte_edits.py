"""Damage for property tests of decoders: overwrite, cut and insert bytes."""

from __future__ import annotations

from hypothesis import strategies as st

EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 70_000), st.integers(0, 255)), max_size=3
)
"""Up to three ``(kind, at, byte)`` edits: kind 0 overwrites, 1 cuts, 2 inserts."""


def edited(payload: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """``payload`` with ``edits`` applied in order (positions taken modulo its length)."""
    buf = bytearray(payload)
    for kind, at, byte in edits:
        if kind == 0 and buf:
            buf[at % len(buf)] = byte
        elif kind == 1:
            del buf[at % (len(buf) + 1) :]
        else:
            buf[at:at] = bytes([byte])
    return bytes(buf)
