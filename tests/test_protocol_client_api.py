"""The client endpoint's wire format (crdt_kv/protocol/client_api.py): what each side
sends decodes to the same request or reply, and malformed bytes are refused by field."""

from __future__ import annotations

import struct

import cbor2
import pytest

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.protocol.client_api import (
    CLIENT_MAX_FRAME_BYTES,
    ClientReply,
    ClientRequest,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    stamp,
)
from crdt_kv.protocol.framing import FrameDecoder


def payload_of(frame: bytes) -> bytes:
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


@pytest.mark.parametrize(
    "request_",
    [
        ClientRequest(1, "put", "k", {"a": [1, 2.5, None, b"x"]}),
        ClientRequest(2, "put", b"\x00bin", None),
        ClientRequest(3, "del", "k"),
        ClientRequest(4, "get", "k"),
        ClientRequest(2**64 - 1, "info"),
    ],
)
def test_requests_round_trip(request_: ClientRequest) -> None:
    frame = encode_request(request_)
    assert decode_request(payload_of(frame)) == request_
    assert FrameDecoder(max_frame_bytes=CLIENT_MAX_FRAME_BYTES).feed(frame) == [frame[4:]]


def test_request_layout_is_a_plain_array() -> None:
    """What a client in another language writes: an array, the op as text, no padding."""
    assert payload_of(encode_request(ClientRequest(7, "del", "k"))) == cbor2.dumps([7, "del", "k"])
    assert payload_of(encode_request(ClientRequest(8, "info"))) == cbor2.dumps([8, "info"])


def test_encoding_refuses_unknown_ops_and_ids() -> None:
    with pytest.raises(ValueError, match="unknown client op 'scan'"):
        encode_request(ClientRequest(1, "scan", "k"))
    with pytest.raises(ValueError, match="request id"):
        encode_request(ClientRequest(-1, "get", "k"))


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (cbor2.dumps({"id": 1}), "'request' must be an array"),
        (cbor2.dumps([1]), r"\[id, op, ...\]"),
        (cbor2.dumps([-1, "get", "k"]), "request.id"),
        (cbor2.dumps([1, 2, "k"]), "request.op"),
        (cbor2.dumps([1, "scan", "k"]), "must be one of put, del, get, info"),
        (cbor2.dumps([1, "put", "k"]), "'put' request has 4 elements, got 3"),
        (cbor2.dumps([1, "info", "k"]), "'info' request has 2 elements"),
        (cbor2.dumps([1, "get", 5]), "request.key"),
        (cbor2.dumps([1, "get", "k" * (64 * 1024 + 1)]), "request.key"),
        (cbor2.dumps([1, "put", "k", cbor2.CBORTag(1, 0)]), "CBOR tag 1"),
        (cbor2.dumps([1, "get", "k"]) + b"\x00", "trailing bytes"),
        (b"\xff", "not valid CBOR"),
    ],
)
def test_malformed_requests_are_refused_by_field(payload: bytes, said: str) -> None:
    with pytest.raises(RemoteProtocolError, match=said):
        decode_request(payload)


def test_replies_round_trip_and_stamps_are_checked() -> None:
    ok = ClientReply(9, True, [123, "a"])
    assert decode_reply(payload_of(encode_reply(ok))) == ok
    assert stamp(ok.result, "put result") == (123, "a")
    refused = ClientReply(9, False, kind="EncodingError", message="value too big")
    assert decode_reply(payload_of(encode_reply(refused))) == refused
    with pytest.raises(RemoteProtocolError, match=r"put result\.peer"):
        stamp([1, ""], "put result")
    with pytest.raises(RemoteProtocolError, match="put result"):
        stamp([1], "put result")


@pytest.mark.parametrize(
    "body",
    [
        [1, "ok"],
        [1, "maybe", None],
        [1, "error", "Kind"],
        [1, "ok", None, None],
        [1, "error", 2, ""],
    ],
)
def test_malformed_replies_are_refused(body: list[object]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_reply(cbor2.dumps(body))
