"""Frame limits and the frame splitter of the replication protocol (``spec/protocol.md``
section 2).

Memory is bounded by construction: a length prefix is checked against the current limit
before its payload is buffered, the limit is small (:data:`HELLO_MAX_FRAME_BYTES`) until
the peer's Hello was accepted, so an unauthenticated connection can make us decode at most
that much, and an error never keeps the objects of a failed decode alive (:func:`bare`).
"""

from __future__ import annotations

import reprlib
import struct
from typing import TypeVar

from crdt_kv.codec import MAX_KEY_BYTES, MAX_VALUE_BYTES
from crdt_kv.errors import ConfigError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FRAME_LIMIT",
    "HELLO_MAX_FRAME_BYTES",
    "MIN_MAX_FRAME_BYTES",
    "FrameDecoder",
    "Inbox",
    "bare",
    "check_frame_limit",
    "short",
]

DEFAULT_MAX_FRAME_BYTES = 8 << 20
"""The frame limit a side assumes of a peer whose Hello does not state one."""
HELLO_MAX_FRAME_BYTES = 16 << 10
"""The limit of the first frame of a stream (the peer's Hello, which a sender trims to fit):
until we accepted the peer's Hello, no frame larger than this is buffered or decoded."""
MIN_MAX_FRAME_BYTES = MAX_VALUE_BYTES + MAX_KEY_BYTES + 1024
"""The smallest ``max_frame_bytes`` a side may have: room for a batch of one entry with the
largest key and value a local write accepts, plus the batch's framing."""
FRAME_LIMIT = (1 << 32) - 1
"""The largest length the 4-byte prefix can state."""
_LEN = struct.Struct(">I")

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple = 2, 4, 4
_SHORT.maxstring = _SHORT.maxother = 60


def short(v: object) -> str:
    """A repr of at most about 60 characters that costs the same for a huge value: hostile
    input must not make an error message allocate (a plain ``f"{v!r:.60}"`` reprs it all)."""
    if isinstance(v, bytes | bytearray | str):
        text = repr(v[:61])
        return text if len(v) <= 60 else text[:60] + "..."
    return _SHORT.repr(v)


_E = TypeVar("_E", bound=BaseException)


def bare(exc: _E) -> _E:
    """``exc`` without its traceback and chained exceptions, returned for storing.

    A decode error's traceback holds the frames that held the decoded objects (a hostile
    frame of tiny CBOR items decodes to about 64 times its size); a stored error must not
    keep them alive."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None
    return exc


def check_frame_limit(value: object, name: str = "max_frame_bytes") -> None:
    """A frame limit must hold one maximal entry (:data:`MIN_MAX_FRAME_BYTES`) and fit the
    4-byte length prefix; else :class:`ConfigError` naming ``name``."""
    if type(value) is not int or not MIN_MAX_FRAME_BYTES <= value <= FRAME_LIMIT:
        raise ConfigError(
            f"{name} must be an int in {MIN_MAX_FRAME_BYTES}..{FRAME_LIMIT} (room for one "
            f"entry with a key of MAX_KEY_BYTES and a value of MAX_VALUE_BYTES), got {value!r}"
        )


class FrameDecoder:
    """Splits a byte stream into frame payloads, refusing frames over ``max_frame_bytes``.

    The length is checked before any of the payload is kept, so a hostile length prefix
    cannot make us allocate. :meth:`feed` splits everything at once; :meth:`push` and
    :meth:`next_frame` split one frame at a time, so the limit may change between frames.
    After a refused length the buffer is emptied.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self.max_frame_bytes = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def push(self, data: bytes) -> None:
        """Add received bytes without splitting them."""
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None until more bytes arrive."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _LEN.unpack_from(buf)
        if length > self.max_frame_bytes:
            buf.clear()
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        if len(buf) - 4 < length:
            return None
        payload = bytes(buf[4 : 4 + length])
        del buf[: 4 + length]
        return payload

    def pending(self, most: int) -> tuple[bytes, int] | None:
        """A copy of the first ``most`` payload bytes of the incomplete frame being
        received, and its length; None unless such a frame has that many bytes here."""
        buf = self._buf
        if len(buf) < 4 + most:
            return None
        (length,) = _LEN.unpack_from(buf)
        if len(buf) - 4 >= length or length > self.max_frame_bytes:
            return None
        return bytes(buf[4 : 4 + most]), length

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete payload now available."""
        self._buf += data
        out: list[bytes] = []
        while (payload := self.next_frame()) is not None:
            out.append(payload)
        return out


class Inbox:
    """What a session received and has not processed yet, cut into frames on demand.

    The first frame may be at most :data:`HELLO_MAX_FRAME_BYTES` until :meth:`open_up`
    (the session accepted the peer's Hello) raises the limit to ``max_frame_bytes``.
    Frames wait here, as bytes, while the session waits for storage.
    """

    __slots__ = ("_decoder", "_limit", "eof", "error")

    def __init__(self, max_frame_bytes: int) -> None:
        self._decoder = FrameDecoder(max_frame_bytes=min(HELLO_MAX_FRAME_BYTES, max_frame_bytes))
        self._limit = max_frame_bytes
        self.eof = False
        """The peer ended the stream (a partial frame left is discarded)."""
        self.error: ProtocolError | None = None
        """A refused length prefix; nothing after it is read."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet processed."""
        return self._decoder.buffered

    @property
    def limit(self) -> int:
        """The largest frame accepted now."""
        return self._decoder.max_frame_bytes

    def push(self, data: bytes) -> None:
        """Bytes from the peer (``b""``: end of stream); ignored after an error or the end."""
        if not data:
            self.eof = True
        elif self.error is None and not self.eof:
            self._decoder.push(data)

    def open_up(self) -> None:
        """The peer's Hello was accepted: frames up to ``max_frame_bytes`` from now on."""
        self._decoder.max_frame_bytes = self._limit

    def pending(self, most: int) -> tuple[bytes, int] | None:
        """:meth:`FrameDecoder.pending` of the frame under way (None after an error)."""
        return None if self.error is not None else self._decoder.pending(most)

    def next(self) -> bytes | None:
        """The next payload, or None (then see :attr:`error` and :attr:`eof`)."""
        if self.error is not None:
            return None
        try:
            return self._decoder.next_frame()
        except ProtocolError as exc:
            self.error = bare(exc)
            return None
