"""crdt_kv.accel: the compiled twin returns exactly what the pure-Python reference returns,
BLAKE2b matches hashlib, and the choice between them (environment, missing extension) works.

The comparisons need the extension (``python setup.py build_ext --inplace`` or any
``pip install``); without it they skip, and the rest runs on the pure path. ``make test``
runs this file and the bucket tests once more with ``CRDT_KV_PURE_PYTHON=1``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import struct
import subprocess
import sys
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crdt_kv
from crdt_kv import accel, layout
from crdt_kv.errors import CorruptionError
from crdt_kv.fingerprint import BUCKET_SHIFT, BUCKETS, position_bytes
from crdt_kv.layout_fingerprints import BUCKET_KEYS, INDEX
from crdt_kv.store import buckets as buckets_mod
from crdt_kv.store.buckets import Buckets
from crdt_kv.version import RawEntry

ROOT = Path(__file__).resolve().parent.parent
C = accel.COMPILED
needs_c = pytest.mark.skipif(C is None, reason=f"speedups: {accel.DESCRIPTION}")
IMPLS = [accel.PURE] if C is None else [accel.PURE, C]

keys = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=120, max_size=400),  # around and past one 128-byte block
    st.sampled_from([b"", b"a", b"k" * 128, b"k" * 129, b"\x00" * 256]),
)
deltas = st.one_of(
    st.integers(min_value=-(1 << 256) + 1, max_value=(1 << 256) - 1),
    st.integers(min_value=-(1 << 300), max_value=1 << 300),  # beyond a digest delta
    st.sampled_from([0, 1, -1, (1 << 256) - 1, -(1 << 256) + 1, 1 << 256, -(1 << 256)]),
)
count_deltas = st.sampled_from([True, False, 1, 0, -1, 2, -2])
notes = st.lists(st.tuples(keys, deltas, count_deltas), max_size=60)
additions = st.lists(st.tuples(keys, deltas, st.sampled_from([True, False, 1, 0])), max_size=60)


def run_fold(
    impl: accel.Impl,
    ns: list[accel.Note],
    counts: list[int],
    sums: list[int],
    shift: int,
) -> tuple[list[int], list[int], list[int], list[bytes], list[bytes]]:
    counts, sums = counts.copy(), sums.copy()
    added: list[bytes] = []
    removed: list[bytes] = []
    touched = impl.fold(ns, counts, sums, added, removed, INDEX, shift)
    assert len(set(touched)) == len(touched)
    return sorted(touched), counts, sums, added, removed


# --- BLAKE2b --------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=700), size=st.integers(min_value=1, max_value=64))
def test_blake2b_matches_hashlib(impl: accel.Impl, data: bytes, size: int) -> None:
    assert impl.blake2b(data, size) == hashlib.blake2b(data, digest_size=size).digest()


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize("n", [0, 1, 111, 112, 127, 128, 129, 255, 256, 257, 384, 4096])
def test_blake2b_block_boundaries(impl: accel.Impl, n: int) -> None:
    data = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    for size in (1, 8, 20, 32, 48, 64):
        assert impl.blake2b(data, size) == hashlib.blake2b(data, digest_size=size).digest()
    assert impl.position(data) == position_bytes(data)


def test_blake2b_rfc7693_vector() -> None:
    """Appendix A of RFC 7693: BLAKE2b-512 of "abc"."""
    want = bytes.fromhex(
        "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
        "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
    )
    for impl in IMPLS:
        assert impl.blake2b(b"abc", 64) == want


@needs_c
def test_blake2b_rejects_bad_sizes_and_text() -> None:
    assert C is not None
    for size in (0, 65, -1):
        with pytest.raises(ValueError, match="digest_size"):
            C.blake2b(b"x", size)
    with pytest.raises(TypeError):
        C.position("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        accel.PURE.position("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@settings(max_examples=100, deadline=None)
@given(key=keys)
def test_position_is_the_fingerprint_position(impl: accel.Impl, key: bytes) -> None:
    assert impl.position(key) == position_bytes(key)
    assert impl.position(bytearray(key)) == position_bytes(key)  # type: ignore[arg-type]


# --- fold -------------------------------------------------------------------------------------


@needs_c
@settings(max_examples=150, deadline=None)
@given(
    ns=notes,
    shift=st.sampled_from([BUCKET_SHIFT, 63, 60]),  # 63: two buckets, many keys each
    start=st.lists(st.integers(min_value=-(1 << 260), max_value=1 << 260), max_size=8),
)
def test_fold_compiled_equals_pure(ns: list[accel.Note], shift: int, start: list[int]) -> None:
    assert C is not None
    n = 1 << (64 - shift)
    counts = [(i * 7) % 5 for i in range(n)]
    sums = [start[i % len(start)] if start else 0 for i in range(n)]
    assert run_fold(C, ns, counts, sums, shift) == run_fold(accel.PURE, ns, counts, sums, shift)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_fold_contract(impl: accel.Impl) -> None:
    """What the docstring promises, checked against hashlib arithmetic by hand."""
    counts, sums = [0] * BUCKETS, [0] * BUCKETS
    ns: list[accel.Note] = [(b"a", 5, True), (b"a", -7, False), (b"b", 1 << 256, -1), (b"", 3, 0)]
    added: list[bytes] = []
    removed: list[bytes] = []
    touched = impl.fold(ns, counts, sums, added, removed, INDEX, BUCKET_SHIFT)
    pa, pb, pe = (hashlib.blake2b(k, digest_size=8).digest() for k in (b"a", b"b", b""))
    want: dict[int, int] = {}
    for p, d in ((pa, 5), (pa, -7), (pb, 1 << 256), (pe, 3)):
        b = int.from_bytes(p, "big") >> BUCKET_SHIFT
        want[b] = want.get(b, 0) + d
    assert sorted(touched) == sorted(want)
    assert all(sums[b] == v % (1 << 256) for b, v in want.items())
    assert sum(counts) == 0 and counts[int.from_bytes(pa, "big") >> BUCKET_SHIFT] >= 1
    assert added == [INDEX + pa + b"a"] and removed == [INDEX + pb + b"b"]


@needs_c
def test_fold_many_notes_in_one_bucket_and_errors() -> None:
    assert C is not None
    ns: list[accel.Note] = [(b"k%d" % i, (1 << 255) + i, True) for i in range(5000)]
    assert run_fold(C, ns, [0, 0], [0, 0], 63) == run_fold(accel.PURE, ns, [0, 0], [0, 0], 63)
    counts, sums = [0] * BUCKETS, [0] * BUCKETS
    with pytest.raises(TypeError):
        C.fold([("text", 1, 1)], counts, sums, [], [], INDEX, BUCKET_SHIFT)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        C.fold([(b"k", 1.5, 1)], counts, sums, [], [], INDEX, BUCKET_SHIFT)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        C.fold([(b"k", 1)], counts, sums, [], [], INDEX, BUCKET_SHIFT)  # type: ignore[list-item]
    with pytest.raises(IndexError):
        C.fold([(b"k", 1, 1)], [0], [0], [], [], INDEX, BUCKET_SHIFT)
    assert counts == [0] * BUCKETS and sums == [0] * BUCKETS  # nothing applied


@needs_c
def test_fold_takes_bytes_like_keys_and_list_notes_like_the_pure_path() -> None:
    assert C is not None
    ns = [[bytearray(b"ba"), 3, True], (memoryview(b"mv"), -4, 1), (b"b", True, -1)]
    counts, sums = [1] * BUCKETS, [0] * BUCKETS
    got = run_fold(C, ns, counts, sums, BUCKET_SHIFT)  # type: ignore[arg-type]
    assert got == run_fold(accel.PURE, ns, counts, sums, BUCKET_SHIFT)  # type: ignore[arg-type]


# --- sort_index -------------------------------------------------------------------------------


@needs_c
@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(
        st.one_of(
            st.binary(max_size=20),
            st.builds(lambda k: INDEX + position_bytes(k) + k, st.binary(max_size=30)),
            st.sampled_from([b"", b"\x00", b"ab", b"ab\x00", b"abcdefgh", b"abcdefgh\x00"]),
        ),
        max_size=300,
    )
)
def test_sort_index_equals_sorted(items: list[bytes]) -> None:
    assert C is not None
    out = C.sort_index(items)
    assert out == sorted(items)
    assert all(a is b for a, b in zip(out, sorted(items), strict=True) if a != b"")


@needs_c
def test_sort_index_large_and_rejects_non_bytes() -> None:
    assert C is not None
    xs = [INDEX + position_bytes(b"%d" % i) + b"%d" % i for i in range(20_000)]
    assert C.sort_index(xs) == sorted(xs)
    with pytest.raises(TypeError, match="bytes"):
        C.sort_index([b"a", "b"])  # type: ignore[list-item]


# --- bucket_ops -------------------------------------------------------------------------------


@needs_c
@settings(max_examples=100, deadline=None)
@given(
    rows=st.dictionaries(
        st.integers(min_value=0, max_value=BUCKETS - 1),
        st.tuples(
            st.integers(min_value=0, max_value=(1 << 64) - 1),
            st.integers(min_value=0, max_value=(1 << 256) - 1),
        ),
        max_size=50,
    )
)
def test_bucket_ops_compiled_equals_pure(rows: dict[int, tuple[int, int]]) -> None:
    assert C is not None
    counts, sums = [0] * BUCKETS, [0] * BUCKETS
    for b, (c, s) in rows.items():
        counts[b], sums[b] = c, s
    touched = set(rows) | {0, BUCKETS - 1}
    want = accel.PURE.bucket_ops(BUCKET_KEYS, counts, sums, touched)
    assert C.bucket_ops(BUCKET_KEYS, counts, sums, touched) == want
    assert C.bucket_ops(BUCKET_KEYS, counts, sums, sorted(touched, reverse=True)) == want


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize(("count", "total"), [(1, -1), (1, 1 << 256), (-1, 0), (1 << 64, 0)])
def test_bucket_ops_refuses_what_pack_bucket_refuses(
    impl: accel.Impl, count: int, total: int
) -> None:
    counts, sums = [0] * BUCKETS, [0] * BUCKETS
    counts[3], sums[3] = count, total
    with pytest.raises((OverflowError, struct.error)):
        impl.bucket_ops(BUCKET_KEYS, counts, sums, [3])
    with pytest.raises(IndexError):
        impl.bucket_ops(BUCKET_KEYS, counts, sums, [BUCKETS])


# --- the buckets on either path -------------------------------------------------------------


def buckets_ops(
    monkeypatch: pytest.MonkeyPatch, impl: accel.Impl, ns: list[accel.Note], more: list[accel.Note]
) -> tuple[list[object], list[int], list[int], int]:
    monkeypatch.setattr(buckets_mod, "fold", impl.fold)
    monkeypatch.setattr(buckets_mod, "sort_index", impl.sort_index)
    monkeypatch.setattr(buckets_mod, "bucket_ops", impl.bucket_ops)
    b = Buckets()
    b.notes.extend(ns)
    ops: list[object] = [*b.fresh_index(), *b.checkpoint_ops(7, more)]
    b.saved(more)
    return ops, b.counts, b.sums, b.total


@needs_c
@settings(max_examples=40, deadline=None)
@given(ns=additions, more=additions)
def test_checkpoint_ops_same_on_both_paths(ns: list[accel.Note], more: list[accel.Note]) -> None:
    assert C is not None
    with pytest.MonkeyPatch.context() as mp:
        want = buckets_ops(mp, accel.PURE, ns, more)
        assert buckets_ops(mp, C, ns, more) == want


# --- the choice ---------------------------------------------------------------------------------

PROBE = """
import sys, warnings
if {block}:
    sys.modules["crdt_kv._speedups"] = None  # what a failed build leaves: no module
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import crdt_kv
from crdt_kv import accel
print(accel.ACTIVE.name, accel.COMPILED is None, [type(w.message).__name__ for w in caught])
print(accel.DESCRIPTION)
"""


def probe(block: bool, pure: str | None) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CRDT_KV_PURE_PYTHON", None)
    if pure is not None:
        env["CRDT_KV_PURE_PYTHON"] = pure
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(block=block)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def test_pure_python_switch() -> None:
    first, why = probe(block=False, pure="1")
    assert first == "python True []" and "CRDT_KV_PURE_PYTHON" in why


def test_missing_extension_falls_back_with_one_warning() -> None:
    first, why = probe(block=True, pure=None)
    assert first == "python True ['SpeedupsWarning']" and "not built" in why
    first, _ = probe(block=True, pure="0")  # 0 does not ask for the pure path
    assert first == "python True ['SpeedupsWarning']"


@needs_c
def test_compiled_is_chosen_when_built() -> None:
    first, why = probe(block=False, pure=None)
    assert first == "c False []" and "compiled" in why
    assert probe(block=False, pure="0")[0] == "c False []"


def test_cli_version_names_the_path() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crdt_kv.cli", "--version"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"{crdt_kv.__version__} ({accel.DESCRIPTION})"


# --- lww_run ----------------------------------------------------------------------------------

_UINTS = st.one_of(
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0, max_value=70_000),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.sampled_from([0xFFFF, 0x10000, (1 << 48) - 1, 1 << 48, 1 << 64, -1]),
)
_VALUES = st.one_of(st.none(), st.binary(max_size=300), st.sampled_from(["t", 1, [], b""]))


@st.composite
def row_bytes(draw: st.DrawFn) -> bytes:
    """A batch row, mostly plain (``[key, dwall, logical, peer, value]``), sometimes not."""
    key = draw(st.one_of(st.binary(max_size=40), st.sampled_from([b"k" * 300, b"", "k", 0])))
    small = st.integers(min_value=0, max_value=3)
    ints = [draw(st.one_of(small, _UINTS)) for _ in range(3)]
    row: list[object] = [key, *ints, draw(_VALUES)]
    if draw(st.integers(0, 9)) == 0:
        row.extend([[], []])
    return cbor2.dumps(row)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Rows, then some bytes overwritten, cut or inserted: what a peer might send."""
    buf = bytearray(b"".join(draw(st.lists(row_bytes(), max_size=6))))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 3]))):
        kind, at, byte = (
            draw(st.integers(0, 2)),
            draw(st.integers(0, 400)),
            draw(st.integers(0, 255)),
        )
        if kind == 0 and buf:
            buf[at % len(buf)] = byte
        elif kind == 1:
            del buf[at:]
        else:
            buf[at:at] = bytes([byte])
    return bytes(buf)


def run_lww(impl: accel.Impl, *args: Any) -> tuple[list[tuple[object, ...]], int]:
    entries, end = impl.lww_run(*args)
    return [(type(e.key), type(e.value), *astuple(e)) for e in entries], end


@needs_c
@settings(max_examples=400, deadline=None)
@given(
    buf=st.one_of(frames(), st.binary(max_size=200)),
    pos=st.one_of(st.just(0), st.integers(min_value=-2, max_value=60)),
    count=st.one_of(st.just(8), st.integers(min_value=-1, max_value=8)),
    base=st.one_of(
        st.just(1_700_000_000_000),
        st.integers(min_value=0, max_value=(1 << 48) - 1),
        st.sampled_from([-1, 1 << 48, 1 << 70, -(1 << 70)]),
    ),
    npeers=st.one_of(st.just(3), st.integers(min_value=0, max_value=3)),
)
def test_lww_run_compiled_equals_pure(
    buf: bytes, pos: int, count: int, base: int, npeers: int
) -> None:
    assert C is not None
    peers = ["a", "b", "c"][:npeers]
    want = run_lww(accel.PURE, buf, pos, count, base, peers)
    assert run_lww(C, buf, pos, count, base, peers) == want
    assert all(row[0] is bytes and row[1] is bytes for row in want[0])


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_lww_run_contract(impl: accel.Impl) -> None:
    rows = [
        [b"k", 5, 1, 0, b"\x01"],
        [b"", 0x100, 0xFFFF, 1, None],
        [b"x" * 30, (1 << 32) + 3, 0, 0, b"y" * 70_000],
    ]
    buf = b"\x00" + b"".join(cbor2.dumps(r) for r in rows) + cbor2.dumps([b"k", 0, 0, 2, None])
    entries, end = impl.lww_run(buf, 1, 10, 7, ["a", "b"])
    assert entries == [
        RawEntry(b"k", b"\x01", (12 << 16) | 1, "a", False),
        RawEntry(b"", b"", ((7 + 0x100) << 16) | 0xFFFF, "b", True),
        RawEntry(b"x" * 30, b"y" * 70_000, (7 + (1 << 32) + 3) << 16, "a", False),
    ]
    sizes = [len(cbor2.dumps(r)) for r in rows]
    assert end == 1 + sum(sizes)  # stopped before the row naming peer index 2
    assert impl.lww_run(buf, 1, 2, 7, ["a", "b"])[1] == 1 + sizes[0] + sizes[1]
    assert impl.lww_run(buf, 1, 3, (1 << 48) - 5, ["a", "b"]) == ([], 1)  # wall too high
    cut = buf[: 1 + sum(sizes) - 1]  # the last value one byte short
    assert impl.lww_run(cut, 1, 3, 7, ["a", "b"]) == (entries[:2], 1 + sizes[0] + sizes[1])


@needs_c
def test_lww_run_compiled_refuses_what_it_cannot_fill() -> None:
    ext = importlib.import_module("crdt_kv._speedups")
    slots = tuple(getattr(RawEntry, f.name) for f in fields(RawEntry))
    with pytest.raises(TypeError, match="member descriptors"):
        ext.lww_run(b"", 0, 1, 0, [], RawEntry, (*slots[:7], accel.Impl.name))
    with pytest.raises(TypeError, match="member descriptors"):
        ext.lww_run(b"", 0, 1, 0, [], accel.Impl, slots)
    with pytest.raises(TypeError, match="bytes"):
        ext.lww_run(bytearray(), 0, 1, 0, [], RawEntry, slots)
    with pytest.raises(TypeError, match="bytes"):
        ext.lww_run(b"", 0, 1, 0, ("a",), RawEntry, slots)
    assert ext.lww_run(b"", 0, 1, 0, [], RawEntry, slots) == ([], 0)


# --- stage_records ---------------------------------------------------------------------

records = st.builds(
    lambda fmt, flags, hlc, peer, value, seq: (
        bytes([fmt, flags]) + hlc.to_bytes(8, "big") + bytes([len(peer)]) + peer + value + seq
    ),
    st.sampled_from([layout.FORMAT_VERSION, layout.FORMAT_SIBLINGS]),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.binary(min_size=1, max_size=8),
    st.binary(max_size=300),
    st.binary(min_size=8, max_size=8),
)
olds = st.one_of(
    st.none(),
    records,
    st.binary(max_size=30),  # short, or of any format byte: mostly malformed
    records.map(lambda r: bytes([r[0] ^ 0x0C]) + r[1:]),  # an unknown format
)
stage_items = st.lists(
    st.tuples(keys, st.one_of(records.map(lambda r: r[:-8]), st.binary(max_size=3)), olds),
    max_size=30,
)


def run_stage(impl: accel.Impl, items: list[Any], seq: int) -> tuple[object, ...]:
    """What ``impl.stage_records`` returns or raises, and what it appended, with types."""
    ops: list[tuple[bytes, bytes | None]] = []
    logs: list[tuple[bytes, bytes]] = []
    ns: list[accel.Note] = []
    try:
        out: object = impl.stage_records(items, seq, ops, logs, ns)
    except (CorruptionError, IndexError) as exc:
        out = (type(exc), str(exc))
    typed = [tuple((type(x), x) for x in row) for row in [*ops, *logs, *ns]]
    return out, ops, logs, ns, typed


@needs_c
@settings(max_examples=300, deadline=None)
@given(items=stage_items, seq=st.integers(min_value=0, max_value=(1 << 64) - 40))
def test_stage_records_compiled_equals_pure(items: list[Any], seq: int) -> None:
    """Same ops, logs, notes and sums object for object, and the same error (type and
    message) for a malformed old record or body, after the same appends."""
    assert C is not None
    assert run_stage(C, items, seq) == run_stage(accel.PURE, items, seq)


@needs_c
def test_stage_records_compiled_sums_thousands() -> None:
    """The digest sum of many items crosses 2**256 both ways (the C keeps 320 bits)."""
    assert C is not None
    body = layout.record_body(9 << 16, b"q", False, b"v")
    many = [(b"%05d" % i, body, None) for i in range(3000)]
    big = [
        (b"k" * (i % 50), body, layout.pack_record(i, 1, b"p", i % 3 == 0, b"w" * i))
        for i in range(3000)
    ]
    for items in (many, big, many + big):
        got, want = run_stage(C, items, 7), run_stage(accel.PURE, items, 7)
        assert got == want
        assert isinstance(want[0], tuple) and want[0][0] == 7 + len(items)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_stage_records_contract(impl: accel.Impl) -> None:
    old = layout.pack_record(5 << 16, 3, b"p", False, b"\x01")
    body = layout.record_body(9 << 16, b"q", True, b"")
    ops: list[tuple[bytes, bytes | None]] = []
    logs: list[tuple[bytes, bytes]] = []
    ns: list[accel.Note] = []
    assert impl.stage_records([(b"k", body, old)], 10, ops, logs, ns) == (
        11,
        layout.body_hash(b"k", body) - layout.body_hash(b"k", old[:-8]),
        -1,
    )
    assert ops == [(b"l" + (3).to_bytes(8, "big"), None), (b"dk", body + (11).to_bytes(8, "big"))]
    assert logs == [(b"l" + (11).to_bytes(8, "big"), b"k")]
    assert ns == [(b"k", layout.body_hash(b"k", body) - layout.body_hash(b"k", old[:-8]), False)]
    for bad in (b"", b"\x01" * (layout.MIN_RECORD - 1), b"\x00" + old[1:], b"\x03" + old[1:]):
        with pytest.raises(CorruptionError, match=r"^record of key b'\\x00k' is malformed$"):
            impl.stage_records([(b"x", body, None), (b"\x00k", body, bad)], 1, ops, logs, ns)
        assert logs[-1] == (b"l" + (2).to_bytes(8, "big"), b"x")  # the item before was staged


@needs_c
def test_stage_records_layout_is_the_layout_module() -> None:
    """The C reads every constant from STAGE_LAYOUT (taken from crdt_kv.layout), packs a
    seq as 8 big-endian bytes and a key length as 4, and refuses a layout of other sizes."""
    assert (
        layout.DATA,
        layout.LOG,
        layout.FLAG_DELETED,
        layout.FORMAT_VERSION,
        layout.FORMAT_SIBLINGS,
        layout.MIN_RECORD,
        layout.SEQ_SIZE,
        layout.KEYLEN_SIZE,
        CorruptionError,
    ) == accel.STAGE_LAYOUT
    assert layout.pack_u64(1) == (1).to_bytes(8, "big") and layout.KEYLEN_SIZE == 4
    ext = importlib.import_module("crdt_kv._speedups")
    body = layout.record_body(1, b"p", False, b"")
    ops: list[Any] = []
    other = (b"D", b"L", 4, 7, 9, 12, 8, 4, KeyError)
    assert ext.stage_records([(b"k", body, b"\x07\x04" + b"\x00" * 10)], 0, ops, [], [], other)
    assert ops == [(b"L" + b"\x00" * 8, None), (b"Dk", body + (1).to_bytes(8, "big"))]
    with pytest.raises(KeyError, match="record of key b'k' is malformed"):
        ext.stage_records([(b"k", body, b"\x0a" * 12)], 0, [], [], [], other)
    for wrong in ((*other[:6], 4, 4, KeyError), (*other[:7], 2, KeyError), other[:8]):
        with pytest.raises((ValueError, TypeError), match="layout"):
            ext.stage_records([], 0, [], [], [], wrong)
    with pytest.raises(TypeError, match="tuples"):
        ext.stage_records([[b"k", body, None]], 0, [], [], [], accel.STAGE_LAYOUT)
    with pytest.raises(TypeError, match="bytes"):
        ext.stage_records([(b"k", bytearray(body), None)], 0, [], [], [], accel.STAGE_LAYOUT)
    with pytest.raises(OverflowError):
        ext.stage_records([(b"k", body, None)], (1 << 64) - 1, [], [], [], accel.STAGE_LAYOUT)


# --- fill_batch ------------------------------------------------------------------------


def run_fill(
    impl: accel.Impl, ops: Any, fail_on: bytes | None = None, prefix: int | None = None
) -> tuple[object, ...]:
    """The calls ``impl.fill_batch`` makes, and what it raised (a put of ``fail_on``
    raises KeyError, as rocksdict's does for a value it refuses); with ``prefix``, keys
    starting with that byte are routed to the family ``"F"``."""
    calls: list[tuple[object, ...]] = []

    def put(k: bytes, v: bytes, *family: str) -> None:
        if k == fail_on:
            raise KeyError(k)
        calls.append((k, v, *family))

    def delete(k: bytes, *family: str) -> None:
        calls.append((k, *family))

    try:
        if prefix is None:
            out: object = impl.fill_batch(ops, put, delete)
        else:
            out = impl.fill_batch(ops, put, delete, "F", prefix)
    except (KeyError, ValueError, TypeError) as exc:
        out = type(exc)
    return out, calls


@needs_c
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(keys, st.one_of(st.none(), keys)), max_size=40), cut=keys)
def test_fill_batch_compiled_equals_pure(ops: list[tuple[bytes, bytes | None]], cut: bytes) -> None:
    """The same puts and deletes in the same order; a failing put stops both there."""
    assert C is not None
    assert run_fill(C, ops) == run_fill(accel.PURE, ops)
    assert run_fill(C, ops, cut) == run_fill(accel.PURE, ops, cut)
    assert run_fill(C, ops)[1] == [(k,) if v is None else (k, v) for k, v in ops]


@needs_c
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(keys, st.one_of(st.none(), keys)), max_size=40), cut=keys)
def test_fill_batch_routes_a_prefix_to_the_family_alike(
    ops: list[tuple[bytes, bytes | None]], cut: bytes
) -> None:
    assert C is not None
    prefix = ops[0][0][0] if ops and ops[0][0] else ord("d")
    got = run_fill(C, ops, prefix=prefix)
    assert got == run_fill(accel.PURE, ops, prefix=prefix)
    assert run_fill(C, ops, cut, prefix) == run_fill(accel.PURE, ops, cut, prefix)
    fam = [("F",) if k[:1] == bytes((prefix,)) else () for k, _ in ops]
    want = [(k, *f) if v is None else (k, v, *f) for (k, v), f in zip(ops, fam, strict=True)]
    assert got[1] == want


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_fill_batch_routing_checks_its_prefix(impl: accel.Impl) -> None:
    assert run_fill(impl, [(b"d1", b"v"), (b"x", None), (b"d2", None)], prefix=ord("d")) == (
        None,
        [(b"d1", b"v", "F"), (b"x",), (b"d2", "F")],
    )
    assert run_fill(impl, [(b"d", b"v")], prefix=256)[0] is ValueError
    assert run_fill(impl, [(b"d", b"v")], prefix=-1)[0] is ValueError


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_fill_batch_refuses_what_unpacking_refuses(impl: accel.Impl) -> None:
    assert run_fill(impl, [(b"a", b"1"), [b"b", None]]) == (None, [(b"a", b"1"), (b"b",)])
    assert run_fill(impl, [(b"a", b"1", b"2")])[0] is ValueError
    assert run_fill(impl, [(b"a",)])[0] is ValueError
    assert run_fill(impl, [7])[0] is TypeError
    assert run_fill(impl, 7)[0] is TypeError
