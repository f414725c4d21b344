"""Encodings of keys and values, and the on-disk record layout.

Key encodings: ``utf-8`` (``str`` keys) and ``binary`` (``bytes`` keys). Value encodings:
``binary``, ``utf-8``, ``json`` and ``cbor`` (the default). Every encoder raises
:class:`EncodingError` *before* anything is written, so a value the encoding cannot hold
leaves the store untouched.

Storage layout (format version 1, see ``spec/data-model.md``): the store keeps an ordered
bytes map with one-byte namespaces: ``d`` + key -> record, ``l`` + seq -> log entry,
``c`` + remote -> cursor, ``m`` + name -> metadata.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import struct
from collections.abc import Callable
from typing import Any

import cbor2

from crdt_kv.errors import ConfigError, CorruptionError, EncodingError
from crdt_kv.version import RawEntry

__all__ = [
    "FORMAT_VERSION",
    "KEY_ENCODINGS",
    "MAX_KEY_BYTES",
    "MAX_NESTING",
    "MAX_VALUE_BYTES",
    "VALUE_ENCODINGS",
    "key_codec",
    "value_codec",
]

FORMAT_VERSION = 1

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]

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


def _kenc_utf8(v: Any) -> bytes:
    return _key_size(_utf8(v))


def _dec_utf8(b: bytes) -> str:
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
            _dec_cbor(b)
        except EncodingError as exc:
            raise EncodingError(f"value holds a CBOR tag that does not decode: {exc}") from exc
    return _value_size(b)


_FAST_DECODE_BYTES = 1024


def _dec_cbor(b: bytes) -> Any:
    if len(b) <= _FAST_DECODE_BYTES:
        # Fast path for small values (every read decodes one): ``loads`` skips the file
        # object, and a value that re-encodes to exactly ``b`` was a single item with no
        # trailing bytes. Anything else, errors included, takes the checked path below.
        try:
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
    "utf-8": (_enc_utf8, _dec_utf8),
    "json": (_enc_json, _dec_json),
    "cbor": (_enc_cbor, _dec_cbor),
}
KEY_ENCODINGS: dict[str, tuple[Encoder, Decoder]] = {
    "utf-8": (_kenc_utf8, _dec_utf8),
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


# --- storage layout -------------------------------------------------------------------

DATA = b"d"
DATA_END = b"e"
LOG = b"l"
LOG_END = b"m"
CURSOR = b"c"
CURSOR_END = b"d"
META = b"m"

_RECORD = struct.Struct(">BBQB")  # format, flags, hlc, len(peer); then peer, value, seq
_FLAG_DELETED = 1
_SEQ = struct.Struct(">Q")
_TRAILER = struct.Struct(">BQ32sQ")  # kind=1, live count, digest, hlc high-water mark
_LOG_PLAIN = b"\x00"
_LOG_HAS_TRAILER = 1
_LOG_HAS_SOURCE = 2
_SOURCE = struct.Struct(">I")
_KEYLEN = struct.Struct(">I")
RECORD_HEAD = _RECORD.size


def log_key(seq: int) -> bytes:
    """The storage key of change-log position ``seq``."""
    return LOG + _SEQ.pack(seq)


def seq_of_log_key(k: bytes) -> int:
    """The sequence number in a change-log key (``CorruptionError`` if malformed)."""
    try:
        return int(_SEQ.unpack_from(k, 1)[0])
    except struct.error:
        raise CorruptionError(f"malformed change-log key {k!r}") from None


def record_body(hlc: int, peer_b: bytes, deleted: bool, value: bytes) -> bytes:
    """The replica-independent part of a record: everything but the local ``seq``.

    A stored record is ``body + seq`` (8 bytes, big-endian). Keeping the body contiguous
    lets the digest hash it as it lies on disk, and puts the old log key at ``record[-8:]``.
    """
    return _RECORD.pack(FORMAT_VERSION, _FLAG_DELETED if deleted else 0, hlc, len(peer_b)) + (
        peer_b + value
    )


def pack_record(hlc: int, seq: int, peer_b: bytes, deleted: bool, value: bytes) -> bytes:
    """Serialise one key's register state."""
    return record_body(hlc, peer_b, deleted, value) + _SEQ.pack(seq)


_BLAKE2B_256 = hashlib.blake2b(digest_size=32)


def body_hash(key: bytes, body: bytes) -> int:
    """Digest contribution of one key's state: blake2b-256 of ``len(key) key body``.

    Copying a fresh hasher is cheaper than configuring a new one (every commit hashes).
    """
    h = _BLAKE2B_256.copy()
    h.update(_KEYLEN.pack(len(key)) + key + body)
    return int.from_bytes(h.digest(), "big")


def record_is_deleted(blob: bytes) -> bool:
    return bool(blob[1] & _FLAG_DELETED)


def record_value(blob: bytes) -> bytes:
    """The encoded value inside a record (no validation: the caller checks the format)."""
    return blob[RECORD_HEAD + blob[RECORD_HEAD - 1] : -8]


def unpack_record(key: bytes, blob: bytes) -> RawEntry:
    """Parse a record stored under data key ``key`` (without the namespace byte)."""
    try:
        fmt, flags, hlc, plen = _RECORD.unpack_from(blob)
    except struct.error as exc:
        raise CorruptionError(f"record of key {key!r} is truncated") from exc
    if fmt != FORMAT_VERSION:
        raise CorruptionError(f"record of key {key!r} has unknown format {fmt}")
    start = RECORD_HEAD
    if len(blob) < start + plen + 8:
        raise CorruptionError(f"record of key {key!r} is truncated")
    try:
        peer = blob[start : start + plen].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptionError(f"record of key {key!r} has a corrupt peer id") from exc
    seq = int(_SEQ.unpack_from(blob, len(blob) - 8)[0])
    return RawEntry(key, blob[start + plen : -8], hlc, peer, bool(flags & _FLAG_DELETED), seq)


def pack_log(key: bytes, trailer: tuple[int, int, int] | None, source: int = 0) -> bytes:
    """Serialise a log entry; the last entry of every commit carries the store's state.

    ``trailer`` is ``(live_count, digest, hlc_high_water)``: reading it from the newest log
    entry on open restores those counters in O(1) with no extra write per commit.
    ``source`` (0 = a local write) numbers the remote peer incarnation the entry was applied
    from, so replication never echoes an entry back to the replica that sent it.
    """
    if trailer is None and not source:
        return _LOG_PLAIN + key
    kind = (_LOG_HAS_TRAILER if trailer is not None else 0) | (_LOG_HAS_SOURCE if source else 0)
    out = bytes([kind])
    if trailer is not None:
        count, digest, hlc = trailer
        out += _TRAILER.pack(1, count, digest.to_bytes(32, "big"), hlc)[1:]
    if source:
        out += _SOURCE.pack(source)
    return out + key


def _log_parts(blob: bytes) -> tuple[bytes, tuple[int, int, int] | None, int]:
    if not blob:
        raise CorruptionError("empty change-log entry")
    kind = blob[0]
    if kind == 0:
        return blob[1:], None, 0
    if kind > _LOG_HAS_TRAILER | _LOG_HAS_SOURCE:
        raise CorruptionError(f"change-log entry of unknown kind {kind}")
    pos = 1
    trailer = None
    try:
        if kind & _LOG_HAS_TRAILER:
            _, count, digest, hlc = _TRAILER.unpack_from(blob)
            trailer = (count, int.from_bytes(digest, "big"), hlc)
            pos = _TRAILER.size
        source = 0
        if kind & _LOG_HAS_SOURCE:
            (source,) = _SOURCE.unpack_from(blob, pos)
            pos += _SOURCE.size
    except struct.error as exc:
        raise CorruptionError("malformed change-log entry") from exc
    return blob[pos:], trailer, source


def unpack_log(blob: bytes) -> tuple[bytes, tuple[int, int, int] | None]:
    """Parse a log entry into ``(key, trailer or None)``."""
    key, trailer, _ = _log_parts(blob)
    return key, trailer


def unpack_log_source(blob: bytes) -> tuple[bytes, int]:
    """Parse a log entry into ``(key, source id)``; 0 means a local write."""
    key, _, source = _log_parts(blob)
    return key, source


def pack_source(peer: str, incarnation: bytes) -> bytes:
    """Meta value naming a source id: ``len(peer) peer incarnation``."""
    pb = peer.encode("utf-8")
    return bytes([len(pb)]) + pb + incarnation


def unpack_source(blob: bytes) -> tuple[str, bytes]:
    """Parse a source-id meta value into ``(peer, incarnation)``."""
    return _peer_and_rest(blob, 0, "source id")


def _peer_and_rest(blob: bytes, pos: int, what: str) -> tuple[str, bytes]:
    if len(blob) <= pos or len(blob) < pos + 1 + blob[pos]:
        raise CorruptionError(f"{what} {blob!r} is truncated")
    n = blob[pos]
    try:
        peer = blob[pos + 1 : pos + 1 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptionError(f"{what} {blob!r} has a corrupt peer id") from None
    return peer, blob[pos + 1 + n :]


def pack_u64(n: int) -> bytes:
    return _SEQ.pack(n)


def unpack_u64(b: bytes) -> int:
    if len(b) != 8:
        raise CorruptionError("expected an 8-byte integer")
    return int(_SEQ.unpack(b)[0])


def cursor_key(peer: str, incarnation: bytes) -> bytes:
    """Storage key of the delta-sync cursor for one remote peer incarnation."""
    pb = peer.encode("utf-8")
    return CURSOR + bytes([len(pb)]) + pb + incarnation


def parse_cursor_key(k: bytes) -> tuple[str, bytes]:
    """Parse a cursor storage key into ``(peer, incarnation)``."""
    return _peer_and_rest(k, 1, "cursor key")
