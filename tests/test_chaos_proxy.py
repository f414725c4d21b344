"""The chaos run's fault-injecting proxy (crdt_kv/testing/chaos/proxy.py) on loopback:
bytes pass unchanged, and each fault does what the nemesis counts it as."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio

from crdt_kv.testing.chaos.proxy import FaultProxy, Pipe


@dataclass
class Target:
    """A node stand-in: keeps every accepted stream for the test to read and write."""

    accepted: list[trio.SocketStream] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted.append(stream)
        self.arrived.set()
        await trio.sleep_forever()

    async def next_stream(self) -> trio.SocketStream:
        with trio.fail_after(5):
            while not self.accepted:
                await self.arrived.wait()
                self.arrived = trio.Event()
        return self.accepted.pop(0)


@dataclass
class Net:
    proxy: FaultProxy
    targets: dict[str, Target]
    streams: list[trio.SocketStream] = field(default_factory=list)

    async def dial(self, src: str, dst: str) -> tuple[trio.SocketStream, trio.SocketStream]:
        """A connection ``src`` dials to ``dst`` through the proxy, and its far end."""
        near = await self.connect(src, dst)
        far = await self.targets[dst].next_stream()
        self.streams.append(far)
        with trio.fail_after(5):  # the proxy books the pipe once its own dial returned
            while self.pipe_of(near) is None:
                await trio.sleep(0.01)
        return near, far

    def pipe_of(self, near: trio.SocketStream) -> Pipe | None:
        mine = near.socket.getsockname()
        return next((p for p in self.proxy.pipes if p.client.socket.getpeername() == mine), None)

    async def connect(self, src: str, dst: str) -> trio.SocketStream:
        _, port = self.proxy.address(src, dst).split(":")
        near = await trio.open_tcp_stream("127.0.0.1", int(port))
        self.streams.append(near)
        return near


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    async with trio.open_nursery() as nursery:
        targets = {name: Target() for name in ("a", "b")}
        addresses = {}
        for name, target in targets.items():
            listeners = await nursery.start(trio.serve_tcp, target.handle, 0)
            addresses[name] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        proxy = FaultProxy(addresses, rng=random.Random(1))
        await nursery.start(proxy.run)
        net = Net(proxy, targets)
        yield net
        nursery.cancel_scope.cancel()
    for stream in net.streams:
        await trio.aclose_forcefully(stream)


async def read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = b""
    with trio.fail_after(5):
        while len(buf) < n:
            chunk = await stream.receive_some(n - len(buf))
            assert chunk, "closed early"
            buf += chunk
    return buf


async def nothing_arrives(stream: trio.SocketStream, wait_s: float = 0.3) -> bool:
    with trio.move_on_after(wait_s):
        await stream.receive_some(1)
        return False
    return True


async def test_bytes_pass_both_ways_unchanged_and_half_closes_pass_on(net: Net) -> None:
    near, far = await net.dial("a", "b")
    payload = bytes(range(256)) * 1000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(near.send_all, payload)
        assert await read_exactly(far, len(payload)) == payload
    await far.send_all(b"answer")
    assert await read_exactly(near, 6) == b"answer"
    await near.send_eof()
    with trio.fail_after(5):
        assert await far.receive_some(10) == b""  # the end of stream reached b
    await far.send_all(b"still flows back")
    assert await read_exactly(near, 16) == b"still flows back"
    assert net.proxy.connections == 1 and net.proxy.forwarded >= len(payload)


async def test_a_one_way_block_holds_one_direction_until_lifted(net: Net) -> None:
    a_dialed, b_end = await net.dial("a", "b")
    b_dialed, a_end = await net.dial("b", "a")
    net.proxy.block("a", "b")
    await a_dialed.send_all(b"a to b")  # dialed by a
    await a_end.send_all(b"a to b again")  # on the connection b dialed
    await b_end.send_all(b"b to a")
    assert await read_exactly(a_dialed, 6) == b"b to a"  # the other direction flows
    assert await nothing_arrives(b_end) and await nothing_arrives(b_dialed)
    net.proxy.block("a", "b")
    net.proxy.block("a", "b", False)  # overlapping blocks: still one in force
    assert await nothing_arrives(b_end, 0.1)
    net.proxy.block("a", "b", False)
    assert await read_exactly(b_end, 6) == b"a to b"  # held, not lost
    assert await read_exactly(b_dialed, 12) == b"a to b again"


async def test_a_delay_holds_each_chunk_at_least_that_long(net: Net) -> None:
    near, far = await net.dial("a", "b")
    net.proxy.set_delay("a", "b", 0.25, 0.05)
    sent = trio.current_time()
    await near.send_all(b"late")
    assert await read_exactly(far, 4) == b"late"
    assert trio.current_time() - sent >= 0.25
    net.proxy.set_delay("a", "b", 0.0)
    await far.send_all(b"ok")  # b -> a was never delayed
    assert await read_exactly(near, 2) == b"ok"


async def test_a_stall_holds_one_connection_only(net: Net) -> None:
    first, first_far = await net.dial("a", "b")
    second, second_far = await net.dial("a", "b")
    pipe = net.pipe_of(first)
    assert pipe is not None
    net.proxy.stall(pipe)
    await first.send_all(b"held")
    await second.send_all(b"free")
    assert await read_exactly(second_far, 4) == b"free"
    assert await nothing_arrives(first_far)
    net.proxy.heal()
    assert await read_exactly(first_far, 4) == b"held"


@pytest.mark.parametrize("reset", [False, True])
async def test_drop_closes_and_cut_resets_both_ends(net: Net, reset: bool) -> None:
    near, far = await net.dial("a", "b")
    assert net.proxy.close(net.proxy.between("a", "b"), reset=reset) == 1
    for end in (near, far):
        with trio.fail_after(5):
            if reset:
                with pytest.raises(trio.BrokenResourceError, match="reset"):
                    while await end.receive_some(10):
                        pass
            else:
                assert await end.receive_some(10) == b""


async def test_a_dial_to_a_node_that_is_down_is_closed_and_counted(net: Net) -> None:
    net.proxy.targets["b"] = ("127.0.0.1", 1)  # nothing listens there
    near = await net.connect("a", "b")
    with trio.fail_after(5):
        assert await near.receive_some(10) == b""
    assert net.proxy.refused == 1 and net.proxy.connections == 0
