"""The write side of a store: everything that commits or moves the clock, under one lock.

Local writes, batch commits and remote applies each prepare their changes and hand them to
the one commit builder (:class:`~crdt_kv.store.commit.Committer`); the :class:`Writer`
holds the re-entrant lock that serializes those commits, the HLC mutations and close, and
notifies listeners after each commit, on the committing thread, with the lock held.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence

from crdt_kv.backends.base import Backend, Op
from crdt_kv.causal import Context, Order, write
from crdt_kv.errors import ClockSkewError, ClosedError, CrdtKvError, EncodingError
from crdt_kv.fingerprint import position_bytes, state_stamp
from crdt_kv.hlc import HLC
from crdt_kv.layout import (
    DATA,
    cursor_key,
    pack_put,
    pack_siblings,
    record_body,
    siblings_context,
    unpack_cursor,
    unpack_record,
)
from crdt_kv.layout_fingerprints import INDEX
from crdt_kv.skew import ClockJudge
from crdt_kv.store.batch import BatchOp
from crdt_kv.store.changelog import cursor_ops
from crdt_kv.store.commit import Change, Committer
from crdt_kv.store.hooks import Hooks
from crdt_kv.store.merge import (
    EntryChecker,
    Prefer,
    absent_below,
    changes,
    sibling_changes,
    winners,
)
from crdt_kv.store.meta import Meta, check_peer_id, mark_closed
from crdt_kv.version import Entry, RawEntry, Resolver, Version

__all__ = ["Writer"]

log = logging.getLogger(__name__)


class Writer:
    """Commits for one store, serialized by :attr:`lock` (an :class:`threading.RLock`)."""

    def __init__(  # noqa: PLR0917 - private; built once by the store
        self,
        backend: Backend,
        log: Committer,
        hlc: HLC,
        hooks: Hooks,
        stats: dict[str, int],
        opened: Meta,
        checker: EntryChecker,
    ) -> None:
        self.lock = threading.RLock()
        self.closed = False
        self.read_only = False
        """Set by a read-only store: close writes nothing."""
        self.log, self.hlc, self.hooks, self.stats = log, hlc, hooks, stats
        self.judge = ClockJudge(max_offset_ms=hlc.max_offset_ms)
        """Rules on peers' Hello stamps (:mod:`crdt_kv.skew`)."""
        self.sources, self._checker = opened.sources, checker
        self._backend = backend
        self._bget = backend.get
        self._peer_id, self._peer_b = opened.peer_id, opened.peer_id.encode("utf-8")
        self.order: Order | None = None
        """Sibling order in ``siblings`` mode (set by the store); None in ``lww`` mode."""
        self.gc_horizon = 0
        """The collection horizon: incoming states older than it are refused for keys
        this store does not hold (absence wins)."""
        self.on_lost: Callable[[list[bytes]], object] | None = None
        """Set by the store: scrub the buckets of these keys now (see :meth:`_lost`)."""
        self.quarantined: set[bytes] = set()
        """Keys the scrub found rotten and removed (:mod:`crdt_kv.store.scrub`): absence
        never wins for them, whole or version by version, until every active partner has
        answered for the key in a repair (:meth:`~crdt_kv.store.scrub.Scrubber.answered`).
        A local write or a merged state does not end it by itself."""

    def _body(  # noqa: PLR0917 - private; one write's inputs
        self,
        k: bytes,
        v: bytes,
        deleted: bool,
        hlc: int,
        old: bytes | None,
        covers: Context | None = None,
    ) -> bytes:
        """The record body of a local write: the register itself in ``lww`` mode; in
        ``siblings`` mode the key's state after the write (``covers``: see
        :func:`crdt_kv.causal.write`)."""
        order = self.order
        if order is None:
            return record_body(hlc, self._peer_b, deleted, v)
        if covers is None:
            seen = {} if old is None else siblings_context(k, old)
            return pack_put(self._peer_id, hlc, deleted, v, seen)
        prior = None if old is None else unpack_record(k, old)
        new = RawEntry(k, v, hlc, self._peer_id, deleted)
        return pack_siblings(write(prior, new, covers, order))

    def check(self) -> None:
        """Raise :class:`ClosedError` once the store is closed."""
        if self.closed:
            raise ClosedError(f"store of peer {self._peer_id!r} is closed")

    def local(self, k: bytes, v: bytes, deleted: bool, covers: Context | None = None) -> Version:
        """One local write (put or tombstone) of encoded key ``k``: the hottest path.

        ``covers`` (``siblings`` mode, ``merge``): the context the write supersedes. A
        stamp in it newer than any this clock has seen (a version not read here) goes
        through the HLC receive rule first (``ClockSkewError``, nothing written): it enters
        the state's context, which peers check like any stamp they receive.
        """
        lock = self.lock
        lock.acquire()
        try:
            if self.closed:
                self.check()
            if self.hlc.fence is not None:
                self.hlc.check_write()
            if covers and max(covers.values()) > self.hlc.last:
                self.hlc.update(max(covers.values()))
            old = self._bget(DATA + k)
            if old is None and self.order is not None and self.gc_horizon:
                self._lost([k])
            hlc = self.hlc.now()
            if self.hooks.before:
                self.hooks.before_write([RawEntry(k, v, hlc, self._peer_id, deleted)])
            if self.order is None:
                body = record_body(hlc, self._peer_b, deleted, v)
            else:
                body = self._body(k, v, deleted, hlc, old, covers)
            self.log.commit_one(k, body, old, hlc)
        finally:
            lock.release()
        return Version(hlc, self._peer_id)

    def batch(self, ops: list[BatchOp]) -> list[Version]:
        """Commit a batch's queued writes atomically; a key written twice keeps its last."""
        last_index: dict[bytes, int] = {}
        for i, (k, _, _) in enumerate(ops):
            last_index[k] = i
        kept = ops if len(last_index) == len(ops) else [ops[i] for i in sorted(last_index.values())]
        with self.lock:
            self.check()
            if kept:
                self.hlc.check_write()
            olds = self._backend.get_many([DATA + k for k, _, _ in kept])
            items: list[Change] = []
            versions: list[Version] = []
            add_item, add_version = items.append, versions.append
            now, body, peer = self.hlc.now, self._body, self._peer_id
            for (k, v, deleted), blob in zip(kept, olds, strict=True):
                hlc = now()
                add_item((k, body(k, v, deleted, hlc, blob), blob))
                add_version(Version(hlc, peer))
            if self.hooks.before and items:
                self.hooks.before_write(
                    [
                        RawEntry(k, v, x.hlc, peer, d)
                        for (k, v, d), x in zip(kept, versions, strict=True)
                    ]
                )
            if items:
                self.commit(items, self.hlc.last)
        return versions

    def commit(
        self,
        items: Sequence[Change],
        hlc: int,
        source: int = 0,
        extra: Sequence[Op] = (),
        mixed: frozenset[bytes] = frozenset(),
    ) -> None:
        """:meth:`Committer.commit`."""
        self.log.commit(items, hlc, source, extra, mixed)

    def _lost(self, keys: list[bytes]) -> None:
        """``siblings`` mode with a horizon: of ``keys`` (no record here), those the position
        index still names lost their record to rot the scrub has not found yet. Their
        buckets are scrubbed now, which quarantines them, before a join takes their absence
        for a collection: joining below the horizon puts the dots of versions this replica
        lacks into the causal context, and that context would delete those versions on
        every replica it reaches."""
        if self.on_lost is None:
            return
        keys = [k for k in keys if k not in self.quarantined]
        if not keys:
            return
        xs = [INDEX + position_bytes(k) + k for k in keys]
        buckets = self.log.buckets
        buckets.settle()
        fresh = buckets.fresh_index()
        found = self._backend.get_many(xs)
        lost = [
            k for k, x, v in zip(keys, xs, found, strict=True) if v is not None or _holds(fresh, x)
        ]
        if lost:
            self.on_lost(lost)

    def _write_cursor(self, extra: list[Op]) -> None:
        """Write ``extra`` (a cursor, or nothing) with no commit: a batch that changed nothing."""
        if extra:
            self._backend.write(extra)

    def reject(self) -> None:
        """Count one rejected apply."""
        with self.lock:
            self.stats["apply_rejected"] += 1

    def apply(
        self,
        batch: list[RawEntry],
        cursor: tuple[str, bytes, int] | None,
        prefer: Prefer,
        resolver: Resolver | None,
        to_entry: Callable[[RawEntry], Entry],
    ) -> int:
        """Merge remote ``batch`` and store ``cursor``, atomically; return how many keys changed.

        Validation runs before the lock is taken (it decodes every value); a malformed
        entry (:class:`EncodingError`) or a stamp too far ahead (:class:`ClockSkewError`)
        is counted as rejected and raised before anything is written.
        """
        try:
            top = self._checker.validate_all(batch)
        except Exception:
            self.reject()
            raise
        with self.lock:
            self.check()
            if batch:
                try:
                    self.hlc.check(top)
                except Exception:
                    self.reject()
                    raise
            try:
                return self._merge(batch, top, cursor, prefer, resolver, to_entry)
            except EncodingError:  # a joined state too large for a record
                self.reject()
                raise

    def _merge(  # noqa: PLR0917 - private; the merge's inputs
        self,
        batch: list[RawEntry],
        top: int,
        cursor: tuple[str, bytes, int] | None,
        prefer: Prefer,
        resolver: Resolver | None,
        to_entry: Callable[[RawEntry], Entry],
    ) -> int:
        extra: list[Op] = []
        source = 0
        if self.order is not None and self.gc_horizon and batch:
            keys = list({e.key: None for e in batch})
            blobs = self._backend.get_many([DATA + k for k in keys])
            self._lost([k for k, b in zip(keys, blobs, strict=True) if b is None])
        # A state merged here does not end a key's quarantine, even a peer's: that state
        # may be older than versions the lost record held (spec/data-model.md section 20).
        if cursor is not None:
            peer, incarnation, seq = cursor
            extra, source = cursor_ops(
                self.sources,
                check_peer_id(peer),
                incarnation,
                seq,
                self._proof(batch, peer, incarnation),
            )
        if batch and self.gc_horizon:
            batch, refused = absent_below(
                batch, self.gc_horizon, self._backend.get_many, self.quarantined
            )
            self.stats["refused_below_horizon"] += refused
            if not batch:
                self.hlc.update(top)
        if not batch:
            self._write_cursor(extra[:1])
            return 0
        self.hlc.update(top)
        mixed: frozenset[bytes] = frozenset()
        if self.order is not None:
            items, mixed = sibling_changes(
                batch, self._backend.get_many, self.order, self.gc_horizon, self.quarantined
            )
        else:
            best = winners(batch, prefer, resolver, to_entry)
            olds = self._backend.get_many([DATA + k for k in best])
            items = changes(best, olds, prefer, resolver, to_entry, self._checker.peer_bytes)
        if items:
            self.commit(items, self.hlc.last, source, extra, mixed)
            if source:
                self.sources[(peer, incarnation)] = source
        else:
            self._write_cursor(extra[:1])
        self.stats["applied"] += len(items)
        return len(items)

    def _proof(
        self, batch: list[RawEntry], peer: str, incarnation: bytes
    ) -> tuple[bytes, int] | None:
        """The proof stored with a cursor: key and state stamp of the batch's newest
        entry, or (a batch of none) the proof the cursor already had."""
        if batch:
            e = batch[-1]
            return e.key, state_stamp(e)
        old = self._backend.get(cursor_key(peer, incarnation))
        return None if old is None else unpack_cursor(old)[1]

    def clock_now(self) -> int:
        """A fresh HLC stamp, under the lock."""
        with self.lock:
            return self.hlc.now()

    def observe_clock(self, stamp: int, peer: str | None = None, transit_ms: int = 0) -> None:
        """The HLC receive rule for ``stamp``, under the lock (may raise ClockSkewError).
        With ``peer`` (a Hello's stamp) the :attr:`judge` rules on it first, crediting
        ``transit_ms`` (see :meth:`ClockJudge.judge`)."""
        with self.lock:
            if peer is not None:
                why = self.judge.judge(peer, stamp, self.hlc, transit_ms=transit_ms)
                if why is not None:
                    raise ClockSkewError(
                        f"peer {peer!r} refused: {why}",
                        remote_hlc=stamp,
                        local_wall_ms=self.hlc.wall(),
                        max_offset_ms=self.hlc.max_offset_ms,
                    )
            self.hlc.update(stamp)

    def close(self) -> None:
        """Mark the store closed and close the backend; idempotent, and never raises for a
        storage failure (a full disk): the checkpoint and the clean-close mark are then
        left out, and the next open treats the store as not closed cleanly."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                if not self._backend.closed and not self.read_only:
                    self.log.checkpoint()
                    mark_closed(self._backend)
            except CrdtKvError as exc:
                log.warning("closing the store of peer %r: %s", self._peer_id, exc)
            finally:
                self._backend.close()


def _holds(ordered: list[bytes], x: bytes) -> bool:
    """Whether sorted list ``ordered`` holds ``x``."""
    i = bisect_left(ordered, x)
    return i < len(ordered) and ordered[i] == x
