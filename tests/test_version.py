"""Versions, entries and the last-writer-wins merge order (``supersedes``)."""

from __future__ import annotations

import itertools

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt_kv import Entry, RawEntry, Version
from crdt_kv.version import supersedes

HLCS = st.integers(min_value=0, max_value=5)  # few values: equal stamps are common
PEERS = st.sampled_from(["a", "b", "c"])


@st.composite
def raw_entries(draw: st.DrawFn) -> RawEntry:
    deleted = draw(st.booleans())
    value = b"" if deleted else cbor2.dumps(draw(st.integers(min_value=0, max_value=3)))
    return RawEntry(b"k", value, draw(HLCS), draw(PEERS), deleted)


def to_entry(r: RawEntry) -> Entry:
    value = None if r.deleted else cbor2.loads(r.value)
    return Entry(r.key.decode(), value, r.hlc, r.peer, r.deleted, r.seq, r.value)


def by_value(a: Entry, b: Entry) -> bool:
    """A valid resolver: live beats deleted, then the larger value; ties left to the store."""
    return (not a.deleted, a.value or 0) > (not b.deleted, b.value or 0)


RESOLVERS = st.sampled_from([None, by_value])


def identical(a: RawEntry, b: RawEntry) -> bool:
    return (a.hlc, a.peer, a.deleted, a.value) == (b.hlc, b.peer, b.deleted, b.value)


def test_version_orders_by_hlc_then_peer() -> None:
    assert Version(1, "z") < Version(2, "a")
    assert Version(2, "a") < Version(2, "b")
    assert Version(2, "b") == Version(2, "b")
    assert sorted([Version(2, "b"), Version(1, "z"), Version(2, "a")]) == [
        Version(1, "z"),
        Version(2, "a"),
        Version(2, "b"),
    ]
    v = Version(7, "p")
    assert (v.hlc, v.peer) == (7, "p")
    with pytest.raises(AttributeError):
        v.hlc = 8  # type: ignore[misc]


def test_entry_fields_and_version() -> None:
    e = Entry("k", {"x": 1}, 42, "p", False, 3, b"raw")
    assert (e.key, e.value, e.hlc, e.peer, e.deleted, e.seq) == ("k", {"x": 1}, 42, "p", False, 3)
    assert e.version == Version(42, "p")
    assert Entry("k", 1, 1, "p", raw=b"x") == Entry("k", 1, 1, "p", raw=b"y")  # raw not compared
    assert "raw" not in repr(e)


def test_higher_hlc_wins_regardless_of_peer_and_resolver() -> None:
    old = RawEntry(b"k", b"\x01", 10, "z", False)
    new = RawEntry(b"k", b"", 11, "a", True)
    for resolver in (None, lambda a, b: True, lambda a, b: False):
        assert supersedes(new, old, resolver, to_entry)
        assert not supersedes(old, new, resolver, to_entry)


def test_equal_hlc_without_resolver_higher_peer_wins() -> None:
    a = RawEntry(b"k", b"\x05", 10, "a", False)
    b = RawEntry(b"k", b"\x01", 10, "b", False)
    assert supersedes(b, a)
    assert not supersedes(a, b)


def test_same_peer_same_stamp_breaks_ties_by_deleted_then_value() -> None:
    live_small = RawEntry(b"k", b"\x01", 10, "a", False)
    live_big = RawEntry(b"k", b"\x02", 10, "a", False)
    tomb = RawEntry(b"k", b"", 10, "a", True)
    assert supersedes(live_big, live_small) and not supersedes(live_small, live_big)
    assert supersedes(tomb, live_big) and not supersedes(live_big, tomb)


def test_identical_entries_never_supersede() -> None:
    a = RawEntry(b"k", b"\x01", 10, "a", False, seq=1)
    b = RawEntry(b"k", b"\x01", 10, "a", False, seq=99)

    def explode(x: Entry, y: Entry) -> bool:
        raise AssertionError("resolver must not be asked about identical candidates")

    assert not supersedes(a, b)
    assert not supersedes(a, b, explode, to_entry)


def test_resolver_is_asked_in_canonical_order() -> None:
    x = RawEntry(b"k", b"\x01", 10, "a", False)
    y = RawEntry(b"k", b"\x02", 10, "b", False)
    asked: list[tuple[str, str]] = []

    def first_wins(a: Entry, b: Entry) -> bool:
        asked.append((a.peer, b.peer))
        return True

    assert supersedes(x, y, first_wins, to_entry)  # x is canonically first: it wins
    assert not supersedes(y, x, first_wins, to_entry)
    assert asked == [("a", "b"), ("a", "b")]


def test_resolver_overrides_peer_order() -> None:
    low_peer_big = RawEntry(b"k", cbor2.dumps(9), 10, "a", False)
    high_peer_small = RawEntry(b"k", cbor2.dumps(1), 10, "b", False)
    assert supersedes(high_peer_small, low_peer_big)  # default: peer b wins
    assert supersedes(low_peer_big, high_peer_small, by_value, to_entry)
    assert not supersedes(high_peer_small, low_peer_big, by_value, to_entry)


def test_resolver_requires_to_entry() -> None:
    a = RawEntry(b"k", b"\x01", 10, "a", False)
    b = RawEntry(b"k", b"\x01", 10, "b", False)
    with pytest.raises(TypeError, match="to_entry"):
        supersedes(a, b, by_value)


@given(a=raw_entries(), b=raw_entries(), resolver=RESOLVERS)
def test_exactly_one_of_two_different_entries_wins(
    a: RawEntry, b: RawEntry, resolver: object
) -> None:
    ab = supersedes(a, b, resolver, to_entry)  # type: ignore[arg-type]
    ba = supersedes(b, a, resolver, to_entry)  # type: ignore[arg-type]
    if identical(a, b):
        assert not ab and not ba
    else:
        assert ab != ba, (a, b)


@given(trio=st.lists(raw_entries(), min_size=3, max_size=3), resolver=RESOLVERS)
def test_merge_order_is_transitive(trio: list[RawEntry], resolver: object) -> None:
    def beats(x: RawEntry, y: RawEntry) -> bool:
        return supersedes(x, y, resolver, to_entry)  # type: ignore[arg-type]

    for x, y, z in itertools.permutations(trio):
        if beats(x, y) and beats(y, z):
            assert beats(x, z), (x, y, z)


@given(entries=st.lists(raw_entries(), min_size=1, max_size=6), resolver=RESOLVERS)
def test_folding_in_any_order_picks_the_same_winner(
    entries: list[RawEntry], resolver: object
) -> None:
    def fold(seq: list[RawEntry]) -> RawEntry:
        win = seq[0]
        for e in seq[1:]:
            if supersedes(e, win, resolver, to_entry):  # type: ignore[arg-type]
                win = e
        return win

    winners = {fold(list(p)) for p in itertools.permutations(entries[:5])}
    assert len({(w.hlc, w.peer, w.deleted, w.value) for w in winners}) == 1
    top = max(e.hlc for e in entries[:5])
    assert all(w.hlc == top for w in winners)
