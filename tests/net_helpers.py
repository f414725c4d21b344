"""Helpers shared by the ``tests/test_net_*.py`` files: stores, models, polling, raw frames.

Not a test module itself (no ``test_`` prefix). Everything here is real: stores are real
backends, streams are trio streams, and waiting polls real state with a deadline.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

import trio
import trio.testing

import crdt_kv
from crdt_kv import Store, Version
from crdt_kv.net import ReplicationResult
from crdt_kv.protocol.messages import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    Message,
    decode_message,
    encode_frame,
)
from crdt_kv.testing import DEFAULT_START_MS, ManualClock

T0 = DEFAULT_START_MS
"""Where the shared :class:`crdt_kv.testing.ManualClock` of a net test starts."""

TickClock = ManualClock
"""The old name of the net tests' clock, kept for tests written against it."""


def addr(node: Any) -> str:
    """A node's bound address as ``"host:port"``."""
    host, port = node.address
    return f"{host}:{port}"


def mem_store(peer: str, clock: Callable[[], int], **kw: Any) -> Store:
    """A memory-backed store with a fixed peer id."""
    return crdt_kv.open(backend="memory", peer_id=peer, clock=clock, **kw)


class Model:
    """The expected last-writer-wins state: the greatest :class:`Version` per key wins."""

    def __init__(self) -> None:
        self.best: dict[Any, tuple[Version, Any, bool]] = {}

    def record(self, key: Any, version: Version, value: Any, *, deleted: bool = False) -> None:
        cur = self.best.get(key)
        if cur is None or version > cur[0]:
            self.best[key] = (version, value, deleted)

    def put(self, store: Store, key: Any, value: Any) -> Version:
        v = store.put(key, value)
        self.record(key, v, value)
        return v

    def delete(self, store: Store, key: Any) -> Version:
        v = store.delete(key)
        self.record(key, v, None, deleted=True)
        return v

    def expected(self) -> dict[Any, Any]:
        return {k: val for k, (_, val, dead) in self.best.items() if not dead}

    def winners(self) -> dict[Any, Version]:
        return {k: v for k, (v, _, _) in self.best.items()}


def assert_matches_model(store: Store, model: Model) -> None:
    """``store`` holds exactly the model's live values, each stamped by the winning write."""
    assert dict(store.items()) == model.expected()
    for key, version in model.winners().items():
        e = store.entry(key)
        assert e is not None, f"{store.peer_id} lacks {key!r}"
        assert (e.hlc, e.peer) == (version.hlc, version.peer), key


def assert_converged(stores: Iterable[Store]) -> None:
    """Equal digests, and (to name the difference if not) equal contents."""
    stores = list(stores)
    first = stores[0]
    for s in stores[1:]:
        assert dict(s.items()) == dict(first.items()), (first.peer_id, s.peer_id)
        assert s.digest() == first.digest(), (first.peer_id, s.peer_id)


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, poll: float = 0.01, what: str = ""
) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` after ``timeout`` s."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(poll)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


# --- raw protocol peers ------------------------------------------------------------------


def hello_for(
    peer_id: str,
    *,
    hlc: int,
    cluster_id: str = "default",
    send: bool = True,
    receive: bool = True,
    live: bool = False,
    last_seq: int = 0,
    incarnation: bytes = b"\x01" * 16,
    max_batch_entries: int = 1000,
) -> Hello:
    """A valid Hello a hand-driven raw peer can send."""
    return Hello(
        version=PROTOCOL_VERSION,
        cluster_id=cluster_id,
        peer_id=peer_id,
        incarnation=incarnation,
        hlc=hlc,
        last_seq=last_seq,
        send=send,
        receive=receive,
        live=live,
        key_encoding="utf-8",
        value_encoding="cbor",
        max_batch_entries=max_batch_entries,
    )


def raw_frame(payload: bytes) -> bytes:
    """A length-prefixed frame around arbitrary payload bytes."""
    return struct.pack(">I", len(payload)) + payload


class RawPeer:
    """Speaks frames by hand over a trio stream, to send what a real peer never would."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.pending: list[Message] = []
        self.eof = False

    async def send(self, *msgs: Message) -> None:
        await self.stream.send_all(b"".join(encode_frame(m) for m in msgs))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, timeout: float = 5.0) -> Message | None:
        """The next message, or None at end of stream (or broken stream)."""
        with trio.fail_after(timeout):
            while not self.pending:
                if self.eof:
                    return None
                try:
                    data = await self.stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.eof = True
                    continue
                self.pending.extend(decode_message(p) for p in self.decoder.feed(data))
        return self.pending.pop(0)

    async def drain(self, timeout: float = 5.0) -> list[Message]:
        """Every message until the other side closes."""
        out: list[Message] = []
        while (m := await self.receive(timeout)) is not None:
            out.append(m)
        return out


def free_tcp_port() -> int:
    """A loopback TCP port that was free a moment ago (for configs that need it upfront)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_refused(host: str, port: int) -> bool:
    """True if nothing accepts TCP connections on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return True
        return False


__all__ = [
    "T0",
    "Model",
    "RawPeer",
    "TickClock",
    "assert_converged",
    "assert_matches_model",
    "decode_message",
    "encode_frame",
    "free_tcp_port",
    "free_udp_port",
    "hello_for",
    "mem_store",
    "raw_frame",
    "tcp_refused",
    "wait_until",
]


async def sync_pair(
    a: Store, b: Store, *, mode_a: str = "both", mode_b: str = "both", **kw: Any
) -> tuple[ReplicationResult, ReplicationResult]:
    """Run ``replicate`` on both ends of a memory stream pair; return both results."""
    sa, sb = trio.testing.memory_stream_pair()
    results: dict[str, ReplicationResult] = {}

    async def side(name: str, store: Store, stream: trio.abc.Stream, mode: str) -> None:
        results[name] = await crdt_kv.replicate(store, stream, mode=mode, **kw)

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(side, "a", a, sa, mode_a)
            n.start_soon(side, "b", b, sb, mode_b)
    return results["a"], results["b"]
