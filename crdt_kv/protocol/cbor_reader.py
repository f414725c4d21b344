"""A strict, incremental CBOR reader for the shapes peers send (``spec/protocol.md`` §3).

Why not decode a whole payload with cbor2 and check the result? Because the objects come
first and the checks after: a frame of one-byte items (empty arrays, say) decodes into
about 64 times its size before the first check fails. This reader checks each item's head
(its major type and argument) *before* decoding the item, so a field of the wrong type is
refused having allocated nothing, and every object it builds is one the message needs.

It accepts every well-formed encoding of a value (longer integer heads, indefinite
lengths, strings of up to :data:`MAX_STRING_CHUNKS` chunks), refuses tags, floats, maps and
simple values other than false/true/null, and counts the items it decoded
(:attr:`Reader.items`) so callers can bound what a message costs in memory. Errors are
:class:`RemoteProtocolError` naming the field.
"""

from __future__ import annotations

from crdt_kv.protocol.fields import U64, fail

__all__ = ["INDEFINITE", "MAX_STRING_CHUNKS", "Reader", "Truncated"]

INDEFINITE = -1
"""The length :meth:`Reader.array` returns for an indefinite-length array (read items
until :meth:`Reader.at_break` is true)."""

MAX_STRING_CHUNKS = 64
"""The most chunks an indefinite-length string may have (``spec/protocol.md`` §3): senders
never split strings, and a frame of millions of empty chunks costs a decoder seconds while
staying a valid value."""

_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)
_NAMES = (
    "an unsigned integer",
    "a negative integer",
    "a byte string",
    "a text string",
    "an array",
    "a map",
    "a tag",
    "a simple value or float",
)
_FALSE, _TRUE, _NULL, _BREAK = 0xF4, 0xF5, 0xF6, 0xFF


class Truncated(Exception):  # noqa: N818 - a signal, not an error
    """A ``partial`` reader reached the end of the bytes it has: the frame may still be
    fine (its rest has not arrived)."""


class Reader:
    """Reads CBOR items one at a time from ``payload``, checking each head first.

    ``partial``: ``payload`` is only the start of a frame; reading past its end raises
    :class:`Truncated` instead of an error (see :func:`crdt_kv.protocol.messages
    .check_frame_prefix`)."""

    __slots__ = ("_b", "_end", "items", "partial", "pos")

    def __init__(self, payload: bytes, *, partial: bool = False) -> None:
        self._b = payload
        self._end = len(payload)
        self.partial = partial
        self.pos = 0
        """Offset of the next unread byte."""
        self.items = 0
        """Data items decoded so far (each array, string and integer counts one)."""

    @property
    def buffer(self) -> bytes:
        """The payload being read."""
        return self._b

    # --- heads ----------------------------------------------------------------------------

    def _take(self, n: int, where: str) -> bytes:
        pos = self.pos
        if pos + n > self._end:
            if self.partial:
                raise Truncated
            raise fail(f"{where}: the frame ends inside a CBOR item")
        self.pos = pos + n
        return self._b[pos : pos + n]

    def _head(self, where: str) -> tuple[int, int]:
        """``(major, argument)`` of the next item; argument is :data:`INDEFINITE` for
        additional information 31."""
        pos = self.pos
        if pos >= self._end:
            if self.partial:
                raise Truncated
            raise fail(f"{where}: the frame ends before this field")
        ib = self._b[pos]
        self.pos = pos + 1
        major, ai = ib >> 5, ib & 31
        if major == _TAG:
            raise fail(f"CBOR tag in {where}: tags are not allowed in a message")
        if ai < 24:
            return major, ai
        if ai <= 27:
            return major, int.from_bytes(self._take(1 << (ai - 24), where), "big")
        if ai == 31 and major in (_BYTES, _TEXT, _ARRAY, _MAP, _SIMPLE):
            return major, INDEFINITE
        raise fail(f"{where}: malformed CBOR head 0x{ib:02x}")

    def _expect(self, where: str, want: int) -> int:
        major, arg = self._head(where)
        if major != want:
            raise fail(f"field {where!r} must be {_NAMES[want]}, got {_NAMES[major]}")
        return arg

    # --- scalars --------------------------------------------------------------------------

    def uint(self, where: str, maximum: int = U64) -> int:
        """An unsigned integer (major type 0) at most ``maximum``."""
        v = self._expect(where, _UINT)
        if v > maximum:
            raise fail(f"field {where!r} must be an unsigned integer <= {maximum}, got {v}")
        self.items += 1
        return v

    def boolean(self, where: str) -> bool:
        """``false`` or ``true``."""
        b = self._peek_byte(where)
        if b not in (_FALSE, _TRUE):
            raise fail(f"field {where!r} must be a boolean")
        self.pos += 1
        self.items += 1
        return b == _TRUE

    def is_null(self, where: str) -> bool:
        """True (and consumed) if the next item is ``null``."""
        if self._peek_byte(where) == _NULL:
            self.pos += 1
            self.items += 1
            return True
        return False

    def byte_string(self, where: str, max_len: int = 1 << 32) -> bytes:
        """A byte string (major type 2, definite or chunked) of at most ``max_len`` bytes."""
        return self._string(where, _BYTES, max_len)

    def text(self, where: str, max_bytes: int, *, min_bytes: int = 0) -> str:
        """A UTF-8 text string of ``min_bytes..max_bytes`` bytes."""
        raw = self._string(where, _TEXT, max_bytes)
        if len(raw) < min_bytes:
            raise fail(f"field {where!r} must be text of {min_bytes}..{max_bytes} bytes")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(f"field {where!r} is not valid UTF-8") from None

    def _string(self, where: str, major: int, max_len: int) -> bytes:
        n = self._expect(where, major)
        self.items += 1
        if n != INDEFINITE:
            if n > max_len:
                raise fail(f"field {where!r} is {n} bytes, more than {max_len}")
            return self._take(n, where)
        chunks: list[bytes] = []
        size = 0
        while not self.at_break(where):
            if len(chunks) == MAX_STRING_CHUNKS:
                raise fail(f"field {where!r} is split into more than {MAX_STRING_CHUNKS} chunks")
            c = self._expect(where, major)
            if c == INDEFINITE:
                raise fail(f"field {where!r} nests a chunked string in a chunked string")
            size += c
            if size > max_len:
                raise fail(f"field {where!r} is more than {max_len} bytes")
            chunks.append(self._take(c, where))
        return b"".join(chunks)

    # --- arrays ---------------------------------------------------------------------------

    def array(self, where: str, length: int | None = None) -> int:
        """An array head: its length, or :data:`INDEFINITE`. With ``length`` the array must
        be definite with exactly that many items... or indefinite (then the caller reads
        ``length`` items and :meth:`end_array` checks the break)."""
        n = self._expect(where, _ARRAY)
        self.items += 1
        if length is not None and n not in (length, INDEFINITE):
            raise fail(f"field {where!r} must be an array of {length}, got {n} items")
        return n

    def at_break(self, where: str) -> bool:
        """Inside an indefinite array or string: True (and consumed) at its end."""
        if self._peek_byte(where) == _BREAK:
            self.pos += 1
            return True
        return False

    def end_array(self, n: int, where: str) -> None:
        """After reading the fixed items of an array whose head said ``n``: an indefinite
        one must end here."""
        if n == INDEFINITE and not self.at_break(where):
            raise fail(f"field {where!r} has more items than its shape allows")

    def finish(self) -> None:
        """The payload must end here (one data item per payload)."""
        if self.pos != self._end:
            raise fail(f"{self._end - self.pos} trailing bytes after the message")

    def next_is_bytes(self, where: str) -> bool:
        """Whether the next item is a byte string (nothing consumed)."""
        return self._peek_byte(where) >> 5 == _BYTES

    def _peek_byte(self, where: str) -> int:
        if self.pos >= self._end:
            if self.partial:
                raise Truncated
            raise fail(f"{where}: the frame ends before this field")
        return self._b[self.pos]
