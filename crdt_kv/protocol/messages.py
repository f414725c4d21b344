"""Wire messages of the replication protocol and their CBOR encoding.

A frame is a 4-byte big-endian payload length followed by one CBOR array whose first
element is the message type (``spec/protocol.cddl``). Decoding treats every byte as
hostile: types are checked exactly, integers are range-checked, trailing bytes and unknown
types are rejected, and any violation raises :class:`RemoteProtocolError` naming the field.
Nothing here performs I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from operator import attrgetter
from typing import Any

import cbor2

from crdt_kv.codec import MAX_KEY_BYTES
from crdt_kv.errors import LocalProtocolError, RemoteProtocolError
from crdt_kv.horizon import MAX_GOSSIP_ROWS, GossipRow
from crdt_kv.protocol.batch_decoding import (
    SMALL_FRAME_BYTES,
    decode_batch_fields,
    decode_small_batch,
)
from crdt_kv.protocol.batch_encoding import lww_rows
from crdt_kv.protocol.cbor_reader import Reader, Truncated
from crdt_kv.protocol.fields import NoTags, load
from crdt_kv.protocol.fields import array as _array
from crdt_kv.protocol.fields import boolean as _bool
from crdt_kv.protocol.fields import fail as _fail
from crdt_kv.protocol.fields import text as _text
from crdt_kv.protocol.fields import uint as _uint
from crdt_kv.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    FRAME_LIMIT,
    HELLO_MAX_FRAME_BYTES,
    MIN_MAX_FRAME_BYTES,
    FrameDecoder,
    short,
)
from crdt_kv.version import RawEntry

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HELLO_MAX_FRAME_BYTES",
    "MIN_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Abort",
    "AbortCode",
    "Ack",
    "Batch",
    "FrameDecoder",
    "Hello",
    "MAX_CONTROL_FRAME_BYTES",
    "MAX_REPAIR_PAYLOAD",
    "Message",
    "MsgType",
    "Repair",
    "Request",
    "Verify",
    "cbor_array_head",
    "check_frame_prefix",
    "decode_message",
    "encode_frame",
    "encode_message",
    "gossip_row_wire",
    "message_type",
]

PROTOCOL_VERSION = 3
_LEN = struct.Struct(">I")
_WALL_MAX = (1 << 48) - 1
_LOGICAL_MAX = 0xFFFF


class MsgType(IntEnum):
    """First element of every message array."""

    HELLO = 0
    REQUEST = 1
    BATCH = 2
    ACK = 3
    ABORT = 4
    VERIFY = 5
    REPAIR = 6


class AbortCode(IntEnum):
    """Why a session was aborted (sent in :class:`Abort`)."""

    PROTOCOL = 1
    CLOCK_SKEW = 2
    INCOMPATIBLE = 3
    REJECTED_DATA = 4
    SHUTDOWN = 5
    ROLLED_BACK = 6
    UNAUTHORIZED = 7


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of each side: who I am and what I will do.

    ``send``: I am willing to stream my log to you; ``receive``: I want your log;
    ``live``: keep streaming new commits after catching up. ``max_batch_entries`` is the
    most entries I accept in one :class:`Batch`.
    """

    version: int
    cluster_id: str
    peer_id: str
    incarnation: bytes
    hlc: int
    last_seq: int
    send: bool
    receive: bool
    live: bool
    key_encoding: str
    value_encoding: str
    max_batch_entries: int
    conflicts: str = "lww"
    """The sender's conflict mode; replicas in different modes refuse to sync."""
    gc: tuple[GossipRow, ...] = ()
    """The sender's membership gossip (version 3): its own row first, then what it knows
    of each member (:mod:`crdt_kv.horizon`)."""
    repair: bool = False
    """The sender verifies digests after a round and repairs (:class:`Verify`,
    :class:`Repair`, ``Request.repair``); both sides must set it for either to happen."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """The largest frame the sender accepts; the peer fits its batches to it. On the wire
    only when it differs from the default (``spec/protocol.md`` section 4.1)."""


@dataclass(frozen=True, slots=True)
class Request:
    """Ask the peer to stream its change log after sequence ``since`` (my cursor).

    ``proof``: ``(key, state stamp)`` of the newest entry I applied under that cursor, so
    the peer can tell that its log was rolled back (None: no proof, e.g. ``since = 0``).
    """

    since: int
    live: bool
    proof: tuple[bytes, int] | None = None
    repair: bool = False
    """First contact: reconcile before streaming (spec section 13); the log then streams
    from the sender's head at the time it received this Request."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries of the sender's log in ``(from_seq, to_seq]``; ``done``: reached its head."""

    from_seq: int
    to_seq: int
    done: bool
    entries: tuple[RawEntry, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """The batch ending at ``seq`` was applied and its cursor stored durably."""

    seq: int


@dataclass(frozen=True, slots=True)
class Abort:
    """The sender is closing the session because of ``code``; ``reason`` is for humans."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verify:
    """Both directions of a one-shot round finished: our ``digest`` now, and ``clean``: our
    store changed only through this session's applies since we pinned our head."""

    digest: bytes
    clean: bool
    probe: bool = False
    """The sender holds quarantined keys this peer has not answered for: both run a
    repair, whatever the digests (on the wire only when true)."""


@dataclass(frozen=True, slots=True)
class Repair:
    """A piece of the reconciliation byte stream (``spec/reconcile.md`` frames) carried
    inside the session; the pieces concatenated in order are that stream."""

    payload: bytes


Message = Hello | Request | Batch | Ack | Abort | Verify | Repair

_FLAG_SEND, _FLAG_RECEIVE, _FLAG_LIVE, _FLAG_REPAIR = 1, 2, 4, 8
MAX_REPAIR_PAYLOAD = 1 << 16
"""The largest :class:`Repair` payload a side sends (and accepts)."""


_ROW_WIRE: dict[int, tuple[GossipRow, bytes]] = {}
_ROW_WIRE_MAX = 8192


def gossip_row_wire(g: GossipRow) -> bytes:
    """The CBOR of one gossip row as a Hello carries it, ``[peer, v, seen_ms, d]``.

    Kept per row object (the entry holds the object, so its id cannot be reused while
    kept): a membership table hands out the same row objects while its rows are
    unchanged, so a Hello to each new connection encodes only the rows that changed.
    With a thousand members, encoding every row for every connection was a large share
    of the event loop under bench_hostile's attack."""
    hit = _ROW_WIRE.get(id(g))
    if hit is not None and hit[0] is g:
        return hit[1]
    wire = cbor2.dumps((g.peer, g.v, g.seen_ms, g.d))
    if len(_ROW_WIRE) >= _ROW_WIRE_MAX:
        _ROW_WIRE.clear()
    _ROW_WIRE[id(g)] = (g, wire)
    return wire


def cbor_array_head(n: int) -> bytes:
    """The CBOR head of a definite-length array of ``n`` items (shortest form)."""
    if n < 24:
        return bytes((0x80 | n,))
    if n < 1 << 8:
        return bytes((0x98, n))
    if n < 1 << 16:
        return b"\x99" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\x9a" + n.to_bytes(4, "big")
    return b"\x9b" + n.to_bytes(8, "big")


def _encode_hello(msg: Hello) -> bytes:
    """The Hello as ``cbor2.dumps`` would write its array, with the gossip rows spliced
    in from :func:`gossip_row_wire`."""
    flags = (
        (_FLAG_SEND if msg.send else 0)
        | (_FLAG_RECEIVE if msg.receive else 0)
        | (_FLAG_LIVE if msg.live else 0)
        | (_FLAG_REPAIR if msg.repair else 0)
    )
    first = cbor2.dumps(
        [
            MsgType.HELLO,
            msg.version,
            msg.cluster_id,
            msg.peer_id,
            msg.incarnation,
            msg.hlc,
            msg.last_seq,
            flags,
            msg.key_encoding,
            msg.value_encoding,
            msg.max_batch_entries,
            msg.conflicts,
        ]
    )
    tail = b""
    if msg.max_frame_bytes != DEFAULT_MAX_FRAME_BYTES:
        tail = cbor2.dumps(msg.max_frame_bytes)
    rows = b"".join(map(gossip_row_wire, msg.gc))
    return b"".join(
        (
            cbor_array_head(14 if tail else 13),
            first[1:],  # past the head of those 12 items
            cbor_array_head(len(msg.gc)),
            rows,
            tail,
        )
    )


def encode_message(msg: Message) -> bytes:
    """CBOR-encode one message (without the length prefix)."""
    if isinstance(msg, Batch):
        return _encode_batch(msg)
    if isinstance(msg, Ack):
        return cbor2.dumps([MsgType.ACK, msg.seq])
    if isinstance(msg, Request):
        proof = None if msg.proof is None else list(msg.proof)
        if msg.repair:
            return cbor2.dumps([MsgType.REQUEST, msg.since, msg.live, proof, True])
        if proof is None:
            return cbor2.dumps([MsgType.REQUEST, msg.since, msg.live])
        return cbor2.dumps([MsgType.REQUEST, msg.since, msg.live, proof])
    if isinstance(msg, Verify):
        tail = [True] if msg.probe else []
        return cbor2.dumps([MsgType.VERIFY, msg.digest, msg.clean, *tail])
    if isinstance(msg, Repair):
        return cbor2.dumps([MsgType.REPAIR, msg.payload])
    if isinstance(msg, Hello):
        return _encode_hello(msg)
    if isinstance(msg, Abort):
        return cbor2.dumps([MsgType.ABORT, msg.code, msg.reason])
    raise LocalProtocolError(f"cannot encode {type(msg).__name__}")


def _lowest_stamp(entries: tuple[RawEntry, ...]) -> int:
    low = min(e.hlc for e in entries)
    for e in entries:
        if e.others or e.context:
            low = min(low, *(o.hlc for o in e.others), *(h for _, h in e.context))
    return low


_versions = attrgetter("others")
_contexts = attrgetter("context")
_hlcs = attrgetter("hlc")
_peers = attrgetter("peer")


def _encode_batch(b: Batch) -> bytes:
    """The Batch payload (``spec/protocol.md``); batches of single versions only (``lww``
    mode, or no concurrent writes) have their rows encoded by :func:`lww_rows`."""
    entries = b.entries
    if not entries or any(map(_versions, entries)) or any(map(_contexts, entries)):
        return _encode_batch_any(b)
    base = min(map(_hlcs, entries)) >> 16
    peers = {p: i for i, p in enumerate(dict.fromkeys(map(_peers, entries)))}
    head = cbor2.dumps([MsgType.BATCH, b.from_seq, b.to_seq, b.done, base, list(peers), []])
    return head[:-1] + lww_rows(entries, base, peers)  # [:-1]: the empty array's head


def _encode_batch_any(b: Batch) -> bytes:
    """:func:`_encode_batch` for any rows, siblings and causal contexts included."""
    entries = b.entries
    base = _lowest_stamp(entries) >> 16 if entries else 0
    peers: dict[str, int] = {}
    rows: list[list[Any]] = []

    def index(peer: str) -> int:
        idx = peers.get(peer)
        if idx is None:
            idx = peers[peer] = len(peers)
        return idx

    for e in entries:
        idx = peers.get(e.peer)
        if idx is None:
            idx = peers[e.peer] = len(peers)
        h = e.hlc
        row = [e.key, (h >> 16) - base, h & _LOGICAL_MAX, idx, None if e.deleted else e.value]
        if e.others or e.context:
            row.append([[index(p), (c >> 16) - base, c & _LOGICAL_MAX] for p, c in e.context])
            row.append(
                [
                    [
                        (o.hlc >> 16) - base,
                        o.hlc & _LOGICAL_MAX,
                        index(o.peer),
                        None if o.deleted else o.value,
                    ]
                    for o in e.others
                ]
            )
        rows.append(row)
    return cbor2.dumps([MsgType.BATCH, b.from_seq, b.to_seq, b.done, base, list(peers), rows])


def encode_frame(msg: Message) -> bytes:
    """One length-prefixed frame."""
    payload = encode_message(msg)
    return _LEN.pack(len(payload)) + payload


# --- decoding -------------------------------------------------------------------------


_NO_TAGS = NoTags("a message")


def _decode_request(msg: list[Any]) -> Request:
    if len(msg) not in (3, 4, 5):
        raise _fail(f"field 'request' must be an array of 3 to 5, got {len(msg)} elements")
    since, live = _uint(msg[1], "request.since"), _bool(msg[2], "request.live")
    repair = _bool(msg[4], "request.repair") if len(msg) == 5 else False
    if len(msg) == 3 or msg[3] is None:
        return Request(since, live, None, repair)
    proof = _array(msg[3], "request.proof", 2)
    key = proof[0]
    if type(key) is not bytes or len(key) > MAX_KEY_BYTES:
        raise _fail(f"field 'request.proof' key must be at most {MAX_KEY_BYTES} bytes")
    return Request(since, live, (key, _uint(proof[1], "request.proof stamp")), repair)


def _decode_verify_or_repair(msg: list[Any]) -> Verify | Repair:
    if msg[0] == MsgType.VERIFY:
        if len(msg) not in (3, 4):
            raise _fail(f"field 'verify' must be an array of 3 or 4, got {len(msg)} elements")
        digest = msg[1]
        if type(digest) is not bytes or len(digest) != 32:
            raise _fail(f"field 'verify.digest' must be 32 bytes, got {short(digest)}")
        probe = _bool(msg[3], "verify.probe") if len(msg) == 4 else False
        return Verify(digest, _bool(msg[2], "verify.clean"), probe)
    _array(msg, "repair", 2)
    payload = msg[1]
    if type(payload) is not bytes or not 0 < len(payload) <= MAX_REPAIR_PAYLOAD:
        raise _fail(f"field 'repair.payload' must be 1..{MAX_REPAIR_PAYLOAD} bytes")
    return Repair(payload)


MAX_CONTROL_FRAME_BYTES = 1 << 18
"""The largest payload of a message other than a :class:`Batch` (256 KiB): four times the
largest such message in preferred serialisation (a :class:`Repair` of
:data:`MAX_REPAIR_PAYLOAD`), so a longer encoding of it still fits. Only batches are
decoded incrementally; this bounds what decoding any other message can allocate."""


def _head(payload: bytes, *, partial: bool = False) -> tuple[Reader, int, int] | None:
    """A reader past a message's array head and type, the array's length and the type;
    None if the payload does not start so (then decoding it fails anyway)."""
    r = Reader(payload, partial=partial)
    try:
        n = r.array("message")
        if n != 0:
            return r, n, r.uint("message type")
    except RemoteProtocolError:
        pass
    return None


def message_type(payload: bytes) -> int | None:
    """The type of the message in ``payload`` read from its first bytes, without decoding
    the rest (None: not a message array). A session waiting for the peer's Hello refuses
    anything else this way, however large the frame's decoding would be."""
    head = _head(payload)
    return None if head is None else head[2]


def _batch_head(payload: bytes, *, partial: bool = False) -> tuple[Reader, int] | None:
    """A reader past ``[2, `` and the array's length if ``payload`` is a batch."""
    head = _head(payload, partial=partial)
    if head is None or head[2] != MsgType.BATCH:
        return None
    return head[0], head[1]


def check_frame_prefix(
    prefix: bytes, length: int, *, max_batch_entries: int | None = None, lww_only: bool = False
) -> None:
    """Refuse a frame of ``length`` bytes from its first bytes ``prefix`` when they already
    show it invalid: raises what :func:`decode_message` of the whole frame would raise
    (that decoding reads in order, so an error in the prefix is the frame's first error);
    returns quietly if the prefix is fine so far. Only frames over
    :data:`SMALL_FRAME_BYTES` are checked (those are read field by field).

    Why: a hostile peer's 8 MiB batch of junk otherwise costs its receiver 8 MiB read,
    buffered and copied before the first byte is looked at (bench_hostile)."""
    if length <= SMALL_FRAME_BYTES:
        return
    try:
        head = _batch_head(prefix, partial=True)
        if head is None:
            if length > MAX_CONTROL_FRAME_BYTES:
                raise _fail(
                    f"a frame of {length} bytes that is not a batch: only batches may "
                    f"exceed {MAX_CONTROL_FRAME_BYTES} bytes"
                )
            return
        r, n = head
        decode_batch_fields(r, n, max_batch_entries, lww_only=lww_only, large=True)
    except Truncated:
        return


def decode_message(
    payload: bytes, *, max_batch_entries: int | None = None, lww_only: bool = False
) -> Message:
    """Decode and validate one message payload; raises :class:`RemoteProtocolError`.

    A batch larger than :data:`SMALL_FRAME_BYTES` is read row by row with each field's
    type checked before it is decoded (:mod:`crdt_kv.protocol.batch_decoding`); any other
    message is at most :data:`MAX_CONTROL_FRAME_BYTES`. ``lww_only``: see
    :func:`~crdt_kv.protocol.batch_decoding.decode_batch_fields`."""
    if len(payload) > SMALL_FRAME_BYTES:
        head = _batch_head(payload)
        if head is not None:
            r, n = head
            from_seq, to_seq, done, entries = decode_batch_fields(
                r, n, max_batch_entries, lww_only=lww_only, large=True
            )
            r.finish()
            return Batch(from_seq, to_seq, done, entries)
        if len(payload) > MAX_CONTROL_FRAME_BYTES:
            raise _fail(
                f"a frame of {len(payload)} bytes that is not a batch: only batches may "
                f"exceed {MAX_CONTROL_FRAME_BYTES} bytes"
            )
    obj = load(payload, _NO_TAGS)
    msg = _array(obj, "message")
    if not msg:
        raise _fail("empty message array")
    kind = msg[0]
    if type(kind) is not int or kind not in MsgType._value2member_map_:
        raise _fail(f"unknown message type {short(kind)}")
    if kind == MsgType.BATCH:
        return Batch(*decode_small_batch(msg, max_batch_entries))
    if kind == MsgType.ACK:
        _array(msg, "ack", 2)
        return Ack(_uint(msg[1], "ack.seq"))
    if kind == MsgType.REQUEST:
        return _decode_request(msg)
    if kind in (MsgType.VERIFY, MsgType.REPAIR):
        return _decode_verify_or_repair(msg)
    if kind == MsgType.HELLO:
        if len(msg) < 11:
            raise _fail(f"hello has {len(msg)} elements, needs at least 11")
        flags = _uint(msg[7], "hello.flags", 0xFF)
        incarnation = msg[4]
        if type(incarnation) is not bytes or not 1 <= len(incarnation) <= 64:
            raise _fail("field 'hello.incarnation' must be 1..64 bytes")
        peer = _text(msg[3], "hello.peer_id")
        if not peer:
            raise _fail("field 'hello.peer_id' must not be empty")
        return Hello(
            version=_uint(msg[1], "hello.version"),
            cluster_id=_text(msg[2], "hello.cluster_id"),
            peer_id=peer,
            incarnation=incarnation,
            hlc=_uint(msg[5], "hello.hlc"),
            last_seq=_uint(msg[6], "hello.last_seq"),
            send=bool(flags & _FLAG_SEND),
            receive=bool(flags & _FLAG_RECEIVE),
            live=bool(flags & _FLAG_LIVE),
            repair=bool(flags & _FLAG_REPAIR),
            key_encoding=_text(msg[8], "hello.key_encoding", 32),
            value_encoding=_text(msg[9], "hello.value_encoding", 32),
            max_batch_entries=_uint(msg[10], "hello.max_batch_entries"),
            conflicts=_text(msg[11], "hello.conflicts", 32) if len(msg) > 11 else "lww",
            gc=_decode_gossip(msg[12]) if len(msg) > 12 else (),
            max_frame_bytes=_frame_limit(msg[13] if len(msg) > 13 else None),
        )
    _array(msg, "abort", 3)
    return Abort(_uint(msg[1], "abort.code", 0xFFFF), _text(msg[2], "abort.reason", 4096))


def _frame_limit(v: object) -> int:
    """Element 13 of a Hello; what is not an integer there is ignored as before (protocol
    3 reserved the elements after ``gc``), meaning the default."""
    if type(v) is not int:
        return DEFAULT_MAX_FRAME_BYTES
    limit = _uint(v, "hello.max_frame_bytes", FRAME_LIMIT)
    if limit < MIN_MAX_FRAME_BYTES:
        raise _fail(
            f"field 'hello.max_frame_bytes' is {limit}, below {MIN_MAX_FRAME_BYTES}: too small "
            "for one entry of the largest key and value"
        )
    return limit


def _decode_gossip(v: object) -> tuple[GossipRow, ...]:
    rows = _array(v, "hello.gc")
    if len(rows) > MAX_GOSSIP_ROWS:
        raise _fail(f"field 'hello.gc' has {len(rows)} rows, more than {MAX_GOSSIP_ROWS}")
    out: list[GossipRow] = []
    for i, row in enumerate(rows):
        w = f"hello.gc[{i}]"
        _array(row, w, 4)
        peer = _text(row[0], f"{w}.peer_id")
        if not peer:
            raise _fail(f"field '{w}.peer_id' must not be empty")
        out.append(
            GossipRow(
                peer,
                _uint(row[1], f"{w}.v"),
                _uint(row[2], f"{w}.seen_ms", _WALL_MAX),
                _uint(row[3], f"{w}.d"),
            )
        )
    return tuple(out)
