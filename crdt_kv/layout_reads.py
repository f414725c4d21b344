"""The per-record work of the store's reads (issue 13), in pure Python: the reference of
the compiled twins in ``crdt_kv/_speedups_c/reads.c`` (:mod:`crdt_kv.accel` picks one).

- :func:`lww_value`: what ``Store.get`` makes of a stored record (values in ``cbor``), and
  :func:`point_value`: ``Store.get`` of a plain str key (utf-8 keys), the read included;
- :func:`scan_item`: what a range read makes of one ``(storage key, record)``;
- :func:`cbor_item_end`: where the first CBOR item of a buffer ends, from its structure
  alone. The compiled twins use it to tell that a value is exactly one item (trailing
  bytes are corruption, which ``cbor2.loads`` cannot see) before handing the value itself
  to ``loads``, instead of the ``9f value ff`` wrapping :func:`~crdt_kv.codec.decode_cbor`
  does.

The compiled ``lww_value``, ``point_value`` and ``scan_item`` handle the common case only
and call these functions for everything else, so their results and errors are these by
construction.
An extension of :mod:`crdt_kv.layout` (the same byte offsets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cbor2 import loads

from crdt_kv.codec import (
    CBOR_BREAK,
    CBOR_CLOSE_LIST,
    CBOR_OPEN_LIST,
    SHORT_KEY_CHARS,
    decode_cbor,
)
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import (
    DATA,
    DATA_SKIP,
    FLAG_DELETED,
    FORMAT_VERSION,
    MIN_RECORD,
    RECORD_HEAD,
    SEQ_SIZE,
    live_value,
    unpack_record,
)

__all__ = [
    "ITEMS",
    "KEYS",
    "READS_LAYOUT",
    "SCAN_DEPTH",
    "SKIP",
    "UNHANDLED",
    "VALUES",
    "cbor_item_end",
    "lww_value",
    "point_value",
    "scan_item",
]

ITEMS, KEYS, VALUES = 0, 1, 2
"""What :func:`scan_item` returns: a ``(key, value)`` pair, the key, or the value."""
SKIP: Any = object()
""":func:`scan_item` of a tombstone: not an item of the scan."""
UNHANDLED: Any = object()
""":func:`point_value` of a key it does not encode: the store's encoder takes it."""
READS_LAYOUT = (DATA, FORMAT_VERSION, FLAG_DELETED, RECORD_HEAD, SEQ_SIZE, SHORT_KEY_CHARS)
"""What the compiled twins are built for (their offsets are constants); accel hands it
over at import, and they refuse any other."""
SCAN_DEPTH = 64
"""Deepest container nesting :func:`cbor_item_end` follows (a deeper item is -1, and its
value takes :func:`~crdt_kv.codec.decode_cbor`, which decodes up to 400 levels)."""

_ARG_BYTES = (0,) * 24 + (1, 2, 4, 8)


def cbor_item_end(data: bytes) -> int:
    """The offset just past the first CBOR data item of ``data``, or -1 when ``data`` does
    not start with one well-formed item (RFC 8949 section 3: a reserved or misplaced head,
    a two-byte simple value below 32, a stray break, an odd count of items in an
    indefinite map, a string chunk of another type, a truncation) or the item nests
    containers deeper than :data:`SCAN_DEPTH`. Tags are followed, not interpreted:
    a value whose structure is whole may still be refused by a decoder."""
    end, p = len(data), 0
    stack: list[list[int]] = [[1, 0, 0]]  # per level: items left, indefinite major, odd
    tagged = False
    while True:
        if p >= end:
            return -1
        ib = data[p]
        p += 1
        major, ai = ib >> 5, ib & 31
        if ai == 31:
            top = stack[-1]
            if major == 7:  # a break closes the innermost indefinite container
                if tagged or not top[1] or (top[1] == 5 and top[2]):
                    return -1
                stack.pop()
            elif major in {2, 3}:
                p = _string_chunks(data, p, major)
                if p < 0:
                    return -1
            elif major in {4, 5}:
                if len(stack) > SCAN_DEPTH:
                    return -1
                stack.append([0, major, 0])
                tagged = False
                continue
            else:
                return -1
        else:
            arg, p = _head(data, p, ai)
            if arg < 0:
                return -1
            room = end - p
            if major in {2, 3}:
                if arg > room:
                    return -1
                p += arg
            elif major in {4, 5}:
                if arg > (room if major == 4 else room // 2):
                    return -1
                if arg:
                    if len(stack) > SCAN_DEPTH:
                        return -1
                    stack.append([arg if major == 4 else 2 * arg, 0, 0])
                    tagged = False
                    continue
            elif major == 6:
                tagged = True
                continue
            elif major == 7 and ai == 24 and arg < 32:
                return -1
        tagged = False
        while True:  # one item is complete: count it, closing definite containers
            top = stack[-1]
            if top[1]:
                top[2] ^= 1
                break
            top[0] -= 1
            if top[0]:
                break
            if len(stack) == 1:
                return p
            stack.pop()


def _head(data: bytes, p: int, ai: int) -> tuple[int, int]:
    """The argument of a head with additional information ``ai`` whose bytes start at
    ``p``, and the offset after them; ``(-1, p)`` if reserved, indefinite or cut."""
    if ai < 24:
        return ai, p
    if ai > 27 or p + _ARG_BYTES[ai] > len(data):
        return -1, p
    q = p + _ARG_BYTES[ai]
    return int.from_bytes(data[p:q]), q


def _string_chunks(data: bytes, p: int, major: int) -> int:
    """The offset after the break of an indefinite string of type ``major`` whose chunks
    start at ``p``, or -1 (a chunk of another type or indefinite, or a truncation)."""
    while p < len(data):
        ib = data[p]
        p += 1
        if ib == 0xFF:
            return p
        n, p = _head(data, p, ib & 31)
        if ib >> 5 != major or n < 0 or n > len(data) - p:
            return -1
        p += n
    return -1


def lww_value(blob: bytes, key: object, default: Any) -> Any:
    """The decoded live value of a stored record ``blob`` (values in ``cbor``), or
    ``default`` for a tombstone. ``key`` names the key in the :class:`CorruptionError` of
    a malformed record or a value that does not decode (``Store.get``'s errors)."""
    if blob[0] != FORMAT_VERSION or len(blob) < MIN_RECORD:
        v = live_value(blob, key)
        if v is None:
            return default
    elif blob[1] & FLAG_DELETED:
        return default
    else:
        v = blob[RECORD_HEAD + blob[RECORD_HEAD - 1] : -SEQ_SIZE]
    if CBOR_BREAK not in v:  # decode_cbor's first path, inlined
        try:
            (value,) = loads(CBOR_OPEN_LIST + v + CBOR_CLOSE_LIST)
            return value
        except Exception:  # decode_cbor's other paths decide
            pass
    try:
        return decode_cbor(v)
    except EncodingError as exc:
        raise CorruptionError(f"stored value of key {key!r} does not decode: {exc}") from exc


def point_value(get: Callable[[bytes], bytes | None], key: object, default: Any) -> Any:
    """``Store.get(key, default)`` of a store with utf-8 keys and ``cbor`` values, reading
    through ``get`` (the backend's ``point_get``): ``get`` of ``DATA`` plus the key's
    UTF-8, then :func:`lww_value`. :data:`UNHANDLED` without reading when ``key`` is not
    a ``str`` of at most ``SHORT_KEY_CHARS`` characters that encodes (those take the
    store's key encoder, which also says what is wrong with a key)."""
    if type(key) is not str or len(key) > SHORT_KEY_CHARS:
        return UNHANDLED
    try:
        k = key.encode()
    except UnicodeEncodeError:
        return UNHANDLED
    blob = get(DATA + k)
    return default if blob is None else lww_value(blob, key, default)


def scan_item(k: bytes, blob: bytes, what: int, utf8_keys: bool) -> Any:
    """What a range read yields for the record ``blob`` stored under data key ``k``
    (namespace byte included): ``(key, value)``, the key or the value (``what``: ITEMS,
    KEYS, VALUES; only ITEMS and VALUES decode the value, as ``cbor``), or :data:`SKIP`
    for a tombstone. Keys decode as UTF-8 if ``utf8_keys``, else stay bytes.

    A malformed record raises :func:`~crdt_kv.layout.unpack_record`'s
    :class:`CorruptionError`; a key or value that does not decode raises one naming the
    key (the errors of ``Store.items`` and friends)."""
    try:
        r = unpack_record(k, blob, DATA_SKIP)
        if r.deleted:
            return SKIP
        key: Any = None
        if what != VALUES:
            key = k[DATA_SKIP:].decode() if utf8_keys else k[DATA_SKIP:]
            if what == KEYS:
                return key
        value = decode_cbor(r.value)
    except (EncodingError, UnicodeDecodeError) as exc:
        why = f"bytes are not valid utf-8: {exc}" if type(exc) is UnicodeDecodeError else exc
        raise CorruptionError(
            f"stored record of key {k[DATA_SKIP:]!r} does not decode: {why}"
        ) from exc
    return (key, value) if what == ITEMS else value
