"""The bucket fingerprints: exact in memory, saved to the ``f`` entries at checkpoints.

Every commit moves the count and sum of the buckets its keys fall in, in memory, after the
backend accepted the batch (so memory never runs ahead of storage). Writing the touched
``f`` entries in every commit would cost every put one more key write (a third more time
per put), so they are saved at *checkpoints* instead, with ``mfingerprints`` = the last
sequence they describe: every :data:`CHECKPOINT_KEYS` changed keys (inside the commit's own
batch), with every collection (which leaves no log entry), and at close. The ``x`` index
entries, by contrast, are written in the commit that creates the key, so ``x`` is always
exact.

Recovery needs no extra state: a key changed after the checkpoint has its log entry after
it (the log keeps each key's newest change), so at open the buckets of the keys logged
after ``mfingerprints`` are the only stale ones, and each is recomputed from its ``x``
range and its records. A clean close leaves nothing to recompute.
"""

from __future__ import annotations

from crdt_kv.backends.base import Backend, Op
from crdt_kv.fingerprint import BUCKET_SHIFT, BUCKET_WIDTH, BUCKETS, position_bytes
from crdt_kv.layout import (
    DATA,
    DATA_END,
    DATA_SKIP,
    LOG_END,
    body_hash,
    log_key,
    pack_u64,
    unpack_log,
    unpack_u64,
)
from crdt_kv.layout_fingerprints import (
    BUCKET,
    BUCKET_END,
    BUCKET_KEYS,
    INDEX,
    INDEX_END,
    META_FINGERPRINTS,
    bucket_of_key,
    index_bound,
    index_key,
    pack_bucket,
    unpack_bucket,
)

__all__ = ["BUILD_CHUNK", "CHECKPOINT_KEYS", "Buckets", "load_buckets"]

BUILD_CHUNK = 10_000
"""Index entries written per batch while building the index of an older store."""
CHECKPOINT_KEYS = 1 << 16
"""Changed keys after which a commit saves the bucket fingerprints: bounds the log a
reopen after a crash reads (a clean close saves them)."""
_MOD = 1 << 256


class Buckets:
    """Count and hash sum (mod 2**256) of every bucket, the total record count, and what
    changed since the last checkpoint (``dirty`` buckets, ``pending`` changed keys)."""

    __slots__ = ("counts", "dirty", "pending", "sums", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.sums = [0] * BUCKETS
        self.total = 0
        self.dirty: set[int] = set()
        self.pending = 0

    def stage(self, moves: dict[int, tuple[int, int]]) -> list[tuple[int, int, int]]:
        """The new ``(bucket, count, sum)`` values for per-bucket moves ``{bucket: (count
        delta, sum delta)}``; :meth:`store` them after the write."""
        counts, sums = self.counts, self.sums
        return [(b, counts[b] + dc, (sums[b] + ds) % _MOD) for b, (dc, ds) in moves.items()]

    def checkpoint_ops(self, staged: list[tuple[int, int, int]], seq: int) -> list[Op]:
        """The ops saving every dirty bucket (with ``staged`` values applied) as of ``seq``."""
        new = {b: (c, s) for b, c, s in staged}
        counts, sums = self.counts, self.sums
        ops: list[Op] = []
        for b in self.dirty | new.keys():
            c, s = new.get(b, (counts[b], sums[b]))
            ops.append((BUCKET_KEYS[b], pack_bucket(c, s) if c else None))
        ops.append((META_FINGERPRINTS, pack_u64(seq)))
        return ops

    def store(self, staged: list[tuple[int, int, int]], keys: int, saved: bool) -> None:
        """Take ``staged`` values of a write that changed ``keys`` keys; ``saved``: the
        write held :meth:`checkpoint_ops`."""
        counts, sums = self.counts, self.sums
        total = self.total
        for b, c, s in staged:
            total += c - counts[b]
            counts[b], sums[b] = c, s
        self.total = total
        if saved:
            self.dirty.clear()
            self.pending = 0
        else:
            self.dirty.update(b for b, _, _ in staged)
            self.pending += keys


def load_buckets(backend: Backend, seq: int) -> Buckets:
    """Read the bucket fingerprints of a store whose newest sequence is ``seq``: build the
    index and buckets first if the store predates them (``mfingerprints`` absent: one scan
    of the records); recompute the buckets changed after the last checkpoint."""
    saved = backend.get(META_FINGERPRINTS)
    if saved is None:
        _build(backend, seq)
        saved = pack_u64(seq)
    out = Buckets()
    for k, v in backend.iterate(BUCKET, BUCKET_END):
        b = bucket_of_key(k)
        out.counts[b], out.sums[b] = unpack_bucket(v)
    since = unpack_u64(saved)
    if since < seq:
        for _, v in backend.iterate(log_key(since + 1), LOG_END):
            key = unpack_log(v)[0]
            out.dirty.add(int.from_bytes(position_bytes(key), "big") >> BUCKET_SHIFT)
        for b in out.dirty:
            out.counts[b], out.sums[b] = _recount(backend, b)
        backend.write(out.checkpoint_ops([], seq))
        out.dirty.clear()
    out.total = sum(out.counts)
    return out


def _recount(backend: Backend, b: int) -> tuple[int, int]:
    """Count and sum of bucket ``b`` from its index entries and records."""
    lo, hi = index_bound(b * BUCKET_WIDTH), index_bound((b + 1) * BUCKET_WIDTH)
    keys = [k[9:] for k, _ in backend.iterate(lo, hi)]
    blobs = backend.get_many([DATA + k for k in keys])
    total = sum(body_hash(k, r[:-8]) for k, r in zip(keys, blobs, strict=True) if r is not None)
    return sum(r is not None for r in blobs), total % _MOD


def _build(backend: Backend, seq: int) -> None:
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
    final.append((META_FINGERPRINTS, pack_u64(seq)))
    backend.write(final)
