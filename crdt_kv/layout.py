"""The on-disk layout, storage formats 1 and 2 (``spec/data-model.md`` sections 8, 16.9
and 17): the only module that knows byte offsets and struct formats.

The store keeps an ordered bytes map with one-byte namespaces: ``d`` + key -> record,
``l`` + seq -> change-log entry, ``c`` + remote -> cursor, ``m`` + name -> metadata. A
record is ``body + seq`` where the body (format, flags, hlc, peer, value) is replica
independent; a change-log entry names the key and, on the last entry of each commit,
carries the trailer (live count, digest, HLC high-water mark).

Everything here is pure byte packing: changing any of it changes the format, which the
spec vectors (``spec/vectors/core-*.json``) pin byte for byte.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import cbor2

from crdt_kv.errors import CorruptionError
from crdt_kv.layout_siblings import (
    FORMAT_SIBLINGS,
    MAX_SIBLING_PEERS,
    MAX_SIBLINGS,
    head_value,
    pack_put,
    pack_siblings,
    pack_single,
    siblings_context,
    sole_dot,
    unpack_siblings,
)
from crdt_kv.version import RawEntry

__all__ = [
    "CURSOR",
    "CURSOR_END",
    "DATA",
    "DATA_END",
    "DATA_SKIP",
    "FLAG_DELETED",
    "MIN_RECORD",
    "SEQ_SIZE",
    "FORMAT_SIBLINGS",
    "MAX_SIBLINGS",
    "MAX_SIBLING_PEERS",
    "HISTORY",
    "KEYLEN_SIZE",
    "HISTORY_END",
    "MEMBERS",
    "MEMBERS_END",
    "pack_member",
    "unpack_member",
    "history_bound",
    "history_key",
    "history_value",
    "unpack_history",
    "FORMAT_VERSION",
    "LOG",
    "LOG_END",
    "META",
    "RECORD_HEAD",
    "body_hash",
    "cursor_key",
    "digest_bytes",
    "live_value",
    "log_key",
    "log_key_and_source",
    "log_prefix",
    "log_stop",
    "pack_log",
    "pack_record",
    "pack_put",
    "pack_siblings",
    "siblings_context",
    "pack_single",
    "pack_source",
    "pack_u64",
    "pack_cursor",
    "parse_cursor_key",
    "unpack_cursor",
    "record_body",
    "record_is_deleted",
    "record_value",
    "seal_record",
    "sole_dot",
    "seq_of_log_key",
    "source_key",
    "source_of_key",
    "stage_record",
    "stage_records",
    "trailer_log",
    "unpack_log",
    "unpack_log_source",
    "unpack_record",
    "unpack_record_at",
    "unpack_source",
    "unpack_u64",
]

FORMAT_VERSION = 1
"""Store format of an ``lww`` store, and the format byte of its records."""
_SIBLINGS_BYTE = bytes([FORMAT_SIBLINGS])

DATA = b"d"
DATA_END = b"e"
DATA_SKIP = len(DATA)
"""Bytes before the user key in a data-namespace storage key."""
LOG = b"l"
LOG_END = b"m"
CURSOR = b"c"
CURSOR_END = b"d"
META = b"m"
HISTORY = b"h"
HISTORY_END = b"i"
MEMBERS = b"g"
MEMBERS_END = b"h"
"""``g`` + peer id -> CBOR ``[v, seen_ms, reported_d, forgotten_ms]`` (membership)."""

META_FORMAT = META + b"format"
META_PEER = META + b"peer"
META_INCARNATION = META + b"incarnation"
META_KEY_ENCODING = META + b"key_encoding"
META_VALUE_ENCODING = META + b"value_encoding"
META_OPEN = META + b"open"
"""Present while the store is open (its value names the boot); absent after a clean close."""
META_CONFLICTS = META + b"conflicts"
"""``siblings`` in a store created in that mode; absent in an ``lww`` store (format 1)."""
META_BACKEND = META + b"backend"
"""The name of the backend that created the store (absent in stores created before it was
recorded); opening the store with another backend is refused."""
META_SOURCE = META + b"src:"
META_SOURCE_END = META + b"src;"

_RECORD = struct.Struct(">BBQB")  # format, flags, hlc, len(peer); then peer, value, seq
_FLAG_DELETED = 1
FLAG_DELETED = _FLAG_DELETED
"""Bit of a record's flags byte (``blob[1]``) marking a tombstone."""
_SEQ = struct.Struct(">Q")
_SEQ_SIZE = _SEQ.size
SEQ_SIZE = _SEQ_SIZE
"""Bytes of the local ``seq`` that ends every stored record."""
_TRAILER = struct.Struct(">BQ32sQ")  # kind=1, live count, digest, hlc high-water mark
_LOG_PLAIN = b"\x00"
_LOG_HAS_TRAILER = 1
_LOG_HAS_SOURCE = 2
_SOURCE = struct.Struct(">I")
_KEYLEN = struct.Struct(">I")
KEYLEN_SIZE = _KEYLEN.size  # the key length before the key in every digested record
_LOG_KEY_SIZE = len(LOG) + _SEQ_SIZE
RECORD_HEAD = _RECORD.size
"""Bytes of a format-1 record before its peer id; ``blob[RECORD_HEAD - 1]`` is the peer
id's length. The hot read paths slice records with these names instead of calling
:func:`live_value` (see it for the layout)."""
_MIN_RECORD = RECORD_HEAD + _SEQ_SIZE
MIN_RECORD = _MIN_RECORD
"""Shortest record the read paths slice: a head and a seq (a well-formed one also has a
peer id of at least one byte, which only the full parse checks)."""
_MAX_SEQ = (1 << 64) - 1


def pack_u64(n: int) -> bytes:
    return _SEQ.pack(n)


def unpack_u64(b: bytes) -> int:
    if len(b) != _SEQ_SIZE:
        raise CorruptionError("expected an 8-byte integer")
    return int(_SEQ.unpack(b)[0])


def digest_bytes(digest: int) -> bytes:
    """The 32-byte big-endian form of the store digest (as stored in the trailer)."""
    return digest.to_bytes(32, "big")


# --- records ---------------------------------------------------------------------------


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


def seal_record(body: bytes, seq: int) -> tuple[bytes, bytes]:
    """``(stored record, change-log key)`` of a record body committed at ``seq``."""
    sb = _SEQ.pack(seq)
    return body + sb, LOG + sb


def stage_record(
    key: bytes, body: bytes, old: bytes | None, seq: int
) -> tuple[bytes | None, bytes, bytes, int, int]:
    """What a commit writing record ``body`` of ``key`` at ``seq`` over the stored record
    ``old`` (None if the key has none) needs: ``(old change-log key to delete or None,
    stored record, change-log key, digest delta, live-count delta)``.

    The digest delta is the new body's hash minus the old one's (the caller reduces the
    sum mod 2**256). Raises :class:`CorruptionError` if ``old`` is malformed, before
    anything is written. ``body_hash`` is inlined: every commit takes this path.
    """
    sb = _SEQ.pack(seq)
    h = _BLAKE2B_256.copy()
    h.update(_KEYLEN.pack(len(key)) + key + body)
    delta = int.from_bytes(h.digest(), "big")
    live = 0 if body[1] & _FLAG_DELETED else 1
    if old is None:
        return None, body + sb, LOG + sb, delta, live
    if len(old) < _MIN_RECORD or not FORMAT_VERSION <= old[0] <= FORMAT_SIBLINGS:
        raise CorruptionError(f"record of key {key!r} is malformed")
    h = _BLAKE2B_256.copy()
    h.update(_KEYLEN.pack(len(key)) + key + old[:-_SEQ_SIZE])
    delta -= int.from_bytes(h.digest(), "big")
    if not old[1] & _FLAG_DELETED:
        live -= 1
    return LOG + old[-_SEQ_SIZE:], body + sb, LOG + sb, delta, live


def stage_records(
    items: Iterable[tuple[bytes, bytes, bytes | None]],
    seq: int,
    ops: list[tuple[bytes, bytes | None]],
    logs: list[tuple[bytes, bytes]],
    notes: list[tuple[bytes, int, int]],
) -> tuple[int, int, int]:
    """:func:`stage_record` of each ``(key, body, old)`` of ``items`` at ``seq + 1``,
    ``seq + 2``, ... in one loop (a remote apply commits a thousand at a time): appends
    to ``ops`` each key's old change-log delete (if any) then its record put, to ``logs``
    its ``(change-log key, key)`` and to ``notes`` its ``(key, digest delta, new key)``.
    Returns ``(last seq, digest delta sum, live-count delta sum)``. Raises
    :class:`CorruptionError` for a malformed ``old`` as :func:`stage_record` does."""
    add, add_log, note = ops.append, logs.append, notes.append
    pack, klen, blake, from_bytes = _SEQ.pack, _KEYLEN.pack, _BLAKE2B_256.copy, int.from_bytes
    digest = count = 0
    for key, body, old in items:
        seq += 1
        sb = pack(seq)
        h = blake()
        h.update(klen(len(key)) + key + body)
        delta = from_bytes(h.digest(), "big")
        live = 0 if body[1] & _FLAG_DELETED else 1
        if old is None:
            note((key, delta, True))
        else:
            if len(old) < _MIN_RECORD or not FORMAT_VERSION <= old[0] <= FORMAT_SIBLINGS:
                raise CorruptionError(f"record of key {key!r} is malformed")
            h = blake()
            h.update(klen(len(key)) + key + old[:-_SEQ_SIZE])
            delta -= from_bytes(h.digest(), "big")
            if not old[1] & _FLAG_DELETED:
                live -= 1
            note((key, delta, False))
            add((LOG + old[-_SEQ_SIZE:], None))
        digest += delta
        count += live
        add((DATA + key, body + sb))
        add_log((LOG + sb, key))
    return seq, digest, count


def record_is_deleted(blob: bytes) -> bool:
    return bool(blob[1] & _FLAG_DELETED)


def record_value(blob: bytes) -> bytes:
    """The encoded value inside a record (no validation: the caller checks the format)."""
    return blob[RECORD_HEAD + blob[RECORD_HEAD - 1] : -_SEQ_SIZE]


def live_value(blob: bytes, key: object) -> bytes | None:
    """The encoded value of a stored record, or None for a tombstone (the read path).

    ``key`` only names the key in the :class:`CorruptionError` of a malformed record.
    """
    if blob[0] != FORMAT_VERSION or len(blob) < _MIN_RECORD:
        if blob[:1] == _SIBLINGS_BYTE and len(blob) >= _MIN_RECORD:
            return head_value(blob, key)
        raise CorruptionError(f"record of key {key!r} is malformed")
    if blob[1] & _FLAG_DELETED:
        return None
    return blob[RECORD_HEAD + blob[RECORD_HEAD - 1] : -_SEQ_SIZE]


def unpack_record(key: bytes, blob: bytes, skip: int = 0) -> RawEntry:
    """Parse a record stored under data key ``key`` (without the namespace byte, or with
    its first ``skip`` bytes dropped: ``unpack_record(k, blob, DATA_SKIP)`` parses an item
    of a scan of the data namespace)."""
    if skip:
        key = key[skip:]
    if blob[:1] == _SIBLINGS_BYTE:
        return unpack_siblings(key, blob)
    try:
        fmt, flags, hlc, plen = _RECORD.unpack_from(blob)
    except struct.error as exc:
        raise CorruptionError(f"record of key {key!r} is truncated") from exc
    if fmt != FORMAT_VERSION:
        raise CorruptionError(f"record of key {key!r} has unknown format {fmt}")
    start = RECORD_HEAD
    if len(blob) < start + plen + _SEQ_SIZE:
        raise CorruptionError(f"record of key {key!r} is truncated")
    if not plen:
        raise CorruptionError(f"record of key {key!r} has an empty peer id")
    try:
        peer = blob[start : start + plen].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptionError(f"record of key {key!r} has a corrupt peer id") from exc
    seq = int(_SEQ.unpack_from(blob, len(blob) - _SEQ_SIZE)[0])
    value = blob[start + plen : -_SEQ_SIZE]
    return RawEntry(key, value, hlc, peer, bool(flags & _FLAG_DELETED), seq)


def unpack_record_at(
    key: bytes, blob: bytes, seq: int, peer_names: dict[bytes, str], cache_limit: int
) -> RawEntry | None:
    """:func:`unpack_record` for a change-log scan: None when the record is no longer at
    ``seq`` (rewritten since; it appears again later in the log).

    ``peer_names`` caches decoded peer ids (up to ``cache_limit``) so well-formed records
    of known peers skip the checked parse: scans decode many records of few peers.
    """
    if len(blob) < _MIN_RECORD or blob[0] != FORMAT_VERSION:
        r = unpack_record(key, blob)  # a siblings record, or raises CorruptionError
    else:
        end = RECORD_HEAD + blob[RECORD_HEAD - 1]
        peer = peer_names.get(blob[RECORD_HEAD:end])
        if peer is None or len(blob) < end + _SEQ_SIZE:
            r = unpack_record(key, blob)
            if len(peer_names) < cache_limit:
                peer_names[blob[RECORD_HEAD:end]] = r.peer
        elif int.from_bytes(blob[-_SEQ_SIZE:], "big") != seq:
            return None
        else:
            return RawEntry(
                key,
                blob[end:-_SEQ_SIZE],
                int.from_bytes(blob[2:10], "big"),
                peer,
                bool(blob[1] & _FLAG_DELETED),
                seq,
            )
    return r if r.seq == seq else None


_BLAKE2B_256 = hashlib.blake2b(digest_size=32)


def body_hash(key: bytes, body: bytes) -> int:
    """Digest contribution of one key's state: blake2b-256 of ``len(key) key body``.

    Copying a fresh hasher is cheaper than configuring a new one (every commit hashes).
    """
    h = _BLAKE2B_256.copy()
    h.update(_KEYLEN.pack(len(key)) + key + body)
    return int.from_bytes(h.digest(), "big")


# --- change log ------------------------------------------------------------------------


def log_key(seq: int) -> bytes:
    """The storage key of change-log position ``seq``."""
    return LOG + _SEQ.pack(seq)


def seq_of_log_key(k: bytes) -> int:
    """The sequence number in a change-log key (``CorruptionError`` if malformed)."""
    if len(k) == _LOG_KEY_SIZE:
        return int.from_bytes(k[1:], "big")
    try:
        return int(_SEQ.unpack_from(k, 1)[0])
    except struct.error:
        raise CorruptionError(f"malformed change-log key {k!r}") from None


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
        out += _TRAILER.pack(1, count, digest_bytes(digest), hlc)[1:]
    if source:
        out += _SOURCE.pack(source)
    return out + key


def log_prefix(source: int) -> bytes:
    """The head of a change-log entry without trailer: :func:`pack_log` of an empty key."""
    return _LOG_PLAIN if not source else pack_log(b"", None, source)


def trailer_log(key: bytes, count: int, digest: int, hlc: int, source: int) -> bytes:
    """The change-log entry that ends a commit: :func:`pack_log` with the trailer
    ``(count, digest, hlc)``, packed in one call for local commits because every local put
    writes one."""
    if source:
        return pack_log(key, (count, digest, hlc), source)
    return _TRAILER.pack(1, count, digest.to_bytes(32, "big"), hlc) + key


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


def log_key_and_source(blob: bytes) -> tuple[bytes, int]:
    """:func:`unpack_log_source` with a fast path for the common plain local entry."""
    if blob[:1] == _LOG_PLAIN:
        return blob[1:], 0
    return unpack_log_source(blob)


# --- sources and cursors ---------------------------------------------------------------


def source_key(source: int) -> bytes:
    """Meta key naming source id ``source`` (its value is :func:`pack_source`)."""
    return META_SOURCE + _SEQ.pack(source)


def source_of_key(k: bytes) -> int:
    """The source id in a :func:`source_key`."""
    return unpack_u64(k[len(META_SOURCE) :])


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


def cursor_key(peer: str, incarnation: bytes) -> bytes:
    """Storage key of the delta-sync cursor for one remote peer incarnation."""
    pb = peer.encode("utf-8")
    return CURSOR + bytes([len(pb)]) + pb + incarnation


def pack_cursor(seq: int, proof: tuple[bytes, int] | None) -> bytes:
    """A cursor value: the remote sequence, then (optional) the proof of it: the state
    stamp and key of the newest entry applied under it (``spec/data-model.md`` §12)."""
    if proof is None:
        return _SEQ.pack(seq)
    key, stamp = proof
    return _SEQ.pack(seq) + _SEQ.pack(stamp) + key


def unpack_cursor(v: bytes) -> tuple[int, tuple[bytes, int] | None]:
    """``(seq, proof or None)`` of a cursor value (8 bytes: no proof)."""
    if len(v) == _SEQ_SIZE:
        return int(_SEQ.unpack(v)[0]), None
    if len(v) < 2 * _SEQ_SIZE:
        raise CorruptionError(f"cursor value of {len(v)} bytes is malformed")
    seq, stamp = struct.unpack_from(">QQ", v)
    return int(seq), (bytes(v[2 * _SEQ_SIZE :]), int(stamp))


def parse_cursor_key(k: bytes) -> tuple[str, bytes]:
    """Parse a cursor storage key into ``(peer, incarnation)``."""
    return _peer_and_rest(k, 1, "cursor key")


def log_stop(last: int | None) -> bytes:
    """Exclusive upper bound of a change-log scan covering sequences up to ``last``
    (None: the whole log)."""
    if last is None or last >= _MAX_SEQ:
        return LOG_END
    return log_key(last + 1)


# --- revisions (``keep_history``) -------------------------------------------------------


def _escaped(key: bytes) -> bytes:
    """``key`` with 0x00 as 0x00 0xFF, then 0x00 0x01: order-preserving and prefix-free,
    so one key's revisions sort together and keys keep their order."""
    return key.replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def history_key(key: bytes, hlc: int, peer: str) -> bytes:
    """Storage key of a superseded version: ``h``, escaped key, stamp, peer id."""
    return HISTORY + _escaped(key) + _SEQ.pack(hlc) + peer.encode("utf-8")


def history_bound(key: bytes, after: bool) -> bytes:
    """Where ``key``'s revisions start (``after``: where they end) in the ``h`` namespace."""
    head = HISTORY + _escaped(key)
    return head[:-1] + b"\x02" if after else head


def history_value(deleted: bool, value: bytes) -> bytes:
    return (b"\x01" if deleted else b"\x00") + value


def unpack_history(k: bytes, blob: bytes) -> RawEntry:
    """Parse a stored revision back into the version it was."""
    end = k.find(b"\x00", 1)
    while 0 <= end < len(k) - 1 and k[end + 1] == 0xFF:
        end = k.find(b"\x00", end + 2)
    if end < 0 or k[end + 1 : end + 2] != b"\x01" or len(k) < end + 2 + _SEQ_SIZE or not blob:
        raise CorruptionError(f"malformed revision key {k!r}")
    key = k[1:end].replace(b"\x00\xff", b"\x00")
    hlc = int.from_bytes(k[end + 2 : end + 2 + _SEQ_SIZE], "big")
    try:
        peer = k[end + 2 + _SEQ_SIZE :].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptionError(f"revision key {k!r} has a corrupt peer id") from None
    return RawEntry(key, blob[1:], hlc, peer, bool(blob[0] & 1))


def pack_member(row: list[int]) -> bytes:
    """A membership row ``[v, seen_ms, reported_d, forgotten_ms, partner]`` (under ``g``)."""
    return cbor2.dumps(row)


def unpack_member(peer: str, blob: bytes) -> list[int]:
    """The row stored for ``peer``, five u64s (a four-u64 row of an older store gets
    ``partner`` 1: unknown, so assumed); :class:`CorruptionError` if malformed."""
    try:
        row = cbor2.loads(blob)
    except (cbor2.CBORError, ValueError, TypeError, EOFError) as exc:
        raise CorruptionError(f"membership row of peer {peer!r} is not CBOR: {exc}") from None
    if (
        type(row) is not list
        or len(row) not in (4, 5)
        or not all(type(x) is int and 0 <= x <= _MAX_SEQ for x in row)
    ):
        raise CorruptionError(f"membership row of peer {peer!r} is malformed: {row!r:.80}")
    return row if len(row) == 5 else [*row, 1]
