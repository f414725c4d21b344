"""Reading range fingerprints and the items of position ranges (issue 10), for repair.

A range ``[lo, hi)`` of positions (:mod:`crdt_kv.fingerprint`) is summed from the
in-memory bucket fingerprints where it covers whole buckets, and by scanning the position
index (``x``), adding the keys created since the last checkpoint (whose index entries are
still in memory, :meth:`~crdt_kv.store.buckets.Buckets.fresh_index`), and reading the records
where it covers part of one. Reads run under the
commit lock, so the buckets and the records agree (and the in-memory backend, whose
iterators do not tolerate concurrent writes, is safe).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable

from crdt_kv.backends.base import Backend
from crdt_kv.errors import CorruptionError
from crdt_kv.fingerprint import BUCKET_WIDTH, POSITION_SPACE
from crdt_kv.layout import DATA, body_hash, unpack_record
from crdt_kv.layout_fingerprints import index_bound, unpack_index_key
from crdt_kv.store.buckets import Buckets
from crdt_kv.version import RawEntry

__all__ = ["Ranges", "check_range"]

_MOD = 1 << 256


def check_range(lo: object, hi: object) -> tuple[int, int]:
    """``(lo, hi)`` if they bound a half-open range of positions, else ValueError."""
    if type(lo) is not int or type(hi) is not int or not 0 <= lo <= hi <= POSITION_SPACE:
        raise ValueError(f"position range [{lo!r}, {hi!r}) is not within [0, 2**64)")
    return lo, hi


class Ranges:
    """Range fingerprints, range items and current states of keys, for one store."""

    __slots__ = ("_backend", "_buckets", "_check", "_lock")

    def __init__(
        self,
        backend: Backend,
        buckets: Buckets,
        lock: threading.RLock,
        check: Callable[[], None],
    ) -> None:
        self._backend, self._buckets, self._lock, self._check = backend, buckets, lock, check

    def fingerprint(self, lo: int, hi: int) -> tuple[int, int]:
        """``(sum mod 2**256, count)`` of the keys whose position is in ``[lo, hi)``."""
        lo, hi = check_range(lo, hi)
        with self._lock:
            self._check()
            first = -(-lo // BUCKET_WIDTH)
            end = hi // BUCKET_WIDTH
            if first >= end:
                return self._scan_sum(lo, hi)
            b = self._buckets
            b.settle()
            total, count = sum(b.sums[first:end]), sum(b.counts[first:end])
            for a, z in ((lo, first * BUCKET_WIDTH), (end * BUCKET_WIDTH, hi)):
                if a < z:
                    s, n = self._scan_sum(a, z)
                    total, count = total + s, count + n
            return total % _MOD, count

    def items(self, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
        """``(position, key, H)`` of every key in ``[lo, hi)``, by ``(position, key)``."""
        lo, hi = check_range(lo, hi)
        with self._lock:
            self._check()
            return self._scan(lo, hi)

    def raw_entries(self, keys: Iterable[bytes]) -> list[RawEntry]:
        """The current states of ``keys`` (encoded), in their order; missing keys skipped."""
        ks = list(keys)
        with self._lock:
            self._check()
            blobs = self._backend.get_many([DATA + k for k in ks])
        return [unpack_record(k, b) for k, b in zip(ks, blobs, strict=True) if b is not None]

    def _scan_sum(self, lo: int, hi: int) -> tuple[int, int]:
        rows = self._scan(lo, hi)
        return sum(h for _, _, h in rows) % _MOD, len(rows)

    def _scan(self, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
        if lo >= hi:
            return []
        found = [
            unpack_index_key(k) for k, _ in self._backend.iterate(index_bound(lo), index_bound(hi))
        ]
        buckets = self._buckets
        buckets.settle()
        if buckets.fresh:
            xs = buckets.fresh_index()
            first = bisect_left(xs, index_bound(lo))
            end = bisect_left(xs, index_bound(hi), first)
            if first < end:
                # A key whose record rotted away (its index entry stays until the scrub)
                # and was then written again is new to the commit path, so it is both on
                # disk and fresh: listed twice, the peer would see it as one it lacks.
                found = sorted({*found, *(unpack_index_key(x) for x in xs[first:end])})
        blobs = self._backend.get_many([DATA + k for _, k in found])
        out: list[tuple[int, bytes, int]] = []
        for (pos, k), blob in zip(found, blobs, strict=True):
            if blob is None:
                raise CorruptionError(f"position index names key {k!r}, which has no record")
            out.append((pos, k, body_hash(k, blob[:-8])))
        return out
