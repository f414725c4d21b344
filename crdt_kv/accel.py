"""The hot paths that have a compiled twin, and which implementation runs.

Each function here exists twice: in pure Python below (the reference: what the spec and
the on-disk format are defined by) and in C, in the optional extension
``crdt_kv._speedups`` (``crdt_kv/_speedups_c/``), which must return exactly the same
results (``tests/test_accel.py`` compares them on random inputs). This is the only module
that imports the extension. At import it picks:

- the pure path if the environment sets ``CRDT_KV_PURE_PYTHON`` (to anything but ``0``);
- else the compiled path if the extension was built (``pip install`` compiles it when gcc
  and the Python headers are there);
- else the pure path, with a one-time :class:`SpeedupsWarning` (the build is optional, so
  an install without a compiler still succeeds).

:data:`DESCRIPTION` says which, and why (``crdt-kv --version`` prints it).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cbor2

from crdt_kv.errors import CorruptionError
from crdt_kv.layout import (
    DATA,
    FLAG_DELETED,
    FORMAT_SIBLINGS,
    FORMAT_VERSION,
    KEYLEN_SIZE,
    LOG,
    MIN_RECORD,
    SEQ_SIZE,
)
from crdt_kv.layout import stage_records as _stage_records
from crdt_kv.layout_fingerprints import pack_bucket
from crdt_kv.layout_reads import READS_LAYOUT, SKIP, UNHANDLED
from crdt_kv.layout_reads import cbor_item_end as _cbor_item_end
from crdt_kv.layout_reads import lww_value as _lww_value
from crdt_kv.layout_reads import point_value as _point_value
from crdt_kv.layout_reads import scan_item as _scan_item
from crdt_kv.version import RAW_SETTERS, RawEntry

__all__ = [
    "ACTIVE",
    "COMPILED",
    "DESCRIPTION",
    "PURE",
    "Impl",
    "Note",
    "SpeedupsWarning",
    "bind_get",
    "blake2b",
    "bucket_ops",
    "cbor_item_end",
    "fill_batch",
    "fold",
    "lww_run",
    "lww_value",
    "point_value",
    "position",
    "scan_item",
    "sort_index",
    "stage_records",
]

Note = tuple[bytes, int, int]
"""One key's change as the buckets see it: ``(key, digest delta, count delta)``; the count
delta is 1 for a new key (``True`` from the commit path), 0 for a replaced record, -1 for
a removed one."""

_MOD = 1 << 256
_WALL_MAX = (1 << 48) - 1
_LOGICAL_MAX = 0xFFFF
_LWW_ROW, _NULL = 0x85, 0xF6
_ARG_BYTES = (0,) * 24 + (1, 2, 4, 8)
"""Bytes after an initial byte of additional information 0-27: its argument's."""
_RAW_SLOTS = tuple(
    getattr(RawEntry, f)
    for f in ("key", "value", "hlc", "peer", "deleted", "seq", "context", "others")
)
_POSITION = hashlib.blake2b(digest_size=8)
STAGE_LAYOUT = (
    DATA,
    LOG,
    FLAG_DELETED,
    FORMAT_VERSION,
    FORMAT_SIBLINGS,
    MIN_RECORD,
    SEQ_SIZE,
    KEYLEN_SIZE,
    CorruptionError,
)
"""What the compiled ``stage_records`` knows of the layout, all read from
:mod:`crdt_kv.layout`: the data and log prefixes, the deleted flag, the record formats it
accepts, the shortest record, the seq and key-length sizes (it refuses any but 8 and 4),
and the error a malformed record raises."""
StageRecords = Callable[
    [
        Iterable[tuple[bytes, bytes, bytes | None]],
        int,
        list[tuple[bytes, bytes | None]],
        list[tuple[bytes, bytes]],
        list[Note],
    ],
    tuple[int, int, int],
]


class FillBatch(Protocol):
    """The signature of :data:`fill_batch`."""

    def __call__(
        self,
        ops: Iterable[tuple[bytes, bytes | None]],
        put: Callable[..., object],
        delete: Callable[..., object],
        family: object = ...,
        prefix: int | None = ...,
        /,
    ) -> None: ...


class SpeedupsWarning(RuntimeWarning):
    """The compiled extension is missing: everything works, more slowly."""


def _blake2b(data: bytes, digest_size: int = 64) -> bytes:
    return hashlib.blake2b(data, digest_size=digest_size).digest()


def _position(key: bytes) -> bytes:
    h = _POSITION.copy()
    h.update(key)
    return h.digest()


def _fold(  # noqa: PLR0917 - positional, like its compiled twin
    notes: Iterable[Note],
    counts: list[int],
    sums: list[int],
    added: list[bytes],
    removed: list[bytes],
    prefix: bytes,
    shift: int,
) -> list[int]:
    touched: set[int] = set()
    copy, touch, grow, drop = _POSITION.copy, touched.add, added.append, removed.append
    frombytes = int.from_bytes
    for k, delta, dc in notes:
        h = copy()
        h.update(k)
        pb = h.digest()
        b = frombytes(pb) >> shift  # big-endian: the default
        sums[b] += delta
        touch(b)
        if dc:
            counts[b] += dc
            if dc > 0:
                grow(prefix + pb + k)
            else:
                drop(prefix + pb + k)
    for b in touched:
        sums[b] %= _MOD
    return list(touched)


def _fill_batch(
    ops: Iterable[tuple[bytes, bytes | None]],
    put: Callable[..., object],
    delete: Callable[..., object],
    family: object = None,
    prefix: int | None = None,
) -> None:
    if prefix is None:
        for k, v in ops:
            if v is None:
                delete(k)
            else:
                put(k, v)
        return
    if not 0 <= prefix <= 255:
        raise ValueError(f"prefix {prefix} is not a byte")
    first = bytes((prefix,))
    for k, v in ops:
        routed = isinstance(k, bytes) and k[:1] == first
        if v is None:
            delete(k, family) if routed else delete(k)
        elif routed:
            put(k, v, family)
        else:
            put(k, v)


def _bucket_ops(
    keys: Sequence[bytes], counts: list[int], sums: list[int], touched: Iterable[int]
) -> list[tuple[bytes, bytes | None]]:
    return [
        (keys[b], pack_bucket(counts[b], sums[b]) if counts[b] else None) for b in sorted(touched)
    ]


def _bind_get(writer: object, backend: object, fallback: Callable[..., Any]) -> Callable[..., Any]:
    """The reference of the compiled getter is the method it stands for."""
    return fallback


def _uint_at(buf: bytes, p: int) -> tuple[int, int]:
    """The unsigned integer whose CBOR head is at ``buf[p]`` and the offset after it;
    ``(-1, p)`` if the head is of another type or indefinite (IndexError past the end)."""
    b = buf[p]
    if b < 24:
        return b, p + 1
    if b < 28:
        q = p + 1 + _ARG_BYTES[b]
        if q > len(buf):
            raise IndexError("truncated head")
        return int.from_bytes(buf[p + 1 : q]), q
    return -1, p


def _lww_run(
    buf: bytes, pos: int, count: int, base: int, peers: list[str]
) -> tuple[list[RawEntry], int]:
    """Up to ``count`` consecutive LWW rows of ``buf`` from ``pos``, parsed straight from
    the bytes, and the offset after the last one taken.

    A row is taken only if it is exactly a definite 5-array of a definite byte string,
    three unsigned integers (any head width) and null or a definite byte string, all
    inside ``buf``, with a timestamp in range (``base`` plus its wall offset) and a peer
    index into ``peers``: then it decodes to what the checked path of
    :mod:`crdt_kv.protocol.batch_decoding` makes of it. The run stops before the first
    row that is anything else (a sibling row, a tag, an indefinite length, a truncated or
    out-of-range row): the caller decodes that one through the checking path, which
    raises the precise error. Never raises on any bytes (``pos < 0`` or a ``base`` out of
    range: no rows)."""
    if pos < 0 or not 0 <= base <= _WALL_MAX:
        return [], pos
    sk, sv, sh, sp, sd, ss, sc, so = RAW_SETTERS
    new, cls, frombytes, arg = object.__new__, RawEntry, int.from_bytes, _ARG_BYTES
    npeers, end = len(peers), len(buf)
    out: list[RawEntry] = []
    append = out.append
    try:
        while count > 0 and buf[pos] == _LWW_ROW:
            b = buf[pos + 1]  # the key's head
            if not 0x40 <= b < 0x5C:
                break
            p = pos + 2 + arg[b & 31]
            n = b & 31 if b < 0x58 else frombytes(buf[pos + 2 : p])
            key = buf[p : p + n]
            p += n
            wall, p = _uint_at(buf, p)  # the wall offset, the logical part, the peer index
            logical, p = _uint_at(buf, p)
            pidx, p = _uint_at(buf, p)
            if wall < 0 or logical < 0 or pidx < 0:
                break
            wall += base
            if wall > _WALL_MAX or logical > _LOGICAL_MAX or pidx >= npeers:
                break
            b = buf[p]  # the value's head
            if b == _NULL:
                value, deleted = b"", True
                p += 1
            elif 0x40 <= b < 0x5C:
                q = p + 1 + arg[b & 31]
                n = b & 31 if b < 0x58 else frombytes(buf[p + 1 : q])
                p = q + n
                if p > end:
                    break
                value, deleted = buf[q:p], False
            else:
                break
            e = new(cls)
            sk(e, key)
            sv(e, value)
            sh(e, (wall << 16) | logical)
            sp(e, peers[pidx])
            sd(e, deleted)
            ss(e, 0)
            sc(e, ())
            so(e, ())
            append(e)
            pos = p
            count -= 1
    except IndexError:  # a truncated row: the checking path says so
        pass
    return out, pos


@dataclass(frozen=True, slots=True)
class Impl:
    """One implementation of every accelerated function (see the module-level names)."""

    name: str
    blake2b: Callable[[bytes, int], bytes]
    position: Callable[[bytes], bytes]
    fold: Callable[
        [Iterable[Note], list[int], list[int], list[bytes], list[bytes], bytes, int],
        list[int],
    ]
    sort_index: Callable[[Sequence[bytes]], list[bytes]]
    bucket_ops: Callable[
        [Sequence[bytes], list[int], list[int], Iterable[int]], list[tuple[bytes, bytes | None]]
    ]
    lww_run: Callable[[bytes, int, int, int, list[str]], tuple[list[RawEntry], int]]
    stage_records: StageRecords
    fill_batch: FillBatch
    cbor_item_end: Callable[[bytes], int]
    lww_value: Callable[[bytes, object, Any], Any]
    point_value: Callable[[Callable[[bytes], bytes | None], object, Any], Any]
    scan_item: Callable[[bytes, bytes, int, bool], Any]
    bind_get: Callable[[object, object, Callable[..., Any]], Callable[..., Any]]


PURE = Impl(
    "python",
    _blake2b,
    _position,
    _fold,
    sorted,
    _bucket_ops,
    _lww_run,
    _stage_records,
    _fill_batch,
    _cbor_item_end,
    _lww_value,
    _point_value,
    _scan_item,
    _bind_get,
)
"""The reference implementation."""


def _load() -> tuple[Impl | None, str]:
    if os.environ.get("CRDT_KV_PURE_PYTHON", "") not in {"", "0"}:
        return None, "speedups off: CRDT_KV_PURE_PYTHON is set"
    try:
        # by name: mypy, given a static import, reports a false no-redef in crdt_kv/__init__
        ext = importlib.import_module("crdt_kv._speedups")
    except ImportError as exc:
        warnings.warn(
            f"crdt_kv._speedups is not built ({exc}); crdt_kv runs its pure-Python path, "
            "which is slower. Reinstall crdt_kv where gcc and the Python headers are "
            "available, or set CRDT_KV_PURE_PYTHON=1 to choose the pure path quietly.",
            SpeedupsWarning,
            stacklevel=2,
        )
        return None, "speedups off: crdt_kv._speedups is not built"
    run: Callable[..., tuple[list[RawEntry], int]] = ext.lww_run

    def lww_run(
        buf: bytes, pos: int, count: int, base: int, peers: list[str]
    ) -> tuple[list[RawEntry], int]:
        """The C function, given the class to build and its slots (read once here)."""
        return run(buf, pos, count, base, peers, RawEntry, _RAW_SLOTS)

    stage: Callable[..., tuple[int, int, int]] = ext.stage_records

    def stage_records(
        items: Iterable[tuple[bytes, bytes, bytes | None]],
        seq: int,
        ops: list[tuple[bytes, bytes | None]],
        logs: list[tuple[bytes, bytes]],
        notes: list[Note],
    ) -> tuple[int, int, int]:
        """The C function, given the layout constants (:data:`STAGE_LAYOUT`)."""
        return stage(items, seq, ops, logs, notes, STAGE_LAYOUT)

    # The per-record reads call the C directly (no wrapper: one call per get); it calls
    # back the references for every case it leaves to them.
    ext.reads_setup(READS_LAYOUT, cbor2.loads, _lww_value, _scan_item, SKIP, UNHANDLED)
    impl = Impl(
        "c",
        ext.blake2b,
        ext.position,
        ext.fold,
        ext.sort_index,
        ext.bucket_ops,
        lww_run,
        stage_records,
        ext.fill_batch,
        ext.cbor_item_end,
        ext.lww_value,
        ext.point_value,
        ext.scan_item,
        ext.bind_get,
    )
    return impl, "speedups: compiled"


COMPILED, DESCRIPTION = _load()
"""The compiled implementation, or None (not built, or the pure path was asked for)."""
ACTIVE = COMPILED or PURE
"""The implementation the functions below are."""

blake2b = ACTIVE.blake2b
"""``blake2b(data, digest_size=64)``: BLAKE2b without key, salt or personalisation
(RFC 7693), a ``digest_size``-byte digest (1-64)."""
position = ACTIVE.position
"""``position(key)``: the 8-byte big-endian position of an encoded key (BLAKE2b with an
8-byte digest; :func:`crdt_kv.fingerprint.position_bytes`)."""
fold = ACTIVE.fold
"""``fold(notes, counts, sums, added, removed, prefix, shift) -> touched``: for each note
``(key, delta, dc)``, with ``p`` the key's :func:`position` and ``b`` its bucket (the
position's top bits: ``int(p) >> shift``): add ``delta`` to ``sums[b]`` and ``dc`` to
``counts[b]``, and append ``prefix + p + key`` to ``added`` if ``dc > 0``, to ``removed``
if ``dc < 0``; then reduce each touched sum mod 2**256. Returns the touched buckets, each
once, in no particular order. ``counts`` and ``sums`` are changed in place."""
sort_index = ACTIVE.sort_index
"""``sort_index(items) -> list[bytes]``: ``sorted(items)`` for bytes items (the compiled
twin radix-sorts on the first 8 bytes: index keys start with a hashed position)."""
bucket_ops = ACTIVE.bucket_ops
"""``bucket_ops(keys, counts, sums, touched) -> ops``: for each touched bucket ``b`` in
ascending order, ``(keys[b], pack_bucket(counts[b], sums[b]))``, or ``(keys[b], None)`` if
``counts[b]`` is 0: the ``f`` entries of a checkpoint
(:func:`crdt_kv.layout_fingerprints.pack_bucket`)."""
lww_run = ACTIVE.lww_run
"""``lww_run(buf, pos, count, base, peers) -> (entries, end)``: up to ``count`` plain LWW
rows of a batch frame ``buf`` (bytes) from offset ``pos``, as :class:`RawEntry` objects,
and the offset after the last one taken; it stops, without raising, before the first row
that is not plain (the caller's checking decoder takes that one). ``0 <= base < 2**48``
is the batch's base wall time and ``peers`` its peer ids."""
stage_records = ACTIVE.stage_records
"""``stage_records(items, seq, ops, logs, notes) -> (last seq, digest delta sum, live-count
delta sum)``: :func:`crdt_kv.layout.stage_records` (the reference: a commit's records,
change-log keys, digest deltas and bucket notes, appended to the three lists). The twin
accepts only ``(key, body, old)`` tuples of bytes (``old`` may be None) and a ``seq`` in
``[0, 2**64)``, raising TypeError or OverflowError where the pure loop raises something
else for such inputs; a malformed ``old`` raises the same :class:`CorruptionError`, after
the same items were appended."""
fill_batch = ACTIVE.fill_batch
"""``fill_batch(ops, put, delete[, family, prefix])``: ``delete(k)`` for each ``(k, None)``
of ``ops`` and ``put(k, v)`` for each other ``(k, v)``, in order (a backend's write batch;
the compiled twin makes the calls without a Python loop); with ``prefix`` (a byte value),
a bytes key starting with that byte gets ``put(k, v, family)`` or ``delete(k, family)``
instead (the RocksDB backend's records, in a column family of their own). An exception
from a call stops it there.
The twin reads all of ``ops`` before the first call and refuses an op that is not a
pair with ValueError or TypeError, as unpacking it does."""
cbor_item_end = ACTIVE.cbor_item_end
"""``cbor_item_end(data) -> int``: the offset just past the first CBOR item of ``data``
(bytes), or -1 if it does not start with one well-formed item nested at most
:data:`~crdt_kv.layout_reads.SCAN_DEPTH` deep
(:func:`crdt_kv.layout_reads.cbor_item_end`)."""
lww_value = ACTIVE.lww_value
"""``lww_value(blob, key, default)``: ``Store.get``'s value of a stored record, values in
``cbor`` (:func:`crdt_kv.layout_reads.lww_value`, which the twin calls for every record
but a well-formed format-1 one whose value is exactly one item that ``cbor2.loads``
takes)."""
point_value = ACTIVE.point_value
"""``point_value(get, key, default)``: ``Store.get`` of a plain str key in a store with
utf-8 keys and ``cbor`` values, the read through ``get`` included, or
:data:`~crdt_kv.layout_reads.UNHANDLED` for any other key
(:func:`crdt_kv.layout_reads.point_value`)."""
scan_item = ACTIVE.scan_item
"""``scan_item(k, blob, what, utf8_keys)``: a range read's item of one record
(:func:`crdt_kv.layout_reads.scan_item`, which the twin calls for every record but a
well-formed format-1 one with an ASCII peer id, a key that decodes and, unless ``what``
is KEYS, a value that is exactly one item ``cbor2.loads`` takes)."""
bind_get = ACTIVE.bind_get
"""``bind_get(writer, backend, fallback) -> get``: a store's ``get``, where ``fallback``
is the store's own (bound) Python ``get``. The compiled twin reads ``get(key)`` and
``get(key, default)`` of a plain str key itself while ``writer.closed`` is false, as
:func:`point_value` through ``backend.point_get`` (looked up per call), with no Python
frame, and hands every other call, and every key :func:`point_value` leaves, to
``fallback`` with the caller's own arguments; the pure one is ``fallback``."""
