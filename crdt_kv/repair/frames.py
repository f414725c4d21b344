"""Cutting one turn into frames no larger than the peer accepts.

A turn is zero or more :class:`Entries` frames followed by one or more :class:`Round`
frames, the last with ``last=True`` (``spec/reconcile.md``). Sizes are estimated per piece
and every frame is checked once encoded: an entries frame that came out too big is halved.
"""

from __future__ import annotations

from collections.abc import Sequence

from crdt_kv.errors import LocalProtocolError
from crdt_kv.protocol.storage import entry_size
from crdt_kv.repair.messages import Children, Entries, Items, Round, encode_frame
from crdt_kv.version import RawEntry

__all__ = ["turn_frames"]

_SLACK = 256
"""Bytes kept free in every frame for array headers and the length prefix."""


def _entry_estimate(e: RawEntry) -> int:
    peers = len(e.peer) + sum(len(o.peer) for o in e.others) + sum(len(p) for p, _ in e.context)
    return entry_size(e) + peers


def _entries_frames(entries: Sequence[RawEntry], limit: int) -> list[bytes]:
    frames: list[bytes] = []
    chunk: list[RawEntry] = []
    size = 0
    for e in entries:
        n = _entry_estimate(e)
        if chunk and size + n > limit - _SLACK:
            frames.extend(_fit(chunk, limit))
            chunk, size = [], 0
        chunk.append(e)
        size += n
    if chunk:
        frames.extend(_fit(chunk, limit))
    return frames


def _fit(chunk: list[RawEntry], limit: int) -> list[bytes]:
    frame = encode_frame(Entries(tuple(chunk)))
    if len(frame) - 4 <= limit:
        return [frame]
    if len(chunk) == 1:
        raise LocalProtocolError(
            f"the state of key {chunk[0].key!r:.80} takes {len(frame)} bytes, more than the "
            f"peer's max_frame_bytes={limit}"
        )
    half = len(chunk) // 2
    return _fit(chunk[:half], limit) + _fit(chunk[half:], limit)


def _range_estimate(r: Children | Items) -> int:
    if isinstance(r, Children):
        return 300
    return 24 + sum(len(k) + 14 for k in r.keys)


def turn_frames(
    entries: Sequence[RawEntry],
    ranges: Sequence[Children | Items],
    missing: Sequence[bytes],
    differing: Sequence[bytes],
    limit: int,
) -> list[bytes]:
    """The frames of one turn, each payload at most ``limit`` bytes."""
    frames = _entries_frames(entries, limit)
    budget = limit - _SLACK
    parts: list[tuple[list[Children | Items], list[bytes], list[bytes]]] = [([], [], [])]
    size = 0
    pieces: list[tuple[int, Children | Items | bytes, int]] = [
        *((0, r, _range_estimate(r)) for r in ranges),
        *((1, k, len(k) + 5) for k in missing),
        *((2, k, len(k) + 5) for k in differing),
    ]
    for slot, piece, n in pieces:
        if size + n > budget and size:
            parts.append(([], [], []))
            size = 0
        target = parts[-1][slot]
        target.append(piece)  # type: ignore[arg-type]
        size += n
    for i, (rs, ms, ds) in enumerate(parts):
        last = i == len(parts) - 1
        frames.append(encode_frame(Round(last, tuple(rs), tuple(ms), tuple(ds))))
    return frames
