"""``Store.get`` (``crdt_kv/store/points.py``) takes shortcuts (issue 13): the utf-8 key
encoding inlined, and ``accel.point_value`` / ``accel.lww_value`` (compiled, or their
references in ``crdt_kv/layout_reads.py``); each must give what the store's encoder and
decoder give, errors included. Run on both paths (``CRDT_KV_PURE_PYTHON=1``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2
import pytest

from crdt_kv import Store, accel
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import DATA, record_body
from crdt_kv.store import points

Factory = Callable[..., Any]

VALUES: list[Any] = [
    0,
    255,  # encodes with a 0xff byte: the re-encoding path
    -1,
    "é\uffff",
    b"\xff" * 3,
    [1, [2, [3]]],
    {"name": "Ada", "n": 65535},
    1.5,
    None,
    cbor2.CBORTag(4000, [1, 2]),
]


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_get_returns_what_was_put_and_default_for_tombstones(
    store_factory: Factory, backend: str
) -> None:
    s: Store = store_factory(backend)
    for i, v in enumerate(VALUES):
        s.put(f"k{i}", v)
    want = [cbor2.loads(cbor2.dumps(v)) for v in VALUES]  # a tag's content comes back frozen
    assert [s.get(f"k{i}") for i in range(len(VALUES))] == want
    s.delete("k0")
    assert s.get("k0", "gone") == "gone" and s.get("nope", 7) == 7
    with pytest.raises(KeyError):
        s["k0"]
    assert s["k1"] == 255


@pytest.mark.parametrize(
    "value",
    [b"\x01\x02", b"\x01\xff", b"\x9f\x01", b"\x9f\x01\xff\x02", b"", b"\xff", b"\x81"],
    ids=["trailing", "trailing-break", "open-array", "array-then-more", "empty", "break", "cut"],
)
def test_a_stored_value_that_is_not_one_cbor_item_is_corruption(
    store_factory: Factory, value: bytes
) -> None:
    s: Store = store_factory("memory")
    s.put("k", 1)
    s.backend.write([(DATA + b"k", record_body(5, b"p", False, value) + bytes(8))])
    with pytest.raises(CorruptionError, match="'k'"):
        s.get("k")


def test_keys_the_inlined_encoding_does_not_take(store_factory: Factory) -> None:
    s: Store = store_factory("memory")
    with pytest.raises(EncodingError, match="utf-8"):
        s.get("\udc80")  # a lone surrogate
    with pytest.raises(EncodingError, match="MAX_KEY_BYTES"):
        s.get("é" * 40_000)
    with pytest.raises(EncodingError):
        s.get(b"bytes")
    b: Store = store_factory("memory", key_encoding="binary", value_encoding="json")
    b.put(b"\x00k", {"a": [1]})
    assert b.get(b"\x00k") == {"a": [1]} and b.get(b"k") is None
    with pytest.raises(EncodingError):
        b.get("str")


@pytest.mark.parametrize(
    ("options", "compiled"),
    [({}, True), ({"conflicts": "siblings"}, False), ({"value_encoding": "json"}, False)],
    ids=["lww-cbor", "siblings", "json"],
)
def test_get_takes_the_compiled_path_where_it_applies(
    store_factory: Factory, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], compiled: bool
) -> None:
    """An lww store with utf-8 keys and cbor values reads a str key in one compiled call
    when the speedups are built; a siblings store (no format-1 records) and other
    encodings never call it; every store reads the same either way."""
    calls: list[object] = []
    real = points.point_value

    def spy(get: Any, key: object, default: Any) -> Any:
        calls.append(key)
        return real(get, key, default)

    monkeypatch.setattr(points, "point_value", spy)
    s: Store = store_factory("rocksdb", **options)
    s.put("k", {"a": [1]})
    assert s.get("k") == {"a": [1]} and s.get("nope", 3) == 3
    assert calls == (["k", "nope"] if compiled and accel.COMPILED is not None else [])
