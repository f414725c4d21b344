"""Range reads: live records in key order between optional bounds, decoded.

Every iterator here is lazy: bounds are checked, and the store's closed check runs, on the
first ``next``. Reads take no lock; each backend read is atomic on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from crdt_kv.backends.base import Backend
from crdt_kv.codec import Decoder
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import DATA, DATA_END, DATA_SKIP, unpack_record
from crdt_kv.version import Entry, RawEntry

__all__ = ["RangeReader", "key_range", "stored_corruption", "to_entry"]

Bounds = tuple[Any, Any, Any, Any, bool, int | None]
"""``(gt, gte, lt, lte, reverse, limit)`` as the public range methods take them."""


def stored_corruption(r: RawEntry, exc: EncodingError) -> CorruptionError:
    """A stored key or value that does not decode is the storage's fault, not the caller's."""
    return CorruptionError(f"stored record of key {r.key!r} does not decode: {exc}")


def to_entry(r: RawEntry, kdec: Decoder, vdec: Decoder) -> Entry:
    """Decode a stored record into the :class:`Entry` users see."""
    try:
        key = kdec(r.key)
        value = None if r.deleted else vdec(r.value)
    except EncodingError as exc:
        raise stored_corruption(r, exc) from exc
    if not r.others and not r.context:
        return Entry(key, value, r.hlc, r.peer, r.deleted, r.seq, r.value)
    others = tuple(to_entry(o, kdec, vdec) for o in r.others)
    return Entry(key, value, r.hlc, r.peer, r.deleted, r.seq, r.value, r.context, others)


def key_range(
    bounds: Bounds, enc_key: Callable[[Any], bytes]
) -> tuple[bytes | None, bool, bytes | None, bool]:
    """Check ``bounds`` and encode them: ``(low key or None, low inclusive, high key or
    None, high inclusive)``. Raises ValueError for contradictory bounds or a bad limit."""
    gt, gte, lt, lte, _, limit = bounds
    if gt is not None and gte is not None:
        raise ValueError("give at most one of gt and gte")
    if lt is not None and lte is not None:
        raise ValueError("give at most one of lt and lte")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    lo = None if gte is None and gt is None else enc_key(gte if gte is not None else gt)
    hi = None if lt is None and lte is None else enc_key(lt if lt is not None else lte)
    return lo, gte is not None, hi, lte is not None


class RangeReader:
    """Key-ordered scans of live records for :meth:`Store.items` and friends."""

    __slots__ = ("_backend", "_check", "_enc_key", "_kdec", "_vdec")

    def __init__(
        self,
        backend: Backend,
        check: Callable[[], None],
        enc_key: Callable[[Any], bytes],
        kdec: Decoder,
        vdec: Decoder,
    ) -> None:
        self._backend, self._check, self._enc_key = backend, check, enc_key
        self._kdec, self._vdec = kdec, vdec

    def rows(self, bounds: Bounds) -> Iterator[RawEntry]:
        """Live records within ``bounds``; raises ValueError for contradictory bounds."""
        self._check()
        lo, lo_incl, hi, hi_incl = key_range(bounds, self._enc_key)
        start = DATA if lo is None else DATA + lo + (b"" if lo_incl else b"\x00")
        stop = DATA_END if hi is None else DATA + hi + (b"\x00" if hi_incl else b"")
        return self._scan(start, stop, bounds[4], bounds[5])

    def _scan(
        self, start: bytes, stop: bytes, reverse: bool, limit: int | None
    ) -> Iterator[RawEntry]:
        if limit == 0 or start >= stop:
            return
        n = 0
        for k, blob in self._backend.iterate(start, stop, reverse=reverse):
            r = unpack_record(k, blob, DATA_SKIP)
            if r.deleted:
                continue
            yield r
            n += 1
            if limit is not None and n >= limit:
                return

    def items(self, bounds: Bounds) -> Iterator[tuple[Any, Any]]:
        """Decoded ``(key, value)`` pairs."""
        kdec, vdec = self._kdec, self._vdec
        rows = self.rows(bounds)
        try:
            for r in rows:
                yield kdec(r.key), vdec(r.value)
        except EncodingError as exc:
            raise stored_corruption(r, exc) from exc

    def keys(self, bounds: Bounds) -> Iterator[Any]:
        """Decoded keys."""
        kdec = self._kdec
        rows = self.rows(bounds)
        try:
            for r in rows:
                yield kdec(r.key)
        except EncodingError as exc:
            raise stored_corruption(r, exc) from exc

    def values(self, bounds: Bounds) -> Iterator[Any]:
        """Decoded values."""
        vdec = self._vdec
        rows = self.rows(bounds)
        try:
            for r in rows:
                yield vdec(r.value)
        except EncodingError as exc:
            raise stored_corruption(r, exc) from exc
