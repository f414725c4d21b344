"""The bucket fingerprints and the position index of new keys: exact in memory, saved to the
``f`` and ``x`` entries at checkpoints.

A commit only notes, after the backend accepted its batch, each changed key with its
digest delta and whether the key is new (a list append: the position hash, the bucket sums
and the new keys' index entries cost nothing on the commit path). The notes are folded into
the buckets (:meth:`Buckets.settle`) before anything reads them (range fingerprints and
items, statistics, collection, checkpoints), under the commit lock; the per-key work of
folding and of building a checkpoint is in :mod:`crdt_kv.accel` (compiled when the
extension is built, a pure-Python reference otherwise). Writing the touched
``f`` entries and a new key's ``x`` entry (a write at a random position) in every commit
would cost a put about a third more time; they are saved at *checkpoints* instead, with
``mfingerprints`` = the last sequence they describe: when :data:`CHECKPOINT_KEYS` keys
changed since the last one (inside the commit's own batch), with every collection (which
leaves no log entry), on :meth:`crdt_kv.store.Store.checkpoint` (a node calls it off the
commit path) and at close. Until then the keys created since the checkpoint are kept in
memory (:attr:`Buckets.fresh`, sorted when a range read needs them) and range reads merge
them with the ``x`` scan.

Recovery needs no extra state: a key changed after the checkpoint has its log entry after
it (the log keeps each key's newest change, and a collection is a checkpoint), so at open
the keys logged after ``mfingerprints`` get their ``x`` entries (again: writing one is
idempotent) and their buckets are recomputed from the ``x`` range and the records. A clean
close leaves nothing to recompute.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat

from crdt_kv.accel import Note, bucket_ops, fold, sort_index
from crdt_kv.accel import position as position_bytes
from crdt_kv.backends.base import Backend, Op
from crdt_kv.fingerprint import BUCKET_SHIFT, BUCKET_WIDTH, BUCKETS
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

__all__ = ["BUILD_CHUNK", "CHECKPOINT_KEYS", "Buckets", "Note", "load_buckets"]

BUILD_CHUNK = 10_000
"""Index entries written per batch while building or restoring the index."""
CHECKPOINT_KEYS = 1 << 14
"""Changed keys after which a commit takes a checkpoint: bounds the memory of the new
keys' index entries, the stall of one checkpoint (writing that many index entries at
random positions takes ~50-100 ms on RocksDB) and the log a reopen after a crash reads."""
_MOD = 1 << 256


class Buckets:
    """Count and hash sum (mod 2**256) of every bucket, the total record count, and what
    changed since the last checkpoint: ``dirty`` buckets, ``fresh`` (the ``x`` entry keys
    of the keys created since, not written yet), ``pending`` changed keys; plus the
    ``notes`` of commits not folded in yet.

    Not locked itself: every caller holds the store's commit lock.
    """

    __slots__ = (
        "_order",
        "counts",
        "dirty",
        "fresh",
        "notes",
        "pending",
        "room",
        "sums",
        "total",
    )

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.sums = [0] * BUCKETS
        self.total = 0
        self.dirty: set[int] = set()
        self.fresh: list[bytes] = []
        self._order: list[bytes] | None = []
        self.pending = 0
        self.notes: list[Note] = []
        """Changes committed and not folded in yet; the commit path appends to it."""
        self.room = CHECKPOINT_KEYS
        """The length of :attr:`notes` at which the next commit takes a checkpoint."""

    def settle(self) -> None:
        """Fold the :attr:`notes` into the buckets (memory only: they are committed).

        The per-key work (position hash, bucket sums, index keys) is
        :func:`crdt_kv.accel.fold`, compiled when the extension is built."""
        notes = self.notes
        if not notes:
            return
        fresh = self.fresh
        gone: list[bytes] = []
        grown = len(fresh)
        touched = fold(notes, self.counts, self.sums, fresh, gone, INDEX, BUCKET_SHIFT)
        added = len(fresh) - grown
        if gone or added:
            self._order = None
        if gone:  # only a collection removes keys (and saves a checkpoint)
            drop = set(gone)
            self.fresh = [x for x in fresh if x not in drop]
        self.dirty.update(touched)
        self.total += added - len(gone)
        self.pending += len(notes)
        self.room = CHECKPOINT_KEYS - self.pending
        notes.clear()

    def keep_fresh(self, xs: list[bytes]) -> None:
        """Add ``x`` entry keys not written to storage (a read-only open's recovery)."""
        if xs:
            self.fresh.extend(xs)
            self._order = None

    def fresh_index(self) -> list[bytes]:
        """The ``x`` entry keys of the :attr:`fresh` keys, sorted (after :meth:`settle`)."""
        if self._order is None:
            self._order = sort_index(self.fresh)
        return self._order

    def checkpoint_ops(
        self,
        seq: int,
        notes: Iterable[Note] = (),
        fixes: dict[int, tuple[int, int]] | None = None,
    ) -> list[Op]:
        """The ops of a checkpoint as of ``seq``: the ``x`` entries of the fresh keys, every
        dirty bucket and ``mfingerprints``, as they will be once ``notes`` (changes in the
        same batch, not yet noted) are and ``fixes`` (``{bucket: (count, sum)}`` set by a
        scrub, before the notes) are taken; memory is not changed beyond :meth:`settle`.

        The ops are in key order: RocksDB inserts a sorted batch about twice as fast."""
        self.settle()
        counts, sums = self.counts, self.sums
        touched = self.dirty
        added: list[bytes] = []
        removed: list[bytes] = []
        if fixes or notes:
            counts, sums, touched = counts.copy(), sums.copy(), set(touched)
            for b, (c, s) in (fixes or {}).items():
                counts[b], sums[b] = c, s
                touched.add(b)
            touched.update(fold(notes, counts, sums, added, removed, INDEX, BUCKET_SHIFT))
        xs = self.fresh_index()
        if removed:
            drop = set(removed)
            xs = [x for x in xs if x not in drop]
        if added:
            xs = sort_index([*xs, *added])
        ops: list[Op] = list(zip(xs, repeat(b"")))
        ops += bucket_ops(BUCKET_KEYS, counts, sums, touched)
        ops.append((META_FINGERPRINTS, pack_u64(seq)))
        return ops

    def saved(
        self, notes: Iterable[Note] = (), fixes: dict[int, tuple[int, int]] | None = None
    ) -> None:
        """A checkpoint (of :meth:`checkpoint_ops` with the same arguments) was written."""
        self.settle()
        for b, (c, s) in (fixes or {}).items():
            self.total += c - self.counts[b]
            self.counts[b], self.sums[b] = c, s
        self.notes.extend(notes)
        self.settle()
        self.dirty.clear()
        self.fresh.clear()
        self._order = []
        self.pending = 0
        self.room = CHECKPOINT_KEYS

    @property
    def changed(self) -> bool:
        """Whether anything changed since the last checkpoint."""
        return bool(self.notes or self.pending or self.dirty)


def load_buckets(backend: Backend, seq: int, *, read_only: bool = False) -> Buckets:
    """Read the bucket fingerprints of a store whose newest sequence is ``seq``: build the
    index and buckets first if the store predates them (``mfingerprints`` absent: one scan
    of the records); after a crash, write the index entries of the keys logged after the
    last checkpoint and recompute their buckets.

    ``read_only``: write nothing; the index entries a writable open would write are kept
    in memory (:attr:`Buckets.fresh`), as for keys created since the last checkpoint.
    """
    saved = backend.get(META_FINGERPRINTS)
    if saved is None:
        if read_only:
            return _computed(backend)
        _build(backend, seq)
        saved = pack_u64(seq)
    out = Buckets()
    for k, v in backend.iterate(BUCKET, BUCKET_END):
        b = bucket_of_key(k)
        out.counts[b], out.sums[b] = unpack_bucket(v)
    since = unpack_u64(saved)
    if since < seq:
        keys = [unpack_log(v)[0] for _, v in backend.iterate(log_key(since + 1), LOG_END)]
        if read_only:
            out.keep_fresh(_unindexed(backend, keys))
        else:
            for i in range(0, len(keys), BUILD_CHUNK):
                part = keys[i : i + BUILD_CHUNK]
                backend.write([(index_key(position_bytes(k), k), b"") for k in part])
        out.dirty = {int.from_bytes(position_bytes(k), "big") >> BUCKET_SHIFT for k in keys}
        for b in out.dirty:
            out.counts[b], out.sums[b] = _recount(backend, b, out.fresh)
        if not read_only:
            backend.write(out.checkpoint_ops(seq))
            out.dirty.clear()
    out.total = sum(out.counts)
    return out


def _unindexed(backend: Backend, keys: list[bytes]) -> list[bytes]:
    """The ``x`` entry keys of those of ``keys`` that have none yet."""
    xs = [index_key(position_bytes(k), k) for k in keys]
    return [x for x, v in zip(xs, backend.get_many(xs), strict=True) if v is None]


def _recount(backend: Backend, b: int, fresh: Iterable[bytes] = ()) -> tuple[int, int]:
    """Count and sum of bucket ``b`` from its index entries (and the ``fresh`` ones not
    written yet) and records."""
    lo, hi = index_bound(b * BUCKET_WIDTH), index_bound((b + 1) * BUCKET_WIDTH)
    keys = [k[9:] for k, _ in backend.iterate(lo, hi)]
    keys += [x[9:] for x in fresh if lo <= x < hi]
    blobs = backend.get_many([DATA + k for k in keys])
    total = sum(body_hash(k, r[:-8]) for k, r in zip(keys, blobs, strict=True) if r is not None)
    return sum(r is not None for r in blobs), total % _MOD


def _computed(backend: Backend) -> Buckets:
    """The buckets of a store that predates them, in memory only (a read-only open)."""
    out = Buckets()
    keys: list[bytes] = []
    for dk, blob in backend.iterate(DATA, DATA_END):
        k = dk[DATA_SKIP:]
        i = int.from_bytes(position_bytes(k), "big") >> BUCKET_SHIFT
        out.counts[i] += 1
        out.sums[i] = (out.sums[i] + body_hash(k, blob[:-8])) % _MOD
        keys.append(k)
    out.keep_fresh(_unindexed(backend, keys))
    out.total = sum(out.counts)
    return out


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
