"""Is everything a node holds also held elsewhere? (the precondition of a restore)

Restoring a node's disk from an old copy loses what only that node held. The ``restore``
scenario checks that the protocol loses nothing *any other replica acknowledged*, so it
restores a node only once each version of its current state is held, or superseded, on
another up node: then every acknowledged write survives somewhere and the oracle may
expect it.
"""

from __future__ import annotations

from collections.abc import Sequence

from crdt_kv.errors import CorruptionError
from crdt_kv.store import Store
from crdt_kv.version import RawEntry

__all__ = ["held_elsewhere", "uncovered"]


def _covers(mode: str, held: RawEntry, v: RawEntry) -> bool:
    versions = (held, *held.others)
    if any((o.peer, o.hlc) == (v.peer, v.hlc) for o in versions):
        return True
    if mode == "lww":
        return held.hlc > v.hlc
    seen = [o.hlc for o in versions if o.peer == v.peer]
    seen += [h for p, h in held.context if p == v.peer]
    return max(seen, default=-1) >= v.hlc


def _read(store: Store, key: bytes) -> list[RawEntry]:
    try:
        return store.raw_entries([key])
    except CorruptionError:  # rotted there too: not held
        return []


def held_elsewhere(mode: str, r: RawEntry, others: Sequence[Store]) -> bool:
    """True when each version of state ``r`` is held or superseded on one of ``others``
    (not necessarily the same one; a tombstone below another's horizon counts)."""
    helds = [_read(o, r.key) for o in others]
    return all(
        any(
            _covers(mode, found[0], v) if found else v.deleted and v.hlc < o.gc_horizon
            for o, found in zip(others, helds, strict=True)
        )
        for v in (r, *r.others)
    )


def uncovered(store: Store, others: Sequence[Store], *, every: bool = False) -> int:
    """How many versions of ``store``'s current states no store of ``others`` (``every``:
    not every store of ``others``) holds or supersedes (a tombstone collected below
    another store's horizon counts as held)."""
    mode = store.conflict_mode
    missing = 0
    for r in store.raw_changes(0):
        helds = [_read(o, r.key) for o in others]
        for v in (r, *r.others):
            each = (
                _covers(mode, found[0], v) if found else v.deleted and v.hlc < o.gc_horizon
                for o, found in zip(others, helds, strict=True)
            )
            held = all(each) if every else any(each)
            missing += not held
    return missing
