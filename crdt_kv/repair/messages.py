"""Wire messages of range-fingerprint repair and their CBOR encoding (``spec/reconcile.md``).

Framing is the replication protocol's: a u32be payload length, then one CBOR array whose
first element is the message type. Decoding treats every byte as hostile, as
:mod:`crdt_kv.protocol.messages` does (whose frame splitter and tag refusal it reuses):
exact types, range-checked integers, no tags, no trailing bytes, nodes that exist, items
inside their node and in order; any violation raises :class:`RemoteProtocolError` naming
the field. Entries travel as a replication ``Batch`` message embedded as a byte string, so
``siblings`` states (context and other siblings) use the very row encoding and checks of
replication. Nothing here performs I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import cbor2

from crdt_kv.codec import MAX_KEY_BYTES
from crdt_kv.errors import LocalProtocolError
from crdt_kv.protocol.fields import NoTags, load, text
from crdt_kv.protocol.fields import array as _array
from crdt_kv.protocol.fields import boolean as _bool
from crdt_kv.protocol.fields import byte_string as _bytes
from crdt_kv.protocol.fields import fail as _fail
from crdt_kv.protocol.fields import uint as _uint
from crdt_kv.protocol.framing import short
from crdt_kv.protocol.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    Batch,
    FrameDecoder,
    decode_message,
    encode_message,
)
from crdt_kv.repair.tree import FANOUT, FP_BYTES, MAX_LEVEL, position, valid_node
from crdt_kv.version import RawEntry

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "REPAIR_VERSION",
    "Children",
    "Entries",
    "FrameDecoder",
    "Items",
    "Message",
    "MsgType",
    "RangeItem",
    "RepairHello",
    "Round",
    "decode_message_bytes",
    "encode_frame",
    "encode_payload",
]

REPAIR_VERSION = 1
_LEN = struct.Struct(">I")
_FP = struct.Struct(">Q")
MIN_FRAME_BYTES = 4096
"""The smallest ``max_frame_bytes`` either end may announce: room for any round item."""


class MsgType(IntEnum):
    """First element of every repair message array."""

    HELLO = 0
    ROUND = 1
    ENTRIES = 2


class RangeKind(IntEnum):
    """First element of every range item of a :class:`Round`."""

    CHILDREN = 0
    ITEMS = 1


@dataclass(frozen=True, slots=True)
class Children:
    """The fingerprints of the 16 children of node ``(level, index)``: per child the item
    hash sum mod 2**64 and the item count, in position order."""

    level: int
    index: int
    sums: tuple[int, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Items:
    """Every item the sender holds in node ``(level, index)``: keys in ``(position, key)``
    order and their item hashes mod 2**64."""

    level: int
    index: int
    keys: tuple[bytes, ...]
    hashes: tuple[int, ...]


RangeItem = Children | Items


@dataclass(frozen=True, slots=True)
class RepairHello:
    """First message of each end: who it is, what it keeps, and its top fingerprints.

    ``top`` is the :class:`Children` of the root; ``max_frame_bytes`` the largest frame the
    sender accepts; ``gc_horizon`` its collection horizon (absence wins below it).
    """

    version: int
    peer_id: str
    conflicts: str
    key_encoding: str
    value_encoding: str
    gc_horizon: int
    digest: bytes
    count: int
    max_frame_bytes: int
    top: Children


@dataclass(frozen=True, slots=True)
class Round:
    """One frame of a turn of questions and answers; ``last`` ends the turn.

    ``ranges`` ask about nodes (fingerprints to compare, items to diff); ``missing`` are
    keys the sender does not hold and ``differing`` keys it holds in another state: the
    receiver answers both with entries (or, for ``missing`` ones below the sender's
    horizon, by dropping its own copy).
    """

    last: bool
    ranges: tuple[RangeItem, ...]
    missing: tuple[bytes, ...]
    differing: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Entries:
    """Whole key states (one frame's worth) sent as answers."""

    entries: tuple[RawEntry, ...]


Message = RepairHello | Round | Entries


# --- encoding --------------------------------------------------------------------------


def _children_cbor(c: Children) -> list[Any]:
    sums = b"".join(_FP.pack(s) for s in c.sums)
    return [RangeKind.CHILDREN, c.level, c.index, sums, list(c.counts)]


def _range_cbor(r: RangeItem) -> list[Any]:
    if isinstance(r, Children):
        return _children_cbor(r)
    hashes = b"".join(_FP.pack(h) for h in r.hashes)
    return [RangeKind.ITEMS, r.level, r.index, list(r.keys), hashes]


def encode_payload(msg: Message) -> bytes:
    """CBOR-encode one message (without the length prefix)."""
    if isinstance(msg, Round):
        ranges = [_range_cbor(r) for r in msg.ranges]
        return cbor2.dumps(
            [MsgType.ROUND, msg.last, ranges, list(msg.missing), list(msg.differing)]
        )
    if isinstance(msg, Entries):
        n = len(msg.entries)
        return cbor2.dumps([MsgType.ENTRIES, encode_message(Batch(0, n, True, msg.entries))])
    if isinstance(msg, RepairHello):
        top = _children_cbor(msg.top)[3:]
        return cbor2.dumps(
            [
                MsgType.HELLO,
                msg.version,
                msg.peer_id,
                msg.conflicts,
                msg.key_encoding,
                msg.value_encoding,
                msg.gc_horizon,
                msg.digest,
                msg.count,
                msg.max_frame_bytes,
                top,
            ]
        )
    raise LocalProtocolError(f"cannot encode {type(msg).__name__}")


def encode_frame(msg: Message) -> bytes:
    """One length-prefixed frame."""
    payload = encode_payload(msg)
    return _LEN.pack(len(payload)) + payload


# --- decoding --------------------------------------------------------------------------


def _text(v: object, field: str, max_bytes: int) -> str:
    return text(v, field, max_bytes, min_bytes=1)


def _keys(v: object, field: str) -> tuple[bytes, ...]:
    keys = _array(v, field)
    for i, k in enumerate(keys):
        if type(k) is not bytes or len(k) > MAX_KEY_BYTES:
            raise _fail(f"field '{field}[{i}]' must be a key of at most {MAX_KEY_BYTES} bytes")
    return tuple(keys)


def _u64s(blob: bytes, field: str, count: int | None = None) -> tuple[int, ...]:
    if len(blob) % FP_BYTES or (count is not None and len(blob) != count * FP_BYTES):
        raise _fail(f"field {field!r} must hold whole 8-byte sums, got {len(blob)} bytes")
    return tuple(s for (s,) in _FP.iter_unpack(blob))


def _node(level: object, index: object, field: str, max_level: int) -> tuple[int, int]:
    lv = _uint(level, f"{field}.level", max_level)
    ix = _uint(index, f"{field}.index")
    if not valid_node(lv, ix):
        raise _fail(f"field '{field}.index' {ix} is not a node of level {lv}")
    return lv, ix


def _children(sums: object, counts: object, level: int, index: int, field: str) -> Children:
    fps = _u64s(_bytes(sums, f"{field}.sums", FANOUT * FP_BYTES), f"{field}.sums")
    cs = tuple(
        _uint(c, f"{field}.counts[{j}]")
        for j, c in enumerate(_array(counts, f"{field}.counts", FANOUT))
    )
    return Children(level, index, fps, cs)


def _items(msg: list[Any], level: int, index: int, field: str) -> Items:
    keys = _keys(msg[3], f"{field}.keys")
    hashes = _u64s(_bytes(msg[4], f"{field}.hashes"), f"{field}.hashes", len(keys))
    shift = 64 - 4 * level
    prev: tuple[int, bytes] | None = None
    for j, k in enumerate(keys):
        here = (position(k), k)
        if here[0] >> shift != index:
            raise _fail(f"field '{field}.keys[{j}]' lies outside node ({level}, {index})")
        if prev is not None and here <= prev:
            raise _fail(f"field '{field}.keys[{j}]' is out of (position, key) order")
        prev = here
    return Items(level, index, keys, hashes)


def _range(v: object, field: str) -> RangeItem:
    item = _array(v, field, 5)
    kind = item[0]
    if type(kind) is not int or kind not in RangeKind._value2member_map_:
        raise _fail(f"field '{field}.kind' is unknown: {short(kind)}")
    if kind == RangeKind.CHILDREN:
        level, index = _node(item[1], item[2], field, MAX_LEVEL - 1)
        return _children(item[3], item[4], level, index, field)
    level, index = _node(item[1], item[2], field, MAX_LEVEL)
    return _items(item, level, index, field)


_NO_TAGS = NoTags("a repair message")


def _load(payload: bytes) -> Any:
    return load(payload, _NO_TAGS)


def _hello(msg: list[Any]) -> RepairHello:
    _array(msg, "hello", 11)
    top = _array(msg[10], "hello.top", 2)
    return RepairHello(
        version=_uint(msg[1], "hello.version"),
        peer_id=_text(msg[2], "hello.peer_id", 255),
        conflicts=_text(msg[3], "hello.conflicts", 32),
        key_encoding=_text(msg[4], "hello.key_encoding", 32),
        value_encoding=_text(msg[5], "hello.value_encoding", 32),
        gc_horizon=_uint(msg[6], "hello.gc_horizon"),
        digest=_bytes(msg[7], "hello.digest", 32),
        count=_uint(msg[8], "hello.count"),
        max_frame_bytes=_uint(msg[9], "hello.max_frame_bytes", 0xFFFFFFFF),
        top=_children(top[0], top[1], 0, 0, "hello.top"),
    )


def _entries(msg: list[Any]) -> Entries:
    _array(msg, "entries", 2)
    batch = decode_message(_bytes(msg[1], "entries.batch"))
    if not isinstance(batch, Batch):
        raise _fail("field 'entries.batch' must hold a replication Batch message")
    return Entries(batch.entries)


def decode_message_bytes(payload: bytes) -> Message:
    """Decode and validate one repair message payload; raises :class:`RemoteProtocolError`."""
    msg = _array(_load(payload), "message")
    if not msg:
        raise _fail("empty message array")
    kind = msg[0]
    if type(kind) is not int or kind not in MsgType._value2member_map_:
        raise _fail(f"unknown message type {short(kind)}")
    if kind == MsgType.HELLO:
        return _hello(msg)
    if kind == MsgType.ENTRIES:
        return _entries(msg)
    _array(msg, "round", 5)
    ranges = tuple(
        _range(r, f"round.ranges[{i}]") for i, r in enumerate(_array(msg[2], "round.ranges"))
    )
    return Round(
        last=_bool(msg[1], "round.last"),
        ranges=ranges,
        missing=_keys(msg[3], "round.missing"),
        differing=_keys(msg[4], "round.differing"),
    )
