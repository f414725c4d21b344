"""The blocking client of a node's client endpoint (crdt_kv/client.py), against a real
node on loopback and against a fake endpoint that misbehaves."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import cbor2
import pytest
import trio

import crdt_kv
from crdt_kv import Client, RequestRefusedError
from crdt_kv.errors import ClosedError, RemoteProtocolError
from crdt_kv.protocol.client_api import frame

T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def test_put_delete_get_info_return_typed_results() -> None:
    with crdt_kv.open(backend="memory", peer_id="a", value_encoding="json") as store:
        async with crdt_kv.serve(store, client_listen="127.0.0.1:0") as node:
            assert node.client_address is not None
            address = f"127.0.0.1:{node.client_address[1]}"

            def session() -> dict[str, Any]:
                with Client(address, timeout_s=5) as c:
                    out: dict[str, Any] = {"absent": c.get("k"), "put": c.put("k", [1, "x"])}
                    out["got"] = c.get("k")
                    with pytest.raises(RequestRefusedError) as refused:
                        c.put("k", b"not json")
                    out["refused"] = refused.value
                    out["after"] = c.get("k")  # the connection is still usable
                    out["del"] = c.delete("k")
                    out["gone"] = c.get("k")
                    out["info"] = c.info()
                    out["repr"] = repr(c)
                assert c.closed and "closed" in repr(c)
                with pytest.raises(ClosedError, match="closed"):
                    c.get("k")
                c.close()  # idempotent
                return out

            out = await in_thread(session)
    assert out["absent"] is None
    put, got = out["put"], out["got"]
    assert put.peer == "a" and (got.key, got.value, got.hlc, got.peer) == (
        "k",
        [1, "x"],
        put.hlc,
        "a",
    )
    assert not got.deleted
    assert out["refused"].kind == "EncodingError" and "EncodingError" in str(out["refused"])
    assert out["after"] == got
    assert out["del"].hlc > put.hlc
    assert out["gone"].deleted and out["gone"].value is None and out["gone"].hlc == out["del"].hlc
    info = out["info"]
    assert info["peer_id"] == "a" and info["live"] == 0 and len(info["digest"]) == 32
    assert "open" in out["repr"]


async def test_a_lost_connection_raises_oserror_and_closes_the_client() -> None:
    with crdt_kv.open(backend="memory", peer_id="a") as store:
        async with crdt_kv.serve(store, client_listen="127.0.0.1:0") as node:
            assert node.client_address is not None
            address = f"127.0.0.1:{node.client_address[1]}"
            client = await in_thread(lambda: Client(address, timeout_s=5))
            await in_thread(lambda: client.put("k", 1))
        # The node stopped: its connections are closed.
        with pytest.raises(OSError):
            await in_thread(lambda: client.put("k", 2))
        assert client.closed
        with pytest.raises(OSError):
            await in_thread(lambda: Client(address, timeout_s=5))


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (lambda rid: frame(cbor2.dumps([rid, "ok", [1]])), "put result"),
        (lambda rid: frame(cbor2.dumps([rid + 1, "ok", [1, "a"]])), "while waiting for"),
        (lambda rid: frame(b"\xff"), "not valid CBOR"),
        (lambda rid: (1 << 30).to_bytes(4, "big"), "exceeds"),
        (lambda rid: frame(cbor2.dumps([rid, "error", "RemoteProtocolError", "bad"])), "bad"),
    ],
)
async def test_a_malformed_reply_raises_and_closes_the_client(
    answer: Callable[[int], bytes], said: str
) -> None:
    async def serve_one(stream: trio.SocketStream) -> None:
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += await stream.receive_some(1 << 16)
        rid = cbor2.loads(data[4:])[0]
        await stream.send_all(answer(rid))
        await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), serve_one, 0
        )
        port = listeners[0].socket.getsockname()[1]
        client = await in_thread(lambda: Client(f"127.0.0.1:{port}", timeout_s=5))
        with pytest.raises(RemoteProtocolError, match=said):
            await in_thread(lambda: client.put("k", 1))
        assert client.closed
        nursery.cancel_scope.cancel()


def test_a_malformed_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not 'host:port'"):
        Client("nonsense")
