"""Encodings of keys and values.

Key encodings: ``utf-8`` (``str`` keys) and ``binary`` (``bytes`` keys). Value encodings:
``binary``, ``utf-8``, ``json`` and ``cbor`` (the default). Every encoder raises
:class:`EncodingError` *before* anything is written, so a value the encoding cannot hold
leaves the store untouched.

The on-disk layout (records, change-log entries, cursors, metadata keys) lives in
:mod:`crdt_kv.layout`; the layout names below are re-exported from there for callers that
still reach them as ``codec.<name>``.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable
from typing import Any

import cbor2

from crdt_kv.errors import ConfigError, EncodingError
from crdt_kv.layout import (  # re-exported: the layout's old home
    DATA,
    FORMAT_VERSION,
    body_hash,
    cursor_key,
    log_key,
    pack_log,
    pack_record,
    pack_source,
    pack_u64,
    parse_cursor_key,
    record_body,
    seq_of_log_key,
    unpack_log,
    unpack_log_source,
    unpack_record,
    unpack_source,
    unpack_u64,
)

__all__ = [
    "CBOR_BREAK",
    "CBOR_CLOSE_LIST",
    "CBOR_OPEN_LIST",
    "DATA",
    "FORMAT_VERSION",
    "KEY_ENCODINGS",
    "MAX_KEY_BYTES",
    "MAX_NESTING",
    "MAX_VALUE_BYTES",
    "SHORT_KEY_CHARS",
    "VALUE_ENCODINGS",
    "body_hash",
    "plain_string",
    "cursor_key",
    "decode_cbor",
    "decode_utf8",
    "key_codec",
    "log_key",
    "pack_log",
    "pack_record",
    "pack_source",
    "pack_u64",
    "parse_cursor_key",
    "record_body",
    "seq_of_log_key",
    "short_repr",
    "unpack_log",
    "unpack_log_source",
    "unpack_record",
    "unpack_source",
    "unpack_u64",
    "value_codec",
]


Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]

SHORT_REPR_CHARS = 64
"""How much of an oversized key or value an error message shows."""


def short_repr(obj: object, limit: int = SHORT_REPR_CHARS) -> str:
    """``repr(obj)``, cut to ``limit`` characters plus its size when longer.

    Error messages name the key they are about; a megabyte key must not become a
    megabyte message (or a line a terminal chokes on).
    """
    text = repr(obj)
    if len(text) <= limit:
        return text
    if isinstance(obj, str):
        size = f"{len(obj.encode('utf-8', 'surrogatepass'))} bytes"
    elif isinstance(obj, bytes | bytearray | memoryview):
        size = f"{len(obj)} bytes"
    else:
        size = f"{len(text)} characters"
    return f"{text[:limit]}... ({size})"


MAX_KEY_BYTES = 64 * 1024
"""Largest encoded key. Keys are repeated in the log, the digest input and every batch."""

MAX_VALUE_BYTES = 4 * 1024 * 1024
"""Largest encoded value. A replica must be able to ship any value it accepted in one
protocol frame (8 MiB by default), or replication from it would stall on that entry forever;
so ``put`` refuses bigger values up front, as values the encoding cannot hold."""

MAX_NESTING = 400
"""Deepest container nesting a ``json`` or ``cbor`` value may have. cbor2 decodes at most
this depth (and its C encoder overflows the C stack, killing the process, on very deep
input), so deeper values are refused before encoding, as values the encoding cannot hold."""

_CONTAINERS = (list, tuple, dict, set, frozenset, cbor2.CBORTag)
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _check_shape(v: Any, json_keys: bool) -> bool:
    """Refuse nesting beyond :data:`MAX_NESTING` and, for JSON (``json_keys``), non-string
    object keys (``json`` would silently turn ``{1: 2}`` into ``{"1": 2}``, so the value
    read back would differ from the value written). Flat values take a fast path.

    Returns True when the value holds a :class:`cbor2.CBORTag`: cbor2 encodes malformed
    tags that it then refuses to decode, so such values must be checked by a round trip."""
    t = type(v)
    if t in _SCALARS:
        return False
    if t is dict:
        for k, c in v.items():
            if type(c) not in _SCALARS or (
                type(k) is not str and (json_keys or type(k) not in _SCALARS)
            ):
                break
        else:
            return False
    elif t is list or t is tuple:
        for c in v:
            if type(c) not in _SCALARS:
                break
        else:
            return False
    elif not isinstance(v, _CONTAINERS):
        return False
    return _walk(v, json_keys)


def _walk(v: Any, json_keys: bool) -> bool:
    tagged = False
    seen: dict[int, int] = {}
    stack: list[tuple[Any, int]] = [(v, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_NESTING:
            raise EncodingError(f"value nests containers deeper than {MAX_NESTING} levels")
        if seen.get(id(x), 0) >= depth:
            continue  # shared substructure already checked at this depth or deeper
        seen[id(x)] = depth
        children: Any
        if isinstance(x, dict):
            if json_keys:
                for k in x:
                    if not isinstance(k, str):
                        raise EncodingError(
                            f"JSON object keys must be str, not {type(k).__name__} ({k!r})"
                        )
            children = itertools.chain(x.keys(), x.values())
        elif isinstance(x, cbor2.CBORTag):
            tagged = True
            children = (x.value,)
        else:
            children = x
        for c in children:
            if isinstance(c, _CONTAINERS):
                stack.append((c, depth + 1))
    return tagged


def _value_size(b: bytes) -> bytes:
    if len(b) > MAX_VALUE_BYTES:
        raise EncodingError(
            f"encoded value is {len(b)} bytes; the limit is {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)"
        )
    return b


def _binary(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    raise EncodingError(f"binary encoding holds bytes, not {type(v).__name__}")


def _utf8(v: Any) -> bytes:
    if not isinstance(v, str):
        raise EncodingError(f"utf-8 encoding holds str, not {type(v).__name__}")
    try:
        return v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError(f"string is not encodable as utf-8: {exc}") from exc


def _enc_binary(v: Any) -> bytes:
    return _value_size(_binary(v))


def _enc_utf8(v: Any) -> bytes:
    return _value_size(_utf8(v))


def _key_size(b: bytes) -> bytes:
    if len(b) > MAX_KEY_BYTES:
        raise EncodingError(
            f"encoded key is {len(b)} bytes; the limit is {MAX_KEY_BYTES} (MAX_KEY_BYTES)"
        )
    return b


def _kenc_binary(v: Any) -> bytes:
    return _key_size(_binary(v))


SHORT_KEY_CHARS = MAX_KEY_BYTES // 4
"""A str this short encodes within MAX_KEY_BYTES (utf-8 takes at most 4 bytes a char)."""


def _kenc_utf8(v: Any) -> bytes:
    if type(v) is str and len(v) <= SHORT_KEY_CHARS:
        # Every put and get encodes a key: skip the helpers when no check can fail but
        # the encoding itself (lone surrogates), which the checked path reports.
        try:
            return v.encode("utf-8")
        except UnicodeEncodeError:
            pass
    return _key_size(_utf8(v))


def decode_utf8(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncodingError(f"bytes are not valid utf-8: {exc}") from exc


def _enc_json(v: Any) -> bytes:
    _check_shape(v, True)
    try:
        b = json.dumps(v, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodingError(f"value is not JSON-encodable: {exc}") from exc
    return _value_size(b)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dec_json(b: bytes) -> Any:
    try:
        return json.loads(b, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EncodingError(f"bytes are not valid JSON: {exc}") from exc


def _enc_cbor(v: Any) -> bytes:
    tagged = _check_shape(v, False)
    try:
        b = cbor2.dumps(v)
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise EncodingError(f"value is not CBOR-encodable: {exc}") from exc
    if tagged:
        try:
            decode_cbor(b)
        except EncodingError as exc:
            raise EncodingError(f"value holds a CBOR tag that does not decode: {exc}") from exc
    if len(b) > MAX_VALUE_BYTES:
        _value_size(b)  # raises
    return b


_FAST_DECODE_BYTES = 1024
CBOR_BREAK = 0xFF
CBOR_OPEN_LIST = b"\x9f"
CBOR_CLOSE_LIST = b"\xff"
"""The break byte, and the head and end of an indefinite-length array: see
:func:`decode_cbor` (the store's range reads inline its first fast path)."""


def plain_string(b: bytes) -> bool:
    """Whether ``b`` is exactly one definite-length CBOR byte string, or text string of
    ASCII characters, with a head of one or two bytes (up to 255 bytes long).

    :func:`decode_cbor` accepts every such ``b`` (ASCII is valid UTF-8), so a caller that
    only needs to know that ``b`` decodes may skip decoding it; a remote apply checks a
    batch's values this way (most values are short strings). False says nothing: decode
    ``b`` to find out."""
    if not b:
        return False
    h = b[0]
    if 0x40 <= h < 0x58 or 0x60 <= h < 0x78:
        size = 1 + (h & 31)
    elif (h in {0x58, 0x78}) and len(b) > 1:
        size = 2 + b[1]
    else:
        return False
    return len(b) == size and (h < 0x60 or b.isascii())


def decode_cbor(b: bytes) -> Any:
    """Decode ``b`` as exactly one CBOR item: trailing bytes are an :class:`EncodingError`.

    ``cbor2.loads`` ignores what follows the first item, so it cannot check that alone; but
    every read decodes a value, so two fast paths come first. When ``b`` holds no ``0xff``
    byte, it is decoded inside an indefinite-length array, ``9f b ff``: the only break byte
    is then the closing one, so the array holds exactly one element iff ``b`` is exactly one
    well-formed item, and that element is the item. Otherwise a small value that re-encodes
    to exactly ``b`` was a single item with no trailing bytes. Anything else, errors
    included, takes the checked path (a file object, and its position after the item).
    """
    try:
        if CBOR_BREAK not in b:
            (value,) = cbor2.loads(CBOR_OPEN_LIST + b + CBOR_CLOSE_LIST)
            return value
        if len(b) <= _FAST_DECODE_BYTES:
            value = cbor2.loads(b)
            if cbor2.dumps(value) == b:
                return value
    except Exception:  # the checked path below reports it
        pass
    try:
        fp = io.BytesIO(b)
        value = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise EncodingError(f"bytes are not valid CBOR: {exc}") from exc
    if fp.tell() != len(b):
        raise EncodingError(f"{len(b) - fp.tell()} trailing bytes after the CBOR value")
    return value


def _identity(b: bytes) -> bytes:
    return b


VALUE_ENCODINGS: dict[str, tuple[Encoder, Decoder]] = {
    "binary": (_enc_binary, _identity),
    "utf-8": (_enc_utf8, decode_utf8),
    "json": (_enc_json, _dec_json),
    "cbor": (_enc_cbor, decode_cbor),
}
KEY_ENCODINGS: dict[str, tuple[Encoder, Decoder]] = {
    "utf-8": (_kenc_utf8, decode_utf8),
    "binary": (_kenc_binary, _identity),
}


def value_codec(name: str) -> tuple[Encoder, Decoder]:
    """Return ``(encode, decode)`` for a value encoding name."""
    try:
        return VALUE_ENCODINGS[name]
    except KeyError:
        raise ConfigError(
            f"unknown value_encoding {name!r}; available: {', '.join(sorted(VALUE_ENCODINGS))}"
        ) from None


def key_codec(name: str) -> tuple[Encoder, Decoder]:
    """Return ``(encode, decode)`` for a key encoding name."""
    try:
        return KEY_ENCODINGS[name]
    except KeyError:
        raise ConfigError(
            f"unknown key_encoding {name!r}; available: {', '.join(sorted(KEY_ENCODINGS))}"
        ) from None
