"""crdt_kv.layout_reads and its compiled twins (crdt_kv/_speedups_c/reads.c): the CBOR
item scanner, ``lww_value`` (Store.get's decoding), ``point_value`` (Store.get of a str
key) and ``scan_item`` (a range read's decoding) give the same results and the same errors
on both paths, for well-formed, damaged and arbitrary inputs (issue 13).

The comparisons need the extension; without it they skip and the pure path is checked
alone. ``CRDT_KV_PURE_PYTHON=1`` runs the store tests on the pure path.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys
import weakref
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_kv import accel, layout
from crdt_kv.codec import SHORT_KEY_CHARS, decode_cbor
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import DATA, record_body
from crdt_kv.layout_reads import (
    ITEMS,
    KEYS,
    READS_LAYOUT,
    SCAN_DEPTH,
    SKIP,
    UNHANDLED,
    VALUES,
)

C = accel.COMPILED
needs_c = pytest.mark.skipif(C is None, reason=f"speedups: {accel.DESCRIPTION}")
IMPLS = [accel.PURE] if C is None else [accel.PURE, C]
PURE = accel.PURE

# --- CBOR items, encoded by hand: any head width, indefinite lengths, tags -----------------


def head(major: int, n: int, width: int) -> bytes:
    """A head of ``major`` with argument ``n`` in the smallest form, or wider (``width``
    0-3 asks for 1, 2, 4 or 8 argument bytes when ``n`` fits)."""
    if n < 24 and width < 0:
        return bytes([major << 5 | n])
    size = max(1 << max(width, 0), 1 if n < 256 else 2 if n < 65536 else 4 if n < 1 << 32 else 8)
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[size]]) + n.to_bytes(size, "big")


widths = st.integers(min_value=-3, max_value=3)
atoms = st.one_of(
    st.builds(head, st.sampled_from([0, 1]), st.integers(0, (1 << 64) - 1), widths),
    st.builds(
        lambda m, b, w: head(m, len(b), w) + b,
        st.sampled_from([2, 3]),
        st.binary(max_size=12),
        widths,
    ),
    st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf0", b"\xf8\x20", b"\xf8\xff"]),
    st.builds(lambda b: b"\xf9" + b, st.binary(min_size=2, max_size=2)),
    st.builds(lambda b: b"\xfa" + b, st.binary(min_size=4, max_size=4)),
    st.builds(lambda b: b"\xfb" + b, st.binary(min_size=8, max_size=8)),
    st.builds(  # an indefinite string of definite chunks
        lambda m, chunks: (
            bytes([m << 5 | 31]) + b"".join(head(m, len(c), -1) + c for c in chunks) + b"\xff"
        ),
        st.sampled_from([2, 3]),
        st.lists(st.binary(max_size=5), max_size=3),
    ),
)


def _containers(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    items = st.lists(inner, max_size=4)
    return st.one_of(
        st.builds(lambda xs, w: head(4, len(xs), w) + b"".join(xs), items, widths),
        st.builds(lambda xs: b"\x9f" + b"".join(xs) + b"\xff", items),
        st.builds(
            lambda kv, w: head(5, len(kv), w) + b"".join(k + v for k, v in kv),
            st.lists(st.tuples(inner, inner), max_size=3),
            widths,
        ),
        st.builds(
            lambda kv: b"\xbf" + b"".join(k + v for k, v in kv) + b"\xff",
            st.lists(st.tuples(inner, inner), max_size=3),
        ),
        st.builds(
            lambda t, w, x: head(6, t, w) + x,
            st.sampled_from([4000, 1 << 40, 100, 55799]),
            widths,
            inner,
        ),
    )


items = st.recursive(atoms, _containers, max_leaves=16)
"""Bytes of exactly one well-formed CBOR item (nested far less than SCAN_DEPTH)."""
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=4)
        | st.builds(cbor2.CBORTag, st.sampled_from([4000, 1 << 33]), inner)
    ),
    max_leaves=12,
)


@st.composite
def damaged(draw: st.DrawFn, source: st.SearchStrategy[bytes] = items) -> bytes:
    """An item with a tail, or cut, or with bytes overwritten or inserted."""
    buf = bytearray(draw(source))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
        kind, at = draw(st.integers(0, 3)), draw(st.integers(0, 64))
        byte = draw(st.integers(0, 255))
        if kind == 0 and buf:
            buf[at % len(buf)] = byte
        elif kind == 1:
            del buf[at % (len(buf) + 1) :]
        elif kind == 2:
            buf[at:at] = bytes([byte])
        else:
            buf += draw(st.binary(max_size=4))
    return bytes(buf)


any_bytes = st.one_of(st.binary(max_size=40), damaged(), damaged(values.map(cbor2.dumps)))


# --- cbor_item_end ----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@settings(max_examples=300)
@given(item=items, tail=st.binary(max_size=6))
def test_the_scanner_finds_where_an_item_ends(impl: accel.Impl, item: bytes, tail: bytes) -> None:
    """Any well-formed item, with anything after it: the end is the item's; every proper
    prefix is a truncation."""
    assert impl.cbor_item_end(item + tail) == len(item)
    for cut in {0, len(item) // 2, len(item) - 1}:
        assert impl.cbor_item_end(item[:cut]) == -1


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@settings(max_examples=200)
@given(value=values, tail=st.binary(max_size=4))
def test_the_scanner_finds_the_end_of_what_cbor2_encodes(
    impl: accel.Impl, value: Any, tail: bytes
) -> None:
    item = cbor2.dumps(value)
    assert impl.cbor_item_end(item + tail) == len(item)
    assert impl.cbor_item_end(item[:-1]) == -1


@needs_c
@settings(max_examples=600)
@given(data=any_bytes)
def test_the_compiled_scanner_equals_the_pure_one(data: bytes) -> None:
    assert C is not None
    assert C.cbor_item_end(data) == PURE.cbor_item_end(data)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@settings(max_examples=400)
@given(data=any_bytes)
def test_an_item_the_scanner_takes_decodes_as_decode_cbor_decodes_it(
    impl: accel.Impl, data: bytes
) -> None:
    """What the compiled reads rely on: bytes the scanner calls exactly one item, if
    cbor2's loads takes them at all, are what decode_cbor (the checked reference) gives."""
    if impl.cbor_item_end(data) != len(data):
        return
    try:
        value = cbor2.loads(data)
    except Exception:  # the reads hand such values to the reference
        return
    assert repr(decode_cbor(data)) == repr(value)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"\x00", 1),
        (b"\x18\x18\x00", 2),
        (b"\x1b" + bytes(8), 9),
        (b"\x1b" + bytes(7), -1),  # a head cut short
        (b"\x1c", -1),  # reserved additional information
        (b"\x3f", -1),  # an indefinite integer
        (b"\xdf\x00", -1),  # an indefinite tag
        (b"\xff", -1),  # a break with nothing open
        (b"\x9f\xff\x00", 2),
        (b"\x9f\x00\x81\x00\xff", 5),
        (b"\x9f\x00", -1),  # never closed
        (b"\xbf\x00\x00\xff", 4),
        (b"\xbf\x00\xff", -1),  # a key with no value
        (b"\x9f\xc1\xff", -1),  # a tag with a break for its content
        (b"\xc1\xc2\x00", 3),  # a tag of a tag
        (b"\x5f\x41a\x40\xff", 5),
        (b"\x5f\x61a\xff", -1),  # a text chunk in a byte string
        (b"\x5f\x5f\xff\xff", -1),  # a nested indefinite chunk
        (b"\x7f\xff", 2),
        (b"\xf8\x1f", -1),  # a two-byte simple value below 32
        (b"\xf8\x20", 2),
        (b"\xfc", -1),
        (b"\xf9\x00", -1),
        (b"\x9b" + b"\xff" * 8, -1),  # 2**64 - 1 items in a 9-byte buffer
        (b"\xbb" + b"\xff" * 8 + b"\x00" * 30, -1),
        (b"\x5b" + b"\xff" * 8, -1),
        (b"\xa1\x00", -1),
        (b"\x80\x01", 1),
        (b"\xa0", 1),
        (b"", -1),
    ],
)
def test_the_scanner_on_hand_made_bytes(impl: accel.Impl, data: bytes, end: int) -> None:
    assert impl.cbor_item_end(data) == end


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize("opener", [b"\x81", b"\x9f", b"\xa1\x00", b"\xbf\x00"])
def test_the_scanner_follows_nesting_to_scan_depth(impl: accel.Impl, opener: bytes) -> None:
    closer = b"\xff" if opener[0] & 31 == 31 else b""
    deep = opener * SCAN_DEPTH + b"\x00" + closer * SCAN_DEPTH
    assert impl.cbor_item_end(deep) == len(deep)
    deeper = opener + deep + closer
    assert impl.cbor_item_end(deeper) == -1
    tagged = b"\xc6" * 1000 + deep  # tags take no nesting
    assert impl.cbor_item_end(tagged) == len(tagged)


@needs_c
def test_the_compiled_scanner_takes_bytes_only() -> None:
    assert C is not None
    with pytest.raises(TypeError, match="bytes"):
        C.cbor_item_end(bytearray(b"\x00"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PURE.cbor_item_end("\x00")  # type: ignore[arg-type]


# --- lww_value and point_value ------------------------------------------------------------------


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, str]:
    """What ``fn(*args)`` returned (its type and repr) or raised (type and message)."""
    try:
        got = fn(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    marks = {id(SKIP): "SKIP", id(UNHANDLED): "UNHANDLED"}
    return type(got).__name__, marks.get(id(got), repr(got))


def _record(fmt: int, flags: int, peer: bytes, value: bytes, plen: int | None = None) -> bytes:
    body = bytearray(record_body(7, peer, False, value) + (42).to_bytes(8, "big"))
    body[0], body[1] = fmt, flags
    if plen is not None:
        body[layout.RECORD_HEAD - 1] = plen
    return bytes(body)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """Mostly well-formed format-1 records; also tombstones, siblings-format and unknown
    formats, peer lengths past the end, empty and non-ASCII peer ids, and cut records."""
    value = draw(st.one_of(items, values.map(cbor2.dumps), any_bytes))
    fmt = draw(st.sampled_from([1, 1, 1, 1, 2, 9]))
    flags = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    peer = draw(st.sampled_from([b"p", b"peer-1", "é".encode(), b"", b"\xff\xfe"]))
    plen = draw(st.one_of(st.none(), st.none(), st.integers(0, 255)))
    blob = _record(fmt, flags, peer, value, plen)
    if draw(st.integers(0, 7)) == 0:
        blob = blob[: draw(st.integers(0, len(blob)))]
    return blob


@needs_c
@settings(max_examples=600)
@given(blob=st.one_of(records(), st.binary(max_size=30)), key=st.sampled_from(["k", "é", 3]))
def test_lww_value_compiled_equals_pure(blob: bytes, key: object) -> None:
    assert C is not None
    default = object()
    assert outcome(C.lww_value, blob, key, default) == outcome(PURE.lww_value, blob, key, default)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_lww_value_contract(impl: accel.Impl) -> None:
    default = object()
    assert impl.lww_value(_record(1, 0, b"p", b"\xa1\x61a\x01"), "k", default) == {"a": 1}
    assert impl.lww_value(_record(1, 1, b"p", b"\x01\x02"), "k", default) is default
    assert impl.lww_value(_record(1, 0, b"p", b"\x18\xff"), "k", default) == 255
    assert impl.lww_value(_record(1, 0, b"", b"\x01"), "k", default) == 1  # get skips the peer
    deep = b"\x81" * (SCAN_DEPTH + 5) + b"\x00"
    assert impl.lww_value(_record(1, 0, b"p", deep), "k", default) == decode_cbor(deep)
    for bad in (b"\x01\x02", b"\x01\xff", b"", b"\x81"):
        with pytest.raises(CorruptionError, match=r"^stored value of key 'k' does not decode"):
            impl.lww_value(_record(1, 0, b"p", bad), "k", default)
    with pytest.raises(CorruptionError, match="record of key 'k' is malformed"):
        impl.lww_value(_record(9, 0, b"p", b"\x01"), "k", default)
    with pytest.raises(IndexError):
        impl.lww_value(b"", "k", default)
    sib = layout.pack_single(5, b"p", False, cbor2.dumps([1])) + (3).to_bytes(8, "big")
    assert impl.lww_value(sib, "k", default) == [1]
    assert impl.scan_item(DATA + b"k", sib, ITEMS, True) == ("k", [1])


class _Reads:
    """A backend's ``point_get`` over a dict, remembering what it was asked."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data, self.asked = data, list[bytes]()

    def __call__(self, k: bytes) -> bytes | None:
        self.asked.append(k)
        return self.data.get(k)


keys_of_any_kind = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["k", "é", "\udc80", "k\udc80", "x" * SHORT_KEY_CHARS, "x" * 16385]),
    st.binary(max_size=4),
    st.integers(),
    st.builds(type("S", (str,), {}), st.text(max_size=3)),
)


@needs_c
@settings(max_examples=400)
@given(key=keys_of_any_kind, blob=st.one_of(st.none(), records()))
def test_point_value_compiled_equals_pure(key: object, blob: bytes | None) -> None:
    assert C is not None
    stored = {}
    if blob is not None and type(key) is str:
        stored[DATA + key.encode("utf-8", "surrogatepass")] = blob
    default = object()
    got, want = _Reads(stored), _Reads(stored)
    result = outcome(C.point_value, got, key, default)
    assert result == outcome(PURE.point_value, want, key, default)
    assert got.asked == want.asked
    assert (result[1] == "UNHANDLED") == (not want.asked)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_point_value_contract(impl: accel.Impl) -> None:
    reads = _Reads({DATA + "é".encode(): _record(1, 0, b"p", b"\x61x")})
    default = object()
    assert impl.point_value(reads, "é", default) == "x"
    assert impl.point_value(reads, "k", default) is default
    assert reads.asked == [DATA + "é".encode(), DATA + b"k"]
    for key in ("\udc80", b"k", 1, "x" * (SHORT_KEY_CHARS + 1)):
        assert impl.point_value(reads, key, default) is UNHANDLED
    assert len(reads.asked) == 2

    def closed(k: bytes) -> None:
        raise KeyError(k)

    with pytest.raises(KeyError):
        impl.point_value(closed, "k", default)


# --- scan_item ----------------------------------------------------------------------------------

scan_keys = st.one_of(
    st.text(max_size=6).map(lambda t: DATA + t.encode()),
    st.binary(max_size=6),
    st.sampled_from([DATA + b"k\xff", b"", DATA]),
)


@needs_c
@settings(max_examples=600)
@given(
    k=scan_keys,
    blob=st.one_of(records(), st.binary(max_size=30)),
    what=st.sampled_from([ITEMS, KEYS, VALUES, 3, -1, 1 << 70, True, "x"]),
    utf8=st.sampled_from([True, False, 1, 0, None, "x"]),
)
def test_scan_item_compiled_equals_pure(k: bytes, blob: bytes, what: Any, utf8: Any) -> None:
    assert C is not None
    assert outcome(C.scan_item, k, blob, what, utf8) == outcome(PURE.scan_item, k, blob, what, utf8)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_scan_item_contract(impl: accel.Impl) -> None:
    good = _record(1, 0, b"p", b"\x82\x01\x02")
    assert impl.scan_item(DATA + b"k", good, ITEMS, True) == ("k", [1, 2])
    assert impl.scan_item(DATA + b"k", good, KEYS, True) == "k"
    assert impl.scan_item(DATA + b"k", good, VALUES, False) == [1, 2]
    assert impl.scan_item(DATA + b"k", good, ITEMS, False) == (b"k", [1, 2])
    assert impl.scan_item(DATA + b"k", _record(1, 1, b"p", b""), ITEMS, True) is SKIP
    assert impl.scan_item(DATA + b"k", _record(1, 0, "é".encode(), b"\x01"), VALUES, True) == 1
    trailing = _record(1, 0, b"p", b"\x01\x02")
    assert impl.scan_item(DATA + b"k", trailing, KEYS, True) == "k"  # keys decode no value
    with pytest.raises(CorruptionError, match=r"^stored record of key b'k' does not decode"):
        impl.scan_item(DATA + b"k", trailing, VALUES, True)
    with pytest.raises(CorruptionError, match="not valid utf-8"):
        impl.scan_item(DATA + b"k\xff", good, KEYS, True)
    for blob, why in [
        (_record(1, 0, b"", b"\x01"), "empty peer id"),
        (_record(1, 0, b"\xff", b"\x01"), "corrupt peer id"),
        (_record(1, 0, b"p", b"\x01", plen=200), "truncated"),
        (_record(9, 0, b"p", b"\x01"), "unknown format 9"),
    ]:
        with pytest.raises(CorruptionError, match=why):
            impl.scan_item(DATA + b"k", blob, VALUES, True)


# --- the compiled side's own checks -----------------------------------------------------------


@needs_c
def test_the_compiled_reads_know_the_layout_and_refuse_another() -> None:
    assert READS_LAYOUT == (
        layout.DATA,
        layout.FORMAT_VERSION,
        layout.FLAG_DELETED,
        layout.RECORD_HEAD,
        layout.SEQ_SIZE,
        SHORT_KEY_CHARS,
    )
    ext = importlib.import_module("crdt_kv._speedups")
    loads, slow = cbor2.loads, PURE.lww_value
    for wrong in ((b"D", *READS_LAYOUT[1:]), (*READS_LAYOUT[:3], 12, 8, SHORT_KEY_CHARS), ()):
        with pytest.raises(ValueError, match="layout"):
            ext.reads_setup(wrong, loads, slow, PURE.scan_item, SKIP, UNHANDLED)
    with pytest.raises(TypeError, match="callable"):
        ext.reads_setup(READS_LAYOUT, None, slow, PURE.scan_item, SKIP, UNHANDLED)
    assert C is not None
    assert C.lww_value(_record(1, 0, b"p", b"\x01"), "k", None) == 1  # still set up


@needs_c
@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="CPython reference counts")
def test_the_compiled_reads_keep_reference_counts() -> None:
    """Every path (decoded, tombstone, handed to the reference, raising; called plainly
    or through a bound getter) leaves the arguments' reference counts as it found them,
    and returns one reference."""
    assert C is not None
    default, key = object(), "k-" + str(id(object()))
    blobs = [
        _record(1, 0, b"p", b"\x82\x01\x02"),
        _record(1, 1, b"p", b"\x01"),
        _record(1, 0, b"p", b"\x18\xff"),
        _record(2, 0, b"p", b"\x01"),
        _record(1, 0, b"p", b"\x01\x02"),
        _record(1, 0, "é".encode(), b"\x01"),
    ]
    reads = _Reads({})
    k = DATA + key.encode()
    backend = SimpleNamespace(point_get=reads)
    get = C.bind_get(SimpleNamespace(closed=False), backend, lambda *a, **kw: None)

    def every_path() -> None:
        for blob in blobs:
            reads.data[k] = blob
            for what in (ITEMS, VALUES):
                with contextlib.suppress(CorruptionError):
                    C.scan_item(k, blob, what, True)
            for call in (C.lww_value, C.point_value):
                with contextlib.suppress(CorruptionError):
                    call(reads if call is C.point_value else blob, key, default)
            for args, kw in (((key,), {}), ((key, default), {}), ((key,), {"default": default})):
                with contextlib.suppress(CorruptionError):
                    get(*args, **kw)
            get(b"bytes", default)
        reads.data.clear()

    every_path()  # anything cached on a first call is cached before counting
    gc.collect()  # an error's traceback and the frame holding it form a cycle
    before = [sys.getrefcount(x) for x in (default, key, reads, *blobs)]
    for _ in range(50):
        every_path()
    gc.collect()
    assert [sys.getrefcount(x) for x in (default, key, reads, *blobs)] == before


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_a_value_past_what_loads_takes_gets_the_reference_error(impl: accel.Impl) -> None:
    """Well-formed structure that cbor2 refuses (invalid UTF-8, a dangling shared
    reference, a bad tag content): the reference's error, on both paths."""
    for value in (b"\x62\xff\xfe", b"\xd8\x1d\x00", b"\xc1\x61x"):
        blob = _record(1, 0, b"p", value)
        with pytest.raises(CorruptionError) as got:
            impl.lww_value(blob, "k", None)
        with pytest.raises(CorruptionError) as want:
            PURE.lww_value(blob, "k", None)
        assert str(got.value) == str(want.value)
        assert isinstance(got.value.__cause__, EncodingError)


# --- bind_get -------------------------------------------------------------------------------------


class _Fallback:
    """The store's Python ``get`` as the getter sees it: records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls.append((args, kw))
        return "fallback"


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_bind_get_reads_plain_keys_and_hands_over_the_rest(impl: accel.Impl) -> None:
    writer = SimpleNamespace(closed=False)
    reads = _Reads({DATA + b"k": _record(1, 0, b"p", b"\x61v")})
    backend = SimpleNamespace(point_get=reads)
    fallback = _Fallback()
    get = impl.bind_get(writer, backend, fallback)
    compiled = impl is not PURE
    assert get("k") == ("v" if compiled else "fallback")
    assert get("nope", 5) == (5 if compiled else "fallback")
    assert get("nope", default=6) == (6 if compiled else "fallback")
    plain = 0 if compiled else 3
    assert len(fallback.calls) == plain
    odd: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((b"k",), {}),  # a key point_value leaves
        (("\udc80", 1), {}),
        ((), {}),
        (("k", 1, 2), {}),
        (("k",), {"dflt": 1}),
        ((), {"key": "k"}),
        (("k", 1), {"default": 2}),
    ]
    for args, kw in odd:
        assert get(*args, **kw) == "fallback"
    assert fallback.calls[plain:] == odd
    writer.closed = True
    assert get("k") == "fallback" and fallback.calls[-1] == (("k",), {})
    writer.closed = False
    backend.point_get = _Reads({})  # a backend rebinds point_get (reopened, closed)
    assert get("k") == (None if compiled else "fallback")
    if compiled:
        assert reads.asked == [DATA + b"k", DATA + b"nope", DATA + b"nope"]
        assert backend.point_get.asked == [DATA + b"k"]


@needs_c
def test_a_store_and_its_compiled_get_are_collected() -> None:
    import crdt_kv

    s = crdt_kv.open(backend="memory")
    assert type(s.get).__name__ == "Getter"
    s.put("k", 1)
    gone = weakref.ref(s)
    s.close()
    del s
    gc.collect()
    assert gone() is None
