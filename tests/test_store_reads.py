"""Range reads (``crdt_kv/store/reads.py``): the flat scan loop (one compiled
``accel.scan_item`` call per record, or, on the pure path, slices of records of peer ids it
has seen parse) must yield and raise exactly what a full parse of every record would
(issue 13). Each test writes damaged records straight through the backend, after good
ones, so the damaged record meets a warm peer cache. Run on both paths
(``CRDT_KV_PURE_PYTHON=1``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from crdt_kv import Store, accel
from crdt_kv.errors import CorruptionError
from crdt_kv.layout import DATA, record_body
from crdt_kv.store import reads

Factory = Callable[..., Any]


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, store_factory: Factory) -> Store:
    s: Store = store_factory(request.param, peer_id="p")
    for i in range(40):
        s.put(f"k{i:02d}", {"n": i})
    return s


def _reads(s: Store) -> dict[str, Callable[[], object]]:
    return {
        "items": lambda: list(s.items()),
        "keys": lambda: list(s.keys()),
        "values": lambda: list(s.values()),
        "reverse": lambda: list(s.items(reverse=True)),
    }


def _record(peer: bytes, value: bytes, seq: int = 99) -> bytes:
    return record_body(5, peer, False, value) + seq.to_bytes(8, "big")


@pytest.mark.parametrize("read", ["items", "keys", "values", "reverse"])
@pytest.mark.parametrize(
    "blob",
    [
        _record(b"\xff\xfe", b"\x01"),  # a peer id that is not UTF-8, of a known length
        _record(b"", b"\x01"),  # an empty peer id
        _record(b"p", b"\x01")[:12],  # cut inside the seq
        bytes([1, 0]) + bytes(8) + bytes([200]) + b"p" * 20,  # peer id longer than the record
        b"\x01\x00",  # shorter than a record head
        b"\x09" + _record(b"p", b"\x01")[1:],  # an unknown format
    ],
    ids=["peer-not-utf8", "empty-peer", "no-seq", "peer-overruns", "short", "format-9"],
)
def test_a_damaged_record_among_good_ones_is_corruption(
    store: Store, read: str, blob: bytes
) -> None:
    store.backend.write([(DATA + b"k20", blob)])
    with pytest.raises(CorruptionError, match="k20"):
        _reads(store)[read]()


@pytest.mark.parametrize("read", ["items", "values", "reverse"])
def test_a_value_that_does_not_decode_is_corruption(store: Store, read: str) -> None:
    store.backend.write([(DATA + b"k20", _record(b"p", b"\x01\x02"))])
    with pytest.raises(CorruptionError, match="k20"):
        _reads(store)[read]()
    assert list(store.keys()) == [f"k{i:02d}" for i in range(40)]


def test_a_key_that_does_not_decode_is_corruption(store: Store) -> None:
    store.backend.write([(DATA + b"k\xff", _record(b"p", b"\x01"))])
    for read in ("items", "keys", "reverse"):
        with pytest.raises(CorruptionError, match="not valid utf-8"):
            _reads(store)[read]()
    assert len(list(store.values())) == 41


def test_a_record_of_another_valid_peer_is_read(store: Store) -> None:
    store.backend.write([(DATA + b"k20", _record("é".encode(), b"\x18\x2a"))])
    assert dict(store.items())["k20"] == 42


def test_scans_match_point_reads_across_bounds_limits_and_tombstones(
    store_factory: Factory, backend_name: str
) -> None:
    s: Store = store_factory(backend_name)
    rng = random.Random(7)
    for i in range(300):
        key = f"k{rng.randrange(200):03d}"
        if rng.random() < 0.3:
            s.delete(key)
        else:
            s.put(key, [i, "x" * rng.randrange(3)])
    live = {f"k{i:03d}": s.get(f"k{i:03d}") for i in range(200)}
    live = {k: v for k, v in live.items() if s.entry(k) is not None and not s.entry(k).deleted}
    order = sorted(live)
    for lo, hi in [(None, None), ("k050", "k150"), ("k150", "k050"), ("k100", "k100")]:
        want = [k for k in order if (lo is None or k >= lo) and (hi is None or k < hi)]
        for limit in (None, 0, 1, 9, 50):
            got = list(s.items(gte=lo, lt=hi, limit=limit))
            assert got == [(k, live[k]) for k in want][:limit]
            assert list(s.keys(gte=lo, lt=hi, limit=limit)) == want[:limit]
            assert list(s.values(gte=lo, lt=hi, limit=limit)) == [live[k] for k in want][:limit]
            back = list(s.keys(gte=lo, lt=hi, reverse=True, limit=limit))
            assert back == want[::-1][:limit]


@pytest.mark.parametrize(
    ("options", "compiled"),
    [
        ({}, True),
        ({"key_encoding": "binary"}, True),
        ({"conflicts": "siblings"}, False),
        ({"value_encoding": "json"}, False),
    ],
    ids=["lww-cbor", "binary-keys", "siblings", "json"],
)
def test_scans_take_the_compiled_path_where_it_applies(
    store_factory: Factory, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], compiled: bool
) -> None:
    """An lww store with cbor values decodes each scanned record in one compiled call
    when the speedups are built (keys only: whatever the value encoding); a siblings
    store never does; all read the same either way."""
    calls: list[bytes] = []
    real = reads.scan_item

    def spy(k: bytes, blob: bytes, what: int, utf8: bool) -> Any:
        calls.append(k)
        return real(k, blob, what, utf8)

    monkeypatch.setattr(reads, "scan_item", spy)
    s: Store = store_factory("rocksdb", **options)
    key: Any = b"k" if options.get("key_encoding") == "binary" else "k"
    s.put(key, [1])
    assert list(s.items()) == [(key, [1])] and list(s.values()) == [[1]]
    built = accel.COMPILED is not None
    assert len(calls) == (2 if compiled and built else 0)
    calls.clear()
    assert list(s.keys()) == [key]
    assert len(calls) == (1 if built and options.get("conflicts") != "siblings" else 0)
