"""Property-test a conflict resolver (hypothesis-based; part of :mod:`crdt_kv.testing`).

A resolver ``fn(a, b) -> bool`` ("``a`` wins over ``b``") decides between two versions of
one key that carry the *same* HLC. The store asks it only in a canonical order (see
:func:`crdt_kv.version.supersedes`), so every replica asks the same question; replicas still
converge only if the answer is a deterministic, consistent order. :func:`check_resolver`
searches for inputs that break that with hypothesis and raises
:class:`~crdt_kv.errors.ResolverError` with the offending entries.
(:func:`crdt_kv.testing.screen.screen_resolver` is its cheap, hypothesis-free cousin that
the simulator runs before every run.)

:func:`coin` is a deliberately broken resolver for testing that checkers catch one:
``crdt-kv simulate --resolver crdt_kv.testing.resolvers:coin`` must fail.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure

from crdt_kv.errors import ResolverError
from crdt_kv.testing.screen import (
    ask,
    find_cycle,
    replica_copy,
    same_question,
    violation,
)
from crdt_kv.version import Entry, Resolver

__all__ = ["check_resolver", "coin", "entries"]

_SEQS = st.integers(min_value=0, max_value=1000)
_PEERS = st.sampled_from(["a", "b", "c", "peer-1", "z"]) | st.text(min_size=1, max_size=4)
_SMALL_INTS = st.integers(min_value=-2, max_value=3)
_SCALARS: st.SearchStrategy[Any] = st.one_of(
    _SMALL_INTS,
    _SMALL_INTS,
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(alphabet="ab\u00e9", max_size=3),
    st.text(max_size=4),
)
_VALUES: st.SearchStrategy[Any] = st.one_of(
    _SCALARS,
    _SCALARS,
    st.lists(_SCALARS, max_size=3),
    st.dictionaries(st.text(alphabet="xyz", max_size=2), _SCALARS, max_size=3),
)


@st.composite
def _entry(draw: st.DrawFn, hlc: int, key: str, values: st.SearchStrategy[Any]) -> Entry:
    peer = draw(_PEERS)
    seq = draw(_SEQS)
    if draw(st.booleans()) and draw(st.booleans()):
        return Entry(key, None, hlc, peer, True, seq, b"")
    value = draw(values)
    return Entry(key, value, hlc, peer, False, seq, cbor2.dumps(value))


def entries(
    n: int, *, values: st.SearchStrategy[Any] | None = None
) -> st.SearchStrategy[list[Entry]]:
    """``n`` entries of one key sharing one HLC: the only inputs a resolver ever sees.

    Peers repeat and values are mostly small, so ties and equal values are common.
    Each entry's ``raw`` holds its CBOR encoding, as entries read from a store do.
    """
    vals = _VALUES if values is None else values

    @st.composite
    def build(draw: st.DrawFn) -> list[Entry]:
        hlc = draw(st.integers(min_value=0, max_value=(1 << 64) - 1))
        key = draw(st.sampled_from(["k", "user:1"]))
        return [draw(_entry(hlc, key, vals)) for _ in range(n)]

    return build()


def _grid(values: st.SearchStrategy[Any] | None) -> st.SearchStrategy[list[Entry]]:
    """Every (peer, value) pair from a small pool, plus one tombstone per peer, at one stamp.

    Three random entries almost never form a cycle (rock-paper-scissors needs three specific
    values); a dense grid of 3-5 distinct values lets the transitivity check see every triple.
    """
    vals = _VALUES if values is None else values

    @st.composite
    def build(draw: st.DrawFn) -> list[Entry]:
        hlc = draw(st.integers(min_value=0, max_value=(1 << 64) - 1))
        peers = draw(
            st.lists(
                st.sampled_from(["a", "b", "peer-1", "z"]), min_size=1, max_size=3, unique=True
            )
        )
        pool = draw(st.lists(vals, min_size=3, max_size=5, unique_by=cbor2.dumps))
        grid = [Entry("k", v, hlc, p, False, 0, cbor2.dumps(v)) for p in peers for v in pool]
        grid += [Entry("k", None, hlc, p, True, 0, b"") for p in peers]
        return grid

    return build()


def check_resolver(
    fn: Resolver,
    *,
    max_examples: int = 200,
    values: st.SearchStrategy[Any] | None = None,
) -> None:
    """Property-test a conflict resolver; raise :class:`ResolverError` on a counterexample.

    Checked over entries of one key with equal HLC, varied peers, values and tombstones:

    - it returns a ``bool`` and does not raise (tombstones, whose ``value`` is None, included);
    - determinism: the same question gets the same answer, also when asked with
      equal-but-distinct copies that differ only in replica-local fields (``seq``);
    - antisymmetry: ``fn(a, b)`` and ``fn(b, a)`` are never both True for two different
      candidates (it may call them tied: the store then breaks the tie canonically);
    - transitivity of the order the store derives from it (:func:`supersedes`): if ``x``
      beats ``y`` and ``y`` beats ``z`` then ``x`` beats ``z``; otherwise the winner of
      three concurrent writes depends on arrival order and replicas diverge.

    ``values`` restricts the generated values (a hypothesis strategy) for a resolver that
    only handles the value types an application stores; tombstones are always generated.
    The search is derandomized so one resolver always gets the same verdict.
    """
    if not callable(fn):
        raise TypeError(f"resolver must be callable, not {type(fn).__name__}")

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(entries(3, values=values), _SEQS, _SEQS)
    def run(triple: list[Entry], seq_a: int, seq_b: int) -> None:
        a, b, _ = triple
        first = ask(fn, a, b)
        if ask(fn, a, b) != first:
            raise violation("is not deterministic (asked twice)", ("a", a), ("b", b))
        ca, cb = replica_copy(a, seq_a), replica_copy(b, seq_b)
        if ask(fn, ca, cb) != first:
            raise violation(
                "answers differently for equal copies of its arguments",
                ("a", a),
                ("b", b),
                ("copy of a", ca),
                ("copy of b", cb),
            )
        if not same_question(a, b) and first and ask(fn, b, a):
            raise violation("is not antisymmetric: both a and b win", ("a", a), ("b", b))
        if any(same_question(x, y) for i, x in enumerate(triple) for y in triple[i + 1 :]):
            return
        cycle = find_cycle(fn, triple)
        if cycle is not None:
            raise cycle

    @settings(
        max_examples=max(10, max_examples // 4),
        deadline=None,
        database=None,
        derandomize=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(_grid(values))
    def run_grid(grid: list[Entry]) -> None:
        cycle = find_cycle(fn, grid)
        if cycle is not None:
            raise cycle

    try:
        run()
        run_grid()
    except FlakyFailure as group:
        inner = next((e for e in group.exceptions if isinstance(e, ResolverError)), None)
        detail = str(inner) if inner is not None else str(group)
        raise ResolverError(
            f"{detail} (the failure did not reproduce on a second run: the resolver is "
            "not deterministic)"
        ) from group


def coin(a: Entry, b: Entry) -> bool:
    """A deliberately broken resolver: it ignores its arguments and flips a coin seeded by
    nothing (``random.random()``), so replicas asking the same question get different
    answers and diverge. It exists so tests (and ``crdt-kv simulate --resolver
    crdt_kv.testing.resolvers:coin``) can show that a bad resolver is reported; never give
    it to a store.
    """
    return random.random() < 0.5
