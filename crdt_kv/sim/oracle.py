"""The oracle: a deliberately simple, separate model of what every replica must hold.

It records every acknowledged write (the :class:`~crdt_kv.version.Version` a store
returned) and keeps, per key, the write that wins under the normative merge order of
``spec/data-model.md`` section 5, written out again here from the spec: the higher HLC
wins; on equal HLC a configured resolver is asked once with the two entries in canonical
order (sorted by ``(peer, deleted, value bytes)``) and says whether the first wins;
without one the greater ``(peer, deleted, value bytes)`` wins. It does not call
:func:`crdt_kv.version.supersedes` or :meth:`crdt_kv.Store.apply`: if those are wrong the
replicas disagree with the oracle, and the run fails.

:meth:`Oracle.check` compares one replica key by key (tombstones included) and classifies
each difference: ``lost`` (an acknowledged write is missing: the replica holds an older
stamp or nothing), ``resurrected`` (a key deleted last came back), ``phantom`` (a version
no acknowledged write produced, e.g. a refused peer's write leaked), ``wrong-winner``
(equal stamps, different winner: the tie-break disagrees).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cbor2

from crdt_kv.store import Store
from crdt_kv.version import Entry, Resolver

__all__ = ["Mismatch", "Oracle", "Write", "beats"]


@dataclass(frozen=True, slots=True)
class Write:
    """One acknowledged write as the oracle keeps it."""

    key: str
    value: Any
    value_bytes: bytes
    hlc: int
    peer: str
    deleted: bool

    def describe(self) -> str:
        """Short human-readable form for reports."""
        what = "tombstone" if self.deleted else f"value={self.value!r}"
        return f"hlc={self.hlc} peer={self.peer} {what}"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A replica's state of one key differs from the oracle's expectation."""

    node: str
    key: str
    kind: str
    expected: str
    actual: str


class Oracle:
    """Expected final state per key, from the acknowledged writes alone."""

    def __init__(self, resolver: Resolver | None = None) -> None:
        self.resolver = resolver
        self.best: dict[str, Write] = {}
        self.writes = 0
        self.ties = 0
        """How many times two different acknowledged writes of one key had equal HLCs."""
        self.lost: dict[str, int] = {}
        """Keys whose state every replica lost (bit rot), with that state's stamp."""

    def record(self, key: str, value: Any, deleted: bool, hlc: int, peer: str) -> None:
        """Record an acknowledged write (``value`` is ignored for a tombstone)."""
        vb = b"" if deleted else cbor2.dumps(value)
        w = Write(key, None if deleted else value, vb, hlc, peer, deleted)
        self.writes += 1
        cur = self.best.get(key)
        if cur is None or self.wins(w, cur):
            self.best[key] = w

    def wins(self, a: Write, b: Write) -> bool:
        """True when write ``a`` beats write ``b`` under the spec's merge order."""
        if a.hlc == b.hlc and (a.peer, a.deleted, a.value_bytes) != (
            b.peer,
            b.deleted,
            b.value_bytes,
        ):
            self.ties += 1
        return beats(a, b, self.resolver)

    def lose_everywhere(self, key: str, stamp: int) -> None:
        """Every replica lost ``key``'s state, stamped ``stamp``, to rot. A state of it that
        was still on the wire (a batch read before the loss) may arrive afterwards and
        win: nothing anywhere knows of the lost one. So the key may end absent or at any
        acknowledged write older than ``stamp``; the replicas must still agree."""
        self.lost[key] = max(stamp, self.lost.get(key, 0))

    def expected(self, key: str) -> Write | None:
        """The write every replica must hold for ``key`` (None: never written)."""
        return self.best.get(key)

    def check(
        self, node: str, store: Store, *, exclude_peers: Iterable[str] = (), horizon: int = 0
    ) -> list[Mismatch]:
        """Compare every key of ``store`` with the expectation; return the differences.

        Reads each expected key with :meth:`Store.entry` (tombstones included; one below
        the store's collection horizon may be absent, collected), then scans
        the change log for keys the oracle never saw written. ``exclude_peers`` names
        peers whose writes were refused by design: any trace of them is a ``phantom``.
        ``horizon``: the highest collection horizon any replica reached; a tombstone below
        it may be absent here too (repair drops a state below the peer's horizon).
        """
        out: list[Mismatch] = []
        excluded = set(exclude_peers)
        below = max(horizon, store.gc_horizon)
        for key, w in self.best.items():
            e = store.entry(key)
            lost = self.lost.get(key)
            if lost is not None and (e is None or (e.hlc < lost and e.peer not in excluded)):
                continue
            if e is None:
                if not (w.deleted and w.hlc < below):  # else: collected
                    out.append(Mismatch(node, key, "lost", w.describe(), "absent"))
                continue
            raw = b"" if e.deleted else (e.raw or b"")
            if (e.hlc, e.peer, e.deleted, raw) == (w.hlc, w.peer, w.deleted, w.value_bytes):
                continue
            out.append(Mismatch(node, key, _classify(w, e, excluded), w.describe(), _show(e)))
        for r in store.raw_changes(0):
            key = r.key.decode("utf-8", "replace")
            if key not in self.best:
                e = store.entry(key)
                out.append(Mismatch(node, key, "phantom", "never written", _show(e)))
        return out


def beats(a: Write, b: Write, resolver: Resolver | None) -> bool:
    """True when write ``a`` beats write ``b`` under the spec's merge order (section 5):
    the higher HLC; on equal HLC the resolver, asked once with the two in canonical order
    ``(peer, deleted, value bytes)``; without one the greater canonical key. Identical
    writes never beat each other."""
    if a.hlc != b.hlc:
        return a.hlc > b.hlc
    ka = (a.peer, a.deleted, a.value_bytes)
    kb = (b.peer, b.deleted, b.value_bytes)
    if ka == kb:
        return False
    if resolver is None:
        return ka > kb
    first, second = (a, b) if ka < kb else (b, a)
    first_wins = bool(resolver(_entry(first), _entry(second)))
    return (first if first_wins else second) is a


def _classify(w: Write, e: Entry, excluded: set[str]) -> str:
    if e.peer in excluded or e.hlc > w.hlc:
        return "phantom"
    if e.hlc < w.hlc:
        return "resurrected" if w.deleted and not e.deleted else "lost"
    return "wrong-winner"


def _show(e: Entry | None) -> str:
    if e is None:
        return "absent"
    what = "tombstone" if e.deleted else f"value={e.value!r}"
    return f"hlc={e.hlc} peer={e.peer} {what}"


def _entry(w: Write) -> Entry:
    return Entry(w.key, w.value, w.hlc, w.peer, w.deleted, 0, w.value_bytes)
