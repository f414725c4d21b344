"""A cheap, seeded screen of a conflict resolver (part of :mod:`crdt_kv.testing`).

Why it exists next to :func:`~crdt_kv.testing.check_resolver`: that one searches the
whole resolver contract with hypothesis (hundreds of examples, shrinking; about a second,
and importing hypothesis costs most of another), which suits a resolver's own test suite
but not a check before every simulated run. :func:`screen_resolver` asks the questions a
replicated store asks, tied writes of one key by different peers, with values of the
shapes the simulator writes, drawn from a generator seeded by the caller (the simulator
passes the run's seed, so a run and its screen replay together). It asks every question
several times and the first one 64 times: a resolver that flips a coin answers 64
identical questions alike with probability 2**-63. It needs no hypothesis, so the
simulator can import it, and it takes a few milliseconds.

The helpers (:func:`ask`, :func:`violation`, :func:`find_cycle`, ...) are shared with
:mod:`crdt_kv.testing.resolvers`, so both report a broken resolver the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

import cbor2

from crdt_kv.errors import ResolverError
from crdt_kv.version import Entry, RawEntry, Resolver, supersedes

__all__ = [
    "DEFAULT_PEERS",
    "ask",
    "checked",
    "find_cycle",
    "replica_copy",
    "same_question",
    "screen_resolver",
    "to_raw",
    "violation",
]

DEFAULT_PEERS = ("n00", "n01", "n02", "n03", "a", "peer-1", "z")
"""Peers of the screened writes when the caller names none."""
SMALL_VALUES = (0, 1, 2)
"""The value domain of the ``ties`` scenario: equal values from different peers."""


# --- shared with check_resolver ----------------------------------------------------------


def to_raw(e: Entry) -> RawEntry:
    """The wire form of ``e``, as :func:`~crdt_kv.version.supersedes` compares it."""
    value = b"" if e.deleted else (e.raw if e.raw is not None else cbor2.dumps(e.value))
    return RawEntry(b"", value, e.hlc, e.peer, e.deleted, e.seq)


def same_question(a: Entry, b: Entry) -> bool:
    """True when the store would never ask about this pair (identical candidates)."""
    ra, rb = to_raw(a), to_raw(b)
    return (ra.peer, ra.deleted, ra.value) == (rb.peer, rb.deleted, rb.value)


def violation(what: str, *pairs: tuple[str, object]) -> ResolverError:
    """The error for a contract violation: ``resolver <what>; counterexample: ...``."""
    shown = "; ".join(f"{name}={value!r}" for name, value in pairs)
    return ResolverError(f"resolver {what}; counterexample: {shown}")


def ask(fn: Resolver, a: Entry, b: Entry) -> bool:
    """``fn(a, b)``, or :class:`ResolverError` if it raises or does not return a bool."""
    try:
        result: object = fn(a, b)
    except Exception as exc:
        raise violation(f"raised {type(exc).__name__}: {exc}", ("a", a), ("b", b)) from exc
    if not isinstance(result, bool):
        raise violation(
            f"returned {result!r} (a {type(result).__name__}), not a bool", ("a", a), ("b", b)
        )
    return result


def checked(fn: Resolver) -> Callable[[Entry, Entry], bool]:
    """``fn`` wrapped by :func:`ask` (for :func:`~crdt_kv.version.supersedes`)."""

    def call(a: Entry, b: Entry) -> bool:
        return ask(fn, a, b)

    return call


def replica_copy(e: Entry, seq: int) -> Entry:
    """An equal-but-distinct copy: new objects, and another replica's local ``seq``."""
    return dataclasses.replace(e, value=copy.deepcopy(e.value), seq=seq)


def find_cycle(fn: Resolver, group: Sequence[Entry]) -> ResolverError | None:
    """The error for three entries of ``group`` on which the store's order (``supersedes``
    with ``fn``) is not transitive, or None. ``group`` must hold distinct candidates."""
    raws = [to_raw(e) for e in group]
    by_raw = {id(r): e for r, e in zip(raws, group, strict=True)}
    resolver = checked(fn)
    n = len(group)
    wins = [
        [
            i != j and supersedes(raws[i], raws[j], resolver, lambda r: by_raw[id(r)])
            for j in range(n)
        ]
        for i in range(n)
    ]
    for i, j, k in itertools.permutations(range(n), 3):
        if wins[i][j] and wins[j][k] and not wins[i][k]:
            return violation(
                "does not induce a transitive order: x beats y and y beats z, but z beats x",
                ("x", group[i]),
                ("y", group[j]),
                ("z", group[k]),
            )
    return None


# --- the screen --------------------------------------------------------------------------


def _value(rng: random.Random, writer: int) -> Any:
    """A value of one of the shapes the simulator writes (``crdt_kv.sim.workload``, bursts)."""
    n = rng.randrange(1, 100_000)
    shape = rng.randrange(6)
    if shape == 0:
        return rng.choice(SMALL_VALUES)
    if shape == 1:
        return n
    if shape == 2:
        return f"v{writer}-{n}"
    if shape == 3:
        return [writer, n]
    if shape == 4:
        return {"w": writer, "n": n}
    return {"burst": writer, "n": rng.randrange(1, 3)}


def _write(key: str, hlc: int, peer: str, value: Any, seq: int) -> Entry:
    if value is None:
        return Entry(key, None, hlc, peer, True, seq, b"")
    return Entry(key, value, hlc, peer, False, seq, cbor2.dumps(value))


def _tied(rng: random.Random, peers: Sequence[str], k: int) -> list[Entry]:
    """``k`` writes of one key at one stamp by ``k`` different peers; about one in six is
    a tombstone."""
    key, hlc = rng.choice(("k0", "k1", "user:1")), rng.getrandbits(64)
    out = []
    for peer in rng.sample(list(peers), k):
        writer = peers.index(peer)
        value = None if rng.random() < 1 / 6 else _value(rng, writer)
        out.append(_write(key, hlc, peer, value, rng.randrange(1, 100_000)))
    return out


def _canonical(a: Entry, b: Entry) -> tuple[Entry, Entry]:
    """``(a, b)`` in the order the store asks: sorted by ``(peer, deleted, value bytes)``."""
    ra, rb = to_raw(a), to_raw(b)
    return (a, b) if (ra.peer, ra.deleted, ra.value) < (rb.peer, rb.deleted, rb.value) else (b, a)


def _same_answers(fn: Resolver, a: Entry, b: Entry, times: int) -> bool:
    answers = [ask(fn, a, b) for _ in range(times)]
    if len(set(answers)) > 1:
        yes = sum(answers)
        raise violation(
            f"is not deterministic: the same question asked {times} times got True {yes} "
            f"times and False {times - yes} times",
            ("a", a),
            ("b", b),
        )
    return answers[0]


def screen_resolver(
    fn: Resolver,
    *,
    seed: int = 0,
    peers: Sequence[str] = DEFAULT_PEERS,
    pairs: int = 24,
    repeats: int = 8,
    first_repeats: int = 64,
    triples: int = 16,
) -> None:
    """Screen a conflict resolver; raise :class:`ResolverError` on the first violation.

    Every question is about tied writes of one key by different ``peers`` (the only ties a
    store sees outside power loss). Checked, in this order:

    - it returns a ``bool`` and does not raise (tombstones, whose value is None, included);
    - determinism: each of ``pairs`` pairs is asked ``repeats`` times in canonical order
      (the first pair ``first_repeats`` times) and ``repeats`` times reversed, and once
      more with equal-but-distinct copies (another ``seq``); every answer must agree;
    - antisymmetry: ``fn(a, b)`` and ``fn(b, a)`` are never both True;
    - transitivity of the order the store derives from it, on ``triples`` random triples
      and on every assignment of a small value or a tombstone to three peers (which is
      where rock-paper-scissors orders show).

    Everything is drawn from a generator seeded by ``seed`` alone: the same resolver,
    seed and peers always get the same questions. With fewer than two peers there is
    nothing to ask; with fewer than three, no transitivity check.
    """
    if not callable(fn):
        raise TypeError(f"resolver must be callable, not {type(fn).__name__}")
    peers = list(dict.fromkeys(peers))
    if len(peers) < 2:
        return
    rng = random.Random(f"crdt_kv.testing.screen:{seed}")
    for n in range(pairs):
        a, b = _canonical(*_tied(rng, peers, 2))
        forward = _same_answers(fn, a, b, first_repeats if n == 0 else repeats)
        backward = _same_answers(fn, b, a, repeats)
        ca, cb = replica_copy(a, rng.randrange(1, 100_000)), replica_copy(b, 0)
        if ask(fn, ca, cb) != forward:
            raise violation(
                "answers differently for equal copies of its arguments",
                ("a", a),
                ("b", b),
                ("copy of a", ca),
                ("copy of b", cb),
            )
        if forward and backward:
            raise violation("is not antisymmetric: both a and b win", ("a", a), ("b", b))
    if len(peers) < 3:
        return
    groups = [_tied(rng, peers, 3) for _ in range(triples)]
    trio = rng.sample(peers, 3)
    key, hlc = "k0", rng.getrandbits(64)
    choices: list[Any] = [*SMALL_VALUES, None]
    for values in itertools.product(choices, repeat=3):
        groups.append([_write(key, hlc, p, v, 0) for p, v in zip(trio, values, strict=True)])
    for group in groups:
        cycle = find_cycle(fn, group)
        if cycle is not None:
            raise cycle
