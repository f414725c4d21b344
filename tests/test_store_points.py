"""``Store.get`` (``crdt_kv/store/points.py``) takes shortcuts (issue 13): the utf-8 key
encoding and the record's decoding inlined, and, with the speedups built, a compiled
``get`` on the instance (``accel.bind_get``); each must give what the store's encoder and
decoder give, errors included. Run on both paths (``CRDT_KV_PURE_PYTHON=1``)."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from types import MethodType
from typing import Any

import cbor2
import pytest

from crdt_kv import Store, accel
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import DATA, record_body
from crdt_kv.store.points import PointReads

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
    [
        ({}, True),
        ({"conflicts": "siblings"}, False),
        ({"value_encoding": "json"}, False),
        ({"key_encoding": "binary"}, False),
    ],
    ids=["lww-cbor", "siblings", "json", "binary-keys"],
)
def test_get_is_compiled_where_it_applies(
    store_factory: Factory, options: dict[str, Any], compiled: bool
) -> None:
    """An lww store with utf-8 keys and cbor values gets the compiled ``get`` when the
    speedups are built; a siblings store (no format-1 records) and other encodings keep
    the method."""
    s: Store = store_factory("rocksdb", **options)
    if compiled and accel.COMPILED is not None:
        assert type(s.get).__name__ == "Getter"
        assert inspect.signature(s.get) == inspect.signature(MethodType(PointReads.get, s))
    else:
        assert s.get.__func__ is PointReads.get  # type: ignore[attr-defined]


class _Sub(Store):
    def get(self, key: Any, default: Any = None) -> Any:
        return ("sub", super().get(key, default))


def test_a_subclass_that_overrides_get_keeps_its_get(store_factory: Factory) -> None:
    s: Store = store_factory("memory")
    sub = _Sub(s.backend, clock=lambda: 1, rng=random.Random(1))
    sub.put("k", 1)
    assert sub.get("k") == ("sub", 1) and sub["k"] == ("sub", 1)


def _outcome(get: Any, *args: Any, **kw: Any) -> tuple[str, str]:
    try:
        got = get(*args, **kw)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return type(got).__name__, repr(got)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_the_compiled_get_is_the_method(store_factory: Factory, backend: str) -> None:
    """Whatever the call (keys of any kind, defaults by position or name, wrong
    arguments, damaged records, a closed store), the store's ``get`` gives what the method
    gives (on the pure path it is the method)."""
    s: Store = store_factory(backend)
    method = MethodType(PointReads.get, s)
    for i, v in enumerate(VALUES):
        s.put(f"k{i}", v)
    s.put("é", [1])
    s.delete("k0")
    bad = record_body(5, b"p", False, b"\x01\x02") + bytes(8)
    s.backend.write([(DATA + b"bad", bad), (DATA + b"sib", b"\x02\x00"), (DATA + b"e", b"")])
    keys: list[Any] = [f"k{i}" for i in range(len(VALUES))]
    keys += ["é", "nope", "bad", "sib", "e", "\udc80", "x" * 20_000, b"k1", 1, None]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for k in keys:
        calls += [((k,), {}), ((k, 7), {}), ((k,), {"default": 7})]
    calls += [((), {}), (("k1", 1, 2), {}), (("k1",), {"dflt": 1}), ((), {"key": "k1"})]
    calls += [(("k1",), {"default": 1, "key": 2})]
    for args, kw in calls:
        assert _outcome(s.get, *args, **kw) == _outcome(method, *args, **kw), (args, kw)
    s.close()
    for args, kw in calls[:6]:
        assert _outcome(s.get, *args, **kw) == _outcome(method, *args, **kw)
        assert _outcome(s.get, *args, **kw)[0] == "ClosedError"
