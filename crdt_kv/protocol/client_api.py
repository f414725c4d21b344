"""The wire format of the client endpoint (``serve(client_listen=...)``), sans-I/O.

An operations and testing endpoint, not part of the replication protocol: a process on the
node's host writes to, and reads from, the store a running node holds (the node holds it
exclusively), and gets each write's stamp back. Both sides are here so the server
(:mod:`crdt_kv.net.client_api`) and the client (:class:`crdt_kv.client.Client`) cannot
drift apart. ``docs/operations.md`` describes the format for clients in other languages.

Frames are those of the replication protocol: a 4-byte big-endian length, then one CBOR
data item without tags, at most :data:`CLIENT_MAX_FRAME_BYTES`. A request is an array
``[id, op, ...]``; the reply to it carries the same ``id`` and is either
``[id, "ok", result]`` or ``[id, "error", kind, message]``. Requests on one connection are
answered one at a time, in order.

======  ======================  =============================================================
op      request                 result
======  ======================  =============================================================
put     ``[id, "put", k, v]``   ``[hlc, peer]``: the stamp of the write, sent once committed
del     ``[id, "del", k]``      ``[hlc, peer]``: the stamp of the tombstone
get     ``[id, "get", k]``      ``null`` if the key is unknown, else
                                ``[hlc, peer, deleted, value]`` (``value`` null if deleted)
info    ``[id, "info"]``        a map: ``peer_id``, ``incarnation`` and ``digest`` (bytes),
                                ``live``, ``last_seq`` (unsigned integers)
======  ======================  =============================================================

Keys are text or bytes as the store's key encoding wants; values any data item its value
encoding holds. A refusal (``kind`` is the error's class name: ``EncodingError``,
``ClockSkewError``, ``StorageError``, ``ReadOnlyError``...) loses nothing and leaves the
connection open; a malformed request is answered with kind ``RemoteProtocolError`` (and
``id`` 0 when none could be read) and the connection is closed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from crdt_kv.codec import MAX_KEY_BYTES
from crdt_kv.protocol.fields import U64, NoTags, load
from crdt_kv.protocol.fields import array as _array
from crdt_kv.protocol.fields import fail as _fail
from crdt_kv.protocol.fields import text as _text
from crdt_kv.protocol.fields import uint as _uint
from crdt_kv.protocol.framing import MIN_MAX_FRAME_BYTES, short

__all__ = [
    "CLIENT_MAX_FRAME_BYTES",
    "CLIENT_OPS",
    "ClientReply",
    "ClientRequest",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "frame",
    "stamp",
]

CLIENT_MAX_FRAME_BYTES = MIN_MAX_FRAME_BYTES
"""The largest frame either side sends or accepts: one request or reply with the largest
key and value a store accepts, plus room for the rest."""
CLIENT_OPS = ("put", "del", "get", "info")
_LEN = struct.Struct(">I")
_REQUEST_TAGS = NoTags("a client request")
_REPLY_TAGS = NoTags("a client reply")
_ARITY = {"put": 4, "del": 3, "get": 3, "info": 2}


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """One request: ``op`` in :data:`CLIENT_OPS`; ``key`` and ``value`` as the op needs."""

    id: int
    op: str
    key: Any = None
    value: Any = None


@dataclass(frozen=True, slots=True)
class ClientReply:
    """One reply: ``ok`` with ``result``, or a refusal of ``kind`` with ``message``."""

    id: int
    ok: bool
    result: Any = None
    kind: str = ""
    message: str = ""


def frame(payload: bytes) -> bytes:
    """``payload`` behind its 4-byte length."""
    return _LEN.pack(len(payload)) + payload


def encode_request(request: ClientRequest) -> bytes:
    """One request frame; ValueError for an unknown op or an out-of-range id."""
    if request.op not in _ARITY:
        raise ValueError(f"unknown client op {request.op!r}; known: {', '.join(CLIENT_OPS)}")
    if not 0 <= request.id <= U64:
        raise ValueError(f"request id must be in 0..2**64-1, got {request.id}")
    body: list[Any] = [request.id, request.op, request.key, request.value]
    return frame(cbor2.dumps(body[: _ARITY[request.op]]))


def decode_request(payload: bytes) -> ClientRequest:
    """A request from a client's frame; :class:`~crdt_kv.errors.RemoteProtocolError` naming
    the field for anything malformed (keys and values are checked by the store)."""
    msg = _array(load(payload, _REQUEST_TAGS), "request")
    if len(msg) < 2:
        raise _fail(f"a client request is [id, op, ...], got {short(msg)}")
    rid = _uint(msg[0], "request.id")
    op = _text(msg[1], "request.op")
    arity = _ARITY.get(op)
    if arity is None:
        raise _fail(f"field 'request.op' must be one of {', '.join(CLIENT_OPS)}, got {op!r}")
    if len(msg) != arity:
        raise _fail(f"a {op!r} request has {arity} elements, got {len(msg)}")
    if arity == 2:
        return ClientRequest(rid, op)
    key = msg[2]
    if type(key) not in (str, bytes) or len(key) > MAX_KEY_BYTES:
        raise _fail(f"field 'request.key' must be text or bytes of at most {MAX_KEY_BYTES}")
    return ClientRequest(rid, op, key, msg[3] if arity > 3 else None)


def encode_reply(reply: ClientReply) -> bytes:
    """One reply frame."""
    if reply.ok:
        return frame(cbor2.dumps([reply.id, "ok", reply.result]))
    return frame(cbor2.dumps([reply.id, "error", reply.kind, reply.message]))


def decode_reply(payload: bytes) -> ClientReply:
    """A reply from the node's frame; :class:`~crdt_kv.errors.RemoteProtocolError` if
    malformed. The result's shape is checked by the caller, which knows the op."""
    msg = _array(load(payload, _REPLY_TAGS), "reply")
    if len(msg) < 3:
        raise _fail(f"a client reply is [id, status, ...], got {short(msg)}")
    rid = _uint(msg[0], "reply.id")
    status = _text(msg[1], "reply.status")
    if status == "ok" and len(msg) == 3:
        return ClientReply(rid, True, msg[2])
    if status == "error" and len(msg) == 4:
        kind = _text(msg[2], "reply.kind")
        message = _text(msg[3], "reply.message", max_bytes=1 << 16)
        return ClientReply(rid, False, kind=kind, message=message)
    raise _fail(f"a client reply is [id, 'ok', result] or [id, 'error', kind, msg]: {short(msg)}")


def stamp(result: Any, what: str) -> tuple[int, str]:
    """``[hlc, peer]`` of a put or del reply; RemoteProtocolError if it is not one."""
    pair = _array(result, what, 2)
    return _uint(pair[0], f"{what}.hlc"), _text(pair[1], f"{what}.peer", min_bytes=1)
