"""Storage format 2 records: the state of one key in ``siblings`` mode
(``spec/data-model.md`` section 16.9), packed and parsed. Split from :mod:`crdt_kv.layout`,
which dispatches on a record's format byte and re-exports these names.

Pure byte packing, pinned byte for byte by ``spec/vectors/core-siblings.json``.
"""

from __future__ import annotations

import struct

from crdt_kv.errors import CorruptionError
from crdt_kv.version import RawEntry

__all__ = [
    "FORMAT_SIBLINGS",
    "MAX_SIBLINGS",
    "MAX_SIBLING_PEERS",
    "head_value",
    "pack_put",
    "pack_siblings",
    "pack_single",
    "siblings_context",
    "sole_dot",
    "unpack_siblings",
]

FORMAT_SIBLINGS = 2
"""Store format of a ``siblings`` store, and the format byte of its records."""
_FLAG_DELETED = 1
_SEQ_SIZE = 8

_SIBLINGS_BYTE = bytes([FORMAT_SIBLINGS])
_COUNT = struct.Struct(">H")
_SIB = struct.Struct(">HBQI")  # peer index, flags, hlc, value length; then the value
_CTX = struct.Struct(">HQ")  # peer index, hlc
MAX_SIBLING_PEERS = 0xFFFF
MAX_SIBLINGS = 0xFFFF
"""A record counts its peers and its siblings in a u16."""


def pack_siblings(r: RawEntry) -> bytes:
    """The record body of a ``siblings``-mode state (``r``: head, ``others``, ``context``).

    ``0x02, flags, peer table, siblings, context``: the peer ids of the record are stored
    once, sorted, and referenced by index, so the body depends only on the state (the
    digest hashes it) while siblings and context entries carry small integers. Flags bit
    0: no live sibling (the head is a tombstone). Siblings keep their order.
    """
    sibs = (r, *r.others)
    names = sorted({s.peer for s in sibs} | {p for p, _ in r.context})
    if len(names) > MAX_SIBLING_PEERS:
        raise CorruptionError(f"state of key {r.key!r} names {len(names)} peers")
    index = {p: i for i, p in enumerate(names)}
    out = [_SIBLINGS_BYTE, b"\x01" if r.deleted else b"\x00", _COUNT.pack(len(names))]
    for p in names:
        pb = p.encode("utf-8")
        out.append(bytes([len(pb)]) + pb)
    out.append(_COUNT.pack(len(sibs)))
    for s in sibs:
        out.append(_SIB.pack(index[s.peer], 1 if s.deleted else 0, s.hlc, len(s.value)))
        out.append(s.value)
    out.append(_COUNT.pack(len(r.context)))
    out.extend(_CTX.pack(index[p], h) for p, h in r.context)
    return b"".join(out)


def pack_put(peer: str, hlc: int, deleted: bool, value: bytes, seen: dict[str, int]) -> bytes:
    """:func:`pack_siblings` of the state a local put or delete leaves: the one version
    ``(peer, hlc)`` over everything ``seen`` (the old state's whole context, from
    :func:`siblings_context`). Built directly: every siblings-mode put takes this path."""
    ctx = sorted((p, h) for p, h in seen.items() if p != peer or h > hlc)
    flag = b"\x01" if deleted else b"\x00"
    if not ctx:
        return pack_single(hlc, peer.encode("utf-8"), deleted, value)
    names = sorted({peer, *(p for p, _ in ctx)})
    index = {p: i for i, p in enumerate(names)}
    out = [_SIBLINGS_BYTE, flag, _COUNT.pack(len(names))]
    for p in names:
        b = p.encode("utf-8")
        out.append(bytes([len(b)]) + b)
    out.append(_COUNT.pack(1))
    out.append(_SIB.pack(index[peer], flag[0], hlc, len(value)))
    out.append(value)
    out.append(_COUNT.pack(len(ctx)))
    out.extend(_CTX.pack(index[p], h) for p, h in ctx)
    return b"".join(out)


def siblings_context(key: bytes, blob: bytes) -> dict[str, int]:
    """The whole causal context of a stored siblings record (its explicit entries and its
    versions' dots), parsed without building the versions."""
    one = _single(blob) if blob[:1] == _SIBLINGS_BYTE else None
    if one is not None:
        try:
            return {blob[_ONE_HEAD.size : one[0]].decode("utf-8"): one[2]}
        except UnicodeDecodeError:
            pass  # the full parse reports it
    try:
        if blob[0] != FORMAT_SIBLINGS:
            raise CorruptionError(f"record of key {key!r} is not a siblings record")
        names, pos = _peer_table(blob)
        (nsib,) = _COUNT.unpack_from(blob, pos)
        pos += 2
        ctx: dict[str, int] = {}
        for _ in range(nsib):
            pi, _, hlc, vlen = _SIB.unpack_from(blob, pos)
            pos += _SIB.size + vlen
            if hlc > ctx.get(names[pi], -1):
                ctx[names[pi]] = hlc
        (nctx,) = _COUNT.unpack_from(blob, pos)
        pos += 2
        for _ in range(nctx):
            pi, hlc = _CTX.unpack_from(blob, pos)
            pos += _CTX.size
            if hlc > ctx.get(names[pi], -1):
                ctx[names[pi]] = hlc
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise CorruptionError(f"siblings record of key {key!r} is malformed") from exc
    if pos != len(blob) - _SEQ_SIZE:
        raise CorruptionError(f"siblings record of key {key!r} is malformed")
    return ctx


_ONE_HEAD = struct.Struct(">BBHB")  # format, flags, peer count 1, len(peer); then the peer
_ONE_SIB = struct.Struct(">HHBQI")  # sibling count 1, then its _SIB; then value, no context
_NO_CONTEXT = _COUNT.pack(0)
_ONE_TAIL = len(_NO_CONTEXT) + _SEQ_SIZE


def pack_single(hlc: int, peer_b: bytes, deleted: bool, value: bytes) -> bytes:
    """:func:`pack_siblings` of a state of one sibling and no context entry (a key written
    by one peer), byte for byte, without building the state: local writes take this path."""
    flag = 1 if deleted else 0
    return (
        _ONE_HEAD.pack(FORMAT_SIBLINGS, flag, 1, len(peer_b))
        + peer_b
        + _ONE_SIB.pack(1, 0, flag, hlc, len(value))
        + value
        + _NO_CONTEXT
    )


def _single(blob: bytes) -> tuple[int, int, int, int] | None:
    """``(end of the peer id, flags, hlc, end of the value)`` of a well-formed
    :func:`pack_single` record with its seq; None for any other record."""
    if blob[2:4] != b"\x00\x01" or len(blob) < _ONE_HEAD.size:
        return None
    head = _ONE_HEAD.size + blob[_ONE_HEAD.size - 1]
    if len(blob) < head + _ONE_SIB.size + _ONE_TAIL:
        return None
    count, index, flags, hlc, vlen = _ONE_SIB.unpack_from(blob, head)
    end = head + _ONE_SIB.size + vlen
    if count != 1 or index or end + _ONE_TAIL != len(blob) or blob[end : end + 2] != _NO_CONTEXT:
        return None
    return head, flags, hlc, end


def sole_dot(blob: bytes, peer_b: bytes) -> int | None:
    """The stamp of the only version in stored record ``blob`` if it is a well-formed
    :func:`pack_single` record of peer ``peer_b``; None for any other record."""
    one = _single(blob) if blob[:1] == _SIBLINGS_BYTE else None
    if one is None or blob[_ONE_HEAD.size : one[0]] != peer_b:
        return None
    return one[2]


def _unpack_single(key: bytes, blob: bytes) -> RawEntry | None:
    """:func:`_unpack_siblings` of a :func:`pack_single` record, at fixed offsets."""
    one = _single(blob)
    if one is None:
        return None
    head, flags, hlc, end = one
    try:
        peer = blob[_ONE_HEAD.size : head].decode("utf-8")
    except UnicodeDecodeError:
        return None
    seq = int.from_bytes(blob[-_SEQ_SIZE:], "big")
    return RawEntry(key, blob[head + _ONE_SIB.size : end], hlc, peer, bool(flags & 1), seq)


def unpack_siblings(key: bytes, blob: bytes) -> RawEntry:
    """Parse a format-2 record (with its seq) into its state: head, ``others``, ``context``."""
    return _unpack_single(key, blob) or _unpack_full(key, blob)


def _peer_table(blob: bytes) -> tuple[list[str], int]:
    """The peer ids of a format-2 record and the offset after them (raises struct.error,
    IndexError or UnicodeDecodeError on a malformed record: callers name the key)."""
    (npeers,) = _COUNT.unpack_from(blob, 2)
    pos = 4
    names: list[str] = []
    for _ in range(npeers):
        n = blob[pos]
        names.append(blob[pos + 1 : pos + 1 + n].decode("utf-8"))
        pos += 1 + n
    return names, pos


def _unpack_full(key: bytes, blob: bytes) -> RawEntry:
    end = len(blob) - _SEQ_SIZE
    try:
        names, pos = _peer_table(blob)
        (nsib,) = _COUNT.unpack_from(blob, pos)
        pos += 2
        sibs: list[RawEntry] = []
        for _ in range(nsib):
            pi, flags, hlc, vlen = _SIB.unpack_from(blob, pos)
            pos += _SIB.size
            sibs.append(RawEntry(key, blob[pos : pos + vlen], hlc, names[pi], bool(flags & 1)))
            pos += vlen
        (nctx,) = _COUNT.unpack_from(blob, pos)
        pos += 2
        ctx = []
        for _ in range(nctx):
            pi, hlc = _CTX.unpack_from(blob, pos)
            ctx.append((names[pi], hlc))
            pos += _CTX.size
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise CorruptionError(f"siblings record of key {key!r} is malformed") from exc
    if pos != end or not sibs:
        raise CorruptionError(f"siblings record of key {key!r} is malformed")
    seq = int.from_bytes(blob[end:], "big")
    h = sibs[0]
    return RawEntry(key, h.value, h.hlc, h.peer, h.deleted, seq, tuple(ctx), tuple(sibs[1:]))


def head_value(blob: bytes, key: object) -> bytes | None:
    """The first version's value of a siblings record (None: no live version)."""
    if blob[1] & _FLAG_DELETED:
        return None
    try:
        (npeers,) = _COUNT.unpack_from(blob, 2)
        pos = 4
        for _ in range(npeers):
            pos += 1 + blob[pos]
        _, _, _, vlen = _SIB.unpack_from(blob, pos + 2)
    except (struct.error, IndexError):
        raise CorruptionError(f"siblings record of key {key!r} is malformed") from None
    start = pos + 2 + _SIB.size
    if start + vlen > len(blob) - _SEQ_SIZE:
        raise CorruptionError(f"siblings record of key {key!r} is malformed")
    return blob[start : start + vlen]
