"""The ``siblings`` conflict mode: a key's state is a set of concurrent versions (siblings)
with a causal context, merged as a state-based CRDT (``spec/data-model.md`` section 16).

Every write is a *dot* ``(peer, hlc)``: its stamp doubles as the per-peer counter, since a
peer's stamps only grow. A key's **context** maps each peer to the newest stamp of that
peer's writes to the key that this replica has seen; it covers every dot of that peer at
or below it (a peer's own state always held all its earlier writes of the key, so the set
is downward closed). A state is ``(siblings, context)`` with every sibling inside the
context. Two states join by keeping the siblings both hold and those the other's context
does not cover, and by taking the per-peer maximum of the contexts: commutative,
associative and idempotent. A local put or delete writes with the whole context of the
key (it supersedes every version held); ``merge`` writes with exactly the context of the
versions passed to it (dotted version vector sets, Preguiça et al. 2012).

The context grows with the number of peers that wrote the key, never with the number of
writes or the cluster. On disk and on the wire only the entries its siblings do not imply
are kept: a key written by one peer carries no context at all.

Pure: no storage, no clock. States are :class:`~crdt_kv.version.RawEntry` objects (head
sibling plus ``others`` plus explicit ``context``), so the log, the protocol and the
session carry one object per key in both modes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

from crdt_kv.version import Entry, RawEntry, Resolver, supersedes

__all__ = [
    "Context",
    "Order",
    "context_of",
    "full_context",
    "join",
    "join_at",
    "prune",
    "siblings",
    "state",
    "write",
]

Context = dict[str, int]
"""A causal context: peer -> newest stamp of that peer's writes to the key seen here."""

Order = Callable[[list[RawEntry]], list[RawEntry]]
"""Sorts a state's siblings into sibling order (see :func:`sibling_order`)."""


def siblings(r: RawEntry) -> list[RawEntry]:
    """The siblings of state ``r``: its head (without ``others``/``context``) and the rest."""
    if not r.others and not r.context:
        return [r]
    return [RawEntry(r.key, r.value, r.hlc, r.peer, r.deleted), *r.others]


def full_context(r: RawEntry) -> Context:
    """The whole causal context of state ``r``: its explicit entries plus its siblings' dots."""
    ctx = dict(r.context)
    for s in (r, *r.others):
        if s.hlc > ctx.get(s.peer, -1):
            ctx[s.peer] = s.hlc
    return ctx


def context_of(versions: Iterable[tuple[str, int]]) -> Context:
    """The context that covers exactly the dots ``(peer, hlc)`` given (and, as any context,
    the older dots of the same peers)."""
    ctx: Context = {}
    for peer, hlc in versions:
        if hlc > ctx.get(peer, -1):
            ctx[peer] = hlc
    return ctx


def _pick(a: RawEntry, b: RawEntry) -> RawEntry:
    """Two versions with one dot (a stamp re-issued after a power loss): the greater
    ``(deleted, value)`` is kept everywhere, as the ``lww`` order does for one peer."""
    return a if (a.deleted, a.value) >= (b.deleted, b.value) else b


def join(a: RawEntry | None, b: RawEntry, order: Order) -> RawEntry:
    """The join of states ``a`` (None: no record) and ``b`` of one key."""
    j = join_at(a, b, order, 0)
    assert j is not None  # nothing is below horizon 0
    return j


def join_at(a: RawEntry | None, b: RawEntry, order: Order, horizon: int) -> RawEntry | None:
    """:func:`join` at a receiver whose collection horizon is ``horizon``.

    Below the horizon absence wins version by version: a version of ``b`` older than the
    horizon whose dot ``a`` does not hold was superseded or collected here, so it is not
    taken back (its dot stays covered by the context). None when nothing of ``b`` is left
    to hold and ``a`` is None.
    """
    if a is None:
        if not b.others and not b.context:  # one version: what state() would return
            if b.hlc < horizon:
                return None
            return RawEntry(b.key, b.value, b.hlc, b.peer, b.deleted) if b.seq else b
        sibs = [s for s in siblings(b) if s.hlc >= horizon]
        return state(b.key, sibs, full_context(b), order) if sibs else None
    ca, cb = full_context(a), full_context(b)
    theirs = {(s.peer, s.hlc): s for s in siblings(b)}
    kept: list[RawEntry] = []
    for s in siblings(a):
        other = theirs.pop((s.peer, s.hlc), None)
        if other is not None:
            kept.append(_pick(s, other))
        elif s.hlc > cb.get(s.peer, -1):
            kept.append(s)
    kept.extend(s for s in theirs.values() if s.hlc > ca.get(s.peer, -1) and s.hlc >= horizon)
    if not kept:  # only versions below the horizon would supersede a's: keep a
        return a
    for peer, hlc in cb.items():
        if hlc > ca.get(peer, -1):
            ca[peer] = hlc
    return state(a.key, kept, ca, order)


def write(old: RawEntry | None, new: RawEntry, covers: Context | None, order: Order) -> RawEntry:
    """The state after a local write of sibling ``new`` over state ``old``.

    ``covers`` is the write's context: None for a put or delete (everything held is
    superseded), the context of the merged versions for ``merge``.
    """
    if old is None:
        if not covers:
            return new
        # A merge over a state no longer held here (collected, or its record lost) still
        # supersedes the versions it merged: without their dots they would come back.
        ctx = dict(covers)
        if new.hlc > ctx.get(new.peer, -1):
            ctx[new.peer] = new.hlc
        return state(new.key, [new], ctx, order)
    ctx = full_context(old)
    if covers is None:
        kept: list[RawEntry] = []
    else:
        kept = [s for s in siblings(old) if s.hlc > covers.get(s.peer, -1)]
        for peer, hlc in covers.items():
            if hlc > ctx.get(peer, -1):
                ctx[peer] = hlc
    if new.hlc > ctx.get(new.peer, -1):
        ctx[new.peer] = new.hlc
    kept.append(new)
    return state(new.key, kept, ctx, order)


def prune(r: RawEntry, horizon: int, order: Order) -> RawEntry | None:
    """State ``r`` without its tombstone versions older than ``horizon`` (their dots stay
    covered by the context), or None if that removes nothing or would remove every version
    (a whole deleted state is collected as one, ``spec/data-model.md`` section 19)."""
    sibs = siblings(r)
    kept = [s for s in sibs if not (s.deleted and s.hlc < horizon)]
    if not kept or len(kept) == len(sibs):
        return None
    return state(r.key, kept, full_context(r), order)


def state(key: bytes, sibs: Sequence[RawEntry], ctx: Context, order: Order) -> RawEntry:
    """The canonical state of ``key``: siblings in sibling order, context entries their
    dots do not imply, sorted by peer."""
    ordered = order(list(sibs)) if len(sibs) > 1 else list(sibs)
    implied: Context = {}
    for s in ordered:
        if s.hlc > implied.get(s.peer, -1):
            implied[s.peer] = s.hlc
    explicit = tuple(sorted((p, h) for p, h in ctx.items() if h > implied.get(p, -1)))
    head = ordered[0]
    if not explicit and len(ordered) == 1 and head.key == key and not head.seq:
        return head
    others = tuple(RawEntry(key, s.value, s.hlc, s.peer, s.deleted) for s in ordered[1:])
    return RawEntry(key, head.value, head.hlc, head.peer, head.deleted, 0, explicit, others)


def sibling_order(resolver: Resolver | None, to_entry: Callable[[RawEntry], Entry]) -> Order:
    """Sibling order: live siblings before tombstones, each group by the ``lww`` merge
    order, winner first (higher stamp, then the resolver, then the canonical key). The
    first live sibling is what ``get`` returns, so code written for ``lww`` keeps working.
    """

    def cmp(a: RawEntry, b: RawEntry) -> int:
        if a.deleted != b.deleted:
            return 1 if a.deleted else -1
        if supersedes(a, b, resolver, to_entry):
            return -1
        if supersedes(b, a, resolver, to_entry):
            return 1
        return 0

    key = functools.cmp_to_key(cmp)

    def order(sibs: list[RawEntry]) -> list[RawEntry]:
        return sorted(sibs, key=key)

    return order
