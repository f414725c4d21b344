"""Fuzz targets for the decoders of peers' bytes: the frame splitter, replication messages,
repair messages and discovery announcements.

Each target is a plain ``def target(data: bytes) -> None``: a coverage-guided fuzzer
(``atheris``, driven by ``fuzz/run.py``) or the seeded smoke of the test suite calls it with
arbitrary bytes. Returning means the library behaved; anything raised is a finding. The
documented refusal of hostile bytes (:class:`~crdt_kv.errors.RemoteProtocolError`) is
caught here, so what escapes is either another exception (a decoder bug: hostile bytes
must only ever be refused) or an :class:`OracleError`, raised when the library accepted
something it should not have or answered differently than a slower reference does.

The targets are deterministic: no clock, no global randomness, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from crdt_kv.errors import CrdtKvError, RemoteProtocolError
from crdt_kv.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HELLO_MAX_FRAME_BYTES,
    MIN_MAX_FRAME_BYTES,
    FrameDecoder,
    Inbox,
)
from crdt_kv.protocol.messages import decode_message, encode_message
from crdt_kv.repair.messages import decode_message_bytes, encode_payload

__all__ = [
    "BY_FRAME",
    "CHUNK_SIZES",
    "OracleError",
    "chunks",
    "fuzz_announcement",
    "fuzz_frames",
    "fuzz_messages",
    "fuzz_repair_messages",
    "reference_frames",
]

BY_FRAME = -1
"""A delivery size: one delivery per frame, cut where the length prefixes say (as a peer
writes them), whatever the frames hold."""
CHUNK_SIZES = (BY_FRAME, 0, 1, 2, 3, 17, 256, 4096)
"""How a target cuts its input into deliveries, picked by three bits of a header byte
(0: all at once)."""
MAX_CHUNKS = 64
"""At most this many deliveries per input (the rest arrives at once): a 1-byte chunking
of a long input must not make one execution slow."""
_LIMITS = (
    0,
    1,
    5,
    100,
    HELLO_MAX_FRAME_BYTES - 1,
    HELLO_MAX_FRAME_BYTES,
    MIN_MAX_FRAME_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
)
_BATCH_LIMITS = (None, 0, 1, 3, 1000)


class OracleError(CrdtKvError, AssertionError):
    """A fuzz target caught the library misbehaving without an exception of its own: it
    accepted what it must refuse, or its answer differs from a reference (a round trip
    that changes a message, frames split differently than the reference splitter)."""


def chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into deliveries of ``size`` bytes (0: one delivery, :data:`BY_FRAME`:
    one per frame), at most :data:`MAX_CHUNKS` of them, the last taking the rest. Never an
    empty delivery (``b""`` means end of stream to a session)."""
    if size == BY_FRAME:
        return _frame_chunks(data)
    if not data:
        return []
    if size <= 0:
        return [data]
    cut = size * (MAX_CHUNKS - 1)
    head = [data[i : i + size] for i in range(0, min(len(data), cut), size)]
    return [*head, data[cut:]] if len(data) > cut else head


def _frame_chunks(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(data) and len(out) < MAX_CHUNKS - 1:
        end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos:end])
        pos = end
    if pos < len(data):
        out.append(data[pos:])
    return out


def reference_frames(stream: bytes, limits: Sequence[int]) -> tuple[list[bytes], bool]:
    """The payloads of ``stream`` split by the definition (``spec/protocol.md`` section 2),
    frame ``i`` refused above ``limits[min(i, len(limits) - 1)]``; and whether a length
    was refused (nothing after it is read)."""
    out: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 4:
        length = int.from_bytes(stream[pos : pos + 4], "big")
        if length > limits[min(len(out), len(limits) - 1)]:
            return out, True
        if len(stream) - pos - 4 < length:
            break
        out.append(stream[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out, False


def _split_decoder(parts: list[bytes], limit: int) -> tuple[list[bytes], bool]:
    decoder = FrameDecoder(max_frame_bytes=limit)
    out: list[bytes] = []
    for part in parts:
        decoder.push(part)
        try:
            while (payload := decoder.next_frame()) is not None:
                out.append(payload)
        except RemoteProtocolError:
            if decoder.buffered:
                raise OracleError("a refused length left bytes buffered") from None
            return out, True
    return out, False


def _split_inbox(parts: list[bytes], limit: int, open_up: bool) -> tuple[list[bytes], bool]:
    inbox = Inbox(limit)
    out: list[bytes] = []
    for part in [*parts, b""]:
        inbox.push(part)
        while (payload := inbox.next()) is not None:
            if len(payload) > inbox.limit:
                raise OracleError(f"a {len(payload)}-byte frame passed the limit {inbox.limit}")
            out.append(payload)
            if open_up and len(out) == 1:
                inbox.open_up()
        if inbox.error is not None:
            if inbox.next() is not None:
                raise OracleError("the inbox returned a frame after its error")
            return out, True
    if not inbox.eof:
        raise OracleError("the inbox missed the end of the stream")
    return out, False


def fuzz_frames(data: bytes) -> None:
    """The frame splitter (:class:`FrameDecoder`, :class:`Inbox` with its Hello limit),
    fed ``data[1:]`` in deliveries: it must split exactly as :func:`reference_frames` does,
    refuse exactly the lengths over its limit, and keep nothing of a refused frame.

    ``data[0]``: bits 0-2 pick the limit, bits 3-5 the delivery size, bit 6 an
    :class:`Inbox` rather than a bare decoder, bit 7 whether the Inbox opens up after its
    first frame (as a session does once it accepted the Hello)."""
    if not data:
        return
    head, stream = data[0], data[1:]
    limit = _LIMITS[head & 7]
    parts = chunks(stream, CHUNK_SIZES[(head >> 3) & 7])
    if head & 0x40:
        first = min(limit, HELLO_MAX_FRAME_BYTES)
        limits = [first, limit if head & 0x80 else first]
        got = _split_inbox(parts, limit, bool(head & 0x80))
    else:
        limits = [limit]
        got = _split_decoder(parts, limit)
        whole = FrameDecoder(max_frame_bytes=limit)
        try:
            at_once: tuple[list[bytes], bool] = (whole.feed(stream), False)
        except RemoteProtocolError:
            at_once = (got[0], True)  # feed() drops the frames split before the refusal
        if at_once != got:
            raise OracleError("feeding all at once split differently than one by one")
    if got != reference_frames(stream, limits):
        raise OracleError("the frame splitter disagrees with the reference")


def fuzz_messages(data: bytes) -> None:
    """:func:`~crdt_kv.protocol.messages.decode_message` on ``data[1:]`` (``data[0]`` picks
    the ``max_batch_entries`` agreed): bad bytes must raise :class:`RemoteProtocolError`
    only, and a message it accepts must survive ``encode_message`` and decode to itself."""
    if not data:
        return
    limit = _BATCH_LIMITS[data[0] % len(_BATCH_LIMITS)]
    try:
        msg = decode_message(data[1:], max_batch_entries=limit)
    except RemoteProtocolError:
        return
    if limit is not None and len(getattr(msg, "entries", ())) > limit:
        raise OracleError(f"a batch of more than the agreed {limit} entries was accepted")
    again = decode_message(encode_message(msg), max_batch_entries=limit)
    if again != msg:
        raise OracleError(f"{type(msg).__name__} changed in an encode/decode round trip")


def fuzz_repair_messages(data: bytes) -> None:
    """:func:`~crdt_kv.repair.messages.decode_message_bytes` on ``data``: bad bytes must
    raise :class:`RemoteProtocolError` only; an accepted message must round-trip."""
    try:
        msg = decode_message_bytes(data)
    except RemoteProtocolError:
        return
    if decode_message_bytes(encode_payload(msg)) != msg:
        raise OracleError(f"repair {type(msg).__name__} changed in a round trip")


def fuzz_announcement(data: bytes) -> None:
    """:meth:`~crdt_kv.net.discovery.Announcement.decode` on a datagram: bad bytes must
    raise :class:`RemoteProtocolError` only; an accepted one must round-trip."""
    from crdt_kv.net.discovery import Announcement  # pulls trio: only for this target

    try:
        ann = Announcement.decode(data)
    except RemoteProtocolError:
        return
    if Announcement.decode(ann.encode()) != ann:
        raise OracleError("an announcement changed in a round trip")
