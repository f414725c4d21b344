"""The ``siblings`` data model (:mod:`crdt_kv.causal`): the join is a semilattice, and a
cluster of replicas doing put/delete/merge/sync matches a model that knows nothing of
contexts, only which writes each replica had seen when it wrote."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import crdt_kv
from crdt_kv.causal import (
    full_context,
    join,
    join_at,
    prune,
    sibling_order,
    siblings,
    state,
    write,
)
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from crdt_kv.version import Entry, RawEntry

PEERS = ("a", "b", "c")
KEYS = ("k1", "k2")


def _to_entry(r: RawEntry) -> Entry:
    return Entry(r.key, r.value, r.hlc, r.peer, r.deleted)


ORDER = sibling_order(None, _to_entry)


def _open(peer: str, clock: ManualClock) -> Store:
    return crdt_kv.open(
        backend="memory", peer_id=peer, conflicts="siblings", clock=clock, rng=random.Random(peer)
    )


def _states(seed: int, steps: int) -> list[RawEntry]:
    """States of one key on three replicas after random writes and partial syncs."""
    rnd = random.Random(seed)
    clock = ManualClock()
    stores = [_open(p, clock) for p in PEERS]
    for _ in range(steps):
        s = rnd.choice(stores)
        op = rnd.random()
        clock.advance(rnd.choice((0, 1)))
        if op < 0.45:
            s.put("k", rnd.randrange(1000))
        elif op < 0.6:
            s.delete("k")
        elif op < 0.75:
            got = s.get_all("k")
            s.merge("k", rnd.sample(got, rnd.randrange(len(got) + 1)), rnd.randrange(1000))
        else:
            rnd.choice(stores).apply(s.changes())
    out = []
    for s in stores:
        r = s.raw_changes()
        out.extend(r)
        s.close()
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 25))
def test_join_is_commutative_associative_idempotent(seed: int, steps: int) -> None:
    states = _states(seed, steps)
    if len(states) < 3:
        return
    a, b, c = states[:3]
    assert join(a, b, ORDER) == join(b, a, ORDER)
    assert join(join(a, b, ORDER), c, ORDER) == join(a, join(b, c, ORDER), ORDER)
    assert join(a, a, ORDER) == join(None, a, ORDER)
    ab = join(a, b, ORDER)
    assert join(ab, b, ORDER) == ab
    for s in siblings(ab):
        assert full_context(ab)[s.peer] >= s.hlc


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30))
def test_any_apply_order_converges(seed: int, steps: int) -> None:
    rnd = random.Random(seed)
    clock = ManualClock()
    stores = [_open(p, clock) for p in PEERS]
    for _ in range(steps):
        s = rnd.choice(stores)
        clock.advance(rnd.choice((0, 1)))
        if rnd.random() < 0.7:
            s.put(rnd.choice(KEYS), rnd.randrange(100))
        else:
            s.delete(rnd.choice(KEYS))
        if rnd.random() < 0.3:
            rnd.choice(stores).apply(s.changes())
    logs = [list(s.raw_changes()) for s in stores]
    digests = set()
    for perm in itertools.permutations(range(3)):
        target = _open("z", clock)
        for i in perm:
            target.apply(logs[i])
        assert target.apply(logs[perm[0]]) == 0
        digests.add(target.digest())
        target.close()
    assert len(digests) == 1
    for s in stores:
        s.close()


# --- a cluster against a model of happened-before ---------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    key: str
    peer: str
    hlc: int
    value: object
    deleted: bool
    supersedes: frozenset[tuple[str, int]]


@dataclass
class Model:
    writes: dict[tuple[str, int], Write] = field(default_factory=dict)
    seen: dict[tuple[str, str], set[tuple[str, int]]] = field(default_factory=dict)

    def seen_of(self, peer: str, key: str) -> set[tuple[str, int]]:
        return self.seen.setdefault((peer, key), set())

    def live(self, peer: str, key: str) -> set[tuple[str, int, object]]:
        seen = self.seen_of(peer, key)
        gone = set().union(*(self.writes[d].supersedes for d in seen)) if seen else set()
        return {
            (d[0], d[1], self.writes[d].value)
            for d in seen
            if d not in gone and not self.writes[d].deleted
        }


class Cluster(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.stores = {p: _open(p, self.clock) for p in PEERS}
        self.model = Model()
        self.values = itertools.count()

    def _record(self, peer: str, key: str, hlc: int, value: object, deleted: bool,
                supersedes: set[tuple[str, int]]) -> None:  # fmt: skip
        dot = (peer, hlc)
        self.model.writes[dot] = Write(key, peer, hlc, value, deleted, frozenset(supersedes))
        self.model.seen_of(peer, key).add(dot)

    @rule(peer=st.sampled_from(PEERS), key=st.sampled_from(KEYS), tick=st.booleans())
    def put(self, peer: str, key: str, tick: bool) -> None:
        self.clock.advance(int(tick))
        value = next(self.values)
        v = self.stores[peer].put(key, value)
        self._record(peer, key, v.hlc, value, False, set(self.model.seen_of(peer, key)))

    @rule(peer=st.sampled_from(PEERS), key=st.sampled_from(KEYS))
    def delete(self, peer: str, key: str) -> None:
        v = self.stores[peer].delete(key)
        self._record(peer, key, v.hlc, None, True, set(self.model.seen_of(peer, key)))

    @rule(peer=st.sampled_from(PEERS), key=st.sampled_from(KEYS), data=st.data())
    def merge(self, peer: str, key: str, data: st.DataObject) -> None:
        got = self.stores[peer].get_all(key)
        passed = data.draw(st.lists(st.sampled_from(got), unique=True)) if got else []
        value = next(self.values)
        v = self.stores[peer].merge(key, passed, value)
        covered = {
            d
            for d, w in self.model.writes.items()
            if w.key == key and any(w.peer == p.peer and w.hlc <= p.hlc for p in passed)
        }
        self._record(peer, key, v.hlc, value, False, covered)

    @rule(src=st.sampled_from(PEERS), dst=st.sampled_from(PEERS))
    def sync(self, src: str, dst: str) -> None:
        if src == dst:
            return
        self.stores[dst].apply(self.stores[src].changes())
        for key in KEYS:
            self.model.seen_of(dst, key).update(self.model.seen_of(src, key))

    @precondition(lambda self: True)
    @invariant()
    def siblings_match_the_model(self) -> None:
        for peer, store in self.stores.items():
            for key in KEYS:
                got = {(e.peer, e.hlc, e.value) for e in store.get_all(key)}
                assert got == self.model.live(peer, key), (peer, key)
                first = store.get(key)
                assert first == (store.get_all(key) or [Entry(key, None, 0, "")])[0].value

    def teardown(self) -> None:
        for a, b in itertools.permutations(PEERS, 2):
            self.stores[b].apply(self.stores[a].changes())
        for a in PEERS:
            self.stores[a].apply(self.stores["c"].changes())
        digests = {s.digest() for s in self.stores.values()}
        orders = {
            tuple((e.peer, e.hlc) for e in s.get_all(k))
            for s in self.stores.values()
            for k in KEYS[:1]
        }
        for s in self.stores.values():
            s.close()
        assert len(digests) == 1
        assert len(orders) == 1


Cluster.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestCluster = Cluster.TestCase


# --- below the collection horizon (spec/data-model.md section 19) -------------------------


def _v(peer: str, hlc: int, *, deleted: bool = False) -> RawEntry:
    return RawEntry(b"k", b"" if deleted else b"\x01", hlc, peer, deleted)


def test_join_at_leaves_out_old_versions_the_receiver_does_not_hold() -> None:
    held = state(b"k", [_v("a", 50)], {"a": 50}, ORDER)
    incoming = state(b"k", [_v("a", 50), _v("b", 10, deleted=True), _v("c", 90)], {}, ORDER)
    got = join_at(held, incoming, ORDER, 40)
    assert got is not None
    assert {(s.peer, s.hlc) for s in siblings(got)} == {("a", 50), ("c", 90)}
    assert full_context(got)["b"] == 10  # its dot stays covered
    assert join_at(held, incoming, ORDER, 0) == join(held, incoming, ORDER)
    # A version the receiver holds stays whatever its age.
    assert join_at(incoming, held, ORDER, 1000) == join(incoming, held, ORDER)


def test_join_at_on_an_absent_key() -> None:
    incoming = state(b"k", [_v("b", 10, deleted=True), _v("c", 90)], {}, ORDER)
    got = join_at(None, incoming, ORDER, 40)
    assert got is not None and [(s.peer, s.hlc) for s in siblings(got)] == [("c", 90)]
    assert join_at(None, incoming, ORDER, 100) is None
    assert join_at(None, _v("c", 90), ORDER, 100) is None


def test_prune_drops_old_tombstone_versions_but_keeps_their_coverage() -> None:
    r = state(b"k", [_v("a", 70), _v("b", 10, deleted=True), _v("c", 60, deleted=True)], {}, ORDER)
    got = prune(r, 40, ORDER)
    assert got is not None
    assert [(s.peer, s.hlc) for s in siblings(got)] == [("a", 70), ("c", 60)]
    assert full_context(got) == full_context(r)
    assert prune(r, 5, ORDER) is None  # nothing below the horizon
    only_dead = state(b"k", [_v("b", 10, deleted=True)], {}, ORDER)
    assert prune(only_dead, 40, ORDER) is None  # a whole deleted state is collected as one


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 20))
def test_pruning_commutes_with_trimmed_joins(seed: int, pick: int) -> None:
    """Two replicas at one horizon end with one state whichever pruned first: the
    receiver's trim and the holder's prune leave the same live versions."""
    states = _states(seed, 12)
    if len(states) < 2:
        return
    a, b = states[:2]
    stamps = sorted({h for r in (a, b) for h in full_context(r).values()})
    horizon = stamps[pick % len(stamps)]
    direct = join_at(a, b, ORDER, horizon)
    pa = prune(a, horizon, ORDER) or a
    via = join_at(pa, b, ORDER, horizon)
    if direct is None or via is None:
        return
    live = lambda r: {(s.peer, s.hlc) for s in siblings(r) if not s.deleted}  # noqa: E731
    assert live(direct) == live(via)


def test_a_merge_over_an_absent_state_still_supersedes_what_it_merged() -> None:
    """data-model 16.5: with no state held, a merge's context is W plus its own dot.
    Found by the simulator (bitrot, siblings, seed 86): a replica lost a key's record, then
    a client merged the versions it had read before; the merge kept none of their dots, so
    every merged version came back as a sibling on every replica."""
    new = _v("a", 200)
    got = write(None, new, {"b": 90, "c": 50}, ORDER)
    assert [(s.peer, s.hlc) for s in siblings(got)] == [("a", 200)]
    assert full_context(got) == {"a": 200, "b": 90, "c": 50}
    assert write(None, new, None, ORDER) == new and write(None, new, {}, ORDER) == new
