"""Versions, entries and the merge order of the last-writer-wins register.

The order is normative (``spec/data-model.md``): a version with the higher HLC wins; on
equal HLC a user resolver decides, called with the two candidates in a canonical order so
every replica asks the same question; without a resolver the higher peer id wins, and for
the same peer the greater ``(deleted, value bytes)`` wins so the order is total even for a
peer that re-issued a stamp after a restore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RAW_SETTERS", "Entry", "RawEntry", "Resolver", "Version", "supersedes"]


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """The stamp of one write: ordered by ``(hlc, peer)``."""

    hlc: int
    peer: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's register state as users see it: decoded key and value, tombstones included.

    ``seq`` is the local change-log position (0 for an entry not read from a store).
    ``raw`` keeps the encoded value bytes when the entry came from a store, so re-applying
    it elsewhere does not depend on the encoder round-tripping exactly.

    In ``siblings`` mode an entry of :meth:`Store.changes` carries the key's whole state:
    it is the first sibling, ``others`` holds the rest (in sibling order) and ``context``
    the causal-context entries ``(peer, hlc)`` that its siblings do not imply
    (``spec/data-model.md`` section 16). Both are empty in ``lww`` mode and on the
    versions :meth:`Store.get_all` returns.
    """

    key: Any
    value: Any
    hlc: int
    peer: str
    deleted: bool = False
    seq: int = 0
    raw: bytes | None = field(default=None, compare=False, repr=False)
    context: tuple[tuple[str, int], ...] = field(default=(), compare=False, repr=False)
    others: tuple[Entry, ...] = field(default=(), compare=False, repr=False)

    @property
    def version(self) -> Version:
        """The ``Version`` that stamped this entry."""
        return Version(self.hlc, self.peer)


@dataclass(frozen=True, slots=True)
class RawEntry:
    """An entry in wire/storage form: encoded key and value bytes (``b""`` if deleted).

    In ``siblings`` mode one raw entry is one key's whole state: its own fields are the
    first sibling, ``others`` the remaining siblings in order, ``context`` the explicit
    causal-context entries ``(peer, hlc)`` sorted by peer (those the siblings' own dots do
    not imply). A state always travels whole: splitting it would lose siblings.
    """

    key: bytes
    value: bytes
    hlc: int
    peer: str
    deleted: bool
    seq: int = 0
    context: tuple[tuple[str, int], ...] = ()
    others: tuple[RawEntry, ...] = ()


RAW_SETTERS: tuple[Callable[[RawEntry, Any], None], ...] = tuple(
    getattr(RawEntry, f).__set__
    for f in ("key", "value", "hlc", "peer", "deleted", "seq", "context", "others")
)
"""The slot setters of :class:`RawEntry`'s eight fields, in order. Bulk decoders (a log
scan, a batch frame) build entries with ``object.__new__(RawEntry)`` and these: about half
the cost of the frozen dataclass ``__init__`` (one ``object.__setattr__`` per field), and
the entry made is the same. All eight must be set (a slot has no default)."""


Resolver = Callable[[Entry, Entry], bool]
"""``resolver(a, b) -> True`` when ``a`` wins over ``b``; only consulted on equal HLC."""


def _canonical_key(e: RawEntry) -> tuple[str, bool, bytes]:
    return (e.peer, e.deleted, e.value)


def supersedes(
    new: RawEntry,
    old: RawEntry,
    resolver: Resolver | None = None,
    to_entry: Callable[[RawEntry], Entry] | None = None,
) -> bool:
    """Return True when ``new`` must replace ``old`` under the merge order.

    Identical candidates never supersede each other (merging is idempotent). ``to_entry``
    decodes raw entries for the resolver and is required when ``resolver`` is given.
    """
    if new.hlc != old.hlc:
        return new.hlc > old.hlc
    kn, ko = _canonical_key(new), _canonical_key(old)
    if kn == ko:
        return False
    if resolver is not None:
        if to_entry is None:
            raise TypeError("to_entry is required with a resolver")
        first, second = (new, old) if kn < ko else (old, new)
        first_wins = bool(resolver(to_entry(first), to_entry(second)))
        return first_wins == (first is new)
    return kn > ko
