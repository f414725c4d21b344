"""The siblings-mode shortcuts change no state: local puts and deletes built straight from
the old record's context (``pack_put`` over ``siblings_context`` in ``Writer._body``),
applied states of one version over the same peer's own older single version
(``pack_single``/``sole_dot`` in ``sibling_changes``) and ``join`` of a single version
into nothing. A store with them and one without them, fed the same operations on the same
clock, hold the same bytes."""

from __future__ import annotations

import random
from typing import Any

import pytest

import crdt_kv
import crdt_kv.store.merge as merge
import crdt_kv.store.writes as writes
from crdt_kv import Store
from crdt_kv.causal import full_context, siblings, state, write
from crdt_kv.layout import pack_siblings, unpack_record
from crdt_kv.testing import ManualClock
from crdt_kv.version import RawEntry


def records(store: Store) -> list[tuple[bytes, bytes]]:
    return list(store.backend.iterate(b"d", b"e"))


def operate(s: Store, other: Store, rng: random.Random, clock: ManualClock) -> None:
    """One random operation on ``s``: a local write, a merge, or a write on ``other`` (keys
    k0 to k2 only: k3 to k5 stay single-writer keys) and an apply from it."""
    key = f"k{rng.randrange(6)}"
    roll = rng.random()
    if roll < 0.45:
        s.put(key, rng.randrange(100))
    elif roll < 0.6:
        s.delete(key)
    elif roll < 0.75:
        held = s.get_all(key)
        s.merge(key, rng.sample(held, rng.randrange(len(held) + 1)), "merged")
    elif roll < 0.85:
        with s.batch() as b:
            b.put(key, "batched")
            b.delete(f"k{rng.randrange(6)}")
    else:
        k = f"k{rng.randrange(3)}"
        other.put(k, rng.randrange(100)) if rng.random() < 0.8 else other.delete(k)
        s.apply(other.changes())
    if rng.random() < 0.3:
        clock.advance(rng.choice((-2, 1, 3)))


@pytest.mark.parametrize("seed", range(6))
def test_the_single_version_shortcuts_write_what_the_full_path_writes(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    clock = ManualClock(tick_ms=1)

    def open_(peer: str) -> Store:
        return crdt_kv.open(backend="memory", peer_id=peer, clock=clock, conflicts="siblings")

    fast, slow = open_("a"), open_("a")
    other_fast, other_slow = open_("b"), open_("b")
    rng_fast, rng_slow = random.Random(seed), random.Random(seed)
    shortcut = (merge.pack_single, merge.sole_dot)
    real_body = writes.Writer._body

    def full_body(
        self: writes.Writer,
        k: bytes,
        v: bytes,
        deleted: bool,
        hlc: int,
        old: bytes | None,
        covers: Any = None,
    ) -> bytes:
        if covers is not None or self.order is None:
            return real_body(self, k, v, deleted, hlc, old, covers)
        prior = None if old is None else unpack_record(k, old)
        new = RawEntry(k, v, hlc, self._peer_id, deleted)
        return pack_siblings(write(prior, new, None, self.order))

    def full_path(hlc: int, peer_b: bytes, deleted: bool, value: bytes) -> bytes:
        return pack_siblings(RawEntry(b"", value, hlc, peer_b.decode(), deleted))

    def no_dot(blob: bytes, peer_b: bytes) -> Any:
        return None

    def full_join(a: RawEntry | None, b: RawEntry, order: Any) -> RawEntry:
        if a is None:
            return state(b.key, siblings(b), full_context(b), order)
        return real_join(a, b, order)

    real_join = merge.join
    hits = 0

    def counted(blob: bytes, peer_b: bytes) -> int | None:
        nonlocal hits
        dot = shortcut[1](blob, peer_b)
        hits += dot is not None
        return dot

    real_context = writes.siblings_context

    def counted_context(key: bytes, blob: bytes) -> dict[str, int]:
        nonlocal hits
        hits += 1
        return real_context(key, blob)

    multi = 0
    for _ in range(150):
        start = clock.now
        with monkeypatch.context() as m:
            m.setattr(merge, "sole_dot", counted)
            m.setattr(writes, "siblings_context", counted_context)
            operate(fast, other_fast, rng_fast, clock)
        clock.set(start)
        with monkeypatch.context() as m:
            m.setattr(merge, "pack_single", full_path)
            m.setattr(merge, "sole_dot", no_dot)
            m.setattr(merge, "join", full_join)
            m.setattr(writes.Writer, "_body", full_body)
            operate(slow, other_slow, rng_slow, clock)
        assert (merge.pack_single, merge.sole_dot) == shortcut
        assert writes.Writer._body is real_body
        assert records(fast) == records(slow)
        assert fast.digest() == slow.digest()
        multi += any(len(fast.get_all(f"k{i}")) > 1 for i in range(6))
    assert hits >= 10 and multi >= 10  # both paths were taken, many times
    for s in (fast, slow, other_fast, other_slow):
        s.close()
