"""Decoding a :class:`~crdt_kv.protocol.messages.Batch` row by row (``spec/protocol.md``
§4.3), checking each field's CBOR head before decoding it.

A batch is the only message that may be large (up to the receiver's ``max_frame_bytes``),
so it is the only one decoded incrementally: the row count is checked against
``max_batch_entries`` and the sequence range before any row is read, a row of the wrong
shape or type fails having allocated nothing more, and everything built is part of the
result. The objects a batch decodes to therefore cost about its size plus a fixed amount
per row, context entry and sibling.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from crdt_kv.accel import lww_run
from crdt_kv.errors import RejectedDataError, RemoteProtocolError
from crdt_kv.protocol.cbor_reader import INDEFINITE, Reader, Truncated
from crdt_kv.protocol.fields import NoTags, array, boolean, fail, text, uint
from crdt_kv.protocol.framing import bare, short
from crdt_kv.version import RawEntry

__all__ = [
    "MAX_BATCH_PEERS",
    "SMALL_FRAME_BYTES",
    "decode_batch_fields",
    "decode_small_batch",
]

_WALL_MAX = (1 << 48) - 1
_LOGICAL_MAX = 0xFFFF
_LWW_ROW, _BREAK = 0x85, 0xFF
_NO_TAGS = NoTags("a batch row")
_CHUNKED_BYTES = 0x5F
_ROW_HEADS_MAX = 1 + 5 * 9
"""The most bytes an LWW row's heads take in any encoding without chunked strings."""
_CBOR_ERRORS = (cbor2.CBORError, ValueError, TypeError, EOFError, RecursionError, OverflowError)

MAX_BATCH_PEERS = 1 << 16
"""The most peer ids a batch's ``peers`` array may hold (spec ``protocol.md`` section 4.3)."""

SMALL_FRAME_BYTES = 1 << 16
"""Frames up to this size are decoded whole by cbor2, which is faster for the small
batches of live pushes: what that can allocate is bounded by 64 times this (4 MiB).
Larger ones are read row by row."""

Fields = tuple[int, int, bool, tuple[RawEntry, ...]]


def decode_batch_fields(
    r: Reader,
    n: int,
    max_entries: int | None,
    *,
    lww_only: bool = False,
    large: bool = False,
) -> Fields:
    """The fields after the type of a batch array whose head said ``n`` items:
    ``(from_seq, to_seq, done, entries)``; raises :class:`RemoteProtocolError`.

    ``lww_only`` (a receiver in mode ``lww``): a sibling-state row with a context entry or
    another sibling raises :class:`RejectedDataError` (abort code 4) from its heads, before
    any of them is decoded. ``large`` (a frame over :data:`SMALL_FRAME_BYTES`): an
    indefinite-length peer table is refused from its head (spec section 3: no conforming
    sender writes one, and reading up to 65,536 ids one at a time to count them took a
    hostile frame 60-90 ms of the event loop)."""
    if n not in (7, INDEFINITE):
        raise fail(f"field 'batch' must be an array of 7, got {n} items")
    from_seq = r.uint("batch.from_seq")
    to_seq = r.uint("batch.to_seq")
    if to_seq < from_seq:
        raise fail(f"batch.to_seq {to_seq} is below batch.from_seq {from_seq}")
    done = r.boolean("batch.done")
    base = r.uint("batch.base_wall", _WALL_MAX)
    peers = _peers(r, large=large)
    rows = r.array("batch.entries")
    if rows != INDEFINITE:
        _check_count(rows, to_seq - from_seq, max_entries)
    entries = _rows(r, rows, base, peers, to_seq - from_seq, max_entries, lww_only=lww_only)
    r.end_array(n, "batch")
    return from_seq, to_seq, done, entries


def _rows(  # noqa: PLR0917 - private, called once
    r: Reader,
    rows: int,
    base: int,
    peers: list[str],
    sequences: int,
    max_entries: int | None,
    *,
    lww_only: bool,
) -> tuple[RawEntry, ...]:
    """The rows of ``batch.entries`` (``rows`` of them, or up to the break).

    Runs of plain LWW rows (every row a conforming sender writes in mode ``lww``) are
    parsed straight from the bytes by :func:`crdt_kv.accel.lww_run`. A row it stops at is
    decoded as before that fast path, so every error and limit check is unchanged: an LWW
    row in a definite 5-array by cbor2 in one call with nesting refused (``max_depth=1``:
    its five items are scalars, so it cannot decode to more than its size plus five
    objects); any other row, one whose key is chunked, and one that took more bytes than
    its key, value and heads can (a chunked value) by the checking :class:`Reader`, which
    refuses a string of more than
    :data:`~crdt_kv.protocol.cbor_reader.MAX_STRING_CHUNKS` chunks."""
    buf = r.buffer
    fp = io.BytesIO(buf)
    seek, tell = fp.seek, fp.tell
    decode = cbor2.CBORDecoder(fp, semantic_decoders=_NO_TAGS, max_depth=1).decode
    entries: list[RawEntry] = []
    append = entries.append
    limit = sequences if max_entries is None else min(sequences, max_entries)
    fast = limit if type(buf) is bytes else 0  # a bytearray's slices are not bytes
    pos = r.pos
    end = len(buf)
    i = 0
    while True:
        run, pos = lww_run(
            buf, pos, (fast if rows == INDEFINITE else min(rows, fast)) - i, base, peers
        )
        if run:
            entries.extend(run)
            i += len(run)
        if not (i < rows if rows != INDEFINITE else (pos >= end or buf[pos] != _BREAK)):
            break
        if pos >= end and r.partial:
            raise Truncated
        if i >= limit:
            _check_count(i + 1, sequences, max_entries)
        if pos + 1 < end and buf[pos] == _LWW_ROW and buf[pos + 1] != _CHUNKED_BYTES:
            seek(pos)
            try:
                row = decode()
            except RemoteProtocolError:
                raise
            except _CBOR_ERRORS as exc:
                if r.partial and isinstance(exc, cbor2.CBORDecodeEOF):
                    raise Truncated from None
                r.pos = pos  # the reader names the field at fault
                _row(r, i, base, peers, lww_only=lww_only)
                raise bare(fail(f"batch.entries[{i}] is not valid CBOR: {exc}")) from None
            entry = _lww_row(row, i, base, peers)
            if tell() - pos > len(entry.key) + len(entry.value) + _ROW_HEADS_MAX:
                r.pos = pos  # a chunked value: the reader holds it to MAX_STRING_CHUNKS
                entry = _row(r, i, base, peers, lww_only=lww_only)
                pos = r.pos
            else:
                pos = tell()
            append(entry)
        else:
            r.pos = pos
            append(_row(r, i, base, peers, lww_only=lww_only))
            pos = r.pos
        i += 1
    r.pos = pos
    if rows == INDEFINITE:
        r.at_break("batch.entries")
    r.items += 6 * len(entries)
    return tuple(entries)


def _lww_row(row: list[Any], i: int, base: int, peers: list[Any]) -> RawEntry:
    key, dwall, logical, pidx, value = row
    if type(key) is not bytes or type(dwall) is not int or type(logical) is not int:
        raise fail(f"batch.entries[{i}] has a field of the wrong type")
    wall = base + dwall
    if dwall < 0 or wall > _WALL_MAX or not 0 <= logical <= _LOGICAL_MAX:
        raise fail(f"batch.entries[{i}] has an out-of-range timestamp")
    if type(pidx) is not int or not 0 <= pidx < len(peers):
        raise fail(f"batch.entries[{i}] names peer index {short(pidx)} of {len(peers)}")
    if value is None:
        return RawEntry(key, b"", (wall << 16) | logical, peers[pidx], True)
    if type(value) is not bytes:
        raise fail(f"batch.entries[{i}].value must be bytes or null")
    return RawEntry(key, value, (wall << 16) | logical, peers[pidx], False)


def _check_count(rows: int, sequences: int, max_entries: int | None) -> None:
    if max_entries is not None and rows > max_entries:
        raise fail(f"batch has {rows} entries, more than the agreed {max_entries}")
    if rows > sequences:
        raise fail(f"batch carries {rows} entries for only {sequences} sequences")


def _peers(r: Reader, *, large: bool = False) -> list[str]:
    """``batch.peers``: at most :data:`MAX_BATCH_PEERS` ids, checked from the array's head,
    each decoded by cbor2 with nesting refused (an id is a scalar) and then checked."""
    n = r.array("batch.peers")
    if large and n == INDEFINITE:
        raise fail("batch.peers is an indefinite-length array in a frame over 64 KiB")
    if n > MAX_BATCH_PEERS:
        raise fail(f"batch.peers has {n} entries, more than {MAX_BATCH_PEERS}")
    fp = io.BytesIO(r.buffer)
    fp.seek(r.pos)
    dec = cbor2.CBORDecoder(fp, semantic_decoders=_NO_TAGS, max_depth=0)
    peers: list[str] = []
    while (len(peers) < n) if n != INDEFINITE else not r.at_break("batch.peers"):
        where = f"batch.peers[{len(peers)}]"
        if len(peers) >= MAX_BATCH_PEERS:
            raise fail(f"batch.peers has more than {MAX_BATCH_PEERS} entries")
        fp.seek(r.pos)
        try:
            p = dec.decode()
        except _CBOR_ERRORS as exc:
            if r.partial and isinstance(exc, cbor2.CBORDecodeEOF):
                raise Truncated from None
            p = r.text(where, 255)  # names what is wrong with it
        else:
            r.pos = fp.tell()
        if type(p) is not str or not p or len(p.encode("utf-8")) > 255:
            raise fail(f"{where} must be a peer id (text of 1..255 bytes), got {short(p)}")
        peers.append(p)
    return peers


def _stamp(r: Reader, base: int, where: str) -> int:
    dwall = r.uint(where)
    logical = r.uint(where, _LOGICAL_MAX)
    wall = base + dwall
    if wall > _WALL_MAX:
        raise fail(f"{where} has an out-of-range timestamp")
    return (wall << 16) | logical


def _peer(r: Reader, peers: list[str], where: str) -> str:
    pidx = r.uint(where)
    if pidx >= len(peers):
        raise fail(f"{where} names peer index {pidx} of {len(peers)}")
    return peers[pidx]


def _value(r: Reader, where: str) -> bytes | None:
    if r.is_null(where):
        return None
    if not r.next_is_bytes(where):
        raise fail(f"{where}.value must be bytes or null")
    return r.byte_string(f"{where}.value")


def _row(r: Reader, i: int, base: int, peers: list[str], *, lww_only: bool = False) -> RawEntry:
    where = f"batch.entries[{i}]"
    n = r.array(where)
    if n not in (5, 7, INDEFINITE):
        raise fail(f"{where} must be an array of 5 or 7")
    key = r.byte_string(f"{where}.key")
    hlc = _stamp(r, base, where)
    peer = _peer(r, peers, where)
    value = _value(r, where)
    if n == 5 or (n == INDEFINITE and r.at_break(where)):
        return RawEntry(key, value or b"", hlc, peer, value is None)
    if lww_only:
        for part in ("context", "others"):
            m = r.array(f"{where}.{part}")
            if m > 0 or (m == INDEFINITE and not r.at_break(f"{where}.{part}")):
                raise RejectedDataError(
                    f"{where} is a state with {part}: this replica keeps conflicts as lww"
                )
        r.end_array(n, where)
        return RawEntry(key, value or b"", hlc, peer, value is None)
    context = _context(r, base, peers, where)
    others = _others(r, key, base, peers, where)
    r.end_array(n, where)
    return RawEntry(key, value or b"", hlc, peer, value is None, 0, context, others)


def _context(r: Reader, base: int, peers: list[str], row: str) -> tuple[tuple[str, int], ...]:
    n = r.array(f"{row}.context")
    out: list[tuple[str, int]] = []
    while (len(out) < n) if n != INDEFINITE else not r.at_break(f"{row}.context"):
        w = f"{row}.context[{len(out)}]"
        m = r.array(w, 3)
        peer = _peer(r, peers, w)
        out.append((peer, _stamp(r, base, w)))
        r.end_array(m, w)
    return tuple(out)


def _others(r: Reader, key: bytes, base: int, peers: list[str], row: str) -> tuple[RawEntry, ...]:
    n = r.array(f"{row}.others")
    out: list[RawEntry] = []
    while (len(out) < n) if n != INDEFINITE else not r.at_break(f"{row}.others"):
        w = f"{row}.others[{len(out)}]"
        m = r.array(w, 4)
        hlc = _stamp(r, base, w)
        peer = _peer(r, peers, w)
        v = _value(r, w)
        out.append(RawEntry(key, v or b"", hlc, peer, v is None))
        r.end_array(m, w)
    return tuple(out)


# --- small frames: decoded whole ---------------------------------------------------------


def decode_small_batch(msg: list[Any], max_entries: int | None) -> Fields:
    """The fields of a batch already decoded whole by cbor2 (a frame of at most
    :data:`SMALL_FRAME_BYTES`, whose objects cost at most 64 times that)."""
    if len(msg) != 7:
        raise fail(f"field 'batch' must be an array of 7, got {len(msg)} items")
    from_seq = uint(msg[1], "batch.from_seq")
    to_seq = uint(msg[2], "batch.to_seq")
    if to_seq < from_seq:
        raise fail(f"batch.to_seq {to_seq} is below batch.from_seq {from_seq}")
    done = boolean(msg[3], "batch.done")
    base = uint(msg[4], "batch.base_wall", _WALL_MAX)
    peers = array(msg[5], "batch.peers")
    if len(peers) > MAX_BATCH_PEERS:
        raise fail(f"batch.peers has {len(peers)} entries, more than {MAX_BATCH_PEERS}")
    for i, p in enumerate(peers):
        if not text(p, f"batch.peers[{i}]"):
            raise fail(f"batch.peers[{i}] is empty")
    rows = array(msg[6], "batch.entries")
    _check_count(len(rows), to_seq - from_seq, max_entries)
    entries: list[RawEntry] = []
    append = entries.append
    for i, row in enumerate(rows):
        if type(row) is list and len(row) == 5:
            append(_lww_row(row, i, base, peers))
        elif type(row) is list and len(row) == 7:
            append(_list_state_row(row, i, base, peers))
        else:
            raise fail(f"batch.entries[{i}] must be an array of 5 or 7")
    return from_seq, to_seq, done, tuple(entries)


def _list_stamp(base: int, dwall: object, logical: object, where: str) -> int:
    if type(dwall) is not int or type(logical) is not int:
        raise fail(f"{where} has a field of the wrong type")
    wall = base + dwall
    if dwall < 0 or wall > _WALL_MAX or not 0 <= logical <= _LOGICAL_MAX:
        raise fail(f"{where} has an out-of-range timestamp")
    return (wall << 16) | logical


def _list_peer(peers: list[Any], pidx: object, where: str) -> str:
    if type(pidx) is not int or not 0 <= pidx < len(peers):
        raise fail(f"{where} names peer index {short(pidx)} of {len(peers)}")
    return str(peers[pidx])


def _list_state_row(row: list[Any], i: int, base: int, peers: list[Any]) -> RawEntry:
    """A ``siblings``-mode row: ``[key, dwall, logical, peer, value, context, others]``."""
    where = f"batch.entries[{i}]"
    key, dwall, logical, pidx, value, ctx, others = row
    if type(key) is not bytes or (value is not None and type(value) is not bytes):
        raise fail(f"{where} has a field of the wrong type")
    context: list[tuple[str, int]] = []
    for j, item in enumerate(array(ctx, f"{where}.context")):
        w = f"{where}.context[{j}]"
        array(item, w, 3)
        context.append((_list_peer(peers, item[0], w), _list_stamp(base, item[1], item[2], w)))
    sibs: list[RawEntry] = []
    for j, item in enumerate(array(others, f"{where}.others")):
        w = f"{where}.others[{j}]"
        array(item, w, 4)
        v = item[3]
        if v is not None and type(v) is not bytes:
            raise fail(f"{w}.value must be bytes or null")
        hlc, peer = _list_stamp(base, item[0], item[1], w), _list_peer(peers, item[2], w)
        sibs.append(RawEntry(key, v or b"", hlc, peer, v is None))
    hlc, peer = _list_stamp(base, dwall, logical, where), _list_peer(peers, pidx, where)
    return RawEntry(key, value or b"", hlc, peer, value is None, 0, tuple(context), tuple(sibs))
