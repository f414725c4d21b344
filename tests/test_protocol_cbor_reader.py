"""The strict incremental CBOR reader (crdt_kv/protocol/cbor_reader.py)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.protocol.cbor_reader import INDEFINITE, MAX_STRING_CHUNKS, Reader


@given(st.integers(0, (1 << 64) - 1))
def test_uint_of_every_head_width(v: int) -> None:
    r = Reader(cbor2.dumps(v))
    assert r.uint("f") == v
    r.finish()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"\x18\x05", 5),  # a longer head than needed is accepted
        (b"\x1b" + (7).to_bytes(8, "big"), 7),
    ],
)
def test_non_preferred_integer_heads_are_accepted(raw: bytes, value: int) -> None:
    assert Reader(raw).uint("f") == value


def test_a_string_of_the_most_chunks_allowed_is_joined() -> None:
    raw = b"\x5f" + b"\x41a" * MAX_STRING_CHUNKS + b"\xff"
    assert Reader(raw).byte_string("k") == b"a" * MAX_STRING_CHUNKS


def test_chunked_strings_and_indefinite_arrays() -> None:
    r = Reader(bytes.fromhex("9f5f41614162ff7f6178ff") + b"\xff")
    assert r.array("a") == INDEFINITE
    assert r.byte_string("b") == b"ab"
    assert r.text("t", 10) == "x"
    assert r.at_break("a")
    r.finish()


@pytest.mark.parametrize(
    ("raw", "call", "match"),
    [
        (b"\xc2\x41\x01", "uint", "CBOR tag"),
        (b"\x1c", "uint", "malformed CBOR head"),
        (b"\x19\x01", "uint", "ends inside"),
        (b"", "uint", "ends before"),
        (b"\x41\x01", "uint", "must be an unsigned integer, got a byte string"),
        (b"\x80", "byte_string", "must be a byte string, got an array"),
        (b"\x5a\xff\xff\xff\xff", "byte_string", "more than 16"),
        (b"\x62\xff\xfe", "text", "not valid UTF-8"),
        (b"\x5f\x5f\xff\xff", "byte_string", "nests a chunked string"),
        (b"\x5f\x60\xff", "byte_string", "must be a byte string, got a text string"),
        (
            b"\x5f" + b"\x40" * (MAX_STRING_CHUNKS + 1) + b"\xff",
            "byte_string",
            "more than 64 chunks",
        ),
        (
            b"\x5f" + b"\x48" + b"a" * 8 + b"\x49" + b"a" * 9 + b"\xff",
            "byte_string",
            "more than 16",
        ),
        (b"\xf9\x00\x00", "uint", "got a simple value or float"),
    ],
)
def test_refusals_name_the_field(raw: bytes, call: str, match: str) -> None:
    r = Reader(raw)
    with pytest.raises(RemoteProtocolError, match=match):
        if call == "byte_string":
            r.byte_string("f", 16)
        elif call == "text":
            r.text("f", 16)
        else:
            r.uint("f")


def test_a_wrong_field_is_refused_before_its_content_is_decoded() -> None:
    payload = b"\x9a\x00\x10\x00\x00" + b"\x80" * (1 << 20)  # an array of a million arrays
    r = Reader(payload)
    with pytest.raises(RemoteProtocolError):
        r.byte_string("key")
    assert r.items == 0 and r.pos == 5


def test_trailing_bytes_are_refused() -> None:
    r = Reader(b"\x01\x02")
    r.uint("f")
    with pytest.raises(RemoteProtocolError, match="1 trailing bytes"):
        r.finish()
