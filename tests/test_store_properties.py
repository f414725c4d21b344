"""Merge is commutative, associative and idempotent, and picks the model's winner.

Random write histories run on 2-4 replicas (memory backend, manual clocks that start equal
so concurrent writes often carry the same HLC, partial syncs in between). The union of the
replicas' change logs is then applied to fresh stores in random orders and chunkings, with
duplicates and Entry/RawEntry forms mixed: every store must end in the same state, which
must equal every replica's own state after it applied the others', and whose winner per
key must be the greatest write under the normative order (HLC, then resolver, then peer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
from hypothesis import event, given, note
from hypothesis import strategies as st

import crdt_kv
from crdt_kv import Entry, RawEntry, Store
from crdt_kv.testing import ManualClock

T0 = 1_700_000_000_000


def live_first(e: Entry) -> tuple[Any, ...]:
    return (not e.deleted, len(repr(e.value)))


def tombstone_first(e: Entry) -> tuple[Any, ...]:
    return (e.deleted,)


RESOLVER_KEYS: dict[str, Callable[[Entry], tuple[Any, ...]] | None] = {
    "none": None,
    "live-longer-wins": live_first,
    "tombstone-wins": tombstone_first,
}


def make_resolver(name: str) -> crdt_kv.Resolver | None:
    key = RESOLVER_KEYS[name]
    if key is None:
        return None

    def resolver(a: Entry, b: Entry) -> bool:
        return key(a) > key(b)

    return resolver


@dataclass(frozen=True)
class Write:
    key: str
    value: Any
    hlc: int
    peer: str
    deleted: bool

    def rank(self, resolver_name: str) -> tuple[Any, ...]:
        """The normative order, written independently of ``supersedes``."""
        key = RESOLVER_KEYS[resolver_name]
        raw = b"" if self.deleted else cbor2.dumps(self.value)
        as_entry = Entry(self.key, self.value, self.hlc, self.peer, self.deleted)
        middle = key(as_entry) if key is not None else ()
        return (self.hlc, middle, self.peer, self.deleted, raw)


KEY = st.sampled_from(["a", "b", "c", "d"])
VALUE = st.one_of(st.integers(0, 3), st.sampled_from(["x", "yy", ""]), st.none())
EVENT = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 3), KEY, VALUE),
    st.tuples(st.just("del"), st.integers(0, 3), KEY, st.none()),
    st.tuples(st.just("tick"), st.integers(0, 3), st.sampled_from([0, 0, 1, 2, -1, -3]), st.none()),
    st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
)


def state(s: Store) -> tuple[bytes, int, list[tuple[Any, Any]], dict[Any, tuple[Any, ...]]]:
    """Everything replicas must agree on (``seq`` is local and left out)."""
    entries = {}
    for e in s.changes():
        entries[e.key] = (e.value, e.hlc, e.peer, e.deleted)
        assert s.entry(e.key) == e
    return s.digest(), len(s), list(s.items()), entries


def fresh(peer: str, resolver_name: str, clock: ManualClock | None = None) -> Store:
    return crdt_kv.open(
        backend="memory",
        peer_id=peer,
        clock=clock or ManualClock(T0 + 100),
        resolver=make_resolver(resolver_name),
    )


@given(
    n=st.integers(2, 4),
    events=st.lists(EVENT, min_size=1, max_size=30),
    resolver_name=st.sampled_from(sorted(RESOLVER_KEYS)),
    data=st.data(),
)
def test_merge_is_commutative_associative_idempotent(
    n: int, events: list[tuple[Any, ...]], resolver_name: str, data: st.DataObject
) -> None:
    clocks = [ManualClock(T0) for _ in range(n)]
    replicas = [fresh(f"r{i}", resolver_name, clocks[i]) for i in range(n)]
    writes: list[Write] = []
    for kind, who, x, y in events:
        i = who % n
        r = replicas[i]
        if kind == "put":
            v = r.put(x, y)
            writes.append(Write(x, y, v.hlc, v.peer, False))
        elif kind == "del":
            v = r.delete(x)
            writes.append(Write(x, None, v.hlc, v.peer, True))
        elif kind == "tick":
            clocks[i].advance(x)
        else:
            src = replicas[x % n]
            since = src.last_seq * y // 3  # all, part or none of the log
            r.apply(src.changes(since))

    union: list[Entry | RawEntry] = []
    for r in replicas:
        union.extend(r.changes())
        union.extend(r.raw_changes())
    note(f"{len(writes)} writes, union of {len(union)} entries, resolver {resolver_name}")
    stamps = {(w.key, w.hlc) for w in writes}
    event("equal HLC on one key" if len(stamps) < len(writes) else "no HLC tie")

    # Everything at once into an empty store: one change per distinct key; then idempotent.
    first = fresh("f0", resolver_name)
    assert first.apply(union) == len({w.key for w in writes})
    expected = state(first)
    assert first.apply(union) == 0
    assert state(first) == expected

    # Other orders, chunkings and duplicates converge to the same state.
    for k in range(1, 4):
        order = data.draw(st.permutations(union), label=f"order {k}")
        dupes = (
            data.draw(st.lists(st.sampled_from(union), max_size=5), label=f"dupes {k}")
            if union
            else []
        )
        stream = order + dupes
        cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=4)))
        other = fresh(f"f{k}", resolver_name)
        prev = 0
        for cut in [*cuts, len(stream)]:
            other.apply(stream[prev:cut])
            prev = cut
        assert state(other) == expected
        other.close()

    # Each replica, after applying every other replica's log, is in that same state.
    for i, r in enumerate(replicas):
        for j, other_r in enumerate(replicas):
            if i != j:
                r.apply(other_r.raw_changes())
        assert state(r) == expected, f"replica r{i}"

    # The winner per key is the greatest write ever made under the normative order.
    winners: dict[str, Write] = {}
    for w in writes:
        if w.key not in winners or w.rank(resolver_name) > winners[w.key].rank(resolver_name):
            winners[w.key] = w
    for key, w in winners.items():
        e = first.entry(key)
        assert e is not None
        assert (e.value, e.hlc, e.peer, e.deleted) == (w.value, w.hlc, w.peer, w.deleted), key
    assert len(first) == sum(1 for w in winners.values() if not w.deleted)
    for s in [first, *replicas]:
        s.close()


WRITES = st.lists(st.tuples(KEY, VALUE, st.integers(0, 3)), max_size=8)


@given(a=WRITES, b=WRITES, c=WRITES)
def test_apply_is_associative_over_replica_groups(
    a: list[tuple[str, Any, int]],
    b: list[tuple[str, Any, int]],
    c: list[tuple[str, Any, int]],
) -> None:
    """(A merge B) merge C == A merge (B merge C), built as real stores, not entry lists."""

    def build(peer: str, writes: list[tuple[str, Any, int]]) -> Store:
        clock = ManualClock(T0)
        s = fresh(peer, "none", clock)
        for key, value, dt in writes:
            clock.advance(dt)
            if value is None:
                s.delete(key)
            else:
                s.put(key, value)
        return s

    sa, sb, sc = build("a", a), build("b", b), build("c", c)
    ab = fresh("ab", "none")
    ab.apply(sa.changes())
    ab.apply(sb.changes())
    left = fresh("l", "none")
    left.apply(ab.changes())
    left.apply(sc.changes())

    bc = fresh("bc", "none")
    bc.apply(sb.changes())
    bc.apply(sc.changes())
    right = fresh("r", "none")
    right.apply(bc.changes())
    right.apply(sa.changes())
    assert state(left) == state(right)
    for s in (sa, sb, sc, ab, left, bc, right):
        s.close()
