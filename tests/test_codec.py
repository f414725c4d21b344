"""Encodings and the on-disk layout (crdt_kv/codec.py), directly and through the Store.

Byte-exact layouts are pinned by the spec vectors (tests/test_spec_core.py); this file
checks the properties: every encoding round trips what it can hold, refuses what it
cannot with EncodingError before anything is written, and bytes that do not parse raise
CorruptionError, never a crash and never a silently wrong value.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crdt_kv
from crdt_kv import codec
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.errors import ConfigError, CorruptionError, EncodingError
from crdt_kv.layout import pack_siblings, pack_single, sole_dot
from crdt_kv.layout_siblings import _unpack_full, _unpack_single
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock

json_scalars = st.none() | st.booleans() | st.integers() | st.text()
json_scalars |= st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)
cbor_scalars = json_scalars | st.binary() | st.floats(allow_nan=False)
cbor_values = st.recursive(
    cbor_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text() | st.integers() | st.binary(), inner, max_size=5)
    ),
    max_leaves=30,
)
ROUND_TRIPS: dict[str, st.SearchStrategy[Any]] = {
    "binary": st.binary(max_size=2000),
    "utf-8": st.text(max_size=500),
    "json": json_values,
    "cbor": cbor_values,
}


def nested(depth: int) -> list[Any]:
    """A list nesting ``depth`` lists in total."""
    x: list[Any] = []
    for _ in range(depth - 1):
        x = [x]
    return x


def cyclic() -> list[Any]:
    x: list[Any] = []
    x.append(x)
    return x


@pytest.mark.parametrize("name", sorted(codec.VALUE_ENCODINGS))
@given(data=st.data())
def test_every_value_encoding_round_trips(name: str, data: st.DataObject) -> None:
    enc, dec = codec.value_codec(name)
    value = data.draw(ROUND_TRIPS[name])
    blob = enc(value)
    assert type(blob) is bytes
    assert dec(blob) == value
    assert enc(dec(blob)) == blob  # canonical: re-encoding gives the same bytes


@pytest.mark.parametrize("name", sorted(codec.KEY_ENCODINGS))
@given(data=st.data())
def test_every_key_encoding_round_trips_and_keeps_order(name: str, data: st.DataObject) -> None:
    enc, dec = codec.key_codec(name)
    strat = st.text() if name == "utf-8" else st.binary()
    a, b = data.draw(strat), data.draw(strat)
    assert dec(enc(a)) == a
    # UTF-8 preserves code point order, so byte ranges are key ranges.
    assert (enc(a) < enc(b)) == (a < b)


def test_binary_accepts_bytes_like_values() -> None:
    enc, _ = codec.value_codec("binary")
    assert enc(bytearray(b"ab")) == b"ab"
    assert enc(memoryview(b"cd")) == b"cd"


def test_the_cbor_limit_is_what_the_decoder_reads() -> None:
    enc, dec = codec.value_codec("cbor")
    assert dec(enc(nested(codec.MAX_NESTING))) == nested(codec.MAX_NESTING)
    with pytest.raises(EncodingError):  # the decoder's own limit sits just above ours
        dec(b"\x81" * (codec.MAX_NESTING + 5) + b"\x80")


UNHOLDABLE: list[tuple[str, Any]] = [
    ("binary", "text"),
    ("binary", 1),
    ("binary", None),
    ("utf-8", b"bytes"),
    ("utf-8", "\ud800"),  # a lone surrogate has no UTF-8 form
    ("utf-8", 3),
    ("json", math.nan),
    ("json", math.inf),
    ("json", b"bytes"),
    ("json", {1: "int key"}),  # json.dumps would silently turn it into "1"
    ("json", [{"ok": {None: 1}}]),
    ("json", {(1, 2): 1}),
    ("json", object()),
    ("json", nested(codec.MAX_NESTING + 1)),
    ("json", nested(100_000)),
    ("json", cyclic()),
    ("cbor", object()),
    ("cbor", {1, object()}),
    ("cbor", cyclic()),
    ("cbor", nested(codec.MAX_NESTING + 1)),  # encodable, but could never be read back
    ("cbor", nested(100_000)),  # used to overflow cbor2's C stack and kill the process
    ("cbor", {"deep": nested(codec.MAX_NESTING)}),
    ("cbor", cbor2.CBORTag(4000, nested(codec.MAX_NESTING + 1))),
]


@pytest.mark.parametrize(
    ("name", "value"), UNHOLDABLE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(UNHOLDABLE)]
)
def test_values_an_encoding_cannot_hold(name: str, value: Any) -> None:
    with pytest.raises(EncodingError):
        codec.value_codec(name)[0](value)


@pytest.mark.parametrize(
    ("name", "value"), UNHOLDABLE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(UNHOLDABLE)]
)
def test_an_unholdable_value_writes_nothing_through_the_store(name: str, value: Any) -> None:
    with crdt_kv.open(backend="memory", value_encoding=name, clock=ManualClock()) as db:
        db.put("before", {"binary": b"x", "utf-8": "x"}.get(name, 1))
        state = (db.digest(), db.last_seq, len(db), list(db.backend.iterate()))
        with pytest.raises(EncodingError, match="'k'"):
            db.put("k", value)
        with pytest.raises(EncodingError), db.batch() as b:
            b.put("other", {"binary": b"y", "utf-8": "y"}.get(name, 2))
            b.put("k", value)
        assert (db.digest(), db.last_seq, len(db), list(db.backend.iterate())) == state


def test_shared_substructure_is_checked_once() -> None:
    x: list[Any] = []
    for _ in range(40):
        x = [x, x]  # 2**40 paths, 41 distinct lists
    with pytest.raises(EncodingError, match="deeper"):
        codec.value_codec("cbor")[0]([x] * 3 + [nested(codec.MAX_NESTING)])


BAD_VALUE_BYTES: list[tuple[str, bytes]] = [
    ("utf-8", b"\xff\xfe"),
    ("json", b"{"),
    ("json", b"NaN"),  # not JSON, although Python's json.loads accepts it
    ("json", b"-Infinity"),
    ("json", b"1 2"),
    ("json", b"[" * 100_000 + b"]" * 100_000),
    ("json", b"\xff"),
    ("cbor", b""),
    ("cbor", b"\x01\x02"),  # trailing bytes after a complete value
    ("cbor", b"\xff"),
    ("cbor", b"\x5a\xff\xff\xff\xff"),  # a byte string longer than the input
    ("cbor", b"\x81" * 100_000 + b"\x80"),
]


@pytest.mark.parametrize(("name", "blob"), BAD_VALUE_BYTES, ids=[n for n, _ in BAD_VALUE_BYTES])
def test_undecodable_value_bytes_are_encoding_errors(name: str, blob: bytes) -> None:
    with pytest.raises(EncodingError):
        codec.value_codec(name)[1](blob)


def _checked_cbor(b: bytes) -> tuple[str, Any]:
    """The reference: cbor2's decoder on a file object, then its position (no fast path)."""
    fp = io.BytesIO(b)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception:
        return "error", None
    return ("ok", repr(value)) if fp.tell() == len(b) else ("error", None)


def _fast_cbor(b: bytes) -> tuple[str, Any]:
    try:
        return "ok", repr(codec.decode_cbor(b))
    except EncodingError:
        return "error", None


_cbor_items = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
).map(cbor2.dumps)


@given(st.binary(max_size=64))
def test_the_cbor_decoder_agrees_with_the_checked_path_on_any_bytes(blob: bytes) -> None:
    """Issue 13: the fast paths (an array wrapped around break-free bytes, or a value
    re-encoding to its bytes) accept exactly what the checked decoder accepts."""
    assert _fast_cbor(blob) == _checked_cbor(blob)


@given(_cbor_items, st.binary(max_size=6), st.sampled_from([b"", b"\xff", b"\x9f", b"\x80"]))
def test_the_cbor_decoder_agrees_with_the_checked_path_on_items_with_tails(
    item: bytes, tail: bytes, joint: bytes
) -> None:
    for blob in (item, item + joint + tail, item[:-1], joint + item):
        assert _fast_cbor(blob) == _checked_cbor(blob), blob


def test_undecodable_keys() -> None:
    with pytest.raises(EncodingError):
        codec.key_codec("utf-8")[1](b"\xc3")
    with pytest.raises(EncodingError):
        codec.key_codec("utf-8")[0](b"bytes")
    with pytest.raises(EncodingError):
        codec.key_codec("binary")[0]("str")


def test_unknown_encoding_names_list_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="binary, cbor, json, utf-8"):
        codec.value_codec("msgpack")
    with pytest.raises(ConfigError, match="binary, utf-8"):
        codec.key_codec("latin-1")


# --- the record format --------------------------------------------------------------------


def test_records_lead_with_the_format_version() -> None:
    blob = codec.pack_record(5, 9, b"p", False, b"v")
    assert blob[0] == codec.FORMAT_VERSION == 1
    r = codec.unpack_record(b"k", blob)
    assert (r.hlc, r.seq, r.peer, r.deleted, r.value) == (5, 9, "p", False, b"v")
    future = bytes([codec.FORMAT_VERSION + 2]) + blob[1:]
    with pytest.raises(CorruptionError, match="unknown format 3"):
        codec.unpack_record(b"k", future)


@given(st.binary(max_size=40))
def test_arbitrary_record_bytes_parse_or_raise_corruption(blob: bytes) -> None:
    try:
        r = codec.unpack_record(b"k", blob)
    except CorruptionError:
        return
    assert codec.pack_record(r.hlc, r.seq, r.peer.encode(), r.deleted, r.value)[2:] == blob[2:]


peers = st.text(min_size=1, max_size=8).filter(lambda p: len(p.encode()) <= 255)
versions = st.builds(
    lambda peer, hlc, deleted, value: crdt_kv.RawEntry(b"k", value, hlc, peer, deleted),
    peers,
    st.integers(0, 2**64 - 1),
    st.booleans(),
    st.binary(max_size=30),
)


@given(versions, st.integers(0, 2**64 - 1))
def test_a_single_version_record_packs_and_reads_back_its_dot_directly(
    v: crdt_kv.RawEntry, seq: int
) -> None:
    """pack_single/sole_dot, the local-write shortcut of siblings mode, agree byte for
    byte with pack_siblings/unpack_record."""
    body = pack_single(v.hlc, v.peer.encode(), v.deleted, v.value)
    assert body == pack_siblings(v)
    blob = body + seq.to_bytes(8, "big")
    assert codec.unpack_record(b"k", blob) == crdt_kv.RawEntry(
        b"k", v.value, v.hlc, v.peer, v.deleted, seq
    )
    assert sole_dot(blob, v.peer.encode()) == v.hlc
    assert sole_dot(blob, v.peer.encode() + b"x") is None
    for cut in (1, 8, 9, len(blob) - 1):
        assert sole_dot(blob[:cut], v.peer.encode()) is None


@given(versions, st.data())
def test_the_single_version_parsers_agree_with_the_full_parse_on_damaged_records(
    v: crdt_kv.RawEntry, data: st.DataObject
) -> None:
    blob = bytearray(pack_single(v.hlc, v.peer.encode(), v.deleted, v.value) + bytes(8))
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(blob[: data.draw(st.integers(0, len(blob)))])
    for damaged in (bytes(blob), cut):
        try:
            full: crdt_kv.RawEntry | None = _unpack_full(b"k", damaged)
        except CorruptionError:
            full = None
        fast = _unpack_single(b"k", damaged)
        assert fast is None or fast == full
        dot = sole_dot(damaged, v.peer.encode())
        if dot is not None:
            assert full is not None and not full.others and not full.context
            assert (full.peer, full.hlc) == (v.peer, dot)


@given(versions, versions, st.lists(st.tuples(peers, st.integers(0, 2**64 - 1)), max_size=2))
def test_no_dot_is_read_from_a_state_that_is_more_than_one_version(
    v: crdt_kv.RawEntry, w: crdt_kv.RawEntry, ctx: list[tuple[str, int]]
) -> None:
    state = crdt_kv.RawEntry(
        b"k", v.value, v.hlc, v.peer, v.deleted, 0, tuple(sorted(ctx)), (w,) if ctx else (w, w)
    )
    blob = pack_siblings(state) + bytes(8)
    assert sole_dot(blob, v.peer.encode()) is None
    if ctx:
        alone = crdt_kv.RawEntry(b"k", v.value, v.hlc, v.peer, v.deleted, 0, tuple(sorted(ctx)))
        assert sole_dot(pack_siblings(alone) + bytes(8), v.peer.encode()) is None


@given(st.binary(max_size=60))
def test_arbitrary_meta_bytes_parse_or_raise_corruption(blob: bytes) -> None:
    for parse in (
        codec.unpack_log,
        codec.unpack_log_source,
        codec.unpack_source,
        codec.parse_cursor_key,
        codec.seq_of_log_key,
        codec.unpack_u64,
    ):
        with contextlib.suppress(CorruptionError):
            parse(blob)


# --- corruption seen through the Store ----------------------------------------------------


def _store(be: MemoryBackend | None = None) -> Store:
    return Store(be or MemoryBackend(), clock=ManualClock(), rng=random.Random(1), peer_id="p")


def _overwrite(db: Store, key: bytes, blob: bytes) -> None:
    db.backend.write([(codec.DATA + key, blob)])


def test_a_record_of_a_future_format_is_refused() -> None:
    db = _store()
    db.put("k", 1)
    blob = db.backend.get(b"dk")
    assert blob is not None
    _overwrite(db, b"k", b"\x02" + blob[1:])
    for read in (lambda: db.get("k"), lambda: db.entry("k"), lambda: list(db.items())):
        with pytest.raises(CorruptionError, match=r"'k'|b'k'"):
            read()


def _reads(db: Store) -> dict[str, Callable[[], object]]:
    return {
        "get": lambda: db.get("k"),
        "entry": lambda: db.entry("k"),
        "items": lambda: list(db.items()),
        "values": lambda: list(db.values()),
        "changes": lambda: list(db.changes()),
    }


@pytest.mark.parametrize("read", ["get", "entry", "items", "values", "changes"])
def test_a_stored_value_that_does_not_decode_is_corruption(read: str) -> None:
    db = _store()
    db.put("k", 1)
    old = db.backend.get(b"dk")
    assert old is not None
    _overwrite(db, b"k", codec.record_body(5, b"p", False, b"\x01\x02") + old[-8:])
    try:
        _reads(db)[read]()
    except CorruptionError as exc:
        assert "'k'" in str(exc)
        return
    pytest.fail(f"{read}() returned a value that does not decode")


def test_a_stored_key_that_does_not_decode_is_corruption() -> None:
    db = _store()
    db.put("a", 1)
    db.backend.write([(b"d\xff", codec.pack_record(5, 99, b"p", False, b"\x01"))])
    try:
        list(db.keys())
    except CorruptionError:
        return
    pytest.fail("a stored key that is not UTF-8 was listed")


@pytest.mark.parametrize(
    ("what", "ops"),
    [
        ("future store format", [(b"mformat", codec.pack_u64(2))]),
        ("short format", [(b"mformat", b"\x01")]),
        ("missing peer", [(b"mpeer", None)]),
        ("truncated source", [(b"msrc:" + codec.pack_u64(1), b"\x09ab")]),
        ("source peer not utf-8", [(b"msrc:" + codec.pack_u64(1), b"\x02\xff\xfe")]),
        ("newest log entry without trailer", [(codec.log_key(10**6), b"\x00k")]),
        ("unknown log kind", [(codec.log_key(10**6), b"\x07k")]),
        ("short log key", [(b"l\x00\x01", codec.pack_log(b"k", (1, 0, 5)))]),
    ],
)
def test_corrupt_metadata_is_refused_on_open(what: str, ops: list[tuple[bytes, Any]]) -> None:
    be = MemoryBackend()
    db = _store(be)
    db.put("k", 1)
    be.write(ops)  # the first store is dropped unclosed, as the simulator models a crash
    with pytest.raises(CorruptionError):
        _store(be)
    assert be.closed, "a refused open must release the backend"


def test_a_corrupt_cursor_key_is_corruption() -> None:
    db = _store()
    db.backend.write([(b"c\x09ab", codec.pack_u64(1))])
    with pytest.raises(CorruptionError):
        db.cursors()


# --- limits a peer must be able to carry -----------------------------------------------


@pytest.mark.parametrize("encoding", ["binary", "utf-8", "json", "cbor"])
def test_a_value_over_max_value_bytes_is_refused_and_nothing_written(encoding: str) -> None:
    big: Any = {
        "binary": b"x" * (codec.MAX_VALUE_BYTES + 1),
        "utf-8": "x" * (codec.MAX_VALUE_BYTES + 1),
        "json": "x" * codec.MAX_VALUE_BYTES,
        "cbor": b"x" * codec.MAX_VALUE_BYTES,
    }[encoding]
    with crdt_kv.open(backend="memory", value_encoding=encoding, clock=ManualClock()) as s:
        with pytest.raises(EncodingError, match="MAX_VALUE_BYTES"):
            s.put("k", big)
        with pytest.raises(EncodingError, match="MAX_VALUE_BYTES"), s.batch() as b:
            b.put("a", "small" if encoding != "binary" else b"small")
            b.put("k", big)
        assert s.last_seq == 0 and len(s) == 0 and s.entry("a") is None


def test_a_value_at_the_limit_is_accepted() -> None:
    with crdt_kv.open(backend="memory", value_encoding="binary", clock=ManualClock()) as s:
        s.put("k", b"x" * codec.MAX_VALUE_BYTES)
        assert len(s.get("k")) == codec.MAX_VALUE_BYTES


@pytest.mark.parametrize("key_encoding", ["utf-8", "binary"])
def test_a_key_over_max_key_bytes_is_refused(key_encoding: str) -> None:
    key: Any = "k" * (codec.MAX_KEY_BYTES + 1)
    if key_encoding == "binary":
        key = key.encode()
    with crdt_kv.open(backend="memory", key_encoding=key_encoding, clock=ManualClock()) as s:
        with pytest.raises(EncodingError, match="MAX_KEY_BYTES"):
            s.put(key, 1)
        assert s.last_seq == 0
        s.put(key[: codec.MAX_KEY_BYTES], 1)
        assert s.get(key[: codec.MAX_KEY_BYTES]) == 1


@pytest.mark.parametrize(
    "value",
    [
        cbor2.CBORTag(2, "x"),  # bignum of a text
        cbor2.CBORTag(1, "x"),  # epoch time of a text
        cbor2.CBORTag(30, [1, 0]),  # fraction with a zero denominator
        cbor2.CBORTag(37, b"x"),  # a UUID of one byte
        {"nested": [cbor2.CBORTag(29, 7)]},  # an unresolvable shared reference, nested
    ],
    ids=repr,
)
def test_a_cbor_tag_that_does_not_decode_is_refused(value: Any) -> None:
    with crdt_kv.open(backend="memory", clock=ManualClock()) as s:
        with pytest.raises(EncodingError, match="tag"):
            s.put("bad", value)
        assert s.entry("bad") is None and s.last_seq == 0


def test_a_well_formed_cbor_tag_round_trips() -> None:
    tag = cbor2.CBORTag(4000, [1, "two"])
    with crdt_kv.open(backend="memory", clock=ManualClock()) as s:
        s.put("t", {"x": tag})
        got = s.get("t")["x"]
        assert got.tag == 4000 and list(got.value) == [1, "two"]


@given(
    st.one_of(
        st.binary(max_size=300).map(cbor2.dumps),
        st.text(max_size=300).map(cbor2.dumps),
        st.binary(max_size=300),
        st.binary(max_size=23).map(lambda c: bytes([0x60 + len(c)]) + c),  # maybe not UTF-8
        st.tuples(
            st.sampled_from([0x58, 0x78, 0x57, 0x77, 0x40, 0x60]), st.binary(max_size=40)
        ).map(lambda t: bytes([t[0]]) + t[1]),
    )
)
def test_plain_string_only_for_values_decode_cbor_accepts(b: bytes) -> None:
    if codec.plain_string(b):  # then decoding it cannot fail
        assert type(codec.decode_cbor(b)) is (bytes if b[0] < 0x60 else str)


def test_plain_string_takes_the_common_values() -> None:
    assert codec.plain_string(cbor2.dumps("v" * 100))
    assert codec.plain_string(cbor2.dumps(b"\xff" * 255))
    assert codec.plain_string(b"\x58\x01a")  # a longer head than needed: still one item
    assert not codec.plain_string(cbor2.dumps("é"))  # decoded instead (not ASCII)
    assert not codec.plain_string(cbor2.dumps("v" * 100) + b"\x00")
    assert not codec.plain_string(cbor2.dumps("v" * 100)[:-1])
    assert not codec.plain_string(b"")
    assert not codec.plain_string(cbor2.dumps(1))
