"""crdt_kv.testing: check_resolver must reject every kind of resolver that lets replicas
diverge, with a counterexample, and accept consistent ones (including "always tie"); the
ManualClock must move only as told (or tick as configured) and stay cheap to import."""

from __future__ import annotations

import itertools
import os
import pathlib
import random
import subprocess
import sys
from collections.abc import Callable

import pytest

import crdt_kv
import crdt_kv.testing
import crdt_kv.testing.resolvers
from crdt_kv import Entry, ResolverError
from crdt_kv.hlc import unpack
from crdt_kv.testing import DEFAULT_START_MS, ManualClock, check_resolver

T0 = 1_700_000_000_000

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


# --- ManualClock -------------------------------------------------------------------------


def test_manual_clock_stands_still_until_moved() -> None:
    clock = ManualClock()
    assert clock() == clock() == clock.now == DEFAULT_START_MS
    assert clock.advance() == DEFAULT_START_MS + 1  # one ms by default
    assert clock.advance(-10) == DEFAULT_START_MS - 9  # the wall clock may step back
    clock.set(5_000)
    assert clock() == 5_000
    clock.now = 7_000  # the attribute is the reading
    assert clock() == 7_000
    assert clock.now_s == 7.0
    assert isinstance(clock.now_s, float)


def test_manual_clock_auto_tick_moves_on_each_reading_only() -> None:
    clock = ManualClock(1_000, tick_ms=2)
    assert [clock(), clock(), clock()] == [1_000, 1_002, 1_004]
    assert clock.now == 1_006 and clock.now_s == 1.006  # peeking does not tick
    assert clock.now == 1_006
    clock.advance(10)
    assert clock() == 1_016
    assert repr(clock) == "ManualClock(1018, tick_ms=2)"


@pytest.mark.parametrize("bad", [1.5, True, "1", None])
def test_manual_clock_refuses_non_integer_milliseconds(bad: object) -> None:
    with pytest.raises(TypeError, match="int"):
        ManualClock(bad)  # type: ignore[arg-type]
    clock = ManualClock()
    with pytest.raises(TypeError, match="int"):
        clock.advance(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        clock.set(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tick_ms"):
        ManualClock(tick_ms=-1)


def test_manual_clock_drives_a_store_exactly() -> None:
    clock = ManualClock(T0)
    with crdt_kv.open(backend="memory", peer_id="p", clock=clock) as db:
        first = db.put("k", 1)
        clock.advance(5)
        second = db.put("k", 2)
    assert unpack(first.hlc) == (T0, 0)
    assert unpack(second.hlc) == (T0 + 5, 0)


def test_shared_auto_tick_clock_orders_writes_of_two_stores() -> None:
    """Auto-tick shared by two stores: each write sees a later wall time, so the later
    write wins everywhere without the test moving the clock."""
    clock = ManualClock(T0, tick_ms=1)
    with (
        crdt_kv.open(backend="memory", peer_id="z", clock=clock) as a,
        crdt_kv.open(backend="memory", peer_id="a", clock=clock) as b,
    ):
        va = a.put("k", "from z")
        vb = b.put("k", "from a")
    assert vb > va and unpack(vb.hlc)[0] > unpack(va.hlc)[0]


def test_importing_the_clock_does_not_import_hypothesis() -> None:
    code = (
        "import sys\n"
        "from crdt_kv.testing import ManualClock\n"
        "assert 'hypothesis' not in sys.modules, 'the clock must be cheap to import'\n"
        "from crdt_kv.testing import check_resolver\n"
        "assert 'hypothesis' in sys.modules and callable(check_resolver)\n"
    )
    env = dict(os.environ)
    src = str(pathlib.Path(crdt_kv.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert set(crdt_kv.testing.__all__) <= set(dir(crdt_kv.testing))
    assert crdt_kv.testing.entries is crdt_kv.testing.resolvers.entries
