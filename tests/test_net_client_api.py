"""The node's client endpoint (crdt_kv/net/client_api.py): both parties over an in-memory
stream pair, then the endpoint of a real node on loopback, whose writes replicate."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from net_helpers import mem_store, wait_until

import crdt_kv
from crdt_kv import Client, Store
from crdt_kv.errors import ConfigError
from crdt_kv.net.client_api import ClientEndpoint, is_loopback, open_client_endpoint
from crdt_kv.protocol.client_api import (
    CLIENT_MAX_FRAME_BYTES,
    ClientReply,
    ClientRequest,
    decode_reply,
    encode_request,
    frame,
)
from crdt_kv.protocol.framing import FrameDecoder
from crdt_kv.testing import ManualClock


class Wire:
    """The client side of a stream to the endpoint, frame by frame."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_bytes=CLIENT_MAX_FRAME_BYTES)

    async def call(self, op: str, *args: Any, rid: int = 1) -> ClientReply:
        await self.stream.send_all(encode_request(ClientRequest(rid, op, *args)))
        return await self.reply()

    async def reply(self) -> ClientReply:
        while (payload := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some(1 << 16)
            assert data, "the endpoint closed the connection"
            self.decoder.push(data)
        return decode_reply(payload)

    async def at_eof(self) -> bool:
        with trio.fail_after(5):
            return await self.stream.receive_some(1) == b""


@pytest.fixture
async def session(clock: ManualClock) -> AsyncIterator[tuple[Store, ClientEndpoint, Wire]]:
    store = mem_store("a", clock)
    endpoint = ClientEndpoint(store, [], idle_timeout_s=0.3)
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.handle, theirs)
        yield store, endpoint, Wire(ours)
        nursery.cancel_scope.cancel()
    store.close()


async def test_put_del_get_info_answer_with_the_stores_stamps(
    session: tuple[Store, ClientEndpoint, Wire],
) -> None:
    store, endpoint, wire = session
    assert await wire.call("get", "k") == ClientReply(1, True, None)
    put = await wire.call("put", "k", {"n": [1, 2]}, rid=2)
    e = store.entry("k")
    assert e is not None and put == ClientReply(2, True, [e.hlc, "a"])
    assert (await wire.call("get", "k", rid=3)).result == [e.hlc, "a", False, {"n": [1, 2]}]
    gone = await wire.call("del", "k", rid=4)
    e = store.entry("k")
    assert e is not None and e.deleted and gone.result == [e.hlc, "a"]
    assert (await wire.call("get", "k", rid=5)).result == [e.hlc, "a", True, None]
    info = (await wire.call("info", rid=6)).result
    assert info == {
        "peer_id": "a",
        "incarnation": store.incarnation,
        "digest": store.digest(),
        "live": 0,
        "last_seq": store.last_seq,
    }
    assert endpoint.answered == 6 and endpoint.refused == 0


async def test_a_refused_write_loses_nothing_and_keeps_the_connection(clock: ManualClock) -> None:
    store = mem_store("a", clock, value_encoding="json")
    endpoint = ClientEndpoint(store, [])
    ours, theirs = trio.testing.memory_stream_pair()
    wire = Wire(ours)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.handle, theirs)
        refused = await wire.call("put", "k", b"bytes are not JSON", rid=7)
        assert not refused.ok and refused.id == 7
        assert refused.kind == "EncodingError" and "key 'k'" in refused.message
        assert store.last_seq == 0 and store.entry("k") is None
        assert (await wire.call("put", "k", "fine", rid=8)).ok
        assert store.get("k") == "fine" and endpoint.refused == 1
        nursery.cancel_scope.cancel()
    store.close()


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (frame(cbor2.dumps({"op": "put"})), "must be an array"),
        (frame(cbor2.dumps([1, "put", "k", cbor2.CBORTag(0, "x")])), "CBOR tag 0"),
        (struct.pack(">I", CLIENT_MAX_FRAME_BYTES + 1), "exceeds max_frame_bytes"),
    ],
)
async def test_a_malformed_request_is_answered_then_the_connection_closed(
    session: tuple[Store, ClientEndpoint, Wire], sent: bytes, said: str
) -> None:
    store, endpoint, wire = session
    await wire.stream.send_all(sent)
    reply = await wire.reply()
    assert (reply.id, reply.ok, reply.kind) == (0, False, "RemoteProtocolError")
    assert said in reply.message
    assert await wire.at_eof()
    assert endpoint.rejected == 1 and store.last_seq == 0


async def test_an_idle_connection_is_closed(session: tuple[Store, ClientEndpoint, Wire]) -> None:
    _, _, wire = session
    assert (await wire.call("info")).ok
    assert await wire.at_eof()  # idle_timeout_s=0.3


async def test_connections_beyond_the_limit_are_closed_at_once(clock: ManualClock) -> None:
    with mem_store("a", clock) as store:
        endpoint = ClientEndpoint(store, [], max_connections=1)
        first, first_server = trio.testing.memory_stream_pair()
        second, second_server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.handle, first_server)
            await trio.testing.wait_all_tasks_blocked()
            await endpoint.handle(second_server)  # returns at once
            assert endpoint.rejected == 1
            assert await Wire(second).at_eof()
            assert (await Wire(first).call("info")).ok
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("", False),
        ("0.0.0.0", False),
        ("192.0.2.7", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("listen", ["0.0.0.0:0", ":0", "192.0.2.7:7500"])
async def test_a_non_loopback_client_address_is_refused(clock: ManualClock, listen: str) -> None:
    with mem_store("a", clock) as store:
        with pytest.raises(ConfigError, match="not a loopback address"):
            await open_client_endpoint(store, listen)
        with pytest.raises(ConfigError, match="client_allow_remote"):
            async with crdt_kv.serve(store, client_listen=listen):
                pass  # pragma: no cover - never entered


async def test_a_nodes_client_endpoint_takes_writes_that_replicate() -> None:
    """A blocking client writes through node a (loopback); b, a's peer, gets the write with
    the stamp the client was given."""
    with (
        crdt_kv.open(backend="memory", peer_id="a") as a,
        crdt_kv.open(backend="memory", peer_id="b") as b,
    ):
        async with crdt_kv.serve(a, client_listen="127.0.0.1:0", sync_interval_s=0.2) as na:
            assert na.client_address is not None and na.client_address[0] == "127.0.0.1"
            there = f"127.0.0.1:{na.address[1]}"
            async with crdt_kv.serve(b, peers=[there], sync_interval_s=0.2):
                address = f"127.0.0.1:{na.client_address[1]}"

                def write() -> tuple[Any, Any]:
                    with Client(address) as c:
                        return c.put("color", "red"), c.delete("size")

                put, gone = await trio.to_thread.run_sync(write)
                assert put.peer == "a" and gone.hlc > put.hlc

                def has_both() -> bool:
                    e, d = b.entry("color"), b.entry("size")
                    return (
                        e is not None
                        and (e.hlc, e.peer, e.value) == (put.hlc, "a", "red")
                        and d is not None
                        and d.deleted
                        and d.hlc == gone.hlc
                    )

                await wait_until(has_both, what="the client's writes on b")
