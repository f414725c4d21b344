"""check_resolver must reject every kind of resolver that lets replicas diverge, with a
counterexample, and accept consistent ones (including "always tie")."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from crdt_kv import Entry, ResolverError
from crdt_kv.testing import check_resolver

Fn = Callable[[Entry, Entry], bool]


def _int(e: Entry) -> int:
    return e.value if type(e.value) is int else 0


def rock_paper_scissors(a: Entry, b: Entry) -> bool:
    return (_int(a) - _int(b)) % 3 == 1


def _stateful() -> Fn:
    calls = itertools.count()

    def fn(a: Entry, b: Entry) -> bool:
        return next(calls) % 2 == 0

    return fn


def _raises(a: Entry, b: Entry) -> bool:
    return bool(a.value["prio"] > b.value["prio"])


BROKEN: dict[str, tuple[Fn, str]] = {
    "always True": (lambda a, b: True, "antisymmetric"),
    "random": (lambda a, b: random.random() < 0.5, "deterministic|differently|antisymmetric"),
    "stateful": (_stateful(), "deterministic|differently|antisymmetric"),
    "uses replica-local seq": (lambda a, b: a.seq > b.seq, "differently for equal copies"),
    "raises on tombstones": (_raises, "raised"),
    "returns a non-bool": (lambda a, b: 1, "not a bool"),  # type: ignore[arg-type,return-value]
    "rock-paper-scissors": (rock_paper_scissors, "transitive"),
}

GOOD: dict[str, Fn] = {
    "always tie": lambda a, b: False,
    "string order of values": lambda a, b: str(a.value) > str(b.value),
    "tombstones first": lambda a, b: a.deleted and not b.deleted,
    "values first": lambda a, b: b.deleted and not a.deleted,
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_resolver_is_rejected_with_a_counterexample(name: str) -> None:
    fn, why = BROKEN[name]
    with pytest.raises(ResolverError, match=why) as info:
        check_resolver(fn)
    assert "counterexample" in str(info.value) or "not deterministic" in str(info.value)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_consistent_resolver_is_accepted(name: str) -> None:
    check_resolver(GOOD[name])


def test_non_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="callable"):
        check_resolver(42)  # type: ignore[arg-type]
