"""The store: last-writer-wins registers (or, in ``siblings`` mode, sets of concurrent
versions with a causal context, :mod:`crdt_kv.causal`) over an ordered bytes map.

A pure object (sans-I/O): it reads time only through the injected ``clock`` and randomness
only through the injected ``rng``, and touches storage only through its
:class:`~crdt_kv.backends.base.Backend`. Every commit is one atomic backend batch holding
the new record(s), the change-log entry at the next local sequence, the removal of the
key's previous log entry, the HLC high-water mark, the live count and the digest (the last
three ride in the trailer of the commit's last log entry), and, for replication, the
remote cursor. The change log therefore stays compact (one entry per key) and reopening
restores every counter in O(1).

Threads: commits and clock are serialized by a lock. Every commit (put, delete, batch
commit, apply/apply_raw, close) and every HLC mutation done through the store
(:meth:`Store.clock_now`, :meth:`Store.observe_clock`) takes one re-entrant lock, so a
worker thread may apply remote entries while another thread writes. on_commit/on_change
callbacks run on the thread that committed, under that lock (a callback may write to the
store again; it must not wait for another thread that commits). Reads (``get``, ``entry``,
``items`` ...) take no lock: each backend read is atomic. :meth:`Store.read_changes` reads
the change log under the lock, for a thread reading while another writes on a backend
whose iterators do not tolerate concurrent writes.

The package splits the jobs: :mod:`.meta` (opening), :mod:`.commit` (the one commit
builder), :mod:`.changelog` (log scans, cursors), :mod:`.merge` (pure merge decisions),
:mod:`.points` (``get``), :mod:`.reads` (range reads), :mod:`.hooks` (listeners),
:mod:`.batch` (``Batch``).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from crdt_kv.backends.base import Backend
from crdt_kv.causal import context_of, sibling_order, siblings
from crdt_kv.codec import decode_cbor, key_codec, short_repr, value_codec
from crdt_kv.errors import EncodingError, ReadOnlyError
from crdt_kv.hlc import HLC
from crdt_kv.horizon import DEFAULT_MEMBER_EXPIRY_MS
from crdt_kv.layout import DATA, digest_bytes, unpack_record
from crdt_kv.store.batch import Batch
from crdt_kv.store.changelog import ChangeLog
from crdt_kv.store.clock import ClockApi
from crdt_kv.store.collect import Collector
from crdt_kv.store.commit import Committer
from crdt_kv.store.history import History
from crdt_kv.store.hooks import Hooks
from crdt_kv.store.members import Member, MemberApi, Members
from crdt_kv.store.merge import EntryChecker, raw_chunks
from crdt_kv.store.meta import open_store
from crdt_kv.store.points import PointReads
from crdt_kv.store.ranges import Ranges
from crdt_kv.store.reads import RangeReader, to_entry
from crdt_kv.store.repair import Repair
from crdt_kv.store.rollback import CursorChecks
from crdt_kv.store.scrub import Scrubber
from crdt_kv.store.writes import Writer
from crdt_kv.version import Entry, RawEntry, Resolver, Version, supersedes

__all__ = ["APPLY_CHUNK", "DEFAULT_MAX_OFFSET_MS", "Batch", "Member", "Store", "supersedes"]

DEFAULT_MAX_OFFSET_MS = 500
APPLY_CHUNK = 5000
_STATS = (
    "commits",
    "applied",
    "apply_rejected",
    "hook_errors",
    "collected",
    "dropped",
    "pruned",
    "refused_below_horizon",
    "rotten",
    "released",
    "scrubbed_buckets",
)


class Store(PointReads, Repair, MemberApi, CursorChecks, ClockApi):
    """A replicated key-value store holding one LWW register per key.

    Build one with :func:`crdt_kv.open`; the constructor takes an already-open backend and
    the injected clock and randomness. Options are keyword-only.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Callable[[], int],
        rng: random.Random,
        peer_id: str | None = None,
        key_encoding: str | None = None,
        value_encoding: str | None = None,
        resolver: Resolver | None = None,
        max_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
        new_incarnation: bool = False,
        boot_id: bytes | None = None,
        conflicts: str | None = None,
        keep_history: bool = False,
        member_expiry_ms: int = DEFAULT_MEMBER_EXPIRY_MS,
        read_only: bool = False,
    ) -> None:
        m, state, buckets = open_store(
            backend,
            peer_id=peer_id,
            rng=rng,
            key_encoding=key_encoding,
            value_encoding=value_encoding,
            resolver=resolver,
            max_offset_ms=max_offset_ms,
            new_incarnation=new_incarnation,
            boot_id=boot_id or b"1",
            conflicts=conflicts,
            read_only=read_only,
        )
        self._read_only = read_only
        self._conflicts = m.conflicts
        self._rng = rng
        self._backend = backend
        self._bget = backend.get
        self.resolver = resolver
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.key_encoding, self.value_encoding = m.key_encoding, m.value_encoding
        self._kenc, self._kdec = key_codec(m.key_encoding)
        self._str_keys = m.key_encoding == "utf-8"
        self._venc, self._vdec = value_codec(m.value_encoding)
        self._cbor_values = self._vdec is decode_cbor
        self._peer_id, self._incarnation = m.peer_id, m.incarnation
        self._hooks = Hooks(self.stats, self._to_entry)
        self._log = Committer(
            backend.write, self._hooks, self.stats, state.seq, state.count, state.digest, buckets
        )
        self._hlc = HLC(clock, max_offset_ms=max_offset_ms, last=state.hlc)
        checker = EntryChecker(self._kdec, self._vdec, siblings=m.conflicts == "siblings")
        self._w = Writer(backend, self._log, self._hlc, self._hooks, self.stats, m, checker)
        self._w.read_only = read_only
        self._bind_get(m.conflicts != "siblings")  # the compiled reads take format 1 only
        if m.conflicts == "siblings":
            self._w.order = sibling_order(resolver, self._to_entry)
        self._history = History(backend, self._check, self._enc_key, self._to_entry)
        if keep_history:
            self._log.history = self._history.ops
        self._reader = RangeReader(
            backend,
            self._check,
            self._enc_key,
            self._kdec,
            self._vdec,
            compiled=m.conflicts != "siblings",
        )
        self._changelog = ChangeLog(backend, self._check, self._w.lock, m.sources)
        self._w.gc_horizon = state.gc_horizon
        self._collector = Collector(backend, self._w)
        self._scrubber = Scrubber(backend, self._w)
        self._w.on_lost = self._scrubber.scrub_keys
        self._ranges = Ranges(backend, buckets, self._w.lock, self._w.check)
        self._members = Members(
            backend,
            peer_id=m.peer_id,
            clock=clock,
            lock=self._w.lock,
            fresh_hlc=self.clock_now,
            expiry_ms=member_expiry_ms,
        )
        self._members.hold = self._scrubber.hold

    # --- properties -----------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """This replica's peer id (persisted in the store)."""
        return self._peer_id

    @property
    def incarnation(self) -> bytes:
        """16 random bytes naming this life of the store; peers key their cursors by it.

        Minted at creation, and again when reopened with ``new_incarnation=True`` (a restored
        or copied store) or after an unclean shutdown of a backend that is not power-safe
        (its log tail may be gone), so peers never confuse two lives of one peer id.
        """
        return self._incarnation

    @property
    def conflict_mode(self) -> str:
        """``"lww"`` or ``"siblings"``: how concurrent writes resolve, fixed at creation."""
        return self._conflicts

    @property
    def hlc(self) -> HLC:
        """The store's hybrid logical clock. Prefer :meth:`clock_now` and
        :meth:`observe_clock`, which serialize with commits on other threads."""
        return self._hlc

    @property
    def last_seq(self) -> int:
        """The newest local change-log sequence (0 for an empty store)."""
        return self._log.seq

    @property
    def read_only(self) -> bool:
        """Opened with ``read_only=True``: writes raise :class:`ReadOnlyError`, and nothing
        on disk changes, not even at open or close."""
        return self._read_only

    def _writable(self, op: str) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{op} refused: the store {self._backend.where} is read-only")

    @property
    def backend(self) -> Backend:
        """The storage backend this store writes to."""
        return self._backend

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._w.closed

    def _check(self) -> None:
        if self._w.closed:
            self._w.check()

    # --- reads ----------------------------------------------------------------------

    def _enc_key(self, key: Any) -> bytes:
        try:
            return self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {short_repr(key)}: {exc}") from None

    def _to_entry(self, r: RawEntry) -> Entry:
        return to_entry(r, self._kdec, self._vdec)

    def _commit_lock(self) -> threading.RLock:
        return self._w.lock

    def try_commit_lock(self) -> bool:
        """Take the commit lock if it is free, never waiting; True if taken (then call
        :meth:`release_commit_lock`). An event loop performs a small storage request
        inline only when this says it cannot block on another thread's commit or read."""
        return self._w.lock.acquire(blocking=False)

    def release_commit_lock(self) -> None:
        """Release the lock :meth:`try_commit_lock` took."""
        self._w.lock.release()

    def _record(self, k: bytes) -> RawEntry | None:
        blob = self._bget(DATA + k)
        return None if blob is None else unpack_record(k, blob)

    def entry(self, key: Any) -> Entry | None:
        """The full register state of ``key`` (tombstones included), or None."""
        self._check()
        r = self._record(self._enc_key(key))
        return None if r is None else self._to_entry(r)

    def get_all(self, key: Any) -> list[Entry]:
        """Every live sibling of ``key`` in sibling order (``[]`` if absent or deleted).

        In ``lww`` mode that is ``[entry]`` or ``[]``. The first is what :meth:`get`
        returns. Pass (some of) them to :meth:`merge` to resolve the conflict.
        """
        self._check()
        r = self._record(self._enc_key(key))
        if r is None:
            return []
        return [
            self._to_entry(RawEntry(s.key, s.value, s.hlc, s.peer, False, r.seq))
            for s in siblings(r)
            if not s.deleted
        ]

    def conflicts(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Any, list[Entry]]]:
        """``(key, live siblings)`` for every key holding two or more live siblings, in key
        order over a half-open range (``limit`` counts such keys). Never any in ``lww``."""
        return self._reader.conflicts((gt, gte, lt, lte, reverse, limit))

    def history(self, key: Any, *, limit: int | None = None) -> list[Entry]:
        """Versions of ``key`` this replica held and later superseded, newest first.

        Kept only while the store is opened with ``keep_history=True``; local, never
        replicated.
        """
        return self._history.of_key(key, limit)

    def revisions(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Any, Entry]]:
        """``(key, Entry)`` for every kept revision in a key range (see :meth:`history`):
        keys in order, each key's revisions oldest first; ``reverse`` flips both."""
        return self._history.revisions((gt, gte, lt, lte, reverse, limit))

    def __contains__(self, key: object) -> bool:
        self._check()
        r = self._record(self._enc_key(key))
        return r is not None and not r.deleted

    def __len__(self) -> int:
        """Number of live (not deleted) keys, kept incrementally: O(1)."""
        self._check()
        return self._log.count

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def digest(self) -> bytes:
        """32-byte order-independent fingerprint of every key's state (tombstones included).

        Two replicas that applied the same set of entries have equal digests. Maintained
        incrementally per commit, so this costs nothing.
        """
        self._check()
        return digest_bytes(self._log.digest)

    def items(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Live ``(key, value)`` pairs in key order over a half-open (by default) range."""
        return self._reader.items((gt, gte, lt, lte, reverse, limit))

    def keys(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """Live keys in key order; same bounds as :meth:`items`."""
        return self._reader.keys((gt, gte, lt, lte, reverse, limit))

    def values(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """Live values in key order; same bounds as :meth:`items`."""
        return self._reader.values((gt, gte, lt, lte, reverse, limit))

    # --- change log and cursors -----------------------------------------------------

    def raw_changes(
        self,
        since: int = 0,
        *,
        limit: int | None = None,
        exclude_source: tuple[str, bytes] | None = None,
    ) -> Iterator[RawEntry]:
        """Change-log entries with ``seq > since`` in sequence order, in wire form.

        The log is compact: a key appears once, at the sequence of its latest change.
        Writes made while iterating are either seen at their new sequence or not at all.
        ``exclude_source=(peer, incarnation)`` skips entries whose current state was applied
        from that replica: sending them back to it could never change it. Takes no lock:
        use :meth:`read_changes` from a thread other than the writers'.
        """
        return self._changelog.scan(since, limit, exclude_source, None)

    def read_changes(
        self,
        since: int,
        *,
        limit: int,
        exclude_source: tuple[str, bytes] | None = None,
        stop_at: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RawEntry]:
        """Up to ``limit`` entries of :meth:`raw_changes`, read in chunks of a few hundred
        log entries, each under the commit lock.

        Materialized so a thread may read while another commits, on any backend; a commit
        waits for one chunk at most, and each chunk sees the log as a separate read would
        (a key rewritten meanwhile is left out and appears later, after ``since``).
        ``stop_at`` ends the read before entries with ``seq > stop_at`` (the log as it was
        at that sequence; keys rewritten since are left out); ``max_bytes`` ends it with the
        entry that brings the sum of :func:`~crdt_kv.protocol.storage.entry_size` to it.
        """
        return self._changelog.read(since, limit, exclude_source, stop_at, max_bytes)

    def changes(self, since: int = 0) -> Iterator[Entry]:
        """The change log after ``since`` as decoded :class:`Entry` objects (with ``seq``)."""
        for r in self.raw_changes(since):
            yield self._to_entry(r)

    def cursor(self, peer: str, incarnation: bytes) -> int:
        """The last sequence of ``peer``'s log (at that incarnation) applied here; 0 if none."""
        return self._changelog.cursor(peer, incarnation)

    def cursors(self) -> dict[tuple[str, bytes], int]:
        """Every stored delta-sync cursor: ``{(peer, incarnation): seq}``."""
        return self._changelog.cursors()

    # --- writes ---------------------------------------------------------------------

    def put(self, key: Any, value: Any) -> Version:
        """Write ``value`` under ``key``; returns the :class:`Version` it was stamped with."""
        if self._read_only:
            self._writable("put")
        if self._w.closed:
            self._w.check()
        try:
            k = self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {short_repr(key)}: {exc}") from None
        try:
            v = self._venc(value)
        except EncodingError as exc:
            raise EncodingError(f"value of key {short_repr(key)}: {exc}") from None
        return self._w.local(k, v, False)

    def merge(self, key: Any, versions: Iterable[Entry | Version], value: Any) -> Version:
        """Write ``value`` as the resolution of exactly ``versions`` (from :meth:`get_all`).

        In ``siblings`` mode the write supersedes the versions passed (a causal context is
        a version vector, so also any older version of the same writers) and no others: a
        sibling that arrived after the caller read stays. In ``lww`` mode it is a
        :meth:`put`. Raises TypeError for something that is not a version and ValueError
        for an entry of another key.
        """
        self._writable("merge")
        self._check()
        dots: list[tuple[str, int]] = []
        for v in versions:
            hlc, peer = getattr(v, "hlc", None), getattr(v, "peer", None)
            if type(hlc) is not int or not isinstance(peer, str):
                raise TypeError(
                    f"merge of key {key!r} takes Entry or Version objects, not {v!r:.60}"
                )
            if isinstance(v, Entry) and v.key != key:
                raise ValueError(f"merge of key {key!r} was given a version of key {v.key!r}")
            dots.append((peer, hlc))
        k = self._enc_key(key)
        try:
            v_b = self._venc(value)
        except EncodingError as exc:
            raise EncodingError(f"value of key {short_repr(key)}: {exc}") from None
        covers = context_of(dots) if self._conflicts == "siblings" else None
        return self._w.local(k, v_b, False, covers)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def delete(self, key: Any) -> Version:
        """Write a tombstone for ``key`` (even if absent here: it may exist elsewhere)."""
        self._writable("delete")
        self._check()
        return self._w.local(self._enc_key(key), b"", True)

    def __delitem__(self, key: Any) -> None:
        self.delete(key)

    def batch(self) -> Batch:
        """An atomic batch: ``with store.batch() as b: b.put(...); b.delete(...)``."""
        self._writable("batch")
        self._check()
        return Batch(self._kenc, self._venc, self._w.batch)

    # --- merging remote state -------------------------------------------------------

    def apply_raw(
        self,
        entries: Iterable[RawEntry],
        *,
        cursor: tuple[str, bytes, int] | None = None,
    ) -> int:
        """Merge remote entries atomically; return how many changed this store's state.

        All-or-nothing: a malformed entry (:class:`EncodingError`) or a stamp too far in
        the future (:class:`ClockSkewError`) rejects the whole call before anything is
        written. ``cursor=(peer, incarnation, seq)`` is stored in the same batch, so a
        delta sync resumes exactly where the last applied batch ended. Validation runs
        outside the commit lock; the rest (clock, reads of the current records, commit)
        under it.
        """
        self._writable("apply_raw")
        self._check()
        return self._w.apply(list(entries), cursor, supersedes, self.resolver, self._to_entry)

    def apply(self, entries: Iterable[Entry | RawEntry]) -> int:
        """Merge entries from another replica (e.g. ``other.changes()``).

        Commutative, associative and idempotent: any order, any repetition, interleaved
        with other replicas' entries, converges to the same state. Applied in bounded
        atomic chunks so a huge input neither blocks writers for long nor fills memory.
        Returns how many entries changed the state.
        """
        self._writable("apply")
        self._check()
        chunks = raw_chunks(entries, self._enc_key, self._venc, APPLY_CHUNK)
        return sum(self.apply_raw(chunk) for chunk in chunks)

    # --- hooks ----------------------------------------------------------------------

    def on_commit(self, callback: Callable[[int], object]) -> Callable[[], None]:
        """Call ``callback(last_seq)`` after every commit that changed state (local or applied).

        Cheap: used by live replication to wake up. Returns a function that unsubscribes.
        Exceptions from callbacks are logged and counted in ``stats['hook_errors']``.
        Runs on the committing thread, under the commit lock.
        """
        return self._hooks.add_commit(callback)

    def on_change(self, callback: Callable[[Entry], object]) -> Callable[[], None]:
        """Call ``callback(entry)`` for every key whose state changed (update hook)."""
        return self._hooks.add_change(callback)

    def before_write(self, callback: Callable[[list[Entry]], object]) -> Callable[[], None]:
        """Call ``callback(entries)`` before a local put, delete, merge or batch commits.

        ``entries`` are the versions about to be written, stamped. Raising refuses the
        write: nothing is written and the exception reaches the caller. Entries received
        from peers are never shown here (refusing them would make replicas diverge); use
        :meth:`on_change` to observe them. Returns a function that unsubscribes.
        """
        return self._hooks.add_before(callback)

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Close the store and its backend. Idempotent; later use raises :class:`ClosedError`."""
        self._w.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._w.closed else f"{self._log.count} keys, seq {self._log.seq}"
        mode = " siblings" if self._conflicts == "siblings" else ""
        return f"<Store peer={self._peer_id!r} backend={self._backend.name}{mode} {state}>"
