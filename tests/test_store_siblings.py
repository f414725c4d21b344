"""The ``siblings`` conflict mode through the public store API, revisions and the
pre-update hook (both modes)."""

from __future__ import annotations

import pathlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crdt_kv
from crdt_kv.errors import ConfigError, EncodingError
from crdt_kv.protocol.messages import Batch, decode_message, encode_message
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from crdt_kv.version import Entry, RawEntry


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _open(peer: str, clock: ManualClock, **kw: Any) -> Store:
    kw.setdefault("conflicts", "siblings")
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock, rng=random.Random(peer), **kw)


@pytest.fixture
def ab(clock: ManualClock) -> Iterator[tuple[Store, Store]]:
    a, b = _open("a", clock), _open("b", clock)
    yield a, b
    a.close()
    b.close()


def _sync(*stores: Store) -> None:
    for s in stores:
        for t in stores:
            if s is not t:
                t.apply(s.changes())


def test_the_issue_example(ab: tuple[Store, Store]) -> None:
    a, b = ab
    a.put("cart", ["milk"])
    b.put("cart", ["eggs"])
    b.apply(a.changes())
    a.apply(b.changes())
    got = [e.value for e in a.get_all("cart")]
    assert sorted(got) == [["eggs"], ["milk"]]
    assert got == [e.value for e in b.get_all("cart")]
    assert a.get("cart") == got[0]
    assert a.digest() == b.digest()
    assert [(k, len(s)) for k, s in a.conflicts(gte="cart", lt="carts")] == [("cart", 2)]
    assert list(a.conflicts(gte="cart", lt="cars")) == []  # "cars" sorts before "cart"
    v = a.merge("cart", a.get_all("cart"), ["milk", "eggs"])
    assert v.peer == "a"
    b.apply(a.changes())
    assert [e.value for e in b.get_all("cart")] == [["milk", "eggs"]]
    assert list(b.conflicts()) == []
    assert a.digest() == b.digest()


def test_merge_keeps_a_sibling_that_arrived_after_the_read(clock: ManualClock) -> None:
    a, b, c = _open("a", clock), _open("b", clock), _open("c", clock)
    a.put("k", 1)
    b.put("k", 2)
    a.apply(b.changes())
    read = a.get_all("k")
    c.put("k", 3)
    a.apply(c.changes())
    a.merge("k", read, 12)
    assert sorted(e.value for e in a.get_all("k")) == [3, 12]
    _sync(a, b, c)
    assert {s.digest() for s in (a, b, c)} == {a.digest()}
    assert sorted(e.value for e in c.get_all("k")) == [3, 12]


def test_merge_of_a_subset_leaves_the_rest(ab: tuple[Store, Store]) -> None:
    a, b = ab
    a.put("k", 1)
    b.put("k", 2)
    _sync(a, b)
    one = [e for e in a.get_all("k") if e.value == 1]
    a.merge("k", one, 10)
    assert sorted(e.value for e in a.get_all("k")) == [2, 10]


def test_delete_concurrent_with_put_loses_and_get_all_is_empty_after_delete(
    ab: tuple[Store, Store],
) -> None:
    a, b = ab
    a.put("k", "x")
    _sync(a, b)
    a.delete("k")
    b.put("k", "y")
    _sync(a, b)
    assert [e.value for e in a.get_all("k")] == ["y"] == [e.value for e in b.get_all("k")]
    assert a.get("k") == "y" and "k" in a and len(a) == 1
    a.delete("k")
    _sync(a, b)
    assert b.get_all("k") == [] and b.get("k") is None and "k" not in b and len(b) == 0
    assert b.get_all("never") == []
    tomb = b.entry("k")
    assert tomb is not None and tomb.deleted


def test_sequential_writes_keep_one_version_and_no_context(ab: tuple[Store, Store]) -> None:
    a, b = ab
    for i in range(50):
        (a if i % 2 else b).put("k", i)
        _sync(a, b)
    assert [e.value for e in a.get_all("k")] == [49]
    (r,) = a.raw_changes()
    assert r.others == () and len(r.context) <= 1


def test_metadata_grows_with_writers_of_the_key_not_with_writes(clock: ManualClock) -> None:
    stores = [_open(p, clock) for p in "abcd"]
    for rnd in range(30):
        for s in stores[:3]:
            s.put("k", rnd)
        _sync(*stores)
    for s in stores:
        (r,) = s.raw_changes()
        assert len(r.others) <= 2 and len(r.context) <= 3
        assert len({r.peer, *(o.peer for o in r.others), *(p for p, _ in r.context)}) <= 3


def test_order_is_the_same_everywhere_and_get_returns_the_first(clock: ManualClock) -> None:
    stores = [_open(p, clock) for p in "abc"]
    for i, s in enumerate(stores):
        s.put("k", i)  # same wall clock: equal stamps, ordered by peer id
    _sync(*stores)
    orders = {tuple((e.peer, e.value) for e in s.get_all("k")) for s in stores}
    assert orders == {(("c", 2), ("b", 1), ("a", 0))}
    assert {s.get("k") for s in stores} == {2}


def test_lww_mode_get_all_merge_conflicts(clock: ManualClock) -> None:
    s = _open("a", clock, conflicts="lww")
    assert s.conflict_mode == "lww"
    assert s.get_all("k") == []
    v = s.put("k", 1)
    (e,) = s.get_all("k")
    assert (e.value, e.version) == (1, v)
    s.merge("k", [e], 2)
    assert s.get("k") == 2 and list(s.conflicts()) == []
    s.delete("k")
    assert s.get_all("k") == []
    with pytest.raises(TypeError, match="merge of key 'k'"):
        s.merge("k", ["nope"], 3)  # type: ignore[list-item]


def test_an_lww_store_refuses_sibling_states(ab: tuple[Store, Store], clock: ManualClock) -> None:
    a, b = ab
    a.put("k", 1)
    b.put("k", 2)
    _sync(a, b)
    lww = _open("z", clock, conflicts="lww")
    with pytest.raises(EncodingError, match="conflict mode is 'lww'"):
        lww.apply(a.changes())
    assert lww.stats["apply_rejected"] == 1 and lww.last_seq == 0


def test_malformed_states_are_refused_whole(ab: tuple[Store, Store]) -> None:
    a, _ = ab
    good = RawEntry(b"k", b"\x01", 5, "b", False)
    bad = [
        RawEntry(b"k", b"\x01", 5, "a", False, 0, (("b", 3), ("a", 1))),  # unsorted context
        RawEntry(b"k", b"\x01", 5, "a", False, 0, (), (good, good)),  # one dot twice
        RawEntry(b"k", b"\x01", 5, "a", False, 0, (("", 3),)),  # empty peer id
        RawEntry(b"k", b"\x01", 5, "a", False, 0, (), (RawEntry(b"x", b"\x01", 6, "b", False),)),
        RawEntry(b"k", b"\x01", 5, "a", False, 0, (), (RawEntry(b"k", b"\xff", 6, "b", False),)),
    ]
    for r in bad:
        with pytest.raises(EncodingError, match="key b'k'"):
            a.apply_raw([RawEntry(b"ok", b"\x01", 1, "b", False), r])
    assert a.last_seq == 0 and a.stats["apply_rejected"] == len(bad)


def test_mode_is_fixed_at_creation(tmp_path: pathlib.Path, clock: ManualClock) -> None:
    for backend in ("rocksdb", "sqlite"):
        path = str(tmp_path / backend)
        with crdt_kv.open(path, backend=backend, conflicts="siblings", clock=clock) as s:
            s.put("k", 1)
            other = _open("o", clock)
            other.put("k", 2)
            s.apply(other.changes())
            digest = s.digest()
        with pytest.raises(ConfigError, match=r"conflicts='siblings'.*conflicts='lww'"):
            crdt_kv.open(path, backend=backend, conflicts="lww")
        with crdt_kv.open(
            path, backend=backend, config={"storage": {"conflicts": "siblings"}}
        ) as s:
            assert s.conflict_mode == "siblings" and s.digest() == digest
            assert sorted(e.value for e in s.get_all("k")) == [1, 2]
    with pytest.raises(ConfigError, match="conflicts must be"):
        crdt_kv.open(backend="memory", conflicts="mvr")


# --- revisions --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lww", "siblings"])
def test_history_keeps_every_superseded_version(clock: ManualClock, mode: str) -> None:
    a = _open("a", clock, conflicts=mode, keep_history=True)
    b = _open("b", clock, conflicts=mode)
    versions = [a.put("k", i) for i in range(3)]
    clock.advance(1)
    versions.append(b.put("k", "remote"))  # concurrent, and newer: held in both modes
    a.apply(b.changes())
    a.delete("k")
    hist = a.history("k")
    expected = [(v.hlc, v.peer) for v in versions]
    assert [(e.hlc, e.peer) for e in hist] == sorted(expected, reverse=True)
    assert hist[-1].value == 0 and len(a.history("k", limit=2)) == 2
    assert a.history("other") == []
    assert b.history("k") == []  # local only: nothing replicates
    b.apply(a.changes())
    assert b.history("k") == []


def test_revisions_stream_a_key_range_in_order(clock: ManualClock) -> None:
    s = _open("a", clock, conflicts="lww", keep_history=True, key_encoding="binary")
    keys = [b"a", b"a\x00", b"a\x00b", b"a\x01", b"b", b"\x00"]
    for k in keys:
        s.put(k, 1)
        s.put(k, 2)
        s.put(k, 3)
    got = [(k, e.value) for k, e in s.revisions()]
    assert got == [(k, v) for k in sorted(keys) for v in (1, 2)]
    assert [k for k, _ in s.revisions(gte=b"a\x00", lt=b"a\x01")] == [b"a\x00"] * 2 + [
        b"a\x00b"
    ] * 2
    assert [k for k, _ in s.revisions(gt=b"a", lte=b"a\x00b")] == [b"a\x00"] * 2 + [b"a\x00b"] * 2
    assert [(k, e.value) for k, e in s.revisions(reverse=True, limit=3)] == [
        (b"b", 2),
        (b"b", 1),
        (b"a\x01", 2),
    ]
    assert [e.value for e in s.history(b"a\x00")] == [2, 1]
    with pytest.raises(ValueError, match="at most one"):
        list(s.revisions(gt=b"a", gte=b"a"))


def test_history_off_by_default(clock: ManualClock) -> None:
    s = _open("a", clock)
    s.put("k", 1)
    s.put("k", 2)
    assert s.history("k") == [] and list(s.revisions()) == []


# --- the pre-update hook ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lww", "siblings"])
def test_before_write_may_refuse_local_writes(clock: ManualClock, mode: str) -> None:
    s = _open("a", clock, conflicts=mode)
    seen: list[list[Entry]] = []

    def guard(entries: list[Entry]) -> None:
        seen.append(entries)
        if any(e.value == "bad" for e in entries):
            raise PermissionError("no bad values")

    unsubscribe = s.before_write(guard)
    s.put("k", "good")
    before = (s.digest(), s.last_seq, s.get("k"))
    with pytest.raises(PermissionError):
        s.put("k", "bad")
    with pytest.raises(PermissionError), s.batch() as b:
        b.put("x", 1)
        b.put("y", "bad")
    with pytest.raises(PermissionError):
        s.merge("k", s.get_all("k"), "bad")
    assert (s.digest(), s.last_seq, s.get("k")) == before and s.get("x") is None
    s.delete("k")
    assert seen[-1][0].deleted and seen[-1][0].key == "k" and seen[-1][0].peer == "a"
    other = _open("b", clock, conflicts=mode)
    other.put("z", "bad")
    n = len(seen)
    assert s.apply(other.changes()) == 1  # remote entries are never refused
    assert len(seen) == n
    unsubscribe()
    s.put("k", "bad")
    assert s.get("k") == "bad"


# --- the wire form of states ------------------------------------------------------------

_peers = st.sampled_from(["a", "b", "peer-c"])
_stamps = st.integers(0, (1 << 64) - 1)
_versions = st.builds(
    lambda v, h, p: RawEntry(b"k", v or b"", h, p, v is None),
    st.one_of(st.none(), st.binary(max_size=8)),
    _stamps,
    _peers,
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            _versions,
            st.lists(_versions, max_size=3),
            st.dictionaries(_peers, _stamps, max_size=3),
        ),
        max_size=4,
    )
)
def test_batches_of_states_round_trip(rows: list[Any]) -> None:
    entries = tuple(
        RawEntry(
            b"k",
            h.value,
            h.hlc,
            h.peer,
            h.deleted,
            0,
            tuple(sorted(ctx.items())),
            tuple(o),
        )
        for h, o, ctx in rows
    )
    msg = Batch(0, len(entries), True, entries)
    assert decode_message(encode_message(msg)) == msg


def test_merge_refuses_versions_of_another_key(ab: tuple[Store, Store]) -> None:
    a, _ = ab
    a.put("x", 1)
    a.put("k", 1)
    with pytest.raises(ValueError, match="version of key 'x'"):
        a.merge("k", a.get_all("x"), 2)
    assert a.get("k") == 1


def test_corrupt_siblings_records_raise_corruption_error(ab: tuple[Store, Store]) -> None:
    from crdt_kv.errors import CorruptionError
    from crdt_kv.layout import DATA

    a, b = ab
    a.put("k", 1)
    b.put("k", 2)
    a.apply(b.changes())
    good = a.backend.get(DATA + b"k")
    assert good is not None
    for blob in (good[:-9], good[:12] + good[13:], good[:-8] + b"\x00" + good[-8:]):
        a.backend.write([(DATA + b"k", blob)])
        with pytest.raises(CorruptionError, match=r"key b'k'|key 'k'"):
            a.get_all("k")
        with pytest.raises(CorruptionError):
            a.put("k", 3)
