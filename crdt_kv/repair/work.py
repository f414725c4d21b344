"""Storage work the repair machine asks for, as request objects (``perform(source)``).

The :class:`~crdt_kv.repair.machine.Reconciler` never touches storage: it yields one of
these, whoever drives it runs :meth:`perform` against a
:class:`~crdt_kv.repair.source.RangeSource` (inline in tests and simulations, on a worker
thread in the trio shell) and hands the result back. Each request is a batch of similar
calls, so a turn costs a handful of thread hops, not one per range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from crdt_kv.fingerprint import POSITION_SPACE
from crdt_kv.repair.source import RangeSource
from crdt_kv.repair.tree import FANOUT, child_nodes, node_range, state_stamp
from crdt_kv.version import RawEntry

__all__ = [
    "Answered",
    "ApplyEntries",
    "Describe",
    "Described",
    "DropKeys",
    "Fingerprints",
    "ListItems",
    "ReadEntries",
    "Work",
]

T_co = TypeVar("T_co", covariant=True)

Range = tuple[int, int]
Item = tuple[int, bytes, int]


LOST_HASH = 0
"""The item hash a replica announces for a key it lost (quarantined): no state hashes to
it (but with probability 2**-64 on the wire), so the peer sees the key as held
differently and sends its state; were the key left out, the peer would take its absence
for a collection below the horizon and drop its own copy."""


def _fingerprint(source: RangeSource, lo: int, hi: int) -> tuple[int, int]:
    """The range's fingerprint, each quarantined key counted as an item of hash 0: a range
    holding one never looks empty to the peer (which would then drop what it holds)."""
    s, c = source.range_fingerprint(lo, hi)
    return s, c + len(source.range_quarantined(lo, hi))


def _items(source: RangeSource, lo: int, hi: int) -> list[Item]:
    items = source.range_items(lo, hi)
    lost = source.range_quarantined(lo, hi)
    if not lost:
        return items
    held = {k for _, k, _ in items}
    items += [(p, k, LOST_HASH) for p, k in lost if k not in held]
    items.sort(key=lambda t: (t[0], t[1]))
    return items


class Work(Protocol[T_co]):
    """A storage request: ``perform`` it against the source and return the result."""

    def perform(self, source: RangeSource) -> T_co:
        """Run the calls (may block)."""
        ...


@dataclass(frozen=True, slots=True)
class Described:
    """What our hello says: identity, modes, horizon, digest and the root's children."""

    peer_id: str
    conflicts: str
    key_encoding: str
    value_encoding: str
    gc_horizon: int
    digest: bytes
    top: tuple[tuple[int, int], ...]
    lost: tuple[bytes, ...] = ()
    """Our quarantined keys (lost here, state unknown), in ``(position, key)`` order."""
    epoch: int = 0
    """The source's quarantine epoch when ``lost`` was read (answers count for those)."""


@dataclass(frozen=True, slots=True)
class Describe:
    """Read our identity, digest, horizon and the fingerprints of the root's 16 children."""

    def perform(self, source: RangeSource) -> Described:
        """Reads only (bucket-aligned fingerprints come from memory in a store)."""
        top = tuple(_fingerprint(source, *node_range(*n)) for n in child_nodes(0, 0))
        assert len(top) == FANOUT
        return Described(
            source.peer_id,
            source.conflict_mode,
            source.key_encoding,
            source.value_encoding,
            source.gc_horizon,
            source.digest(),
            top,
            tuple(k for _, k in source.range_quarantined(0, POSITION_SPACE)),
            source.quarantine_epoch,
        )


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """``(sum, count)`` of each range."""

    ranges: tuple[Range, ...]

    def perform(self, source: RangeSource) -> list[tuple[int, int]]:
        """Reads only."""
        return [_fingerprint(source, lo, hi) for lo, hi in self.ranges]


@dataclass(frozen=True, slots=True)
class ListItems:
    """The items of each range, in ``(position, key)`` order."""

    ranges: tuple[Range, ...]

    def perform(self, source: RangeSource) -> list[list[Item]]:
        """Reads only. Quarantined keys are listed with hash 0 (see :data:`LOST_HASH`)."""
        return [_items(source, lo, hi) for lo, hi in self.ranges]


@dataclass(frozen=True, slots=True)
class ReadEntries:
    """The current states of ``keys`` (keys no longer held are skipped)."""

    keys: tuple[bytes, ...]

    def perform(self, source: RangeSource) -> list[RawEntry]:
        """Reads only."""
        return source.raw_entries(self.keys)


@dataclass(frozen=True, slots=True)
class ApplyEntries:
    """Merge received states, refusing those of keys we do not hold whose state stamp is
    below our collection horizon (absence wins). Returns ``(changed, refused)``."""

    entries: tuple[RawEntry, ...]

    def perform(self, source: RangeSource) -> tuple[int, int]:
        """One atomic merge (the store refuses the same states again; counting here keeps
        the report exact whatever the source)."""
        horizon = source.gc_horizon
        kept = list(self.entries)
        if horizon:
            old = [e for e in kept if state_stamp(e) < horizon]
            if old:
                held = {e.key for e in source.raw_entries(e.key for e in old)}
                held.update(k for _, k in source.range_quarantined(0, POSITION_SPACE))
                kept = [e for e in kept if state_stamp(e) >= horizon or e.key in held]
        changed = source.apply_raw(kept) if kept else 0
        return changed, len(self.entries) - len(kept)


@dataclass(frozen=True, slots=True)
class DropKeys:
    """Remove our states of ``keys`` (stamps below ``below``): the peer collected them."""

    keys: tuple[bytes, ...]
    below: int

    def perform(self, source: RangeSource) -> int:
        """Local removal, not replicated; returns how many were removed."""
        return source.drop_collected(self.keys, below=self.below)


@dataclass(frozen=True, slots=True)
class Answered:
    """The peer ``peer`` answered for ``keys`` (our quarantined keys, as of ``epoch``): it
    shipped its state, merged here, or showed it holds none. The source records it, and
    releases a key once every active partner has answered for it."""

    peer: str
    keys: tuple[bytes, ...]
    epoch: int

    def perform(self, source: RangeSource) -> int:
        """Returns how many keys left quarantine."""
        return source.answered(self.peer, self.keys, epoch=self.epoch)
