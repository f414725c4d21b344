"""The store's repair and collection API (issue 10), a base class of
:class:`~crdt_kv.store.Store` so the store module stays small: range fingerprints and
items for reconciliation, statistics, the collection horizon, ``gc`` and the repair drop.
"""

from __future__ import annotations

from collections.abc import Iterable

from crdt_kv.fingerprint import Statistics
from crdt_kv.store.collect import Collector
from crdt_kv.store.members import Members
from crdt_kv.store.ranges import Ranges, check_range
from crdt_kv.store.scrub import Scrubber, ScrubReport
from crdt_kv.version import RawEntry

__all__ = ["Repair"]


class Repair:
    """Methods of :class:`~crdt_kv.store.Store`; sync, they may block on storage (run them
    off an event loop). Positions, ranges and fingerprints: :mod:`crdt_kv.fingerprint`."""

    _ranges: Ranges
    _collector: Collector
    _scrubber: Scrubber
    _members: Members
    _read_only: bool

    def _writable(self, op: str) -> None:
        raise NotImplementedError  # pragma: no cover - the Store's

    def range_fingerprint(self, lo: int, hi: int) -> tuple[int, int]:
        """``(sum mod 2**256, count)`` over the keys whose position is in ``[lo, hi)``.

        The sum adds each key's digest contribution, so ``range_fingerprint(0, 2**64)``
        is ``(int(digest), number of records)``. Bucket-aligned parts come from memory;
        parts of a bucket read the keys there. ValueError for a range outside
        ``[0, 2**64]`` or with ``lo > hi``.
        """
        return self._ranges.fingerprint(lo, hi)

    def range_items(self, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
        """``(position, encoded key, H)`` of every key in ``[lo, hi)``, sorted by
        ``(position, key)``; ``H`` is the key's digest contribution."""
        return self._ranges.items(lo, hi)

    def raw_entries(self, keys: Iterable[bytes]) -> list[RawEntry]:
        """The current states (tombstones included) of the encoded ``keys`` this store
        holds, in wire form, in the order given; keys it does not hold are skipped."""
        return self._ranges.raw_entries(keys)

    def statistics(self) -> Statistics:
        """Record, live and tombstone counts, the horizon and collection counters: O(1)."""
        return self._collector.statistics()

    @property
    def gc_horizon(self) -> int:
        """The collection horizon (an HLC stamp; 0 = nothing is collectable)."""
        return self._collector.horizon

    def raise_gc_horizon(self, h: int) -> int:
        """Raise the collection horizon to ``h`` and persist it; a lower ``h`` changes
        nothing (the horizon never goes back). Returns the horizon now in force.

        Tombstones older than the horizon may be collected, and incoming states older
        than it are refused for keys this store does not hold (absence wins): ``h`` must
        be a stamp every member has received everything up to.
        """
        self._writable("raise_gc_horizon")
        return self._collector.raise_horizon(h)

    def gc(self, *, limit: int | None = None) -> int:
        """Collect tombstones: remove every key whose whole state is deleted with a state
        stamp below :attr:`gc_horizon` (up to ``limit`` keys), with its change-log entry.
        Reads and the digest change as if the key had never been written here. Returns
        how many keys were collected. Local: nothing is replicated."""
        self._writable("gc")
        return self._collector.gc(limit)

    def checkpoint(self) -> bool:
        """Save the bucket fingerprints and the index entries of the keys created since the
        last checkpoint now; True if anything needed saving. Commits take one on their own
        every :data:`~crdt_kv.store.buckets.CHECKPOINT_KEYS` changed keys, inside a commit
        (a stall of tens of milliseconds); a node calls this off its commit path (on its
        storage thread, with every collection) so commits rarely have to. Also bounds what
        a reopen after a crash recomputes. Sync, may block."""
        self._writable("checkpoint")
        return self._collector.checkpoint()

    def drop_collected(self, keys: Iterable[bytes], *, below: int) -> int:
        """Remove the encoded ``keys`` whose state stamp is below ``below``, live or not,
        without a log entry (local, never replicated): the repair's absence-wins drop, for
        keys a peer collected. Returns how many were removed. Listeners are not called."""
        self._writable("drop_collected")
        return self._collector.drop(keys, below)

    def scrub(self, *, buckets: Iterable[int] | None = None) -> ScrubReport:
        """Check the given buckets (numbers in ``[0, 4096)``; None: all) against the
        records: a record gone or unreadable is removed with its index and change-log
        entries and its key quarantined; each bucket's fingerprint, the digest and the live
        count are set to what the records say. Atomic per step of 64 buckets; local, never
        replicated. Repair then fetches the quarantined keys' states from peers
        (:mod:`crdt_kv.store.scrub`). A record altered so that it still parses is trusted.
        Then quarantined keys every partner has answered for are released (a partner may
        have expired or been forgotten since its last answer)."""
        self._writable("scrub")
        report = self._scrubber.scrub(buckets)
        self._scrubber.release(self._members.partners())  # a partner may have expired
        return report

    def range_quarantined(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """``(position, encoded key)`` of the quarantined keys in ``[lo, hi)``, sorted:
        keys this replica lost and holds no state of (repair asks peers for them)."""
        return self._scrubber.quarantined(*check_range(lo, hi))

    def wants_probe(self, peer: str) -> bool:
        """Whether a quarantined key awaits ``peer``'s answer: a session with it then
        repairs after its round even when the digests agree (``spec/protocol.md``
        section 13). Never on a read-only store: it can neither merge what a peer ships
        nor release a key, so asking would make every session repair for nothing."""
        if self._read_only:
            return False
        return self._scrubber.wants_probe(peer)

    @property
    def quarantine_epoch(self) -> int:
        """Grows whenever keys enter quarantine; a repair passes the value it read with
        its probes to :meth:`answered`."""
        return self._scrubber.epoch

    def answered(self, peer: str, keys: Iterable[bytes], *, epoch: int) -> int:
        """``peer`` answered in a repair for these quarantined encoded ``keys``: it shipped
        its state (already merged here) or holds none. ``epoch`` is the
        :attr:`quarantine_epoch` read when the repair began: keys quarantined after it are
        ignored. A key every partner (an active member that ever had a session with us)
        answered for since it was quarantined leaves quarantine, in one small write: this
        replica then holds at least what each of them held, and with the quarantine empty
        the gossip is no longer held back. The answers are kept in memory only. Returns
        how many keys were released (0 on a read-only store, which keeps its quarantine:
        a repair that only reads it does not fail for that)."""
        if self._read_only:
            return 0
        return self._scrubber.answered(peer, keys, self._members.partners(), epoch=epoch)
