"""What reconciliation needs of a replica: :class:`RangeSource` (design section A).

``crdt_kv.store.Store`` implements it; tests use an in-memory fake
(:class:`crdt_kv.testing.ranges.DictSource`). The methods may block (they read and write
storage), so a shell runs them off its event loop; the reconciliation machine never calls
them itself but describes each call as a request object (:mod:`crdt_kv.repair.work`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from crdt_kv.version import RawEntry

__all__ = ["RangeSource"]


class RangeSource(Protocol):
    """A replica seen as a set of ``(key, state)`` items at positions in ``[0, 2**64)``."""

    @property
    def peer_id(self) -> str:
        """This replica's peer id (sent in the repair hello; roles are decided by it)."""
        ...

    @property
    def conflict_mode(self) -> str:
        """``lww`` or ``siblings``; both ends must agree."""
        ...

    @property
    def key_encoding(self) -> str:
        """Name of the key encoding; both ends must agree."""
        ...

    @property
    def value_encoding(self) -> str:
        """Name of the value encoding; both ends must agree."""
        ...

    @property
    def gc_horizon(self) -> int:
        """The collection horizon (an HLC stamp; 0: none): absence wins below it."""
        ...

    def digest(self) -> bytes:
        """The 32-byte store digest: the sum of every item hash mod 2**256, big-endian."""
        ...

    def range_fingerprint(self, lo: int, hi: int) -> tuple[int, int]:
        """``(sum of item hashes mod 2**256, number of items)`` over positions ``[lo, hi)``."""
        ...

    def range_items(self, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
        """``(position, key, item hash)`` of every item in ``[lo, hi)``, sorted by
        ``(position, key)``."""
        ...

    def range_quarantined(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """``(position, key)`` of the keys in ``[lo, hi)`` this replica lost (its scrub
        found their records rotten) and holds no state of, sorted. Repair announces them
        so that no peer takes their absence for a collection."""
        ...

    def raw_entries(self, keys: Iterable[bytes]) -> list[RawEntry]:
        """The current states of ``keys`` (keys not held are skipped)."""
        ...

    def apply_raw(
        self, entries: Iterable[RawEntry], *, cursor: tuple[str, bytes, int] | None = None
    ) -> int:
        """Merge remote states atomically; return how many changed this replica."""
        ...

    def drop_collected(self, keys: Iterable[bytes], *, below: int) -> int:
        """Remove locally (not replicated) those of ``keys`` whose state stamp is below
        ``below``: absence wins. Returns how many were removed."""
        ...

    @property
    def quarantine_epoch(self) -> int:
        """A counter that grows whenever keys enter quarantine (0 for a source that never
        quarantines): the repair reads it with the keys it probes."""
        ...

    def answered(self, peer: str, keys: Iterable[bytes], *, epoch: int) -> int:
        """``peer`` answered in a repair for these quarantined ``keys``
        (``spec/reconcile.md`` section 6): it shipped its state, already merged here, or it
        holds none. Keys quarantined after ``epoch`` (see :attr:`quarantine_epoch`) and
        keys not quarantined are ignored. A key every active member other than us answered
        for leaves quarantine: this replica holds at least what each of them held, so
        absence may win for it again. Returns how many keys left quarantine."""
        ...
