"""The oracle of the ``siblings`` conflict mode: which versions of each key must survive,
from the simulator's own record of which writes each replica had seen when it wrote.

It never calls :mod:`crdt_kv.causal` and never reads a store's causal context, so a bug
in the join, in ``merge`` or in the context encoding shows as a mismatch.

**Writes.** Every acknowledged write gets a write id (its index among its key's writes)
and a *supersession set*, the writes it replaces, kept transitively closed:

- ``put`` and ``delete``: every write of the key its writer had seen;
- ``merge(key, versions, value)``: exactly the versions passed, plus, since the store
  documents a context as a version vector, every write of the same writers to the key
  with a stamp at or below the passed one.

**Seen.** Per node and key, the set of writes the node has seen: its own writes, and what
arrives in batches (the sender's set is taken when its log is read for sending and added
to the receiver's when the batch is applied: :class:`~crdt_kv.sim.deliveries.Deliveries`).
Stores that survive a crash keep it. A power cut rolls it back to what the node's store
still holds: the closure of those versions and their supersession sets.

**Power cuts** (``sync_writes=False``) also break the store's premise that a peer's own
state always held its earlier writes, and stamps are a version vector, so the oracle
states what follows from the documented contract (none of it arises without power cuts):

- a write of peer p also supersedes p's writes of the key that p lost and has not seen
  since, if their stamps are lower; by stamp alone, not what those had superseded (p's
  context lost that), and so for a merge's coverage of older writes of a passed writer
  that the merging node never saw (kept apart from the closed set, as ``dot``);
- a write whose stamp is lower than such a lost write (a clock rewound by the cut) is
  covered by it wherever that write is known;
- of two writes with one dot (a reissued stamp) the greater ``(deleted, value)`` is kept.

**Expected.** After the run, the writes that survived (acknowledged, and durable on some
node) that no survivor's supersession set contains, one per dot, are every replica's
siblings: live ones in the spec's sibling order, tombstones hidden but held.

Sets are Python ints used as bitsets over write ids: a snapshot costs nothing (ints are
immutable) and a union is one C-level ``|``.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from crdt_kv.sim.oracle import Mismatch, Write, beats
from crdt_kv.store import Store
from crdt_kv.version import Entry, RawEntry, Resolver

__all__ = ["CausalOracle", "Expected", "ids"]

Dot = tuple[str, int]
Version = tuple[str, int, bool, bytes]
"""A version as replicas hold it: ``(peer, hlc, deleted, value bytes)``."""


def ids(mask: int) -> list[int]:
    """The write ids in bitset ``mask``, ascending."""
    return [i for i, c in enumerate(bin(mask)[:1:-1]) if c == "1"]


def _versions(r: RawEntry) -> list[Version]:
    """Every version a stored or sent key state holds (its head, then ``others``)."""
    return [(s.peer, s.hlc, s.deleted, s.value) for s in (r, *r.others)]


class _Book:
    """One key's writes and their supersession sets."""

    __slots__ = (
        "bits",
        "closed",
        "covers",
        "dot",
        "dots",
        "dotted",
        "key",
        "own",
        "peers",
        "prefix",
        "stamps",
        "survived",
        "writes",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.writes: list[Write] = []
        self.closed: list[int] = []
        """Per write id: the writes it supersedes with what they superseded (closed)."""
        self.dot: list[int] = []
        """Per write id: writes whose stamp alone it covers (power cuts only; not closed)."""
        self.dotted: list[int] = []
        """The write ids with a non-empty ``dot``."""
        self.dots: dict[Dot, list[int]] = {}
        self.peers: dict[str, list[tuple[int, int]]] = {}
        """Per writer: ``(hlc, write id)`` sorted by stamp."""
        self.bits: dict[str, list[int]] = {}
        """Per writer, parallel to ``peers``: the set of its writes up to there."""
        self.prefix: dict[str, list[int]] = {}
        """Per writer, parallel to ``peers``: those writes with what they superseded."""
        self.own: dict[str, int] = {}
        self.stamps: dict[int, str] = {}
        self.survived = 0
        self.covers: list[tuple[int, int]] = []
        """``(x, w)``: lost write ``x``'s stamp covers the rewound, lower-stamped ``w``."""

    def upto(self, peer: str, hlc: int) -> tuple[int, int]:
        """``peer``'s writes with a stamp at or below ``hlc``: the set, and the set with
        what they superseded."""
        stamped = self.peers.get(peer)
        if not stamped:
            return 0, 0
        i = bisect.bisect_right(stamped, hlc, key=lambda t: t[0])
        return (self.bits[peer][i - 1], self.prefix[peer][i - 1]) if i else (0, 0)

    def add(self, w: Write, closed: int, dot: int) -> int:
        wid = len(self.writes)
        self.writes.append(w)
        self.closed.append(closed)
        self.dot.append(dot)
        if dot:
            self.dotted.append(wid)
        self.dots.setdefault((w.peer, w.hlc), []).append(wid)
        stamped = self.peers.setdefault(w.peer, [])
        bits, prefix = self.bits.setdefault(w.peer, []), self.prefix.setdefault(w.peer, [])
        i = len(stamped)
        if stamped and stamped[-1][0] > w.hlc:  # a clock rewound by a power cut
            i = bisect.bisect_right(stamped, w.hlc, key=lambda t: t[0])
        stamped.insert(i, (w.hlc, wid))
        del bits[i:], prefix[i:]
        b, c = (bits[-1], prefix[-1]) if bits else (0, 0)
        for _, j in stamped[i:]:
            b |= 1 << j
            c |= (1 << j) | self.closed[j]
            bits.append(b)
            prefix.append(c)
        self.own[w.peer] = self.own.get(w.peer, 0) | (1 << wid)
        return wid

    def find(self, v: Version) -> int | None:
        """The id of the write that produced version ``v`` (None: no acknowledged one)."""
        peer, hlc, deleted, value = v
        for wid in self.dots.get((peer, hlc), ()):
            w = self.writes[wid]
            if w.deleted == deleted and w.value_bytes == value:
                return wid
        return None

    def superseded(self) -> int:
        """The writes some surviving write supersedes: the closed sets of the survivors,
        then, to a fixpoint, what the stamps of known writes cover (power cuts only)."""
        sup = 0
        closed = self.closed
        for wid in ids(self.survived):
            sup |= closed[wid]
        if not self.dotted and not self.covers:
            return sup
        while True:
            known = sup | self.survived
            more = 0
            for wid in self.dotted:
                if (known >> wid) & 1:
                    more |= self.dot[wid]
            for x, w in self.covers:
                if (known >> x) & 1:
                    more |= 1 << w
            if not more & ~sup:
                return sup
            sup |= more


@dataclass(frozen=True, slots=True)
class Expected:
    """What every replica must hold of one key."""

    live: tuple[Write, ...]
    """Live siblings in sibling order (what ``get_all`` returns)."""
    tombstones: tuple[Write, ...]
    """Tombstone siblings (held, hidden from ``get_all``)."""
    superseded: int
    """Bitset of the writes some surviving write superseded."""


class CausalOracle:
    """Expected siblings per key from the happened-before record (see the module doc).

    ``nodes`` is the cluster size (node indexes key the seen-sets); ``resolver`` orders
    siblings with equal stamps, as in the ``lww`` oracle.
    """

    def __init__(self, nodes: int, resolver: Resolver | None = None) -> None:
        self.resolver = resolver
        self.books: dict[bytes, _Book] = {}
        self.seen: list[dict[bytes, int]] = [{} for _ in range(nodes)]
        self.lost: dict[bytes, int] = {}
        """Keys whose state every replica lost (bit rot), with its largest stamp."""
        self.pending: dict[tuple[bytes, str, int, bool, bytes], tuple[_Book, int]] = {}
        """Acknowledged writes not yet durable anywhere (``sync_writes=False`` only)."""
        self.writes = 0
        self.ties = 0
        """Writes of one key by different peers with equal stamps."""
        self._expected: dict[bytes, Expected] = {}

    # --- the record -----------------------------------------------------------------------

    def record(  # noqa: PLR0917 - one acknowledged write, as the store returned it
        self,
        node: int,
        key: str,
        value: Any,
        deleted: bool,
        hlc: int,
        peer: str,
        *,
        merged: Sequence[tuple[str, int]] | None = None,
        durable: bool = True,
    ) -> int:
        """Record a write node ``node`` acknowledged; return its write id.

        ``merged``: the ``(peer, hlc)`` of the versions passed to ``merge`` (None for a put
        or delete). ``durable=False``: it counts only once :meth:`durable` finds it.
        """
        kb = key.encode()
        book = self.books.get(kb)
        if book is None:
            book = self.books[kb] = _Book(key)
        seen = self.seen[node]
        held = seen.get(kb, 0)
        dot = 0
        if merged is None:
            closed = held
        else:
            closed = 0
            for p, h in merged:
                covered, full = book.upto(p, h)
                if covered & ~held:  # stamps alone cover writes this node never saw
                    dot |= covered & ~held
                    full = 0
                    for y in ids(covered & held):
                        full |= (1 << y) | book.closed[y]
                closed |= full
        forgotten = book.own.get(peer, 0) & ~held
        if forgotten:  # its writer lost them in a power cut and has not seen them since
            for x in ids(forgotten):
                stamp = book.writes[x].hlc
                if stamp < hlc:
                    dot |= 1 << x
                elif stamp > hlc:
                    book.covers.append((x, len(book.writes)))
        other = book.stamps.setdefault(hlc, peer)
        if other != peer:
            self.ties += 1
        vb = b"" if deleted else cbor2.dumps(value)
        w = Write(key, None if deleted else value, vb, hlc, peer, deleted)
        wid = book.add(w, closed, dot)
        seen[kb] = held | closed | (1 << wid)
        self.writes += 1
        if durable:
            book.survived |= 1 << wid
        else:
            self.pending[(kb, peer, hlc, deleted, vb)] = (book, wid)
        self._expected.clear()
        return wid

    def snapshot(self, node: int, states: Sequence[RawEntry]) -> list[int]:
        """What ``node`` has seen of each state's key (its log was just read for sending)."""
        seen = self.seen[node]
        return [seen.get(r.key, 0) for r in states]

    def deliver(self, node: int, states: Sequence[RawEntry], snapshots: Sequence[int]) -> None:
        """``node`` applied a batch of these states, sent with these :meth:`snapshot` sets."""
        seen = self.seen[node]
        for r, s in zip(states, snapshots, strict=True):
            if s:
                seen[r.key] = seen.get(r.key, 0) | s

    def durable(self, state: RawEntry) -> None:
        """A node's disk wrote back ``state``: its versions are durable from now on."""
        pending = self.pending
        if not pending:
            return
        for peer, hlc, deleted, value in _versions(state):
            found = pending.pop((state.key, peer, hlc, deleted, value), None)
            if found is not None:
                book, wid = found
                book.survived |= 1 << wid
                self._expected.clear()

    def reload(self, node: int, states: Iterable[RawEntry]) -> None:
        """After a power cut: ``node`` has seen exactly what its store still holds."""
        seen: dict[bytes, int] = {}
        for r in states:
            if r.key in self.books:
                seen[r.key] = self._shown(r)
        self.seen[node] = seen

    def _shown(self, r: RawEntry) -> int:
        """The writes state ``r`` holds, with what they superseded."""
        book = self.books[r.key]
        mask = 0
        for v in _versions(r):
            wid = book.find(v)
            if wid is not None:
                mask |= (1 << wid) | book.closed[wid]
        return mask

    def lose(self, node: int, key: bytes) -> None:
        """``node``'s record of ``key`` rotted away: it has seen nothing of the key."""
        self.seen[node].pop(key, None)

    def lose_everywhere(self, key: bytes, stamp: int) -> None:
        """Every replica lost ``key``'s state (largest stamp ``stamp``) to rot: versions
        still on the wire may arrive afterwards and stand, since nothing anywhere knows of
        the lost state. The key may then hold any acknowledged versions older than
        ``stamp`` (the replicas must still agree, order included)."""
        self.lost[key] = max(stamp, self.lost.get(key, 0))

    def absorb(self, node: int, states: Iterable[RawEntry]) -> None:
        """``node`` merged these states outside a batch (repair): it has seen what they
        show."""
        seen = self.seen[node]
        for r in states:
            if r.key in self.books:
                seen[r.key] = seen.get(r.key, 0) | self._shown(r)

    # --- the expectation -------------------------------------------------------------------

    def expected(self, key: bytes) -> Expected:
        """What every replica must hold of encoded key ``key`` (after the final write-back)."""
        exp = self._expected.get(key)
        if exp is not None:
            return exp
        book = self.books[key]
        superseded = book.superseded()
        writes = book.writes
        covered = {(writes[i].peer, writes[i].hlc) for i in ids(superseded)}
        best: dict[Dot, Write] = {}
        for wid in ids(book.survived & ~superseded):
            w = writes[wid]
            dot = (w.peer, w.hlc)
            if dot in covered:
                continue
            cur = best.get(dot)
            if cur is None or (w.deleted, w.value_bytes) > (cur.deleted, cur.value_bytes):
                best[dot] = w
        order = functools.cmp_to_key(self._cmp)
        live = sorted((w for w in best.values() if not w.deleted), key=order)
        dead = sorted((w for w in best.values() if w.deleted), key=order)
        exp = self._expected[key] = Expected(tuple(live), tuple(dead), superseded)
        return exp

    def _cmp(self, a: Write, b: Write) -> int:
        if beats(a, b, self.resolver):
            return -1
        return 1 if beats(b, a, self.resolver) else 0

    def sibling_keys(self) -> int:
        """Keys expected to hold two or more live siblings."""
        return sum(1 for k in self.books if len(self.expected(k).live) > 1)

    def vanished(self) -> int:
        """Acknowledged writes never durable anywhere that no durable write superseded:
        lost in power cuts (allowed without ``sync_writes``)."""
        return sum(
            1
            for book, wid in self.pending.values()
            if not (self.expected(book.key.encode()).superseded >> wid) & 1
        )

    # --- the check ---------------------------------------------------------------------------

    def check(
        self,
        node: str,
        store: Store,
        *,
        exclude_peers: Iterable[str] = (),
        orders: dict[bytes, tuple[str, list[Dot]]] | None = None,
        horizon: int = 0,
    ) -> list[Mismatch]:
        """Compare every key of ``store`` with the expectation; return the differences.

        Live siblings are read with :meth:`Store.get_all` (compared as a set, then in
        order), tombstone siblings from the change log, which also shows keys the oracle
        never saw written. ``orders`` (shared across the replicas of one check) records the
        first replica's sibling order per key; a later replica with another order is a
        ``divergent-order``.

        ``horizon``: the highest collection horizon any replica reached. Tombstone versions
        below it may be gone from this store even above its own horizon: a version pruned
        elsewhere leaves its dot in the context, so joining the pruned state drops it here
        too, and repair drops a state below the peer's horizon (absence wins).
        """
        out: list[Mismatch] = []
        excluded = set(exclude_peers)
        below = max(horizon, store.gc_horizon)
        states = {r.key: r for r in store.raw_changes(0)}
        for kb, book in self.books.items():
            got = store.get_all(book.key)
            state = states.pop(kb, None)
            if kb in self.lost:
                out.extend(self._after_loss(node, book, self.lost[kb], state, excluded))
            else:
                exp = self.expected(kb)
                out.extend(self._live(node, book, exp, got, excluded))
                if state is None and not exp.live and _collected(exp, below):
                    continue
                dead = [v for v in _versions(state) if v[2]] if state is not None else []
                out.extend(self._dead(node, book, exp, dead, excluded, below))
            if orders is not None:
                mine = [(e.peer, e.hlc) for e in got]
                first = orders.setdefault(kb, (node, mine))
                if first[1] != mine:
                    out.append(
                        Mismatch(
                            node, book.key, "divergent-order", f"{first[0]}: {first[1]}", str(mine)
                        )
                    )
        for kb, r in states.items():
            held = ", ".join(_describe(v) for v in _versions(r))
            out.append(
                Mismatch(node, kb.decode("utf-8", "replace"), "phantom", "never written", held)
            )
        return out

    @staticmethod
    def _after_loss(
        node: str, book: _Book, top: int, state: RawEntry | None, excluded: set[str]
    ) -> list[Mismatch]:
        """A key lost everywhere (:meth:`lose_everywhere`; ``top``: the lost state's
        stamp): each version held must be an acknowledged write older than the lost one."""
        if state is None:
            return []
        return [
            Mismatch(node, book.key, "phantom", f"older than {top}", _describe(v))
            for v in _versions(state)
            if v[0] in excluded or v[1] >= top or book.find(v) is None
        ]

    def _live(
        self, node: str, book: _Book, exp: Expected, got: list[Entry], excluded: set[str]
    ) -> list[Mismatch]:
        want = {(w.peer, w.hlc, False, w.value_bytes): w for w in exp.live}
        have = [(e.peer, e.hlc, False, e.raw or b"") for e in got]
        if have == list(want):
            return []
        shown = "[" + ", ".join(_describe(v) for v in have) + "]"
        out = [
            Mismatch(node, book.key, "lost", w.describe(), shown)
            for v, w in want.items()
            if v not in have
        ]
        for v in have:
            if v not in want:
                kind = self._classify(book, exp, v, excluded)
                out.append(Mismatch(node, book.key, kind, _listed(exp.live), _describe(v)))
        if not out:
            out.append(Mismatch(node, book.key, "wrong-order", _listed(exp.live), shown))
        return out

    def _dead(  # noqa: PLR0917 - private; the check's inputs
        self,
        node: str,
        book: _Book,
        exp: Expected,
        held: list[Version],
        excluded: set[str],
        horizon: int,
    ) -> list[Mismatch]:
        want = {(w.peer, w.hlc, True, b""): w for w in exp.tombstones}
        out = [
            Mismatch(node, book.key, "lost", w.describe(), "no such tombstone sibling")
            for v, w in want.items()
            if v not in held and w.hlc >= horizon  # below it: pruned by collection
        ]
        for v in held:
            if v not in want:
                kind = self._classify(book, exp, v, excluded)
                out.append(Mismatch(node, book.key, kind, _listed(exp.tombstones), _describe(v)))
        return out

    @staticmethod
    def _classify(book: _Book, exp: Expected, v: Version, excluded: set[str]) -> str:
        """A version a replica holds but should not: ``resurrected`` (superseded),
        ``wrong-winner`` (its dot's other write should have been kept), ``phantom``."""
        wid = book.find(v)
        if v[0] in excluded or wid is None:
            return "phantom"
        if (exp.superseded >> wid) & 1:
            return "resurrected"
        kept = exp.live + exp.tombstones
        if any((w.peer, w.hlc) == (v[0], v[1]) for w in kept):
            return "wrong-winner"
        return "phantom"


def _collected(exp: Expected, horizon: int) -> bool:
    """Every expected version is a tombstone below ``horizon``: it may be gone."""
    return all(w.hlc < horizon for w in exp.tombstones)


def _describe(v: Version) -> str:
    peer, hlc, deleted, value = v
    if deleted:
        return f"hlc={hlc} peer={peer} tombstone"
    try:
        shown = repr(cbor2.loads(value))
    except Exception:  # a phantom may hold anything: show its bytes
        shown = f"<{value.hex()}>"
    return f"hlc={hlc} peer={peer} value={shown}"


def _listed(ws: Sequence[Write]) -> str:
    return "[" + ", ".join(w.describe() for w in ws) + "]"
