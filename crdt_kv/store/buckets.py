"""The in-memory copy of the bucket fingerprints, loaded (or built once) at open.

Every commit moves the count and sum of the buckets its keys fall in; the committer
stages the new values, writes them in its batch (``f`` entries) and only then stores them
here, so memory never runs ahead of the backend.
"""

from __future__ import annotations

from crdt_kv.backends.base import Backend, Op
from crdt_kv.fingerprint import BUCKET_SHIFT, BUCKETS, position_bytes
from crdt_kv.layout import DATA, DATA_END, DATA_SKIP, body_hash
from crdt_kv.layout_fingerprints import (
    BUCKET,
    BUCKET_END,
    BUCKET_KEYS,
    INDEX,
    INDEX_END,
    META_FINGERPRINTS,
    bucket_of_key,
    index_key,
    pack_bucket,
    unpack_bucket,
)

__all__ = ["BUILD_CHUNK", "Buckets", "load_buckets"]

BUILD_CHUNK = 10_000
"""Index entries written per batch while building the index of an older store."""
_MOD = 1 << 256


class Buckets:
    """Count and hash sum (mod 2**256) of every bucket, and the total record count."""

    __slots__ = ("counts", "sums", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.sums = [0] * BUCKETS
        self.total = 0

    def stage(
        self, moves: dict[int, tuple[int, int]]
    ) -> tuple[list[Op], list[tuple[int, int, int]]]:
        """The ``f`` ops and new ``(bucket, count, sum)`` values for per-bucket moves
        ``{bucket: (count delta, sum delta)}``; :meth:`store` them after the write."""
        ops: list[Op] = []
        new: list[tuple[int, int, int]] = []
        counts, sums = self.counts, self.sums
        for b, (dc, ds) in moves.items():
            c, s = counts[b] + dc, (sums[b] + ds) % _MOD
            new.append((b, c, s))
            ops.append((BUCKET_KEYS[b], pack_bucket(c, s) if c else None))
        return ops, new

    def store(self, new: list[tuple[int, int, int]]) -> None:
        counts, sums = self.counts, self.sums
        total = self.total
        for b, c, s in new:
            total += c - counts[b]
            counts[b], sums[b] = c, s
        self.total = total


def load_buckets(backend: Backend) -> Buckets:
    """Read the bucket fingerprints, building the index and buckets first if the store
    predates them (``mfingerprints`` absent): one scan of the records."""
    if backend.get(META_FINGERPRINTS) is None:
        _build(backend)
    out = Buckets()
    for k, v in backend.iterate(BUCKET, BUCKET_END):
        b = bucket_of_key(k)
        out.counts[b], out.sums[b] = unpack_bucket(v)
    out.total = sum(out.counts)
    return out


def _build(backend: Backend) -> None:
    """Write the ``x`` entry of every record and every bucket, then ``mfingerprints``.

    Runs at open, before any commit. The index goes out in chunks (puts are idempotent, so
    a crash mid-build only means building again); the buckets and the marker go in the
    last batch, after clearing whatever an interrupted build may have left.
    """
    b = Buckets()
    ops: list[Op] = [(k, None) for k, _ in backend.iterate(INDEX, INDEX_END)]
    counts, sums = b.counts, b.sums
    for dk, blob in backend.iterate(DATA, DATA_END):
        k = dk[DATA_SKIP:]
        pb = position_bytes(k)
        i = int.from_bytes(pb, "big") >> BUCKET_SHIFT
        counts[i] += 1
        sums[i] = (sums[i] + body_hash(k, blob[:-8])) % _MOD
        ops.append((index_key(pb, k), b""))
        if len(ops) >= BUILD_CHUNK:
            backend.write(ops)
            ops = []
    if ops:
        backend.write(ops)
    final: list[Op] = [(k, None) for k, _ in backend.iterate(BUCKET, BUCKET_END)]
    final += [(BUCKET_KEYS[i], pack_bucket(c, sums[i])) for i, c in enumerate(counts) if c]
    final.append((META_FINGERPRINTS, b"1"))
    backend.write(final)
