"""Strict decoding of CBOR messages from peers: one data item, no tags, exact field types.

Every wire format of crdt_kv (replication messages, repair messages, discovery
announcements) decodes peers' bytes the same way, so the rules live here once
(``spec/protocol.md`` section 3): a payload is exactly one CBOR item, no tag anywhere
(cbor2 would otherwise build bignums, string and shared references that pass exact type
checks), and each field has an exact type and range. Every refusal is a
:class:`~crdt_kv.errors.RemoteProtocolError` naming the field.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import cbor2

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.protocol.framing import short

__all__ = ["U64", "NoTags", "array", "boolean", "byte_string", "fail", "load", "text", "uint"]

U64 = (1 << 64) - 1


def fail(what: str) -> RemoteProtocolError:
    """The error for a peer's malformed bytes (raise it)."""
    return RemoteProtocolError(what)


class NoTags(Mapping[int, Any]):
    """A semantic-decoder table that refuses every CBOR tag (``RemoteProtocolError`` naming
    the tag and ``where`` it appeared): no message or announcement carries one."""

    def __init__(self, where: str) -> None:
        self._where = where

    def __getitem__(self, tag: int) -> Any:
        def refuse(*_: object) -> NoReturn:
            raise fail(f"CBOR tag {tag} is not allowed in {self._where}")

        return refuse

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def load(payload: bytes, no_tags: NoTags) -> Any:
    """Decode exactly one CBOR item (no tags, no trailing bytes) from a peer's payload."""
    try:
        fp = io.BytesIO(payload)
        obj = cbor2.CBORDecoder(fp, semantic_decoders=no_tags).decode()
        if fp.tell() != len(payload):
            raise fail(f"{len(payload) - fp.tell()} trailing bytes after the message")
    except RemoteProtocolError:
        raise
    except (cbor2.CBORError, ValueError, TypeError, EOFError, RecursionError, OverflowError) as exc:
        if isinstance(exc.__cause__, RemoteProtocolError):
            raise exc.__cause__ from None  # our tag refusal, wrapped by cbor2
        raise fail(f"frame is not valid CBOR: {exc}") from None
    return obj


def uint(v: object, field: str, maximum: int = U64) -> int:
    if type(v) is not int or not 0 <= v <= maximum:
        raise fail(f"field {field!r} must be an unsigned integer <= {maximum}, got {short(v)}")
    return v


def boolean(v: object, field: str) -> bool:
    if type(v) is not bool:
        raise fail(f"field {field!r} must be a boolean, got {short(v)}")
    return v


def text(v: object, field: str, max_bytes: int = 255, *, min_bytes: int = 0) -> str:
    if type(v) is not str or not min_bytes <= len(v.encode("utf-8")) <= max_bytes:
        span = f"at most {max_bytes}" if not min_bytes else f"{min_bytes}..{max_bytes}"
        raise fail(f"field {field!r} must be text of {span} bytes, got {short(v)}")
    return v


def array(v: object, field: str, length: int | None = None) -> list[Any]:
    if type(v) is not list or (length is not None and len(v) != length):
        want = "an array" if length is None else f"an array of {length}"
        raise fail(f"field {field!r} must be {want}, got {short(v)}")
    return v


def byte_string(v: object, field: str, length: int | None = None) -> bytes:
    if type(v) is not bytes or (length is not None and len(v) != length):
        want = "a byte string" if length is None else f"a byte string of {length} bytes"
        raise fail(f"field {field!r} must be {want}, got {short(v)}")
    return v
