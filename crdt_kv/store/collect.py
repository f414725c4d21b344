"""Tombstone collection (issue 10): the horizon, ``gc`` and the repair drop.

A key whose whole state is deleted and older than the collection horizon (a stamp every
member has received everything up to) can go: every replica holds that tombstone or a
newer state, so nothing can bring the deleted value back, and absence-wins
(:func:`crdt_kv.store.merge.absent_below`) refuses the old state if a late peer offers it.
Removing a key deletes its record, its change-log entry and its position index entry, and
moves the digest, the counts and its bucket fingerprint, in one atomic batch with the
counters (``mgc``), since no log trailer describes a removal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from crdt_kv.backends.base import Backend, Op
from crdt_kv.causal import prune
from crdt_kv.errors import CorruptionError
from crdt_kv.fingerprint import Statistics, position_bytes, state_stamp
from crdt_kv.layout import (
    DATA,
    DATA_END,
    DATA_SKIP,
    FORMAT_SIBLINGS,
    body_hash,
    pack_siblings,
    pack_u64,
    record_is_deleted,
    unpack_record,
)
from crdt_kv.layout_fingerprints import (
    INDEX,
    META_GC,
    META_GC_HORIZON,
    pack_gc_state,
    record_log_key,
)
from crdt_kv.store.buckets import Note
from crdt_kv.store.writes import Writer

__all__ = ["COLLECT_CHUNK", "Collector"]

COLLECT_CHUNK = 5000
"""Keys removed per atomic batch, so collection never holds the commit lock for long."""
_MOD = 1 << 256
_MAX_STAMP = (1 << 64) - 1


class Collector:
    """Collection for one store: works through its writer, under the commit lock."""

    __slots__ = ("_backend", "_w")

    def __init__(self, backend: Backend, writer: Writer) -> None:
        self._backend, self._w = backend, writer

    @property
    def horizon(self) -> int:
        return self._w.gc_horizon

    def raise_horizon(self, h: int) -> int:
        """Raise the horizon to ``h`` (never lowered); persisted. Returns the horizon."""
        if type(h) is not int or not 0 <= h <= _MAX_STAMP:
            raise ValueError(f"gc horizon must be an HLC stamp (a u64), got {h!r}")
        w = self._w
        with w.lock:
            w.check()
            if h > w.gc_horizon:
                self._backend.write([(META_GC_HORIZON, pack_u64(h))])
                w.gc_horizon = h
            return w.gc_horizon

    def statistics(self) -> Statistics:
        w = self._w
        log, stats = w.log, w.stats
        with w.lock:
            log.buckets.settle()
            keys = log.buckets.total
            return Statistics(
                live=log.count,
                tombstones=keys - log.count,
                keys=keys,
                gc_horizon=w.gc_horizon,
                collected=stats["collected"],
                refused_below_horizon=stats["refused_below_horizon"],
                dropped=stats["dropped"],
                quarantined=len(w.quarantined),
                rotten=stats["rotten"],
            )

    def gc(self, limit: int | None) -> int:
        """Remove up to ``limit`` (None: all) tombstones older than the horizon."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"gc limit must be a non-negative int or None, got {limit!r}")
        w = self._w
        done = 0
        with w.lock:
            w.check()
            h = w.gc_horizon
            w.log.buckets.settle()
            if not h:
                return 0
            chunk: list[tuple[bytes, bytes]] = []
            any_dead = w.log.buckets.total != w.log.count
            for k, blob in self._collectable(h) if any_dead else ():
                if limit is not None and done + len(chunk) >= limit:
                    break
                chunk.append((k, blob))
                if len(chunk) >= COLLECT_CHUNK:
                    done += self._remove(chunk, "collected")
                    chunk = []
            if chunk:
                done += self._remove(chunk, "collected")
            if w.order is not None:
                self._prune(h)
        return done

    def _prune(self, h: int) -> None:
        """``siblings`` mode: drop the tombstone versions older than ``h`` from the states
        that keep a newer version (:func:`crdt_kv.causal.prune`), rewriting each record in
        place: same sequence, no log entry (every replica prunes below its own horizon)."""
        order = self._w.order
        assert order is not None
        rewrites: list[tuple[bytes, bytes, bytes]] = []
        for dk, blob in self._backend.iterate(DATA, DATA_END):
            if blob[0] != FORMAT_SIBLINGS:
                continue
            r = unpack_record(dk, blob, DATA_SKIP)
            pruned = prune(r, h, order) if r.others else None
            if pruned is not None:
                rewrites.append((r.key, blob, pack_siblings(pruned)))
            if len(rewrites) >= COLLECT_CHUNK:
                self._rewrite(rewrites)
                rewrites = []
        if rewrites:
            self._rewrite(rewrites)

    def _rewrite(self, items: list[tuple[bytes, bytes, bytes]]) -> None:
        """Replace the bodies of ``(key, stored record, new body)`` in one batch, keeping
        each record's sequence; the digest and buckets move, the live count does not."""
        w = self._w
        log, buckets = w.log, w.log.buckets
        digest = log.digest
        ops: list[Op] = []
        notes: list[Note] = []
        for k, blob, body in items:
            delta = body_hash(k, body) - body_hash(k, blob[:-8])
            notes.append((k, delta, 0))
            digest += delta
            ops.append((DATA + k, body + blob[-8:]))
        digest %= _MOD
        ops += buckets.checkpoint_ops(log.seq, notes)
        ops.append((META_GC, pack_gc_state(log.seq, log.count, digest, w.hlc.last)))
        self._backend.write(ops)
        log.digest = digest
        buckets.saved(notes)
        w.stats["pruned"] += len(items)

    def drop(self, keys: Iterable[bytes], below: int) -> int:
        """Remove the given keys whose state stamp is below ``below``, live or not."""
        if type(below) is not int:
            raise ValueError(f"drop_collected: below must be an HLC stamp, got {below!r}")
        ks = list(dict.fromkeys(keys))
        w = self._w
        done = 0
        with w.lock:
            w.check()
            for i in range(0, len(ks), COLLECT_CHUNK):
                part = ks[i : i + COLLECT_CHUNK]
                blobs = self._backend.get_many([DATA + k for k in part])
                victims = [
                    (k, b)
                    for k, b in zip(part, blobs, strict=True)
                    if b is not None and state_stamp(unpack_record(k, b)) < below
                ]
                if victims:
                    done += self._remove(victims, "dropped")
        return done

    def _collectable(self, h: int) -> Iterator[tuple[bytes, bytes]]:
        """Every record whose state is all tombstones with state stamp below ``h``."""
        for dk, blob in self._backend.iterate(DATA, DATA_END):
            if len(blob) > 1 and record_is_deleted(blob):
                try:
                    r = unpack_record(dk, blob, DATA_SKIP)
                except CorruptionError:
                    continue  # rotten: the scrub quarantines it
                if all(o.deleted for o in r.others) and state_stamp(r) < h:
                    yield r.key, blob

    def _remove(self, victims: list[tuple[bytes, bytes]], counter: str) -> int:
        """Remove ``victims`` (key, stored record) in one batch with the new counters and a
        checkpoint of the buckets (a removal leaves no log entry for a reopen to find)."""
        w = self._w
        log, buckets = w.log, w.log.buckets
        digest, count = log.digest, log.count
        ops: list[Op] = []
        notes: list[Note] = []
        for k, blob in victims:
            hv = body_hash(k, blob[:-8])
            ops += [
                (DATA + k, None),
                (record_log_key(blob), None),
                (INDEX + position_bytes(k) + k, None),
            ]
            notes.append((k, -hv, -1))
            digest -= hv
            if not record_is_deleted(blob):
                count -= 1
        digest %= _MOD
        ops += buckets.checkpoint_ops(log.seq, notes)
        ops.append((META_GC, pack_gc_state(log.seq, count, digest, w.hlc.last)))
        self._backend.write(ops)
        log.digest, log.count = digest, count
        buckets.saved(notes)
        w.stats[counter] += len(victims)
        return len(victims)

    def checkpoint(self) -> bool:
        """Take a checkpoint of the buckets now, under the commit lock (see
        :meth:`crdt_kv.store.commit.Committer.checkpoint`)."""
        w = self._w
        with w.lock:
            w.check()
            return w.log.checkpoint()
